//! `lwr dev`: the laptop cluster, a server and N nodes in one command.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use lwr_model::{GraphId, JobState};

/// Waits until `lwr nodes --json` lists dev-1 .. dev-N.
fn wait_dev_nodes(dev: &Server, n: u32) {
    let want: Vec<String> = (1..=n).map(|i| format!("dev-{i}")).collect();
    wait_until(&format!("{n} dev nodes to register"), DEADLINE, || {
        let out = dev.lwr(&["nodes", "--json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        let json = out.json();
        let mut names: Vec<String> = json["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["name"].as_str().map(String::from))
            .collect();
        names.sort();
        if names == want {
            Ok(())
        } else {
            Err(format!("nodes: {names:?}"))
        }
    });
}

/// Every job of the graph succeeded (checked with `lwr jobs --graph N --json`).
fn assert_all_succeeded(dev: &Server, graph: GraphId) -> usize {
    let out = dev.lwr(&["jobs", "--graph", &graph.to_string(), "--json"]);
    out.assert_success();
    let json = out.json();
    let jobs = json["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs array: {out}"));
    assert!(!jobs.is_empty(), "{out}");
    for j in jobs {
        assert_eq!(
            j["state"],
            JobState::Succeeded.as_str(),
            "every job must succeed: {json:#}"
        );
    }
    jobs.len()
}

#[test]
fn lwr_dev_runs_a_pushed_graph_and_stops_on_sigterm() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut dev = Server::dev(dir, 2, 2);
    wait_dev_nodes(&dev, 2);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1
jobs:
  fetch:
    run: echo fetched
  build:
    run: echo built > out.txt && cat out.txt
    needs: [fetch]
  test:
    run: echo chunk ${matrix.chunk}
    needs: [build]
    matrix:
      chunk: [1, 2, 3, 4]
  package:
    run: echo packaged
    needs: [test]
",
    );
    let out = dev.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    assert_eq!(assert_all_succeeded(&dev, graph), 7);
    let nodes: std::collections::BTreeSet<String> = dev
        .jobs(graph)
        .into_values()
        .filter_map(|j| j.node)
        .collect();
    assert!(
        nodes.iter().all(|n| n == "dev-1" || n == "dev-2"),
        "{nodes:?}"
    );
    let log = dev.lwr(&["logs", &format!("{graph}/build")]);
    log.assert_success();
    assert!(log.stdout.contains("built"), "{log}");

    // SIGTERM stops the server and its nodes cleanly.
    let status = dev.daemon.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "lwr dev should exit 0 on SIGTERM, got {status}:\n{}",
        dev.daemon.log_tail(20)
    );
}

/// Copies a directory tree (files and dirs; a `.git` is left out).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
    }
}

/// The README's first command: `lwr dev` and a push of the workspace's `examples/`.
/// This test uses the repository's own `examples/` directory; it fails until that
/// directory exists with an `lwr.yml` whose jobs all succeed on a dev cluster.
#[test]
fn the_workspace_examples_run_on_lwr_dev() {
    let examples: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    assert!(
        examples.join("lwr.yml").is_file(),
        "{} has no lwr.yml: the README's `lwr dev` + `lwr push --repo examples --wait` needs it",
        examples.display()
    );
    let tmp = tempdir();
    let dir = tmp.path();
    let repo = dir.join("examples");
    copy_tree(&examples, &repo);
    git_init_commit(&repo);

    // Offline first: the example graph is valid.
    lwr(&["graph", "--repo", &repo.display().to_string()]).assert_success();

    let dev = Server::dev(dir, 2, 2);
    wait_dev_nodes(&dev, 2);
    let out = dev.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let n = assert_all_succeeded(&dev, graph);
    assert!(
        n >= 2,
        "the example graph should show more than one job, has {n}"
    );
}

/// `lwr dev`'s default data dir is relative (`./.lwr`): jobs, which run in dirs of their own,
/// must still get usable `$LWR_EXTRA` and `$LWR_MANIFESTS` paths.
#[test]
fn lwr_dev_with_a_relative_data_dir_gives_jobs_usable_paths() {
    let tmp = tempdir();
    let dir = tmp.path();
    let cwd = std::env::current_dir().expect("a working dir");
    let up = "../".repeat(cwd.components().count().saturating_sub(1));
    let absolute = dir.join("dev").display().to_string();
    let relative = format!("{up}{}", absolute.trim_start_matches('/'));
    assert!(Path::new(&relative).is_relative());
    let dev = Server::dev_at(dir, &relative, 1, 1);
    wait_dev_nodes(&dev, 1);
    let repo = git_repo(
        &dir.join("repo"),
        r#"version: 1
jobs:
  build:
    run: >-
      echo '{"version": "3.1"}' > "$LWR_EXTRA" && echo built > out.bin
    artifacts: [{name: out, path: out.bin}]
  test:
    needs: [build]
    run: grep -q manifest "$LWR_MANIFESTS" && lwr fetch build/out -o got.bin && grep -q built got.bin
"#,
    );
    let out = dev.push(&repo, true);
    out.assert_success();
    assert_eq!(assert_all_succeeded(&dev, out.pushed_graph()), 2);
    let manifest = dev.lwr(&["manifest", &format!("{}/build", out.pushed_graph())]);
    manifest.assert_success();
    assert_eq!(manifest.json()["extra"]["version"], "3.1", "{manifest}");
}

/// `lwr dev` is its nodes' supervisor: a node drained for a reboot starts again and works.
#[test]
fn a_rebooted_dev_node_comes_back_and_runs_jobs() {
    let tmp = tempdir();
    let dir = tmp.path();
    let dev = Server::dev(dir, 1, 1);
    wait_dev_nodes(&dev, 1);
    dev.lwr(&["nodes", "reboot", "dev-1"]).assert_success();
    wait_until("lwr dev to restart dev-1", DEADLINE, || {
        let log = std::fs::read_to_string(dir.join("lwr-dev.log")).unwrap_or_default();
        match log.contains("drained for a reboot; starting it again") {
            true => Ok(()),
            false => Err(log),
        }
    });
    wait_until("dev-1 to register again", DEADLINE, || {
        let nodes = dev.api.nodes().map_err(|e| e.to_string())?;
        match nodes.nodes.iter().find(|n| n.name == "dev-1") {
            Some(n) if n.state == "idle" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  after:\n    run: echo after the reboot\n",
    );
    let out = dev.push(&repo, true);
    out.assert_success();
    assert_eq!(assert_all_succeeded(&dev, out.pushed_graph()), 1);
}
