//! The queue's state changes as plain store calls: no server, no sockets, time passed in.

use std::collections::BTreeMap;

use lwr_model::api::{Outcome, RegisterNode, RunResult, SubmitGraph};
use lwr_model::{
    DurationMs, Graph, GraphId, JobSpec, JobState, Millis, NodeId, NodeProperties, RunId, RunState,
};
use lwr_store::scratch::{POSTGRES_URL_VAR, ScratchDb};
use lwr_store::{Effects, Event, Store, StoreError};

#[macro_use]
mod common;
use common::{Fixture, job};

const LEASE: DurationMs = DurationMs(30_000);

fn graph(jobs: Vec<JobSpec>) -> SubmitGraph {
    SubmitGraph::new(Graph { jobs })
}

async fn node(store: &Store, name: &str, tags: &[(&str, &str)]) -> NodeId {
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
            Millis(0),
        )
        .await
        .unwrap()
}

fn result(run_id: RunId, outcome: Outcome) -> RunResult {
    let exit_code = match outcome {
        Outcome::Succeeded => Some(0),
        Outcome::Failed => Some(1),
        Outcome::Exception => None,
    };
    RunResult {
        node_bad: None,
        server_fault: false,
        unstarted: false,
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

async fn only_ready_jobs_are_claimed_and_success_releases_dependents(f: Fixture) {
    f.store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &["a", "b"])]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 10, &[], Millis(1), LEASE)
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
            .claim(n, 10, &[], Millis(2), LEASE)
            .await
            .unwrap()
            .assignments
            .is_empty(),
        "b waits for a"
    );

    let (acks, effects) = f
        .store
        .report(n, &[result(got[0].run_id, Outcome::Succeeded)], Millis(3))
        .await
        .unwrap();
    assert!(acks[0].recorded);
    assert!(effects.changed);
    assert_eq!(
        (effects.ready, effects.released),
        (false, 1),
        "b released, counted: one waiting claim is woken for it"
    );
    let a_run = got[0].run_id;
    let got = f
        .store
        .claim(n, 10, &[], Millis(4), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["b"],
        "c still needs b"
    );
    let manifest = |run: RunId| format!("/v1/runs/{run}/manifest");
    assert_eq!(
        got[0].manifests,
        BTreeMap::from([("a".to_string(), manifest(a_run))])
    );
    // c's result rides on the claim that takes c, with its two needs' manifests.
    let b_run = got[0].run_id;
    let got = f
        .store
        .claim(
            n,
            10,
            &[result(b_run, Outcome::Succeeded)],
            Millis(6),
            LEASE,
        )
        .await
        .unwrap()
        .assignments;
    assert_eq!(got[0].job_name, "c");
    assert_eq!(
        got[0].manifests,
        BTreeMap::from([
            ("a".to_string(), manifest(a_run)),
            ("b".to_string(), manifest(b_run)),
        ])
    );
}

/// A claim that takes several jobs gets each its own needs' manifests (read for all of them
/// at once), whether the claim is alone or combined with another node's.
async fn every_job_a_claim_takes_gets_its_own_needs_manifests(f: Fixture) {
    f.store
        .submit_graph(
            &graph(vec![
                job("a", &[]),
                job("b", &[]),
                job("c", &["a"]),
                job("d", &["a", "b"]),
                job("e", &["b"]),
                job("f", &[]),
                job("g", &["c", "d"]),
                job("h", &["f"]),
            ]),
            Millis(0),
        )
        .await
        .unwrap();
    let n1 = node(&f.store, "n1", &[]).await;
    let n2 = node(&f.store, "n2", &[]).await;
    let manifest = |run: RunId| format!("/v1/runs/{run}/manifest");
    let by_name = |got: &[lwr_model::api::Assignment]| {
        got.iter()
            .map(|a| (a.job_name.clone(), (a.run_id, a.manifests.clone())))
            .collect::<BTreeMap<_, _>>()
    };
    let roots = f.store.claim(n1, 2, &[], Millis(1), LEASE).await.unwrap();
    let roots = by_name(&roots.assignments);
    let (a, b) = (roots["a"].0, roots["b"].0);
    let done = [result(a, Outcome::Succeeded), result(b, Outcome::Succeeded)];
    let got = f.store.claim(n1, 3, &done, Millis(2), LEASE).await.unwrap();
    let got = by_name(&got.assignments);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["c", "d", "e"]);
    assert_eq!(got["c"].1, BTreeMap::from([("a".into(), manifest(a))]));
    assert_eq!(
        got["d"].1,
        BTreeMap::from([("a".into(), manifest(a)), ("b".into(), manifest(b))])
    );
    assert_eq!(got["e"].1, BTreeMap::from([("b".into(), manifest(b))]));
    let other = f.store.claim(n2, 1, &[], Millis(2), LEASE).await.unwrap();
    let other = by_name(&other.assignments);
    assert!(
        other["f"].1.is_empty(),
        "a job without needs has no manifests"
    );

    // Both nodes' claims at once, each carrying the results that release one job, through
    // a store that has not seen the graph: its take reads the graph's origin and the needs'
    // manifests together (one text on SQLite, each statement's rows apart).
    let fresh = Store::open(&f.url).await.unwrap();
    let (c, d, f_run) = (got["c"].0, got["d"].0, other["f"].0);
    let mine = [result(c, Outcome::Succeeded), result(d, Outcome::Succeeded)];
    let theirs = [result(f_run, Outcome::Succeeded)];
    let (one, two) = tokio::join!(
        fresh.claim(n1, 4, &mine, Millis(3), LEASE),
        fresh.claim(n2, 4, &theirs, Millis(3), LEASE),
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(one.acks.iter().chain(&two.acks).all(|a| a.recorded));
    let mut both = by_name(&one.assignments);
    both.extend(by_name(&two.assignments));
    let names: Vec<&str> = both.keys().map(String::as_str).collect();
    assert_eq!(names, ["g", "h"]);
    assert_eq!(
        both["g"].1,
        BTreeMap::from([("c".into(), manifest(c)), ("d".into(), manifest(d))])
    );
    assert_eq!(both["h"].1, BTreeMap::from([("f".into(), manifest(f_run))]));
}

