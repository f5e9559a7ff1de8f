//! Graphs through a real server and real nodes: dependency order, failures and what they
//! block, the job environment, timeouts, matrices and node requirements.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::http;
use common::*;
use lwr_model::JobState;
use lwr_model::job::RunState;

/// One job of a test graph: name, needs, shell command.
struct J<'a> {
    name: &'a str,
    needs: &'a [&'a str],
    run: String,
}

/// An lwr.yml for `jobs`; each `run` is a YAML block scalar, so any shell text is safe.
fn yml(jobs: &[J]) -> String {
    let mut s = String::from("version: 1\njobs:\n");
    for j in jobs {
        s.push_str(&format!("  {}:\n    run: |\n      {}\n", j.name, j.run));
        if !j.needs.is_empty() {
            s.push_str(&format!("    needs: [{}]\n", j.needs.join(", ")));
        }
    }
    s
}

/// `echo NAME >> FILE`, optionally after a short sleep.
fn append(name: &str, file: &Path, sleep: &str) -> String {
    let pre = if sleep.is_empty() {
        String::new()
    } else {
        format!("sleep {sleep}; ")
    };
    format!("{pre}echo {name} >> {}", sh_quote(file))
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn dependency_order_is_respected() {
    let tmp = tempdir();
    let dir = tmp.path();
    let order = dir.join("order.txt");
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 2, &[]);
    let _b = server.node(dir, "b", 2, &[]);

    // A diamond (b is slower than c, so d must really wait for both) and a chain of 5.
    let jobs = [
        J {
            name: "a",
            needs: &[],
            run: append("a", &order, "0.2"),
        },
        J {
            name: "b",
            needs: &["a"],
            run: append("b", &order, "0.3"),
        },
        J {
            name: "c",
            needs: &["a"],
            run: append("c", &order, ""),
        },
        J {
            name: "d",
            needs: &["b", "c"],
            run: append("d", &order, ""),
        },
        J {
            name: "chain-1",
            needs: &[],
            run: append("chain-1", &order, ""),
        },
        J {
            name: "chain-2",
            needs: &["chain-1"],
            run: append("chain-2", &order, ""),
        },
        J {
            name: "chain-3",
            needs: &["chain-2"],
            run: append("chain-3", &order, ""),
        },
        J {
            name: "chain-4",
            needs: &["chain-3"],
            run: append("chain-4", &order, ""),
        },
        J {
            name: "chain-5",
            needs: &["chain-4"],
            run: append("chain-5", &order, ""),
        },
    ];
    let repo = git_repo(&dir.join("repo"), &yml(&jobs));

    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();

    let lines = read_lines(&order);
    let mut sorted = lines.clone();
    sorted.sort();
    let mut expected: Vec<String> = jobs.iter().map(|j| j.name.to_string()).collect();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "every job must run exactly once; order file: {lines:?}"
    );
    let pos = |name: &str| lines.iter().position(|l| l == name).unwrap();
    for j in &jobs {
        for need in j.needs {
            assert!(
                pos(need) < pos(j.name),
                "{} ran before its need {need}: order {lines:?}\n{}",
                j.name,
                server.describe(Some(graph))
            );
        }
    }

    // The contract of `lwr jobs --json`: id, graph_id, name, state, node, runs.
    let json = server.jobs_json();
    let listed = json["jobs"].as_array().expect("a 'jobs' array");
    assert_eq!(listed.len(), jobs.len(), "{json:#}");
    for j in listed {
        assert!(j["id"].is_i64(), "{j}");
        assert_eq!(j["graph_id"].as_i64(), Some(graph.get()), "{j}");
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["runs"], 1, "{j}");
        let node = j["node"]
            .as_str()
            .unwrap_or_else(|| panic!("no node in {j}"));
        assert!(node == "a" || node == "b", "{j}");
    }
    let names: BTreeSet<&str> = listed.iter().filter_map(|j| j["name"].as_str()).collect();
    assert_eq!(names, jobs.iter().map(|j| j.name).collect());
}

