//! Claims that arrive together share one transaction (group commit).
//!
//! A claim's cost on SQLite is mostly round trips to the connection's thread, one per
//! statement (BEGIN, the results, the search, the take, COMMIT), and it waits for the one
//! writer connection anyway. So claims whose results are plain successes go to one task,
//! the combiner, which takes every claim that queued while its last transaction ran and
//! serves them all in the next: one BEGIN and COMMIT, one statement ending all their runs,
//! two releasing dependents, one search, two statements taking the jobs (on PostgreSQL one
//! statement for the results, one for the take, and the notification with the COMMIT),
//! whatever the number of nodes. Each claim is still answered as if it had been alone: its own acks,
//! assignments and holds, and nothing of it is acknowledged before the commit. A job goes
//! to one claimer only: the search offers each job read to the claimers in turn, and the
//! first that takes it gets it.
//!
//! When a combined transaction fails, each of its claims runs again alone, so one claim's
//! error is its own. Claims with failures, exceptions or a node marked bad, and nodes
//! counting infrastructure errors, always go alone ([`Store::claim_alone`]), and so does
//! every claim where no combiner runs (the first claim starts it on its multi-thread
//! runtime; on a current-thread runtime none is started).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lwr_model::api::{ResultAck, RunResult};
use lwr_model::{DurationMs, JobId, Millis, NodeId, RunId};
use tokio::sync::{mpsc, oneshot};

use crate::error::Op;
use crate::nodes::KnownNode;
use crate::queue::{Claimed, Claimer, Effects, Succeeded, first_page_len, refused, succeed_runs};
use crate::{Result, Store, StoreError};

/// Claims served by one transaction at most, so that a burst does not hold the writer
/// (and each claim's answer) for long.
const MAX_CLAIMS: usize = 32;

/// Results in one combined transaction at most (a claim's own are at most
/// `queue::CLAIM_BATCH`); more wait for the next.
const MAX_RESULTS: usize = 256;

/// A claim for the combiner.
pub(crate) struct Request {
    pub node_id: NodeId,
    pub max: u32,
    pub results: Vec<RunResult>,
    pub now: Millis,
    pub lease: DurationMs,
}

/// A claim waiting for its transaction, with the store to run it on.
struct Pending {
    store: Store,
    request: Request,
    answer: oneshot::Sender<Result<Claimed>>,
}

impl Pending {
    /// Serves this claim in a transaction of its own and answers it.
    async fn serve_alone(self) {
        let r = &self.request;
        let claimed = self
            .store
            .claim_alone(r.node_id, r.max, &r.results, r.now, r.lease)
            .await;
        let _ = self.answer.send(claimed);
    }
}

/// The way to the combiner task, started by the first claim on a runtime. It holds no
/// store itself (each claim brings one), so it ends when the last store clone is dropped.
#[derive(Clone, Default)]
pub(crate) struct Combiner(Arc<Mutex<Option<mpsc::UnboundedSender<Pending>>>>);

impl Combiner {
    /// Queues `request`; the answer comes on the receiver (see [`answer`]). `None` when no
    /// combiner can run (no multi-thread tokio runtime here to start it on), and the caller
    /// claims alone.
    pub(crate) fn submit(
        &self,
        store: &Store,
        request: Request,
    ) -> Option<oneshot::Receiver<Result<Claimed>>> {
        let (answer, answered) = oneshot::channel();
        let mut pending = Pending {
            store: store.clone(),
            request,
            answer,
        };
        let mut sender = lwr_model::sync::lock(&self.0);
        if let Some(tx) = sender.as_ref() {
            match tx.send(pending) {
                Ok(()) => return Some(answered),
                // The task ended with the runtime it ran on (a test's): start another here.
                Err(mpsc::error::SendError(back)) => pending = back,
            }
        }
        // Only on a runtime whose workers drive the task whatever its callers do: on a
        // current-thread runtime (tests, tools) it would run only while that thread waits
        // in the runtime, and claims from elsewhere could wait for it indefinitely.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(run(rx));
        tx.send(pending).ok()?;
        *sender = Some(tx);
        Some(answered)
    }
}

