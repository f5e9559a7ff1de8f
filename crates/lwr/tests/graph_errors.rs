//! Invalid lwr.yml: `lwr graph` (offline) and `lwr push` give one clear error naming the
//! problem, exit non-zero, and change nothing on the server.

mod common;

use std::path::Path;

use common::*;
use lwr_model::api::SubmitGraph;
use lwr_model::{Graph, JobSpec};

/// Writes `yml` as DIR/NAME/lwr.yml and runs `lwr graph --repo DIR/NAME`.
fn graph_of(dir: &Path, name: &str, yml: &str) -> Out {
    let repo = dir.join(name);
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("lwr.yml"), yml).unwrap();
    lwr(&["graph", "--repo", &repo.display().to_string()])
}

/// True when the message points at line `line` of lwr.yml.
fn names_line(out: &Out, line: u32) -> bool {
    out.stderr.contains(&format!("lwr.yml:{line}")) || out.stderr.contains(&format!("line {line}"))
}

#[track_caller]
fn assert_line(out: &Out, line: u32) {
    assert!(
        names_line(out, line),
        "expected the error to name line {line}: {out}"
    );
}

#[test]
fn a_cycle_is_reported_with_the_jobs_in_it() {
    let tmp = tempdir();
    let two = graph_of(
        tmp.path(),
        "two",
        "version: 1
jobs:
  build:
    run: make
    needs: [deploy]
  deploy:
    run: make deploy
    needs: [build]
",
    );
    two.assert_clear_error(2)
        .assert_stderr_has(&["cycle", "build", "deploy"]);

    let three = graph_of(
        tmp.path(),
        "three",
        "version: 1
jobs:
  lint:
    run: true
  one:
    run: true
    needs: [three]
  two:
    run: true
    needs: [one, lint]
  three:
    run: true
    needs: [two]
",
    );
    three
        .assert_clear_error(2)
        .assert_stderr_has(&["cycle", "one", "two", "three"]);

    let own = graph_of(
        tmp.path(),
        "self",
        "version: 1\njobs:\n  loop:\n    run: true\n    needs: [loop]\n",
    );
    own.assert_clear_error(2).assert_stderr_has(&["loop"]);
}

#[test]
fn an_unknown_need_is_named() {
    let tmp = tempdir();
    let out = graph_of(
        tmp.path(),
        "repo",
        "version: 1
jobs:
  build:
    run: make
  test:
    run: make test
    needs: [biuld]
",
    );
    out.assert_clear_error(2)
        .assert_stderr_has(&["biuld", "test"]);
    assert_line(&out, 7);
}

#[test]
fn two_names_that_normalize_alike_are_both_named() {
    let tmp = tempdir();
    let out = graph_of(
        tmp.path(),
        "repo",
        "version: 1
jobs:
  Test_Linux:
    run: make test
  test-linux:
    run: make check
",
    );
    out.assert_clear_error(2)
        .assert_stderr_has(&["Test_Linux", "test-linux"]);
}

#[test]
fn broken_yaml_is_a_syntax_error_not_a_panic() {
    let tmp = tempdir();
    let out = graph_of(tmp.path(), "repo", "jobs:\n  a: [\n");
    out.assert_clear_error(2).assert_stderr_has(&["lwr.yml"]);
    assert!(
        out.stderr.to_lowercase().contains("yaml"),
        "expected a YAML syntax error: {out}"
    );

    let not_a_map = graph_of(tmp.path(), "list", "- a\n- b\n");
    not_a_map
        .assert_clear_error(2)
        .assert_stderr_has(&["lwr.yml"]);
    let empty = graph_of(tmp.path(), "empty", "");
    empty.assert_clear_error(2).assert_stderr_has(&["lwr.yml"]);
}

#[test]
fn an_empty_run_is_named() {
    let tmp = tempdir();
    for (case, run) in [("empty", "\"\""), ("blank", "\"   \"")] {
        let out = graph_of(
            tmp.path(),
            case,
            &format!("version: 1\njobs:\n  build:\n    run: {run}\n"),
        );
        out.assert_clear_error(2)
            .assert_stderr_has(&["build", "run"]);
        assert_line(&out, 4);
    }
    let missing = graph_of(
        tmp.path(),
        "missing",
        "version: 1\njobs:\n  build:\n    needs: []\n",
    );
    missing
        .assert_clear_error(2)
        .assert_stderr_has(&["build", "run"]);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let tmp = tempdir();
    let out = graph_of(
        tmp.path(),
        "repo",
        "version: 1
jobs:
  build:
    run: make
  test:
    rnu: make test
",
    );
    out.assert_clear_error(2)
        .assert_stderr_has(&["rnu", "test"]);
    assert_line(&out, 6);

    let top = graph_of(
        tmp.path(),
        "top",
        "version: 1\njbos:\n  a:\n    run: true\n",
    );
    top.assert_clear_error(2).assert_stderr_has(&["jbos"]);
}