#[test]
fn a_failed_job_blocks_its_dependents_and_push_wait_fails() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 2, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1
jobs:
  bad:
    run: echo about to fail; exit 3
    retries: 0
  after:
    run: echo after
    needs: [bad]
  after2:
    run: echo after2
    needs: [after]
  ok:
    run: echo ok
",
    );

    let out = server.push(&repo, true);
    out.assert_failure();
    assert!(
        out.stdout.contains("bad"),
        "push --wait must name the failed job: {out}"
    );
    let graph = out.pushed_graph();

    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    assert_eq!(jobs.len(), 4, "{table}");
    let bad = &jobs["bad"];
    assert_eq!(bad.state, JobState::Failed, "{table}");
    let reason = bad.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("exit code 3"),
        "reason of bad should give the exit code: {table}"
    );
    assert_eq!(jobs["ok"].state, JobState::Succeeded, "{table}");
    for name in ["after", "after2"] {
        let j = &jobs[name];
        assert_eq!(j.state, JobState::Blocked, "{table}");
        assert_eq!(j.runs, 0, "a blocked job never runs: {table}");
        assert!(
            j.reason.as_deref().unwrap_or("").contains("bad"),
            "{name} should say it is blocked by bad: {table}"
        );
    }

    // A failure is the job's own fault: no retry even with retries left, one run, exit 3.
    let detail = server.job(graph, "bad");
    assert_eq!(detail.run_history.len(), 1, "{detail:#?}");
    assert_eq!(detail.run_history[0].state, RunState::Failed, "{detail:#?}");
    assert_eq!(detail.run_history[0].exit_code, Some(3), "{detail:#?}");
    let log = server.lwr(&["logs", &format!("{graph}/bad")]);
    log.assert_success();
    assert!(log.stdout.contains("about to fail"), "{log}");
}

#[test]
fn jobs_see_their_environment() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 1, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        r#"version: 1
jobs:
  Show_Env.Vars:
    run: echo "name=$LWR_JOB_NAME id=$LWR_JOB_ID graph=$LWR_GRAPH_ID run=$LWR_RUN greeting=$GREETING server=$LWR_SERVER"
    env:
      GREETING: hello world
"#,
    );
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let job = server.job(graph, "show-env-vars");

    // By graph/name as written in lwr.yml (normalized by the CLI), and by id.
    for spec in [format!("{graph}/Show_Env.Vars"), job.info.id.to_string()] {
        let log = server.lwr(&["logs", &spec]);
        log.assert_success();
        let want = format!(
            "name=show-env-vars id={} graph={graph} run=1 greeting=hello world server={}",
            job.info.id, server.url
        );
        assert!(
            log.stdout.contains(&want),
            "expected '{want}' in the log: {log}"
        );
    }
}

#[test]
fn a_timeout_fails_the_job_kills_its_processes_and_blocks_dependents() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 2, &[]);
    let pid_file = dir.join("slow.pid");
    let repo = git_repo(
        &dir.join("repo"),
        &format!(
            "version: 1
jobs:
  slow:
    run: echo $$ > {}; sleep 30
    timeout: 1s
  after-slow:
    run: echo never
    needs: [slow]
",
            sh_quote(&pid_file)
        ),
    );

    let started = Instant::now();
    let out = server.push(&repo, true);
    let took = started.elapsed();
    out.assert_failure();
    assert!(
        took < Duration::from_secs(15),
        "a 1s timeout took {took:?} to end the graph: {out}"
    );
    let graph = out.pushed_graph();
    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    assert_eq!(jobs["slow"].state, JobState::Failed, "{table}");
    assert!(
        jobs["slow"]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{table}"
    );
    assert_eq!(jobs["after-slow"].state, JobState::Blocked, "{table}");

    // The whole process group went, `sleep 30` included.
    let pgid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the job wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    wait_until(
        "the timed-out job's process group to be gone",
        DEADLINE,
        || {
            if group_alive(pgid) {
                Err(format!("process group {pgid} still has live processes"))
            } else {
                Ok(())
            }
        },
    );
}

