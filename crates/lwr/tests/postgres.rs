//! Several servers on one PostgreSQL database, with nodes split between them: every job
//! runs exactly once, a server killed mid-graph loses nothing, and the schema version is
//! guarded. These tests need `LWR_TEST_POSTGRES_URL`; without it they are reported as
//! ignored (`./scripts/test` runs them when the variable is set).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use lwr_model::api::JobInfo;
use lwr_model::job::RunState;
use lwr_model::{GraphId, JobState};

/// How long a big graph may take here (a debug build on two cores).
const GRAPH_DEADLINE: Duration = Duration::from_secs(240);

/// `count` jobs of `run`: mostly independent, with a chain of ten in every hundred.
fn wide_graph_with_chains(dir: &Path, count: usize, run: &str) -> std::path::PathBuf {
    let mut yml = String::from("version: 1\njobs:\n");
    for i in 0..count {
        yml.push_str(&format!("  j{i}:\n    run: \"{run}\"\n"));
        if i % 100 >= 1 && i % 100 < 10 {
            yml.push_str(&format!("    needs: [j{}]\n", i - 1));
        }
    }
    git_repo(&dir.join("repo"), &yml)
}

fn jobs_by_state(jobs: &[JobInfo]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for j in jobs {
        *counts.entry(j.state.as_str().to_string()).or_default() += 1;
    }
    counts
}

