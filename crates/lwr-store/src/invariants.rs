//! The queue's contract, checked: what holds between any two transactions.
//!
//! The state machine of jobs and runs is a handful of SQL statements (`queue.rs`,
//! `control.rs`, `graphs.rs`, `pushes.rs`); each keeps some columns in step with others
//! (`unmet` with the needs' states, a running job with its run's lease...). Each
//! [`Violation`] below is one such promise, documented where it is defined, and
//! [`Store::check_invariants`] reads the tables and reports every row that breaks one. The
//! store's tests run it after every test on both databases, and the property test of graph
//! iteration after every step; a maintainer can run it on a database that looks wrong.
//!
//! Vocabulary: a need *succeeded*, is *waiting* (`pending` or `running`), or *ended without
//! success* (`failed`, `exception`, `blocked`, `cancelled`). An *ordinary* job waits for
//! its needs to succeed; an *all-finished* job (`requires: all-finished`) waits for them to
//! end, whatever the result. A run is *live* while its state is `running`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lwr_model::{GraphId, JobId, JobState, NodeId, RunId, RunState};
use sqlx::any::AnyRow;

use crate::error::Op;
use crate::graphs::parse_job_state;
use crate::rows::{col, json};
use crate::{Store, StoreError};

/// Why [`Store::check_invariants`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InvariantError {
    #[error("cannot check the queue's invariants: {0}")]
    Store(#[from] StoreError),
    #[error("{} broken invariant(s) of the queue:{}", .0.len(), list(.0))]
    Violated(Vec<Violation>),
}

fn list(violations: &[Violation]) -> String {
    let mut out = String::new();
    for v in violations {
        let _ = write!(out, "\n  - {v}");
    }
    out
}

