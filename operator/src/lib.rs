//! ChatCluster operator: the `ChatCluster` custom resource and its controller.
//!
//! Modules by concern. *Pure* modules compute (no API server, no HTTP, no clock, no
//! task) and are unit-tested; *I/O* modules talk to the API server, the pods or
//! Prometheus. A pure module imports only pure modules, and no module imports another
//! in a circle (`e2e/tests/module_graph.rs` checks both, for the server too).
//!
//! - `reconcile/`: the reconcile pipeline, one file per stage. `mod.rs` wires the
//!   stages (I/O); `validate` (pure) checks the spec; `secrets` (I/O) checks the
//!   Secrets the spec refers to; `generated_secrets` (I/O) creates the admin token and
//!   Redis password; `drain_stage` (I/O) asks the pods that may leave and starts
//!   their drains; `apply` (I/O) applies the built objects and deletes orphans;
//!   `status` (I/O) observes the workloads; `report` (I/O) writes `status` and
//!   publishes the Events; `conditions` and `events` (pure) turn what was observed into
//!   conditions and Events; `context` is what every reconcile shares.
//! - `autoscaling/`: the built-in autoscaler. `decision` (pure) decides the replicas and
//!   holds the outcome the conditions and Events report; `promql` (pure) is the
//!   connections query (the KEDA ScaledObject asks the same); `control_loop` (I/O)
//!   reads a source, decides and writes `/scale`; `sources/` (I/O) reads the connections
//!   from Prometheus (`sources::prometheus`) or from the pods' `/metrics`
//!   (`sources::pods`, also `status.connections`).
//! - `drain/`: draining pods before a scale-down. `plan` (pure) decides which pods to
//!   drain and how fast; `calls` (I/O) asks the pods' admin port and starts the drains.
//! - `build/` (pure): a ChatCluster spec → the Kubernetes objects that run it, one file
//!   per kind.
//! - `crd` (pure): the `ChatCluster` types, the CRD generated from them and the keys of
//!   the Secrets the spec names.
//!
//! Shared: `urls` (pure: the URL rules), `ownership` (pure: which pods are the
//! cluster's, keys of per-cluster state), `discovery` (I/O: which optional APIs the
//! cluster serves), `http_client` (I/O: the one HTTP client for pods and Prometheus),
//! `leader` (the election decision is pure, the Lease writes are I/O), `metrics` (the
//! operator's own Prometheus metrics) and `controller` (I/O: the watches that run
//! `reconcile`).

pub mod autoscaling;
pub mod build;
pub mod controller;
pub mod crd;
pub mod discovery;
pub mod drain;
pub mod http_client;
pub mod leader;
pub mod metrics;
pub mod ownership;
pub mod reconcile;
pub mod urls;

pub use crd::{crd, crd_yaml, parse_manifest};
