//! What the suites run their code against, all on this machine and stopped by PID:
//!
//! - [`process`]: free ports, waiting for a listener, running as another user, stopping
//!   a child, scratch directories;
//! - [`binaries`]: the workspace's binaries and the pinned tools;
//! - [`http`]: the one HTTP client (admin ports, metrics, Prometheus, Toxiproxy);
//! - [`server_process`]: one `chat-server`;
//! - [`redis`], [`redis_cluster`]: one `redis-server`, or a Redis Cluster of 3 masters
//!   and 3 replicas;
//! - [`haproxy`]: the load balancer with cookie stickiness;
//! - [`local_cluster`]: Redis, N chat-server nodes and haproxy together;
//! - [`toxiproxy`], [`prometheus`], [`tls`], [`procstat`]: fault injection, a real
//!   Prometheus, a private CA, a process's CPU and memory;
//! - [`webhook_receiver`]: the application's backend receiving events;
//! - [`k8s`]: a Kubernetes cluster, a namespace per test, the operator as a process,
//!   and the set-up of the operator and data-plane suites (which drive [`clients`]);
//! - [`node`]: what a node agent does on a real node (the data-plane suite).
//!
//! [`clients`]: crate::clients

pub mod binaries;
pub mod haproxy;
pub mod http;
pub mod k8s;
pub mod local_cluster;
pub mod node;
pub mod process;
pub mod procstat;
pub mod prometheus;
pub mod redis;
pub mod redis_cluster;
pub mod server_process;
pub mod tls;
pub mod toxiproxy;
pub mod webhook_receiver;
