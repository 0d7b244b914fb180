//! Room rules: who may join a room and read its traffic, publish in it, see its presence
//! and members, and replay its history. Pure: the session asks, this module answers.
//!
//! Rules come from `CHAT_ROOM_RULES` (a JSON array) and are tried in order; the first
//! whose pattern matches the room decides. With no rules every room is public (the
//! embedded default and `--dev`); with rules, a room no rule matches is refused, so a
//! typo in a room name never opens a private room.
//!
//! Three kinds of access:
//! - `public`: any authenticated user (and anonymous users unless the rule says not);
//! - `grant`: only with a grant from the application: a room pattern in the connection
//!   token's `rooms` claim, a short-lived room token sent with `join`, or the join hook;
//! - `user`: the pattern holds `{user}` once, and only that user may join; the rule owns
//!   every room its pattern matches with any user in place of `{user}`, so `inbox.bob`
//!   is refused to alice rather than falling through to a later, more open rule.

use serde::Deserialize;

use crate::protocol::MAX_NAME_LEN;

/// Most rules a server takes (each join walks them in order).
pub const MAX_RULES: usize = 64;
/// Most room patterns one token may grant.
pub const MAX_GRANTS: usize = 100;
/// The placeholder a `user` rule's pattern holds once.
pub const USER_PLACEHOLDER: &str = "{user}";
/// Longest pattern, in bytes (a room name is at most [`MAX_NAME_LEN`]; the placeholder
/// and stars may stand for more or fewer bytes).
const MAX_PATTERN_LEN: usize = 2 * MAX_NAME_LEN;

/// Who may join a room matched by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Public,
    Grant,
    User,
}

/// What a member of a room may do and see, from the rule that matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPolicy {
    pub access: Access,
    /// Members may send messages (false: a read-only room for clients).
    pub publish: bool,
    /// Members get `presence` events and the member list in `joined`.
    pub presence: bool,
    /// A join with `since` replays history (false: `recovered: false`, no replay).
    pub history: bool,
    /// Anonymous users may join (public rooms only; never grant or user rooms).
    pub anonymous: bool,
}

impl RoomPolicy {
    /// Everything allowed: every room when no rules are configured.
    pub const OPEN: RoomPolicy = RoomPolicy {
        access: Access::Public,
        publish: true,
        presence: true,
        history: true,
        anonymous: true,
    };
}

/// A room name pattern: room-name characters, `*` for any run of them (possibly empty)
/// and, in `user` rules, one `{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Star,
    User,
}

/// One matcher step: a byte, any one byte, or any run of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Byte(u8),
    Any,
    Star,
}

