//! The server's queue without sockets: long-poll claims and graph waits wake on changes.

use std::time::{Duration, Instant};

use lwr_model::api::{RegisterNode, RunResult, SubmitGraph};
use lwr_model::{Graph, JobSpec, JobState, NodeId, NodeProperties, Requirements};
use lwr_server::{Queue, Want};
use lwr_store::Store;

async fn queue() -> (Queue, NodeId, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("lwr.db").display()))
        .await
        .unwrap();
    let reg = RegisterNode {
        name: "n".into(),
        properties: NodeProperties::default(),
        slots: 1,
    };
    let node = store
        .register_node(&reg, lwr_store::now_ms())
        .await
        .unwrap();
    (Queue::new(store, Duration::from_secs(30)), node, dir)
}

/// Waits until `n` claims or graph waits of `queue` have looked, found nothing and parked:
/// from then on only a wake-up answers them before their 30 s timeout.
async fn parked(queue: &Queue, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.waiting() != n {
        assert!(
            Instant::now() < deadline,
            "{} waiters parked, expected {n}",
            queue.waiting()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The answer of a parked waiter, which must come well before its 30 s timeout.
async fn woken<T>(waiter: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken (it would have waited 30 s)")
        .unwrap()
}

fn graph(names: &[(&str, &[&str])]) -> SubmitGraph {
    let jobs = names
        .iter()
        .map(|(name, needs)| JobSpec {
            name: name.to_string(),
            title: None,
            run: "true".into(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            node: Requirements::default(),
            artifacts: vec![],
            retries: 2,
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
        })
        .collect();
    SubmitGraph::new(Graph { jobs })
}

#[tokio::test]
async fn a_waiting_claim_wakes_when_a_job_becomes_ready() {
    let (queue, node, _dir) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .claim(node, Want::free(1), &[], Duration::from_secs(30))
                .await
                .unwrap()
                .assignments
        })
    };
    parked(&queue, 1).await;
    queue
        .submit(&graph(&[("a", &[]), ("b", &["a"])]))
        .await
        .unwrap();
    let got = woken(waiting).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job_name, "a");

    // b becomes ready when a succeeds: a claim waiting for it wakes too.
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .claim(node, Want::free(1), &[], Duration::from_secs(30))
                .await
                .unwrap()
                .assignments
        })
    };
    parked(&queue, 1).await;
    let result = RunResult::succeeded(got[0].run_id);
    queue.report(node, &[result]).await.unwrap();
    let got = woken(waiting).await;
    assert_eq!(got[0].job_name, "b");
}

/// A node's claim that waited, woken by new work, takes only its free slots while another
/// node's claim waits too: the job it would have taken ahead goes to that node instead of
/// waiting behind the first node's running job.
#[tokio::test]
async fn a_woken_claim_leaves_what_it_would_take_ahead_to_another_waiting_node() {
    let (queue, first, _dir) = queue().await;
    let second = register(&queue, "second").await;
    let queue = std::sync::Arc::new(queue);
    // Parked in this order, woken in this order: the node claiming ahead looks first.
    let ahead = claim_in_background(&queue, first, Want { max: 2, ahead: 1 });
    parked(&queue, 1).await;
    let free = claim_in_background(&queue, second, Want::free(1));
    parked(&queue, 2).await;
    queue
        .submit(&graph(&[("a", &[]), ("b", &[])]))
        .await
        .unwrap();
    assert_eq!(woken(ahead).await.len(), 1, "the first node took ahead");
    assert_eq!(woken(free).await.len(), 1, "the second node got nothing");
}

/// With no other node waiting, a woken claim takes ahead as it asked: nobody else would
/// run the job sooner.
#[tokio::test]
async fn a_woken_claim_alone_takes_ahead() {
    let (queue, node, _dir) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let ahead = claim_in_background(&queue, node, Want { max: 2, ahead: 1 });
    parked(&queue, 1).await;
    queue
        .submit(&graph(&[("a", &[]), ("b", &[])]))
        .await
        .unwrap();
    assert_eq!(woken(ahead).await.len(), 2);
}

async fn register(queue: &Queue, name: &str) -> NodeId {
    let reg = RegisterNode {
        name: name.into(),
        properties: NodeProperties::default(),
        slots: 1,
    };
    queue
        .store()
        .register_node(&reg, lwr_store::now_ms())
        .await
        .unwrap()
}