/// The server wakes one waiting claim per job a success released, less those the claim
/// carrying the success took itself: so a claim's effects count exactly those.
async fn a_claim_counts_the_jobs_it_released_and_did_not_take(f: Fixture) {
    f.store
        .submit_graph(
            &graph(vec![
                job("a", &[]),
                job("b", &["a"]),
                job("c", &["a"]),
                job("d", &["b", "c"]),
            ]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let a = f.store.claim(n, 1, &[], Millis(1), LEASE).await.unwrap();
    assert_eq!(a.assignments[0].job_name, "a");
    // a's success releases b and c; the claim carrying it takes one of them.
    let bc = f
        .store
        .claim(
            n,
            1,
            &[result(a.assignments[0].run_id, Outcome::Succeeded)],
            Millis(2),
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(bc.assignments.len(), 1);
    assert_eq!(
        (bc.effects.ready, bc.effects.released),
        (false, 1),
        "two released, one taken by the claim itself"
    );
    let other = f.store.claim(n, 1, &[], Millis(3), LEASE).await.unwrap();
    assert_eq!(other.assignments.len(), 1);
    // b's success releases nothing (d still needs c); c's releases d, taken at once.
    let results: Vec<RunResult> = [&bc, &other]
        .iter()
        .map(|c| result(c.assignments[0].run_id, Outcome::Succeeded))
        .collect();
    let first = f
        .store
        .claim(n, 1, &results[..1], Millis(4), LEASE)
        .await
        .unwrap();
    assert!(first.assignments.is_empty());
    assert!(!first.effects.wakes_claims(), "nothing became ready");
    let last = f
        .store
        .claim(n, 1, &results[1..], Millis(5), LEASE)
        .await
        .unwrap();
    assert_eq!(last.assignments[0].job_name, "d");
    assert!(
        !last.effects.wakes_claims(),
        "d was taken by the claim that released it: nobody to wake"
    );
    // A plain report takes nothing, so what it releases is counted for the others.
    f.store
        .submit_graph(&graph(vec![job("e", &[]), job("f", &["e"])]), Millis(6))
        .await
        .unwrap();
    let e = f.store.claim(n, 1, &[], Millis(7), LEASE).await.unwrap();
    let (_, effects) = f
        .store
        .report(
            n,
            &[result(e.assignments[0].run_id, Outcome::Succeeded)],
            Millis(8),
        )
        .await
        .unwrap();
    assert_eq!(effects.released, 1, "f released by a plain report");
}

async fn concurrent_claims_never_hand_a_job_twice(f: Fixture) {
    let jobs: Vec<JobSpec> = (0..200).map(|i| job(&format!("j{i}"), &[])).collect();
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
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
                let got = store
                    .claim(n, 3, &[], Millis(1), LEASE)
                    .await
                    .unwrap()
                    .assignments;
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

async fn failure_blocks_every_transitive_dependent_but_not_others(f: Fixture) {
    f.store
        .submit_graph(
            &graph(vec![
                job("bad", &[]),
                job("x", &["bad"]),
                job("y", &["x"]),
                job("free", &[]),
            ]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 10, &[], Millis(1), LEASE)
        .await
        .unwrap()
        .assignments;
    let bad = got.iter().find(|a| a.job_name == "bad").unwrap();
    f.store
        .report(n, &[result(bad.run_id, Outcome::Failed)], Millis(2))
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

async fn expired_leases_retry_then_end_in_exception(f: Fixture) {
    let mut once = job("flaky", &[]);
    once.retries = 1;
    f.store
        .submit_graph(&graph(vec![once, job("after", &["flaky"])]), Millis(0))
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;

    let first = f
        .store
        .claim(n, 1, &[], Millis(0), LEASE)
        .await
        .unwrap()
        .assignments;
    let renewed = f
        .store
        .heartbeat(n, &[first[0].run_id], Millis(LEASE.get() - 1), LEASE)
        .await
        .unwrap();
    assert!(renewed.is_empty());
    assert!(
        !f.store
            .expire_leases(Millis(LEASE.get() + 1))
            .await
            .unwrap()
            .changed,
        "the heartbeat renewed it"
    );
    let effects = f
        .store
        .expire_leases(Millis(3 * LEASE.get()))
        .await
        .unwrap();
    assert!(effects.ready, "job back in the queue");
    assert_eq!(states(&f.store).await["flaky"], JobState::Pending);

    // The old holder's late report and heartbeat are refused.
    let (acks, _) = f
        .store
        .report(
            n,
            &[result(first[0].run_id, Outcome::Succeeded)],
            Millis(3 * LEASE.get()),
        )
        .await
        .unwrap();
    assert!(!acks[0].recorded);
    assert!(acks[0].note.as_deref().unwrap().contains("claim-expired"));
    assert_eq!(
        f.store
            .heartbeat(n, &[first[0].run_id], Millis(3 * LEASE.get()), LEASE)
            .await
            .unwrap(),
        [first[0].run_id]
    );

    let second = f
        .store
        .claim(n, 1, &[], Millis(3 * LEASE.get()), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(second[0].run_number, 2);
    f.store
        .expire_leases(Millis(10 * LEASE.get()))
        .await
        .unwrap();
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

/// Claims that arrive together share a transaction (the store's combiner); each is still
/// answered as if it had been alone: no job twice, a job only to a node that can run it,
/// each result acknowledged to its own node only, a repeat as a repeat.
async fn claims_arriving_together_are_each_answered_as_if_alone(f: Fixture) {
    let mut jobs: Vec<JobSpec> = (0..40).map(|i| job(&format!("j{i}"), &[])).collect();
    let mut gpu = job("gpu", &[]);
    gpu.node.properties.insert("gpu".into(), "yes".into());
    jobs.push(gpu);
    jobs.push(job("after", &["j0", "j1", "j2"]));
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(node(&f.store, &format!("n{i}"), &[]).await);
    }
    let g = node(&f.store, "g", &[("gpu", "yes")]).await;
    // Every claim at once, several times over: most share a transaction with others.
    let claim_all = |requests: Vec<(NodeId, u32, Vec<RunResult>)>| {
        let store = f.store.clone();
        async move {
            let tasks: Vec<_> = requests
                .into_iter()
                .map(|(n, max, results)| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let claimed = store.claim(n, max, &results, Millis(5), LEASE).await;
                        (n, results, claimed.unwrap())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let mut first = vec![(g, 41, Vec::new())];
    first.extend(nodes.iter().map(|n| (*n, 10, Vec::new())));
    let answers = claim_all(first).await;
    let mut held: BTreeMap<NodeId, Vec<(RunId, String)>> = BTreeMap::new();
    for (n, _, claimed) in &answers {
        for a in &claimed.assignments {
            held.entry(*n)
                .or_default()
                .push((a.run_id, a.job_name.clone()));
        }
    }
    let mut names: Vec<&str> = held.values().flatten().map(|(_, j)| j.as_str()).collect();
    names.sort();
    let count = names.len();
    names.dedup();
    assert_eq!(count, 41, "every ready job handed out once: {names:?}");
    assert_eq!(names.len(), 41, "no job handed out twice");
    assert!(
        held[&g].iter().any(|(_, j)| j == "gpu"),
        "the gpu job went to the gpu node: {held:?}"
    );
    assert!(
        held.iter()
            .all(|(n, jobs)| *n == g || jobs.iter().all(|(_, j)| j != "gpu")),
        "and to no other"
    );
    // All report at once. n1 also names another node's run (refused: not its run), and n2
    // names each of its runs twice (the repeat acknowledged, recorded once).
    let n0_run = held
        .iter()
        .find(|(n, _)| **n != nodes[1])
        .map(|(_, jobs)| jobs[0].0)
        .unwrap();
    let mut second = Vec::new();
    for n in nodes.iter().chain([&g]) {
        let mut results: Vec<RunResult> = held
            .get(n)
            .into_iter()
            .flatten()
            .map(|(run, _)| result(*run, Outcome::Succeeded))
            .collect();
        if *n == nodes[1] {
            results.insert(0, result(n0_run, Outcome::Succeeded));
        }
        if *n == nodes[2] {
            let again = results.clone();
            results.extend(again);
        }
        second.push((*n, 10, results));
    }
    let answers = claim_all(second).await;
    let mut taken = Vec::new();
    for (n, results, claimed) in &answers {
        assert_eq!(claimed.acks.len(), results.len(), "one ack per result");
        for (ack, sent) in claimed.acks.iter().zip(results) {
            assert_eq!(ack.run_id, sent.run_id, "acks in the results' order");
            let theirs = *n == nodes[1] && sent.run_id == n0_run;
            assert_eq!(ack.recorded, !theirs, "{n}: {ack:?}");
        }
        taken.extend(claimed.assignments.iter().map(|a| a.job_name.clone()));
    }
    assert_eq!(taken, ["after"], "the released job handed out once");
    let states = states(&f.store).await;
    assert_eq!(states["after"], JobState::Running);
    assert!(
        states
            .iter()
            .all(|(name, state)| name == "after" || *state == JobState::Succeeded),
        "{states:?}"
    );
}

async fn a_result_is_recorded_once_and_only_from_its_node(f: Fixture) {
    f.store
        .submit_graph(&graph(vec![job("a", &[])]), Millis(0))
        .await
        .unwrap();
    let n1 = node(&f.store, "n1", &[]).await;
    let n2 = node(&f.store, "n2", &[]).await;
    let got = f
        .store
        .claim(n1, 1, &[], Millis(0), LEASE)
        .await
        .unwrap()
        .assignments;
    let run = got[0].run_id;
    let (acks, _) = f
        .store
        .report(n2, &[result(run, Outcome::Succeeded)], Millis(1))
        .await
        .unwrap();
    assert!(!acks[0].recorded, "another node cannot report it");
    let (acks, _) = f
        .store
        .report(n1, &[result(run, Outcome::Succeeded)], Millis(2))
        .await
        .unwrap();
    assert!(acks[0].recorded);
    let (acks, effects) = f
        .store
        .report(n1, &[result(run, Outcome::Succeeded)], Millis(3))
        .await
        .unwrap();
    assert!(acks[0].recorded, "a repeated report is acknowledged");
    assert!(!effects.changed, "and changes nothing");
    let (acks, _) = f
        .store
        .report(n1, &[result(run, Outcome::Failed)], Millis(4))
        .await
        .unwrap();
    assert!(!acks[0].recorded, "a different second result is refused");
    let detail = f.store.job(got[0].job_id).await.unwrap();
    assert_eq!(detail.info.state, JobState::Succeeded);
    assert_eq!(detail.run_history.len(), 1);
}

async fn jobs_go_only_to_nodes_that_meet_their_requirements(f: Fixture) {
    let mut gpu = job("gpu", &[]);
    gpu.node.properties.insert("gpu".into(), "yes".into());
    let mut plan9 = job("plan9", &[]);
    plan9.node.os = Some("plan9".into());
    f.store
        .submit_graph(&graph(vec![plan9, gpu, job("any", &[])]), Millis(0))
        .await
        .unwrap();
    let plain = node(&f.store, "plain", &[]).await;
    let got = f
        .store
        .claim(plain, 10, &[], Millis(1), LEASE)
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
        .claim(with_gpu, 10, &[], Millis(2), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(
        got.iter().map(|a| a.job_name.as_str()).collect::<Vec<_>>(),
        ["gpu"]
    );
    assert_eq!(states(&f.store).await["plan9"], JobState::Pending);
}

async fn invalid_graphs_are_refused_and_store_nothing(f: Fixture) {
    let err = f
        .store
        .submit_graph(&graph(vec![job("a", &["b"]), job("b", &["a"])]), Millis(0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidGraph(_)), "{err}");
    assert!(err.to_string().contains("cycle"), "{err}");
    assert!(f.store.jobs(None).await.unwrap().is_empty());
}

async fn leases_are_extended_when_a_server_starts(f: Fixture) {
    f.store
        .submit_graph(&graph(vec![job("a", &[])]), Millis(0))
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    f.store.claim(n, 1, &[], Millis(0), LEASE).await.unwrap();
    // The server was down for ten leases; on start it gives the node a fresh lease.
    assert_eq!(
        f.store
            .extend_leases(Millis(10 * LEASE.get()), LEASE)
            .await
            .unwrap(),
        1
    );
    assert!(
        !f.store
            .expire_leases(Millis(Millis(10 * LEASE.get()).get() + 1))
            .await
            .unwrap()
            .changed
    );
    assert_eq!(states(&f.store).await["a"], JobState::Running);
}

async fn a_database_from_a_newer_lwr_is_refused(f: Fixture) {
    f.store.close().await;
    assert!(bump_schema(&f.url).await);
    let err = Store::open(&f.url)
        .await
        .err()
        .expect("newer schema refused");
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    // No window recorded for 999 (a build from before the window): nothing says it is
    // readable, so the message asks for a build of that schema.
    assert!(err.to_string().contains("at least 999"), "{err}");
    // The newer lwr's row gone, the database opens again (and the harness can check it).
    assert!(unbump_schema(&f.url).await);
}

/// The compatibility window: a newer release's expand step (readable by this build's
/// schema) lets this build run and restart on the database; a contract step does not, and
/// the refusal names the schema to upgrade to.
async fn a_newer_schema_inside_the_window_is_run_on(f: Fixture) {
    f.store.close().await;
    let ours = lwr_store::SCHEMA_VERSION;
    let next = ours + 1;
    assert!(
        raw(
            &f.url,
            &format!("INSERT INTO lwr_schema (version) VALUES ({next})")
        )
        .await
    );
    assert!(
        raw(
            &f.url,
            &format!(
                "INSERT INTO lwr_schema_window (version, readable_by) VALUES ({next}, {ours})"
            )
        )
        .await
    );
    let store = Store::open(&f.url)
        .await
        .expect("an expand step keeps us running");
    store.close().await;
    // The release after that contracts: what this build reads may be gone.
    let after = ours + 2;
    assert!(
        raw(
            &f.url,
            &format!("INSERT INTO lwr_schema (version) VALUES ({after})")
        )
        .await
    );
    assert!(
        raw(
            &f.url,
            &format!(
                "INSERT INTO lwr_schema_window (version, readable_by) VALUES ({after}, {next})"
            )
        )
        .await
    );
    let err = Store::open(&f.url).await.err().expect("outside the window");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, needs, .. } if found == after && needs == next),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("at least {next}")),
        "{err}"
    );
    for v in [next, after] {
        assert!(
            raw(
                &f.url,
                &format!("DELETE FROM lwr_schema WHERE version = {v}")
            )
            .await
        );
        assert!(
            raw(
                &f.url,
                &format!("DELETE FROM lwr_schema_window WHERE version = {v}")
            )
            .await
        );
    }
}

/// Records a schema version from the future, as a newer lwr from before the window would.
async fn bump_schema(url: &str) -> bool {
    raw(url, "INSERT INTO lwr_schema (version) VALUES (999)").await
}

async fn unbump_schema(url: &str) -> bool {
    raw(url, "DELETE FROM lwr_schema WHERE version = 999").await
}

/// One statement on its own connection, as another lwr would run it.
async fn raw(url: &str, sql: &str) -> bool {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .is_ok()
}

async fn two_servers_on_one_database_never_hand_out_a_job_twice(f: Fixture) {
    // A second store on the same database is what a second server is.
    let other = Store::open(&f.url).await.unwrap();
    let jobs: Vec<JobSpec> = (0..300).map(|i| job(&format!("j{i}"), &[])).collect();
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        let n = node(&store, &format!("n{i}"), &[]).await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut done = Vec::new();
            loop {
                let got = store
                    .claim(n, 4, &done, Millis(1), LEASE)
                    .await
                    .unwrap()
                    .assignments;
                if got.is_empty() {
                    return mine;
                }
                done = got
                    .iter()
                    .map(|a| result(a.run_id, Outcome::Succeeded))
                    .collect();
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
    assert_eq!(before, 300, "every job handed out");
    assert_eq!(all.len(), 300, "no job handed out twice");
    other.close().await;
}

async fn two_sweepers_expire_a_run_once(f: Fixture) {
    let other = Store::open(&f.url).await.unwrap();
    let mut once = job("flaky", &[]);
    once.retries = 1;
    f.store
        .submit_graph(&graph(vec![once]), Millis(0))
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    f.store.claim(n, 1, &[], Millis(0), LEASE).await.unwrap();
    let (a, b) = tokio::join!(
        f.store.expire_leases(Millis(3 * LEASE.get())),
        other.expire_leases(Millis(3 * LEASE.get()))
    );
    assert!(
        a.unwrap().ready ^ b.unwrap().ready,
        "exactly one sweeper expired it"
    );
    // One retry used: the job is pending again with its one run, not ended.
    assert_eq!(states(&f.store).await["flaky"], JobState::Pending);
    let second = f
        .store
        .claim(n, 1, &[], Millis(3 * LEASE.get()), LEASE)
        .await
        .unwrap();
    assert_eq!(second.assignments[0].run_number, 2);
    other.close().await;
}

async fn the_claim_reads_the_ready_index_not_every_job(f: Fixture) {
    // Thousands of finished jobs and a few ready ones: the claim must not read them all.
    let jobs: Vec<JobSpec> = (0..3000).map(|i| job(&format!("j{i}"), &[])).collect();
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    finish_all_but(&f.url, 5).await;
    f.store.analyze().await.unwrap();
    let plan = f.store.explain_claim().await.unwrap().join("\n");
    eprintln!("claim plan on {:?}:\n{plan}", f.store.dialect());
    assert!(plan.contains("jobs_ready"), "{plan}");
    // Small tables (one graph here) may be read whole for the per-row lookups; jobs never.
    assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    assert!(
        !plan.contains("SCAN jobs\n") && !plan.ends_with("SCAN jobs"),
        "{plan}"
    );
    let n = node(&f.store, "n1", &[]).await;
    let got = f.store.claim(n, 10, &[], Millis(1), LEASE).await.unwrap();
    assert_eq!(got.assignments.len(), 5);
}

async fn a_claim_finds_a_job_far_behind_jobs_it_cannot_run(f: Fixture) {
    // 300 ready jobs no node here can run, then one it can: a claim of one slot reads page
    // after page (each larger than the last) until it reaches it.
    let mut jobs: Vec<JobSpec> = (0..300)
        .map(|i| {
            let mut j = job(&format!("plan9-{i}"), &[]);
            j.node.os = Some("plan9".into());
            j
        })
        .collect();
    jobs.push(job("last", &[]));
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f.store.claim(n, 1, &[], Millis(1), LEASE).await.unwrap();
    assert_eq!(
        got.assignments
            .iter()
            .map(|a| a.job_name.as_str())
            .collect::<Vec<_>>(),
        ["last"]
    );
    // Affinity is one row read by key (schema 18), not a walk over a name's successes.
    if f.store.dialect() == lwr_store::Dialect::Sqlite {
        let plan = f.store.explain_claim().await.unwrap().join("\n");
        assert!(
            plan.contains("SEARCH a USING PRIMARY KEY (repository=? AND branch=? AND name=?)"),
            "{plan}"
        );
        assert!(!plan.contains("jobs_succeeded_name"), "{plan}");
    }
}

/// A graph of one job `build` (no retries) on `branch` of repository `r`.
fn pushed(branch: &str) -> SubmitGraph {
    SubmitGraph {
        repository: Some("r".into()),
        branch: Some(branch.into()),
        revision: Some("0".repeat(40)),
        ..graph(vec![JobSpec {
            retries: 0,
            ..job("build", &[])
        }])
    }
}

/// Claims one job on `node` at `at` and ends its run as `outcome`; returns the job's graph
/// and why the run went to the node.
async fn build_once(f: &Fixture, node: NodeId, outcome: Outcome, at: i64) -> (GraphId, String) {
    let got = f
        .store
        .claim(node, 1, &[], Millis(at), LEASE)
        .await
        .unwrap();
    let a = got.assignments.first().expect("a job to claim");
    f.store
        .report(node, &[result(a.run_id, outcome)], Millis(at + 1))
        .await
        .unwrap();
    let detail = f.store.job(a.job_id).await.unwrap();
    let placement = detail.run_history.last().and_then(|r| r.placement.clone());
    (a.graph_id, placement.unwrap_or_default())
}

async fn nothing_for(f: &Fixture, node: NodeId, at: i64) -> bool {
    let got = f
        .store
        .claim(node, 1, &[], Millis(at), LEASE)
        .await
        .unwrap();
    got.assignments.is_empty()
}

async fn affinity_is_the_newest_success_of_the_name_on_the_branch(f: Fixture) {
    const AFFINITY: &str = "affinity: last success of build on main";
    let wait = lwr_model::pool::DEFAULT_AFFINITY_WAIT_MS.get();
    let (n1, n2) = (
        node(&f.store, "n1", &[]).await,
        node(&f.store, "n2", &[]).await,
    );
    f.store
        .submit_graph(&pushed("main"), Millis(0))
        .await
        .unwrap();
    let (first, _) = build_once(&f, n1, Outcome::Succeeded, 10).await;
    // The same name on another branch is not main's affinity.
    f.store
        .submit_graph(&pushed("dev"), Millis(20))
        .await
        .unwrap();
    let (_, why) = build_once(&f, n2, Outcome::Succeeded, 30).await;
    assert_ne!(why, AFFINITY);
    // Main's next build waits for n1; a failure there changes nothing.
    f.store
        .submit_graph(&pushed("main"), Millis(40))
        .await
        .unwrap();
    assert!(nothing_for(&f, n2, 50).await, "main's build waits for n1");
    assert_eq!(build_once(&f, n1, Outcome::Failed, 60).await.1, AFFINITY);
    f.store
        .submit_graph(&pushed("main"), Millis(70))
        .await
        .unwrap();
    assert!(
        nothing_for(&f, n2, 80).await,
        "still n1's after its failure"
    );
    // Past the wait n2 builds main: the newest success is n2's, and n1 now waits for it.
    let late = 70 + wait + 10;
    build_once(&f, n2, Outcome::Succeeded, late).await;
    f.store
        .submit_graph(&pushed("main"), Millis(late + 10))
        .await
        .unwrap();
    assert!(
        nothing_for(&f, n1, late + 20).await,
        "main's build waits for n2"
    );
    let (newest, why) = build_once(&f, n2, Outcome::Succeeded, late + 30).await;
    assert_eq!(why, AFFINITY);
    // A success retention removed is no one's affinity: the next build goes to whoever asks.
    let mut graphs: Vec<GraphId> = f
        .store
        .jobs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.graph_id)
        .collect();
    graphs.dedup();
    let removed = f
        .store
        .remove_graphs(&graphs, Millis(late + 100))
        .await
        .unwrap();
    assert!(removed.graphs.contains(&newest) && removed.graphs.contains(&first));
    f.store
        .submit_graph(&pushed("main"), Millis(late + 200))
        .await
        .unwrap();
    assert_ne!(
        build_once(&f, n1, Outcome::Succeeded, late + 210).await.1,
        AFFINITY
    );
}

/// Ends all jobs but the last `keep`, behind the store's back: cancelled, as a job that never
/// ran may end (succeeded would need a run).
async fn finish_all_but(url: &str, keep: i64) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query("UPDATE jobs SET state = 'cancelled' WHERE id <= (SELECT MAX(id) FROM jobs) - $1")
        .bind(keep)
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn servers_starting_at_once_migrate_once(f: Fixture) {
    // The fixture migrated its own database; this test needs an empty one beside it.
    let admin = std::env::var(POSTGRES_URL_VAR).unwrap();
    let db = ScratchDb::create(&admin).await.unwrap();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every server starts"));
    }
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM lwr_schema")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        "n",
    );
    // One row per schema version: each migration ran once.
    assert_eq!(n, lwr_store::SCHEMA_VERSION, "the schema was migrated once");
    drop(conn);
    for s in stores {
        s.close().await;
    }
    db.drop_db().await.unwrap();
    let _ = f;
}

async fn changes_on_one_server_wake_the_other(f: Fixture) {
    let other = Store::open(&f.url).await.unwrap();
    let mut events = other.events().await.unwrap().expect("PostgreSQL listens");
    let retry = std::time::Duration::from_millis(100);
    let wait = std::time::Duration::from_secs(10);
    f.store
        .submit_graph(&graph(vec![job("a", &[]), job("b", &["a"])]), Millis(0))
        .await
        .unwrap();
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert_eq!(ev, Event::Wake(Effects::NEW_WORK));
    let n = node(&f.store, "n1", &[]).await;
    let got = f.store.claim(n, 1, &[], Millis(1), LEASE).await.unwrap();
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert_eq!(
        ev,
        Event::Wake(Effects::changed(false)),
        "a claim changes a job's state"
    );
    f.store
        .report(
            n,
            &[result(got.assignments[0].run_id, Outcome::Succeeded)],
            Millis(2),
        )
        .await
        .unwrap();
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert_eq!(
        ev,
        Event::Wake(Effects::NEW_WORK),
        "a's success made b ready"
    );
    // A server does not hear itself: its own waiters were woken in memory.
    other
        .submit_graph(&graph(vec![job("c", &[])]), Millis(3))
        .await
        .unwrap();
    f.store
        .submit_graph(&graph(vec![job("d", &[])]), Millis(4))
        .await
        .unwrap();
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert!(matches!(ev, Event::Wake(_)));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), events.next(retry))
            .await
            .is_err(),
        "only d's submission arrives"
    );
    // When the listening connection drops, the listener says so once it is back.
    kill_listeners(&f.url).await;
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert_eq!(ev, Event::Reconnected);
    f.store
        .submit_graph(&graph(vec![job("e", &[])]), Millis(5))
        .await
        .unwrap();
    let ev = tokio::time::timeout(wait, events.next(retry))
        .await
        .unwrap();
    assert!(
        matches!(ev, Event::Wake(_)),
        "listening again after reconnecting"
    );
    other.close().await;
}

async fn a_node_registering_again_through_another_server_is_seen_by_both(f: Fixture) {
    let other = Store::open(&f.url).await.unwrap();
    let mut events = other.events().await.unwrap().expect("PostgreSQL listens");
    let follower = tokio::spawn(async move {
        loop {
            events.next(std::time::Duration::from_millis(100)).await;
        }
    });
    let mut gpu = job("gpu", &[]);
    gpu.node.properties.insert("gpu".into(), "yes".into());
    f.store
        .submit_graph(&graph(vec![gpu]), Millis(0))
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    // The other server reads the node (and caches it): no gpu, no job.
    let got = other.claim(n, 1, &[], Millis(1), LEASE).await.unwrap();
    assert!(got.assignments.is_empty());
    // The node comes back with a gpu, registering through the first server.
    assert_eq!(node(&f.store, "n1", &[("gpu", "yes")]).await, n);
    let start = std::time::Instant::now();
    loop {
        let got = other.claim(n, 1, &[], Millis(2), LEASE).await.unwrap();
        if !got.assignments.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the other server still uses the node's old properties"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    follower.abort();
    other.close().await;
}

/// Ends every connection of the database that is listening for notifications.
async fn kill_listeners(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(
        "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
}

async fn cancelling_a_running_job_ends_its_run_and_blocks_dependents(f: Fixture) {
    f.store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("free", &[])]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 1, &[], Millis(1), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(got[0].job_name, "a");
    let cancelled = f.store.cancel_job(got[0].job_id, Millis(2)).await.unwrap();
    assert_eq!((cancelled.jobs, cancelled.runs), (1, 1));
    let s = states(&f.store).await;
    assert_eq!(s["a"], JobState::Cancelled);
    assert_eq!(s["b"], JobState::Blocked);
    assert_eq!(s["free"], JobState::Pending);
    // The node is told to drop the run, and its late result is refused.
    let abandon = f
        .store
        .heartbeat(n, &[got[0].run_id], Millis(3), LEASE)
        .await
        .unwrap();
    assert_eq!(abandon, [got[0].run_id]);
    let ok = RunResult::succeeded(got[0].run_id);
    let (acks, _) = f.store.report(n, &[ok], Millis(4)).await.unwrap();
    assert!(!acks[0].recorded);
    // An ended job cannot be cancelled again.
    let err = f
        .store
        .cancel_job(got[0].job_id, Millis(5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

async fn cancelling_a_graph_stops_everything_not_ended(f: Fixture) {
    let g = f
        .store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &[])]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    f.store.claim(n, 1, &[], Millis(1), LEASE).await.unwrap();
    let cancelled = f.store.cancel_graph(g, Millis(2)).await.unwrap();
    assert_eq!((cancelled.jobs, cancelled.runs), (3, 1));
    assert!(
        states(&f.store)
            .await
            .values()
            .all(|s| *s == JobState::Cancelled)
    );
    assert!(f.store.graph(g).await.unwrap().finished);
    assert!(matches!(
        f.store.cancel_graph(GraphId(999), Millis(3)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn retrigger_runs_a_job_again_with_its_dependents(f: Fixture) {
    let mut flaky = job("flaky", &[]);
    flaky.retries = 0;
    f.store
        .submit_graph(
            &graph(vec![
                flaky,
                job("after", &["flaky"]),
                job("last", &["after"]),
            ]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 1, &[], Millis(1), LEASE)
        .await
        .unwrap()
        .assignments;
    let failed = RunResult {
        node_bad: None,
        server_fault: false,
        unstarted: false,
        run_id: got[0].run_id,
        outcome: Outcome::Failed,
        exit_code: Some(1),
        reason: None,
    };
    f.store.report(n, &[failed], Millis(2)).await.unwrap();
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
    let err = f
        .store
        .retrigger(after_id, false, Millis(3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("retrigger flaky"), "{err}");

    let queued = f
        .store
        .retrigger(got[0].job_id, true, Millis(4))
        .await
        .unwrap();
    assert_eq!(queued.len(), 3);
    let s = states(&f.store).await;
    assert!(s.values().all(|st| *st == JobState::Pending), "{s:?}");
    let again = f
        .store
        .claim(n, 10, &[], Millis(5), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(again.len(), 1, "dependents wait for the new run");
    assert_eq!(
        (again[0].job_name.as_str(), again[0].run_number),
        ("flaky", 2)
    );
    let ok = RunResult::succeeded(again[0].run_id);
    let claimed = f.store.claim(n, 10, &[ok], Millis(6), LEASE).await.unwrap();
    assert_eq!(claimed.assignments[0].job_name, "after");
    // A pending or running job is not retriggered.
    let err = f
        .store
        .retrigger(claimed.assignments[0].job_id, false, Millis(7))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

/// Found by the model comparison (`tests/iteration.rs`): a job retried after an
/// infrastructure error kept the count of unmet needs it was claimed with, so when a need had
/// been retriggered on its own meanwhile, the retry ran before the need's new run, and a
/// need that failed meanwhile left it pending for ever.
async fn a_retried_job_waits_for_a_need_that_runs_again(f: Fixture) {
    f.store.set_pool_config(lwr_store::PoolConfig {
        quarantine_after: 0,
        ..Default::default()
    });
    f.store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &["b"])]),
            Millis(0),
        )
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let claim = |max, results: Vec<RunResult>, now| {
        let store = f.store.clone();
        async move {
            store
                .claim(n, max, &results, now, LEASE)
                .await
                .unwrap()
                .assignments
        }
    };
    let a = claim(1, vec![], Millis(1)).await.remove(0);
    let b = claim(1, vec![result(a.run_id, Outcome::Succeeded)], Millis(2))
        .await
        .remove(0);
    assert_eq!(b.job_name, "b");
    // a runs again on its own while b runs; b's node is lost.
    f.store.retrigger(a.job_id, false, Millis(3)).await.unwrap();
    let next = claim(10, vec![result(b.run_id, Outcome::Exception)], Millis(4)).await;
    let names: Vec<&str> = next.iter().map(|x| x.job_name.as_str()).collect();
    assert_eq!(names, ["a"], "b waits for a's new run");
    let again = claim(
        10,
        vec![result(next[0].run_id, Outcome::Succeeded)],
        Millis(5),
    )
    .await;
    assert_eq!(again[0].job_name, "b");

    // The same, but a's new run fails: b's retry can never run, so b and c are blocked.
    f.store.retrigger(a.job_id, false, Millis(6)).await.unwrap();
    let a3 = claim(1, vec![], Millis(7)).await.remove(0);
    f.store
        .report(n, &[result(a3.run_id, Outcome::Failed)], Millis(8))
        .await
        .unwrap();
    assert_eq!(states(&f.store).await["b"], JobState::Running);
    let none = claim(
        10,
        vec![result(again[0].run_id, Outcome::Exception)],
        Millis(9),
    )
    .await;
    assert!(none.is_empty());
    let s = states(&f.store).await;
    assert_eq!((s["b"], s["c"]), (JobState::Blocked, JobState::Blocked));
}

/// A run its node gave back unstarted (claimed ahead of a slot that did not free) sends its
/// job back to the queue as it was: no retry spent, no infrastructure error counted.
async fn a_run_given_back_unstarted_spends_no_retry(f: Fixture) {
    // No retries: an exception ends a job, unless its run was given back unstarted.
    let no_retries = |name: &str, needs: &[&str]| JobSpec {
        retries: 0,
        ..job(name, needs)
    };
    let jobs = vec![no_retries("a", &[]), job("b", &["a"]), no_retries("c", &[])];
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f.store.claim(n, 2, &[], Millis(1), LEASE).await.unwrap();
    let run = |name: &str| {
        got.assignments
            .iter()
            .find(|a| a.job_name == name)
            .map(|a| a.run_id)
            .unwrap()
    };
    let given_back = RunResult {
        unstarted: true,
        reason: Some("given back unstarted: no slot freed".into()),
        ..result(run("a"), Outcome::Exception)
    };
    // c's exception ends it, as before, and counts against the node.
    let (acks, effects) = f
        .store
        .report(
            n,
            &[result(run("c"), Outcome::Exception), given_back],
            Millis(2),
        )
        .await
        .unwrap();
    assert!(acks.iter().all(|a| a.recorded), "{acks:?}");
    assert!(effects.ready, "a is back in the queue");
    let s = states(&f.store).await;
    assert_eq!((s["a"], s["c"]), (JobState::Pending, JobState::Exception));
    let a = f.store.jobs(None).await.unwrap();
    let a = a.iter().find(|j| j.name == "a").unwrap();
    assert!(
        a.reason
            .as_deref()
            .unwrap()
            .contains("given back unstarted")
    );
    // The run given back neither counts against the node nor ends its errors in a row.
    assert_eq!(f.store.node(n, Millis(2)).await.unwrap().infra_errors, 1);
    let again = f.store.claim(n, 2, &[], Millis(3), LEASE).await.unwrap();
    assert_eq!(again.assignments.len(), 1);
    assert_eq!(
        (
            again.assignments[0].job_name.as_str(),
            again.assignments[0].run_number
        ),
        ("a", 2)
    );
    // The flag means nothing with another outcome.
    let done = RunResult {
        unstarted: true,
        ..result(again.assignments[0].run_id, Outcome::Succeeded)
    };
    f.store.report(n, &[done], Millis(4)).await.unwrap();
    let s = states(&f.store).await;
    assert_eq!((s["a"], s["b"]), (JobState::Succeeded, JobState::Pending));
}

/// Claims one job on `node` at `now` and reports `outcome` for it; the node's state after.
async fn run_one(store: &Store, node: NodeId, now: Millis, outcome: Outcome) -> (String, u32) {
    let got = store.claim(node, 1, &[], now, LEASE).await.unwrap();
    let run = got.assignments[0].run_id;
    let (acks, _) = store
        .report(node, &[result(run, outcome)], now)
        .await
        .unwrap();
    assert!(acks[0].recorded);
    let info = store.node(node, now).await.unwrap();
    (info.state, info.infra_errors)
}

async fn only_infrastructure_errors_in_a_row_quarantine_a_node(f: Fixture) {
    let jobs = (0..8).map(|i| job(&format!("j{i}"), &[])).collect();
    f.store.submit_graph(&graph(jobs), Millis(0)).await.unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let s = &f.store;
    assert_eq!(
        run_one(s, n, Millis(1), Outcome::Exception).await,
        ("idle".into(), 1)
    );
    assert_eq!(run_one(s, n, Millis(2), Outcome::Exception).await.1, 2);
    // A run that ends otherwise (a job's own failure counts as fine) clears the count.
    assert_eq!(run_one(s, n, Millis(3), Outcome::Failed).await.1, 0);
    assert_eq!(run_one(s, n, Millis(4), Outcome::Exception).await.1, 1);
    assert_eq!(run_one(s, n, Millis(5), Outcome::Succeeded).await.1, 0);
    assert_eq!(run_one(s, n, Millis(6), Outcome::Exception).await.1, 1);
    assert_eq!(run_one(s, n, Millis(7), Outcome::Exception).await.1, 2);
    let (state, errors) = run_one(s, n, Millis(8), Outcome::Exception).await;
    assert_eq!((state.as_str(), errors), ("quarantined", 3));
    assert!(
        s.claim(n, 1, &[], Millis(9), LEASE)
            .await
            .unwrap()
            .assignments
            .is_empty(),
        "a quarantined node gets no work"
    );
}

/// A job token reads while its run runs, on every server of the database (the signing key
/// is in the database), and not after the run ended; another run's MAC is no token at all.
async fn a_job_token_reads_only_while_its_run_runs(f: Fixture) {
    use lwr_store::TokenCheck;
    f.store
        .submit_graph(&graph(vec![job("a", &[]), job("b", &[])]), Millis(0))
        .await
        .unwrap();
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 10, &[], Millis(1), LEASE)
        .await
        .unwrap()
        .assignments;
    let (a, b) = (got[0].run_id, got[1].run_id);
    let token = f.store.job_token(a).await.unwrap();
    // A second store on the database is what a second server is: same key, same answer.
    let other = Store::open(&f.url).await.unwrap();
    assert_eq!(other.job_token(a).await.unwrap(), token);
    for store in [&f.store, &other] {
        match store.check_token(&token, Millis(2)).await.unwrap() {
            TokenCheck::Valid(caller) => {
                assert_eq!(caller.scopes.to_string(), "read");
                assert!(caller.token_id < 0, "bound to no node: {caller:?}");
            }
            wrong => panic!("a running run's token: {wrong:?}"),
        }
    }
    // b's MAC on a's run id: not a token.
    let b_token = f.store.job_token(b).await.unwrap();
    let mac = b_token.rsplit('_').next().unwrap();
    let swapped = format!("lwrjob_{a}_{mac}");
    assert_eq!(
        f.store.check_token(&swapped, Millis(2)).await.unwrap(),
        TokenCheck::Unknown
    );
    f.store
        .report(n, &[result(a, Outcome::Succeeded)], Millis(3))
        .await
        .unwrap();
    assert_eq!(
        f.store.check_token(&token, Millis(4)).await.unwrap(),
        TokenCheck::Expired
    );
    assert!(matches!(
        other.check_token(&b_token, Millis(4)).await.unwrap(),
        TokenCheck::Valid(_)
    ));
    other.close().await;
}

/// Revoking by label prefix compares plain text: `_` and `%` are no wildcards, case counts.
async fn tokens_are_revoked_by_label_prefix_as_plain_text(f: Fixture) {
    let scopes = lwr_model::Scopes(vec![lwr_model::Scope::Read]);
    for label in ["dir /a_b", "dir /axb", "dir /a_b/c", "DIR /a_b"] {
        f.store
            .create_token(&scopes, Some(label), None, Millis(0))
            .await
            .unwrap();
    }
    let revoke = |prefix: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .revoke_tokens_labelled(prefix, Millis(1))
                .await
                .unwrap()
        }
    };
    assert_eq!(revoke("dir /a_b/").await, 1);
    assert_eq!(revoke("dir /a_").await, 1, "dir /a_b, not dir /axb");
    assert_eq!(revoke("dir /a%").await, 0);
    let active: Vec<Option<String>> = f
        .store
        .tokens(Millis(2))
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.state == "active")
        .map(|t| t.label)
        .collect();
    assert_eq!(active, [Some("dir /axb".into()), Some("DIR /a_b".into())]);
}

/// A pending job says what it waits for: its needs that have not succeeded, or a node.
async fn pending_jobs_say_what_they_wait_for(f: Fixture) {
    let info = f
        .store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &[]), job("c", &["a", "b"])]),
            Millis(0),
        )
        .await
        .unwrap();
    let reasons = |jobs: Vec<lwr_model::api::JobInfo>| -> BTreeMap<String, Option<String>> {
        jobs.into_iter().map(|j| (j.name, j.reason)).collect()
    };
    let now = reasons(f.store.jobs(Some(info)).await.unwrap());
    assert_eq!(now["a"].as_deref(), Some("ready, waiting for a node"));
    assert_eq!(now["c"].as_deref(), Some("waits for a, b"));
    let n = node(&f.store, "n1", &[]).await;
    let got = f
        .store
        .claim(n, 1, &[], Millis(1), LEASE)
        .await
        .unwrap()
        .assignments;
    assert_eq!(got[0].job_name, "a");
    f.store
        .report(n, &[result(got[0].run_id, Outcome::Succeeded)], Millis(2))
        .await
        .unwrap();
    let now = reasons(f.store.jobs(None).await.unwrap());
    assert_eq!(now["a"], None, "a succeeded: nothing to say");
    assert_eq!(now["c"].as_deref(), Some("waits for b"));
}