#[test]
fn a_matrix_expands_and_needs_on_it_mean_every_expansion() {
    let tmp = tempdir();
    let dir = tmp.path();
    let order = dir.join("order.txt");
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 2, &[]);
    let _b = server.node(dir, "b", 2, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        &format!(
            "version: 1
jobs:
  test:
    run: echo chunk ${{matrix.chunk}}; sleep 0.${{matrix.chunk}}; echo test-${{matrix.chunk}} >> {order}
    matrix:
      chunk: [1, 2, 3]
  report:
    run: echo report >> {order}
    needs: [test]
",
            order = sh_quote(&order)
        ),
    );

    // Offline, the graph already shows the expansion.
    let offline = lwr(&["graph", "--repo", &repo.display().to_string(), "--json"]);
    offline.assert_success();
    let g = offline.json();
    let names: Vec<&str> = g["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(names, ["test-1", "test-2", "test-3", "report"], "{offline}");

    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    assert_eq!(
        jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["report", "test-1", "test-2", "test-3"],
        "{table}"
    );
    assert!(
        jobs.values().all(|j| j.state == JobState::Succeeded),
        "{table}"
    );

    let lines = read_lines(&order);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("report"),
        "report must run after every test-N: {lines:?}"
    );
    let log = server.lwr(&["logs", &format!("{graph}/test-2")]);
    log.assert_success();
    assert!(log.stdout.contains("chunk 2"), "{log}");
}

