//! Where the autoscaler reads the cluster's open connections (I/O): Prometheus' query API
//! ([`prometheus`]) when `autoscaling.prometheusUrl` is set, otherwise each ready pod's
//! `/metrics` ([`pods`], the same scrape as `status.connections`).

pub mod pods;
pub mod prometheus;
