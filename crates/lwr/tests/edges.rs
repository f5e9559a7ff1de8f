//! Inputs at the edges, through the real binary: job names made of URL syntax, a server
//! behind a TLS proxy (`--public-url`), revisions that are not ASCII, and a repository that
//! is a linked worktree.

mod common;

use common::*;

/// Jobs whose names differ only by characters that mean something in a URL.
const URL_NAMES: &str = r#"version: 1
jobs:
  c:
    run: echo log-of-plain-c
  "c#":
    run: echo log-of-hash-c
  "c?x":
    run: echo log-of-query-c
  "c%23":
    run: echo log-of-percent-c
"#;

#[test]
fn a_job_name_with_url_syntax_names_that_job_and_no_other() {
    let tmp = tempdir();
    let dev = Server::dev(tmp.path(), 1, 2);
    let repo = git_repo(&tmp.path().join("repo"), URL_NAMES);
    let out = dev.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    for (name, log) in [
        ("c", "log-of-plain-c"),
        ("c#", "log-of-hash-c"),
        ("c?x", "log-of-query-c"),
        ("c%23", "log-of-percent-c"),
    ] {
        let out = dev.lwr(&["logs", &format!("{graph}/{name}")]);
        out.assert_success();
        assert_eq!(out.stdout.trim(), log, "lwr logs {graph}/{name}: {out}");
    }
    // A name that is not there is not found, rather than cut to one that is.
    dev.lwr(&["logs", &format!("{graph}/c#nope")])
        .assert_clear_error(3)
        .assert_stderr_has(&["not found"]);
}

const WITH_ARTIFACT: &str = r#"version: 1
jobs:
  build:
    run: printf bytes > out.bin
    artifacts:
      - {name: out, path: out.bin}
"#;

#[test]
fn manifest_locations_use_the_public_url_when_one_is_given() {
    let tmp = tempdir();
    let server = Server::start_with(
        tmp.path(),
        &["--public-url", "https://ci.example.com/lwr/"],
        &[],
    );
    let _node = server.node(tmp.path(), "n1", 1, &[]);
    let repo = git_repo(&tmp.path().join("repo"), WITH_ARTIFACT);
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let out = server.lwr(&["manifest", &format!("{graph}/build")]);
    out.assert_success();
    let manifest = out.json();
    let artifacts = manifest["artifacts"].as_array().expect("artifacts");
    assert!(!artifacts.is_empty(), "{manifest}");
    for a in artifacts {
        let location = a["location"].as_str().expect("location");
        assert!(
            location.starts_with("https://ci.example.com/lwr/v1/"),
            "{location} in {manifest}"
        );
    }
}

#[test]
fn a_public_url_that_is_not_http_is_refused() {
    let tmp = tempdir();
    let data = tmp.path().join("data").display().to_string();
    for bad in ["ftp://ci.example.com", "ci.example.com", "https://h/?q=1"] {
        lwr(&[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--public-url",
            bad,
        ])
        .assert_clear_error(3)
        .assert_stderr_has(&["--public-url"]);
    }
}

#[test]
fn a_revision_that_is_not_ascii_is_shortened_on_a_character_boundary() {
    let tmp = tempdir();
    let repo = git_repo(&tmp.path().join("repo"), URL_NAMES);
    // A tag: byte 12 falls inside its 'ü'.
    let branch = "abcdefghijküberlang";
    git_out(&repo, &["tag", branch]);
    let dest = tmp.path().join("checkout");
    let out = lwr(&[
        "checkout",
        &repo.display().to_string(),
        branch,
        &dest.display().to_string(),
    ]);
    out.assert_success();
    assert!(out.stdout.contains("checked out abcdefghijkü of"), "{out}");
}

#[test]
fn a_linked_worktree_is_pushed_and_polled() {
    let tmp = tempdir();
    let main = git_repo(&tmp.path().join("main"), URL_NAMES);
    let worktree = tmp.path().join("wt");
    git_out(
        &main,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature",
            &worktree.display().to_string(),
        ],
    );
    let feature = git_commit_all(&worktree, "on the feature branch");
    let dev = Server::dev(tmp.path(), 1, 2);
    let out = dev.push(&worktree, true);
    out.assert_success();
    let graph = out.pushed_graph();
    assert_eq!(dev.jobs(graph).len(), 4, "{}", dev.describe(Some(graph)));

    let path = worktree.display().to_string();
    dev.lwr(&[
        "repos", "add", &path, "--branch", "feature", "--every", "1s",
    ])
    .assert_success();
    let push = wait_until("a push of the worktree's branch", DEADLINE, || {
        let list = dev.api.pushes().map_err(|e| e.to_string())?.pushes;
        let repos = dev.api.repos().map_err(|e| e.to_string())?;
        list.into_iter()
            .next()
            .ok_or_else(|| format!("no push yet; {repos:?}"))
    });
    assert_eq!(
        (push.branch.as_str(), push.revision.as_str()),
        ("feature", feature.as_str())
    );
    let graph = dev.wait_finished(push.graph_id);
    assert_eq!(
        graph.counts.succeeded,
        5,
        "{}",
        dev.describe(Some(push.graph_id))
    );
}