/// The web app's views: graphs newest first with their filters, their jobs with the times
/// of the latest run, a graph's edges, the running jobs; author and subject as submitted.
async fn views_list_graphs_jobs_and_edges(f: Fixture) {
    let mut ids = Vec::new();
    for (i, branch) in ["main", "dev", "main"].into_iter().enumerate() {
        let mut sub = graph(vec![
            job("build", &[]),
            job(&format!("test-{i}"), &["build"]),
        ]);
        sub.repository = Some("https://example.org/app.git".into());
        sub.branch = Some(branch.into());
        sub.revision = Some(format!("{i:040}"));
        sub.author = Some("Ann <ann@example.org>".into());
        sub.subject = Some(format!("change {i}"));
        ids.push(
            f.store
                .submit_graph(&sub, Millis(10 + i as i64))
                .await
                .unwrap(),
        );
    }
    let info = f.store.graph(ids[1]).await.unwrap();
    assert_eq!(info.author.as_deref(), Some("Ann <ann@example.org>"));
    assert_eq!(info.subject.as_deref(), Some("change 1"));
    let list = |filter: lwr_store::GraphFilter| {
        let store = f.store.clone();
        async move {
            store
                .graph_summaries(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|g| g.id)
                .collect::<Vec<_>>()
        }
    };
    let all = lwr_store::GraphFilter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(list(all.clone()).await, vec![ids[2], ids[1], ids[0]]);
    let page = lwr_store::GraphFilter {
        before: Some(ids[2]),
        limit: 1,
        ..all.clone()
    };
    assert_eq!(list(page).await, vec![ids[1]]);
    let main = lwr_store::GraphFilter {
        branch: Some("main".into()),
        ..all.clone()
    };
    assert_eq!(list(main).await, vec![ids[2], ids[0]]);
    let by_job = lwr_store::GraphFilter {
        job: Some("TEST-1".into()),
        ..all.clone()
    };
    assert_eq!(
        list(by_job).await,
        vec![ids[1]],
        "job text matches any case"
    );
    let wildcard = lwr_store::GraphFilter {
        job: Some("%".into()),
        ..all.clone()
    };
    assert_eq!(
        list(wildcard).await,
        Vec::<lwr_model::GraphId>::new(),
        "% is a character, not a wildcard"
    );

    // Run the first graph's build: it is running, with a start time, on its node.
    let n = node(&f.store, "n1", &[]).await;
    let claimed = f.store.claim(n, 1, &[], Millis(100), LEASE).await.unwrap();
    assert_eq!(claimed.assignments[0].graph_id, ids[0]);
    let running = lwr_store::GraphFilter {
        state: Some(JobState::Running),
        ..all.clone()
    };
    assert_eq!(list(running).await, vec![ids[0]]);
    let cells = f.store.job_cells(&[ids[0], ids[1]]).await.unwrap();
    assert_eq!(cells.len(), 4);
    let build = &cells[0];
    assert_eq!(
        (build.graph_id, build.name.as_str(), build.state),
        (ids[0], "build", JobState::Running)
    );
    assert_eq!(
        (build.started_at, build.finished_at, build.node.as_deref()),
        (Some(Millis(100)), None, Some("n1"))
    );
    assert_eq!(
        cells[2].started_at, None,
        "a job that never ran has no times"
    );
    let run_id = claimed.assignments[0].run_id;
    assert_eq!(
        f.store
            .running_jobs()
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect::<Vec<_>>(),
        vec![build.id]
    );
    f.store
        .report(n, &[result(run_id, Outcome::Succeeded)], Millis(250))
        .await
        .unwrap();
    let cells = f.store.job_cells(&[ids[0]]).await.unwrap();
    assert_eq!(
        (cells[0].state, cells[0].finished_at),
        (JobState::Succeeded, Some(Millis(250)))
    );
    assert!(f.store.running_jobs().await.unwrap().is_empty());
    let edges = f.store.graph_edges(ids[0]).await.unwrap();
    assert_eq!(edges, vec![(cells[0].id, cells[1].id)]);
    assert!(f.store.job_cells(&[]).await.unwrap().is_empty());
}