#[test]
fn jobs_run_only_on_nodes_that_meet_their_requirements() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    // First only b, which has no tags: it must leave the gpu and tagged jobs alone.
    let _b = server.node(dir, "b", 2, &[]);
    server.wait_node("b");
    let repo = git_repo(
        &dir.join("repo"),
        r#"version: 1
jobs:
  on-gpu:
    run: echo gpu
    node: {gpu: "yes"}
  tagged:
    run: echo fast
    node: {tags: [fast]}
  plain-1:
    run: echo one
  plain-2:
    run: echo two
  plain-3:
    run: echo three
    needs: [plain-1, plain-2]
  on-plan9:
    run: echo never
    node: {os: plan9}
"#,
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    for name in ["plain-1", "plain-2", "plain-3"] {
        server.wait_job(graph, name, JobState::Succeeded, Some("b"));
    }
    // b claimed plain-3 after the others were ready, so it had every chance to take them.
    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    for name in ["on-gpu", "tagged", "on-plan9"] {
        assert_eq!(
            jobs[name].state,
            JobState::Pending,
            "{name} must wait for a suitable node: {table}"
        );
        assert_eq!(jobs[name].runs, 0, "{table}");
    }

    let _a = server.node(dir, "a", 2, &["gpu=yes", "fast"]);
    server.wait_job(graph, "on-gpu", JobState::Succeeded, Some("a"));
    server.wait_job(graph, "tagged", JobState::Succeeded, Some("a"));

    // The rest of the graph is done; the plan9 job still waits, and the graph is not finished.
    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    let done = jobs
        .values()
        .filter(|j| j.state == JobState::Succeeded)
        .count();
    assert_eq!(done, 5, "{table}");
    assert_eq!(jobs["on-plan9"].state, JobState::Pending, "{table}");
    assert_eq!(jobs["on-plan9"].runs, 0, "{table}");
    let info = server.api.graph(graph).expect("reading the graph");
    assert!(
        !info.finished,
        "a graph with a pending job is not finished: {info:?}"
    );

    // The node listing shows a's tags.
    let nodes = server.lwr(&["nodes", "--json"]);
    nodes.assert_success();
    let json = nodes.json();
    let a = json["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == "a"))
        .unwrap_or_else(|| panic!("no node a in {json:#}"));
    assert_eq!(a["properties"]["tags"]["gpu"], "yes", "{json:#}");
}

#[test]
fn cancel_stops_a_running_job_and_retrigger_runs_it_again() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node(dir, "a", 2, &[]);
    let pid_file = dir.join("slow.pid");
    let repo = git_repo(
        &dir.join("repo"),
        &format!(
            "version: 1
jobs:
  slow:
    run: test -f {marker} || {{ echo $$ > {pid}; sleep 30; }}
  after:
    run: echo after ran
    needs: [slow]
",
            marker = sh_quote(&dir.join("fast-now")),
            pid = sh_quote(&pid_file)
        ),
    );
    let graph = server.push(&repo, false).pushed_graph();
    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    wait_until("the job to write its pid", DEADLINE, || {
        std::fs::read_to_string(&pid_file).map_err(|e| e.to_string())
    });
    let pgid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let started = Instant::now();
    let out = server.lwr(&["cancel", &format!("{graph}/slow")]);
    out.assert_success();
    assert!(out.stdout.contains("1 running run "), "{out}");
    wait_until(
        "the cancelled job's process group to be gone",
        DEADLINE,
        || {
            if group_alive(pgid) {
                Err(format!("process group {pgid} still alive"))
            } else {
                Ok(())
            }
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        started.elapsed()
    );
    let table = server.describe(Some(graph));
    let jobs = server.jobs(graph);
    assert_eq!(jobs["slow"].state, JobState::Cancelled, "{table}");
    assert_eq!(jobs["after"].state, JobState::Blocked, "{table}");
    server
        .lwr(&["cancel", &format!("{graph}/slow")])
        .assert_clear_error(1)
        .assert_stderr_has(&["already ended"]);

    // Retriggered with its dependents (and quick this time), the graph finishes.
    std::fs::write(dir.join("fast-now"), "").unwrap();
    server
        .lwr(&["retrigger", &format!("{graph}/after")])
        .assert_clear_error(1)
        .assert_stderr_has(&["retrigger slow"]);
    server
        .lwr(&["retrigger", &format!("{graph}/slow"), "--with-dependents"])
        .assert_success();
    server.wait_finished(graph);
    let jobs = server.jobs(graph);
    let table = server.describe(Some(graph));
    assert_eq!(jobs["slow"].state, JobState::Succeeded, "{table}");
    assert_eq!(jobs["slow"].runs, 2, "{table}");
    assert_eq!(jobs["after"].state, JobState::Succeeded, "{table}");
}

/// After a short job a node claims one job ahead per slot, to start it the moment a slot
/// frees; one that waits two seconds for a slot goes back to the queue unstarted, without
/// spending a retry, and another node runs it.
#[test]
fn a_job_claimed_ahead_goes_back_when_no_slot_frees() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node_claiming_ahead(dir, "a", 1);
    // Two long jobs, no retries: a takes both, runs one and keeps the other on its deck.
    let repo = git_repo(
        &dir.join("long"),
        "version: 1\ncheckout: false\njobs:\n  long-1:\n    run: sleep 6\n    retries: 0\n  \
         long-2:\n    run: sleep 6\n    retries: 0\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    server.wait_job(graph, "long-1", JobState::Running, Some("a"));
    server.wait_job(graph, "long-2", JobState::Running, Some("a"));
    let _b = server.node(dir, "b", 1, &[]);
    let info = server.wait_finished(graph);
    let table = server.describe(Some(graph));
    assert_eq!(info.counts.succeeded, 2, "{table}");
    let details: Vec<_> = ["long-1", "long-2"]
        .iter()
        .map(|name| server.job(graph, name))
        .collect();
    let moved: Vec<_> = details
        .iter()
        .filter(|d| d.run_history.len() == 2)
        .collect();
    assert_eq!(moved.len(), 1, "one job went back: {table}");
    let runs = &moved[0].run_history;
    assert_eq!(
        (runs[0].state, runs[0].node.as_str()),
        (RunState::Exception, "a"),
        "{runs:?}"
    );
    let why = runs[0].reason.as_deref().unwrap_or_default();
    assert!(why.contains("given back unstarted"), "{why}");
    assert_eq!(
        (runs[1].state, runs[1].node.as_str()),
        (RunState::Succeeded, "b"),
        "{runs:?}"
    );
}

/// Two nodes wait for work and two jobs come: the node that claims ahead takes one, not
/// both, so the other does not wait on its deck while the second node idles. (Which woken
/// claim looks first is up to the server's threads, so without the rule this fails most
/// runs, not all; `crates/lwr-server/tests/queue.rs` checks the rule itself every time.)
#[test]
fn waiting_nodes_share_new_work_before_one_claims_ahead() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    // a's claim waits first, so the server looks for it first when the jobs come.
    let _a = server.node_claiming_ahead(dir, "a", 1);
    wait_claims_waiting(&server, 1);
    let _b = server.node(dir, "b", 1, &[]);
    wait_claims_waiting(&server, 2);
    let repo = git_repo(
        &dir.join("two"),
        "version: 1\ncheckout: false\njobs:\n  one:\n    run: sleep 4\n  \
         two:\n    run: sleep 4\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    let one = server.wait_job(graph, "one", JobState::Running, None);
    let two = server.wait_job(graph, "two", JobState::Running, None);
    let table = server.describe(Some(graph));
    assert_ne!(one.node, two.node, "one node took both: {table}");
}

/// A slot that goes from a job straight to the next on the deck makes no claim: the ended
/// job's result still reaches the server at once, not when the next job ends.
#[test]
fn a_result_is_reported_while_its_slot_runs_the_next_job_from_the_deck() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _a = server.node_claiming_ahead(dir, "a", 1);
    // a takes both: quick (first, so into the slot) and slow (onto the deck).
    let repo = git_repo(
        &dir.join("two"),
        "version: 1\ncheckout: false\njobs:\n  quick:\n    run: \"true\"\n  \
         slow:\n    run: sleep 6\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    let started = Instant::now();
    server.wait_job(graph, "quick", JobState::Succeeded, Some("a"));
    let table = server.describe(Some(graph));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "quick's result waited for slow: {table}"
    );
    assert_eq!(
        server.jobs(graph)["slow"].state,
        JobState::Running,
        "{table}"
    );
}

