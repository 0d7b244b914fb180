//! History and the resume decision: whatever the sequence of appends, prunes and evictions
//! and whatever `since` a client sends, a resume replays the whole gap, in offset order,
//! ending at the head, or nothing (never a partial replay), and never panics (including
//! offsets at the top of the u64 range). The replay comes in pages of any size: the
//! first page and the following ones add up to the whole gap.
#![no_main]

use chat_server::history::{resume_decision, HistoryLimits, ResumeDecision, RoomLog};
use chat_server::protocol::Position;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Append { after_ms: u16 },
    Prune { after_ms: u16 },
    DropOldest,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_messages: u8,
    max_age_ms: u16,
    ops: Vec<Op>,
    since: Option<(bool, u64)>,
    /// Messages per replay page.
    page: u8,
    /// resume_decision on its own, with any head and oldest offset.
    raw: (u64, Option<u64>, u64),
}

fuzz_target!(|input: Input| {
    let (head, oldest, offset) = input.raw;
    let since = Position {
        epoch: "e".into(),
        offset,
    };
    match resume_decision("e", head, oldest, Some(&since)) {
        ResumeDecision::Replay { from, to } => {
            assert_eq!(to, head);
            assert_eq!(from, offset + 1);
        }
        ResumeDecision::UpToDate => assert_eq!(offset, head),
        ResumeDecision::NotRecovered => {}
        ResumeDecision::Fresh => panic!("fresh for a since"),
    }

    let limits = HistoryLimits {
        max_messages: usize::from(input.max_messages).max(1),
        max_age_ms: u64::from(input.max_age_ms),
    };
    let mut log = RoomLog::new("e".into(), limits);
    let mut now = 1_000_000u64;
    for op in &input.ops {
        match op {
            Op::Append { after_ms } => {
                now += u64::from(*after_ms);
                let offset = log.next_offset();
                log.append(now, offset.to_string().into(), now);
            }
            Op::Prune { after_ms } => {
                now += u64::from(*after_ms);
                log.prune(now);
            }
            Op::DropOldest => {
                log.drop_oldest();
            }
        }
    }
    let since = input.since.map(|(same_epoch, offset)| Position {
        epoch: if same_epoch { "e".into() } else { "x".into() },
        offset,
    });
    let head = log.head();
    let page = usize::from(input.page).max(1);
    let (decision, frames) = log.replay(since.as_ref(), now, page);
    assert!(frames.len() <= page);
    let mut offsets: Vec<u64> = frames
        .iter()
        .map(|f| f.as_str().parse().expect("frames are their offsets"))
        .collect();
    if let ResumeDecision::Replay { .. } = decision {
        // The rest of the gap, page by page, as a joining session asks for it.
        while let Some(&last) = offsets.last() {
            if last >= head {
                break;
            }
            let next = log.page("e", last, head, page).expect("nothing was trimmed meanwhile");
            assert!(!next.is_empty() && next.len() <= page);
            offsets.extend(next.iter().map(|(o, _)| *o));
        }
    }
    match decision {
        ResumeDecision::Fresh => {
            assert!(since.is_none());
            assert!(offsets.is_empty());
        }
        ResumeDecision::Replay { from, to } => {
            let since = since.expect("a replay answers a since");
            assert_eq!(since.epoch, "e");
            assert_eq!((from, to), (since.offset + 1, head));
            // The whole gap, in order, nothing else.
            let expected: Vec<u64> = (from..=to).collect();
            assert_eq!(offsets, expected);
        }
        ResumeDecision::UpToDate => {
            assert_eq!(since.map(|s| (s.epoch, s.offset)), Some(("e".into(), head)));
            assert!(offsets.is_empty());
        }
        ResumeDecision::NotRecovered => assert!(offsets.is_empty()),
    }
});
