//! A model of graph iteration: what the store's queue does to jobs and runs, in memory.
//!
//! The queue's state machine lives in SQL statements in `lwr-store` (`queue.rs` and
//! `control.rs`). This is the same machine written as plain Rust over a map of jobs, so a
//! property test can drive random graphs and operations through both and compare them after
//! every step. It follows the statements as they are, including what is surprising about
//! them (see "Known quirks" below); it is a mirror to catch a statement that changes
//! behaviour by accident, not a second opinion on what the behaviour should be.
//!
//! What is modelled: jobs with their needs, `requires: all-finished`, retries, the `unmet`
//! count (exactly as the store keeps it, stale values of non-pending jobs included), the
//! job's state and its runs; submit, claim (one node that meets every requirement, jobs
//! taken in id order), results (success, failure, exception with retries, repeated and
//! stale results), lease expiry, cancel (a job, a graph) and retrigger (with and without
//! dependents). Not modelled: requirements and the pool's placement policy, reasons, times,
//! artifacts, pushes and `trigger`.
//!
//! # Known quirks of the store, modelled as they are
//!
//! - `unmet` is kept only while a job is pending: succeeding, blocking and retrigger adjust
//!   pending jobs only. A running, ended or blocked job keeps the value it had (a job claimed
//!   with 0 keeps 0 even if a need is run again meanwhile); a retrigger counts it afresh.
//! - Retriggering a job without its dependents leaves them as they are: a blocked dependent
//!   stays blocked even once the job succeeds on its new run, and a succeeded (or running)
//!   dependent keeps its result although its need runs again. Only pending dependents wait
//!   for the new run.
//! - A dependent that is running or ended when its need fails is not touched: blocking only
//!   ever changes pending jobs.
//! - Cancelling a graph cancels its pending `all-finished` jobs too, and blocks nothing (every
//!   job of the graph that has not ended is cancelled by the same statement).
//! - A job retried after an infrastructure error counts its needs afresh (one may have been
//!   retriggered on its own while it ran) and is blocked if one ended without success since.
//!   Before this was found by the model comparison, the retry kept the count it was claimed
//!   with and could run before its need's new run.
//! - Success releases pending dependents whatever the job's own state was when its run
//!   ended (it is always `running` there, since a live run means a running job).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::Outcome;
use crate::{GraphId, JobId, JobSpec, JobState, Requires, RunState};

/// One job as the model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub graph: GraphId,
    pub name: String,
    /// The jobs it needs (edges of its graph).
    pub needs: Vec<JobId>,
    /// `requires: all-finished`: its needs must have ended, not succeeded.
    pub all_finished: bool,
    /// `retries` of its spec; a retrigger restores `retries_left` to it.
    pub retries: u32,
    pub state: JobState,
    /// The store's `unmet` column: while pending, the needs it still waits for.
    pub unmet: i64,
    pub retries_left: i64,
    /// Its runs, oldest first; run number `n` is `runs[n - 1]`.
    pub runs: Vec<RunState>,
}

impl Job {
    /// The number of its live run, when it has one.
    pub fn live_run(&self) -> Option<u32> {
        self.runs
            .iter()
            .position(|r| *r == RunState::Running)
            .map(|i| i as u32 + 1)
    }
}

/// A run, named by its job and number (the store's run ids are the caller's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunRef {
    pub job: JobId,
    pub number: u32,
}

/// What a cancellation stopped, as the store counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cancelled {
    pub jobs: u64,
    pub runs: u64,
}

/// An operation the store refuses; the model refuses the same ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IterationError {
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("graph {0} not found")]
    GraphNotFound(GraphId),
    #[error("job {job} ({name}) needs {need}, which is not a job of graph {graph}")]
    UnknownNeed {
        job: JobId,
        name: String,
        need: String,
        graph: GraphId,
    },
    /// The request makes no sense in the current state (cancelling an ended job...).
    #[error("{0}")]
    Conflict(String),
}

/// Jobs of every submitted graph, and what they need.
#[derive(Debug, Clone, Default)]
pub struct Iteration {
    jobs: BTreeMap<JobId, Job>,
    graphs: BTreeSet<GraphId>,
    /// For each job, the jobs that need it (the `job_needs_need` index).
    dependents: BTreeMap<JobId, Vec<JobId>>,
}

/// States of a need that end it without success.
fn ended_without_success(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed | JobState::Exception | JobState::Blocked | JobState::Cancelled
    )
}

