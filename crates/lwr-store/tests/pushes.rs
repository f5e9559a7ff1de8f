//! Pushes and `requires: all-finished` as plain store calls: one push per head across
//! restarts, decision jobs, push graphs with jobs left out, trigger, and readiness of jobs
//! that wait for their needs to finish whatever the result.

use std::collections::BTreeMap;

use lwr_model::api::{AddRepo, EditRepo, Outcome, RunResult, SubmitGraph};
use lwr_model::graph::LeftOut;
use lwr_model::{DurationMs, Graph, GraphId, JobSpec, JobState, Millis, NodeId, PushId, Requires};
use lwr_store::{Store, StoreError};

#[macro_use]
mod common;
use common::{Fixture, job_as_written, node_n1};

const LEASE: DurationMs = DurationMs(30_000);

fn all_finished(name: &str, needs: &[&str]) -> JobSpec {
    let mut j = job_as_written(name, needs);
    j.requires = Requires::AllFinished;
    j
}

fn heads(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(b, r)| (b.to_string(), r.to_string()))
        .collect()
}

async fn states(store: &Store, graph: GraphId) -> BTreeMap<String, JobState> {
    store
        .jobs(Some(graph))
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.name, j.state))
        .collect()
}

/// Claims every ready job and ends each with the outcome `outcomes` gives its name
/// (success when not listed); returns the names claimed, in order.
async fn run_ready(
    store: &Store,
    node: NodeId,
    outcomes: &[(&str, Outcome)],
    now: Millis,
) -> Vec<String> {
    let got = store.claim(node, 100, &[], now, LEASE).await.unwrap();
    let mut names = Vec::new();
    let mut results = Vec::new();
    for a in &got.assignments {
        let outcome = outcomes
            .iter()
            .find(|(n, _)| *n == a.job_name)
            .map(|(_, o)| *o)
            .unwrap_or(Outcome::Succeeded);
        names.push(a.job_name.clone());
        results.push(RunResult {
            node_bad: None,
            server_fault: false,
            unstarted: false,
            run_id: a.run_id,
            outcome,
            exit_code: (outcome != Outcome::Exception)
                .then_some(i32::from(outcome != Outcome::Succeeded)),
            reason: None,
        });
    }
    store
        .report(node, &results, now.plus(DurationMs(1)))
        .await
        .unwrap();
    names.sort();
    names
}