/// One broken promise of the queue, naming the job, run or node it concerns. Each variant's
/// documentation is the invariant it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// **A pending job's `unmet` is its recount**: the needs that are waiting, plus, for an
    /// ordinary job, the needs that ended without success. It is set on insert (all needs),
    /// lowered by one when a need succeeds and by the needs that end for an all-finished
    /// job, and recounted by retrigger and trigger; those three ways must agree. So a pending
    /// job with `unmet = 0` is exactly one whose needs are satisfied: the claim's partial
    /// index `jobs_ready` holds every job that may run and no other. (Only pending jobs are
    /// kept counted: a claimed, ended or blocked job keeps the value it had.)
    #[error(
        "job {job} ({name}) is pending with unmet {unmet}, but its needs' states count {recount}"
    )]
    UnmetMiscounted {
        job: JobId,
        name: String,
        unmet: i64,
        recount: i64,
    },
    /// **`unmet` is never negative**, whatever the job's state (it is only ever lowered
    /// for a need that was counted).
    #[error("job {job} ({name}) has a negative unmet count, {unmet}")]
    UnmetNegative {
        job: JobId,
        name: String,
        unmet: i64,
    },
    /// **A pending job with `unmet = 0` is claimable**: every need succeeded (for an
    /// all-finished job: ended). Implied by the recount; reported on its own because it is
    /// the claim's contract, and says which need it would start before.
    #[error(
        "job {job} ({name}) is ready to claim (unmet 0) but needs job {need} ({need_name}), which is {need_state}"
    )]
    ReadyTooEarly {
        job: JobId,
        name: String,
        need: JobId,
        need_name: String,
        need_state: JobState,
    },
    /// **A pending ordinary job has no need that ended without success**: such a job can
    /// never run, and the statement that ended the need (or retrigger, for a job run again)
    /// blocks it instead of leaving it waiting for ever.
    #[error(
        "job {job} ({name}) is pending but needs job {need} ({need_name}), which ended {need_state}: it should be blocked"
    )]
    PendingForever {
        job: JobId,
        name: String,
        need: JobId,
        need_name: String,
        need_state: JobState,
    },
    /// **A blocked job has a need that did not succeed**, or a need that changed since the
    /// job was blocked: retriggering a job without its dependents leaves a blocked dependent
    /// blocked, even once the new run succeeds. (Read from `updated_at`, so this assumes the
    /// clock the store is given only moves forward.)
    #[error("job {job} ({name}) is blocked, but every need succeeded before it was blocked")]
    BlockedWithoutCause { job: JobId, name: String },
    /// **An all-finished job is never blocked**: blocking stops at it; the needs that ended
    /// count as finished for it instead.
    #[error("job {job} ({name}) requires all-finished but is blocked")]
    AllFinishedBlocked { job: JobId, name: String },
    /// **A running job has exactly one live run.**
    #[error("job {job} ({name}) is running with {} live runs {runs:?}, not one", runs.len())]
    RunningLiveRuns {
        job: JobId,
        name: String,
        runs: Vec<RunId>,
    },
    /// **Only a running job has a live run**: whatever ends or requeues a job ends its run
    /// in the same transaction (result, lease expiry, cancel).
    #[error("job {job} ({name}) is {state}, but its run {run} is live")]
    LiveRunOfIdleJob {
        job: JobId,
        name: String,
        state: JobState,
        run: RunId,
    },
    /// **A live run is the job's latest** (its number is the job's `runs`).
    #[error("run {run} of job {job} is live but is number {number}, not the latest ({latest})")]
    LiveRunNotLatest {
        run: RunId,
        job: JobId,
        number: i64,
        latest: i64,
    },
    /// **A running job names the node of its live run** (`jobs.node`, shown in listings).
    #[error(
        "job {job} ({name}) is running on {node:?}, but its live run {run} is on node {run_node} ({run_node_name:?})"
    )]
    WrongNode {
        job: JobId,
        name: String,
        node: Option<String>,
        run: RunId,
        run_node: NodeId,
        run_node_name: Option<String>,
    },
    /// **A live run has a lease** (the sweeper ends runs whose lease ran out; one without a
    /// lease would never end if its node went away).
    #[error("run {run} of job {job} is live without a lease")]
    LiveRunWithoutLease { run: RunId, job: JobId },
    /// **No lease without a live run**: ending a run clears its lease.
    #[error("run {run} of job {job} ended {state} but still has a lease")]
    LeaseOnEndedRun {
        run: RunId,
        job: JobId,
        state: RunState,
    },
    /// **A run has a finish time exactly when it ended.**
    #[error("run {run} of job {job} is {state}, but it {} a finish time", if *finished { "has" } else { "has no" })]
    FinishTime {
        run: RunId,
        job: JobId,
        state: RunState,
        finished: bool,
    },
    /// **A job that ended by a result ended as its latest run did**: a succeeded, failed or
    /// exception job has runs, and the latest one ended in that state.
    #[error("job {job} ({name}) is {state}, but {}", match (run, run_state) {
        (Some(run), Some(s)) => format!("its latest run {run} is {s}"),
        _ => "it has no run".to_string(),
    })]
    LatestRunDisagrees {
        job: JobId,
        name: String,
        state: JobState,
        run: Option<RunId>,
        run_state: Option<RunState>,
    },
    /// **Run numbers are dense**: a job with `runs = n` has runs numbered 1 to n, each once.
    #[error("job {job} ({name}) counts {runs} runs, but its runs are numbered {numbers:?}")]
    RunNumbers {
        job: JobId,
        name: String,
        runs: i64,
        numbers: Vec<i64>,
    },
    /// **Retries left stay between 0 and the job's `retries`** (a retry takes one only
    /// while one is left; a retrigger restores them).
    #[error("job {job} ({name}) has {retries_left} retries left of {retries}")]
    Retries {
        job: JobId,
        name: String,
        retries_left: i64,
        retries: i64,
    },
    /// **A job's needs are jobs of its own graph.**
    #[error("job {job} needs job {need} of another graph")]
    NeedInAnotherGraph { job: JobId, need: JobId },
    /// **An edge names two stored jobs** (SQLite's foreign keys; on PostgreSQL, since
    /// schema 16, the edges' insert and a trigger on deleting jobs).
    #[error("job {job} needs job {need}, and one of them is not stored")]
    DanglingNeed { job: JobId, need: JobId },
    /// **Every graph has one row of kept counts (`graph_counts`), and no row outlives its
    /// graph**: the triggers on `graphs` add and remove it with the graph.
    #[error("graph {graph} {}", if *missing { "has no row of kept counts" } else { "is gone, but its row of kept counts is left" })]
    GraphCountsRow { graph: GraphId, missing: bool },
    /// **A graph's kept counts are its jobs' recount by state** (in the order of
    /// `JobState::ALL`). The triggers on `jobs` keep them in the statements that insert,
    /// change the state of, or delete jobs; listings read them instead of counting.
    #[error(
        "graph {graph} keeps the counts {kept:?} of its jobs by state, but they count {recount:?}"
    )]
    GraphCounts {
        graph: GraphId,
        kept: [i64; 7],
        recount: [i64; 7],
    },
    /// **A shown graph's kept first start and last end are the earliest start and the
    /// latest finish of its jobs' runs** (kept by the triggers on `runs`; a graph being
    /// removed, which nobody sees, loses its runs a chunk at a time).
    #[error(
        "graph {graph} keeps first start {kept_start:?} and last end {kept_end:?}, but its runs say {start:?} and {end:?}"
    )]
    GraphTimes {
        graph: GraphId,
        kept_start: Option<i64>,
        kept_end: Option<i64>,
        start: Option<i64>,
        end: Option<i64>,
    },
    /// **A row of affinity (`job_affinity`) names a stored job of its repository, branch and
    /// name, and while that job is succeeded, the node that ran it** (the triggers on `jobs`
    /// write it when a job succeeds and remove it with the job).
    #[error("affinity of {name} on {repository} {branch} names job {job}, {why}")]
    AffinityRow {
        repository: String,
        branch: String,
        name: String,
        job: JobId,
        why: String,
    },
    /// **Every succeeded job of a repository's branch is its name's affinity there, or a
    /// newer job is.** (On PostgreSQL the trigger never waits for a row another transaction
    /// holds, so two successes of one name committed at the same moment may leave the older
    /// one's: a hint may lag there, never point elsewhere.)
    #[error("job {job} ({name}) succeeded on {repository} {branch}, but affinity names {named:?}")]
    AffinityBehind {
        repository: String,
        branch: String,
        name: String,
        job: JobId,
        named: Option<JobId>,
    },
}

