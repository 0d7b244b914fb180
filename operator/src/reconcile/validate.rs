//! Validation, the first stage of reconcile. Pure. It re-runs the CRD's own CEL rules
//! in-process (so a cluster whose CRD was installed without them still gets clear
//! errors) and adds checks CEL cannot express, such as name lengths that the objects
//! derived from the ChatCluster's name must fit. The URL, room-rule and event-room checks
//! repeat CEL rules in Rust: the operator calls the Prometheus URL itself, and the pods
//! must never get a room pattern or URL the server would refuse at start.

use std::sync::LazyLock;

use serde_json::Value;

use crate::crd::{ChatCluster, ChatClusterSpec, RoomAccess, RoomRule};
use crate::urls::{self, UrlPolicy};

/// Longest ChatCluster name: its StatefulSet pods carry a `controller-revision-hash`
/// label of `NAME-redis-<10 characters>`, and labels are at most 63 characters.
pub const MAX_NAME_LEN: usize = 46;

/// Why a spec cannot be reconciled; becomes the Degraded condition and an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

/// Validates `cluster`; `Ok` means the builders can run.
pub fn validate(cluster: &ChatCluster) -> Result<(), Invalid> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let dns1035 = name.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.ends_with('-');
    if !dns1035 {
        return Err(invalid(
            "InvalidName",
            format!("metadata.name `{name}` must start with a lowercase letter and contain only a-z, 0-9 and '-' (it names Services)"),
        ));
    }
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    if namespace.len() + 1 + name.len() > 64 {
        return Err(invalid(
            "NameTooLong",
            format!("namespace and name together are {} characters; the Redis key prefix `{namespace}.{name}` must fit in 64", namespace.len() + 1 + name.len()),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "NameTooLong",
            format!("metadata.name is {} characters; use at most {MAX_NAME_LEN} so every derived object name fits", name.len()),
        ));
    }
    let spec =
        serde_json::to_value(&cluster.spec).map_err(|e| invalid("InvalidSpec", e.to_string()))?;
    check_cel(&spec)?;
    if cluster.spec.image.chars().any(char::is_whitespace) {
        return Err(invalid(
            "InvalidImage",
            "spec.image must not contain spaces",
        ));
    }
    check_urls(&cluster.spec)?;
    check_room_rules(&cluster.spec.auth.rooms)?;
    if let Some(events) = &cluster.spec.events {
        check_event_rooms(&events.rooms)?;
    }
    Ok(())
}

/// `events.rooms` as the server parses `CHAT_WEBHOOK_ROOMS` (the CEL rule again, in
/// Rust, with the pattern's position): one pattern it refuses would stop every pod at
/// start, and the list is joined with commas, so a pattern may hold none.
fn check_event_rooms(patterns: &[String]) -> Result<(), Invalid> {
    if patterns.len() > MAX_EVENT_ROOMS {
        return Err(invalid(
            "InvalidEventRooms",
            format!(
                "spec.events.rooms has {} patterns; at most {MAX_EVENT_ROOMS} (use * to cover more rooms with one)",
                patterns.len()
            ),
        ));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN || !pattern_chars_ok(pattern) {
            return Err(invalid(
                "InvalidEventRooms",
                format!(
                    "spec.events.rooms[{i}] (`{}`): each pattern must be 1 to {MAX_PATTERN_LEN} of A-Z a-z 0-9 _ - . : @ and * (any run of characters)",
                    // Quoted, escaped and cut: it is the user's text, of any length.
                    pattern
                        .chars()
                        .take(MAX_PATTERN_LEN + 1)
                        .collect::<String>()
                        .escape_default()
                ),
            ));
        }
    }
    Ok(())
}

/// Most `events.rooms` patterns a spec takes (the CRD's `maxItems`).
pub const MAX_EVENT_ROOMS: usize = 64;

