//! The suites' WebSocket clients, shared by the tests and the tools:
//!
//! - [`ws`]: one connection (connect, frames typed as the server's
//!   `chat_server::protocol::ReceivedFrame`, join, send and wait for the ack);
//! - [`cursors`]: where a resuming client is in each room, and the resume rule;
//! - [`resuming`]: the one resuming client (reconnects, retry policy, sticky cookie,
//!   resume with `since`), driven by the suites' subscriber, the soak and storm clients
//!   and the load generator's subscribers;
//! - [`subscriber`]: the suites' subscriber, recording what it gets for the test;
//! - [`publisher`]: a publisher that resends what was not acknowledged;
//! - [`lossless`]: many resuming subscribers, and the check that each got every
//!   acknowledged message exactly once;
//! - [`hostile`]: flooders, DM sprayers and replay hoarders for the bounds suites.

pub mod cursors;
pub mod hostile;
pub mod lossless;
pub mod publisher;
pub mod resuming;
pub mod subscriber;
pub mod ws;
