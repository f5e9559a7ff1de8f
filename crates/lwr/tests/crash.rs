//! Crashes: nodes and the server killed with SIGKILL mid-job. Nothing is lost: a job is
//! retried or its result recorded, exactly once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lwr_model::job::RunState;
use lwr_model::{GraphId, JobState};

fn one_job_repo(dir: &Path, run: &str) -> std::path::PathBuf {
    git_repo(
        &dir.join("repo"),
        &format!("version: 1\njobs:\n  slow:\n    run: {run}\n"),
    )
}

/// A repository whose one job, `slow`, first touches `dir/started`, then runs `run`.
fn marked_job_repo(dir: &Path, run: &str) -> std::path::PathBuf {
    one_job_repo(
        dir,
        &format!("touch {}; {run}", dir.join("started").display()),
    )
}

/// Waits until the job of [`marked_job_repo`] runs on its node. The server counts a job
/// running from its claim's commit, before the node has the answer: a server killed in
/// between takes the answer with it, and the run waits out its lease (as documented), which
/// is not what a test of a server dying mid-job means to check.
fn wait_started(server: &Server, dir: &Path, graph: GraphId) {
    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    server.wait_file(
        "the job's process to start on its node",
        &dir.join("started"),
        graph,
    );
}

#[test]
fn a_node_killed_mid_job_has_the_job_retried_on_another_node() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir); // lease 2s
    let mut a = server.node(dir, "a", 1, &[]);
    let repo = one_job_repo(dir, "sleep 3; echo finished");
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    a.kill();
    let _b = server.node(dir, "b", 1, &[]);
    server.wait_finished(graph);

    let job = server.job(graph, "slow");
    let runs = &job.run_history;
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(runs.len(), 2, "{job:#?}");
    assert_eq!(runs[0].state, RunState::Exception, "{job:#?}");
    assert_eq!(runs[0].node, "a", "{job:#?}");
    assert!(
        runs[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("claim-expired"),
        "{job:#?}"
    );
    assert_eq!(runs[1].state, RunState::Succeeded, "{job:#?}");
    assert_eq!(runs[1].node, "b", "{job:#?}");
    assert_eq!(runs[1].number, 2, "{job:#?}");

    let log = server.lwr(&["logs", &job.info.id.to_string()]);
    log.assert_success();
    assert!(log.stdout.contains("finished"), "{log}");
    let json = server.jobs_json();
    assert_eq!(json["jobs"][0]["runs"], 2, "{json:#}");
    assert_eq!(json["jobs"][0]["node"], "b", "{json:#}");
}

#[test]
fn a_node_killed_and_restarted_mid_job_kills_the_leftover_and_the_job_is_retried() {
    let tmp = tempdir();
    let dir = tmp.path();
    let pids = dir.join("pids.txt");
    let server = Server::start(dir);
    let mut a = server.node(dir, "a", 1, &[]);
    let repo = one_job_repo(
        dir,
        &format!("echo $$ >> {}; sleep 3; echo finished", sh_quote(&pids)),
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    // Running on the server includes the node's checkout: the job's process is up once it
    // wrote its pid.
    wait_until(
        "the job's process",
        DEADLINE,
        || match std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count()
        {
            0 => Err("no pid yet".to_string()),
            _ => Ok(()),
        },
    );
    a.kill();
    a.daemon.start(); // same name, same work dir
    server.wait_finished(graph);

    let job = server.job(graph, "slow");
    let runs = &job.run_history;
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(runs.len(), 2, "{job:#?}");
    assert_eq!(runs[0].state, RunState::Exception, "{job:#?}");
    assert!(runs[0].reason.is_some(), "{job:#?}");
    assert_eq!(runs[1].state, RunState::Succeeded, "{job:#?}");

    // The first run's processes did not outlive the restart; the second run's ended.
    let text = std::fs::read_to_string(&pids).expect("the job wrote its pids");
    let groups: Vec<i32> = text
        .lines()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect();
    assert_eq!(groups.len(), 2, "two runs, two process groups: {groups:?}");
    for pgid in groups {
        wait_until("the job's process group to be gone", DEADLINE, || {
            if group_alive(pgid) {
                Err(format!("process group {pgid} still has live processes"))
            } else {
                Ok(())
            }
        });
    }
}

/// The node a job ran on last (affinity) is killed mid-run: the retry, and the next graph's
/// job, do not wait out the affinity window (30 s) for a node that stopped talking.
#[test]
fn a_killed_affinity_node_is_not_waited_for() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir); // lease 2s
    let mut a = server.node(dir, "a", 1, &[]);
    server.wait_node("a");
    let marker = dir.join("second");
    let hung = dir.join("hung");
    // The first graph succeeds on a, the only node: a becomes the job's affinity node.
    let repo = one_job_repo(
        dir,
        &format!(
            "if [ -e {m} ]; then touch {h}; sleep 30; fi; touch {m}",
            m = sh_quote(&marker),
            h = sh_quote(&hung)
        ),
    );
    let first = server.push(&repo, true);
    first.assert_success();
    let _b = server.node(dir, "b", 1, &[]);
    server.wait_node("b");
    // The second graph's job goes to a (affinity) and hangs there; a is killed.
    let graph = server.push(&repo, false).pushed_graph();
    server.wait_job(graph, "slow", JobState::Running, Some("a"));
    // Hung on a for real: its shell has seen the marker (removed below before it looked,
    // the run would end at once and leave the marker for b's run to hang on).
    server.wait_file("the job to hang on a", &hung, graph);
    let killed = Instant::now();
    a.kill();
    std::fs::remove_file(&marker).expect("the marker");
    server.wait_job(graph, "slow", JobState::Succeeded, Some("b"));
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "the retry waited {took:?} for the killed node"
    );
}

