//! Pushes end to end: real git repositories polled by a real server, decision jobs on a real
//! node checking the pushed commit out of its clone cache and submitting its graph, graph
//! diffs between pushes, `when` filters, and trigger, retrigger and cancel across a server
//! restart.

mod common;

use std::path::Path;

use common::*;
use lwr_model::JobState;
use lwr_model::api::{PushInfo, RepoInfo};

const HELLO_ONE: &str =
    "version: 1\njobs:\n  hello:\n    run: echo one\n  steady:\n    run: echo same\n";
const HELLO_TWO: &str =
    "version: 1\njobs:\n  hello:\n    run: echo two\n  steady:\n    run: echo same\n";
const BROKEN: &str = "version: 1\njobs:\n  a:\n    needs: [a]\n    run: x\n";

/// `lwr repos add REPO --branch main --every 1s`.
fn poll(server: &Server, repo: &Path) {
    let repo = repo.display().to_string();
    server
        .lwr(&["repos", "add", &repo, "--branch", "main", "--every", "1s"])
        .assert_success();
}

/// Waits until the server has exactly `n` pushes; returns them oldest first.
fn wait_pushes(server: &Server, n: usize) -> Vec<PushInfo> {
    wait_until(&format!("{n} pushes"), DEADLINE, || {
        let mut list = server
            .api
            .pushes()
            .map_err(|e| format!("cannot list pushes: {e}"))?
            .pushes;
        list.reverse();
        if list.len() == n {
            Ok(list)
        } else {
            Err(format!("{list:#?}\n{}", server.describe(None)))
        }
    })
}

fn repo(server: &Server) -> RepoInfo {
    let list = server.api.repos().expect("listing repositories");
    list.repos.into_iter().next().expect("a polled repository")
}

/// Waits until this server life has polled the (first) repository after `after` (an RFC
/// 3339 time, which compares as text); returns that poll's time.
fn wait_polled_after(server: &Server, after: &str) -> String {
    wait_until("another poll", DEADLINE, || {
        let r = repo(server);
        match r.polled_at {
            Some(t) if t.as_str() > after => Ok(t),
            other => Err(format!("polled at {other:?}")),
        }
    })
}

/// Waits until the push's graph has finished; returns its jobs' states by name.
fn finished_states(server: &Server, push: &PushInfo) -> Vec<(String, JobState)> {
    server.wait_finished(push.graph_id);
    server
        .jobs(push.graph_id)
        .into_iter()
        .map(|(name, j)| (name, j.state))
        .collect()
}

fn all_succeeded(names: &[&str]) -> Vec<(String, JobState)> {
    names
        .iter()
        .map(|n| (n.to_string(), JobState::Succeeded))
        .collect()
}