/// Why a rule or a grant pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl Pattern {
    /// Parses a pattern; `{user}` is allowed only when `allow_user` (a `user` rule).
    pub fn parse(text: &str, allow_user: bool) -> Result<Pattern, PatternError> {
        if text.is_empty() || text.len() > MAX_PATTERN_LEN {
            return Err(PatternError(format!(
                "pattern `{}` must be 1 to {MAX_PATTERN_LEN} bytes",
                shorten(text)
            )));
        }
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut rest = text.as_bytes();
        while let Some(&b) = rest.first() {
            if rest.starts_with(USER_PLACEHOLDER.as_bytes()) {
                if !allow_user {
                    return Err(PatternError(format!(
                        "pattern `{}`: `{USER_PLACEHOLDER}` is only allowed in rules with access `user`",
                        shorten(text)
                    )));
                }
                flush(&mut literal, &mut parts);
                parts.push(Part::User);
                rest = &rest[USER_PLACEHOLDER.len()..];
                continue;
            }
            match b {
                b'*' => {
                    flush(&mut literal, &mut parts);
                    // `**` means the same as `*`.
                    if parts.last() != Some(&Part::Star) {
                        parts.push(Part::Star);
                    }
                }
                b if is_room_byte(b) => literal.push(b),
                _ => {
                    return Err(PatternError(format!(
                        "pattern `{}` may hold only A-Z a-z 0-9 _ - . : @, `*`{}",
                        shorten(text),
                        if allow_user { " and `{user}`" } else { "" }
                    )))
                }
            }
            rest = &rest[1..];
        }
        flush(&mut literal, &mut parts);
        let users = parts.iter().filter(|p| **p == Part::User).count();
        if allow_user && users != 1 {
            return Err(PatternError(format!(
                "pattern `{}` of a `user` rule must hold `{USER_PLACEHOLDER}` exactly once",
                shorten(text)
            )));
        }
        // User ids hold the same characters as room names, so with a `*` beside it
        // nothing marks where `{user}` ends: `dm.{user}.*` would give `dm.a.b.c` to both
        // `a` and `a.b`. Literals alone fix the user uniquely.
        if allow_user && parts.contains(&Part::Star) {
            return Err(PatternError(format!(
                "pattern `{}` of a `user` rule must not hold `*`: the user it names would be ambiguous",
                shorten(text)
            )));
        }
        Ok(Pattern { parts })
    }

    /// Whether `room` matches, with `{user}` standing for any non-empty run.
    pub fn matches(&self, room: &str) -> bool {
        glob(&self.steps(None), room.as_bytes())
    }

    /// Whether `room` matches with `{user}` standing for exactly `user`.
    pub fn matches_for(&self, room: &str, user: &str) -> bool {
        glob(&self.steps(Some(user)), room.as_bytes())
    }

    fn steps(&self, user: Option<&str>) -> Vec<Step> {
        let mut steps = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(bytes) => steps.extend(bytes.iter().map(|&b| Step::Byte(b))),
                Part::Star => steps.push(Step::Star),
                Part::User => match user {
                    Some(user) => steps.extend(user.bytes().map(Step::Byte)),
                    None => steps.extend([Step::Any, Step::Star]),
                },
            }
        }
        steps
    }
}

