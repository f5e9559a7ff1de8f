//! Issue 22, item 6: bulk reads do not starve nodes. Forty readers listing every job of a
//! server that stores many keep going while a node heartbeats and claims: each heartbeat
//! and claim must answer within a bound far below the lease, and the readers that cannot
//! be served at once are told to come back soon (503 with Retry-After), not queued for
//! half a minute each.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::browser::http;
use common::*;
use serde_json::json;

/// Jobs stored: more than one answer holds (20,000), so the readers ask for the newest
/// 16,000, a few megabytes.
const JOBS: usize = 20_400;
const LISTED: usize = 16_000;
/// Parallel readers, as in the issue.
const READERS: usize = 40;
/// How long the readers keep reading while the node's requests are timed.
const LOAD: Duration = Duration::from_secs(12);
/// Longest a heartbeat or a claim may take under that load: a third of the usual 30 s
/// lease is when a node's heartbeat is due; this is far below it.
const BOUND: Duration = Duration::from_secs(2);
/// Longest a reader that is not served may wait to be told so (the server waits a second
/// for a turn; a reader queued for half a minute holds its connection and request).
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

fn post(url: &str, body: serde_json::Value) -> serde_json::Value {
    let answer = http(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    assert!(
        (200..300).contains(&answer.status),
        "POST {url}: {} {}",
        answer.status,
        answer.body
    );
    if answer.body.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&answer.body).expect("a JSON answer")
}

#[test]
fn forty_bulk_readers_do_not_delay_heartbeats_or_claims() {
    let tmp = tempdir();
    let server = Server::start_with_lease(tmp.path(), "30s");
    let url = server.url.clone();
    // Many jobs, ended (cancelled) so that no claim has to look at them.
    for batch in 0..JOBS / 4080 {
        let jobs: Vec<_> = (0..4080)
            .map(|i| json!({"name": format!("job-{batch}-{i}-with-a-longer-name"), "run": "true"}))
            .collect();
        let graph = post(
            &format!("{url}/v1/graphs"),
            json!({"graph": {"jobs": jobs}}),
        );
        let id = graph["id"].as_i64().expect("a graph id");
        post(&format!("{url}/v1/graphs/{id}/cancel"), json!({}));
    }
    // Response size is capped: a listing without a limit is one page, and no limit asks
    // for more than 20,000.
    let count = |query: &str| {
        let answer = http("GET", &format!("{url}/v1/jobs{query}"), &[], "");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let list: serde_json::Value = serde_json::from_str(&answer.body).expect("a listing");
        list["jobs"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(""), 1000);
    assert_eq!(count("?limit=1000000"), 20_000);
    let node = post(
        &format!("{url}/v1/nodes"),
        json!({"name": "timed", "slots": 1, "properties": {"os": "linux", "arch": "x86_64",
            "hostname": "timed", "cores": 1, "memory_mb": 1, "tags": {}}}),
    );
    let node = node["id"].as_i64().expect("a node id");

    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Each reader: the longest it waited for a 503.
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            let (served, refused) = (served.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut slowest_refusal = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let answer = http("GET", &format!("{url}/v1/jobs?limit={LISTED}"), &[], "");
                    match answer.status {
                        200 => {
                            let list: serde_json::Value =
                                serde_json::from_str(&answer.body).expect("a JSON listing");
                            assert_eq!(list["jobs"].as_array().map(Vec::len), Some(LISTED));
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            slowest_refusal = slowest_refusal.max(asked.elapsed());
                            let after: u64 = answer
                                .header("retry-after")
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or_else(|| {
                                    panic!("a 503 without Retry-After: {}", answer.body)
                                });
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_secs(after.min(5)));
                        }
                        other => panic!("GET /v1/jobs: {other} {}", answer.body),
                    }
                }
                slowest_refusal
            })
        })
        .collect();
    // The readers are reading: the first listings are out.
    wait_until(
        "the first listing",
        Duration::from_secs(60),
        || match served.load(Ordering::Relaxed) {
            0 => Err("none yet".to_string()),
            n => Ok(n),
        },
    );

    let mut slowest = (Duration::ZERO, "");
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < LOAD {
        for (what, path, body) in [
            ("heartbeat", "heartbeat", json!({"runs": []})),
            ("claim", "claim", json!({"max": 1, "wait_ms": 0})),
        ] {
            let t = Instant::now();
            let answer = http(
                "POST",
                &format!("{url}/v1/nodes/{node}/{path}"),
                &[("Content-Type", "application/json")],
                &body.to_string(),
            );
            let took = t.elapsed();
            assert_eq!(answer.status, 200, "{what}: {}", answer.body);
            if took > slowest.0 {
                slowest = (took, what);
            }
            looks += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let slowest_refusal = readers
        .into_iter()
        .map(|r| r.join().expect("a reader panicked"))
        .max()
        .unwrap_or_default();
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "{looks} node requests, slowest {} ms ({}); {served} listings served, {refused} refused \
         (slowest refusal {} ms)",
        slowest.0.as_millis(),
        slowest.1,
        slowest_refusal.as_millis()
    );
    assert!(
        slowest.0 < BOUND,
        "a {} took {} ms while {READERS} readers listed {LISTED} jobs ({served} served, \
         {refused} refused)",
        slowest.1,
        slowest.0.as_millis()
    );
    // Forty readers cannot all be served at once: those that wait are told to come back.
    assert!(
        refused > 0,
        "{READERS} readers were all served or queued ({served} served): none was told to \
         come back later"
    );
    assert!(
        slowest_refusal < REFUSED_WITHIN,
        "a reader waited {} ms to be refused",
        slowest_refusal.as_millis()
    );
}
