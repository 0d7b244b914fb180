//! Draining chat-server pods before a scale-down, so their clients reconnect at a pace
//! the rest of the cluster can take.
//!
//! - [`plan`] (pure): which pods to drain, undrain or let go, and over what window.
//! - [`calls`] (I/O): the pods' `/admin/status`, `/admin/drain` and `/admin/undrain`.

pub mod calls;
pub mod plan;