#[test]
fn each_new_head_makes_exactly_one_push_whose_graph_runs_even_across_a_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let repo_dir = git_repo(&dir.join("repo"), HELLO_ONE);
    let first_rev = git_out(&repo_dir, &["rev-parse", "HEAD"]);
    let mut server = Server::start(dir);
    let node = server.node(dir, "n1", 2, &[]);
    poll(&server, &repo_dir);

    // The first poll pushes the current head; its decision job submits the graph.
    let pushes = wait_pushes(&server, 1);
    assert_eq!(
        (pushes[0].branch.as_str(), pushes[0].revision.as_str()),
        ("main", first_rev.as_str())
    );
    assert_eq!(
        finished_states(&server, &pushes[0]),
        all_succeeded(&["decision", "hello", "steady"])
    );
    let log = server
        .api
        .log(server.job(pushes[0].graph_id, "decision").info.id)
        .expect("decision log");
    assert!(log.contains("submitted 2 jobs"), "{log}");
    let mirrors = || {
        std::fs::read_dir(node.work_dir.join("cache/git"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_else(|_| Vec::new())
            .into_iter()
            .filter(|n| n.to_string_lossy().ends_with(".git"))
            .count()
    };
    assert_eq!(mirrors(), 1, "the node's clone cache holds the repository");

    // More polls, and a server restart, make no second push of the same head.
    let seen = wait_polled_after(&server, "");
    wait_polled_after(&server, &seen);
    server.kill();
    server.restart();
    let seen = wait_polled_after(&server, "");
    wait_polled_after(&server, &seen);
    assert_eq!(wait_pushes(&server, 1)[0].id, pushes[0].id);

    // A new commit is one new push, relative to the previous one; its graph runs the
    // committed lwr.yml (a change takes effect by committing it).
    std::fs::write(repo_dir.join("lwr.yml"), HELLO_TWO).unwrap();
    let second_rev = git_commit_all(&repo_dir, "hello two");
    let pushes = wait_pushes(&server, 2);
    let second = &pushes[1];
    assert_eq!(second.revision, second_rev);
    assert_eq!(second.previous, Some(pushes[0].id));
    assert_eq!(second.base.as_deref(), Some(first_rev.as_str()));
    assert_eq!(
        finished_states(&server, second),
        all_succeeded(&["decision", "hello", "steady"])
    );
    let hello = server.job(second.graph_id, "hello");
    assert_eq!(server.api.log(hello.info.id).unwrap().trim(), "two");
    assert_eq!(mirrors(), 1, "the second push used the same clone cache");

    // The diff of the push against the previous one names exactly the changed job.
    let out = server.lwr(&["graph", "diff", "--push", &second.id.to_string()]);
    out.assert_success();
    assert!(out.stdout.contains("~ hello (run)"), "{out}");
    assert!(!out.stdout.contains("steady"), "{out}");
    let out = server.lwr(&["graph", "diff", "--push", &second.id.to_string(), "--json"]);
    out.assert_success();
    let diff = out.json();
    assert_eq!(diff["changed"][0]["name"], "hello", "{out}");
    assert_eq!(diff["changed"].as_array().map(Vec::len), Some(1), "{out}");
    // The first push has nothing before it.
    server
        .lwr(&["graph", "diff", "--push", &pushes[0].id.to_string()])
        .assert_clear_error(2)
        .assert_stderr_has(&["first push"]);
}

#[test]
fn two_quick_commits_make_two_pushes_and_a_broken_lwr_yml_fails_its_decision_job() {
    let tmp = tempdir();
    let dir = tmp.path();
    let repo_dir = git_repo(&dir.join("repo"), HELLO_ONE);
    let server = Server::start(dir);
    let _node = server.node(dir, "n1", 2, &[]);
    poll(&server, &repo_dir);
    wait_pushes(&server, 1);

    // Two commits in quick succession: the second lands while the first push's graph has
    // not run yet.
    std::fs::write(repo_dir.join("notes.txt"), "x").unwrap();
    let x = git_commit_all(&repo_dir, "x");
    wait_pushes(&server, 2);
    std::fs::write(repo_dir.join("lwr.yml"), HELLO_TWO).unwrap();
    let y = git_commit_all(&repo_dir, "y");
    let pushes = wait_pushes(&server, 3);
    assert_eq!(
        (pushes[1].revision.as_str(), pushes[2].revision.as_str()),
        (x.as_str(), y.as_str())
    );
    for push in &pushes {
        assert_eq!(
            finished_states(&server, push),
            all_succeeded(&["decision", "hello", "steady"]),
            "push {}",
            push.id
        );
    }

    // A commit that breaks lwr.yml: its decision job fails with the error in its log, and
    // nothing else of that push runs.
    std::fs::write(repo_dir.join("lwr.yml"), BROKEN).unwrap();
    git_commit_all(&repo_dir, "broken");
    let pushes = wait_pushes(&server, 4);
    let broken = &pushes[3];
    assert_eq!(
        finished_states(&server, broken),
        [("decision".to_string(), JobState::Failed)]
    );
    let decision = server.job(broken.graph_id, "decision");
    let log = server.api.log(decision.info.id).unwrap();
    assert!(log.contains("lwr.yml:4: job 'a': needs itself"), "{log}");
    assert!(!server.api.push(broken.id).unwrap().decided);

    // Fixed again: the diff compares with the last push that had a graph.
    std::fs::write(repo_dir.join("lwr.yml"), HELLO_ONE).unwrap();
    git_commit_all(&repo_dir, "fixed");
    let fixed = wait_pushes(&server, 5).remove(4);
    server.wait_job(fixed.graph_id, "hello", JobState::Succeeded, None);
    let out = server.lwr(&["graph", "diff", "--push", &fixed.id.to_string()]);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!("push {} ", pushes[2].id))
            && out.stdout.contains("~ hello (run)"),
        "{out}"
    );
}

#[test]
fn when_filters_trigger_retrigger_and_cancel_survive_a_server_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let yml = "version: 1\njobs:\n  build:\n    run: echo build\n  \
        docs:\n    run: echo docs\n    when: {changed: [\"docs/**\", \"*.md\"]}\n  \
        slow:\n    run: sleep 60\n  \
        report:\n    run: echo report\n    needs: [build, slow]\n    requires: all-finished\n";
    let repo_dir = git_repo(&dir.join("repo"), yml);
    let mut server = Server::start(dir);
    let _node = server.node(dir, "n1", 4, &[]);
    poll(&server, &repo_dir);
    let push = wait_pushes(&server, 1).remove(0);
    let g = push.graph_id;

    // No markdown changed: docs is left out, and kept in the push's graph.
    server.wait_job(g, "slow", JobState::Running, None);
    server.wait_job(g, "build", JobState::Succeeded, None);
    let spec = server.api.graph_spec(g).expect("the push's graph");
    assert_eq!(spec.graph.jobs.len(), 4);
    assert_eq!(
        spec.left_out
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["docs"]
    );
    assert!(!server.jobs(g).contains_key("docs"));

    // Trigger it by hand.
    let push_id = push.id.to_string();
    server
        .lwr(&["trigger", "docs", "--push", &push_id])
        .assert_success();
    server.wait_job(g, "docs", JobState::Succeeded, None);

    // The server restarts; all of it is still there and still works.
    server.kill();
    server.restart();
    server
        .lwr(&["trigger", "docs", "--push", &push_id])
        .assert_clear_error(2)
        .assert_stderr_has(&["already in graph"]);
    server
        .lwr(&["trigger", "nope", "--push", &push_id])
        .assert_clear_error(2);
    let build = format!("{g}/build");
    server.lwr(&["retrigger", &build]).assert_success();
    wait_until("build to run again", DEADLINE, || {
        let b = server.job(g, "build");
        if b.info.state == JobState::Succeeded && b.info.runs == 2 {
            Ok(())
        } else {
            Err(format!("{:?} after {} runs", b.info.state, b.info.runs))
        }
    });
    assert_eq!(server.job(g, "report").info.state, JobState::Pending);

    // Cancelling slow lets the all-finished report run.
    server
        .lwr(&["cancel", &format!("{g}/slow")])
        .assert_success();
    server.wait_job(g, "report", JobState::Succeeded, None);
    assert_eq!(server.job(g, "slow").info.state, JobState::Cancelled);

    // A commit that changes markdown runs docs without being asked.
    std::fs::write(repo_dir.join("README.md"), "hi").unwrap();
    git_commit_all(&repo_dir, "readme");
    let second = wait_pushes(&server, 2).remove(1);
    server.wait_job(second.graph_id, "docs", JobState::Succeeded, None);
    let spec = server.api.graph_spec(second.graph_id).unwrap();
    assert!(spec.left_out.is_empty(), "{:?}", spec.left_out);
    server
        .lwr(&["cancel", "--graph", &second.graph_id.to_string()])
        .assert_success();
}

