//! Configuration: command lines (flags and their values, durations, sizes, address
//! ranges), and the drain request body the admin port parses. Every input is accepted
//! as valid settings or refused with a message naming what to fix; never a panic.
#![no_main]

use chat_server::client_addr::TrustedProxies;
use chat_server::config::{parse_duration, Args, Settings};
use chat_server::drain::{parse_drain_request, plan_drain, DrainPlan};
use clap::Parser;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Argv(Vec<&'a str>),
    Duration(&'a str),
    Proxies(&'a str),
    DrainBody(&'a [u8]),
}

fuzz_target!(|input: Input| match input {
    Input::Argv(argv) => {
        // Flags that name files would read the disk; everything else is pure.
        if argv.iter().any(|a| a.contains("file")) {
            return;
        }
        let Ok(args) = Args::try_parse_from(std::iter::once("chat-server").chain(argv)) else {
            return;
        };
        match Settings::from_args(&args) {
            Ok(settings) => assert!(settings.validate().is_ok()),
            Err(e) => assert!(e.0.contains("CHAT_") || e.0.contains("authenticate"), "{e}"),
        }
    }
    Input::Duration(text) => {
        if let Err(e) = parse_duration("CHAT_X", text) {
            assert!(e.0.starts_with("CHAT_X"));
        }
    }
    Input::Proxies(text) => {
        let _ = TrustedProxies::parse(text);
    }
    Input::DrainBody(body) => {
        let configured = DrainPlan {
            notice_delay: Duration::ZERO,
            reconnect_window: Duration::from_secs(10),
            deadline: Duration::from_secs(25),
            max_jitter: Duration::from_secs(1),
            keep_running: false,
        };
        if let Ok(request) = parse_drain_request(body) {
            if let Ok(plan) = plan_drain(&request, configured) {
                assert!(plan.notice_delay + plan.reconnect_window < plan.deadline);
            }
        }
    }
});