/// A second node started on a work dir another live node uses (a supervisor restarting a
/// node that is still finishing its jobs) is refused; the first node's job is unharmed.
#[test]
fn a_second_node_on_a_work_dir_in_use_is_refused_and_harms_nothing() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let a = server.node(dir, "a", 1, &[]);
    let gate = dir.join("gate");
    let repo = one_job_repo(
        dir,
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo finished",
            sh_quote(&gate)
        ),
    );
    let graph = server.push(&repo, false).pushed_graph();
    server.wait_job(graph, "slow", JobState::Running, Some("a"));

    let mut second = Daemon::new(
        "node a again",
        a.daemon.args.clone(),
        dir.join("node-a2.log"),
        vec![],
    );
    second.start();
    let status = wait_until("the second node to give up", DEADLINE, || {
        second.exited().ok_or_else(|| "still running".to_string())
    });
    assert!(!status.success(), "{status}");
    let said = second.log_tail(5);
    assert!(
        said.contains("is in use by another lwr node (pid"),
        "{said}"
    );

    std::fs::write(&gate, "").expect("opening the gate");
    server.wait_finished(graph);
    let job = server.job(graph, "slow");
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.run_history.len(), 1, "{job:#?}");
}

#[test]
fn a_server_killed_and_restarted_mid_job_records_the_result_exactly_once() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut server = Server::start(dir);
    let _a = server.node(dir, "a", 1, &[]);
    let repo = marked_job_repo(dir, "sleep 3; echo done");

    // `push --wait` rides out the restart.
    let push_log = dir.join("push.log");
    let mut push = Daemon::new(
        "push --wait",
        vec![
            "push".into(),
            "--server".into(),
            server.url.clone(),
            "--repo".into(),
            repo.display().to_string(),
            "--wait".into(),
        ],
        push_log.clone(),
        Vec::new(),
    );
    push.start();
    let graph = wait_until("push to print the graph id", DEADLINE, || {
        parse_pushed_graph(&tail(&push_log, 50)).ok_or_else(|| tail(&push_log, 20))
    });

    wait_started(&server, dir, graph);
    server.kill();
    // The outage itself: the server stays down for a second while the job runs on.
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    server.wait_finished(graph);

    let job = server.job(graph, "slow");
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(
        job.run_history.len(),
        1,
        "the result is recorded exactly once, in the one run: {job:#?}"
    );
    assert_eq!(job.run_history[0].state, RunState::Succeeded, "{job:#?}");
    let log = server.lwr(&["logs", &format!("{graph}/slow")]);
    log.assert_success();
    assert!(log.stdout.contains("done"), "{log}");

    let status = wait_until("push --wait to exit", DEADLINE, || {
        push.exited().ok_or_else(|| tail(&push_log, 20))
    });
    assert!(
        status.success(),
        "push --wait should succeed across the restart ({status}):\n{}",
        tail(&push_log, 30)
    );
}