fn run_state(outcome: Outcome) -> RunState {
    match outcome {
        Outcome::Succeeded => RunState::Succeeded,
        Outcome::Failed => RunState::Failed,
        Outcome::Exception => RunState::Exception,
    }
}

impl Iteration {
    pub fn new() -> Iteration {
        Iteration::default()
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Every live run, in job id order.
    pub fn live_runs(&self) -> Vec<RunRef> {
        self.jobs
            .values()
            .filter_map(|j| j.live_run().map(|number| RunRef { job: j.id, number }))
            .collect()
    }

    /// Every run that ended, in job id and run number order.
    pub fn ended_runs(&self) -> Vec<RunRef> {
        self.jobs
            .values()
            .flat_map(|j| {
                j.runs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r != RunState::Running)
                    .map(|(i, _)| RunRef {
                        job: j.id,
                        number: i as u32 + 1,
                    })
            })
            .collect()
    }

    /// A stored graph: `jobs` with the ids the store gave them, all pending and waiting for
    /// every need (needs name jobs of the same submission).
    pub fn submit(
        &mut self,
        graph: GraphId,
        jobs: &[(JobId, &JobSpec)],
    ) -> Result<(), IterationError> {
        let ids: BTreeMap<&str, JobId> =
            jobs.iter().map(|(id, s)| (s.name.as_str(), *id)).collect();
        let mut added = Vec::with_capacity(jobs.len());
        for (id, spec) in jobs {
            let needs = spec
                .needs
                .iter()
                .map(|n| {
                    ids.get(n.as_str())
                        .copied()
                        .ok_or_else(|| IterationError::UnknownNeed {
                            job: *id,
                            name: spec.name.clone(),
                            need: n.clone(),
                            graph,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            added.push(Job {
                id: *id,
                graph,
                name: spec.name.clone(),
                unmet: needs.len() as i64,
                needs,
                all_finished: spec.requires == Requires::AllFinished,
                retries: spec.retries,
                state: JobState::Pending,
                retries_left: i64::from(spec.retries),
                runs: Vec::new(),
            });
        }
        self.graphs.insert(graph);
        for job in added {
            for need in &job.needs {
                self.dependents.entry(*need).or_default().push(job.id);
            }
            self.jobs.insert(job.id, job);
        }
        for deps in self.dependents.values_mut() {
            deps.sort();
        }
        Ok(())
    }

    /// Hands out up to `max` ready jobs (pending, `unmet` 0), lowest id first, each as a
    /// new run.
    pub fn claim(&mut self, max: u32) -> Vec<RunRef> {
        let ready: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending && j.unmet == 0)
            .map(|j| j.id)
            .take(max as usize)
            .collect();
        ready
            .into_iter()
            .map(|id| {
                let job = self.get_mut(id);
                job.state = JobState::Running;
                job.runs.push(RunState::Running);
                RunRef {
                    job: id,
                    number: job.runs.len() as u32,
                }
            })
            .collect()
    }

    /// Records a node's result for `run`. Returns whether it counts as recorded: the live
    /// run ends; a repeat of the result a run ended with is acknowledged without effect;
    /// anything else is refused.
    pub fn report(&mut self, run: RunRef, outcome: Outcome) -> bool {
        let Some(state) = self.run_state(run) else {
            return false;
        };
        if state != RunState::Running {
            return state == run_state(outcome);
        }
        self.set_run(run, run_state(outcome));
        match outcome {
            Outcome::Succeeded => self.succeed(run.job),
            Outcome::Failed => self.end(run.job, JobState::Failed),
            Outcome::Exception => self.retry_or_end(run.job),
        }
        true
    }

    /// Ends the live runs among `runs` as `exception` (their leases ran out), in the order
    /// given; each job runs again while it has retries.
    pub fn expire(&mut self, runs: &[RunRef]) {
        for &run in runs {
            if self.run_state(run) == Some(RunState::Running) {
                self.set_run(run, RunState::Exception);
                self.retry_or_end(run.job);
            }
        }
    }

    /// Cancels a job that has not ended, and blocks what depends on it.
    pub fn cancel_job(&mut self, id: JobId) -> Result<Cancelled, IterationError> {
        let job = self.jobs.get(&id).ok_or(IterationError::JobNotFound(id))?;
        if job.state.is_terminal() {
            return Err(IterationError::Conflict(format!(
                "job {id} ({}) already ended: {}",
                job.name, job.state
            )));
        }
        let runs = self.cancel_runs(|j| j.id == id);
        self.get_mut(id).state = JobState::Cancelled;
        self.block_dependents(id);
        Ok(Cancelled { jobs: 1, runs })
    }

    /// Cancels every job of `graph` that has not ended; blocks nothing.
    pub fn cancel_graph(&mut self, graph: GraphId) -> Result<Cancelled, IterationError> {
        if !self.graphs.contains(&graph) {
            return Err(IterationError::GraphNotFound(graph));
        }
        let runs = self.cancel_runs(|j| j.graph == graph);
        let mut jobs = 0;
        for job in self.jobs.values_mut().filter(|j| j.graph == graph) {
            if !job.state.is_terminal() {
                job.state = JobState::Cancelled;
                jobs += 1;
            }
        }
        Ok(Cancelled { jobs, runs })
    }

    /// Runs an ended job again (and with `with_dependents` every job that transitively
    /// depends on it), retries restored. Returns the jobs put back in the queue, the job
    /// first and then its dependents in id order.
    pub fn retrigger(
        &mut self,
        id: JobId,
        with_dependents: bool,
    ) -> Result<Vec<JobId>, IterationError> {
        let job = self.jobs.get(&id).ok_or(IterationError::JobNotFound(id))?;
        if !job.state.is_terminal() {
            return Err(IterationError::Conflict(format!(
                "job {id} ({}) is {}; only an ended job can run again",
                job.name, job.state
            )));
        }
        let mut needs = job.needs.clone();
        needs.sort();
        for need in needs {
            let n = &self.jobs[&need];
            let waiting = matches!(n.state, JobState::Pending | JobState::Running);
            if waiting || (!job.all_finished && n.state != JobState::Succeeded) {
                return Err(IterationError::Conflict(format!(
                    "job {id} ({}) needs {}, which is {}",
                    job.name, n.name, n.state
                )));
            }
        }
        let mut targets = vec![id];
        if with_dependents {
            let deps = self.transitive_dependents(id);
            if let Some(running) = deps
                .iter()
                .find(|d| self.jobs[*d].state == JobState::Running)
            {
                return Err(IterationError::Conflict(format!(
                    "{}, which depends on {}, is running; cancel it first",
                    self.jobs[running].name, job.name
                )));
            }
            targets.extend(deps);
        }
        for &t in &targets {
            let job = self.get_mut(t);
            job.state = JobState::Pending;
            job.retries_left = i64::from(job.retries);
        }
        // Counted once every target is pending again, as the store does.
        for &t in &targets {
            self.count_unmet(t);
        }
        // A dependent that also needs a job which did not succeed is blocked again.
        for &t in &targets[1..] {
            self.block_if_stuck(t);
        }
        // Pending jobs outside the targets that need one wait for its new run.
        for &t in &targets {
            let waiting: Vec<JobId> = self
                .dependents_of(t)
                .into_iter()
                .filter(|d| self.jobs[d].state == JobState::Pending && !targets.contains(d))
                .collect();
            for d in waiting {
                self.count_unmet(d);
            }
        }
        Ok(targets)
    }

    fn get_mut(&mut self, id: JobId) -> &mut Job {
        self.jobs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("job {id} is in the model"))
    }

    fn dependents_of(&self, id: JobId) -> Vec<JobId> {
        self.dependents.get(&id).cloned().unwrap_or_default()
    }

    /// Every job that transitively needs `id`, in id order.
    fn transitive_dependents(&self, id: JobId) -> Vec<JobId> {
        let mut seen = BTreeSet::new();
        let mut stack = self.dependents_of(id);
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                stack.extend(self.dependents_of(d));
            }
        }
        seen.into_iter().collect()
    }