/// One row of `job_affinity`.
#[derive(Debug, Clone)]
pub(crate) struct AffinityRow {
    pub repository: String,
    pub branch: String,
    pub name: String,
    pub job: JobId,
    pub node: String,
}

/// One job row, as far as the invariants look.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: JobId,
    pub graph: i64,
    pub name: String,
    pub state: JobState,
    pub unmet: i64,
    pub runs: i64,
    pub retries_left: i64,
    pub all_finished: bool,
    /// When its state last changed (or, while pending, its count).
    pub updated_at: i64,
    pub node: Option<String>,
    /// `retries` of the job's spec.
    pub retries: i64,
}

/// One run row, as far as the invariants look.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub id: RunId,
    pub job: JobId,
    pub number: i64,
    pub state: RunState,
    pub lease: Option<i64>,
    pub finished: Option<i64>,
    pub node: NodeId,
    pub node_name: Option<String>,
    pub started: i64,
}

/// A graph's kept counts and times (`graph_counts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Jobs by state, in the order of `JobState::ALL`.
    pub counts: [i64; 7],
    pub first_start: Option<i64>,
    pub last_end: Option<i64>,
}

/// One graph, as far as the invariants look.
#[derive(Debug, Clone)]
pub(crate) struct GraphRow {
    pub id: GraphId,
    /// Still being inserted or being removed: not shown.
    pub staging: bool,
    /// `None`: it has no row of kept counts.
    pub kept: Option<Kept>,
}

/// The tables the invariants relate, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub jobs: BTreeMap<JobId, JobRow>,
    /// `(job, need)` edges.
    pub needs: Vec<(JobId, JobId)>,
    pub runs: Vec<RunRow>,
    pub graphs: Vec<GraphRow>,
    /// Graphs that have a row of kept counts but no row of their own.
    pub orphan_counts: Vec<GraphId>,
    /// The repository and branch of each graph that has both.
    pub branches: BTreeMap<i64, (String, String)>,
    pub affinity: Vec<AffinityRow>,
}

impl Store {
    /// Reads the queue's tables in one snapshot and checks every invariant of the state
    /// machine (see [`Violation`]); the error lists every violation found.
    pub async fn check_invariants(&self) -> Result<(), InvariantError> {
        let snapshot = self.snapshot().await?;
        let found = violations(&snapshot);
        if found.is_empty() {
            Ok(())
        } else {
            Err(InvariantError::Violated(found))
        }
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // One statement, so one snapshot of the three tables on either database without a
        // transaction (three reads could straddle a change and see a broken queue). Each
        // part fills the columns it has; `kind` says which.
        let snapshot = format!(
            "\
            SELECT 'job' AS kind, id AS a, graph_id AS b, unmet AS c, runs AS d, \
                retries_left AS e, all_finished AS f, updated_at AS g, name AS s1, \
                state AS s2, node AS s3, spec AS s4 FROM jobs \
            UNION ALL SELECT 'need', job_id, need_id, CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM job_needs \
            UNION ALL SELECT 'run', r.id, r.job_id, r.number, r.lease_expires, r.finished_at, \
                r.node_id, r.started_at, n.name, r.state, CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT) FROM runs r LEFT JOIN nodes n ON n.id = r.node_id \
            UNION ALL SELECT 'graph', g.id, c.graph_id, c.first_start, c.last_end, \
                CAST(g.staging AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(c.pending AS TEXT) || ',' || CAST(c.running AS TEXT) || ',' || \
                CAST(c.succeeded AS TEXT) || ',' || CAST(c.failed AS TEXT) || ',' || \
                CAST(c.exception AS TEXT) || ',' || CAST(c.blocked AS TEXT) || ',' || \
                CAST(c.cancelled AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT) FROM graphs g LEFT JOIN {} c ON c.graph_id = g.id \
            UNION ALL SELECT 'orphan', c.graph_id, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM graph_counts c \
                WHERE NOT EXISTS (SELECT 1 FROM graphs g WHERE g.id = c.graph_id) \
            UNION ALL SELECT 'orphan', c.graph_id, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM graph_count_deltas c \
                WHERE NOT EXISTS (SELECT 1 FROM graphs g WHERE g.id = c.graph_id) \
            UNION ALL SELECT 'branch', g.id, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), g.repository, g.branch, CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT) FROM graphs g \
                WHERE g.repository IS NOT NULL AND g.branch IS NOT NULL \
            UNION ALL SELECT 'affinity', a.job_id, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), a.repository, a.branch, a.name, a.node \
                FROM job_affinity a",
            crate::graphs::KEPT
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(snapshot))
            .fetch_all(&self.read)
            .await
            .op("reading the queue for the invariant check")?;
        let mut snapshot = Snapshot::default();
        for row in &rows {
            match col::<String>(row, "kind")?.as_str() {
                "job" => {
                    let job = job_row(row)?;
                    snapshot.jobs.insert(job.id, job);
                }
                "need" => snapshot
                    .needs
                    .push((JobId(col(row, "a")?), JobId(col(row, "b")?))),
                "graph" => snapshot.graphs.push(graph_row(row)?),
                "orphan" => snapshot.orphan_counts.push(GraphId(col(row, "a")?)),
                "branch" => {
                    snapshot
                        .branches
                        .insert(col(row, "a")?, (col(row, "s1")?, col(row, "s2")?));
                }
                "affinity" => snapshot.affinity.push(AffinityRow {
                    job: JobId(col(row, "a")?),
                    repository: col(row, "s1")?,
                    branch: col(row, "s2")?,
                    name: col(row, "s3")?,
                    node: col(row, "s4")?,
                }),
                _ => snapshot.runs.push(run_row(row)?),
            }
        }
        Ok(snapshot)
    }
}

