//! Old data still loads: `tests/data/schema-1.db` is a SQLite database written by lwr with
//! schema version 1 (a finished, a failed, a blocked and a pending job, a node, runs). Every
//! later lwr must open it (migrating it forward) and read it back as it was. When the schema
//! changes, keep this file and add one made by the new version beside it.
//!
//! The file was made by `LWR_BLESS=1 cargo test -p lwr-store --test stored`; do not
//! regenerate it for a new schema, that would defeat its purpose.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lwr_model::api::{Outcome, RegisterNode, RunResult, SubmitGraph};
use lwr_model::{DurationMs, Graph, GraphId, JobState, Millis, NodeProperties, RunState};
use lwr_store::Store;

mod common;
use common::{Fixture, job};

fn stored() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema-1.db")
}

/// Writes the database the test reads; run once, by the version the file is named after.
async fn make(url: &str) {
    let store = Store::open(url).await.unwrap();
    let sub = SubmitGraph {
        repository: Some("https://example.org/r.git".into()),
        branch: Some("main".into()),
        revision: Some("cafe".into()),
        author: None,
        subject: None,
        graph: Graph {
            jobs: vec![
                job("build", &[]),
                job("test", &["build"]),
                job("lint", &[]),
                job("deploy", &["lint"]),
                job("later", &[]),
            ],
        },
        push: None,
        left_out: Vec::new(),
    };
    let t0 = 1_700_000_000_000;
    store.submit_graph(&sub, Millis(t0)).await.unwrap();
    let node = store
        .register_node(
            &RegisterNode {
                name: "old-node".into(),
                properties: NodeProperties {
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    hostname: "old".into(),
                    cores: 4,
                    memory_mb: 2048,
                    tags: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
                },
                slots: 2,
            },
            Millis(t0),
        )
        .await
        .unwrap();
    // build and lint run; build succeeds, lint fails (blocking deploy); test then runs.
    let first = store
        .claim(node, 2, &[], Millis(t0 + 1), DurationMs(30_000))
        .await
        .unwrap();
    let run = |name: &str| {
        first
            .assignments
            .iter()
            .find(|a| a.job_name == name)
            .unwrap()
            .run_id
    };
    let results = [
        RunResult::succeeded(run("build")),
        RunResult {
            node_bad: None,
            server_fault: false,
            unstarted: false,
            run_id: run("lint"),
            outcome: Outcome::Failed,
            exit_code: Some(3),
            reason: None,
        },
    ];
    store
        .claim(node, 0, &results, Millis(t0 + 2), DurationMs(30_000))
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_database_written_by_schema_1_still_loads() {
    if std::env::var_os("LWR_BLESS").is_some() && !stored().exists() {
        let url = format!("sqlite://{}?mode=rwc", stored().display());
        make(&url).await;
    }
    // Work on a copy: opening migrates it, and the checked-in file must stay as it is.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("lwr.db");
    std::fs::copy(stored(), &copy).unwrap();
    let url = format!("sqlite://{}", copy.display());
    if let Err(panic) = common::run_at(&url, reads_back_as_written).await {
        std::panic::resume_unwind(panic);
    }
}

/// The stored database as `make` wrote it, and its queue going on.
async fn reads_back_as_written(f: Fixture) {
    let store = f.store;
    let graph = store.graph(GraphId(1)).await.unwrap();
    assert_eq!(
        graph.repository.as_deref(),
        Some("https://example.org/r.git")
    );
    assert_eq!(graph.revision.as_deref(), Some("cafe"));
    assert_eq!(graph.created_at, "2023-11-14T22:13:20.000Z");
    let states: BTreeMap<String, (JobState, u32)> = store
        .jobs(Some(GraphId(1)))
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.name, (j.state, j.runs)))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("build".to_string(), (JobState::Succeeded, 1)),
            ("test".to_string(), (JobState::Pending, 0)),
            ("lint".to_string(), (JobState::Failed, 1)),
            ("deploy".to_string(), (JobState::Blocked, 0)),
            ("later".to_string(), (JobState::Pending, 0)),
        ])
    );
    let build = store
        .job(store.job_by_name(GraphId(1), "build").await.unwrap())
        .await
        .unwrap();
    assert_eq!(&build.spec.env["K"], "v");
    assert_eq!(build.run_history.len(), 1);
    assert_eq!(build.run_history[0].state, RunState::Succeeded);
    assert_eq!(build.run_history[0].node, "old-node");
    assert_eq!(build.run_history[0].exit_code, Some(0));
    let deploy = store
        .job(store.job_by_name(GraphId(1), "deploy").await.unwrap())
        .await
        .unwrap();
    assert!(deploy.info.reason.unwrap().contains("lint"));
    let nodes = store.nodes(Millis(1_700_000_000_000)).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].properties.tags["gpu"], "yes");

    // And the old queue goes on: the ready jobs are claimable.
    let node = nodes[0].id;
    let got = store
        .claim(node, 10, &[], lwr_store::now_ms(), DurationMs(30_000))
        .await
        .unwrap();
    let mut names: Vec<String> = got.assignments.into_iter().map(|a| a.job_name).collect();
    names.sort();
    assert_eq!(names, ["later", "test"]);
}