/// Waits until every job of `graph` has finished, as seen through `server`.
fn wait_graph(server: &Server, graph: GraphId) -> Vec<JobInfo> {
    wait_until(
        &format!("graph {graph} to finish"),
        GRAPH_DEADLINE,
        || match server.api.graph(graph) {
            Ok(info) if info.finished => server
                .api
                .jobs(Some(graph))
                .map(|l| l.jobs)
                .map_err(|e| e.to_string()),
            Ok(info) => Err(format!("{:?}", info.counts)),
            Err(e) => Err(format!("cannot read graph {graph}: {e}")),
        },
    )
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn two_servers_on_one_database_run_a_2000_job_graph_once_each() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let one = Server::start_on_db(dir, "server-1", &db.url, "30s");
    let two = Server::start_on_db(dir, "server-2", &db.url, "30s");
    let _nodes = [
        one.node(dir, "a1", 2, &[]),
        one.node(dir, "a2", 2, &[]),
        two.node(dir, "b1", 2, &[]),
        two.node(dir, "b2", 2, &[]),
    ];
    let repo = wide_graph_with_chains(dir, 2000, "true");
    // Pushed to one server, watched on the other.
    let out = one.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    let jobs = wait_graph(&two, graph);

    assert_eq!(jobs.len(), 2000);
    let states = jobs_by_state(&jobs);
    assert_eq!(states.get("succeeded"), Some(&2000), "{states:?}");
    let again: Vec<&JobInfo> = jobs.iter().filter(|j| j.runs != 1).collect();
    assert!(again.is_empty(), "jobs run more than once: {again:#?}");
    // Both servers handed out work: nodes of each ran jobs.
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &jobs {
        *per_node
            .entry(j.node.as_deref().unwrap_or("-"))
            .or_default() += 1;
    }
    for n in ["a1", "a2", "b1", "b2"] {
        assert!(per_node.get(n).is_some_and(|c| *c > 0), "{per_node:?}");
    }
    // And both see the same state.
    let seen_by_one = one.api.graph(graph).expect("graph on server 1");
    assert_eq!(seen_by_one.counts.succeeded, 2000);

    // A log lives in the artifact store of the server its node uploaded it to: here each
    // server has its own (the default, a directory in its data dir), so that server serves
    // it and the other says what is missing instead of answering with an empty log (a fleet
    // shares one store: tests/fleet.rs).
    let repo = git_repo(
        &dir.join("logs-repo"),
        "version: 1\njobs:\n  hello:\n    run: echo hello from a job\n",
    );
    let out = one.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let job = format!("{graph}/hello");
    let (a, b) = (one.lwr(&["logs", &job]), two.lwr(&["logs", &job]));
    let (served, other) = if a.success() { (a, b) } else { (b, a) };
    assert!(served.stdout.contains("hello from a job"), "{served}");
    other
        .assert_clear_error(3)
        .assert_stderr_has(&["artifact store", "data dir"]);
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn a_server_killed_mid_graph_loses_nothing() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let mut one = Server::start_on_db(dir, "server-1", &db.url, "4s");
    let two = Server::start_on_db(dir, "server-2", &db.url, "4s");
    let _a = one.node(dir, "a", 2, &[]);
    let _b = two.node(dir, "b", 2, &[]);
    let repo = wide_graph_with_chains(dir, 600, "sleep 0.02");
    let out = two.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    let progress = |server: &Server| -> u64 {
        server
            .api
            .graph(graph)
            .map(|g| g.counts.succeeded)
            .unwrap_or(0)
    };
    wait_until("a quarter of the graph", GRAPH_DEADLINE, || {
        let done = progress(&two);
        if done >= 150 {
            Ok(())
        } else {
            Err(format!("{done} succeeded"))
        }
    });
    one.kill();
    // Server 2 and its node go on alone while server 1 is down.
    let at_kill = progress(&two);
    wait_until("progress without server 1", DEADLINE, || {
        let done = progress(&two);
        if done >= at_kill + 20 {
            Ok(())
        } else {
            Err(format!("{done} succeeded, {at_kill} when server 1 died"))
        }
    });
    one.restart();
    let jobs = wait_graph(&one, graph);

    let states = jobs_by_state(&jobs);
    assert_eq!(states.get("succeeded"), Some(&600), "{states:?}");
    // Each job succeeded in exactly one run. A claim whose answer died with the server
    // leaves a run that expires and is retried: such a job may have an extra run, which
    // must have ended as an exception, never as a second success.
    let mut retried = 0;
    for j in jobs.iter().filter(|j| j.runs != 1) {
        retried += 1;
        let detail = one.api.job(j.id).expect("job detail");
        let succeeded = detail
            .run_history
            .iter()
            .filter(|r| r.state == RunState::Succeeded)
            .count();
        assert_eq!(succeeded, 1, "{detail:#?}");
        assert!(
            detail
                .run_history
                .iter()
                .all(|r| r.state == RunState::Succeeded || r.state == RunState::Exception),
            "{detail:#?}"
        );
    }
    eprintln!("{retried} of 600 jobs needed a second run after the kill");
    assert!(
        retried <= 4,
        "{retried} jobs retried: more than a lost claim answer explains"
    );
    assert_eq!(
        jobs.iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        600
    );
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn a_server_refuses_a_database_with_a_newer_schema() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    // The first start migrates the empty database.
    let mut first = Server::start_on_db(dir, "server-1", &db.url, "30s");
    let health = first.api.health().expect("health");
    assert_eq!(health.database, "postgres");
    first.kill();
    // A newer lwr migrated it further, leaving no window record this build could trust.
    db.execute("INSERT INTO lwr_schema (version) VALUES (999)");
    let data = dir.join("old").display().to_string();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = lwr(&[
        "server",
        "--db",
        &db.url,
        "--listen",
        &listen,
        "--data-dir",
        &data,
    ]);
    out.assert_clear_error(3)
        .assert_stderr_has(&["schema version 999", "at least 999"]);
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn two_servers_starting_at_once_on_an_empty_database_migrate_it_once() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| Server::start_on_db(dir, "server-1", &db.url, "30s"));
        let two = s.spawn(|| Server::start_on_db(dir, "server-2", &db.url, "30s"));
        (
            one.join().expect("server 1 started"),
            two.join().expect("server 2 started"),
        )
    });
    // One row per schema version: each migration ran once.
    assert_eq!(
        db.query_i64("SELECT COUNT(*) AS n FROM lwr_schema"),
        lwr_store::SCHEMA_VERSION
    );
    // Both serve the same database.
    let _b = two.node(dir, "b", 1, &[]);
    one.wait_node("b");
}

/// On PostgreSQL a claim skips rows another claim has locked. Two idle nodes are woken
/// together; the one that is not preferred locks a job to hold it for the other (affinity),
/// which skipped it: that node must look again at once, not at the end of its long poll
/// (20 s), while the job waits.
#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn a_job_held_for_its_node_reaches_it_at_once_when_both_nodes_wake_together() {
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start_on_db(dir, "server", &db.url, "30s");
    let _n1 = server.node(dir, "n1", 2, &[]);
    let _n2 = server.node(dir, "n2", 2, &[]);
    server.wait_node("n1");
    server.wait_node("n2");
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  a:\n    run: \"true\"\n  b:\n    needs: [a]\n    run: \"true\"\n",
    );
    for round in 0..8 {
        let started = std::time::Instant::now();
        let out = server.push(&repo, true);
        out.assert_success();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "round {round}: the graph took {took:?}; a job waited for a node's next long poll"
        );
    }
}