fn job_row(row: &AnyRow) -> Result<JobRow, StoreError> {
    #[derive(serde::Deserialize)]
    struct Retries {
        retries: u32,
    }
    let spec: Retries = json(&col::<String>(row, "s4")?, "job spec")?;
    Ok(JobRow {
        id: JobId(col(row, "a")?),
        graph: col(row, "b")?,
        name: col(row, "s1")?,
        state: parse_job_state(&col::<String>(row, "s2")?)?,
        unmet: col(row, "c")?,
        runs: col(row, "d")?,
        retries_left: col(row, "e")?,
        all_finished: col::<i64>(row, "f")? != 0,
        updated_at: col(row, "g")?,
        node: col(row, "s3")?,
        retries: i64::from(spec.retries),
    })
}

fn run_row(row: &AnyRow) -> Result<RunRow, StoreError> {
    let state: String = col(row, "s2")?;
    Ok(RunRow {
        id: RunId(col(row, "a")?),
        job: JobId(col(row, "b")?),
        number: col(row, "c")?,
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            what: "run state",
            detail: state.clone(),
        })?,
        lease: col(row, "d")?,
        finished: col(row, "e")?,
        node: NodeId(col(row, "f")?),
        node_name: col(row, "s1")?,
        started: col(row, "g")?,
    })
}

fn graph_row(row: &AnyRow) -> Result<GraphRow, StoreError> {
    let kept = match col::<Option<i64>>(row, "b")? {
        None => None,
        Some(_) => {
            let text: String = col(row, "s1")?;
            let corrupt = || StoreError::Corrupt {
                what: "graph counts",
                detail: text.clone(),
            };
            let mut counts = [0i64; 7];
            let mut parts = text.split(',');
            for slot in &mut counts {
                *slot = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(corrupt)?;
            }
            Some(Kept {
                counts,
                first_start: col(row, "c")?,
                last_end: col(row, "d")?,
            })
        }
    };
    Ok(GraphRow {
        id: GraphId(col(row, "a")?),
        staging: col::<i64>(row, "e")? != 0,
        kept,
    })
}

fn waiting(state: JobState) -> bool {
    matches!(state, JobState::Pending | JobState::Running)
}

fn ended_without_success(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed | JobState::Exception | JobState::Blocked | JobState::Cancelled
    )
}

/// Whether `need` is still unmet for `job`: waiting, or for an ordinary job not succeeded.
/// The same condition as the store's recount (`count_unmet`).
fn unmet_for(job: &JobRow, need: &JobRow) -> bool {
    waiting(need.state) || (!job.all_finished && need.state != JobState::Succeeded)
}

