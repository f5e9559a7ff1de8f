//! The queue's state changes as plain store calls: no server, no sockets, time passed in.

use std::collections::BTreeMap;

use lwr_model::api::{Outcome, RegisterNode, RunResult, SubmitGraph};
use lwr_model::{Graph, JobSpec, JobState, NodeProperties, Requirements, RunState};
use lwr_store::{Store, StoreError};

const LEASE: i64 = 30_000;

struct Fixture {
    store: Store,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
    Fixture {
        store: Store::open(&url).await.unwrap(),
        _dir: dir,
    }
}

fn job(name: &str, needs: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        run: format!("echo {name}"),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        node: Requirements::default(),
        artifacts: vec![],
        retries: 2,
        timeout_secs: 60,
        env: BTreeMap::new(),
        requires: Default::default(),
        when: None,
    }
}

fn graph(jobs: Vec<JobSpec>) -> SubmitGraph {
    SubmitGraph::new(Graph { jobs })
}

async fn node(store: &Store, name: &str, tags: &[(&str, &str)]) -> i64 {
    let properties = NodeProperties {
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: name.into(),
        cores: 2,
        memory_mb: 1024,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    store
        .register_node(
            &RegisterNode {
                name: name.into(),
                properties,
                slots: 4,
            },
            0,
        )
        .await
        .unwrap()
}

fn result(run_id: i64, outcome: Outcome) -> RunResult {
    let exit_code = match outcome {
        Outcome::Succeeded => Some(0),
        Outcome::Failed => Some(1),
        Outcome::Exception => None,
    };
    RunResult {
        run_id,
        outcome,
        exit_code,
        reason: None,
    }
}

async fn states(store: &Store) -> BTreeMap<String, JobState> {
    store
        .jobs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.name, j.state))
        .collect()
}

#[tokio::test]
async fn only_ready_jobs_are_claimed_and_success_releases_dependents() {
    let f = fixture().await;
    f.store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &["a", "b"])]),
            0,
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 10, &[], 1, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(got[0].run_number, 1);
    assert!(
        f.store
            .claim(n, 10, &[], 2, LEASE)
            .await
            .unwrap()
            .assignments
            .is_empty(),
        "b waits for a"
    );

    let (acks, effects) = f
        .store
        .report(n, &[result(got[0].run_id, Outcome::Succeeded)], 3)
        .await
        .unwrap();
    assert!(acks[0].recorded);
    assert!(effects.ready && effects.changed);
    let got = f
        .store
        .claim(n, 10, &[], 4, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["b"],
        "c still needs b"
    );
    f.store
        .report(n, &[result(got[0].run_id, Outcome::Succeeded)], 5)
        .await
        .unwrap();
    let got = f
        .store
        .claim(n, 10, &[], 6, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(got[0].job_name, "c");
}

#[tokio::test]
async fn concurrent_claims_never_hand_a_job_twice() {
    let f = fixture().await;
    let jobs: Vec<JobSpec> = (0..200).map(|i| job(&format!("j{i}"), &[])).collect();
    f.store.submit_graph(&graph(jobs), 0).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(node(&f.store, &format!("n{i}"), &[]).await);
    }
    let mut tasks = Vec::new();
    for n in nodes {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(n, 3, &[], 1, LEASE).await.unwrap().assignments;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|a| a.job_id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 200, "every job handed out");
    assert_eq!(all.len(), 200, "no job handed out twice");
}

#[tokio::test]
async fn failure_blocks_every_transitive_dependent_but_not_others() {
    let f = fixture().await;
    f.store
        .submit_graph(
            &graph(vec![
                job("bad", &[]),
                job("x", &["bad"]),
                job("y", &["x"]),
                job("free", &[]),
            ]),
            0,
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 10, &[], 1, LEASE)
        .await
        .unwrap()
        .assignments;
    let bad = got.iter().find(|a| a.job_name == "bad").unwrap();
    f.store
        .report(n, &[result(bad.run_id, Outcome::Failed)], 2)
        .await
        .unwrap();
    let s = states(&f.store).await;
    assert_eq!(s["bad"], JobState::Failed);
    assert_eq!(s["x"], JobState::Blocked);
    assert_eq!(s["y"], JobState::Blocked);
    assert_eq!(s["free"], JobState::Running);
    let jobs = f.store.jobs(None).await.unwrap();
    let y = jobs.iter().find(|j| j.name == "x").unwrap();
    assert!(
        y.reason.as_deref().unwrap().contains("bad"),
        "{:?}",
        y.reason
    );
}