/// A claim is durable once answered: its results and the runs it hands out are seen by a
/// second store on the same database. On SQLite the COMMIT goes along with the take; this
/// holds for claims through the combiner (none or plain successes sent along), for a claim
/// alone (a failure sent along), and for a take of more jobs than one statement marks.
async fn a_claim_is_committed_when_it_is_answered(f: Fixture) {
    let g = f
        .store
        .submit_graph(
            &graph(vec![job("a", &[]), job("b", &["a"]), job("c", &["b"])]),
            Millis(1),
        )
        .await
        .unwrap();
    let n1 = node(&f.store, "n1", &[]).await;
    let other = Store::open(&f.url).await.unwrap();
    let seen = async || -> BTreeMap<String, JobState> {
        let jobs = other.jobs(Some(g)).await.unwrap();
        jobs.into_iter().map(|j| (j.name, j.state)).collect()
    };
    let want = |states: [(&str, JobState); 3]| -> BTreeMap<String, JobState> {
        states
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect()
    };
    use JobState::{Failed, Pending, Running, Succeeded};
    // No results: through the combiner (the test's runtime has several threads).
    let first = f.store.claim(n1, 1, &[], Millis(2), LEASE).await.unwrap();
    assert_eq!(first.assignments[0].job_name, "a");
    assert_eq!(
        seen().await,
        want([("a", Running), ("b", Pending), ("c", Pending)])
    );
    // A plain success along with the next claim: through the combiner too.
    let ok = RunResult::succeeded(first.assignments[0].run_id);
    let second = f.store.claim(n1, 1, &[ok], Millis(3), LEASE).await.unwrap();
    assert!(second.acks.iter().all(|a| a.recorded), "{:?}", second.acks);
    assert_eq!(second.assignments[0].job_name, "b");
    assert_eq!(
        seen().await,
        want([("a", Succeeded), ("b", Running), ("c", Pending)])
    );
    // Alone again: a failure without retries left goes through a transaction of its own.
    let failed = RunResult {
        outcome: Outcome::Failed,
        exit_code: Some(1),
        reason: Some("exit code 1".into()),
        ..RunResult::succeeded(second.assignments[0].run_id)
    };
    let mut result = failed;
    let mut at = 4;
    loop {
        let next = f
            .store
            .claim(n1, 1, &[result.clone()], Millis(at), LEASE)
            .await
            .unwrap();
        assert!(next.acks.iter().all(|a| a.recorded), "{:?}", next.acks);
        at += 1;
        // `b` runs again while it has retries left, each run seen running.
        match next.assignments.first() {
            Some(again) => {
                assert_eq!(again.job_name, "b");
                assert_eq!(
                    seen().await,
                    want([("a", Succeeded), ("b", Running), ("c", Pending)])
                );
                result.run_id = again.run_id;
            }
            None => break,
        }
    }
    assert_eq!(seen().await["b"], Failed);

    // A take of more jobs than one statement marks (64): every one committed.
    let wide: Vec<JobSpec> = (0..100).map(|i| job(&format!("w{i}"), &[])).collect();
    let g = f
        .store
        .submit_graph(&graph(wide), Millis(at))
        .await
        .unwrap();
    let n2 = node(&f.store, "n2", &[]).await;
    let many = f
        .store
        .claim(n2, 100, &[], Millis(at + 1), LEASE)
        .await
        .unwrap();
    assert_eq!(many.assignments.len(), 100);
    let running = other.jobs(Some(g)).await.unwrap();
    assert!(
        running.iter().all(|j| j.state == Running),
        "{:?}",
        running
            .iter()
            .filter(|j| j.state != Running)
            .map(|j| &j.name)
            .collect::<Vec<_>>()
    );
    other.close().await;
}

