//! Shared pieces of ChatCluster's load generator and end-to-end suites.

pub mod client;
pub mod cluster;
pub mod k8s;
pub mod loadgen;
pub mod lossless;
pub mod procstat;
pub mod prometheus;
pub mod redis_cluster;
pub mod server_process;
pub mod soak;
pub mod stats;
pub mod tls;
pub mod toxiproxy;