fn flush(literal: &mut Vec<u8>, parts: &mut Vec<Part>) {
    if !literal.is_empty() {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

/// The bytes a room name may hold (see [`crate::protocol::validate_room`]).
pub fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

/// Glob match in O(steps × text) time and O(text) space: no backtracking, so no pattern
/// can make a join slow.
fn glob(steps: &[Step], text: &[u8]) -> bool {
    // can[j]: the steps so far can consume exactly text[..j].
    let mut can = vec![false; text.len() + 1];
    can[0] = true;
    for step in steps {
        let mut next = vec![false; text.len() + 1];
        match *step {
            Step::Star => {
                let mut reachable = false;
                for j in 0..=text.len() {
                    reachable |= can[j];
                    next[j] = reachable;
                }
            }
            Step::Any => next[1..].copy_from_slice(&can[..text.len()]),
            Step::Byte(b) => {
                for j in 0..text.len() {
                    next[j + 1] = can[j] && text[j] == b;
                }
            }
        }
        can = next;
    }
    can[text.len()]
}

fn shorten(text: &str) -> &str {
    match text.char_indices().nth(MAX_PATTERN_LEN) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// One rule as configured.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    pattern: String,
    access: Access,
    #[serde(default = "yes")]
    publish: bool,
    #[serde(default = "yes")]
    presence: bool,
    #[serde(default = "yes")]
    history: bool,
    #[serde(default = "yes")]
    anonymous: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
struct RoomRule {
    pattern: Pattern,
    policy: RoomPolicy,
}

/// The configured rules, in order.
#[derive(Debug, Clone, Default)]
pub struct RoomRules {
    rules: Vec<RoomRule>,
}

/// Who is asking, as far as the rules care.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub user: &'a str,
    pub anonymous: bool,
    /// Room patterns granted by the connection token's `rooms` claim.
    pub grants: &'a [Pattern],
}

/// The answer to a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinCheck {
    /// The rule admits this user (public room, the user's own room, or a grant in the
    /// connection token, `by_token`).
    Allowed { policy: RoomPolicy, by_token: bool },
    /// A grant room the connection token does not grant: a room token or the join hook
    /// may still admit the user.
    NeedsGrant(RoomPolicy),
    /// Refused, with the reason the client is told.
    Denied(DenyReason),
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Rules are configured and none matches the room.
    NoRule,
    /// A `user` room of another user.
    OtherUsersRoom,
    /// Anonymous users may not join this room.
    Anonymous,
}

impl DenyReason {
    pub fn message(self, room: &str) -> String {
        match self {
            DenyReason::NoRule => format!("room `{room}` is not open to clients"),
            DenyReason::OtherUsersRoom => {
                format!("room `{room}` belongs to another user")
            }
            DenyReason::Anonymous => {
                format!("room `{room}` needs a signed-in user; connect with a token")
            }
        }
    }
}

impl RoomRules {
    /// Parses `CHAT_ROOM_RULES`; an empty or blank text means no rules (every room open).
    pub fn parse(json: &str) -> Result<RoomRules, PatternError> {
        if json.trim().is_empty() {
            return Ok(RoomRules::default());
        }
        let specs: Vec<RuleSpec> = serde_json::from_str(json).map_err(|e| {
            PatternError(format!(
                "not a JSON array of rules {{pattern, access, publish?, presence?, history?, anonymous?}}: {e}"
            ))
        })?;
        if specs.len() > MAX_RULES {
            return Err(PatternError(format!(
                "{} rules; at most {MAX_RULES}",
                specs.len()
            )));
        }
        let mut rules = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let pattern = Pattern::parse(&spec.pattern, spec.access == Access::User)
                .map_err(|e| PatternError(format!("rule {i}: {e}")))?;
            rules.push(RoomRule {
                pattern,
                policy: RoomPolicy {
                    access: spec.access,
                    publish: spec.publish,
                    presence: spec.presence,
                    history: spec.history,
                    anonymous: spec.anonymous && spec.access == Access::Public,
                },
            });
        }
        Ok(RoomRules { rules })
    }

    /// No rules: every room is public.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// The policy of the rule that owns `room`, if any (open rules: everything allowed).
    pub fn policy(&self, room: &str) -> Option<RoomPolicy> {
        if self.is_open() {
            return Some(RoomPolicy::OPEN);
        }
        self.rules
            .iter()
            .find(|r| r.pattern.matches(room))
            .map(|r| r.policy)
    }

    /// Whether `room`'s members see presence and member lists.
    pub fn presence_visible(&self, room: &str) -> bool {
        self.policy(room).is_some_and(|p| p.presence)
    }

    /// May `who` join `room` (and so read its live traffic)?
    pub fn check_join(&self, room: &str, who: Member<'_>) -> JoinCheck {
        let Some(rule) = (if self.is_open() {
            None
        } else {
            match self.rules.iter().find(|r| r.pattern.matches(room)) {
                Some(rule) => Some(rule),
                None => return JoinCheck::Denied(DenyReason::NoRule),
            }
        }) else {
            return JoinCheck::Allowed {
                policy: RoomPolicy::OPEN,
                by_token: false,
            };
        };
        let policy = rule.policy;
        match policy.access {
            Access::Public if who.anonymous && !policy.anonymous => {
                JoinCheck::Denied(DenyReason::Anonymous)
            }
            Access::Public => JoinCheck::Allowed {
                policy,
                by_token: false,
            },
            _ if who.anonymous => JoinCheck::Denied(DenyReason::Anonymous),
            Access::User if rule.pattern.matches_for(room, who.user) => JoinCheck::Allowed {
                policy,
                by_token: false,
            },
            Access::User => JoinCheck::Denied(DenyReason::OtherUsersRoom),
            Access::Grant if who.grants.iter().any(|g| g.matches(room)) => JoinCheck::Allowed {
                policy,
                by_token: true,
            },
            Access::Grant => JoinCheck::NeedsGrant(policy),
        }
    }
}

/// Who may send a direct message to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DmPolicy {
    /// Any user to any user. A DM to a user with no session is answered `user_offline`,
    /// so any client can learn whether any user id is online.
    #[default]
    Anyone,
    /// Only to a user who is in a room with the sender, a room whose presence the sender
    /// sees: the answer then tells nothing the sender could not see already.
    SharedRoom,
    /// Direct messages are off.
    Nobody,
}

