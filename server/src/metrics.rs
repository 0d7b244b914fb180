//! Prometheus metrics, following Prometheus conventions: base units, `_total` counters,
//! no per-room or per-user labels (unbounded cardinality).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the chat server exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_closed: IntCounterVec,
    pub upgrades_rejected: IntCounterVec,
    pub messages_received: IntCounter,
    pub messages_delivered: IntCounter,
    /// Deliveries offered to sessions, by `path`: `direct` (written by the fan-out) or
    /// `queued` (left to the session task).
    pub delivery_paths: IntCounterVec,
    pub publish_errors: IntCounter,
    pub frame_errors: IntCounterVec,
    pub delivery_latency: Histogram,
    pub slow_consumer_closes: IntCounter,
    pub resumes: IntCounterVec,
    pub draining: IntGauge,
    pub backplane_received: IntCounter,
    pub pending_connections: IntGaugeVec,
    pub pending_closed: IntCounterVec,
    pub sessions_expired: IntCounter,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGauge,
    pub join_hook_calls: IntCounterVec,
    pub permission_denials: IntCounterVec,
    pub rooms_refused: IntCounter,
    pub rooms_forgotten: IntCounter,
    pub history_trimmed_bytes: IntCounter,
    pub api_requests: IntCounterVec,
    pub events_recorded: IntCounterVec,
    pub events_delivered: IntCounter,
    pub events_failed_attempts: IntCounter,
    pub events_dead_lettered: IntCounter,
    pub events_dropped: IntCounter,
    pub events_lag: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            connections: IntGauge::new("chat_connections", "Open WebSocket connections.")
                .expect("static metric definition"),
            connections_accepted: IntCounter::new(
                "chat_connections_accepted_total",
                "WebSocket connections accepted.",
            )
            .expect("static metric definition"),
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "chat_connections_closed_total",
                    "WebSocket connections closed, by close code the server sent or saw.",
                ),
                &["code"],
            )
            .expect("static metric definition"),
            upgrades_rejected: IntCounterVec::new(
                Opts::new(
                    "chat_upgrades_rejected_total",
                    "WebSocket upgrades refused before the socket opened, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            messages_received: IntCounter::new(
                "chat_messages_received_total",
                "Room messages and direct messages accepted from clients.",
            )
            .expect("static metric definition"),
            messages_delivered: IntCounter::new(
                "chat_messages_delivered_total",
                "Room and direct messages written to client sockets.",
            )
            .expect("static metric definition"),
            delivery_paths: IntCounterVec::new(
                Opts::new(
                    "chat_deliveries_total",
                    "Room, presence and direct messages offered to sessions, by path: written to the socket by the fan-out (direct) or left to the session task (queued: the socket was busy, or the session was writing a replay or a reply).",
                ),
                &["path"],
            )
            .expect("static metric definition"),
            publish_errors: IntCounter::new(
                "chat_publish_errors_total",
                "Client messages refused because the backplane was unavailable.",
            )
            .expect("static metric definition"),
            frame_errors: IntCounterVec::new(
                Opts::new(
                    "chat_frame_errors_total",
                    "Error frames sent to clients, by error code.",
                ),
                &["code"],
            )
            .expect("static metric definition"),
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "chat_delivery_latency_seconds",
                    "Time from a room message's publish to its write on a subscriber's socket.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
            )
            .expect("static metric definition"),
            slow_consumer_closes: IntCounter::new(
                "chat_slow_consumer_closes_total",
                "Connections closed because their send queue overflowed.",
            )
            .expect("static metric definition"),
            resumes: IntCounterVec::new(
                Opts::new(
                    "chat_resumes_total",
                    "Joins with `since`, by result (recovered, not_recovered).",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            draining: IntGauge::new(
                "chat_draining",
                "1 while this node drains or is drained (not serving), else 0.",
            )
            .expect("static metric definition"),
            backplane_received: IntCounter::new(
                "chat_backplane_messages_received_total",
                "Room messages this node received from the Redis backplane.",
            )
            .expect("static metric definition"),
            pending_connections: IntGaugeVec::new(
                Opts::new(
                    "chat_pending_connections",
                    "TCP connections that have not (yet) become a WebSocket session, by port (public, admin).",
                ),
                &["port"],
            )
            .expect("static metric definition"),
            pending_closed: IntCounterVec::new(
                Opts::new(
                    "chat_pending_connections_closed_total",
                    "Connections closed before the upgrade, by port and reason (header_timeout, pending_cap).",
                ),
                &["port", "reason"],
            )
            .expect("static metric definition"),
            sessions_expired: IntCounter::new(
                "chat_sessions_expired_total",
                "Sessions closed (4003) because their token expired without a refresh.",
            )
            .expect("static metric definition"),
            jwks_fetches: IntCounterVec::new(
                Opts::new(
                    "chat_jwks_fetches_total",
                    "Fetches of the identity provider's JWKS, by result (ok, error).",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            jwks_keys: IntGauge::new(
                "chat_jwks_keys",
                "Signing keys held from the JWKS (the last good fetch).",
            )
            .expect("static metric definition"),
            join_hook_calls: IntCounterVec::new(
                Opts::new(
                    "chat_join_hook_calls_total",
                    "Join hook answers, by result (allow, deny, error, busy, cached).",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            permission_denials: IntCounterVec::new(
                Opts::new(
                    "chat_permission_denials_total",
                    "Client requests refused by the room rules, grants or DM policy, by action (join, publish, dm, revoked, members).",
                ),
                &["action"],
            )
            .expect("static metric definition"),
            rooms_refused: IntCounter::new(
                "chat_rooms_refused_total",
                "Joins refused because the room cap was reached and every room had members (room_limit).",
            )
            .expect("static metric definition"),
            rooms_forgotten: IntCounter::new(
                "chat_rooms_forgotten_total",
                "Redis backplane: idle rooms this node forgot (history and offsets) to stay under the room cap.",
            )
            .expect("static metric definition"),
            history_trimmed_bytes: IntCounter::new(
                "chat_history_trimmed_bytes_total",
                "Redis backplane: history bytes this node's budget sweeper dropped to keep the cluster under CHAT_HISTORY_MAX_BYTES.",
            )
            .expect("static metric definition"),
            api_requests: IntCounterVec::new(
                Opts::new(
                    "chat_api_requests_total",
                    "Server API requests, by endpoint and HTTP status.",
                ),
                &["endpoint", "status"],
            )
            .expect("static metric definition"),
            events_recorded: IntCounterVec::new(
                Opts::new(
                    "chat_events_recorded_total",
                    "Events for the application this node recorded, by type.",
                ),
                &["type"],
            )
            .expect("static metric definition"),
            events_delivered: IntCounter::new(
                "chat_events_delivered_total",
                "Events this node delivered (the backend answered 2xx).",
            )
            .expect("static metric definition"),
            events_failed_attempts: IntCounter::new(
                "chat_events_failed_attempts_total",
                "Event deliveries that failed and will be retried or given up.",
            )
            .expect("static metric definition"),
            events_dead_lettered: IntCounter::new(
                "chat_events_dead_lettered_total",
                "Events given up after CHAT_WEBHOOK_GIVE_UP_AFTER and moved to the dead-letter list.",
            )
            .expect("static metric definition"),
            events_dropped: IntCounter::new(
                "chat_events_dropped_total",
                "Events dropped undelivered because CHAT_WEBHOOK_MAX_BACKLOG were waiting.",
            )
            .expect("static metric definition"),
            events_lag: IntGauge::new(
                "chat_events_lag",
                "Events recorded and not yet delivered: in memory, the queue; over Redis, the streams this node delivers.",
            )
            .expect("static metric definition"),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections.clone()),
            Box::new(m.connections_accepted.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.upgrades_rejected.clone()),
            Box::new(m.messages_received.clone()),
            Box::new(m.messages_delivered.clone()),
            Box::new(m.delivery_paths.clone()),
            Box::new(m.publish_errors.clone()),
            Box::new(m.frame_errors.clone()),
            Box::new(m.delivery_latency.clone()),
            Box::new(m.slow_consumer_closes.clone()),
            Box::new(m.resumes.clone()),
            Box::new(m.draining.clone()),
            Box::new(m.backplane_received.clone()),
            Box::new(m.pending_connections.clone()),
            Box::new(m.pending_closed.clone()),
            Box::new(m.sessions_expired.clone()),
            Box::new(m.jwks_fetches.clone()),
            Box::new(m.jwks_keys.clone()),
            Box::new(m.join_hook_calls.clone()),
            Box::new(m.permission_denials.clone()),
            Box::new(m.rooms_refused.clone()),
            Box::new(m.rooms_forgotten.clone()),
            Box::new(m.history_trimmed_bytes.clone()),
            Box::new(m.api_requests.clone()),
            Box::new(m.events_recorded.clone()),
            Box::new(m.events_delivered.clone()),
            Box::new(m.events_failed_attempts.clone()),
            Box::new(m.events_dead_lettered.clone()),
            Box::new(m.events_dropped.clone()),
            Box::new(m.events_lag.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("metric names are unique and registered once");
        }
        m
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_documented_metric() {
        let m = Metrics::new();
        m.connections_closed.with_label_values(&["1000"]).inc();
        m.resumes.with_label_values(&["recovered"]).inc();
        m.delivery_latency.observe(0.001);
        m.delivery_paths.with_label_values(&["direct"]).inc();
        m.pending_closed
            .with_label_values(&["public", "header_timeout"])
            .inc();
        m.pending_connections.with_label_values(&["public"]).set(0);
        let text = m.render();
        for name in [
            "chat_connections ",
            "chat_connections_accepted_total",
            "chat_connections_closed_total{code=\"1000\"}",
            "chat_messages_received_total",
            "chat_messages_delivered_total",
            "chat_deliveries_total{path=\"direct\"}",
            "chat_publish_errors_total",
            "chat_delivery_latency_seconds_bucket",
            "chat_slow_consumer_closes_total",
            "chat_resumes_total{result=\"recovered\"}",
            "chat_draining",
            "chat_pending_connections{port=\"public\"}",
            "chat_pending_connections_closed_total{port=\"public\",reason=\"header_timeout\"}",
            "chat_sessions_expired_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
