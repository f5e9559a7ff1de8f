//! Retention with a real server and node: `lwr gc` removes an old graph with its stored log
//! and artifact, `--dry-run` only lists it, and graphs marked with `lwr keep` stay.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lwr_model::GraphId;

const YML: &str = r#"version: 1
jobs:
  build:
    run: echo retention-log-line && printf artifact-bytes > out.txt
    artifacts:
      - {name: out, path: out.txt}
"#;

/// Pushes a repository of its own, waits for it to end; returns its graph.
fn push_one(server: &Server, dir: &Path, name: &str) -> GraphId {
    let repo = git_repo(&dir.join(name), YML);
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    server.wait_finished(graph);
    graph
}

/// The files the artifact store holds for the latest run of `graph`'s build job.
fn stored_files(server: &Server, graph: GraphId) -> (PathBuf, Vec<String>) {
    let job = server.job(graph, "build");
    let run = job.run_history.last().expect("a run").id;
    let dir = server.data_dir.join("artifacts").join(run.to_string());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    (dir, names)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.flatten().count())
}

#[test]
fn gc_removes_old_graphs_with_their_bytes_and_keeps_marked_ones() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::dev(dir, 1, 2);
    let old = push_one(&server, dir, "old");
    let kept = push_one(&server, dir, "kept");
    let job_kept = push_one(&server, dir, "job-kept");
    let (old_dir, old_files) = stored_files(&server, old);
    assert!(
        old_files.contains(&"log".to_string()) && old_files.len() == 2,
        "the log and the artifact are stored: {old_files:?}"
    );
    server
        .lwr(&["keep", "--graph", &kept.to_string()])
        .assert_success();
    server
        .lwr(&["keep", &format!("{job_kept}/build")])
        .assert_success();

    // A dry run lists the old graph and removes nothing.
    let dry = server.lwr(&["gc", "--dry-run", "--older-than", "0s", "--json"]);
    dry.assert_success();
    let report = dry.json();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["graph_ids"], serde_json::json!([old.get()]), "{dry}");
    assert_eq!(report["artifacts"], 1, "{dry}");
    assert_eq!(files_in(&old_dir), 2);
    server.api.graph(old).expect("a dry run leaves the graph");

    // The server's own --keep (90 days) removes nothing yet.
    let none = server.lwr(&["gc"]);
    none.assert_success();
    assert!(none.stdout.contains("removed 0 graphs"), "{none}");
    assert_eq!(files_in(&old_dir), 2);

    let gc = server.lwr(&["gc", "--older-than", "0s"]);
    gc.assert_success();
    assert!(
        gc.stdout.contains("removed 1 graph") && gc.stdout.contains(&format!("graphs: {old}")),
        "{gc}"
    );
    assert_eq!(files_in(&old_dir), 0, "the log and artifact are gone");
    assert!(server.api.graph(old).is_err(), "the graph is gone");
    for g in [kept, job_kept] {
        server.api.graph(g).expect("a kept graph stays");
        let (_, files) = stored_files(&server, g);
        assert_eq!(files.len(), 2, "graph {g} keeps its bytes: {files:?}");
    }

    // Unmarked, it goes on the next pass.
    server
        .lwr(&["keep", "--graph", &kept.to_string(), "--off"])
        .assert_success();
    let gc = server.lwr(&["gc", "--older-than", "0s", "--json"]);
    gc.assert_success();
    assert_eq!(
        gc.json()["graph_ids"],
        serde_json::json!([kept.get()]),
        "{gc}"
    );
}
