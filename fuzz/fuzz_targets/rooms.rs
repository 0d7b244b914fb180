//! The room-rule matcher: rules from any text, any room and user. Never a panic; the
//! glob agrees with a plain backtracking matcher; a user rule admits only its own user;
//! an anonymous user gets into public rooms only; and with rules set, nothing outside
//! them is open.
#![no_main]

use chat_server::rooms::{JoinCheck, Member, Pattern, RoomRules};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    rules: &'a str,
    pattern: &'a str,
    room: &'a str,
    user: &'a str,
    anonymous: bool,
    grants: Vec<&'a str>,
}

fuzz_target!(|input: Input| {
    // The matcher against a reference on short inputs (backtracking is exponential).
    if let Ok(p) = Pattern::parse(input.pattern, false) {
        if input.pattern.len() <= 12 && input.room.len() <= 16 {
            assert_eq!(
                p.matches(input.room),
                reference(input.pattern.as_bytes(), input.room.as_bytes()),
                "{:?} ~ {:?}",
                input.pattern,
                input.room
            );
        }
    }
    if let Ok(p) = Pattern::parse(input.pattern, true) {
        // Matching for one user implies the rule owns the room, and a user room belongs
        // to one user only: no other user id matches it.
        if !input.user.is_empty() && p.matches_for(input.room, input.user) {
            assert!(p.matches(input.room));
            for other in input.grants.iter().filter(|g| !g.is_empty() && **g != input.user) {
                assert!(!p.matches_for(input.room, other), "{:?}: {:?} and {other:?}", input.room, input.user);
            }
        }
    }
    let Ok(rules) = RoomRules::parse(input.rules) else {
        return;
    };
    let grants: Vec<Pattern> = input
        .grants
        .iter()
        .filter_map(|g| Pattern::parse(g, false).ok())
        .collect();
    let who = Member {
        user: input.user,
        anonymous: input.anonymous,
        grants: &grants,
    };
    let check = rules.check_join(input.room, who);
    match check {
        JoinCheck::Allowed { policy, by_token } => {
            assert_eq!(rules.policy(input.room), Some(policy));
            if input.anonymous {
                assert!(policy.anonymous && !by_token);
            }
            if by_token {
                assert!(grants.iter().any(|g| g.matches(input.room)));
            }
        }
        JoinCheck::NeedsGrant(policy) => {
            assert!(!input.anonymous);
            assert_eq!(rules.policy(input.room), Some(policy));
        }
        JoinCheck::Denied(_) => {}
    }
    if rules.policy(input.room).is_none() {
        assert!(matches!(check, JoinCheck::Denied(_)));
    }
});

/// `*` any run, `{user}` one or more bytes, everything else literal; backtracking.
fn reference(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => (0..=t.len()).any(|i| reference(&p[1..], &t[i..])),
        Some(&c) => t.first() == Some(&c) && reference(&p[1..], &t[1..]),
    }
}