/// The spec's URLs, strictly (see `crate::urls`): the CEL rules say the same, but the
/// operator's own Prometheus calls must not depend on the API server having run them.
fn check_urls(spec: &ChatClusterSpec) -> Result<(), Invalid> {
    let urls = [
        (
            "spec.autoscaling.prometheusUrl",
            "InvalidPrometheusUrl",
            spec.autoscaling
                .as_ref()
                .and_then(|a| a.prometheus_url.as_deref()),
            UrlPolicy::BASE,
        ),
        (
            "spec.auth.jwksUrl",
            "InvalidJwksUrl",
            spec.auth.jwks_url.as_deref(),
            UrlPolicy::HTTPS_BASE,
        ),
        (
            "spec.auth.joinHook.url",
            "InvalidJoinHookUrl",
            spec.auth.join_hook.as_ref().map(|h| h.url.as_str()),
            UrlPolicy::ENDPOINT,
        ),
        (
            "spec.events.webhookUrl",
            "InvalidWebhookUrl",
            spec.events.as_ref().map(|e| e.webhook_url.as_str()),
            UrlPolicy::ENDPOINT,
        ),
    ];
    for (field, reason, url, policy) in urls {
        if let Some(url) = url {
            urls::check(url, policy)
                .map_err(|e| invalid(reason, urls::describe(field, url, &e)))?;
        }
    }
    Ok(())
}