/// Every violation in `s`, jobs in id order, then runs.
pub(crate) fn violations(s: &Snapshot) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut needs: BTreeMap<JobId, Vec<&JobRow>> = BTreeMap::new();
    for (job, need) in &s.needs {
        let (Some(j), Some(n)) = (s.jobs.get(job), s.jobs.get(need)) else {
            found.push(Violation::DanglingNeed {
                job: *job,
                need: *need,
            });
            continue;
        };
        if j.graph != n.graph {
            found.push(Violation::NeedInAnotherGraph {
                job: *job,
                need: *need,
            });
        }
        needs.entry(*job).or_default().push(n);
    }
    for list in needs.values_mut() {
        list.sort_by_key(|n| n.id);
    }
    let mut runs: BTreeMap<JobId, Vec<&RunRow>> = BTreeMap::new();
    for run in &s.runs {
        runs.entry(run.job).or_default().push(run);
    }
    for list in runs.values_mut() {
        list.sort_by_key(|r| r.number);
    }
    let none = Vec::new();
    for job in s.jobs.values() {
        let job_needs = needs.get(&job.id).unwrap_or(&none);
        let job_runs: &[&RunRow] = runs.get(&job.id).map_or(&[], Vec::as_slice);
        check_needs(job, job_needs, &mut found);
        check_runs(job, job_runs, &mut found);
        if !(0..=job.retries).contains(&job.retries_left) {
            found.push(Violation::Retries {
                job: job.id,
                name: job.name.clone(),
                retries_left: job.retries_left,
                retries: job.retries,
            });
        }
    }
    for run in &s.runs {
        check_run(run, &mut found);
    }
    check_graphs(s, &mut found);
    check_affinity(s, &mut found);
    found
}

/// The kept counts and times of each graph against a recount of its jobs and runs.
fn check_graphs(s: &Snapshot, found: &mut Vec<Violation>) {
    let mut recount: BTreeMap<i64, [i64; 7]> = BTreeMap::new();
    for job in s.jobs.values() {
        let slot = JobState::ALL
            .iter()
            .position(|st| *st == job.state)
            .unwrap_or(0);
        recount.entry(job.graph).or_default()[slot] += 1;
    }
    let mut times: BTreeMap<i64, (Option<i64>, Option<i64>)> = BTreeMap::new();
    for run in &s.runs {
        let Some(job) = s.jobs.get(&run.job) else {
            continue;
        };
        let (start, end) = times.entry(job.graph).or_default();
        *start = Some(start.map_or(run.started, |s| s.min(run.started)));
        if let Some(f) = run.finished {
            *end = Some(end.map_or(f, |e| e.max(f)));
        }
    }
    for graph in &s.graphs {
        let Some(kept) = &graph.kept else {
            found.push(Violation::GraphCountsRow {
                graph: graph.id,
                missing: true,
            });
            continue;
        };
        let counted = recount.get(&graph.id.get()).copied().unwrap_or_default();
        if kept.counts != counted {
            found.push(Violation::GraphCounts {
                graph: graph.id,
                kept: kept.counts,
                recount: counted,
            });
        }
        let (start, end) = times.get(&graph.id.get()).copied().unwrap_or_default();
        if !graph.staging && (kept.first_start, kept.last_end) != (start, end) {
            found.push(Violation::GraphTimes {
                graph: graph.id,
                kept_start: kept.first_start,
                kept_end: kept.last_end,
                start,
                end,
            });
        }
    }
    for graph in &s.orphan_counts {
        found.push(Violation::GraphCountsRow {
            graph: *graph,
            missing: false,
        });
    }
}

/// The rows of affinity against the jobs they name and the jobs that succeeded.
fn check_affinity(s: &Snapshot, found: &mut Vec<Violation>) {
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut named: BTreeMap<Key, JobId> = BTreeMap::new();
    for a in &s.affinity {
        named.insert((&a.repository, &a.branch, &a.name), a.job);
        let row = |why: String| Violation::AffinityRow {
            repository: a.repository.clone(),
            branch: a.branch.clone(),
            name: a.name.clone(),
            job: a.job,
            why,
        };
        let Some(job) = s.jobs.get(&a.job) else {
            found.push(row("which is not stored".into()));
            continue;
        };
        let origin = s
            .branches
            .get(&job.graph)
            .map(|(r, b)| (r.as_str(), b.as_str()));
        if job.name != a.name || origin != Some((a.repository.as_str(), a.branch.as_str())) {
            found.push(row(format!("which is {} of graph {}", job.name, job.graph)));
        } else if job.state == JobState::Succeeded && job.node.as_deref() != Some(&a.node) {
            found.push(row(format!(
                "which succeeded on {:?}, not on {}",
                job.node, a.node
            )));
        }
    }
    for job in s.jobs.values() {
        let Some((repository, branch)) = s.branches.get(&job.graph) else {
            continue;
        };
        if job.state != JobState::Succeeded || job.node.is_none() {
            continue;
        }
        let current = named.get(&(repository.as_str(), branch.as_str(), job.name.as_str()));
        if current.is_none_or(|id| *id < job.id) {
            found.push(Violation::AffinityBehind {
                repository: repository.clone(),
                branch: branch.clone(),
                name: job.name.clone(),
                job: job.id,
                named: current.copied(),
            });
        }
    }
}

