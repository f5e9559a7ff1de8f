//! Graph iteration, model against store: random graphs (1 to 12 jobs, random needs, retries
//! and `requires: all-finished`) and random sequences of claims, results, lease expiries,
//! cancels and retriggers go through the in-memory model (`lwr_model::iteration`) and a real
//! store side by side. After every step each job's state, `unmet`, retries left and runs
//! must be the same in both, the answers of the step too, and the store's invariants must
//! hold. A difference fails with the smallest case proptest shrinks it to.
//!
//! 10,000 cases on SQLite (one store reused, emptied between cases; about a minute and a
//! half on one idle core, each case up to 12 steps); 200 on PostgreSQL, which runs like the
//! other PostgreSQL store tests. The cases run as two tests of half each, on stores of their
//! own, so the test threads share them out. `PROPTEST_CASES` overrides each half.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};

use lwr_model::api::{Outcome, RegisterNode, RunResult, SubmitGraph};
use lwr_model::iteration::{Iteration, IterationError, RunRef};
use lwr_model::{
    DurationMs, Graph, GraphId, JobId, JobSpec, JobState, Millis, NodeId, Requires, RunId, RunState,
};
use lwr_store::{Dialect, PoolConfig, Store, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use sqlx::Row;

#[macro_use]
mod common;
use common::Fixture;

const LEASE: DurationMs = DurationMs(30_000);
const SQLITE_CASES: u32 = 10_000;
// Each step commits, and PostgreSQL syncs each commit: 200 cases take about 25 s.
const POSTGRES_CASES: u32 = 200;

/// One job of a generated graph: its needs are jobs generated before it, so the graph is
/// acyclic; the order jobs are listed in (and so their ids) is shuffled separately.
#[derive(Debug, Clone)]
struct GenJob {
    needs: Vec<usize>,
    retries: u32,
    all_finished: bool,
}

/// A step. `pick` chooses among the candidates of the moment (live runs, jobs...) modulo
/// their number, so every generated step means something whatever came before it.
#[derive(Debug, Clone)]
enum Step {
    Claim {
        max: u32,
    },
    /// A live run's result, sent alone or riding on a claim for nothing more.
    Report {
        pick: usize,
        outcome: Outcome,
        via_claim: bool,
    },
    /// A result again for a run that already ended (a node retrying, or a stale one).
    Repeat {
        pick: usize,
        outcome: Outcome,
    },
    /// Time passes beyond the leases; the live runs whose bit is set in `keep` are renewed
    /// by a heartbeat first, the others expire.
    Expire {
        keep: u16,
    },
    Cancel {
        pick: usize,
    },
    CancelGraph,
    Retrigger {
        pick: usize,
        with_dependents: bool,
    },
}

#[derive(Debug, Clone)]
struct Case {
    jobs: Vec<GenJob>,
    /// The order the jobs are listed in the graph (a permutation of their indices).
    order: Vec<usize>,
    steps: Vec<Step>,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Succeeded),
        1 => Just(Outcome::Failed),
        2 => Just(Outcome::Exception),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u32..=4).prop_map(|max| Step::Claim { max }),
        6 => (0usize..12, outcome(), any::<bool>())
            .prop_map(|(pick, outcome, via_claim)| Step::Report { pick, outcome, via_claim }),
        1 => (0usize..12, outcome()).prop_map(|(pick, outcome)| Step::Repeat { pick, outcome }),
        1 => any::<u16>().prop_map(|keep| Step::Expire { keep }),
        1 => (0usize..12).prop_map(|pick| Step::Cancel { pick }),
        1 => Just(Step::CancelGraph),
        2 => (0usize..12, any::<bool>())
            .prop_map(|(pick, with_dependents)| Step::Retrigger { pick, with_dependents }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=12)
        .prop_flat_map(|n| {
            let jobs: Vec<_> = (0..n)
                .map(|i| {
                    (
                        proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)),
                        0u32..=2,
                        proptest::bool::weighted(0.2),
                    )
                        .prop_map(|(needs, retries, all_finished)| GenJob {
                            needs,
                            retries,
                            all_finished,
                        })
                })
                .collect();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (jobs, order, proptest::collection::vec(step(), 1..=12))
        })
        .prop_map(|(jobs, order, steps)| Case { jobs, order, steps })
}

fn name(i: usize) -> String {
    format!("j{i}")
}

