//! The operator's first reconcile stage: any ChatCluster spec (JSON as the API server
//! would hand it over) is accepted or refused with a reason, never a panic, and a spec
//! that `validate` accepts can always be built into objects.
#![no_main]

use chatcluster_operator::build::{build, BuildContext};
use chatcluster_operator::crd::{ChatCluster, ChatClusterSpec};
use chatcluster_operator::reconcile::validate::validate;
use libfuzzer_sys::fuzz_target;

/// Names to try: valid, at the length limits, and invalid.
const NAMES: [&str; 6] = [
    "chat",
    "a",
    "chat-0123456789-0123456789-0123456789-01234567",
    "chat-0123456789-0123456789-0123456789-012345678",
    "Chat",
    "chat-",
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the name and namespace; the rest is the spec as JSON.
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let Ok(spec) = serde_json::from_slice::<ChatClusterSpec>(json) else {
        return;
    };
    let mut cluster = ChatCluster::new(NAMES[usize::from(pick) % NAMES.len()], spec);
    cluster.metadata.namespace = Some(if pick & 0x80 != 0 {
        "n".repeat(40)
    } else {
        "chat".into()
    });
    cluster.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    match validate(&cluster) {
        Ok(()) => {
            if let Err(e) = build(&cluster, BuildContext::default()) {
                panic!("validated but not buildable: {e}");
            }
        }
        Err(invalid) => assert!(!invalid.reason.is_empty() && !invalid.message.is_empty()),
    }
});
