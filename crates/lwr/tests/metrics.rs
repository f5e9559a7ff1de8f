//! `GET /metrics`: Prometheus text that the reference parser (the `prometheus_client`
//! package from PyPI, which `.ci/run` installs) reads, whose counters match the jobs run,
//! and which needs a reader's token like any other read.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::browser::http;
use common::*;

/// Parses Prometheus text with `prometheus_client.parser` and prints every sample.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value, family.type])
print(json.dumps(samples))
"#;

/// One sample: its name, labels, value and its family's type.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    kind: String,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to python3");
    let out = child.wait_with_output().expect("python3 ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "the metrics test needs the Prometheus parser: pip install prometheus_client \
         (.ci/run installs it)"
    );
    assert!(
        out.status.success(),
        "the parser refused:\n{stderr}\n{text}"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    rows.into_iter()
        .map(|row| Sample {
            name: row[0].as_str().unwrap().to_string(),
            labels: serde_json::from_value(row[1].clone()).unwrap(),
            value: row[2].as_f64().unwrap(),
            kind: row[3].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels` among its labels, if any.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn scrape(url: &str, token: Option<&str>) -> (u16, Option<String>, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let answer = http("GET", &format!("{url}/metrics"), &headers, "");
    let kind = answer.header("content-type").map(str::to_string);
    (answer.status, kind, answer.body)
}

#[test]
fn metrics_parse_as_prometheus_text_and_their_counters_match_the_jobs_run() {
    let tmp = tempdir();
    let server = Server::dev(tmp.path(), 1, 2);
    let repo = git_repo(
        &tmp.path().join("repo"),
        "version: 1\njobs:\n  a:\n    run: echo a\n  b:\n    run: echo b\n    needs: [a]\n  \
         c:\n    run: echo c\n  d:\n    run: echo d\n  bad:\n    run: exit 3\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    let info = server.wait_finished(graph);
    assert_eq!((info.counts.succeeded, info.counts.failed), (4, 1));

    // The graph is finished once the last result is committed; the counters move right
    // after, and the log is uploaded after the result: look until they have.
    let samples = wait_until("the metrics to count every job", DEADLINE, || {
        let (status, kind, text) = scrape(&server.url, None);
        assert_eq!(status, 200, "{text}");
        let kind = kind.unwrap_or_default();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        let samples = parse(&text);
        let results = value(&samples, "lwr_results_total", &[("outcome", "succeeded")]);
        let logs = value(&samples, "lwr_log_stored_bytes", &[]).unwrap_or(0.0);
        match (results, logs) {
            (Some(4.0), l) if l > 0.0 => Ok(samples),
            _ => Err(text),
        }
    });
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    // This server's counters: every job claimed once and its result recorded once.
    assert_eq!(get("lwr_claimed_jobs_total", &[]), 5.0);
    assert_eq!(get("lwr_results_total", &[("outcome", "failed")]), 1.0);
    assert_eq!(
        value(&samples, "lwr_results_total", &[("outcome", "exception")]),
        None
    );
    assert_eq!(get("lwr_ready_to_claimed_seconds_count", &[]), 5.0);
    assert_eq!(
        get("lwr_ready_to_claimed_seconds_bucket", &[("le", "+Inf")]),
        5.0
    );
    // The database's counts.
    assert_eq!(get("lwr_jobs", &[("state", "succeeded")]), 4.0);
    assert_eq!(get("lwr_jobs", &[("state", "failed")]), 1.0);
    assert_eq!(get("lwr_runs", &[("state", "succeeded")]), 4.0);
    assert_eq!(get("lwr_runs", &[("state", "failed")]), 1.0);
    assert_eq!(get("lwr_ready_jobs", &[]), 0.0);
    assert_eq!(get("lwr_nodes", &[("state", "enabled")]), 1.0);
    assert_eq!(get("lwr_nodes", &[("state", "lost")]), 0.0);
    // Log bytes: what the node uploaded is what is stored.
    let uploaded = get("lwr_log_uploaded_bytes_total", &[]);
    assert!(uploaded >= get("lwr_log_stored_bytes", &[]), "{uploaded}");
    for pool in ["write", "read", "node"] {
        assert!(get("lwr_db_connections_max", &[("pool", pool)]) >= 1.0);
        get("lwr_db_connections", &[("pool", pool), ("state", "busy")]);
    }
    // One server alone does every duty.
    for duty in ["provider", "lease-sweep", "artifact-sweep", "poll"] {
        assert_eq!(get("lwr_duty_held", &[("duty", duty)]), 1.0, "{duty}");
    }
    // Requests by route template and status, never by raw path.
    let claims = get(
        "lwr_http_requests_total",
        &[
            ("route", "/v1/nodes/:id/claim"),
            ("method", "POST"),
            ("status", "200"),
        ],
    );
    assert!(claims >= 1.0, "{claims}");
    assert!(
        get(
            "lwr_http_request_duration_seconds_count",
            &[("route", "/v1/nodes/:id/claim"), ("method", "POST")]
        ) >= claims
    );
    for s in samples
        .iter()
        .filter(|s| s.name == "lwr_http_requests_total")
    {
        let route = &s.labels["route"];
        assert!(
            route == "unmatched" || !route.split('/').any(|seg| seg.parse::<u64>().is_ok()),
            "a raw path as a route label: {route}"
        );
    }
    let kinds: BTreeMap<&str, &str> = samples
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(kinds["lwr_claimed_jobs_total"], "counter");
    assert_eq!(kinds["lwr_jobs"], "gauge");
    assert_eq!(kinds["lwr_ready_to_claimed_seconds_bucket"], "histogram");
}

#[test]
fn metrics_need_a_readers_token_on_a_server_with_auth() {
    let tmp = tempdir();
    let server = Server::start_auth(tmp.path());
    let (status, _, body) = scrape(&server.url, None);
    assert_eq!(status, 401, "{body}");
    let read = create_token_offline(&server.data_dir, &["read"], &[]);
    let (status, _, body) = scrape(&server.url, Some(&read));
    assert_eq!(status, 200, "{body}");
    assert!(!parse(&body).is_empty());
}

/// The step events in a log (`step <what> <run>` lines of `LWR_LOG=info,lwr_step=trace`),
/// in the order written, as (what, run).
fn step_events(log: &std::path::Path) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let rest = line.split(" TRACE step ").nth(1)?;
            let (what, run) = rest.trim().split_once(' ')?;
            Some((what.to_string(), run.parse().ok()?))
        })
        .collect()
}

/// What `bench/steps` reads: with `lwr_step=trace`, a node and its server log each event
/// of a job's way through them, in order, with the run's id.
#[test]
fn step_events_follow_a_chain_through_the_node_and_the_server() {
    let tmp = tempdir();
    let dir = tmp.path();
    let trace = [("LWR_LOG", "info,lwr_step=trace")];
    let server = Server::start_with(dir, &[], &trace);
    let node = Node::start_with_env(dir, &server.url, "steps", 1, &[], &trace);
    server.wait_node("steps");
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\ncheckout: false\njobs:\n  a:\n    run: \"true\"\n  b:\n    run: \"true\"\n    needs: [a]\n",
    );
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let run = |name: &str| server.job(graph, name).run_history[0].id.get();
    let (a, b) = (run("a"), run("b"));

    let on_node = step_events(&node.daemon.log);
    let on_server = step_events(&server.daemon.log);
    let whats = |events: &[(String, i64)], run: i64| -> Vec<String> {
        events
            .iter()
            .filter(|(_, r)| *r == run)
            .map(|(w, _)| w.clone())
            .collect()
    };
    let job_steps = [
        "prepare", "launch", "spawn", "spawned", "exited", "ended", "freed",
    ];
    for r in [a, b] {
        let seen = whats(&on_node, r);
        let in_order: Vec<&String> = seen
            .iter()
            .filter(|w| job_steps.contains(&w.as_str()))
            .collect();
        assert_eq!(
            in_order, job_steps,
            "run {r}'s events on the node: {on_node:?}"
        );
    }
    // a's result went with a claim that b's answer came back to.
    for (events, run, what) in [
        (&on_node, a, "claim"),
        (&on_server, a, "received"),
        (&on_server, b, "answer"),
        (&on_node, b, "answered"),
    ] {
        assert!(
            whats(events, run).iter().any(|w| w == what),
            "no `{what}` for run {run}: {events:?}"
        );
    }
    // The last turn's end is logged after its answers went out: read again until it is.
    wait_until("each combined turn to begin and end", DEADLINE, || {
        let on_server = step_events(&server.daemon.log);
        let turns: Vec<&str> = on_server
            .iter()
            .map(|(w, _)| w.as_str())
            .filter(|w| *w == "turn" || *w == "turned")
            .collect();
        match !turns.is_empty() && turns.chunks(2).all(|p| p == ["turn", "turned"]) {
            true => Ok(()),
            false => Err(format!("{on_server:?}")),
        }
    });
}
