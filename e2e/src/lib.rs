//! ChatCluster's end-to-end harness, in layers; each uses only the ones listed before it:
//!
//! - [`wait`]: polling a check until it holds, bounded in time;
//! - [`clients`]: WebSocket clients of the chat protocol: one connection, the resuming
//!   subscriber and publisher, and the lossless check over many subscribers;
//! - [`harness`]: the processes a suite runs against, all on this machine and stopped
//!   by PID: `chat-server` nodes, Redis (one or a Cluster), haproxy, Toxiproxy,
//!   Prometheus, a Kubernetes cluster and the operator, the node of the data-plane
//!   suite; the one HTTP client that reads their admin and metrics ports; and the
//!   set-up of the Kubernetes suites;
//! - [`tools`]: the load generator (`chat-loadgen`) and the soak (`chat-soak`).
//!
//! The suites in `tests/` hold only tests (and the glue particular to one file).

pub mod clients;
pub mod harness;
pub mod tools;
pub mod wait;