    fn run_state(&self, run: RunRef) -> Option<RunState> {
        let job = self.jobs.get(&run.job)?;
        job.runs.get((run.number as usize).checked_sub(1)?).copied()
    }

    fn set_run(&mut self, run: RunRef, state: RunState) {
        self.get_mut(run.job).runs[run.number as usize - 1] = state;
    }

    /// Ends the live runs of the jobs `which` selects as cancelled; returns how many.
    fn cancel_runs(&mut self, which: impl Fn(&Job) -> bool) -> u64 {
        let mut n = 0;
        for job in self.jobs.values_mut().filter(|j| which(j)) {
            for run in job.runs.iter_mut().filter(|r| **r == RunState::Running) {
                *run = RunState::Cancelled;
                n += 1;
            }
        }
        n
    }

    /// The job succeeded: each pending dependent has one unmet need fewer.
    fn succeed(&mut self, id: JobId) {
        let job = self.get_mut(id);
        if job.state == JobState::Running {
            job.state = JobState::Succeeded;
        }
        for d in self.dependents_of(id) {
            let dep = self.get_mut(d);
            if dep.state == JobState::Pending {
                dep.unmet -= 1;
            }
        }
    }

    /// An infrastructure error: pending again while retries are left (its needs counted
    /// afresh: one may have run again meanwhile), else ended.
    fn retry_or_end(&mut self, id: JobId) {
        let job = self.get_mut(id);
        if job.state == JobState::Running && job.retries_left > 0 {
            job.state = JobState::Pending;
            job.retries_left -= 1;
            self.count_unmet(id);
            self.block_if_stuck(id);
        } else {
            self.end(id, JobState::Exception);
        }
    }

