//! Harness for the Kubernetes suites: a cluster (the simulated control plane from
//! `e2e/k8s/start-cluster.sh`, or any cluster named by `CHATCLUSTER_KUBECONFIG`), a
//! namespace per test, and the operator binary run as a process against it.
//!
//! Every address the suite dials is the API server's (127.0.0.1 on the simulated cluster)
//! or the operator's metrics port on 127.0.0.1; Service cluster IPs are never dialled.
//!
//! - [`cluster`]: the shared cluster, kubectl, a namespace per test, helm, conditions;
//! - [`operator`]: the operator binary as a process;
//! - [`operator_suite`]: the operator suite's set-up (a namespace and its own operator)
//!   and its waits; [`stand_in`]: real chat-servers on simulated pods' IPs;
//! - [`data_plane`]: the data-plane suite's set-up (real pods behind an ingress) and
//!   its lossless check of a disruption; [`disruption`]: what a disruption did (where
//!   subscribers went, the operator's drain Events, drained before the StatefulSet was
//!   lowered); [`prometheus_pod`]: Prometheus deployed as a pod with its own RBAC.

pub mod cluster;
pub mod data_plane;
pub mod disruption;
pub mod operator;
pub mod operator_suite;
pub mod prometheus_pod;
pub mod stand_in;