#[test]
fn a_bad_timeout_is_named() {
    let tmp = tempdir();
    let out = graph_of(
        tmp.path(),
        "repo",
        "version: 1
jobs:
  build:
    run: make
    timeout: soon
",
    );
    out.assert_clear_error(2)
        .assert_stderr_has(&["timeout", "soon", "build"]);
    assert_line(&out, 5);
}

#[test]
fn a_bad_glob_is_named_offline() {
    let tmp = tempdir();
    let when = graph_of(
        tmp.path(),
        "when",
        "version: 1
jobs:
  docs:
    run: make docs
    when: {changed: [\"docs/**\", \"src/{a\"]}
",
    );
    when.assert_clear_error(2)
        .assert_stderr_has(&["docs", "when.changed[1]", "src/{a", "[{]"]);
    assert_line(&when, 5);

    let artifact = graph_of(
        tmp.path(),
        "artifact",
        "version: 1
jobs:
  build:
    run: make
    artifacts:
      - {name: app, path: \"dist/[z-a].tar\"}
",
    );
    artifact.assert_clear_error(2).assert_stderr_has(&[
        "build",
        "artifacts[0].path",
        "dist/[z-a].tar",
    ]);
    assert_line(&artifact, 6);
}

#[test]
fn an_unsupported_version_is_named() {
    let tmp = tempdir();
    let out = graph_of(tmp.path(), "v2", "version: 2\njobs:\n  a:\n    run: true\n");
    out.assert_clear_error(2)
        .assert_stderr_has(&["version", "2"]);
    let none = graph_of(tmp.path(), "none", "jobs:\n  a:\n    run: true\n");
    none.assert_clear_error(2).assert_stderr_has(&["version"]);
}

#[test]
fn a_valid_graph_prints_and_needs_no_server() {
    let tmp = tempdir();
    let out = graph_of(
        tmp.path(),
        "repo",
        "version: 1
jobs:
  Build Linux:
    run: make
  test:
    run: make test
    needs: [build_linux]
    timeout: 90s
",
    );
    out.assert_success();
    assert!(out.stdout.contains("build-linux"), "{out}");
    let repo = tmp.path().join("repo").display().to_string();
    let json = lwr(&["graph", "--repo", &repo, "--json"]);
    json.assert_success();
    let g = json.json();
    assert_eq!(g["jobs"][0]["name"], "build-linux", "{json}");
    assert_eq!(g["jobs"][1]["needs"][0], "build-linux", "{json}");
    assert_eq!(g["jobs"][1]["timeout_secs"], 90, "{json}");
}

#[test]
fn pushing_an_invalid_graph_fails_and_stores_nothing() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1
jobs:
  build:
    run: make
    needs: [deploy]
  deploy:
    run: make deploy
    needs: [build]
",
    );
    let out = server.push(&repo, true);
    out.assert_clear_error(2)
        .assert_stderr_has(&["cycle", "build", "deploy"]);
    let json = server.jobs_json();
    assert_eq!(
        json["jobs"].as_array().map(Vec::len),
        Some(0),
        "no graph may be stored: {json:#}"
    );
}

fn spec(name: &str, run: &str, needs: &[&str]) -> JobSpec {
    let mut j: JobSpec =
        serde_json::from_value(serde_json::json!({"name": name, "run": run})).expect("a job spec");
    j.needs = needs.iter().map(|s| s.to_string()).collect();
    j
}

/// Submits each graph straight to the API; each must get a 4xx, and nothing is stored.
fn assert_server_refuses(server: &Server, graphs: Vec<(&str, Vec<JobSpec>)>) {
    for (what, jobs) in graphs {
        let sub = SubmitGraph::new(Graph { jobs });
        match server.api.submit(&sub) {
            Ok(info) => panic!("the server took a graph with {what}: {info:?}"),
            Err(e) => {
                let status = e
                    .status()
                    .unwrap_or_else(|| panic!("{what}: no HTTP status in {e}"));
                assert!(status.is_client_error(), "{what}: expected a 4xx, got {e}");
            }
        }
    }
    let json = server.jobs_json();
    assert_eq!(
        json["jobs"].as_array().map(Vec::len),
        Some(0),
        "no graph may be stored: {json:#}"
    );
}

#[test]
fn the_server_checks_a_graph_sent_straight_to_the_api() {
    // The server trusts no client: the checks of `lwr graph` hold for a graph sent directly.
    let tmp = tempdir();
    let server = Server::start(tmp.path());
    assert_server_refuses(
        &server,
        vec![
            (
                "a cycle",
                vec![
                    spec("build", "true", &["deploy"]),
                    spec("deploy", "true", &["build"]),
                ],
            ),
            (
                "a job needing itself",
                vec![spec("build", "true", &["build"])],
            ),
            ("an unknown need", vec![spec("build", "true", &["nosuch"])]),
            (
                "a duplicate name",
                vec![spec("build", "true", &[]), spec("build", "false", &[])],
            ),
            (
                "a name that is not normalized",
                vec![spec("Build Linux", "true", &[])],
            ),
            ("an empty run", vec![spec("build", "", &[])]),
        ],
    );
}

#[test]
fn the_server_refuses_an_empty_graph_as_lwr_graph_does() {
    // `lwr graph` rejects `jobs: {}` ("has no jobs; declare at least one"); the server must
    // not store what the file format forbids.
    let tmp = tempdir();
    let offline = graph_of(tmp.path(), "repo", "version: 1\njobs: {}\n");
    offline.assert_clear_error(2).assert_stderr_has(&["jobs"]);
    let server = Server::start(tmp.path());
    assert_server_refuses(&server, vec![("no jobs", vec![])]);
}

#[test]
fn graph_diff_names_exactly_the_changed_jobs() {
    let tmp = tempdir();
    let repo = tmp.path().join("repo");
    git_repo(
        &repo,
        "version: 1\njobs:\n  hello:\n    run: echo one\n  steady:\n    run: echo same\n",
    );
    let old_json = lwr(&["graph", "--repo", &repo.display().to_string(), "--json"]);
    old_json.assert_success();
    let old_file = tmp.path().join("old.json");
    std::fs::write(&old_file, &old_json.stdout).unwrap();
    std::fs::write(
        repo.join("lwr.yml"),
        "version: 1\njobs:\n  hello:\n    run: echo two\n  steady:\n    run: echo same\n  extra:\n    run: x\n    needs: [steady]\n",
    )
    .unwrap();
    git_init_commit(&repo);

    let repo_arg = repo.display().to_string();
    for (old, new) in [
        (old_file.display().to_string(), repo_arg.clone()),
        ("HEAD~1".to_string(), "HEAD".to_string()),
    ] {
        let out = lwr(&["graph", "diff", &old, &new, "--repo", &repo_arg]);
        out.assert_success();
        assert!(out.stdout.contains("~ hello (run)"), "{out}");
        assert!(out.stdout.contains("+ extra"), "{out}");
        assert!(out.stdout.contains("+ edge extra needs steady"), "{out}");
        assert!(
            !out.stdout.contains("steady ("),
            "an unchanged job is named: {out}"
        );
    }
    let json = lwr(&[
        "graph", "diff", "HEAD~1", "HEAD", "--repo", &repo_arg, "--json",
    ]);
    json.assert_success();
    assert_eq!(json.json()["changed"][0]["name"], "hello");
    lwr(&["graph", "diff", "nosuchrev", "HEAD", "--repo", &repo_arg])
        .assert_clear_error(1)
        .assert_stderr_has(&["nosuchrev"]);
}

/// An lwr.yml over the size limit says which limit, not "YAML syntax error".
#[test]
fn an_oversized_file_names_the_size_limit() {
    let tmp = tempdir();
    let mut yml = String::from("version: 1\njobs:\n  a:\n    run: true\n");
    yml.push_str(&"#".repeat(lwr_model::graph::MAX_FILE_BYTES));
    let out = graph_of(tmp.path(), "big", &yml);
    out.assert_failure()
        .assert_stderr_has(&["lwr.yml", "size limit of 48 MiB"]);
    assert!(!out.stderr.contains("YAML syntax"), "{}", out.stderr);
}