impl Case {
    fn graph(&self) -> SubmitGraph {
        let jobs = self
            .order
            .iter()
            .map(|&i| {
                let g = &self.jobs[i];
                let mut spec: JobSpec = serde_json::from_value(
                    serde_json::json!({"name": name(i), "run": "true", "retries": g.retries}),
                )
                .expect("a valid job spec");
                spec.needs = g.needs.iter().map(|&n| name(n)).collect();
                if g.all_finished {
                    spec.requires = Requires::AllFinished;
                }
                spec
            })
            .collect();
        SubmitGraph::new(Graph { jobs })
    }
}

/// The store under test, reused by every case, and what a case needs of it.
struct Bench {
    store: Store,
    /// A connection of the test's own, to empty the tables and read columns the API hides.
    raw: sqlx::AnyPool,
    node: NodeId,
    /// The clock, moving forward across cases.
    clock: AtomicI64,
}

impl Bench {
    fn tick(&self, by: DurationMs) -> Millis {
        Millis(self.clock.fetch_add(by.get(), Ordering::Relaxed) + by.get())
    }
}

/// What the store says about one job, for comparing with the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: String,
    state: JobState,
    unmet: i64,
    retries_left: i64,
    runs: Vec<RunState>,
}

async fn seen_in_store(b: &Bench, graph: GraphId) -> Result<BTreeMap<i64, Seen>, TestCaseError> {
    let db = |e: sqlx::Error| TestCaseError::fail(format!("reading the store: {e}"));
    let mut jobs: BTreeMap<i64, Seen> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT j.id, j.name, j.state, j.unmet, j.retries_left, r.state AS run \
         FROM jobs j LEFT JOIN runs r ON r.job_id = j.id \
         WHERE j.graph_id = $1 ORDER BY j.id, r.number",
    )
    .bind(graph.get())
    .fetch_all(&b.raw)
    .await
    .map_err(db)?;
    for row in rows {
        let id: i64 = row.get("id");
        if let std::collections::btree_map::Entry::Vacant(slot) = jobs.entry(id) {
            let state: String = row.get("state");
            slot.insert(Seen {
                name: row.get("name"),
                state: JobState::parse(&state)
                    .ok_or_else(|| TestCaseError::fail(format!("job state {state}")))?,
                unmet: row.get("unmet"),
                retries_left: row.get("retries_left"),
                runs: Vec::new(),
            });
        }
        if let Some(run) = row.get::<Option<String>, _>("run") {
            let state = RunState::parse(&run)
                .ok_or_else(|| TestCaseError::fail(format!("run state {run}")))?;
            jobs.entry(id).and_modify(|j| j.runs.push(state));
        }
    }
    Ok(jobs)
}

fn seen_in_model(m: &Iteration) -> BTreeMap<i64, Seen> {
    m.jobs()
        .map(|j| {
            (
                j.id.get(),
                Seen {
                    name: j.name.clone(),
                    state: j.state,
                    unmet: j.unmet,
                    retries_left: j.retries_left,
                    runs: j.runs.clone(),
                },
            )
        })
        .collect()
}

/// A refusal as both sides name it, or the store's error when it is not a refusal.
fn store_refusal(e: StoreError) -> Result<&'static str, TestCaseError> {
    match e {
        StoreError::Conflict(_) => Ok("conflict"),
        StoreError::NotFound { .. } => Ok("not found"),
        other => Err(TestCaseError::fail(format!("store error: {other}"))),
    }
}

fn model_refusal(e: IterationError) -> &'static str {
    match e {
        IterationError::Conflict(_) => "conflict",
        _ => "not found",
    }
}

fn result(run_id: RunId, outcome: Outcome) -> RunResult {
    RunResult {
        node_bad: None,
        server_fault: false,
        unstarted: false,
        run_id,
        outcome,
        exit_code: match outcome {
            Outcome::Succeeded => Some(0),
            Outcome::Failed => Some(1),
            Outcome::Exception => None,
        },
        reason: None,
    }
}

fn differ<T: std::fmt::Debug>(what: &str, store: T, model: T) -> TestCaseError {
    TestCaseError::fail(format!("{what}: store {store:?}, model {model:?}"))
}

async fn empty_tables(b: &Bench) -> Result<(), TestCaseError> {
    sqlx::raw_sql(
        "BEGIN; DELETE FROM runs; DELETE FROM job_needs; DELETE FROM jobs; \
         DELETE FROM graphs; COMMIT",
    )
    .execute(&b.raw)
    .await
    .map_err(|e| TestCaseError::fail(format!("emptying the tables: {e}")))?;
    Ok(())
}