/// Parses a token's `rooms` claim: at most [`MAX_GRANTS`] patterns with `*`.
pub fn parse_grants(patterns: &[String]) -> Result<Vec<Pattern>, PatternError> {
    if patterns.len() > MAX_GRANTS {
        return Err(PatternError(format!(
            "claim `rooms` holds {} patterns; at most {MAX_GRANTS}",
            patterns.len()
        )));
    }
    patterns
        .iter()
        .map(|p| Pattern::parse(p, false).map_err(|e| PatternError(format!("claim `rooms`: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> RoomRules {
        RoomRules::parse(json).unwrap()
    }

    fn user<'a>(name: &'a str, grants: &'a [Pattern]) -> Member<'a> {
        Member {
            user: name,
            anonymous: false,
            grants,
        }
    }

    fn anon(name: &str) -> Member<'_> {
        Member {
            user: name,
            anonymous: true,
            grants: &[],
        }
    }

    #[test]
    fn glob_matches_stars_and_literals() {
        let p = |s: &str| Pattern::parse(s, false).unwrap();
        let cases: &[(&str, &str, bool)] = &[
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("lobby", "lobb", false),
            ("lobby.*", "lobby.", true),
            ("lobby.*", "lobby.x.y", true),
            ("lobby.*", "lobbyx", false),
            ("*", "anything", true),
            ("*.*", "a.b", true),
            ("*.*", "ab", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a**", "a", true),
            ("*x", "x", true),
            ("*x", "y", false),
        ];
        for (pattern, room, want) in cases {
            assert_eq!(p(pattern).matches(room), *want, "{pattern} ~ {room}");
        }
    }

    #[test]
    fn user_placeholder_matches_any_user_or_exactly_one() {
        let p = Pattern::parse("inbox.{user}", true).unwrap();
        assert!(p.matches("inbox.bob"));
        assert!(
            !p.matches("inbox."),
            "{{user}} stands for at least one byte"
        );
        assert!(p.matches_for("inbox.bob", "bob"));
        assert!(!p.matches_for("inbox.bob", "alice"));
        assert!(!p.matches_for("inbox.bobby", "bob"));
        let q = Pattern::parse("dm.{user}.inbox", true).unwrap();
        assert!(q.matches_for("dm.a.b.inbox", "a.b"));
        assert!(!q.matches_for("dm.a.b.inbox", "a"));
        assert!(!q.matches_for("dm.a.b.inbox", "b"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        let err = |s: &str, u: bool| Pattern::parse(s, u).unwrap_err().0;
        assert!(err("", false).contains("1 to"));
        assert!(err(&"a".repeat(2 * MAX_NAME_LEN + 1), false).contains("1 to"));
        assert!(Pattern::parse(&"a".repeat(2 * MAX_NAME_LEN), false).is_ok());
        assert!(err("room with space", false).contains("may hold only"));
        assert!(err("inbox.{user}", false).contains("only allowed in rules with access `user`"));
        assert!(err("inbox.*", true).contains("exactly once"));
        assert!(err("{user}.{user}", true).contains("exactly once"));
        assert!(err("{usr}", false).contains("may hold only"));
        assert!(err("dm.{user}.*", true).contains("must not hold `*`"));
        assert!(err("*{user}", true).contains("must not hold `*`"));
    }

    #[test]
    fn no_rules_open_every_room() {
        let open = RoomRules::parse("  ").unwrap();
        assert!(open.is_open());
        assert_eq!(
            open.check_join("anything", anon("~x")),
            JoinCheck::Allowed {
                policy: RoomPolicy::OPEN,
                by_token: false
            }
        );
        assert_eq!(open.policy("x"), Some(RoomPolicy::OPEN));
        assert!(open.presence_visible("x"));
    }

    const RULES: &str = r#"[
        {"pattern": "lobby", "access": "public"},
        {"pattern": "members.*", "access": "public", "anonymous": false, "publish": false},
        {"pattern": "inbox.{user}", "access": "user", "presence": false},
        {"pattern": "team.*", "access": "grant", "history": false},
        {"pattern": "*", "access": "grant"}
    ]"#;

    #[test]
    fn first_matching_rule_decides() {
        let r = rules(RULES);
        let granted = [Pattern::parse("team.red", false).unwrap()];
        let alice = user("alice", &granted);
        assert!(matches!(
            r.check_join("lobby", anon("~guest")),
            JoinCheck::Allowed {
                by_token: false,
                ..
            }
        ));
        assert_eq!(
            r.check_join("members.x", anon("~guest")),
            JoinCheck::Denied(DenyReason::Anonymous)
        );
        let JoinCheck::Allowed { policy, .. } = r.check_join("members.x", alice) else {
            panic!("members.x refused to alice");
        };
        assert!(!policy.publish && policy.presence && policy.history);
        let JoinCheck::Allowed { policy, by_token } = r.check_join("inbox.alice", alice) else {
            panic!("alice's own room refused");
        };
        assert!(!by_token && !policy.presence);
        assert_eq!(
            r.check_join("inbox.bob", alice),
            JoinCheck::Denied(DenyReason::OtherUsersRoom),
            "another user's room must not fall through to the catch-all"
        );
        assert_eq!(
            r.check_join("inbox.alice", anon("~alice")),
            JoinCheck::Denied(DenyReason::Anonymous)
        );
        let JoinCheck::Allowed { policy, by_token } = r.check_join("team.red", alice) else {
            panic!("granted team.red refused");
        };
        assert!(by_token && !policy.history);
        assert!(matches!(
            r.check_join("team.blue", alice),
            JoinCheck::NeedsGrant(p) if !p.history
        ));
        assert!(matches!(
            r.check_join("other", alice),
            JoinCheck::NeedsGrant(p) if p.history
        ));
        assert_eq!(
            r.check_join("team.red", anon("~alice")),
            JoinCheck::Denied(DenyReason::Anonymous)
        );
        assert!(!r.presence_visible("inbox.alice"));
        assert!(r.presence_visible("lobby"));
    }

    #[test]
    fn refusals_name_the_room_and_what_to_do() {
        assert_eq!(
            DenyReason::NoRule.message("x"),
            "room `x` is not open to clients"
        );
        assert_eq!(
            DenyReason::OtherUsersRoom.message("inbox.bob"),
            "room `inbox.bob` belongs to another user"
        );
        assert!(DenyReason::Anonymous
            .message("t")
            .contains("connect with a token"));
    }

    #[test]
    fn unmatched_rooms_are_refused_once_rules_exist() {
        let r = rules(r#"[{"pattern": "lobby", "access": "public"}]"#);
        assert!(!r.is_open());
        assert_eq!(
            r.check_join("secret", user("alice", &[])),
            JoinCheck::Denied(DenyReason::NoRule)
        );
        assert_eq!(r.policy("secret"), None);
        assert!(!r.presence_visible("secret"));
    }

    #[test]
    fn anonymous_flag_only_opens_public_rooms() {
        let r = rules(r#"[{"pattern": "t.*", "access": "grant", "anonymous": true}]"#);
        assert_eq!(r.policy("t.x").map(|p| p.anonymous), Some(false));
    }

    #[test]
    fn bad_rules_name_the_rule() {
        let err = |s: &str| RoomRules::parse(s).unwrap_err().0;
        assert!(err("{}").contains("JSON array"));
        assert!(err(r#"[{"pattern": "a", "access": "secret"}]"#).contains("JSON array"));
        assert!(err(r#"[{"pattern": "a", "access": "public", "extra": 1}]"#).contains("JSON array"));
        assert!(err(
            r#"[{"pattern": "a", "access": "public"}, {"pattern": "b c", "access": "public"}]"#
        )
        .starts_with("rule 1:"));
        let rules = |n: usize| {
            format!(
                "[{}]",
                vec![r#"{"pattern": "a", "access": "public"}"#; n].join(",")
            )
        };
        assert!(err(&rules(MAX_RULES + 1)).contains("at most"));
        assert!(RoomRules::parse(&rules(MAX_RULES)).is_ok());
    }

    #[test]
    fn grants_are_bounded_patterns() {
        assert_eq!(parse_grants(&["team.*".into()]).unwrap().len(), 1);
        assert!(parse_grants(&["{user}".into()]).is_err());
        let many: Vec<String> = (0..=MAX_GRANTS).map(|i| format!("r{i}")).collect();
        assert!(parse_grants(&many).unwrap_err().0.contains("at most"));
        assert_eq!(parse_grants(&many[..MAX_GRANTS]).unwrap().len(), MAX_GRANTS);
    }
}