#[test]
fn a_job_that_ends_while_the_server_is_down_is_reported_after_the_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut server = Server::start(dir); // lease 2s: the outage below outlasts it
    let a = server.node(dir, "a", 1, &[]);
    let repo = marked_job_repo(dir, "sleep 2; echo done");
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    wait_started(&server, dir, graph);
    server.kill();
    let down = Instant::now();
    // The job ends with no server to tell: the node keeps the result on disk.
    wait_until("the node to keep the result on disk", DEADLINE, || {
        let files = a.unreported_results();
        if files.is_empty() {
            Err(format!(
                "no unreported result in {}/journal.jsonl",
                a.work_dir.display()
            ))
        } else {
            Ok(())
        }
    });
    // Stay down longer than the lease, so the restarted server must not expire the run.
    let outage = Duration::from_secs(3);
    if let Some(left) = outage.checked_sub(down.elapsed()) {
        std::thread::sleep(left);
    }
    server.restart();
    server.wait_finished(graph);

    let job = server.job(graph, "slow");
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.run_history.len(), 1, "{job:#?}");
    assert_eq!(job.run_history[0].state, RunState::Succeeded, "{job:#?}");
    assert_eq!(job.run_history[0].node, "a", "{job:#?}");
    let log = server.lwr(&["logs", &format!("{graph}/slow")]);
    log.assert_success();
    assert!(log.stdout.contains("done"), "{log}");
    wait_until("the node to drop the reported result", DEADLINE, || {
        let files = a.unreported_results();
        if files.is_empty() {
            Ok(())
        } else {
            Err(format!("still on disk: {files:?}"))
        }
    });
}

#[test]
fn a_result_kept_on_disk_survives_a_node_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut server = Server::start(dir);
    let mut a = server.node(dir, "a", 1, &[]);
    let repo = marked_job_repo(dir, "sleep 1; echo done");
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    wait_started(&server, dir, graph);
    server.kill();
    wait_until("the node to keep the result on disk", DEADLINE, || {
        let files = a.unreported_results();
        if files.is_empty() {
            Err(format!(
                "no unreported result in {}/journal.jsonl",
                a.work_dir.display()
            ))
        } else {
            Ok(())
        }
    });
    // The node dies too, before it could report; both come back.
    a.kill();
    server.restart();
    a.daemon.start();
    server.wait_finished(graph);

    let job = server.job(graph, "slow");
    assert_eq!(job.info.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(
        job.run_history.len(),
        1,
        "the result kept on disk must be reported by the restarted node, not lost: {job:#?}"
    );
    assert_eq!(job.run_history[0].state, RunState::Succeeded, "{job:#?}");
    let log = server.lwr(&["logs", &format!("{graph}/slow")]);
    log.assert_success();
    assert!(log.stdout.contains("done"), "{log}");
}

/// A node killed with a job on its deck (claimed ahead, not started) gives it back when it
/// starts again, from its journal: the job runs without spending a retry, not after its
/// lease runs out.
#[test]
fn a_node_killed_with_a_job_claimed_ahead_gives_it_back_when_it_restarts() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let mut a = server.node_claiming_ahead(dir, "a", 1);
    let repo = git_repo(
        &dir.join("two"),
        "version: 1\ncheckout: false\njobs:\n  one:\n    run: sleep 3\n    retries: 0\n  \
         two:\n    run: sleep 3\n    retries: 0\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    server.wait_job(graph, "one", JobState::Running, Some("a"));
    server.wait_job(graph, "two", JobState::Running, Some("a"));
    a.kill();
    // The journal names the run on the deck, not given back (that takes 2 s).
    let entries = journal(&a.work_dir);
    let decked: Vec<i64> = entries
        .iter()
        .filter_map(|e| e["decked"]["run"].as_i64())
        .collect();
    let ended: Vec<i64> = entries
        .iter()
        .filter_map(|e| e["ended"]["result"]["run_id"].as_i64())
        .collect();
    assert!(
        decked.len() == 1 && !ended.contains(&decked[0]),
        "one run on the deck: {entries:#?}"
    );
    a.daemon.start();
    server.wait_finished(graph);
    let table = server.describe(Some(graph));
    let given = server.job(graph, "two");
    let runs = &given.run_history;
    assert_eq!(runs[0].id.get(), decked[0], "{table}");
    assert_eq!(given.info.state, JobState::Succeeded, "{runs:#?}");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let why = runs[0].reason.as_deref().unwrap_or_default();
    assert!(why.contains("given back unstarted"), "{why}");
    // The job that was running ends as before: the restart killed it, no retries left.
    assert_eq!(
        server.job(graph, "one").info.state,
        JobState::Exception,
        "{table}"
    );
}
