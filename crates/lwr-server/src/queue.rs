//! The queue as the server runs it: store transactions plus in-memory wake-ups.
//!
//! Two counters live in `watch` channels. `ready` moves when a job may have become
//! claimable; nodes waiting in a long-poll claim wake on it, so an idle node gets new work
//! within milliseconds and nothing in the dispatch path sleeps. `changes` moves when any job
//! changes state; `push --wait` long-polls on it.

use std::sync::Arc;
use std::time::Duration;

use lwr_model::api::{GraphInfo, ResultAck, RunResult, SubmitGraph};
use lwr_store::{Cancelled, Claimed, Effects, Store, StoreError, now_ms};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::AppState;

/// Longest a claim or a graph wait may be held open.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Queue {
    store: Store,
    lease: Duration,
    ready: watch::Sender<u64>,
    changes: watch::Sender<i64>,
}

impl Queue {
    pub fn new(store: Store, lease: Duration) -> Queue {
        // Start the change counter at the clock so it only grows across restarts: a client
        // holding a counter from before a restart still sees the next change.
        let (changes, _) = watch::channel(now_ms() * 1000);
        let (ready, _) = watch::channel(0);
        Queue {
            store,
            lease,
            ready,
            changes,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Wakes whoever the effects of a transaction concern.
    fn wake(&self, effects: Effects) {
        if effects.ready {
            self.ready.send_modify(|n| *n += 1);
        }
        if effects.changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Called once when a server starts: nodes could not renew leases while it was down.
    pub async fn on_start(&self) -> Result<(), StoreError> {
        let n = self.store.extend_leases(now_ms(), self.lease_ms()).await?;
        if n > 0 {
            tracing::info!("extended {n} leases that ran out while the server was down");
        }
        Ok(())
    }

    pub async fn submit(&self, sub: &SubmitGraph) -> Result<GraphInfo, StoreError> {
        let id = self.store.submit_graph(sub, now_ms()).await?;
        self.wake(Effects {
            ready: true,
            changed: true,
        });
        self.graph(id, None, Duration::ZERO).await
    }

    /// A graph's state. With `after`, waits up to `wait` for a change newer than `after`.
    pub async fn graph(
        &self,
        id: i64,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<GraphInfo, StoreError> {
        let mut rx = self.changes.subscribe();
        let seen = *rx.borrow_and_update();
        if let Some(after) = after
            && seen <= after
        {
            // An unknown graph answers at once rather than after the wait.
            self.store.graph(id).await?;
            let deadline = Instant::now() + wait.min(MAX_WAIT);
            let _ = timeout_at(deadline, rx.changed()).await;
        }
        let seq = *rx.borrow();
        let mut info = self.store.graph(id).await?;
        info.seq = seq;
        Ok(info)
    }

    /// Records the results a node sends along, then claims up to `max` jobs for it, waiting
    /// up to `wait` for one to become ready.
    pub async fn claim(
        &self,
        node_id: i64,
        max: u32,
        results: &[RunResult],
        wait: Duration,
    ) -> Result<Claimed, StoreError> {
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut rx = self.ready.subscribe();
        let mut results = results;
        let mut acks = Vec::new();
        loop {
            // Mark the counter seen before looking, so a job made ready while we look
            // wakes us instead of being missed.
            rx.borrow_and_update();
            let claimed = self
                .store
                .claim(node_id, max, results, now_ms(), self.lease_ms())
                .await?;
            self.wake(claimed.effects);
            if !results.is_empty() {
                acks = claimed.acks;
                results = &[];
            }
            if !claimed.assignments.is_empty() || max == 0 {
                return Ok(Claimed {
                    assignments: claimed.assignments,
                    acks,
                    effects: claimed.effects,
                });
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Ok(Claimed {
                        acks,
                        ..Claimed::default()
                    });
                }
            }
        }
    }

    pub async fn heartbeat(&self, node_id: i64, runs: &[i64]) -> Result<Vec<i64>, StoreError> {
        self.store
            .heartbeat(node_id, runs, now_ms(), self.lease_ms())
            .await
    }

    pub async fn report(
        &self,
        node_id: i64,
        results: &[RunResult],
    ) -> Result<Vec<ResultAck>, StoreError> {
        let (acks, effects) = self.store.report(node_id, results, now_ms()).await?;
        self.wake(effects);
        Ok(acks)
    }

    pub async fn cancel_job(&self, job: i64) -> Result<Cancelled, StoreError> {
        let cancelled = self.store.cancel_job(job, now_ms()).await?;
        self.wake(cancelled.effects);
        Ok(cancelled)
    }

    pub async fn cancel_graph(&self, graph: i64) -> Result<Cancelled, StoreError> {
        let cancelled = self.store.cancel_graph(graph, now_ms()).await?;
        self.wake(cancelled.effects);
        Ok(cancelled)
    }

    pub async fn retrigger(&self, job: i64, with_dependents: bool) -> Result<Vec<i64>, StoreError> {
        let jobs = self.store.retrigger(job, with_dependents, now_ms()).await?;
        self.wake(Effects {
            ready: true,
            changed: true,
        });
        Ok(jobs)
    }

    pub async fn expire_leases(&self) -> Result<(), StoreError> {
        let effects = self.store.expire_leases(now_ms()).await?;
        self.wake(effects);
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Ends runs whose node stopped renewing them. Runs beside the dispatch path, never in it.
pub(crate) async fn sweep_leases(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = state.queue.expire_leases().await {
            tracing::warn!("lease sweep failed: {e}");
        }
    }
}
