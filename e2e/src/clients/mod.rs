//! The suites' WebSocket clients, shared by the tests and the tools:
//!
//! - [`ws`]: one connection (connect, frames, join, send and wait for the ack);
//! - [`resuming`]: a subscriber that resumes every room after a reconnect and a
//!   publisher that resends what was not acknowledged;
//! - [`lossless`]: many resuming subscribers, and the check that each got every
//!   acknowledged message exactly once.

pub mod lossless;
pub mod resuming;
pub mod ws;
