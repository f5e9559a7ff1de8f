//! CLI errors: one clear line and a non-zero exit, never a backtrace.

mod common;

use std::net::TcpListener;

use common::*;

#[test]
fn an_unreachable_server_is_one_clear_line() {
    for args in [
        vec!["jobs", "--server", "http://127.0.0.1:1"],
        vec!["jobs", "--json", "--server", "http://127.0.0.1:1"],
        vec!["nodes", "--server", "http://127.0.0.1:1"],
        vec!["logs", "1", "--server", "http://127.0.0.1:1"],
    ] {
        let out = lwr(&args);
        out.assert_clear_error(1)
            .assert_stderr_has(&["cannot reach", "127.0.0.1:1"]);
        assert!(out.stdout.is_empty(), "nothing on stdout: {out}");
    }
    // LWR_SERVER works as --server does.
    let out = lwr_at(Some("http://127.0.0.1:1"), &["jobs"]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["cannot reach", "127.0.0.1:1"]);
}

#[test]
fn a_bad_server_url_is_one_clear_line() {
    let out = lwr(&["jobs", "--server", "localhost:7370"]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["localhost:7370"]);
}

#[test]
fn logs_of_an_unknown_job_is_a_clear_error() {
    let tmp = tempdir();
    let server = Server::start(tmp.path());
    for (job, names) in [
        ("nosuch", "nosuch"),
        ("999", "999"),
        ("1/nosuch", "nosuch"),
        ("x/build", "x/build"),
    ] {
        let out = server.lwr(&["logs", job]);
        out.assert_clear_error(1).assert_stderr_has(&[names]);
    }
}

#[test]
fn pushing_what_is_not_a_repository_is_a_clear_error() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);

    let out = server.lwr(&["push", "--repo", "/nonexistent"]);
    out.assert_clear_error(2)
        .assert_stderr_has(&["/nonexistent"]);

    // A git repository whose HEAD has no lwr.yml.
    let repo = dir.join("no-graph");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git_init_commit(&repo);
    let out = server.push(&repo, false);
    out.assert_clear_error(2).assert_stderr_has(&["lwr.yml"]);

    // lwr.yml in the working tree but never committed: push reads HEAD, not the disk.
    std::fs::write(
        repo.join("lwr.yml"),
        "version: 1\njobs:\n  a:\n    run: true\n",
    )
    .unwrap();
    let out = server.push(&repo, false);
    out.assert_clear_error(2).assert_stderr_has(&["lwr.yml"]);

    let json = server.jobs_json();
    assert_eq!(json["jobs"].as_array().map(Vec::len), Some(0), "{json:#}");

    // And to a server that is not there.
    let good = git_repo(
        &dir.join("good"),
        "version: 1\njobs:\n  a:\n    run: true\n",
    );
    let out = lwr(&[
        "push",
        "--repo",
        &good.display().to_string(),
        "--server",
        "http://127.0.0.1:1",
    ]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["cannot reach"]);
}

#[test]
fn a_server_on_a_taken_port_says_so_once() {
    let tmp = tempdir();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tmp.path().join("data").display().to_string();
    let out = lwr(&["server", "--listen", &addr, "--data-dir", &data]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["cannot listen", &addr]);
    let repeats = out.stderr.matches("Address already in use").count();
    assert_eq!(repeats, 1, "the cause should be said once: {out}");
}

#[test]
fn a_server_refuses_a_non_loopback_address_without_auth() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let addr = format!("0.0.0.0:{}", free_port());
    let out = lwr(&[
        "server",
        "--listen",
        &addr,
        "--data-dir",
        &data.display().to_string(),
    ]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["refusing", "--insecure-no-auth"]);
    assert!(!data.exists(), "a refused server writes nothing");
}

/// `lwr graph --json | head -1`: the reader leaves early; lwr ends quietly with 141, as a
/// Unix tool ended by SIGPIPE does, not with a panic.
#[test]
fn a_reader_that_leaves_early_is_no_error() {
    let tmp = tempdir();
    let repo = tmp.path().join("big");
    std::fs::create_dir_all(&repo).expect("a repo dir");
    let values: Vec<String> = (1..=1000).map(|i| i.to_string()).collect();
    std::fs::write(
        repo.join("lwr.yml"),
        format!(
            "version: 1\njobs:\n  t:\n    run: echo ${{matrix.a}}\n    matrix: {{a: [{}]}}\n",
            values.join(",")
        ),
    )
    .expect("writing lwr.yml");
    for args in [&["graph", "--json"][..], &["graph"][..]] {
        let mut child = std::process::Command::new(bin())
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("lwr starts");
        // Close the reading end before lwr writes: its first write finds no reader.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("lwr ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(141),
            "{args:?}: {} {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "{args:?}: quietly, not {stderr}");
    }
}

/// Unknown graphs and jobs that have not run say so, in the job's words.
#[test]
fn unknown_graphs_and_runs_that_do_not_exist_yet_are_named() {
    let tmp = tempdir();
    let server = Server::start(tmp.path());
    server
        .lwr(&["jobs", "--graph", "999"])
        .assert_clear_error(1)
        .assert_stderr_has(&["graph 999 not found", "404"]);
    let repo = git_repo(
        &tmp.path().join("repo"),
        "version: 1\njobs:\n  build:\n    run: \"true\"\n",
    );
    let graph = server.push(&repo, false).pushed_graph();
    let job = format!("{graph}/build");
    for args in [vec!["manifest", &job], vec!["artifacts", &job]] {
        server
            .lwr(&args)
            .assert_clear_error(1)
            .assert_stderr_has(&["has not run yet (state pending)"]);
    }
    server
        .lwr(&["fetch", "999/installer"])
        .assert_clear_error(1)
        .assert_stderr_has(&["job 999 not found"]);
}