/// The room rules' CEL checks again, in Rust, with the rule's position in the message.
fn check_room_rules(rules: &[RoomRule]) -> Result<(), Invalid> {
    if rules.len() > MAX_ROOM_RULES {
        return Err(invalid(
            "InvalidRoomRules",
            format!(
                "spec.auth.rooms has {} rules; at most {MAX_ROOM_RULES} (use * patterns to cover more rooms with one rule)",
                rules.len()
            ),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(problem) = room_rule_problem(rule) {
            return Err(invalid(
                "InvalidRoomRules",
                format!(
                    "spec.auth.rooms[{i}] (pattern `{}`): {problem}",
                    rule.pattern
                ),
            ));
        }
    }
    Ok(())
}

/// Most room rules a spec takes (the CRD's `maxItems`).
pub const MAX_ROOM_RULES: usize = 64;
/// Longest room rule pattern (the CRD's `maxLength`).
pub const MAX_PATTERN_LEN: usize = 64;

/// Whether a room pattern holds only room-name characters and `*` (the server's rule).
fn pattern_chars_ok(pattern: &str) -> bool {
    pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.:@*".contains(&b))
}

/// What is wrong with one room rule, if anything (pure).
pub fn room_rule_problem(rule: &RoomRule) -> Option<String> {
    let pattern = rule.pattern.as_str();
    let placeholders = pattern.matches("{user}").count();
    let rest = pattern.replace("{user}", "");
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN || !pattern_chars_ok(&rest) {
        return Some(format!("pattern must be 1 to {MAX_PATTERN_LEN} of A-Z a-z 0-9 _ - . : @ and * (any run of characters), plus {{user}} in access: user rules"));
    }
    match (rule.access, placeholders) {
        (RoomAccess::User, 1) if pattern.contains('*') => Some(
            "a rule with access: user must not hold *: the user it names would be ambiguous (user ids hold the same characters as room names); write e.g. inbox.{user}"
                .to_owned(),
        ),
        (RoomAccess::User, 1) => None,
        (RoomAccess::User, _) => Some(
            "a rule with access: user needs {user} exactly once in its pattern, e.g. inbox.{user}"
                .to_owned(),
        ),
        (_, 0) => None,
        (_, _) => Some(
            "{user} is only for rules with access: user; remove it from the pattern or set access: user"
                .to_owned(),
        ),
    }
}

/// The CRD's schema of `spec`, generated once: it is fixed at compile time, and
/// generating it costs a schemars run and serde round trips on every reconcile.
static SPEC_SCHEMA: LazyLock<Result<Value, String>> = LazyLock::new(|| {
    let crd = crate::crd::crd().map_err(|e| e.to_string())?;
    let crd = serde_json::to_value(crd).map_err(|e| e.to_string())?;
    Ok(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone())
});

/// Evaluates the CRD's CEL rules on the spec, as the API server would.
fn check_cel(spec: &Value) -> Result<(), Invalid> {
    let schema = SPEC_SCHEMA
        .as_ref()
        .map_err(|e| invalid("InternalError", e.clone()))?;
    kube::core::cel::Validator::new()
        .validate(schema, spec, None)
        .map_err(|e| invalid("InvalidSpec", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(name: &str, spec: Value) -> ChatCluster {
        let spec: ChatClusterSpec = serde_json::from_value(spec).unwrap();
        ChatCluster::new(name, spec)
    }

    #[test]
    fn trusted_proxies_must_be_ranges_or_addresses() {
        let ok = json!({"limits": {"trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]}});
        assert_eq!(validate(&cluster("chat", ok)), Ok(()));
        for bad in ["10.0.0.0/33", "ingress", "10.0.0.0/8 "] {
            let spec = json!({"limits": {"trustedProxies": ["10.0.0.0/8", bad]}});
            let e = validate(&cluster("chat", spec)).unwrap_err();
            assert!(
                e.message
                    .contains("limits.trustedProxies: each entry must be"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn accepts_defaults_and_rejects_with_reasons() {
        assert_eq!(validate(&cluster("chat", json!({}))), Ok(()));
        assert_eq!(
            validate(&cluster("chat.v2", json!({}))).unwrap_err().reason,
            "InvalidName"
        );
        assert_eq!(
            validate(&cluster("1chat", json!({}))).unwrap_err().reason,
            "InvalidName"
        );
        let long = "c".repeat(47);
        assert_eq!(
            validate(&cluster(&long, json!({}))).unwrap_err().reason,
            "NameTooLong"
        );
        let e = validate(&cluster(
            "chat",
            json!({"drain": {"reconnectWindowSeconds": 50, "deadlineSeconds": 40}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(
            e.message.contains("reconnectWindowSeconds must be shorter"),
            "{e}"
        );
        assert_eq!(
            validate(&cluster("chat", json!({"image": "bad image"})))
                .unwrap_err()
                .reason,
            "InvalidImage"
        );
        assert_eq!(
            validate(&cluster(
                "chat",
                json!({"autoscaling": {"maxReplicas": 3, "prometheusUrl": "prometheus:9090"}})
            ))
            .unwrap_err()
            .reason,
            "InvalidSpec",
            "the CEL rule refuses it first"
        );
    }

    /// The Rust checks alone (the CEL stage may be missing from an old CRD): each URL
    /// field refused with its own reason and a message saying why.
    #[test]
    fn url_fields_are_refused_with_a_reason_and_why() {
        let spec = |v: Value| -> ChatClusterSpec { serde_json::from_value(v).unwrap() };
        let e = check_urls(&spec(json!({"autoscaling": {"maxReplicas": 3,
            "prometheusUrl": "http://evil.example/anything?"}})))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidPrometheusUrl");
        assert!(e.message.contains("must not have a query"), "{e}");
        let e = check_urls(&spec(json!({"autoscaling": {"maxReplicas": 3,
            "prometheusUrl": "http://u:secret@p:9090"}})))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidPrometheusUrl");
        assert!(!e.message.contains("secret"), "never the credentials: {e}");
        let e = check_urls(&spec(json!({"auth": {"jwksUrl": "http://idp/keys"}}))).unwrap_err();
        assert_eq!(e.reason, "InvalidJwksUrl");
        assert!(e.message.contains("https://"), "{e}");
        let e = check_urls(&spec(
            json!({"auth": {"joinHook": {"url": "app/join", "secretName": "h"}}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidJoinHookUrl");
        assert_eq!(
            check_urls(&spec(json!({
                "autoscaling": {"maxReplicas": 3, "prometheusUrl": "http://p:9090/prom/"},
                "auth": {"jwksUrl": "https://idp/keys", "joinHook": {"url": "http://app/join?v=1", "secretName": "h"}}
            }))),
            Ok(())
        );
    }

    #[test]
    fn the_webhook_url_and_event_rooms_are_checked_without_the_cel_stage() {
        let spec = |v: Value| -> ChatClusterSpec { serde_json::from_value(v).unwrap() };
        let events = |url: &str| json!({"events": {"webhookUrl": url, "secretName": "e"}});
        for bad in [
            "ftp://app/events",
            "app.default.svc/events",
            "http://app/ev ents",
            "http://app/events#x",
        ] {
            let e = check_urls(&spec(events(bad))).unwrap_err();
            assert_eq!(e.reason, "InvalidWebhookUrl", "{bad}");
            assert!(e.message.contains("spec.events.webhookUrl"), "{e}");
        }
        let e = check_urls(&spec(events("https://u:hunter2@app/events"))).unwrap_err();
        assert_eq!(e.reason, "InvalidWebhookUrl");
        assert!(!e.message.contains("hunter2"), "never the credentials: {e}");
        for good in [
            "http://app.default.svc:8000/chat/events",
            "https://app/e?v=2",
        ] {
            assert_eq!(check_urls(&spec(events(good))), Ok(()), "{good}");
        }

        let rooms = |patterns: Vec<String>| check_event_rooms(&patterns);
        assert_eq!(
            rooms(vec!["support.*".into(), "a_b-c.d:e@f*".into(), "*".into()]),
            Ok(())
        );
        assert_eq!(rooms(vec!["a".repeat(MAX_PATTERN_LEN)]), Ok(()));
        for bad in [
            "",
            "lobby,vip",
            "lobby room",
            "inbox.{user}",
            &"a".repeat(65),
        ] {
            let e = rooms(vec!["ok".into(), bad.to_owned()]).unwrap_err();
            assert_eq!(e.reason, "InvalidEventRooms", "{bad:?}");
            assert!(e.message.starts_with("spec.events.rooms[1]"), "{e}");
        }
        let many: Vec<String> = (0..=MAX_EVENT_ROOMS).map(|i| format!("r{i}")).collect();
        assert!(rooms(many[..MAX_EVENT_ROOMS].to_vec()).is_ok());
        assert_eq!(rooms(many).unwrap_err().reason, "InvalidEventRooms");

        // Through `validate`: a Redis Cluster is refused by the CRD's rule, run here too.
        let e = validate(&cluster(
            "chat",
            json!({"events": {"webhookUrl": "http://app/e", "secretName": "e"},
                "redis": {"external": {"secretName": "r", "cluster": true}}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(
            e.message.contains("events need a single Redis instance"),
            "{e}"
        );
    }

    #[test]
    fn room_rules_mirror_the_cel_rules() {
        let rule = |pattern: &str, access: &str| -> RoomRule {
            serde_json::from_value(json!({"pattern": pattern, "access": access})).unwrap()
        };
        for (pattern, access) in [
            ("lobby.*", "public"),
            ("team.*", "grant"),
            ("inbox.{user}", "user"),
            ("{user}", "user"),
            ("a-b_c.d:e@f*", "public"),
            ("*", "grant"),
            // Exactly the longest pattern.
            (&"a".repeat(MAX_PATTERN_LEN), "public"),
        ] {
            assert_eq!(room_rule_problem(&rule(pattern, access)), None, "{pattern}");
        }
        for (pattern, access, expected) in [
            ("", "public", "pattern must be 1 to 64"),
            (&"a".repeat(65), "public", "pattern must be 1 to 64"),
            ("lobby room", "public", "pattern must be 1 to 64"),
            ("lobby/x", "public", "pattern must be 1 to 64"),
            ("inbox.{usr}", "user", "pattern must be 1 to 64"),
            ("dm.{user}.*", "user", "must not hold *"),
            ("inbox.*", "user", "needs {user} exactly once"),
            ("dm.{user}.{user}", "user", "needs {user} exactly once"),
            (
                "inbox.{user}",
                "grant",
                "{user} is only for rules with access: user",
            ),
            (
                "inbox.{user}",
                "public",
                "{user} is only for rules with access: user",
            ),
        ] {
            let problem = room_rule_problem(&rule(pattern, access))
                .unwrap_or_else(|| panic!("{pattern} ({access}) accepted"));
            assert!(problem.contains(expected), "{pattern}: {problem}");
        }
        let mut many: Vec<RoomRule> = (0..MAX_ROOM_RULES)
            .map(|i| rule(&format!("r{i}"), "public"))
            .collect();
        assert!(check_room_rules(&many).is_ok(), "exactly the most rules");
        many.push(rule("one-more", "public"));
        assert_eq!(
            check_room_rules(&many).unwrap_err().reason,
            "InvalidRoomRules"
        );
        let e = check_room_rules(&[rule("ok", "public"), rule("x.{user}", "grant")]).unwrap_err();
        assert!(
            e.message
                .starts_with("spec.auth.rooms[1] (pattern `x.{user}`)"),
            "{e}"
        );
    }
}