/// The answer to a claim [`Combiner::submit`] queued.
pub(crate) async fn answer(answered: oneshot::Receiver<Result<Claimed>>) -> Result<Claimed> {
    answered.await.unwrap_or_else(|_| {
        Err(StoreError::Conflict(
            "the server stopped while the claim was in progress".into(),
        ))
    })
}

/// The combiner: each turn takes what queued meanwhile, up to the bounds, and serves it.
async fn run(mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut next: Option<Pending> = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let store = first.store.clone();
        let mut results = first.request.results.len();
        let mut batch = vec![first];
        while batch.len() < MAX_CLAIMS {
            let Ok(p) = rx.try_recv() else { break };
            if results + p.request.results.len() > MAX_RESULTS {
                next = Some(p);
                break;
            }
            results += p.request.results.len();
            batch.push(p);
        }
        // A claim whose node hung up is not served: its results stay unacknowledged and
        // the node sends them again.
        batch.retain(|p| !p.answer.is_closed());
        if !batch.is_empty() {
            // The turn's number of claims in place of a run. `turned` comes once the turn
            // has committed and its answers went out.
            let claims = batch.len();
            tracing::trace!(target: lwr_model::STEP_LOG, "step turn {claims}");
            store.serve(batch).await;
            tracing::trace!(target: lwr_model::STEP_LOG, "step turned {claims}");
        }
    }
}

impl Store {
    /// Serves claims that queued together; answers each.
    async fn serve(&self, batch: Vec<Pending>) {
        let mut together = Vec::with_capacity(batch.len());
        // Claims that name a run another node's claim of this batch names too: the
        // combined statement checks one node per run, so they go alone, after it.
        let mut later = Vec::new();
        let mut named: HashMap<RunId, NodeId> = HashMap::new();
        for p in batch {
            let node_id = p.request.node_id;
            let clash = p
                .request
                .results
                .iter()
                .any(|r| named.get(&r.run_id).is_some_and(|n| *n != node_id));
            if clash {
                later.push(p);
                continue;
            }
            for r in &p.request.results {
                named.entry(r.run_id).or_insert(node_id);
            }
            // Read outside the transaction (and cached); an unknown node is its own error.
            let node = match self.node_properties(p.request.node_id).await {
                Ok(node) => node,
                Err(e) => {
                    let _ = p.answer.send(Err(e));
                    continue;
                }
            };
            if self.pool.erring(p.request.node_id) {
                // Its next run that ends clears its count of errors: a statement of its own.
                p.serve_alone().await;
                continue;
            }
            together.push((p, node));
        }
        if !together.is_empty() {
            self.serve_together(together).await;
        }
        for p in later {
            p.serve_alone().await;
        }
    }

    /// Serves claims in one transaction, or each alone if that fails.
    async fn serve_together(&self, mut together: Vec<(Pending, Arc<KnownNode>)>) {
        let requests: Vec<(&Request, Arc<KnownNode>)> = together
            .iter()
            .map(|(p, node)| (&p.request, node.clone()))
            .collect();
        match self.claim_together(&requests).await {
            Ok(answers) => {
                for ((p, _), claimed) in together.into_iter().zip(answers) {
                    let _ = p.answer.send(Ok(claimed));
                }
            }
            Err(e) if together.len() == 1 => {
                if let Some((p, _)) = together.pop() {
                    let _ = p.answer.send(Err(e));
                }
            }
            Err(e) => {
                // Which claim caused it is unknown: each runs alone, its error its own.
                tracing::debug!("a combined claim failed ({e}); its claims run alone");
                for (p, _) in together {
                    p.serve_alone().await;
                }
            }
        }
    }

