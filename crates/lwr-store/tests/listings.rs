//! Listings for finding things: jobs filtered by graph, state, name and count, with their
//! latest run's times; graphs with their counts and times.

use std::collections::BTreeMap;

use lwr_model::api::{Outcome, RegisterNode, RunResult, SubmitGraph};
use lwr_model::{DurationMs, Graph, JobSpec, JobState, Millis, NodeProperties, Requirements};
use lwr_store::{GraphFilter, JobQuery, StoreError};

#[macro_use]
mod common;
use common::Fixture;

fn job(name: &str, needs: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        title: None,
        run: format!("echo {name}"),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        node: Requirements::default(),
        artifacts: vec![],
        retries: 0,
        timeout_secs: 60,
        expires_secs: None,
        env: BTreeMap::new(),
        requires: Default::default(),
        when: None,
        prefer: Vec::new(),
        affinity_wait_secs: None,
        keep_workdir: false,
        timestamps: false,
        checkout: Default::default(),
        buildbot: None,
    }
}

fn names(jobs: &[lwr_model::api::JobInfo]) -> Vec<&str> {
    jobs.iter().map(|j| j.name.as_str()).collect()
}

async fn jobs_and_graphs_are_found_by_what_a_user_knows(f: Fixture) {
    let s = &f.store;
    let mut plan9 = job("never", &[]);
    plan9.node.os = Some("plan9".into());
    let g1 = s
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![
                    job("build-a", &[]),
                    job("build-b", &["build-a"]),
                    job("lint", &[]),
                ],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    let g2 = s
        .submit_graph(&SubmitGraph::new(Graph { jobs: vec![plan9] }), Millis(1))
        .await
        .unwrap();
    let properties = NodeProperties {
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: "n1".into(),
        cores: 2,
        memory_mb: 1024,
        tags: BTreeMap::new(),
    };
    let node = s
        .register_node(
            &RegisterNode {
                name: "n1".into(),
                properties,
                slots: 4,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let now = lwr_store::now_ms();
    let claimed = s
        .claim(node, 10, &[], now, DurationMs(30_000))
        .await
        .unwrap()
        .assignments;
    let mut names_claimed: Vec<&str> = claimed.iter().map(|a| a.job_name.as_str()).collect();
    names_claimed.sort();
    assert_eq!(names_claimed, ["build-a", "lint"]);
    let results: Vec<RunResult> = claimed
        .iter()
        .map(|a| RunResult {
            node_bad: None,
            server_fault: false,
            run_id: a.run_id,
            outcome: match a.job_name.as_str() {
                "lint" => Outcome::Failed,
                _ => Outcome::Succeeded,
            },
            exit_code: Some(i32::from(a.job_name == "lint")),
            reason: None,
        })
        .collect();
    s.report(node, &results, now.plus(DurationMs(500)))
        .await
        .unwrap();

    let q = |q: JobQuery| async move { s.jobs_matching(&q).await.unwrap() };
    let failed = q(JobQuery {
        states: vec![JobState::Failed],
        ..JobQuery::default()
    })
    .await;
    assert_eq!(names(&failed), ["lint"]);
    assert_eq!(
        failed[0].started_at.as_deref(),
        Some(lwr_store::rfc3339(now).as_str())
    );
    assert_eq!(
        failed[0].finished_at.as_deref(),
        Some(lwr_store::rfc3339(now.plus(DurationMs(500))).as_str())
    );
    let builds = q(JobQuery {
        graph: Some(g1),
        name: Some("build-*".into()),
        ..JobQuery::default()
    })
    .await;
    assert_eq!(names(&builds), ["build-a", "build-b"]);
    assert_eq!(builds[1].started_at, None, "build-b has not run");
    let newest = q(JobQuery {
        limit: Some(2),
        ..JobQuery::default()
    })
    .await;
    assert_eq!(
        names(&newest),
        ["lint", "never"],
        "the newest two, oldest first"
    );
    let newest_build = q(JobQuery {
        name: Some("build-*".into()),
        limit: Some(1),
        ..JobQuery::default()
    })
    .await;
    assert_eq!(names(&newest_build), ["build-b"]);
    let either = q(JobQuery {
        states: vec![JobState::Succeeded, JobState::Pending],
        graph: Some(g1),
        ..JobQuery::default()
    })
    .await;
    assert_eq!(names(&either), ["build-a", "build-b"]);
    let stuck = q(JobQuery {
        graph: Some(g2),
        ..JobQuery::default()
    })
    .await;
    let why = stuck[0].cannot_start.as_deref().unwrap_or_default();
    assert!(why.contains("os=plan9"), "{stuck:?}");
    assert_eq!(
        q(JobQuery {
            graph: Some(g1),
            states: vec![JobState::Cancelled],
            ..JobQuery::default()
        })
        .await
        .len(),
        0
    );
    let bad = s
        .jobs_matching(&JobQuery {
            name: Some("{a".into()),
            ..JobQuery::default()
        })
        .await;
    assert!(
        matches!(bad, Err(StoreError::Invalid { field: "name", .. })),
        "{bad:?}"
    );

    let graphs = s
        .graph_infos(&GraphFilter {
            limit: 10,
            ..GraphFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = graphs.iter().map(|g| g.id).collect();
    assert_eq!(ids, [g2, g1], "newest first");
    let one = &graphs[1];
    assert_eq!(
        (one.counts.succeeded, one.counts.failed, one.counts.pending),
        (1, 1, 1)
    );
    assert!(!one.finished);
    assert_eq!(one.started_at, Some(lwr_store::rfc3339(now)));
    assert_eq!(one.finished_at, None, "not finished");
    assert_eq!(graphs[0].started_at, None, "nothing of it ran");
    let alone = s.graph(g1).await.unwrap();
    assert_eq!(alone.counts, one.counts);
    assert_eq!(alone.started_at, one.started_at);
}

/// A graph larger than one transaction's share is staged in several and comes out whole:
/// every job and edge (needs listed after the jobs needing them), counts, ready jobs, and
/// pages of `jobs_page` that hold each job once.
async fn a_staged_graph_comes_out_whole_and_pages_cover_it(f: Fixture) {
    let s = &f.store;
    const N: usize = 5_000;
    // Job i needs job i+1 (declared after it), so insertion must reorder; the last is a root.
    let jobs: Vec<JobSpec> = (0..N)
        .map(|i| {
            let next = format!("j{:05}", i + 1);
            let needs: Vec<&str> = if i + 1 < N {
                vec![next.as_str()]
            } else {
                vec![]
            };
            job(&format!("j{i:05}"), &needs)
        })
        .collect();
    let g = s
        .submit_graph(&SubmitGraph::new(Graph { jobs }), Millis(0))
        .await
        .unwrap();
    let info = s.graph(g).await.unwrap();
    assert_eq!(info.counts.total(), N as u64);
    let mut seen = Vec::new();
    let mut after = Some(lwr_model::JobId(0));
    while let Some(cursor) = after {
        let (page, next) = s
            .jobs_page(&JobQuery {
                limit: Some(999),
                after: Some(cursor),
                ..JobQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.iter().map(|j| j.id));
        after = next;
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), N, "every job once");
    let waiting = s
        .jobs_matching(&JobQuery {
            graph: Some(g),
            ..JobQuery::default()
        })
        .await
        .unwrap();
    let ready: Vec<&str> = waiting
        .iter()
        .filter(|j| j.reason.as_deref() == Some("ready, waiting for a node"))
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(ready, [format!("j{:05}", N - 1)]);
}

on_both_backends!(
    jobs_and_graphs_are_found_by_what_a_user_knows,
    a_staged_graph_comes_out_whole_and_pages_cover_it
);
