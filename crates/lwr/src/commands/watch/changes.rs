//! What changed in a graph between two looks at its jobs. Looks are snapshots, so a job may
//! have started and ended in between: it is still reported as having started, then ended
//! (every change is shown, several at once when they came close together, none dropped).

use std::collections::BTreeMap;
use std::time::Duration;

use lwr_model::api::JobInfo;
use lwr_model::{JobId, JobState};

use crate::output::span;

/// One change of one job, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Run `run` started on `node`.
    Started {
        name: String,
        node: String,
        run: u32,
    },
    /// The job ended in `state`, after `took` when it ran.
    Ended {
        name: String,
        state: JobState,
        took: Option<Duration>,
        reason: Option<String>,
    },
    /// Back to pending after a run that ended in an infrastructure error: it runs again.
    Retrying {
        name: String,
        reason: Option<String>,
    },
    /// Ready, but no usable node can run it (said once per reason).
    CannotStart { name: String, why: String },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Started { name, .. }
            | Change::Ended { name, .. }
            | Change::Retrying { name, .. }
            | Change::CannotStart { name, .. } => name,
        }
    }

    /// A job ended in a way that makes the graph fail.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Change::Ended {
                state: JobState::Failed | JobState::Exception,
                ..
            }
        )
    }
}

/// What was last seen of one job.
#[derive(Debug, Clone)]
struct Seen {
    state: JobState,
    /// Runs already reported as started.
    runs: u32,
    cannot_start: Option<String>,
}

/// The jobs of a graph as last seen.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: BTreeMap<JobId, Seen>,
}

impl Tracker {
    /// Compares `jobs` (a fresh look at every job of the graph) with the last look;
    /// returns the changes, job by job in the graph's order.
    pub fn update(&mut self, jobs: &[JobInfo]) -> Vec<Change> {
        let mut changes = Vec::new();
        for job in jobs {
            let prev = self.seen.get(&job.id).cloned().unwrap_or(Seen {
                state: JobState::Pending,
                runs: 0,
                cannot_start: None,
            });
            let name = || job.name.clone();
            // A run began since the last look, even if it already ended.
            if job.runs > prev.runs && job.node.is_some() {
                changes.push(Change::Started {
                    name: name(),
                    node: job.node.clone().unwrap_or_default(),
                    run: job.runs,
                });
            }
            if job.state != prev.state || job.runs != prev.runs {
                match job.state {
                    JobState::Pending | JobState::Running => {}
                    state => changes.push(Change::Ended {
                        name: name(),
                        state,
                        took: match job.runs {
                            0 => None,
                            _ => span(job.started_at.as_deref(), job.finished_at.as_deref()),
                        },
                        reason: job.reason.clone().filter(|_| state != JobState::Succeeded),
                    }),
                }
            }
            // Pending after a run: an infrastructure error (or a retrigger) sends it again.
            if job.state == JobState::Pending
                && job.runs > 0
                && (prev.state != JobState::Pending || prev.runs != job.runs)
            {
                changes.push(Change::Retrying {
                    name: name(),
                    reason: job.reason.clone(),
                });
            }
            let stuck = job
                .cannot_start
                .clone()
                .filter(|_| job.state == JobState::Pending);
            if let Some(why) = &stuck
                && prev.cannot_start.as_ref() != Some(why)
            {
                changes.push(Change::CannotStart {
                    name: name(),
                    why: why.clone(),
                });
            }
            self.seen.insert(
                job.id,
                Seen {
                    state: job.state,
                    runs: job.runs,
                    cannot_start: stuck,
                },
            );
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwr_model::GraphId;

    fn job(id: i64, name: &str, state: JobState, runs: u32) -> JobInfo {
        JobInfo {
            id: JobId(id),
            graph_id: GraphId(1),
            name: name.into(),
            state,
            node: (runs > 0).then(|| "dev-1".into()),
            runs,
            reason: (state == JobState::Failed).then(|| "exit code 4".into()),
            placement: None,
            started_at: (runs > 0).then(|| "2026-12-06T06:00:00.000Z".into()),
            finished_at: state
                .is_terminal()
                .then(|| "2026-12-06T06:00:01.500Z".into()),
            cannot_start: None,
        }
    }

    #[test]
    fn a_job_that_started_and_ended_between_looks_is_reported_twice() {
        let mut t = Tracker::default();
        assert_eq!(t.update(&[job(1, "a", JobState::Pending, 0)]), []);
        let changes = t.update(&[job(1, "a", JobState::Succeeded, 1)]);
        assert_eq!(
            changes,
            [
                Change::Started {
                    name: "a".into(),
                    node: "dev-1".into(),
                    run: 1
                },
                Change::Ended {
                    name: "a".into(),
                    state: JobState::Succeeded,
                    took: Some(Duration::from_millis(1500)),
                    reason: None
                }
            ]
        );
        assert_eq!(t.update(&[job(1, "a", JobState::Succeeded, 1)]), []);
    }

    #[test]
    fn running_then_failing_is_two_changes_over_two_looks() {
        let mut t = Tracker::default();
        let started = t.update(&[job(1, "c", JobState::Running, 1)]);
        assert!(matches!(&started[..], [Change::Started { run: 1, .. }]));
        let ended = t.update(&[job(1, "c", JobState::Failed, 1)]);
        assert!(
            matches!(&ended[..], [Change::Ended { state: JobState::Failed, reason: Some(r), .. }] if r == "exit code 4"),
            "{ended:?}"
        );
        assert!(ended[0].is_failure());
    }

    #[test]
    fn a_retried_run_and_a_job_that_cannot_start_are_said_once() {
        let mut t = Tracker::default();
        t.update(&[job(1, "a", JobState::Running, 1)]);
        let mut retried = job(1, "a", JobState::Pending, 1);
        retried.reason = Some("node lost".into());
        assert_eq!(
            t.update(&[retried.clone()]),
            [Change::Retrying {
                name: "a".into(),
                reason: Some("node lost".into())
            }]
        );
        assert_eq!(t.update(&[retried]), []);
        let mut stuck = job(2, "never", JobState::Pending, 0);
        stuck.cannot_start = Some("no node matches: os=plan9".into());
        assert_eq!(
            t.update(&[stuck.clone()]),
            [Change::CannotStart {
                name: "never".into(),
                why: "no node matches: os=plan9".into()
            }]
        );
        assert_eq!(t.update(&[stuck]), []);
    }

    #[test]
    fn blocked_and_cancelled_jobs_end_without_a_time() {
        let mut t = Tracker::default();
        let mut blocked = job(1, "d", JobState::Blocked, 0);
        blocked.reason = Some("needs c, which failed".into());
        assert_eq!(
            t.update(&[blocked]),
            [Change::Ended {
                name: "d".into(),
                state: JobState::Blocked,
                took: None,
                reason: Some("needs c, which failed".into())
            }]
        );
    }
}
