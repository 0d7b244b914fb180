//! The suites' WebSocket clients, shared by the tests and the tools:
//!
//! - [`ws`]: one connection (connect, frames typed as the server's
//!   `chat_server::protocol::ReceivedFrame`, join, send and wait for the ack);
//! - [`cursors`]: where a resuming client is in each room, and the resume rule every
//!   resuming client here follows (the suites' subscriber, the soak and the storm);
//! - [`resuming`]: a subscriber that resumes every room after a reconnect and a
//!   publisher that resends what was not acknowledged;
//! - [`lossless`]: many resuming subscribers, and the check that each got every
//!   acknowledged message exactly once;
//! - [`hostile`]: flooders, DM sprayers and replay hoarders for the bounds suites.

pub mod cursors;
pub mod hostile;
pub mod lossless;
pub mod resuming;
pub mod ws;