/// A claim waiting up to 30 s in a task of its own; its jobs are the task's answer.
fn claim_in_background(
    queue: &std::sync::Arc<Queue>,
    node: NodeId,
    want: Want,
) -> tokio::task::JoinHandle<Vec<lwr_model::api::Assignment>> {
    let queue = queue.clone();
    tokio::spawn(async move {
        queue
            .claim(node, want, &[], Duration::from_secs(30))
            .await
            .unwrap()
            .assignments
    })
}

#[tokio::test]
async fn a_claim_with_nothing_to_do_returns_empty_after_its_wait() {
    let (queue, node, _dir) = queue().await;
    let got = queue
        .claim(node, Want::free(4), &[], Duration::from_millis(50))
        .await
        .unwrap()
        .assignments;
    assert!(got.is_empty());
}

#[tokio::test]
async fn a_stopping_node_s_waiting_claim_ends_at_once_and_takes_nothing_until_it_registers() {
    let (queue, node, _dir) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let other = register(&queue, "other").await;
    let (mine, theirs) = (
        claim_in_background(&queue, node, Want::free(1)),
        claim_in_background(&queue, other, Want::free(1)),
    );
    parked(&queue, 2).await;
    queue.stopping(node);
    assert!(woken(mine).await.is_empty());
    // Another node's stop wakes no claim but its own.
    parked(&queue, 1).await;
    // Ready work goes to the running node, not to the stopping one that asks again.
    queue.submit(&graph(&[("build", &[])])).await.unwrap();
    assert_eq!(woken(theirs).await.len(), 1);
    queue.submit(&graph(&[("test", &[])])).await.unwrap();
    let asked_again = queue
        .claim(node, Want::free(1), &[], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(asked_again.assignments.is_empty());
    // Registered again (its restart), it takes work as before.
    queue.registered(node);
    let restarted = queue
        .claim(node, Want::free(1), &[], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(restarted.assignments.len(), 1);
}

#[tokio::test]
async fn a_graph_wait_answers_on_the_next_change() {
    let (queue, node, _dir) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let info = queue.submit(&graph(&[("a", &[])])).await.unwrap();
    assert!(!info.finished);
    let waiter = {
        let queue = queue.clone();
        let (id, seq) = (info.id, info.seq);
        tokio::spawn(async move {
            queue
                .graph(id, Some(seq), Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    parked(&queue, 1).await;
    let got = queue
        .claim(node, Want::free(1), &[], Duration::ZERO)
        .await
        .unwrap()
        .assignments;
    let running = woken(waiter).await;
    assert!(running.seq > info.seq);
    assert_eq!(running.counts.running, 1);
    let result = RunResult::succeeded(got[0].run_id);
    queue.report(node, &[result]).await.unwrap();
    let done = queue
        .graph(info.id, Some(running.seq), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(done.finished);
    assert_eq!(done.counts.succeeded, 1);
}

#[tokio::test]
async fn a_wait_for_a_graphs_end_passes_over_other_changes() {
    let (queue, node, _dir) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let info = queue
        .submit(&graph(&[("a", &[]), ("b", &["a"])]))
        .await
        .unwrap();
    let mut waiter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .graph_finished(info.id, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    parked(&queue, 1).await;
    // Each job's claim and success is a change; only the last finishes the graph.
    for name in ["a", "b"] {
        let got = queue
            .claim(node, Want::free(1), &[], Duration::ZERO)
            .await
            .unwrap()
            .assignments;
        assert_eq!(got[0].job_name, name);
        // The change is read again within 5 ms; no answer comes of it.
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiter).await;
        assert!(
            early.is_err(),
            "answered before the graph finished: {early:?}"
        );
        let result = RunResult::succeeded(got[0].run_id);
        queue.report(node, &[result]).await.unwrap();
    }
    let done = woken(waiter).await;
    assert!(done.finished);
    assert_eq!(done.counts.succeeded, 2);
    assert!(done.seq > info.seq);
    // An unfinished graph is answered when the wait runs out, as it stands then.
    let other = queue.submit(&graph(&[("c", &[])])).await.unwrap();
    let waited = queue
        .graph_finished(other.id, Duration::from_millis(30))
        .await
        .unwrap();
    assert!(!waited.finished);
    assert_eq!(waited.counts.pending, 1);
}

#[tokio::test]
async fn results_sent_with_a_claim_are_recorded_and_release_dependents() {
    let (queue, node, _dir) = queue().await;
    queue
        .submit(&graph(&[("a", &[]), ("b", &["a"])]))
        .await
        .unwrap();
    let a = queue
        .claim(node, Want::free(1), &[], Duration::ZERO)
        .await
        .unwrap()
        .assignments;
    let done = RunResult::succeeded(a[0].run_id);
    let claimed = queue
        .claim(node, Want::free(1), &[done], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.acks.len(), 1);
    assert!(claimed.acks[0].recorded);
    assert_eq!(
        claimed.assignments[0].job_name, "b",
        "a's success made b ready in the same claim"
    );
}

/// A second server on the same PostgreSQL database, as `lwr server` runs it: a queue that
/// follows the other servers' notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
async fn a_claim_waiting_on_one_server_wakes_when_a_job_is_submitted_on_another() {
    let admin = std::env::var(lwr_store::scratch::POSTGRES_URL_VAR)
        .expect("set LWR_TEST_POSTGRES_URL to run the PostgreSQL tests");
    let db = lwr_store::scratch::ScratchDb::create(&admin).await.unwrap();
    let outcome = tokio::spawn(two_servers_wake_each_other(db.url.clone())).await;
    db.drop_db().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn two_servers_wake_each_other(url: String) {
    let one_store = Store::open(&url).await.unwrap();
    let one_events = one_store.events().await.unwrap().expect("PostgreSQL");
    let one = std::sync::Arc::new(Queue::new(one_store, Duration::from_secs(30)));
    let one_follower = {
        let one = one.clone();
        tokio::spawn(async move { one.follow(one_events).await })
    };
    let two_store = Store::open(&url).await.unwrap();
    let events = two_store.events().await.unwrap().expect("PostgreSQL");
    let two = std::sync::Arc::new(Queue::new(two_store, Duration::from_secs(30)));
    let follower = {
        let two = two.clone();
        tokio::spawn(async move { two.follow(events).await })
    };
    let reg = RegisterNode {
        name: "n".into(),
        properties: NodeProperties::default(),
        slots: 1,
    };
    let node = two
        .store()
        .register_node(&reg, lwr_store::now_ms())
        .await
        .unwrap();
    let waiting = {
        let two = two.clone();
        tokio::spawn(async move {
            two.claim(node, Want::free(1), &[], Duration::from_secs(30))
                .await
                .unwrap()
                .assignments
        })
    };
    parked(&two, 1).await;
    let info = one.submit(&graph(&[("a", &[])])).await.unwrap();
    let got = woken(waiting).await;
    assert_eq!(got.len(), 1, "the job submitted on the other server");

    // A graph watcher on the first server hears the result reported to the second. It
    // waits from a counter past the claim's change (which the first server may hear only
    // now), so that nothing but the result can answer it.
    let claimed = one
        .graph(info.id, Some(info.seq), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.counts.running, 1);
    let watcher = {
        let one = one.clone();
        tokio::spawn(async move {
            one.graph(info.id, Some(claimed.seq), Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    let result = RunResult::succeeded(got[0].run_id);
    parked(&one, 1).await;
    two.report(node, &[result]).await.unwrap();
    let seen = woken(watcher).await;
    assert!(seen.seq > claimed.seq);
    assert_eq!(seen.counts.succeeded, 1, "{seen:?}");
    follower.abort();
    one_follower.abort();
    one.store().close().await;
    two.store().close().await;
}

/// Issue 22, item 8: 1,500 viewers following a pending job share one read of it per
/// change, instead of 1,500 reads each time any job changes; and each of them still sees
/// the change of its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_job_share_one_read_per_change() {
    let (queue, _node, _dir) = queue().await;
    let info = queue
        .submit(&graph(&[("a", &[]), ("b", &["a"])]))
        .await
        .unwrap();
    let b = queue.store().job_by_name(info.id, "b").await.unwrap();
    let mut feeds: Vec<_> = (0..1500).map(|_| queue.follow_job(b)).collect();
    for feed in &mut feeds {
        assert_eq!(feed.latest().await.unwrap().info.state, JobState::Pending);
    }
    let before = queue.followed_reads();
    // Twenty changes of other jobs: each makes at most one read of b, for all 1,500.
    let changes = 20;
    for _ in 0..changes {
        queue.submit(&graph(&[("other", &[])])).await.unwrap();
    }
    queue.cancel_job(b).await.unwrap();
    for feed in &mut feeds {
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let job = feed.latest().await.unwrap();
                if job.info.state.is_terminal() {
                    return job.info.state;
                }
                feed.changed().await;
            }
        })
        .await
        .expect("a follower did not see its job cancelled");
        assert_eq!(seen, JobState::Cancelled);
    }
    let reads = queue.followed_reads() - before;
    // One per change at most, plus a recheck or two (every 2 s) on a slow machine.
    assert!(
        reads <= changes + 1 + 3,
        "{reads} reads of the followed job for {} changes",
        changes + 1
    );
}