/// Jobs a result releases go to the node's free slots before its deck: with one slot
/// waiting in a claim, the two jobs a short job releases run side by side, not one after
/// the other in the slot the short job left.
#[test]
fn released_jobs_fill_free_slots_before_the_deck() {
    let tmp = tempdir();
    let dir = tmp.path();
    let order = dir.join("order.txt");
    let server = Server::start(dir);
    let _a = server.node_claiming_ahead(dir, "a", 2);
    let step = |name: &str| {
        let file = sh_quote(&order);
        format!("echo start {name} >> {file}; sleep 2; echo end {name} >> {file}")
    };
    let yml = format!(
        "version: 1\ncheckout: false\njobs:\n  root:\n    run: \"true\"\n  \
         f1:\n    needs: [root]\n    run: {:?}\n  f2:\n    needs: [root]\n    run: {:?}\n",
        step("f1"),
        step("f2")
    );
    let repo = git_repo(&dir.join("fan"), &yml);
    server.push(&repo, true).assert_success();
    let lines = read_lines(&order);
    assert_eq!(
        lines
            .iter()
            .take(2)
            .filter(|l| l.starts_with("start"))
            .count(),
        2,
        "f1 and f2 ran one after the other: {lines:?}"
    );
}

/// Waits until `n` nodes' claims wait for work on the server (its `GET /metrics`).
fn wait_claims_waiting(server: &Server, n: u32) {
    wait_until(&format!("{n} claims waiting"), DEADLINE, || {
        let answer = http("GET", &format!("{}/metrics", server.url), &[], "");
        let waiting = answer
            .body
            .lines()
            .find_map(|l| l.strip_prefix("lwr_claims_waiting "))
            .and_then(|v| v.trim().parse::<u32>().ok());
        match waiting {
            Some(w) if w == n => Ok(()),
            other => Err(format!("lwr_claims_waiting: {other:?}")),
        }
    });
}