#[test]
fn a_failing_repository_is_shown_and_retried_without_stopping_the_others() {
    let tmp = tempdir();
    let dir = tmp.path();
    let missing = dir.join("missing");
    let server = Server::start(dir);
    let _node = server.node(dir, "n1", 2, &[]);
    // A repository is checked when added; this one (with no commit, so nothing to push)
    // disappears afterwards.
    git_out(
        dir,
        &["init", "-q", "-b", "main", &missing.display().to_string()],
    );
    server
        .lwr(&[
            "repos",
            "add",
            &missing.display().to_string(),
            "--branch",
            "ma*",
            "--every",
            "1s",
        ])
        .assert_success();
    std::fs::remove_dir_all(&missing).expect("removing the repository");
    let failing = wait_until("the repository to be failing", DEADLINE, || {
        let r = repo(&server);
        if r.state == "failing" && r.failures >= 1 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(
        failing
            .error
            .as_deref()
            .unwrap_or("")
            .contains("does not exist"),
        "{failing:?}"
    );
    assert!(failing.retry_at.is_some());
    let out = server.lwr(&["repos"]);
    out.assert_success();
    assert!(
        out.stdout.contains("failing") && out.stdout.contains("retry at"),
        "{out}"
    );

    // A good repository added meanwhile is polled and pushed as usual.
    let good = git_repo(&dir.join("good"), HELLO_ONE);
    poll(&server, &good);
    let push = wait_pushes(&server, 1).remove(0);
    assert_eq!(
        finished_states(&server, &push),
        all_succeeded(&["decision", "hello", "steady"])
    );
    // It keeps failing (with backoff), and is removed by its URL.
    wait_until("a second failure", DEADLINE, || {
        let r = repo(&server);
        if r.failures >= 2 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    server
        .lwr(&["repos", "remove", &missing.display().to_string()])
        .assert_success();
    let out = server.lwr(&["repos", "--json"]);
    out.assert_success();
    assert_eq!(
        out.json()["repos"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    // The same URL twice is refused.
    let good_url = good.display().to_string();
    server
        .lwr(&["repos", "add", &good_url])
        .assert_clear_error(2)
        .assert_stderr_has(&["already polled"]);

    // Without --push, `lwr graph --submit` pushes the working tree by hand, like `lwr push`.
    let out = server.lwr(&["graph", "--repo", &good_url, "--submit"]);
    out.assert_success();
    let manual = out.pushed_graph();
    let info = server.wait_finished(manual);
    assert_eq!(info.counts.succeeded, 2, "{out}");
    let spec = server.api.graph_spec(manual).unwrap();
    assert_eq!((spec.push, spec.graph.jobs.len()), (None, 2));
}

#[test]
fn concurrent_decision_jobs_share_one_clone_cache() {
    let tmp = tempdir();
    let dir = tmp.path();
    let repo_dir = git_repo(&dir.join("repo"), HELLO_ONE);
    for b in ["b1", "b2", "b3", "b4", "b5"] {
        git_out(&repo_dir, &["branch", b]);
    }
    let server = Server::start(dir);
    let node = server.node(dir, "n1", 6, &[]);
    // Six pushes at once (every branch), so six decision jobs race for a cold cache.
    let repo = repo_dir.display().to_string();
    server
        .lwr(&["repos", "add", &repo, "--branch", "*", "--every", "1s"])
        .assert_success();
    let pushes = wait_pushes(&server, 6);
    for push in &pushes {
        assert_eq!(
            finished_states(&server, push),
            all_succeeded(&["decision", "hello", "steady"]),
            "push {} of {}",
            push.id,
            push.branch
        );
    }
    let mirrors: Vec<_> = std::fs::read_dir(node.work_dir.join("cache/git"))
        .expect("the node's clone cache")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
}