async fn one_case(b: &Bench, case: &Case) -> Result<(), TestCaseError> {
    empty_tables(b).await?;
    let sub = case.graph();
    let graph = b
        .store
        .submit_graph(&sub, b.tick(DurationMs(1)))
        .await
        .map_err(|e| TestCaseError::fail(format!("submitting: {e}")))?;
    let ids: HashMap<String, i64> = sqlx::query("SELECT id, name FROM jobs WHERE graph_id = $1")
        .bind(graph.get())
        .fetch_all(&b.raw)
        .await
        .map_err(|e| TestCaseError::fail(format!("reading ids: {e}")))?
        .iter()
        .map(|r| (r.get("name"), r.get("id")))
        .collect();
    let mut model = Iteration::new();
    let specs: Vec<(JobId, &JobSpec)> = sub
        .graph
        .jobs
        .iter()
        .map(|s| (JobId(ids[&s.name]), s))
        .collect();
    model
        .submit(graph, &specs)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Job ids by generated index, for picks.
    let by_index: Vec<JobId> = (0..case.jobs.len()).map(|i| JobId(ids[&name(i)])).collect();
    let mut run_ids: HashMap<RunRef, RunId> = HashMap::new();
    for (i, step) in case.steps.iter().enumerate() {
        let reached = apply(b, &mut model, &mut run_ids, graph, &by_index, step)
            .await
            .map_err(|e| TestCaseError::fail(format!("step {i} ({step:?}): {e}")))?;
        if !reached {
            continue;
        }
        let store = seen_in_store(b, graph).await?;
        let expected = seen_in_model(&model);
        if store != expected {
            let diff: Vec<String> = expected
                .iter()
                .filter(|(id, m)| store.get(id) != Some(m))
                .map(|(id, m)| format!("job {id}: store {:?}, model {m:?}", store.get(id)))
                .collect();
            return Err(TestCaseError::fail(format!(
                "after step {i} ({step:?}) store and model differ:\n  {}",
                diff.join("\n  ")
            )));
        }
        if let Err(e) = b.store.check_invariants().await {
            return Err(TestCaseError::fail(format!(
                "after step {i} ({step:?}): {e}"
            )));
        }
    }
    Ok(())
}

