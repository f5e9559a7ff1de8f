//! Retention as plain store calls: old ended graphs go with their jobs, runs, pushes and
//! artifact rows; graphs or jobs marked keep, live graphs, recent ones and the newest push
//! of a branch stay.

use lwr_model::api::{AddRepo, RunResult, SubmitGraph};
use lwr_model::{DurationMs, Graph, GraphId, JobSpec, Millis, NodeId};
use lwr_store::{NewArtifact, Store};

#[macro_use]
mod common;
use common::{Fixture, job_as_written, node_n1};

const LEASE: DurationMs = DurationMs(30_000);

/// Claims every ready job and ends it succeeded, with an artifact on each run.
async fn run_ready(store: &Store, node: NodeId, now: Millis) -> usize {
    let got = store.claim(node, 100, &[], now, LEASE).await.unwrap();
    let mut results = Vec::new();
    for a in &got.assignments {
        store
            .add_artifact(&NewArtifact {
                run_id: a.run_id,
                name: "out.txt".into(),
                kind: "file".into(),
                path: "out.txt".into(),
                size: 1,
                sha256: "00".into(),
                content_type: "text/plain".into(),
                storage_key: format!("{}/key", a.run_id),
                created_at: now,
                expires_at: Millis(i64::MAX),
            })
            .await
            .unwrap();
        results.push(RunResult::succeeded(a.run_id));
    }
    store
        .report(node, &results, now.plus(DurationMs(1)))
        .await
        .unwrap();
    results.len()
}

async fn submit(store: &Store, jobs: Vec<JobSpec>, now: Millis) -> GraphId {
    store
        .submit_graph(&SubmitGraph::new(Graph { jobs }), now)
        .await
        .unwrap()
}

async fn old_graphs_go_and_marked_ones_stay(f: Fixture) {
    let store = f.store.clone();
    let n = node_n1(&store).await;
    let repo = store
        .add_repo(
            &AddRepo {
                url: "file:///srv/app".into(),
                branches: vec!["main".into()],
                every_secs: Some(10),
            },
            Millis(0),
        )
        .await
        .unwrap();
    let heads = |r: &str| vec![("main".to_string(), r.to_string())];
    let p1 = store
        .record_heads(repo.id, &heads("a1"), Millis(1))
        .await
        .unwrap()[0];
    let p2 = store
        .record_heads(repo.id, &heads("a2"), Millis(2))
        .await
        .unwrap()[0];
    let old = submit(
        &store,
        vec![job_as_written("a", &[]), job_as_written("b", &["a"])],
        Millis(3),
    )
    .await;
    let kept = submit(&store, vec![job_as_written("k", &[])], Millis(3)).await;
    let job_kept = submit(
        &store,
        vec![job_as_written("j1", &[]), job_as_written("j2", &[])],
        Millis(3),
    )
    .await;
    // Ends every job above (the decision jobs too), `b` after `a`.
    assert!(run_ready(&store, n, Millis(10)).await >= 5);
    assert_eq!(run_ready(&store, n, Millis(20)).await, 1);
    let live = submit(&store, vec![job_as_written("l", &[])], Millis(30)).await;
    assert!(store.set_graph_keep(kept, true).await.unwrap());
    let j1 = store.job_by_name(job_kept, "j1").await.unwrap();
    assert!(store.set_job_keep(j1, true).await.unwrap());
    assert!(!store.set_graph_keep(GraphId(999_999), true).await.unwrap());

    // Nothing ended before the first activity.
    assert!(
        store
            .retention_candidates(Millis(0), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let g1 = store.push(p1).await.unwrap().graph_id;
    let g2 = store.push(p2).await.unwrap().graph_id;
    let before = Millis(1000);
    let mut found = store.retention_candidates(before, None, 10).await.unwrap();
    found.sort();
    let mut want = vec![g1, old];
    want.sort();
    assert_eq!(
        found, want,
        "g2 is its branch's newest push, {live} is pending"
    );
    // Paged by id.
    let first = store.retention_candidates(before, None, 1).await.unwrap();
    let rest = store
        .retention_candidates(before, Some(first[0]), 10)
        .await
        .unwrap();
    assert_eq!([first, rest].concat(), want);

    let dry = store.retention_counts(&want).await.unwrap();
    assert_eq!(
        (dry.jobs, dry.runs, dry.pushes, dry.artifacts),
        (3, 3, 1, 3)
    );
    let removed = store.remove_graphs(&want, before).await.unwrap();
    assert_eq!(removed.graphs, want);
    assert_eq!(
        (
            removed.jobs,
            removed.runs,
            removed.pushes,
            removed.artifacts
        ),
        (3, 3, 1, 3)
    );
    assert_eq!(removed.artifact_keys.len(), 3);
    assert_eq!(removed.run_ids.len(), 3);
    assert!(store.graph(old).await.is_err());
    assert!(store.graph(g1).await.is_err());
    assert!(store.push(p1).await.is_err());
    for g in [g2, kept, job_kept, live] {
        store.graph(g).await.unwrap();
    }
    store.push(p2).await.unwrap();
    // Removing again removes nothing; a graph unmarked goes on the next pass.
    assert_eq!(
        store.remove_graphs(&want, before).await.unwrap().graphs,
        vec![]
    );
    assert!(store.set_graph_keep(kept, false).await.unwrap());
    assert_eq!(
        store.retention_candidates(before, None, 10).await.unwrap(),
        vec![kept]
    );
    assert_eq!(
        store
            .remove_graphs(&[kept, live, job_kept], before)
            .await
            .unwrap()
            .graphs,
        vec![kept],
        "only what is still eligible under the write goes"
    );

    // A graph larger than one transaction's share goes whole, over several.
    let names: Vec<String> = (0..2500).map(|i| format!("j{i}")).collect();
    let big = submit(
        &store,
        names.iter().map(|n| job_as_written(n, &[])).collect(),
        Millis(40),
    )
    .await;
    store.cancel_graph(big, Millis(41)).await.unwrap();
    assert_eq!(
        store.retention_candidates(before, None, 10).await.unwrap(),
        vec![big]
    );
    let removed = store.remove_graphs(&[big], before).await.unwrap();
    assert_eq!((removed.graphs, removed.jobs), (vec![big], 2500));
    assert!(store.graph(big).await.is_err());
    assert!(store.jobs(Some(big)).await.unwrap_or_default().is_empty());

    // A graph left staging (its submitter died, or a removal stopped half-way) goes once
    // it is old, whatever its jobs' states.
    let left = submit(
        &store,
        vec![job_as_written("s1", &[]), job_as_written("s2", &["s1"])],
        Millis(50),
    )
    .await;
    let sqlite = store.dialect() == lwr_store::Dialect::Sqlite;
    let raw = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 10000;").await?;
                }
                Ok(())
            })
        })
        .connect(&f.url)
        .await
        .unwrap();
    sqlx::query("UPDATE graphs SET staging = 1 WHERE id = $1")
        .bind(left.get())
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    assert_eq!(
        store.retention_candidates(before, None, 10).await.unwrap(),
        vec![left]
    );
    let removed = store.remove_graphs(&[left], before).await.unwrap();
    assert_eq!((removed.graphs, removed.jobs), (vec![left], 2));
}

on_both_backends!(old_graphs_go_and_marked_ones_stay);
