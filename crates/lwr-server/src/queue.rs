//! The queue as the server runs it: store transactions plus in-memory wake-ups.
//!
//! Two counters live in `watch` channels. `ready` moves when jobs may have become claimable
//! in numbers not counted (a submission, a retry); nodes waiting in a long-poll claim wake on
//! it, so an idle node gets new work within milliseconds and nothing in the dispatch path
//! sleeps. A job released by its need's success is counted instead, and wakes one waiting
//! claim (`one`): waking them all would have every one of them search again for a job only
//! one can take. A claim woken that way that takes nothing wakes them all, so a job the
//! first waiter cannot run still reaches the one that can. `changes` moves when any job
//! changes state; `push --wait` long-polls on it. A third, `stops`, moves when a node says
//! it is stopping, so that its waiting claim ends at once with no job (see [`Queue::stopping`]).
//!
//! Servers sharing a PostgreSQL database hear each other's changes through LISTEN/NOTIFY
//! ([`Queue::follow`]) and move the same counters, so a node waiting on one server
//! wakes when a job is made ready through another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_model::api::{GraphInfo, ResultAck, RunResult, SubmitGraph};
use lwr_model::timing;
use lwr_model::{DurationMs, GraphId, JobId, NodeId, PushId, RunId};
use lwr_store::{Cancelled, Claimed, Effects, Event, Events, Store, StoreError, now_ms};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout_at};

use crate::AppState;
use crate::followed::{Followed, JobFeed};
use crate::metrics::Metrics;

pub use lwr_model::timing::MAX_WAIT;

/// How often a wait for a graph's end reads the graph again at most, however many changes
/// the server sees meanwhile.
const FINISHED_RECHECK: Duration = Duration::from_millis(5);

/// How long a node that said it stops takes no job here, unless it registers first: twice
/// what it waits for its claim's answer after saying so.
const STOPPING_HOLD: Duration = Duration::from_secs(2 * timing::STOP_CLAIM_WAIT.as_secs());

pub struct Queue {
    store: Store,
    lease: Duration,
    ready: watch::Sender<u64>,
    /// Wakes one waiting claim per counted job released (see the module documentation).
    one: Notify,
    changes: watch::Sender<i64>,
    /// Claims and graph waits parked on a counter now.
    waiting: AtomicUsize,
    /// Claims parked now, or woken and not done looking again.
    claims_waiting: AtomicUsize,
    /// Jobs viewers follow, each read once per change for all of them.
    followed: Followed,
    /// This server's counters for `GET /metrics`.
    metrics: Arc<Metrics>,
    /// Nodes that said they are stopping, and until when that holds (a stopping node's
    /// claims take no job; it registers again when it starts, which ends it sooner).
    stopping: Mutex<HashMap<NodeId, Instant>>,
    /// Moves when a node is added to `stopping`: waiting claims look whether it is theirs.
    stops: watch::Sender<u64>,
}

/// What a claim asks for: up to `max` jobs, of which `ahead` beyond the node's free slots
/// (see [`lwr_model::api::ClaimRequest::ahead`]).
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub max: u32,
    pub ahead: u32,
}

impl Want {
    /// Up to `max` jobs, all for free slots.
    pub fn free(max: u32) -> Want {
        Want { max, ahead: 0 }
    }
}