/// Runs `step` on the store and the model and compares their answers. Returns whether it
/// reached the store (a result needs a run to be about).
async fn apply(
    b: &Bench,
    model: &mut Iteration,
    run_ids: &mut HashMap<RunRef, RunId>,
    graph: GraphId,
    jobs: &[JobId],
    step: &Step,
) -> Result<bool, TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(format!("store error: {e}"));
    let now = b.tick(DurationMs(1));
    match *step {
        Step::Claim { max } => {
            let got = b
                .store
                .claim(b.node, max, &[], now, LEASE)
                .await
                .map_err(fail)?;
            let store: Vec<RunRef> = got
                .assignments
                .iter()
                .map(|a| RunRef {
                    job: a.job_id,
                    number: a.run_number,
                })
                .collect();
            for (r, a) in store.iter().zip(&got.assignments) {
                run_ids.insert(*r, a.run_id);
            }
            let expected = model.claim(max);
            if store != expected {
                return Err(differ("claimed", store, expected));
            }
        }
        Step::Report {
            pick,
            outcome,
            via_claim,
        } => {
            let live = model.live_runs();
            if live.is_empty() {
                return Ok(false);
            }
            let run = live[pick % live.len()];
            let results = [result(run_ids[&run], outcome)];
            let acks = if via_claim {
                let got = b
                    .store
                    .claim(b.node, 0, &results, now, LEASE)
                    .await
                    .map_err(fail)?;
                got.acks
            } else {
                b.store.report(b.node, &results, now).await.map_err(fail)?.0
            };
            let recorded = model.report(run, outcome);
            if acks.len() != 1 || acks[0].recorded != recorded {
                return Err(differ(
                    "recorded",
                    format!("{acks:?}"),
                    recorded.to_string(),
                ));
            }
        }
        Step::Repeat { pick, outcome } => {
            let ended = model.ended_runs();
            if ended.is_empty() {
                return Ok(false);
            }
            let run = ended[pick % ended.len()];
            let (acks, _) = b
                .store
                .report(b.node, &[result(run_ids[&run], outcome)], now)
                .await
                .map_err(fail)?;
            let recorded = model.report(run, outcome);
            if acks.len() != 1 || acks[0].recorded != recorded {
                return Err(differ(
                    "recorded again",
                    format!("{acks:?}"),
                    recorded.to_string(),
                ));
            }
        }
        Step::Expire { keep } => {
            let live = model.live_runs();
            let renewed = |i: usize| keep & (1 << (i % 16)) != 0;
            let kept: Vec<RunId> = live
                .iter()
                .enumerate()
                .filter(|(i, _)| renewed(*i))
                .map(|(_, r)| run_ids[r])
                .collect();
            let lost: Vec<RunRef> = live
                .iter()
                .enumerate()
                .filter(|(i, _)| !renewed(*i))
                .map(|(_, r)| *r)
                .collect();
            let later = b.tick(DurationMs(LEASE.get() + 1));
            let dropped = b
                .store
                .heartbeat(b.node, &kept, later, LEASE)
                .await
                .map_err(fail)?;
            if !dropped.is_empty() {
                return Err(differ("runs dropped by the heartbeat", dropped, vec![]));
            }
            b.store
                .expire_leases(b.tick(DurationMs(1)))
                .await
                .map_err(fail)?;
            model.expire(&lost);
        }
        Step::Cancel { pick } => {
            let job = jobs[pick % jobs.len()];
            let store = match b.store.cancel_job(job, now).await {
                Ok(c) => Ok((c.jobs, c.runs)),
                Err(e) => Err(store_refusal(e)?),
            };
            let expected = model
                .cancel_job(job)
                .map(|c| (c.jobs, c.runs))
                .map_err(model_refusal);
            if store != expected {
                return Err(differ("cancelled", store, expected));
            }
        }
        Step::CancelGraph => {
            let store = match b.store.cancel_graph(graph, now).await {
                Ok(c) => Ok((c.jobs, c.runs)),
                Err(e) => Err(store_refusal(e)?),
            };
            let expected = model
                .cancel_graph(graph)
                .map(|c| (c.jobs, c.runs))
                .map_err(model_refusal);
            if store != expected {
                return Err(differ("cancelled graph", store, expected));
            }
        }
        Step::Retrigger {
            pick,
            with_dependents,
        } => {
            let job = jobs[pick % jobs.len()];
            let store = match b.store.retrigger(job, with_dependents, now).await {
                Ok(targets) => Ok(targets),
                Err(e) => Err(store_refusal(e)?),
            };
            let expected = model.retrigger(job, with_dependents).map_err(model_refusal);
            if store != expected {
                return Err(differ("retriggered", store, expected));
            }
        }
    }
    Ok(true)
}

/// Half of the cases each: two tests, two stores, two independently seeded runners.
async fn model_and_store_agree_first_half(f: Fixture) {
    model_and_store_agree_on_random_graphs(f, 2).await
}

async fn model_and_store_agree_second_half(f: Fixture) {
    model_and_store_agree_on_random_graphs(f, 2).await
}

async fn model_and_store_agree_on_random_graphs(f: Fixture, share: u32) {
    // Infrastructure errors in a row would quarantine the one node and stop every claim.
    f.store.set_pool_config(PoolConfig {
        quarantine_after: 0,
        ..Default::default()
    });
    let node = f
        .store
        .register_node(
            &RegisterNode {
                name: "n1".into(),
                properties: Default::default(),
                slots: 64,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let sqlite = f.store.dialect() == Dialect::Sqlite;
    let raw = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // As the store's own connections: no sync per commit, wait for the writer.
                    use sqlx::Executor;
                    conn.execute("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                        .await?;
                }
                Ok(())
            })
        })
        .connect(&f.url)
        .await
        .unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(match f.store.dialect() {
            Dialect::Sqlite => SQLITE_CASES / share,
            Dialect::Postgres => POSTGRES_CASES / share,
        });
    let bench = Bench {
        store: f.store.clone(),
        raw: raw.clone(),
        node,
        clock: AtomicI64::new(1_000),
    };
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            // The failure is printed shrunk; a regression worth keeping becomes a test.
            failure_persistence: None,
            ..Config::default()
        });
        let started = std::time::Instant::now();
        let outcome = runner.run(&case(), |c| handle.block_on(one_case(&bench, &c)));
        if outcome.is_ok() {
            eprintln!("{cases} cases agreed in {:.1?}", started.elapsed());
        }
        outcome
    })
    .await
    .unwrap();
    raw.close().await;
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => {
            panic!("model and store differ: {why}\nminimal case: {case:#?}")
        }
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}

on_both_backends!(
    model_and_store_agree_first_half,
    model_and_store_agree_second_half
);
