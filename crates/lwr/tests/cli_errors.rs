//! CLI errors: one clear line and a non-zero exit, never a backtrace.

mod common;

use std::io::{Read, Write};
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
        assert_eq!(out.status.code(), Some(2), "a server error: {out}");
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

/// Mistakes made on purpose against one server (and, at the end, one node whose PATH has no
/// lwr): every error is one line in the user's words, naming what was typed, with HTTP
/// details only under -v; "not found" exits 1 everywhere; one repository has one URL and
/// is checked when added; a second server on the data dir is refused with the holder's pid;
/// a polled head without lwr.yml (or with a broken one) reads as such in `lwr pushes`; jobs
/// find `lwr` on their PATH.
#[test]
fn mistakes_against_one_server_are_one_line_in_the_users_words() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  build:\n    run: lwr --version && test \"$(command -v lwr)\" = \"$LWR_BIN\"\n",
    );
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();

    let typo = format!("{graph}/nosuch");
    let empty = format!("{graph}/");
    for (job, names) in [
        ("nosuch", "nosuch"),
        ("999", "999"),
        (typo.as_str(), "nosuch"),
        ("x/build", "x/build"),
        (empty.as_str(), "names no job"),
    ] {
        let out = server.lwr(&["logs", job]);
        out.assert_clear_error(1).assert_stderr_has(&[names]);
        assert!(
            !out.stderr.contains("HTTP") && !out.stderr.contains("/v1/"),
            "no HTTP details without -v: {out}"
        );
        assert_eq!(out.status.code(), Some(1), "not found exits 1: {out}");
    }
    server
        .lwr(&["logs", &typo, "-v"])
        .assert_clear_error(2)
        .assert_stderr_has(&["nosuch", "GET /v1/graphs/", "404"]);

    // A job that has not run yet is named as it was typed.
    let build = format!("{graph}/build");
    server
        .lwr(&["logs", &build])
        .assert_clear_error(1)
        .assert_stderr_has(&[&build, "has not run yet (state pending)"]);
    for args in [vec!["manifest", &build], vec!["artifacts", &build]] {
        server
            .lwr(&args)
            .assert_clear_error(1)
            .assert_stderr_has(&["has not run yet (state pending)"]);
    }
    for (args, says) in [
        (vec!["jobs", "--graph", "999"], "graph 999 not found"),
        (vec!["fetch", "999/installer"], "job 999 not found"),
        (vec!["pushes", "--repo", "99"], "repository 99 not found"),
        (
            vec!["repos", "edit", "99", "--every", "5m"],
            "repository 99 not found",
        ),
        (vec!["nodes", "disable", "nosuch"], "nosuch"),
    ] {
        let out = server.lwr(&args);
        out.assert_clear_error(1).assert_stderr_has(&[says]);
        assert_eq!(out.status.code(), Some(1), "not found exits 1: {out}");
        assert!(out.stdout.is_empty(), "no table: {out}");
    }

    // One repository, one URL; checked when added.
    let path = repo.display().to_string();
    let url = format!("file://{path}");
    server
        .lwr(&["repos", "add", &url, "--branch", "main", "--every", "1h"])
        .assert_success();
    for same in [path.clone(), format!("{path}/"), format!("{path}/.")] {
        server
            .lwr(&["repos", "add", &same, "--branch", "main"])
            .assert_clear_error(1)
            .assert_stderr_has(&["already polled"]);
    }
    let missing = dir.join("missing").display().to_string();
    server
        .lwr(&["repos", "add", &missing])
        .assert_clear_error(1)
        .assert_stderr_has(&[&missing]);
    let other = git_repo(
        &dir.join("other"),
        "version: 1\njobs:\n  a:\n    run: \"true\"\n",
    );
    server
        .lwr(&[
            "repos",
            "add",
            &other.display().to_string(),
            "--branch",
            "mian",
        ])
        .assert_clear_error(1)
        .assert_stderr_has(&["no branch 'mian'", "main"]);
    let out = server.lwr(&["repos", "edit", &path, "--every", "5m", "--branch", "main"]);
    out.assert_success();
    assert!(out.stdout.contains("every 300s"), "{out}");
    let repos = server.api.repos().expect("repos");
    assert_eq!(repos.repos.len(), 1, "{repos:?}");
    assert_eq!(
        (repos.repos[0].url.as_str(), repos.repos[0].every_secs),
        (path.as_str(), 300)
    );
    server.lwr(&["repos", "remove", &url]).assert_success();

    // A second server on the same data dir.
    let listen = format!("127.0.0.1:{}", free_port());
    let data = server.data_dir.display().to_string();
    let out = lwr(&["server", "--listen", &listen, "--data-dir", &data]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["in use", "pid ", "--data-dir"]);

    // A node whose PATH has no lwr: its jobs still find the node's own lwr.
    let work_dir = dir.join("bare-node");
    let args = [
        "node",
        "--server",
        &server.url,
        "--name",
        "bare",
        "--slots",
        "2",
        "--work-dir",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(work_dir.display().to_string());
    let mut node = Daemon::new("node bare", args, dir.join("node-bare.log"), vec![work_dir]);
    node.env
        .push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    node.start();
    let info = server.wait_finished(graph);
    assert_eq!(info.counts.succeeded, 1, "{}", server.describe(Some(graph)));

    // Polled heads without lwr.yml, then with a broken one.
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).expect("a repo dir");
    std::fs::write(bare.join("README"), "no graph here\n").expect("a file");
    git_init_commit(&bare);
    let bare_path = bare.display().to_string();
    server
        .lwr(&["repos", "add", &bare_path, "--every", "1s"])
        .assert_success();
    let pushes_say = |want: &str| {
        wait_until(&format!("`lwr pushes` to say {want}"), DEADLINE, || {
            let out = server.lwr(&["pushes"]);
            match out.stdout.contains(want) {
                true => Ok(()),
                false => Err(out.to_string()),
            }
        })
    };
    pushes_say("no lwr.yml");
    std::fs::write(
        bare.join("lwr.yml"),
        "version: 1\njobs:\n  a:\n    neds: [b]\n",
    )
    .expect("lwr.yml");
    git_commit_all(&bare, "a broken graph");
    pushes_say("invalid lwr.yml: lwr.yml:4: job 'a': unknown key 'neds': did you mean 'needs'?");
    node.kill();
}

/// Something that answers HTTP but is not lwr (a web server's error page) is named as
/// such in one line, never dumped.
#[test]
fn a_server_that_is_not_lwr_is_named_in_one_line() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let page = "<!DOCTYPE html>\n<html>\n<head><title>Not Found</title></head>\n\
                <body>\n<h1>Not Found</h1>\n<p>Nothing here.</p>\n</body>\n</html>\n";
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    for args in [vec!["jobs"], vec!["logs", "1/build"], vec!["nodes"]] {
        let out = lwr_at(Some(&url), &args);
        out.assert_clear_error(1)
            .assert_stderr_has(&["not an lwr server", &url]);
        assert!(!out.stderr.contains("<html"), "{out}");
        assert_eq!(out.status.code(), Some(2), "{out}");
    }
}