/// Counts a parked waiter while it lives (a request dropped mid-wait stops counting too).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a AtomicUsize) -> Parked<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Parked(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Queue {
    pub fn new(store: Store, lease: Duration) -> Queue {
        // Start the change counter at the clock so it only grows across restarts: a client
        // holding a counter from before a restart still sees the next change.
        let (changes, _) = watch::channel(now_ms().get() * 1000);
        let (ready, _) = watch::channel(0);
        let (stops, _) = watch::channel(0);
        Queue {
            store,
            lease,
            ready,
            one: Notify::new(),
            changes,
            waiting: AtomicUsize::new(0),
            claims_waiting: AtomicUsize::new(0),
            followed: Followed::default(),
            metrics: Default::default(),
            stopping: Mutex::new(HashMap::new()),
            stops,
        }
    }

    /// Node `id` is stopping: its claim waiting here ends now with no job, and its claims
    /// until it registers again take none. The node waits for that answer rather than
    /// hanging up mid-claim, which would leave a job handed out in that moment to wait out
    /// its lease. Held for [`STOPPING_HOLD`]: the node hangs up on its claim
    /// [`timing::STOP_CLAIM_WAIT`] after saying it stops, so nothing of it comes later.
    pub fn stopping(&self, id: NodeId) {
        let now = Instant::now();
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        stopping.retain(|_, until| *until > now);
        stopping.insert(id, now + STOPPING_HOLD);
        drop(stopping);
        self.stops.send_modify(|n| *n += 1);
    }

    /// Node `id` registered: it is running again, whatever it said before.
    pub fn registered(&self, id: NodeId) {
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        stopping.remove(&id);
    }

    /// Returns once node `id` is stopping, as `stops` tells; other nodes' stops wake no
    /// claim but their own.
    async fn until_stopping(&self, id: NodeId, stops: &mut watch::Receiver<u64>) {
        loop {
            if stops.changed().await.is_err() {
                // The queue, which holds the sender, is gone: nothing moves it again.
                std::future::pending::<()>().await;
            }
            if self.is_stopping(id) {
                return;
            }
        }
    }

    /// Whether node `id` said it is stopping (and has not registered since).
    fn is_stopping(&self, id: NodeId) -> bool {
        let stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        stopping
            .get(&id)
            .is_some_and(|until| *until > Instant::now())
    }

    /// This server's counters (claims, results, requests).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Claims and graph waits that looked, found nothing and now wait for a wake-up: once a
    /// test sees its waiter here, only a wake-up can answer it before its timeout.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Nodes' claims waiting on this server for work now (or woken and looking again):
    /// nodes with free slots and nothing to run.
    pub fn claims_waiting(&self) -> usize {
        self.claims_waiting.load(Ordering::SeqCst)
    }

    /// Moves whenever some job changes state.
    pub fn subscribe_changes(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    /// Job `id` as its followers see it: read once per change, whatever their number.
    pub fn follow_job(&self, id: JobId) -> JobFeed {
        self.followed.follow(id, &self.store, &self.changes)
    }

    /// Reads of followed jobs so far (one per change per followed job, not per follower).
    pub fn followed_reads(&self) -> u64 {
        self.followed.reads()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lease_ms(&self) -> DurationMs {
        DurationMs::from_std(self.lease)
    }

    /// Wakes whoever the effects of a transaction concern.
    pub fn wake(&self, effects: Effects) {
        if effects.ready {
            self.ready.send_modify(|n| *n += 1);
        } else if effects.released > 0 {
            // No more than are waiting, and one for a claim about to wait (`notify_one`
            // keeps one wake-up for the next waiter when nobody waits).
            let waiting = u32::try_from(self.waiting()).unwrap_or(u32::MAX);
            for _ in 0..effects.released.min(waiting.saturating_add(1)) {
                self.one.notify_one();
            }
        }
        if effects.changed {
            // At least the clock, so counters of servers sharing a database stay close and
            // a client that moves to another server behind a load balancer still sees the
            // next change there.
            let clock = now_ms().get() * 1000;
            self.changes.send_modify(|n| *n = (*n + 1).max(clock));
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
        let now = now_ms();
        let id = self.store.submit_graph(sub, now).await?;
        // Its jobs without needs are ready: as many waiting claims look, not all of them.
        let roots = sub.graph.jobs.iter().filter(|j| j.needs.is_empty()).count();
        self.wake(Effects {
            released: u32::try_from(roots).unwrap_or(u32::MAX),
            ..Effects::changed(false)
        });
        // A new graph is known without reading it back; a push's graph had jobs before.
        match lwr_store::submitted_graph(id, sub, now) {
            Some(mut info) => {
                info.seq = *self.changes.borrow();
                Ok(info)
            }
            None => self.graph(id, None, Duration::ZERO).await,
        }
    }

    /// A graph's state. With `after`, waits up to `wait` for a change newer than `after`.
    pub async fn graph(
        &self,
        id: GraphId,
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
            let _parked = Parked::new(&self.waiting);
            let _ = timeout_at(deadline, rx.changed()).await;
        }
        let seq = *rx.borrow();
        let mut info = self.store.graph(id).await?;
        info.seq = seq;
        Ok(info)
    }

    /// A graph's state once it is finished, or after `wait` if it is not by then (the
    /// state then). `lwr watch` waits with this between its reads of the graph's jobs, so
    /// the graph's end is heard at once however seldom it reads them. A change anywhere
    /// reads the graph again, at most every [`FINISHED_RECHECK`].
    pub async fn graph_finished(
        &self,
        id: GraphId,
        wait: Duration,
    ) -> Result<GraphInfo, StoreError> {
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut rx = self.changes.subscribe();
        let _parked = Parked::new(&self.waiting);
        loop {
            // Marked seen before the read, so a change during it is waited for no longer.
            let seq = *rx.borrow_and_update();
            let mut info = self.store.graph(id).await?;
            info.seq = seq;
            if info.finished || Instant::now() >= deadline {
                return Ok(info);
            }
            let next = deadline.min(Instant::now() + FINISHED_RECHECK);
            let _ = timeout_at(deadline, rx.changed()).await;
            tokio::time::sleep_until(next).await;
        }
    }

    /// Records the results a node sends along, then claims up to `want.max` jobs for it,
    /// waiting up to `wait` for one to become ready.
    pub async fn claim(
        &self,
        node_id: NodeId,
        want: Want,
        results: &[RunResult],
        wait: Duration,
    ) -> Result<Claimed, StoreError> {
        let Want { max, ahead } = want;
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut rx = self.ready.subscribe();
        let mut stops = self.stops.subscribe();
        let mut results = results;
        let mut acks = Vec::new();
        // Woken for one counted job: taking nothing then passes the wake-up on to everyone.
        let mut woken_for_one = false;
        // This claim's place among the waiting claims, from its wait until it has looked
        // again: two claims woken together each see the other.
        let mut waited: Option<Parked> = None;
        loop {
            // Mark the counter seen before looking, so a job made ready while we look
            // wakes us instead of being missed.
            rx.borrow_and_update();
            stops.borrow_and_update();
            // A stopping node takes nothing; what it reports is still recorded.
            let stopping = self.is_stopping(node_id);
            // Work that came while this claim waited goes to the waiting nodes' free slots
            // first: a job this node took ahead would wait behind its running jobs while
            // another node idles (its deck gives it back only after a while). The other
            // waiting claims are this server's, and may be of nodes that cannot run the
            // job: a job left for them then waits for this node's next claim, a round trip.
            let take = if stopping {
                0
            } else if waited.is_some() && self.claims_waiting() > 1 {
                max - ahead.min(max.saturating_sub(1))
            } else {
                max
            };
            let claimed = self
                .store
                .claim(node_id, take, results, now_ms(), self.lease_ms())
                .await;
            drop(waited.take());
            let claimed = claimed?;
            self.wake(claimed.effects);
            self.metrics.claimed(&claimed.waited);
            if !results.is_empty() {
                self.metrics.recorded(results, &claimed.acks);
                acks = claimed.acks;
                results = &[];
            }
            if !claimed.assignments.is_empty() || max == 0 || stopping {
                return Ok(Claimed {
                    assignments: claimed.assignments,
                    acks,
                    effects: claimed.effects,
                    retry_in_ms: None,
                    waited: claimed.waited,
                });
            }
            if std::mem::take(&mut woken_for_one) {
                // The job this claim was woken for is not one it can run (or another claim
                // took it): the others look. This claim then looks once more itself, as the
                // wake-up it sends marks its own counter too; marking it seen could swallow
                // another wake-up sent meanwhile.
                self.ready.send_modify(|n| *n += 1);
            }
            // A job held for a better node is looked at again when the hold runs out, so a
            // preferred node that never claims cannot leave it waiting.
            let until = match claimed.retry_in_ms {
                Some(d) => deadline.min(Instant::now() + d.to_std().max(Duration::from_millis(1))),
                None => deadline,
            };
            let parked = Parked::new(&self.waiting);
            // A claim that does not wait (its time is up) is no node waiting for work.
            if until > Instant::now() {
                waited = Some(Parked::new(&self.claims_waiting));
            }
            // A `notify_one` given to this wait and dropped unfinished (the other branch won,
            // the time ran out, the node hung up) passes to the next waiter: none is lost.
            let woken = timeout_at(until, async {
                tokio::select! {
                    changed = rx.changed() => changed.is_ok(),
                    () = self.until_stopping(node_id, &mut stops) => true,
                    () = self.one.notified() => {
                        woken_for_one = true;
                        true
                    }
                }
            })
            .await;
            drop(parked);
            match woken {
                Ok(true) => continue,
                _ if until < deadline => continue,
                _ => {
                    return Ok(Claimed {
                        acks,
                        ..Claimed::default()
                    });
                }
            }
        }
    }

    pub async fn heartbeat(
        &self,
        node_id: NodeId,
        runs: &[RunId],
        unhealthy: Option<&str>,
    ) -> Result<Vec<RunId>, StoreError> {
        let abandon = self
            .store
            .heartbeat_health(node_id, runs, now_ms(), self.lease_ms(), unhealthy)
            .await?;
        if unhealthy.is_some() {
            // Jobs held for this node look again: it is no longer waited for.
            self.wake(Effects::NEW_WORK);
        }
        Ok(abandon)
    }

    pub async fn report(
        &self,
        node_id: NodeId,
        results: &[RunResult],
    ) -> Result<Vec<ResultAck>, StoreError> {
        let (acks, effects) = self.store.report(node_id, results, now_ms()).await?;
        self.wake(effects);
        self.metrics.recorded(results, &acks);
        Ok(acks)
    }

    pub async fn cancel_job(&self, job: JobId) -> Result<Cancelled, StoreError> {
        let cancelled = self.store.cancel_job(job, now_ms()).await?;
        self.wake(cancelled.effects);
        Ok(cancelled)
    }

    pub async fn cancel_graph(&self, graph: GraphId) -> Result<Cancelled, StoreError> {
        let cancelled = self.store.cancel_graph(graph, now_ms()).await?;
        self.wake(cancelled.effects);
        Ok(cancelled)
    }

    pub async fn retrigger(
        &self,
        job: JobId,
        with_dependents: bool,
    ) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.store.retrigger(job, with_dependents, now_ms()).await?;
        self.wake(Effects::NEW_WORK);
        Ok(jobs)
    }

    /// Records a successful poll (see [`Store::record_heads`]); wakes the nodes for the
    /// decision jobs of new pushes.
    pub async fn record_heads(
        &self,
        repo: i64,
        heads: &[(String, String)],
    ) -> Result<Vec<PushId>, StoreError> {
        let pushes = self.store.record_heads(repo, heads, now_ms()).await?;
        if !pushes.is_empty() {
            self.wake(Effects::NEW_WORK);
        }
        Ok(pushes)
    }

    /// Adds a job a push's graph defines but did not run, with its missing needs.
    pub async fn trigger(&self, push: PushId, job: &str) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.store.trigger(push, job, now_ms()).await?;
        self.wake(Effects::NEW_WORK);
        Ok(jobs)
    }

    pub async fn expire_leases(&self) -> Result<(), StoreError> {
        let effects = self.store.expire_leases(now_ms()).await?;
        self.wake(effects);
        Ok(())
    }

    /// Wakes this server's waiters when another server sharing the database changes
    /// something; runs until dropped. After the listening connection was lost it wakes
    /// everyone once: what was sent meanwhile is gone, and a waiter that looks again finds
    /// any job it missed.
    pub async fn follow(&self, mut events: Events) {
        loop {
            match events.next(timing::LISTEN_RETRY).await {
                Event::Wake(effects) => self.wake(effects),
                Event::Reconnected => self.wake(Effects::NEW_WORK),
            }
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Ends runs whose node stopped renewing them. Runs beside the dispatch path, never in it,
/// on the one server that holds the duty.
pub(crate) async fn sweep_leases(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(timing::LEASE_SWEEP);
    loop {
        tick.tick().await;
        if !state.duties.holds(crate::duty::Duty::LeaseSweep) {
            continue;
        }
        if let Err(e) = state.queue.expire_leases().await {
            tracing::warn!("lease sweep failed: {e}");
        }
    }
}