    /// Records every request's results and hands each its jobs, in one transaction; one
    /// answer per request, in order.
    async fn claim_together(
        &self,
        requests: &[(&Request, Arc<KnownNode>)],
    ) -> Result<Vec<Claimed>> {
        self.refresh_pool().await?;
        // The transaction's time: the latest of its claims' (they arrived within it).
        let now = requests
            .iter()
            .map(|(r, _)| r.now)
            .max()
            .unwrap_or_else(crate::now_ms);
        // On SQLite the BEGIN goes with the first statement: the search, or the results'.
        let mut tx = self.begin_claim(true).await.op("starting claim")?;
        let sent: Vec<(NodeId, &RunResult)> = requests
            .iter()
            .flat_map(|(r, _)| r.results.iter().map(|res| (r.node_id, res)))
            .collect();
        let mut claimers: Vec<Claimer> = requests
            .iter()
            .map(|(r, node)| self.claimer(r.node_id, node.clone(), r.max, r.lease, now))
            .collect();
        let Succeeded {
            mut finished,
            released,
            mut effects,
            first_page,
        } = if sent.is_empty() {
            Succeeded {
                finished: HashMap::new(),
                released: Vec::new(),
                effects: Effects::default(),
                first_page: None,
            }
        } else {
            // On SQLite the search goes along (one round trip less).
            let search = claimers
                .iter()
                .any(Claimer::takes)
                .then(|| first_page_len(&claimers));
            succeed_runs(&mut tx, self.dialect, &sent, now, search).await?
        };
        let mut acks: Vec<Vec<ResultAck>> = Vec::with_capacity(requests.len());
        let mut ended: Vec<usize> = Vec::with_capacity(requests.len());
        for (r, _) in requests {
            let mut mine = Vec::with_capacity(r.results.len());
            let mut count = 0;
            for result in &r.results {
                // A run named twice ended once; the repeat is answered as a repeat.
                if take_if_ours(&mut finished, result.run_id, r.node_id) {
                    count += 1;
                    mine.push(ResultAck {
                        run_id: result.run_id,
                        recorded: true,
                        note: None,
                    });
                } else {
                    mine.push(refused(&mut tx, r.node_id, result).await?);
                }
            }
            acks.push(mine);
            ended.push(count);
        }
        self.take_for(&mut tx, &mut claimers, now, first_page)
            .await?;
        // Jobs these claims released and took themselves need nobody woken for them.
        let took = claimers
            .iter()
            .flat_map(|c| &c.assignments)
            .filter(|a| released.contains(&a.job_id))
            .count();
        effects.released = effects.released.saturating_sub(took as u32);
        effects.changed |= claimers.iter().any(|c| !c.assignments.is_empty());
        self.commit_notifying(tx, effects, "committing claim")
            .await?;
        let mut answers = Vec::with_capacity(requests.len());
        for (i, ((claimer, acks), ended)) in claimers.into_iter().zip(acks).zip(ended).enumerate() {
            self.pool.set_erring(claimer.node_id, false);
            self.note_claim(claimer.node_id, claimer.assignments.len(), ended, now);
            // Whom to wake is the transaction's: told once, with the first answer.
            let mine = if i == 0 {
                effects
            } else {
                Effects {
                    ready: false,
                    released: 0,
                    changed: effects.changed,
                }
            };
            answers.push(Claimed {
                assignments: claimer.assignments,
                acks,
                effects: mine,
                retry_in_ms: claimer.retry_in,
                waited: claimer.waited,
            });
        }
        Ok(answers)
    }
}

/// Whether `run` ended in this transaction as `node`'s; each run is counted once.
fn take_if_ours(finished: &mut HashMap<RunId, (JobId, NodeId)>, run: RunId, node: NodeId) -> bool {
    match finished.get(&run) {
        Some((_, owner)) if *owner == node => {
            finished.remove(&run);
            true
        }
        _ => false,
    }
}
