//! Duties on several servers sharing one PostgreSQL database: the local provider, the
//! sweeps and polling each run on one server at a time, so three servers with
//! `--provider local --provider-max 2` start at most two nodes, with distinct names, and a
//! server that stops hands its duties to another. These tests need `LWR_TEST_POSTGRES_URL`;
//! without it they are reported as ignored.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::browser::http;
use common::*;

const LABELS: [&str; 3] = ["server-1", "server-2", "server-3"];

/// The nodes each server's local provider started: it writes each one's log to
/// `DATA_DIR/provided-nodes/NAME.log` as it starts it.
fn started_by(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut started: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for label in LABELS {
        let Ok(entries) = std::fs::read_dir(dir.join(label).join("provided-nodes")) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let name = name.trim_end_matches(".log").to_string();
            started.entry(name).or_default().push(label.to_string());
        }
    }
    started
}

/// `duty -> 1 or 0` from a server's `GET /metrics`.
fn duties_held(server: &Server) -> BTreeMap<String, u32> {
    let answer = http("GET", &format!("{}/metrics", server.url), &[], "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("lwr_duty_held{duty=\""))
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(duty, v)| (duty.to_string(), v.trim().parse().expect("a count")))
        .collect()
}

/// A graph of `n` jobs that each take a moment, so the provider has a reason to start
/// every node it may.
fn graph_repo(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let jobs: String = (1..=n)
        .map(|i| format!("  {name}-{i}:\n    run: sleep 0.5\n"))
        .collect();
    git_repo(&dir.join(name), &format!("version: 1\njobs:\n{jobs}"))
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn three_servers_with_the_local_provider_start_at_most_its_maximum_of_distinct_nodes() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let provider = [
        "--provider",
        "local",
        "--provider-max",
        "2",
        "--provider-idle",
        "120s",
    ];
    let mut servers: Vec<Server> = LABELS
        .iter()
        .map(|label| Server::start_on_db_with(dir, label, &db.url, "30s", &provider, &[]))
        .collect();

    // Each duty is done by exactly one of the three.
    let held: Vec<BTreeMap<String, u32>> = servers.iter().map(duties_held).collect();
    for duty in [
        "provider",
        "lease-sweep",
        "artifact-sweep",
        "poll",
        "retention",
    ] {
        let holders: u32 = held.iter().map(|h| h.get(duty).copied().unwrap_or(0)).sum();
        assert_eq!(
            holders, 1,
            "duty {duty} is held by {holders} servers: {held:?}"
        );
    }

    // Ten jobs pushed through one server, read through another: two nodes at most.
    let out = servers[0].push(&graph_repo(dir, "first", 10), false);
    out.assert_success();
    let graph = out.pushed_graph();
    let info = servers[2].wait_finished(graph);
    assert_eq!(
        info.counts.succeeded,
        10,
        "{}",
        servers[2].describe(Some(graph))
    );
    let first = started_by(dir);
    assert!(
        !first.is_empty() && first.len() <= 2,
        "started {first:?} for a maximum of 2"
    );
    for (name, by) in &first {
        assert_eq!(by.len(), 1, "node {name} was started by {by:?}");
    }
    let registered: BTreeSet<String> = servers[1]
        .api
        .nodes()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    let names: BTreeSet<String> = first.keys().cloned().collect();
    assert_eq!(registered, names, "the nodes registered are those started");
    for job in servers[1].jobs(graph).values() {
        let node = job.node.as_deref().unwrap_or_default();
        assert!(names.contains(node), "{} ran on {node:?}", job.name);
    }

    // The provider's server stops: another takes the duty over (within the duty's lease)
    // and starts nodes of new names for new work.
    let holder = held
        .iter()
        .position(|h| h.get("provider") == Some(&1))
        .expect("a provider");
    servers[holder].daemon.terminate(Duration::from_secs(30));
    let other = (holder + 1) % servers.len();
    let out = servers[other].push(&graph_repo(dir, "second", 4), false);
    out.assert_success();
    let graph = out.pushed_graph();
    let info = servers[other].wait_finished(graph);
    assert_eq!(
        info.counts.succeeded,
        4,
        "{}",
        servers[other].describe(Some(graph))
    );
    let second = started_by(dir);
    let new: Vec<(&String, &Vec<String>)> = second
        .iter()
        .filter(|(name, _)| !first.contains_key(*name))
        .collect();
    assert!(
        !new.is_empty() && new.len() <= 2,
        "after the takeover {new:?} were started (before: {first:?})"
    );
    for (name, by) in &second {
        assert_eq!(by.len(), 1, "node {name} was started by {by:?}");
        if !first.contains_key(name) {
            assert_ne!(
                by[0], LABELS[holder],
                "{name} was started by the stopped server"
            );
        }
    }
    // Whoever scales now is the only one that does.
    let live: Vec<&Server> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, s)| s)
        .collect();
    let providers: u32 = live
        .iter()
        .map(|s| duties_held(s).get("provider").copied().unwrap_or(0))
        .sum();
    assert_eq!(providers, 1);
    servers.clear();
}
