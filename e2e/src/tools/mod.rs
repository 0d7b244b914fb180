//! The programs built on the harness and the clients (their binaries in `src/bin` only
//! parse flags and print):
//!
//! - [`loadgen`]: `chat-loadgen`, the benchmark scenarios (fanout, idle);
//! - [`soak`]: `chat-soak`, the chaos soak with its exactly-once checker, and the
//!   reconnect storm;
//! - [`stats`]: latency percentiles for their reports.

pub mod loadgen;
pub mod soak;
pub mod stats;