on_both_backends!(
    a_claim_is_committed_when_it_is_answered,
    views_list_graphs_jobs_and_edges,
    a_job_token_reads_only_while_its_run_runs,
    pending_jobs_say_what_they_wait_for,
    tokens_are_revoked_by_label_prefix_as_plain_text,
    only_infrastructure_errors_in_a_row_quarantine_a_node,
    a_run_given_back_unstarted_spends_no_retry,
    only_ready_jobs_are_claimed_and_success_releases_dependents,
    every_job_a_claim_takes_gets_its_own_needs_manifests,
    a_claim_counts_the_jobs_it_released_and_did_not_take,
    concurrent_claims_never_hand_a_job_twice,
    claims_arriving_together_are_each_answered_as_if_alone,
    failure_blocks_every_transitive_dependent_but_not_others,
    expired_leases_retry_then_end_in_exception,
    a_result_is_recorded_once_and_only_from_its_node,
    jobs_go_only_to_nodes_that_meet_their_requirements,
    invalid_graphs_are_refused_and_store_nothing,
    leases_are_extended_when_a_server_starts,
    a_database_from_a_newer_lwr_is_refused,
    a_newer_schema_inside_the_window_is_run_on,
    the_claim_reads_the_ready_index_not_every_job,
    a_claim_finds_a_job_far_behind_jobs_it_cannot_run,
    affinity_is_the_newest_success_of_the_name_on_the_branch,
    cancelling_a_running_job_ends_its_run_and_blocks_dependents,
    cancelling_a_graph_stops_everything_not_ended,
    retrigger_runs_a_job_again_with_its_dependents,
    a_retried_job_waits_for_a_need_that_runs_again,
);

// Several servers share a database only on PostgreSQL; SQLite has one server per file.
on_postgres!(
    two_servers_on_one_database_never_hand_out_a_job_twice,
    two_sweepers_expire_a_run_once,
    servers_starting_at_once_migrate_once,
    changes_on_one_server_wake_the_other,
    a_node_registering_again_through_another_server_is_seen_by_both,
);