/// The invariants between a job and its needs.
fn check_needs(job: &JobRow, needs: &[&JobRow], found: &mut Vec<Violation>) {
    if job.unmet < 0 {
        found.push(Violation::UnmetNegative {
            job: job.id,
            name: job.name.clone(),
            unmet: job.unmet,
        });
    }
    match job.state {
        JobState::Pending => {
            let recount = needs.iter().filter(|n| unmet_for(job, n)).count() as i64;
            if job.unmet != recount {
                found.push(Violation::UnmetMiscounted {
                    job: job.id,
                    name: job.name.clone(),
                    unmet: job.unmet,
                    recount,
                });
            }
            if job.unmet == 0
                && let Some(n) = needs.iter().find(|n| unmet_for(job, n))
            {
                found.push(Violation::ReadyTooEarly {
                    job: job.id,
                    name: job.name.clone(),
                    need: n.id,
                    need_name: n.name.clone(),
                    need_state: n.state,
                });
            }
            if !job.all_finished
                && let Some(n) = needs.iter().find(|n| ended_without_success(n.state))
            {
                found.push(Violation::PendingForever {
                    job: job.id,
                    name: job.name.clone(),
                    need: n.id,
                    need_name: n.name.clone(),
                    need_state: n.state,
                });
            }
        }
        JobState::Blocked if job.all_finished => {
            found.push(Violation::AllFinishedBlocked {
                job: job.id,
                name: job.name.clone(),
            });
        }
        JobState::Blocked => {
            let cause = needs
                .iter()
                .any(|n| n.state != JobState::Succeeded || n.updated_at >= job.updated_at);
            if !cause {
                found.push(Violation::BlockedWithoutCause {
                    job: job.id,
                    name: job.name.clone(),
                });
            }
        }
        _ => {}
    }
}

/// The invariants between a job and its runs (`runs` in number order).
fn check_runs(job: &JobRow, runs: &[&RunRow], found: &mut Vec<Violation>) {
    let numbers: Vec<i64> = runs.iter().map(|r| r.number).collect();
    if !numbers.iter().copied().eq(1..=job.runs) {
        found.push(Violation::RunNumbers {
            job: job.id,
            name: job.name.clone(),
            runs: job.runs,
            numbers,
        });
    }
    let live: Vec<&RunRow> = runs
        .iter()
        .copied()
        .filter(|r| r.state == RunState::Running)
        .collect();
    for run in &live {
        if run.number != job.runs {
            found.push(Violation::LiveRunNotLatest {
                run: run.id,
                job: job.id,
                number: run.number,
                latest: job.runs,
            });
        }
    }
    match job.state {
        JobState::Running => match live.as_slice() {
            [run] => {
                if run.node_name.is_none() || run.node_name != job.node {
                    found.push(Violation::WrongNode {
                        job: job.id,
                        name: job.name.clone(),
                        node: job.node.clone(),
                        run: run.id,
                        run_node: run.node,
                        run_node_name: run.node_name.clone(),
                    });
                }
            }
            _ => found.push(Violation::RunningLiveRuns {
                job: job.id,
                name: job.name.clone(),
                runs: live.iter().map(|r| r.id).collect(),
            }),
        },
        state => {
            for run in &live {
                found.push(Violation::LiveRunOfIdleJob {
                    job: job.id,
                    name: job.name.clone(),
                    state,
                    run: run.id,
                });
            }
        }
    }
    let by_result = match job.state {
        JobState::Succeeded => Some(RunState::Succeeded),
        JobState::Failed => Some(RunState::Failed),
        JobState::Exception => Some(RunState::Exception),
        _ => None,
    };
    if let Some(expected) = by_result {
        let latest = runs.last();
        if latest.map(|r| r.state) != Some(expected) {
            found.push(Violation::LatestRunDisagrees {
                job: job.id,
                name: job.name.clone(),
                state: job.state,
                run: latest.map(|r| r.id),
                run_state: latest.map(|r| r.state),
            });
        }
    }
}

