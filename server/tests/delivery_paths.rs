//! The fan-out writes live traffic to a subscriber's socket itself when nothing is ahead
//! of it there, and leaves it to the session's task otherwise; either way each client
//! gets every message once, in order. (The edge cases of the direct write itself, partial
//! writes, EAGAIN, a close racing it, are unit tests in `server/src/wire.rs`; the seam
//! between a replay and live traffic is in `resume.rs`.)

mod common;

use common::*;
use serde_json::json;

const DIRECT: &str = "chat_deliveries_total{path=\"direct\"}";
const QUEUED: &str = "chat_deliveries_total{path=\"queued\"}";

#[tokio::test]
async fn idle_subscribers_get_live_messages_from_the_fan_out_directly_and_in_order() {
    let server = start_default().await;
    let (public, admin) = (server.public_addr, server.admin_addr);
    let subscribers = 20;
    let messages = 50u64;
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut c = Client::connect(public, &format!("sub{i}")).await;
        c.join("quiet").await;
        subs.push(c);
    }
    let mut publisher = Client::connect(public, "pub").await;
    publisher.join("quiet").await;
    // Presence of the joins above has been delivered once every subscriber has seen the
    // publisher arrive; count from here.
    for c in &mut subs {
        loop {
            let v = c.recv().await;
            if v["type"] == "presence" && v["joined"] == json!(["pub"]) {
                break;
            }
        }
    }
    let (direct_before, queued_before) = (metric(admin, DIRECT).await, metric(admin, QUEUED).await);
    for i in 0..messages {
        publish(&mut publisher, "quiet", &format!("m{i}")).await;
    }
    for c in &mut subs {
        let offsets: Vec<u64> = {
            let mut got = Vec::new();
            while got.len() < messages as usize {
                got.push(c.recv_type("message").await["offset"].as_u64().unwrap());
            }
            got
        };
        assert_eq!(offsets, (1..=messages).collect::<Vec<_>>(), "{}", c.user);
    }
    let direct = metric(admin, DIRECT).await - direct_before;
    let queued = metric(admin, QUEUED).await - queued_before;
    let to_subscribers = (subscribers as u64 * messages) as f64;
    // The publisher's own copies may go either way (its session is busy with the
    // `send` while they arrive); the idle subscribers' go direct, but for a rare one
    // that meets its session answering a ping.
    assert_eq!(
        direct + queued,
        to_subscribers + messages as f64,
        "every delivery counted once"
    );
    assert!(
        direct >= to_subscribers * 0.95,
        "direct {direct}, queued {queued} of {to_subscribers} deliveries to idle subscribers"
    );
    let delivered = metric(admin, "chat_messages_delivered_total").await;
    assert!(
        delivered >= to_subscribers + messages as f64,
        "delivered {delivered}"
    );
}