    /// A pending ordinary job with a need that ended without success can never run: it is
    /// blocked, with what depends on it.
    fn block_if_stuck(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        let stuck = job.state == JobState::Pending
            && !job.all_finished
            && job
                .needs
                .iter()
                .any(|n| ended_without_success(self.jobs[n].state));
        if stuck {
            self.get_mut(id).state = JobState::Blocked;
            self.block_dependents(id);
        }
    }

    /// A running job ends without success and blocks what depends on it.
    fn end(&mut self, id: JobId, state: JobState) {
        let job = self.get_mut(id);
        if job.state == JobState::Running {
            job.state = state;
            self.block_dependents(id);
        }
    }

    /// `id` ended without success: every pending ordinary job that transitively needs it
    /// (through pending ordinary jobs) is blocked; pending all-finished jobs that need any
    /// of those, or `id`, count them as ended.
    fn block_dependents(&mut self, id: JobId) {
        let mut ending = BTreeSet::from([id]);
        let mut stack = vec![id];
        while let Some(e) = stack.pop() {
            for d in self.dependents_of(e) {
                let dep = &self.jobs[&d];
                if dep.state == JobState::Pending && !dep.all_finished && ending.insert(d) {
                    stack.push(d);
                }
            }
        }
        let released: Vec<(JobId, i64)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending && j.all_finished)
            .map(|j| {
                (
                    j.id,
                    j.needs.iter().filter(|n| ending.contains(n)).count() as i64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        for (a, n) in released {
            self.get_mut(a).unmet -= n;
        }
        for e in ending {
            let job = self.get_mut(e);
            if e != id && job.state == JobState::Pending && !job.all_finished {
                job.state = JobState::Blocked;
            }
        }
    }

    /// Sets `unmet` to the needs not yet succeeded (for an all-finished job: not yet ended).
    fn count_unmet(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        let unmet = job
            .needs
            .iter()
            .filter(|n| {
                let state = self.jobs[*n].state;
                matches!(state, JobState::Pending | JobState::Running)
                    || (!job.all_finished && state != JobState::Succeeded)
            })
            .count() as i64;
        self.get_mut(id).unmet = unmet;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, needs: &[&str]) -> JobSpec {
        let mut j: JobSpec =
            serde_json::from_value(serde_json::json!({"name": name, "run": "true"})).unwrap();
        j.needs = needs.iter().map(|n| n.to_string()).collect();
        j
    }

    fn model(specs: &[JobSpec]) -> Iteration {
        let mut m = Iteration::new();
        let jobs: Vec<(JobId, &JobSpec)> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (JobId(i as i64 + 1), s))
            .collect();
        m.submit(GraphId(1), &jobs).unwrap();
        m
    }

    fn states(m: &Iteration) -> Vec<(&str, JobState)> {
        m.jobs().map(|j| (j.name.as_str(), j.state)).collect()
    }

    fn run_all(m: &mut Iteration, outcome: Outcome) -> Vec<JobId> {
        let runs = m.claim(100);
        for r in &runs {
            assert!(m.report(*r, outcome));
        }
        runs.iter().map(|r| r.job).collect()
    }

    #[test]
    fn success_releases_and_failure_blocks_transitively() {
        let mut m = model(&[spec("a", &[]), spec("b", &["a"]), spec("c", &["b"])]);
        assert_eq!(run_all(&mut m, Outcome::Succeeded), [JobId(1)]);
        assert_eq!(m.job(JobId(2)).unwrap().unmet, 0);
        assert_eq!(run_all(&mut m, Outcome::Failed), [JobId(2)]);
        assert_eq!(
            states(&m),
            [
                ("a", JobState::Succeeded),
                ("b", JobState::Failed),
                ("c", JobState::Blocked)
            ]
        );
    }

    #[test]
    fn exceptions_retry_until_none_are_left_and_repeats_are_acknowledged() {
        let mut s = spec("a", &[]);
        s.retries = 1;
        let mut m = model(&[s]);
        let first = m.claim(1)[0];
        assert!(m.report(first, Outcome::Exception));
        assert!(
            m.report(first, Outcome::Exception),
            "a repeat is acknowledged"
        );
        assert!(
            !m.report(first, Outcome::Succeeded),
            "a different result is not"
        );
        assert_eq!(m.job(JobId(1)).unwrap().state, JobState::Pending);
        let second = m.claim(1)[0];
        assert_eq!(second.number, 2);
        m.expire(&[second]);
        let a = m.job(JobId(1)).unwrap();
        assert_eq!((a.state, a.retries_left), (JobState::Exception, 0));
    }

    #[test]
    fn all_finished_jobs_count_blocked_and_cancelled_needs_as_ended() {
        let mut f = spec("report", &["a", "x"]);
        f.requires = Requires::AllFinished;
        let mut m = model(&[
            spec("a", &[]),
            spec("x", &["a"]),
            f,
            spec("after", &["report"]),
        ]);
        m.cancel_job(JobId(1)).unwrap();
        assert_eq!(m.job(JobId(2)).unwrap().state, JobState::Blocked);
        assert_eq!(m.job(JobId(3)).unwrap().unmet, 0);
        assert_eq!(run_all(&mut m, Outcome::Succeeded), [JobId(3)]);
        assert_eq!(run_all(&mut m, Outcome::Succeeded), [JobId(4)]);
        assert!(matches!(
            m.cancel_job(JobId(4)),
            Err(IterationError::Conflict(_))
        ));
    }

    #[test]
    fn retrigger_alone_leaves_a_blocked_dependent_blocked() {
        let mut m = model(&[spec("a", &[]), spec("b", &["a"])]);
        run_all(&mut m, Outcome::Failed);
        assert_eq!(m.retrigger(JobId(1), false).unwrap(), [JobId(1)]);
        run_all(&mut m, Outcome::Succeeded);
        assert_eq!(m.job(JobId(2)).unwrap().state, JobState::Blocked);
        // With its dependents, b runs after a's new run.
        assert_eq!(m.retrigger(JobId(1), true).unwrap(), [JobId(1), JobId(2)]);
        assert_eq!(m.job(JobId(2)).unwrap().unmet, 1);
        assert_eq!(run_all(&mut m, Outcome::Succeeded), [JobId(1)]);
        assert_eq!(run_all(&mut m, Outcome::Succeeded), [JobId(2)]);
    }

    #[test]
    fn retrigger_with_dependents_reblocks_those_with_a_failed_need() {
        let mut m = model(&[
            spec("a", &[]),
            spec("bad", &[]),
            spec("both", &["a", "bad"]),
            spec("after", &["both"]),
        ]);
        m.claim(2);
        m.report(
            RunRef {
                job: JobId(1),
                number: 1,
            },
            Outcome::Succeeded,
        );
        m.report(
            RunRef {
                job: JobId(2),
                number: 1,
            },
            Outcome::Failed,
        );
        assert!(matches!(
            m.retrigger(JobId(3), false),
            Err(IterationError::Conflict(_))
        ));
        m.retrigger(JobId(1), true).unwrap();
        assert_eq!(
            states(&m),
            [
                ("a", JobState::Pending),
                ("bad", JobState::Failed),
                ("both", JobState::Blocked),
                ("after", JobState::Blocked)
            ]
        );
    }

    #[test]
    fn cancelling_a_graph_ends_its_runs_and_blocks_nothing() {
        let mut m = model(&[spec("a", &[]), spec("b", &["a"])]);
        m.claim(1);
        assert_eq!(
            m.cancel_graph(GraphId(1)).unwrap(),
            Cancelled { jobs: 2, runs: 1 }
        );
        assert!(m.live_runs().is_empty());
        assert_eq!(m.job(JobId(2)).unwrap().state, JobState::Cancelled);
        assert!(matches!(
            m.cancel_graph(GraphId(9)),
            Err(IterationError::GraphNotFound(_))
        ));
    }
}