/// The invariants of one run on its own.
fn check_run(run: &RunRow, found: &mut Vec<Violation>) {
    let live = run.state == RunState::Running;
    match (live, run.lease) {
        (true, None) => found.push(Violation::LiveRunWithoutLease {
            run: run.id,
            job: run.job,
        }),
        (false, Some(_)) => found.push(Violation::LeaseOnEndedRun {
            run: run.id,
            job: run.job,
            state: run.state,
        }),
        _ => {}
    }
    if live == run.finished.is_some() {
        found.push(Violation::FinishTime {
            run: run.id,
            job: run.job,
            state: run.state,
            finished: run.finished.is_some(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, name: &str, state: JobState, unmet: i64, runs: i64) -> JobRow {
        JobRow {
            id: JobId(id),
            graph: 1,
            name: name.into(),
            state,
            unmet,
            runs,
            retries_left: 0,
            all_finished: false,
            updated_at: 10,
            node: (state == JobState::Running).then(|| "n1".into()),
            retries: 2,
        }
    }

    fn run(id: i64, job: i64, number: i64, state: RunState) -> RunRow {
        let live = state == RunState::Running;
        RunRow {
            id: RunId(id),
            job: JobId(job),
            number,
            state,
            lease: live.then_some(100),
            finished: (!live).then_some(50),
            node: NodeId(1),
            node_name: Some("n1".into()),
            started: 40,
        }
    }

    fn snapshot(jobs: Vec<JobRow>, needs: &[(i64, i64)], runs: Vec<RunRow>) -> Snapshot {
        Snapshot {
            jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
            needs: needs.iter().map(|(a, b)| (JobId(*a), JobId(*b))).collect(),
            runs,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_consistent_queue_has_no_violations() {
        let s = snapshot(
            vec![
                job(1, "a", JobState::Succeeded, 0, 1),
                job(2, "b", JobState::Running, 0, 2),
                job(3, "c", JobState::Pending, 1, 0),
                job(4, "d", JobState::Failed, 0, 1),
                job(5, "e", JobState::Blocked, 1, 0),
            ],
            &[(2, 1), (3, 2), (5, 4)],
            vec![
                run(1, 1, 1, RunState::Succeeded),
                run(2, 2, 1, RunState::Exception),
                run(3, 2, 2, RunState::Running),
                run(4, 4, 1, RunState::Failed),
            ],
        );
        assert_eq!(violations(&s), []);
    }

    #[test]
    fn each_broken_promise_is_named() {
        let mut blocked_af = job(6, "f", JobState::Blocked, 0, 0);
        blocked_af.all_finished = true;
        let mut rerun = job(5, "ok", JobState::Succeeded, 0, 2);
        rerun.updated_at = 20;
        let mut lease_gone = run(3, 2, 1, RunState::Running);
        lease_gone.lease = None;
        let s = snapshot(
            vec![
                job(1, "a", JobState::Failed, 0, 1),
                job(2, "b", JobState::Running, 0, 1),
                job(3, "c", JobState::Pending, 0, 0),
                job(4, "d", JobState::Blocked, 0, 0),
                rerun,
                blocked_af,
            ],
            &[(3, 2), (4, 5), (2, 5)],
            vec![
                run(1, 1, 1, RunState::Succeeded),
                lease_gone,
                run(4, 5, 2, RunState::Succeeded),
            ],
        );
        let found = violations(&s);
        let text: Vec<String> = found.iter().map(|v| v.to_string()).collect();
        assert!(
            matches!(
                found[0],
                Violation::LatestRunDisagrees { job: JobId(1), .. }
            ),
            "{text:#?}"
        );
        assert!(found.contains(&Violation::UnmetMiscounted {
            job: JobId(3),
            name: "c".into(),
            unmet: 0,
            recount: 1
        }));
        assert!(
            found
                .iter()
                .any(|v| matches!(v, Violation::ReadyTooEarly { need: JobId(2), .. }))
        );
        // d's need ok succeeded, but it changed after d was blocked: it was run again.
        assert!(
            !found
                .iter()
                .any(|v| matches!(v, Violation::BlockedWithoutCause { .. }))
        );
        assert!(
            found
                .iter()
                .any(|v| matches!(v, Violation::RunNumbers { job: JobId(5), .. }))
        );
        assert!(found.contains(&Violation::AllFinishedBlocked {
            job: JobId(6),
            name: "f".into()
        }));
        assert!(found.contains(&Violation::LiveRunWithoutLease {
            run: RunId(3),
            job: JobId(2)
        }));
        let err = InvariantError::Violated(found.clone()).to_string();
        assert!(
            err.starts_with(&format!("{} broken invariant(s)", found.len())),
            "{err}"
        );
        assert!(
            err.contains("\n  - job 3 (c) is pending with unmet 0"),
            "{err}"
        );
    }

    #[test]
    fn a_blocked_job_needs_a_cause() {
        // b was blocked after ok succeeded: no cause. c was blocked when again failed, and
        // again succeeded on a second run since.
        let mut blocked = job(2, "b", JobState::Blocked, 1, 0);
        blocked.updated_at = 20;
        let mut again = job(3, "again", JobState::Succeeded, 0, 2);
        again.updated_at = 30;
        let s = snapshot(
            vec![
                job(1, "ok", JobState::Succeeded, 0, 1),
                blocked,
                again,
                job(4, "c", JobState::Blocked, 1, 0),
            ],
            &[(2, 1), (4, 3)],
            vec![
                run(1, 1, 1, RunState::Succeeded),
                run(2, 3, 1, RunState::Failed),
                run(3, 3, 2, RunState::Succeeded),
            ],
        );
        assert_eq!(
            violations(&s),
            [Violation::BlockedWithoutCause {
                job: JobId(2),
                name: "b".into()
            }]
        );
    }

    #[test]
    fn a_pending_job_with_a_failed_need_should_be_blocked() {
        let s = snapshot(
            vec![
                job(1, "a", JobState::Failed, 0, 1),
                job(2, "b", JobState::Pending, 1, 0),
                job(3, "c", JobState::Blocked, 1, 0),
            ],
            &[(2, 1), (3, 2)],
            vec![run(1, 1, 1, RunState::Failed)],
        );
        assert_eq!(
            violations(&s),
            [Violation::PendingForever {
                job: JobId(2),
                name: "b".into(),
                need: JobId(1),
                need_name: "a".into(),
                need_state: JobState::Failed,
            }]
        );
    }

    #[test]
    fn affinity_names_the_newest_success_of_its_key() {
        let mut ok = job(1, "build", JobState::Succeeded, 0, 1);
        ok.node = Some("n1".into());
        let mut newer = job(2, "build", JobState::Succeeded, 0, 1);
        newer.node = Some("n2".into());
        let runs = vec![
            run(1, 1, 1, RunState::Succeeded),
            run(2, 2, 1, RunState::Succeeded),
        ];
        let mut s = snapshot(vec![ok, newer], &[], runs);
        s.branches.insert(1, ("r".into(), "main".into()));
        let row = |job: i64, node: &str| AffinityRow {
            repository: "r".into(),
            branch: "main".into(),
            name: "build".into(),
            job: JobId(job),
            node: node.into(),
        };
        s.affinity = vec![row(2, "n2")];
        assert_eq!(violations(&s), []);
        // Behind the newest success, on another node than the job's, a job not stored.
        s.affinity = vec![row(1, "n1")];
        assert!(matches!(
            violations(&s)[..],
            [Violation::AffinityBehind {
                job: JobId(2),
                named: Some(JobId(1)),
                ..
            }]
        ));
        s.affinity = vec![row(2, "n1")];
        assert!(matches!(
            violations(&s)[..],
            [Violation::AffinityRow { .. }]
        ));
        s.affinity = vec![
            row(2, "n2"),
            AffinityRow {
                name: "test".into(),
                ..row(9, "n1")
            },
        ];
        assert!(matches!(
            violations(&s)[..],
            [Violation::AffinityRow { job: JobId(9), .. }]
        ));
    }

    #[test]
    fn kept_graph_counts_and_times_must_be_a_recount() {
        let kept = |counts: [i64; 7], first_start, last_end| {
            Some(Kept {
                counts,
                first_start,
                last_end,
            })
        };
        let graph = |id, staging, kept| GraphRow {
            id: GraphId(id),
            staging,
            kept,
        };
        // Graph 1 holds a (succeeded, run 1 from 40 to 50), b (running, run 2 from 40) and
        // c (pending).
        let mut s = snapshot(
            vec![
                job(1, "a", JobState::Succeeded, 0, 1),
                job(2, "b", JobState::Running, 0, 1),
                job(3, "c", JobState::Pending, 1, 0),
            ],
            &[(3, 2)],
            vec![
                run(1, 1, 1, RunState::Succeeded),
                run(2, 2, 1, RunState::Running),
            ],
        );
        s.graphs = vec![graph(
            1,
            false,
            kept([1, 1, 1, 0, 0, 0, 0], Some(40), Some(50)),
        )];
        assert_eq!(violations(&s), []);

        s.graphs = vec![
            graph(1, false, kept([2, 1, 0, 0, 0, 0, 0], Some(40), None)),
            graph(2, false, None),
            // Nothing in it, and being removed: its times are not looked at.
            graph(3, true, kept([0; 7], Some(1), Some(2))),
        ];
        s.orphan_counts = vec![GraphId(4)];
        assert_eq!(
            violations(&s),
            [
                Violation::GraphCounts {
                    graph: GraphId(1),
                    kept: [2, 1, 0, 0, 0, 0, 0],
                    recount: [1, 1, 1, 0, 0, 0, 0],
                },
                Violation::GraphTimes {
                    graph: GraphId(1),
                    kept_start: Some(40),
                    kept_end: None,
                    start: Some(40),
                    end: Some(50),
                },
                Violation::GraphCountsRow {
                    graph: GraphId(2),
                    missing: true,
                },
                Violation::GraphCountsRow {
                    graph: GraphId(4),
                    missing: false,
                },
            ]
        );
    }
}