async fn one_push_per_head_across_polls_and_restarts(f: Fixture) {
    let store = f.store.clone();
    let add = AddRepo {
        url: "file:///srv/app".into(),
        branches: vec!["main".into(), "release/*".into()],
        every_secs: Some(10),
    };
    let repo = store.add_repo(&add, Millis(0)).await.unwrap();
    assert_eq!((repo.state.as_str(), repo.every_secs), ("new", 10));
    assert!(matches!(
        store.add_repo(&add, Millis(0)).await,
        Err(StoreError::Conflict(_))
    ));

    let first = store
        .record_heads(repo.id, &heads(&[("main", "a1")]), Millis(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        store
            .record_heads(repo.id, &heads(&[("main", "a1")]), Millis(2))
            .await
            .unwrap()
            .is_empty(),
        "the same head again makes no push"
    );
    // A restart: a new store on the same database knows the head already.
    store.close().await;
    let store = Store::open(&f.url).await.unwrap();
    assert!(
        store
            .record_heads(repo.id, &heads(&[("main", "a1")]), Millis(3))
            .await
            .unwrap()
            .is_empty()
    );
    let next = store
        .record_heads(
            repo.id,
            &heads(&[("main", "a2"), ("release/1", "r1")]),
            Millis(4),
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 2);
    let p2 = store.push(next[0]).await.unwrap();
    assert_eq!(
        (p2.branch.as_str(), p2.previous, p2.base.as_deref()),
        ("main", Some(first[0]), Some("a1"))
    );
    let p3 = store.push(next[1]).await.unwrap();
    assert_eq!((p3.previous, p3.base), (None, None), "first on its branch");
    assert_eq!(store.pushes(Some(repo.id), 10).await.unwrap().len(), 3);

    // Each push's graph holds its decision job, ready to run; its node learns the push.
    let decision = store.job_by_name(p2.graph_id, "decision").await.unwrap();
    let detail = store.job(decision).await.unwrap();
    assert_eq!(detail.info.state, JobState::Pending);
    assert!(!p2.decided);
    let n = node_n1(&store).await;
    let claimed = store
        .claim(n, 10, &[], Millis(4), LEASE)
        .await
        .unwrap()
        .assignments;
    let source = claimed
        .iter()
        .find(|a| a.job_id == decision)
        .and_then(|a| a.source.clone())
        .expect("the decision job of p2, with its source");
    let env: std::collections::BTreeMap<_, _> = source.env().into_iter().collect();
    assert_eq!(env["LWR_PUSH_ID"], p2.id.to_string());
    assert_eq!(env["LWR_BASE_REVISION"], "a1");
    assert_eq!(env["LWR_REVISION"], "a2");
    assert_eq!(env["LWR_BRANCH"], "main");
    assert!(source.checkout.enabled, "it reads the commit's lwr.yml");

    // A failing poll shows, and a good one clears it.
    store
        .record_poll_failure(repo.id, 2, "git ls-remote failed", Millis(99_000))
        .await
        .unwrap();
    let failing = store.repo(repo.id).await.unwrap();
    assert_eq!(
        (
            failing.state.as_str(),
            failing.failures,
            failing.error.as_deref()
        ),
        ("failing", 2, Some("git ls-remote failed"))
    );
    assert!(failing.retry_at.is_some());
    store
        .record_heads(repo.id, &heads(&[("main", "a2")]), Millis(5))
        .await
        .unwrap();
    let ok = store.repo(repo.id).await.unwrap();
    assert_eq!((ok.state.as_str(), ok.failures, ok.error), ("ok", 0, None));

    // Removing the repository keeps its pushes.
    store.remove_repo(repo.id).await.unwrap();
    assert!(store.repos().await.unwrap().is_empty());
    assert_eq!(store.pushes(None, 10).await.unwrap().len(), 3);
}

async fn all_finished_jobs_run_whatever_their_needs_did(f: Fixture) {
    let store = f.store.clone();
    let n = node_n1(&store).await;
    // a fails: b and c (ordinary dependents) are blocked; summary (all-finished, needing a,
    // b and ok) runs once ok ends too; after (ordinary, needing summary) runs after it:
    // blocking does not go through an all-finished job.
    let g = store
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![
                    job_as_written("a", &[]),
                    job_as_written("ok", &[]),
                    job_as_written("b", &["a"]),
                    job_as_written("c", &["b"]),
                    all_finished("summary", &["a", "b", "ok"]),
                    job_as_written("after", &["summary"]),
                ],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    assert_eq!(
        run_ready(&store, n, &[("a", Outcome::Failed)], Millis(10)).await,
        ["a", "ok"]
    );
    let s = states(&store, g).await;
    assert_eq!(s["b"], JobState::Blocked);
    assert_eq!(s["c"], JobState::Blocked);
    assert_eq!(s["summary"], JobState::Pending);
    assert_eq!(run_ready(&store, n, &[], Millis(20)).await, ["summary"]);
    assert_eq!(run_ready(&store, n, &[], Millis(30)).await, ["after"]);
    let s = states(&store, g).await;
    assert_eq!(s["summary"], JobState::Succeeded);
    assert_eq!(s["after"], JobState::Succeeded);
}

async fn all_finished_waits_for_every_need_and_counts_cancelled_and_exception(f: Fixture) {
    let store = f.store.clone();
    // Three exceptions in a row on the one node would quarantine it.
    store.set_pool_config(lwr_store::PoolConfig {
        quarantine_after: 0,
        ..Default::default()
    });
    let n = node_n1(&store).await;
    let g = store
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![
                    job_as_written("a", &[]),
                    job_as_written("slow", &[]),
                    job_as_written("x", &["slow"]),
                    all_finished("report", &["a", "x"]),
                ],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    // a ends in an exception: three runs (the default 2 retries), each lost. Claims take one
    // job, the lowest id first, so slow is never claimed.
    for t in 0..3 {
        let got = store.claim(n, 1, &[], Millis(10 + t), LEASE).await.unwrap();
        let a = got.assignments.iter().find(|a| a.job_name == "a");
        let Some(a) = a else {
            panic!(
                "a should be claimable on attempt {t}: {:?}",
                got.assignments
            )
        };
        store
            .report(
                n,
                &[RunResult {
                    node_bad: None,
                    server_fault: false,
                    unstarted: false,
                    run_id: a.run_id,
                    outcome: Outcome::Exception,
                    exit_code: None,
                    reason: Some("node lost".into()),
                }],
                Millis(11 + t),
            )
            .await
            .unwrap();
    }
    let s = states(&store, g).await;
    assert_eq!(s["a"], JobState::Exception);
    assert_eq!(s["report"], JobState::Pending, "x has not finished");
    // Cancelling slow blocks x; both count as finished for report.
    let slow = store.job_by_name(g, "slow").await.unwrap();
    let c = store.cancel_job(slow, Millis(50)).await.unwrap();
    assert!(c.effects.ready, "report became ready");
    let s = states(&store, g).await;
    assert_eq!(s["x"], JobState::Blocked);
    assert_eq!(run_ready(&store, n, &[], Millis(60)).await, ["report"]);

    // Retriggering an all-finished job needs its needs ended, not succeeded.
    let report = store.job_by_name(g, "report").await.unwrap();
    assert_eq!(
        store.retrigger(report, false, Millis(70)).await.unwrap(),
        [report]
    );
    assert_eq!(run_ready(&store, n, &[], Millis(80)).await, ["report"]);
}

fn push_graph(push: PushId, left_out: &[&str]) -> SubmitGraph {
    let mut sub = SubmitGraph::new(Graph {
        jobs: vec![
            job_as_written("build", &[]),
            job_as_written("docs", &[]),
            job_as_written("publish", &["docs", "build"]),
        ],
    });
    sub.push = Some(push);
    sub.left_out = left_out
        .iter()
        .map(|n| LeftOut {
            name: n.to_string(),
            reason: "when".into(),
        })
        .collect();
    sub
}

async fn push_graphs_keep_left_out_jobs_for_trigger(f: Fixture) {
    let store = f.store.clone();
    let n = node_n1(&store).await;
    let repo = store
        .add_repo(
            &AddRepo {
                url: "/srv/app".into(),
                branches: vec![],
                every_secs: None,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let push = store
        .record_heads(repo.id, &heads(&[("main", "c1")]), Millis(1))
        .await
        .unwrap()[0];
    assert!(matches!(
        store.trigger(push, "docs", Millis(2)).await,
        Err(StoreError::Conflict(_))
    ));
    // A job that runs needs what it needs.
    assert!(matches!(
        store
            .submit_graph(&push_graph(push, &["docs"]), Millis(3))
            .await,
        Err(StoreError::Invalid { .. })
    ));
    // The decision job's name is taken.
    let mut taken = push_graph(push, &[]);
    taken.graph.jobs.push(job_as_written("decision", &[]));
    assert!(matches!(
        store.submit_graph(&taken, Millis(3)).await,
        Err(StoreError::InvalidGraph(_))
    ));

    let sub = push_graph(push, &["docs", "publish"]);
    let g = store.submit_graph(&sub, Millis(4)).await.unwrap();
    assert_eq!(g, store.push(push).await.unwrap().graph_id);
    assert_eq!(
        store.submit_graph(&sub, Millis(5)).await.unwrap(),
        g,
        "the same graph again (a retried decision job) changes nothing"
    );
    assert!(matches!(
        store
            .submit_graph(&push_graph(push, &["publish"]), Millis(5))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        states(&store, g).await.keys().collect::<Vec<_>>(),
        ["build", "decision"]
    );
    let spec = store.graph_spec(g).await.unwrap();
    assert_eq!((spec.push, spec.graph.jobs.len()), (Some(push), 3));
    assert_eq!(spec.left_out.len(), 2);
    assert!(store.push(push).await.unwrap().decided);

    // Trigger publish: docs, its missing need, comes along; build is there already.
    let added = store.trigger(push, "publish", Millis(6)).await.unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(
        store.job(added[0]).await.unwrap().info.name,
        "publish",
        "the triggered job first"
    );
    assert!(matches!(
        store.trigger(push, "publish", Millis(7)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.trigger(push, "nope", Millis(7)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        run_ready(&store, n, &[], Millis(10)).await,
        ["build", "decision", "docs"]
    );
    assert_eq!(run_ready(&store, n, &[], Millis(20)).await, ["publish"]);
}

async fn trigger_refuses_a_job_whose_need_failed(f: Fixture) {
    let store = f.store.clone();
    let n = node_n1(&store).await;
    let repo = store
        .add_repo(
            &AddRepo {
                url: "/srv/app".into(),
                branches: vec![],
                every_secs: None,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let push = store
        .record_heads(repo.id, &heads(&[("main", "c1")]), Millis(1))
        .await
        .unwrap()[0];
    store
        .submit_graph(&push_graph(push, &["publish"]), Millis(2))
        .await
        .unwrap();
    run_ready(&store, n, &[("build", Outcome::Failed)], Millis(10)).await;
    match store.trigger(push, "publish", Millis(20)).await {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("build"), "{msg}"),
        other => panic!("expected a conflict naming build, got {other:?}"),
    }
}

async fn a_retriggered_need_is_waited_for_again(f: Fixture) {
    let store = f.store.clone();
    // Three exceptions in a row on the one node would quarantine it.
    store.set_pool_config(lwr_store::PoolConfig {
        quarantine_after: 0,
        ..Default::default()
    });
    let n = node_n1(&store).await;
    let g = store
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![
                    job_as_written("a", &[]),
                    job_as_written("slow", &[]),
                    job_as_written("both", &["a", "slow"]),
                    all_finished("report", &["a", "slow"]),
                ],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    // a succeeds; slow is taken by a node and keeps running.
    let got = store
        .claim(n, 2, &[], Millis(10), LEASE)
        .await
        .unwrap()
        .assignments;
    let a = got.iter().find(|x| x.job_name == "a").unwrap();
    let slow = got.iter().find(|x| x.job_name == "slow").unwrap().run_id;
    store
        .report(n, &[RunResult::succeeded(a.run_id)], Millis(11))
        .await
        .unwrap();
    // a runs again and succeeds again: both and report still wait for slow.
    store.retrigger(a.job_id, false, Millis(20)).await.unwrap();
    assert_eq!(run_ready(&store, n, &[], Millis(30)).await, ["a"]);
    let s = states(&store, g).await;
    assert_eq!(
        (s["both"], s["report"]),
        (JobState::Pending, JobState::Pending)
    );
    store
        .report(n, &[RunResult::succeeded(slow)], Millis(40))
        .await
        .unwrap();
    assert_eq!(
        run_ready(&store, n, &[], Millis(50)).await,
        ["both", "report"]
    );
}

async fn a_dependent_run_again_with_a_failed_need_is_blocked_not_stuck(f: Fixture) {
    let store = f.store.clone();
    let n = node_n1(&store).await;
    let g = store
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![
                    job_as_written("a", &[]),
                    job_as_written("bad", &[]),
                    job_as_written("both", &["a", "bad"]),
                    job_as_written("after", &["both"]),
                    all_finished("report", &["both"]),
                ],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    assert_eq!(
        run_ready(&store, n, &[("bad", Outcome::Failed)], Millis(10)).await,
        ["a", "bad"]
    );
    assert_eq!(run_ready(&store, n, &[], Millis(20)).await, ["report"]);
    // a runs again with its dependents; both still needs bad, which failed, so both and
    // after are blocked at once, and report (all-finished) may run again straight away.
    let a = store.job_by_name(g, "a").await.unwrap();
    store.retrigger(a, true, Millis(30)).await.unwrap();
    assert_eq!(run_ready(&store, n, &[], Millis(40)).await, ["a", "report"]);
    assert!(run_ready(&store, n, &[], Millis(50)).await.is_empty());
    let s = states(&store, g).await;
    assert_eq!(
        (s["both"], s["after"], s["report"]),
        (JobState::Blocked, JobState::Blocked, JobState::Succeeded)
    );
    let info = store.graph(g).await.unwrap();
    assert!(info.finished, "{:?}", info.counts);
}

/// `lwr repos edit`: branches and interval change, an absent field stays, bad values and
/// unknown repositories are refused.
async fn a_repository_is_edited_field_by_field(f: Fixture) {
    let store = f.store.clone();
    let add = AddRepo {
        url: "/srv/app".into(),
        branches: vec!["main".into()],
        every_secs: Some(30),
    };
    let repo = store.add_repo(&add, Millis(0)).await.unwrap();
    let every = EditRepo {
        every_secs: Some(300),
        ..EditRepo::default()
    };
    let edited = store.edit_repo(repo.id, &every).await.unwrap();
    assert_eq!(
        (edited.every_secs, edited.branches.clone()),
        (300, vec!["main".to_string()])
    );
    let branches = EditRepo {
        branches: Some(vec!["release/*".into()]),
        ..EditRepo::default()
    };
    let edited = store.edit_repo(repo.id, &branches).await.unwrap();
    assert_eq!(
        (edited.every_secs, edited.branches),
        (300, vec!["release/*".to_string()])
    );
    let targets = store.poll_targets().await.unwrap();
    assert_eq!(targets[0].every_ms, DurationMs(300_000));
    for bad in [
        EditRepo {
            every_secs: Some(0),
            ..EditRepo::default()
        },
        EditRepo {
            branches: Some(vec!["refs/heads/main".into()]),
            ..EditRepo::default()
        },
    ] {
        assert!(
            matches!(
                store.edit_repo(repo.id, &bad).await,
                Err(StoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.edit_repo(repo.id + 1, &every).await,
        Err(StoreError::NotFound { .. })
    ));
}

on_both_backends!(
    a_repository_is_edited_field_by_field,
    one_push_per_head_across_polls_and_restarts,
    all_finished_jobs_run_whatever_their_needs_did,
    all_finished_waits_for_every_need_and_counts_cancelled_and_exception,
    push_graphs_keep_left_out_jobs_for_trigger,
    trigger_refuses_a_job_whose_need_failed,
    a_retriggered_need_is_waited_for_again,
    a_dependent_run_again_with_a_failed_need_is_blocked_not_stuck,
);
