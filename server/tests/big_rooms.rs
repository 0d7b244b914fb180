//! Big rooms cost what they should: `joined` carries the member count and the first page
//! of members, later pages come on request, and above the presence limit members get the
//! count once a second instead of a frame per arrival.

mod common;

use std::time::{Duration, Instant};

use chat_server::config::Settings;
use chat_server::protocol::MEMBERS_PAGE;
use common::*;
use serde_json::json;

fn settings(presence_max_members: usize) -> Settings {
    Settings {
        presence_max_members,
        ..Settings::local_test()
    }
}

#[tokio::test]
async fn the_member_list_comes_in_pages_with_the_count() {
    let server = start(settings(0)).await;
    let total = MEMBERS_PAGE + 30;
    let mut members = Vec::new();
    for i in 0..total {
        let mut c = Client::connect(server.public_addr, &format!("m{i:03}")).await;
        c.join("big").await;
        members.push(c);
    }
    let mut late = Client::connect(server.public_addr, "zz-late").await;
    let j = late.join("big").await;
    assert_eq!(j["member_count"], total + 1);
    let first: Vec<String> = serde_json::from_value(j["members"].clone()).unwrap();
    assert_eq!(first.len(), MEMBERS_PAGE, "the first page only");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted, "by name");
    assert_eq!(first[0], "m000");

    let mut all = first;
    let mut after = all.last().cloned();
    let mut pages = 1;
    while let Some(a) = after {
        late.send(json!({"type":"members","room":"big","after":a}))
            .await;
        let page = late.recv_type("members").await;
        assert_eq!(page["room"], "big");
        assert_eq!(page["member_count"], total + 1);
        let names: Vec<String> = serde_json::from_value(page["members"].clone()).unwrap();
        assert!(names.len() <= MEMBERS_PAGE);
        all.extend(names);
        after = page["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 2);
    let mut expected: Vec<String> = (0..total).map(|i| format!("m{i:03}")).collect();
    expected.push("zz-late".into());
    assert_eq!(all, expected, "every member once, in order, over the pages");

    // Asking for a room one is not in is refused, and says so.
    late.send(json!({"type":"members","room":"elsewhere"}))
        .await;
    let e = late.recv_type("error").await;
    assert_eq!(e["code"], "not_joined");
    late.send(json!({"type":"members","room":"big","after":"bad name!"}))
        .await;
    let e = late.recv_type("error").await;
    assert_eq!(e["code"], "invalid_user", "{e}");
}

#[tokio::test]
async fn above_the_presence_limit_members_get_a_count_once_a_second() {
    let limit = 20;
    let server = start(settings(limit)).await;
    let mut watcher = Client::connect(server.public_addr, "watcher").await;
    let j = watcher.join("crowd").await;
    assert_eq!(j["member_count"], 1);
    let own = watcher.recv_type("presence").await;
    assert_eq!(
        (own["joined"].clone(), own["member_count"].clone()),
        (json!(["watcher"]), json!(1))
    );

    // Below the limit: one frame per arrival, naming the user, with the count.
    let mut crowd = Vec::new();
    for i in 0..limit - 1 {
        let mut c = Client::connect(server.public_addr, &format!("c{i:02}")).await;
        c.join("crowd").await;
        crowd.push(c);
        let p = watcher.recv_type("presence").await;
        assert_eq!(p["joined"], json!([format!("c{i:02}")]));
        assert_eq!(p["member_count"], i + 2);
    }
    // Above it: 40 more arrive quickly; the watcher gets counts, not names, at most
    // one a second, and the last says 60.
    let started = Instant::now();
    for i in limit - 1..limit + 39 {
        let mut c = Client::connect(server.public_addr, &format!("c{i:02}")).await;
        c.join("crowd").await;
        crowd.push(c);
    }
    let mut frames = Vec::new();
    loop {
        let p = watcher.recv_type("presence").await;
        assert_eq!(p["joined"], json!([]), "no names above the limit: {p}");
        assert_eq!(p["left"], json!([]), "{p}");
        frames.push(p["member_count"].as_u64().unwrap());
        if frames.last() == Some(&60) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs() + 2;
    assert!(
        frames.len() as u64 <= seconds,
        "{} count frames in about {seconds}s: {frames:?}",
        frames.len()
    );
    // Nothing more while nothing changes.
    match watcher.next_event(Duration::from_millis(1500)).await {
        Event::Timeout => {}
        other => panic!("a frame with no change: {other:?}"),
    }
}
