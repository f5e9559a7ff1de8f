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
        env: Default::default(),
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
            unstarted: false,
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

/// A graph's counts, first start and last end are kept with it (`graph_counts`) and follow
/// every way a job changes state: claims, results, a retry, a retrigger, a cancel. The
/// first start is the earliest start of any run of the graph (a retried job's first run),
/// the last end the latest finish of any run, shown once nothing is pending or running.
async fn kept_counts_follow_retries_retriggers_and_cancels(f: Fixture) {
    let s = &f.store;
    let mut flaky = job("flaky", &[]);
    flaky.retries = 1;
    let g = s
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![flaky, job("after", &["flaky"]), job("solo", &[])],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    let node = common::node_n1(s).await;
    let lease = DurationMs(30_000);
    let claim = |at: i64| async move {
        s.claim(node, 1, &[], Millis(at), lease)
            .await
            .unwrap()
            .assignments
    };
    let report = |run, outcome, at: i64| async move {
        let result = RunResult {
            node_bad: None,
            server_fault: false,
            unstarted: false,
            run_id: run,
            outcome,
            exit_code: (outcome != Outcome::Exception)
                .then_some(i32::from(outcome == Outcome::Failed)),
            reason: None,
        };
        s.report(node, &[result], Millis(at)).await.unwrap();
    };
    let listed = || async move {
        let all = s
            .graph_infos(&GraphFilter {
                limit: 10,
                ..GraphFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        let one = s.graph(g).await.unwrap();
        let listed = &all[0];
        assert_eq!(
            (
                &listed.counts,
                listed.finished,
                &listed.started_at,
                &listed.finished_at
            ),
            (&one.counts, one.finished, &one.started_at, &one.finished_at),
            "the listing and the graph agree"
        );
        one
    };
    let with_state = |state| async move {
        s.graph_infos(&GraphFilter {
            state: Some(state),
            limit: 10,
            ..GraphFilter::default()
        })
        .await
        .unwrap()
        .len()
    };
    let at = |ms: i64| Some(lwr_store::rfc3339(Millis(ms)));

    let info = listed().await;
    assert_eq!((info.counts.pending, info.counts.total()), (3, 3));
    assert_eq!((info.started_at.clone(), info.finished), (None, false));
    assert_eq!(with_state(JobState::Running).await, 0);

    // flaky runs from 100 and ends in an infrastructure error: back to pending for its retry.
    let first = claim(100).await;
    assert_eq!(first[0].job_name, "flaky");
    assert_eq!(listed().await.counts.running, 1);
    assert_eq!(with_state(JobState::Running).await, 1);
    report(first[0].run_id, Outcome::Exception, 200).await;
    let retry = claim(250).await;
    assert_eq!(retry[0].job_name, "flaky", "its retry comes first");
    let solo = claim(260).await;
    assert_eq!(solo[0].job_name, "solo");
    report(solo[0].run_id, Outcome::Succeeded, 270).await;
    report(retry[0].run_id, Outcome::Succeeded, 300).await;
    let after = claim(400).await;
    assert_eq!(after[0].job_name, "after");
    report(after[0].run_id, Outcome::Failed, 500).await;
    let info = listed().await;
    assert_eq!(
        (info.counts.succeeded, info.counts.failed, info.finished),
        (2, 1, true)
    );
    assert_eq!(info.started_at, at(100), "the retried job's first run");
    assert_eq!(info.finished_at, at(500));
    assert_eq!(with_state(JobState::Failed).await, 1);
    assert_eq!(with_state(JobState::Pending).await, 0);

    // A retrigger puts it back: pending, not finished, no end shown.
    let again = s.job_by_name(g, "after").await.unwrap();
    s.retrigger(again, false, Millis(600)).await.unwrap();
    let info = listed().await;
    assert_eq!(
        (info.counts.pending, info.counts.failed, info.finished),
        (1, 0, false)
    );
    assert_eq!(info.finished_at, None);
    assert_eq!(with_state(JobState::Pending).await, 1);

    // Cancelled: finished again, and the end is still the last run's.
    s.cancel_graph(g, Millis(700)).await.unwrap();
    let info = listed().await;
    assert_eq!(
        (
            info.counts.pending,
            info.counts.cancelled,
            info.counts.total()
        ),
        (0, 1, 3)
    );
    assert_eq!((info.finished, info.finished_at), (true, at(500)));
    assert_eq!(with_state(JobState::Cancelled).await, 1);
}

/// `POST /v1/graphs` answers with [`lwr_store::submitted_graph`] instead of reading the
/// graph back: both must say the same. A graph of a pushed revision records the branch's
/// previous revision as its base, found by the insert itself.
async fn a_submitted_graph_is_answered_as_read_back_with_its_base(f: Fixture) {
    let s = &f.store;
    let pushed = |revision: &str, at: i64| {
        let mut sub = SubmitGraph::new(Graph {
            jobs: vec![job("build", &[]), job("test", &["build"])],
        });
        sub.repository = Some("https://example.com/r.git".into());
        sub.branch = Some("main".into());
        sub.revision = Some(revision.into());
        sub.author = Some("A U Thor <a@example.com>".into());
        sub.subject = Some("the change".into());
        (sub, Millis(at))
    };
    let plain = SubmitGraph::new(Graph {
        jobs: vec![job("lint", &[])],
    });
    let (first, t1) = pushed(&"1".repeat(40), 1_700_000_000_123);
    let (second, t2) = pushed(&"2".repeat(40), 1_700_000_000_456);
    for (sub, at) in [(&first, t1), (&plain, Millis(5)), (&second, t2)] {
        let id = s.submit_graph(sub, at).await.unwrap();
        let answered = lwr_store::submitted_graph(id, sub, at).expect("not a push's graph");
        let read = s.graph(id).await.unwrap();
        assert_eq!(
            serde_json::to_value(&answered).unwrap(),
            serde_json::to_value(&read).unwrap(),
            "graph {id}"
        );
    }
    // Each claimed job names its graph's base: none for the first push of the branch,
    // the first push's revision for the second.
    let node = common::node_n1(s).await;
    let claimed = s
        .claim(node, 10, &[], lwr_store::now_ms(), DurationMs(30_000))
        .await
        .unwrap()
        .assignments;
    let mut bases: Vec<(Option<String>, Option<String>)> = claimed
        .iter()
        .filter_map(|a| a.source.as_ref())
        .map(|src| (src.revision.clone(), src.base_revision.clone()))
        .collect();
    bases.sort();
    assert_eq!(
        bases,
        vec![
            (Some("1".repeat(40)), None),
            (Some("2".repeat(40)), Some("1".repeat(40))),
        ]
    );
}

/// A small graph's transaction commits with its last insert on SQLite (the jobs', or the
/// edges' when a job needs another): once the submission returns, a store that did not
/// make it sees every job and edge, and the writer's next transaction is a new one.
async fn a_small_graph_is_committed_when_its_submission_returns(f: Fixture) {
    let graphs = [
        vec![job("alone", &[])],
        vec![job("a", &[]), job("b", &[])],
        vec![job("build", &[]), job("test", &["build"]), job("lint", &[])],
    ];
    let mut ids = Vec::new();
    for jobs in graphs {
        let sub = SubmitGraph::new(Graph { jobs });
        ids.push(f.store.submit_graph(&sub, Millis(1)).await.unwrap());
    }
    let other = lwr_store::Store::open(&f.url).await.unwrap();
    let mut pending = Vec::new();
    for id in &ids {
        let info = other.graph(*id).await.unwrap();
        pending.push(info.counts.pending);
    }
    assert_eq!(pending, [1, 2, 3]);
    // `test` waits for `build`: its edge was committed with the rest.
    let node = common::node_n1(&f.store).await;
    let claimed = f
        .store
        .claim(node, 10, &[], Millis(2), DurationMs(30_000))
        .await
        .unwrap();
    let mut names: Vec<&str> = claimed
        .assignments
        .iter()
        .map(|a| a.job_name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "alone", "b", "build", "lint"]);
    other.close().await;
}

on_both_backends!(
    a_small_graph_is_committed_when_its_submission_returns,
    jobs_and_graphs_are_found_by_what_a_user_knows,
    a_submitted_graph_is_answered_as_read_back_with_its_base,
    a_staged_graph_comes_out_whole_and_pages_cover_it,
    kept_counts_follow_retries_retriggers_and_cancels
);