#[tokio::test]
async fn expired_leases_retry_then_end_in_exception() {
    let f = fixture().await;
    let mut once = job("flaky", &[]);
    once.retries = 1;
    f.store
        .submit_graph(&graph(vec![once, job("after", &["flaky"])]), 0)
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;

    let first = f
        .store
        .claim(n, 1, &[], 0, LEASE)
        .await
        .unwrap()
        .assignments;
    let renewed = f
        .store
        .heartbeat(n, &[first[0].run_id], LEASE - 1, LEASE)
        .await
        .unwrap();
    assert!(renewed.is_empty());
    assert!(
        !f.store.expire_leases(LEASE + 1).await.unwrap().changed,
        "the heartbeat renewed it"
    );
    let effects = f.store.expire_leases(3 * LEASE).await.unwrap();
    assert!(effects.ready, "job back in the queue");
    assert_eq!(states(&f.store).await["flaky"], JobState::Pending);

    // The old holder's late report and heartbeat are refused.
    let (acks, _) = f
        .store
        .report(n, &[result(first[0].run_id, Outcome::Succeeded)], 3 * LEASE)
        .await
        .unwrap();
    assert!(!acks[0].recorded);
    assert!(acks[0].note.as_deref().unwrap().contains("claim-expired"));
    assert_eq!(
        f.store
            .heartbeat(n, &[first[0].run_id], 3 * LEASE, LEASE)
            .await
            .unwrap(),
        [first[0].run_id]
    );

    let second = f
        .store
        .claim(n, 1, &[], 3 * LEASE, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(second[0].run_number, 2);
    f.store.expire_leases(10 * LEASE).await.unwrap();
    let s = states(&f.store).await;
    assert_eq!(s["flaky"], JobState::Exception);
    assert_eq!(s["after"], JobState::Blocked);
    let detail = f.store.job(second[0].job_id).await.unwrap();
    assert_eq!(detail.run_history.len(), 2);
    assert!(
        detail
            .run_history
            .iter()
            .all(|r| r.state == RunState::Exception)
    );
}

#[tokio::test]
async fn a_result_is_recorded_once_and_only_from_its_node() {
    let f = fixture().await;
    f.store
        .submit_graph(&graph(vec![job("a", &[])]), 0)
        .await
        .unwrap();
    let n1 = node(&f.store, "n1", &[]).await;
    let n2 = node(&f.store, "n2", &[]).await;
    let got = f
        .store
        .claim(n1, 1, &[], 0, LEASE)
        .await
        .unwrap()
        .assignments;
    let run = got[0].run_id;
    let (acks, _) = f
        .store
        .report(n2, &[result(run, Outcome::Succeeded)], 1)
        .await
        .unwrap();
    assert!(!acks[0].recorded, "another node cannot report it");
    let (acks, _) = f
        .store
        .report(n1, &[result(run, Outcome::Succeeded)], 2)
        .await
        .unwrap();
    assert!(acks[0].recorded);
    let (acks, effects) = f
        .store
        .report(n1, &[result(run, Outcome::Succeeded)], 3)
        .await
        .unwrap();
    assert!(acks[0].recorded, "a repeated report is acknowledged");
    assert!(!effects.changed, "and changes nothing");
    let (acks, _) = f
        .store
        .report(n1, &[result(run, Outcome::Failed)], 4)
        .await
        .unwrap();
    assert!(!acks[0].recorded, "a different second result is refused");
    let detail = f.store.job(got[0].job_id).await.unwrap();
    assert_eq!(detail.info.state, JobState::Succeeded);
    assert_eq!(detail.run_history.len(), 1);
}

#[tokio::test]
async fn jobs_go_only_to_nodes_that_meet_their_requirements() {
    let f = fixture().await;
    let mut gpu = job("gpu", &[]);
    gpu.node.properties.insert("gpu".into(), "yes".into());
    let mut plan9 = job("plan9", &[]);
    plan9.node.os = Some("plan9".into());
    f.store
        .submit_graph(&graph(vec![plan9, gpu, job("any", &[])]), 0)
        .await
        .unwrap();
    let plain = node(&f.store, "plain", &[]).await;
    let got = f
        .store
        .claim(plain, 10, &[], 1, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["any"]
    );
    let with_gpu = node(&f.store, "gpu-box", &[("gpu", "yes")]).await;
    let got = f
        .store
        .claim(with_gpu, 10, &[], 2, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["gpu"]
    );
    assert_eq!(states(&f.store).await["plan9"], JobState::Pending);
}

#[tokio::test]
async fn invalid_graphs_are_refused_and_store_nothing() {
    let f = fixture().await;
    let err = f
        .store
        .submit_graph(&graph(vec![job("a", &["b"]), job("b", &["a"])]), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidGraph(_)), "{err}");
    assert!(err.to_string().contains("cycle"), "{err}");
    assert!(f.store.jobs(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn leases_are_extended_when_a_server_starts() {
    let f = fixture().await;
    f.store
        .submit_graph(&graph(vec![job("a", &[])]), 0)
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    f.store.claim(n, 1, &[], 0, LEASE).await.unwrap();
    // The server was down for ten leases; on start it gives the node a fresh lease.
    assert_eq!(f.store.extend_leases(10 * LEASE, LEASE).await.unwrap(), 1);
    assert!(!f.store.expire_leases(10 * LEASE + 1).await.unwrap().changed);
    assert_eq!(states(&f.store).await["a"], JobState::Running);
}

#[tokio::test]
async fn a_database_from_a_newer_lwr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
    let store = Store::open(&url).await.unwrap();
    store.close().await;
    let raw = sqlx_bump(&url).await;
    assert!(raw);
    let err = Store::open(&url).await.err().expect("newer schema refused");
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade lwr"), "{err}");
}

/// Records a schema version from the future, as a newer lwr would.
async fn sqlx_bump(url: &str) -> bool {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query("INSERT INTO lwr_schema (version) VALUES (999)")
        .execute(&mut conn)
        .await
        .is_ok()
}

#[tokio::test]
async fn cancelling_a_running_job_ends_its_run_and_blocks_dependents() {
    let f = fixture().await;
    f.store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("free", &[])]),
            0,
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 1, &[], 1, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(got[0].job_name, "a");
    let cancelled = f.store.cancel_job(got[0].job_id, 2).await.unwrap();
    assert_eq!((cancelled.jobs, cancelled.runs), (1, 1));
    let s = states(&f.store).await;
    assert_eq!(s["a"], JobState::Cancelled);
    assert_eq!(s["b"], JobState::Blocked);
    assert_eq!(s["free"], JobState::Pending);
    // The node is told to drop the run, and its late result is refused.
    let abandon = f
        .store
        .heartbeat(n, &[got[0].run_id], 3, LEASE)
        .await
        .unwrap();
    assert_eq!(abandon, [got[0].run_id]);
    let ok = RunResult {
        run_id: got[0].run_id,
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
    };
    let (acks, _) = f.store.report(n, &[ok], 4).await.unwrap();
    assert!(!acks[0].recorded);
    // An ended job cannot be cancelled again.
    let err = f.store.cancel_job(got[0].job_id, 5).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

#[tokio::test]
async fn cancelling_a_graph_stops_everything_not_ended() {
    let f = fixture().await;
    let g = f
        .store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &[])]),
            0,
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    f.store.claim(n, 1, &[], 1, LEASE).await.unwrap();
    let cancelled = f.store.cancel_graph(g, 2).await.unwrap();
    assert_eq!((cancelled.jobs, cancelled.runs), (3, 1));
    assert!(
        states(&f.store)
            .await
            .values()
            .all(|s| *s == JobState::Cancelled)
    );
    assert!(f.store.graph(g).await.unwrap().finished);
    assert!(matches!(
        f.store.cancel_graph(999, 3).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn retrigger_runs_a_job_again_with_its_dependents() {
    let f = fixture().await;
    let mut flaky = job("flaky", &[]);
    flaky.retries = 0;
    f.store
        .submit_graph(
            &graph(vec![
                flaky,
                job("after", &["flaky"]),
                job("last", &["after"]),
            ]),
            0,
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 1, &[], 1, LEASE)
        .await
        .unwrap()
        .assignments;
    let failed = RunResult {
        run_id: got[0].run_id,
        outcome: Outcome::Failed,
        exit_code: Some(1),
        reason: None,
    };
    f.store.report(n, &[failed], 2).await.unwrap();
    assert_eq!(states(&f.store).await["after"], JobState::Blocked);

    // A blocked job cannot run while its need has failed: the error says what to do.
    let after_id = f
        .store
        .jobs(None)
        .await
        .unwrap()
        .iter()
        .find(|j| j.name == "after")
        .unwrap()
        .id;
    let err = f.store.retrigger(after_id, false, 3).await.unwrap_err();
    assert!(err.to_string().contains("retrigger flaky"), "{err}");

    let queued = f.store.retrigger(got[0].job_id, true, 4).await.unwrap();
    assert_eq!(queued.len(), 3);
    let s = states(&f.store).await;
    assert!(s.values().all(|st| *st == JobState::Pending), "{s:?}");
    let again = f
        .store
        .claim(n, 10, &[], 5, LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(again.len(), 1, "dependents wait for the new run");
    assert_eq!(
        (again[0].job_name.as_str(), again[0].run_number),
        ("flaky", 2)
    );
    let ok = RunResult {
        run_id: again[0].run_id,
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
    };
    let claimed = f.store.claim(n, 10, &[ok], 6, LEASE).await.unwrap();
    assert_eq!(claimed.assignments[0].job_name, "after");
    // A pending or running job is not retriggered.
    let err = f
        .store
        .retrigger(claimed.assignments[0].job_id, false, 7)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}
