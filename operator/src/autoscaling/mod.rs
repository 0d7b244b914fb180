//! The built-in autoscaler: the pods the cluster's open connections need, the way a
//! HorizontalPodAutoscaler decides (see docs/autoscaling.md).
//!
//! - [`decision`] (pure): the replica count for one connections sample, and the
//!   [`decision::Outcome`] that status, Events and metrics report.
//! - [`promql`] (pure): the connections query, shared with KEDA's ScaledObject.
//! - [`control_loop`] (I/O): reads a source, decides, writes `/scale`.
//! - [`sources`] (I/O): where the connections come from, Prometheus or the pods.

pub mod control_loop;
pub mod decision;
pub mod promql;
pub mod sources;
