//! What happens to a room when Redis loses or moves its data: a master of a real Redis
//! Cluster killed mid-traffic (its replica promoted), the slot of a busy room migrated
//! to another master mid-traffic, and history that goes back in time (the loss a
//! failover to a lagging replica causes, made deterministic). The rule everywhere: an
//! acknowledged message reaches every subscriber exactly once, in offset order, or the
//! room's epoch changes and the subscriber is told `recovered: false`. Never a silent
//! loss.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::sync::lock;
use chatcluster_e2e::clients::publisher::PublisherLog;
use chatcluster_e2e::clients::subscriber::SubscriberLog;
use chatcluster_e2e::clients::ws::{connect, join, recv_json, recv_type, send_and_ack, send_json};
use chatcluster_e2e::harness::local_cluster::LocalCluster;
use serde_json::Value;

#[macro_use]
mod multinode_support;

use multinode_support::{
    after_warm_up, cluster, serial, spawn_subscribers, wait_subscribers_live, Backend,
};

/// Publishes `total` messages to `room` through `url` one at a time, at most `rate` a
/// second. A message refused with an error (`unavailable` while a slot has no master)
/// is sent again until acknowledged; a broken connection is reopened. Acks go to `log`,
/// refusals are counted.
async fn publish_until_acked(
    url: String,
    room: String,
    total: usize,
    rate: u32,
    log: Arc<Mutex<PublisherLog>>,
    refusals: Arc<AtomicU64>,
) {
    let pause = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ws = None;
    for i in 0..total {
        let body = format!("body-{i}");
        let mut attempt = 0;
        loop {
            assert!(Instant::now() < deadline, "message {i} never acknowledged");
            attempt += 1;
            if ws.is_none() {
                if let Ok((mut fresh, _, _)) = connect(&url, "user=publisher", None).await {
                    if join(&mut fresh, &room, None).await.is_ok() {
                        ws = Some(fresh);
                    }
                }
                if ws.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let Some(socket) = ws.as_mut() else { continue };
            let r = format!("m{i}-{attempt}");
            let frame = serde_json::json!({"type":"send","room":room,"body":body,"ref":r});
            if send_json(socket, frame).await.is_err() {
                ws = None;
                continue;
            }
            match answer_to(socket, &r).await {
                Some(v) if v["type"] == "ack" => {
                    let offset = v["offset"].as_u64().unwrap_or(0);
                    lock(&log)
                        .acked
                        .entry(room.clone())
                        .or_default()
                        .insert(offset, body.clone());
                    break;
                }
                Some(v) => {
                    refusals.fetch_add(1, Ordering::Relaxed);
                    lock(&log).errors.push(v.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => ws = None,
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// The ack or error answering `r`; `None` if the connection broke or stayed silent.
async fn answer_to(ws: &mut chatcluster_e2e::clients::ws::Ws, r: &str) -> Option<Value> {
    loop {
        match recv_json(ws, Duration::from_secs(10)).await {
            Ok(Some(v)) if (v["type"] == "ack" || v["type"] == "error") && v["ref"] == r => {
                return Some(v)
            }
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// The loss rule, per subscriber: with no `recovered: false`, every acknowledged
/// message exactly once at its offset; with one, the room's epoch must have changed
/// since `epoch`. Returns how many subscribers were told `recovered: false`.
async fn assert_nothing_lost_silently(
    c: &LocalCluster,
    logs: &[Arc<Mutex<SubscriberLog>>],
    room: &str,
    warm: u64,
    acked: &BTreeMap<u64, String>,
    epoch: &str,
) -> usize {
    let mut told = 0;
    for (i, l) in logs.iter().enumerate() {
        let l = lock(l);
        assert_eq!(l.duplicates, 0, "sub{i} got a duplicate");
        assert_eq!(l.first_disorder(), None, "sub{i}: messages in offset order");
        if l.not_recovered > 0 {
            told += 1;
            continue;
        }
        let got = after_warm_up(&l, room, warm);
        for (offset, body) in acked {
            assert_eq!(
                got.get(offset),
                Some(body),
                "sub{i}: acknowledged message {offset} missing or different, and no recovered: false"
            );
        }
    }
    if told > 0 {
        let (mut probe, _, _) = connect(&c.nodes[0].ws_url(), "user=epoch-probe", None)
            .await
            .unwrap();
        let j = join(&mut probe, room, None).await.unwrap();
        assert_ne!(
            j["epoch"], epoch,
            "subscribers were told recovered: false, so the room's epoch must have changed"
        );
    }
    told
}

/// Waits (bounded) until every subscriber has every acknowledged message or was told
/// `recovered: false`.
async fn wait_caught_up(
    logs: &[Arc<Mutex<SubscriberLog>>],
    room: &str,
    warm: u64,
    acked: &BTreeMap<u64, String>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = logs.iter().all(|l| {
            let l = lock(l);
            l.not_recovered > 0 || {
                let got = after_warm_up(&l, room, warm);
                acked.keys().all(|o| got.contains_key(o))
            }
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "subscribers did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's epoch, from a fresh join at node 0.
async fn room_epoch(c: &LocalCluster, room: &str) -> String {
    let (mut probe, _, _) = connect(&c.nodes[0].ws_url(), "user=epoch-probe", None)
        .await
        .unwrap();
    join(&mut probe, room, None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What a fault does to a busy room on a Redis Cluster while a publisher sends through
/// node 1 and 8 resuming subscribers listen through haproxy.
enum Fault {
    /// SIGKILL the master of the room's slot; its replica takes over.
    KillMaster,
    /// Move the room's slot to another master.
    MigrateSlot,
}

async fn busy_room_survives(fault: Fault) {
    let _s = serial().await;
    let mut c = cluster(Backend::Cluster, 2, &[]);
    let room = "busy".to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let (logs, tasks) = spawn_subscribers(8, &c.haproxy_url(), std::slice::from_ref(&room), &stop);
    let warm =
        wait_subscribers_live(&c.nodes[0].ws_url(), std::slice::from_ref(&room), &logs).await;
    let epoch = room_epoch(&c, &room).await;
    let publog = Arc::new(Mutex::new(PublisherLog::default()));
    let refusals = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_until_acked(
        c.nodes[0].ws_url(),
        room.clone(),
        300,
        50,
        publog.clone(),
        refusals.clone(),
    ));
    multinode_support::wait_acked(&publog, 60).await;
    let redis = c.redis.cluster();
    let slot = tokio::task::block_in_place(|| redis.keyslot(&format!("chat:room:{{{room}}}:log")))
        .unwrap();
    let started = Instant::now();
    let what = match fault {
        Fault::KillMaster => {
            let new_master =
                tokio::task::block_in_place(|| redis.fail_over_slot(slot, Duration::from_secs(30)))
                    .unwrap();
            format!("master of slot {slot} killed; replica on port {new_master} took over")
        }
        Fault::MigrateSlot => {
            let from = tokio::task::block_in_place(|| redis.master_of(slot)).unwrap();
            let to = tokio::task::block_in_place(|| redis.topology())
                .unwrap()
                .into_iter()
                .find(|n| n.master && n.healthy && n.port != from.port)
                .unwrap();
            tokio::task::block_in_place(|| redis.migrate_slot(slot, to.port)).unwrap();
            assert_eq!(
                tokio::task::block_in_place(|| redis.master_of(slot))
                    .unwrap()
                    .port,
                to.port,
                "the slot moved"
            );
            format!(
                "slot {slot} moved from port {} to port {}",
                from.port, to.port
            )
        }
    };
    let fault_secs = started.elapsed().as_secs_f64();
    publisher.await.unwrap();
    let acked = lock(&publog).acked.get(&room).cloned().unwrap_or_default();
    assert_eq!(
        acked.len(),
        300,
        "every message was acknowledged in the end"
    );
    wait_caught_up(&logs, &room, warm[&room], &acked).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let told = assert_nothing_lost_silently(&c, &logs, &room, warm[&room], &acked, &epoch).await;
    println!(
        "{what} in {fault_secs:.1}s; 300 messages acknowledged, {} refusals meanwhile; \
         {} of {} subscribers told recovered: false, the rest got every message exactly once",
        refusals.load(Ordering::Relaxed),
        told,
        logs.len()
    );
    if matches!(fault, Fault::MigrateSlot) {
        assert_eq!(
            told, 0,
            "a migration loses no history, so every resume is recovered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_traffic_loses_nothing_silently() {
    busy_room_survives(Fault::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_rooms_slot_migrated_mid_traffic_loses_nothing() {
    busy_room_survives(Fault::MigrateSlot).await;
}

/// Makes Redis forget the room's messages after offset `head` while keeping the room,
/// which is what a failover to a replica that had not received them does: the head goes
/// back, and the history stream is rebuilt without them (a stream never takes an id at
/// or below one it has held, and the replica's never held them).
fn roll_back(c: &LocalCluster, backend: Backend, room: &str, head: u64) {
    let id = match backend {
        Backend::Single => room.to_owned(),
        Backend::Cluster => format!("{{{room}}}"),
    };
    let meta = format!("chat:room:{id}:meta");
    let log = format!("chat:room:{id}:log");
    let script = "local kept = redis.call('XRANGE', KEYS[2], '-', '0-' .. ARGV[1]) \
                  redis.call('DEL', KEYS[2]) \
                  for _, e in ipairs(kept) do redis.call('XADD', KEYS[2], e[1], unpack(e[2])) end \
                  redis.call('HSET', KEYS[1], 'head', ARGV[1]) return #kept";
    let kept = c
        .redis
        .cli(&["EVAL", script, "2", &meta, &log, &head.to_string()])
        .unwrap();
    assert_eq!(kept, head.to_string(), "history kept up to offset {head}");
}

/// Frames up to the next `joined`, which must come before any message.
async fn joined_before_any_message(ws: &mut chatcluster_e2e::clients::ws::Ws) -> Value {
    loop {
        let v = recv_json(ws, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            v["type"], "message",
            "a message from history that went back in time was delivered: {v}"
        );
        if v["type"] == "joined" {
            return v;
        }
    }
}

/// History that goes back in time never reuses an offset a client holds. A node that
/// receives an offset it already delivered starts a new epoch and its sessions are told
/// `recovered: false`; a client resuming past the head gets a new epoch too.
async fn history_that_went_back_in_time_starts_a_new_epoch(backend: Backend) {
    let _s = serial().await;
    let c = cluster(backend, 2, &[]);
    let (mut p, _, _) = connect(&c.nodes[0].ws_url(), "user=p", None).await.unwrap();
    let (mut a, _, _) = connect(&c.nodes[1].ws_url(), "user=a", None).await.unwrap();
    let epoch = join(&mut a, "r", None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    join(&mut p, "r", None).await.unwrap();
    for i in 1..=5 {
        let offset = send_and_ack(&mut p, "r", &format!("m{i}"), &i.to_string())
            .await
            .unwrap();
        assert_eq!(offset, i);
    }
    for i in 1..=5u64 {
        assert_eq!(recv_type(&mut a, "message").await.unwrap()["offset"], i);
    }

    // Redis forgets offsets 4 and 5; the next publish is acknowledged with offset 4.
    tokio::task::block_in_place(|| roll_back(&c, backend, "r", 3));
    assert_eq!(send_and_ack(&mut p, "r", "after", "6").await.unwrap(), 4);
    let j = joined_before_any_message(&mut a).await;
    assert_eq!(j["recovered"], false, "{j}");
    let new_epoch = j["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch, "a new epoch, not offsets reused: {j}");
    let offset = send_and_ack(&mut p, "r", "next", "7").await.unwrap();
    let m = recv_type(&mut a, "message").await.unwrap();
    assert_eq!(
        (
            m["epoch"].as_str(),
            m["offset"].as_u64(),
            m["body"].as_str()
        ),
        (Some(new_epoch.as_str()), Some(offset), Some("next"))
    );

    // A session whose node resyncs it (here after its pub/sub connections were cut)
    // while history is behind its position gets a new epoch too.
    tokio::task::block_in_place(|| roll_back(&c, backend, "r", offset - 1));
    tokio::task::block_in_place(|| {
        c.redis
            .cli_everywhere(&["CLIENT", "KILL", "TYPE", "pubsub"])
    })
    .unwrap();
    let j = joined_before_any_message(&mut a).await;
    assert_eq!(j["recovered"], false, "{j}");
    let third_epoch = j["epoch"].as_str().unwrap().to_owned();
    assert_ne!(
        third_epoch, new_epoch,
        "a resync past the head starts a new epoch: {j}"
    );

    // A client cannot wipe a room by claiming an offset beyond the head: it is told
    // `recovered: false`, and the room and its history stay as they are.
    let offset = send_and_ack(&mut p, "r", "kept", "8").await.unwrap();
    let (mut b, _, _) = connect(&c.nodes[0].ws_url(), "user=b", None).await.unwrap();
    let j = join(&mut b, "r", Some((&third_epoch, offset + 1_000_000)))
        .await
        .unwrap();
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(
        j["epoch"], third_epoch,
        "a client's claim changes nothing: {j}"
    );
    let (mut d, _, _) = connect(&c.nodes[1].ws_url(), "user=d", None).await.unwrap();
    let j = join(&mut d, "r", Some((&third_epoch, offset - 1)))
        .await
        .unwrap();
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(recv_type(&mut d, "message").await.unwrap()["body"], "kept");
}

on_both_backends!(history_that_went_back_in_time_starts_a_new_epoch);
