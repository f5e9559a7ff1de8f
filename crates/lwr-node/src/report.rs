//! Reporting results. Each result is in the journal before it is sent, and is sent until the
//! server takes it: log first, then the result.
//!
//! Results wait in an outbox. The claim loop takes them along with its next claim (a job just
//! ended, so a slot is free and a claim follows at once), which saves a request per job. If a
//! claim is already in flight (it may be held open for a while), the reporting task sends
//! them at once instead, so no result waits for a long poll to end: as a claim that does not
//! wait, for the slots free now (the ones these results' jobs just left, see [`Taker`]), so
//! the server records them and hands out the next jobs in one request and one transaction
//! rather than a report and a claim; as a plain report when no slot is free or the node is
//! stopping. A slot that goes on to a job claimed ahead ([`crate::deck`]) makes no claim:
//! its result goes out at once too, as a claim for the deck's room, which refills it.
//!
//! An upload the server answers with an error (507: its storage is full) does not hold up
//! claims, heartbeats or other results: its result waits aside and is tried again after a
//! pause, [`timing::UPLOAD_TRIES`] times in all; then a run whose artifacts could not be
//! stored ends as an infrastructure error with the server's words, and a log that could
//! not be stored is left out. Meanwhile the run's lease is renewed by the heartbeats
//! ([`Reporter::unreported`]), so the server does not give the job away.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use lwr_client::{Client, ClientError};
use lwr_model::api::{Assignment, ClaimRequest, Outcome, ReportResults, ResultAck, RunResult};
use lwr_model::{NodeId, RunId, step_run, timing};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::journal::Journal;
use lwr_model::sync::lock;

use crate::{Backoff, artifact, exec};

/// Most results sent in one request.
const MAX_BATCH: usize = 500;
/// Pause before uploading again to a server that could not be reached.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Reporter {
    shared: Arc<Shared>,
}

/// Lets the reporting task take jobs for the node's free slots with the results it sends.
pub(crate) trait Taker: Send + Sync {
    /// The node's slots, when it may take jobs now (not stopping, draining or unhealthy).
    fn slots(&self) -> Option<Arc<Semaphore>>;
    /// Starts the jobs a claim handed out, each holding one of `slots`; the rest are freed.
    /// Jobs beyond `slots` wait on the node's deck for the next slot that frees.
    fn start(&self, jobs: Vec<Assignment>, slots: Vec<OwnedSemaphorePermit>);
    /// How many jobs the node would take now beyond its free slots, on its deck.
    fn ahead(&self) -> usize;
}

/// How long the reporting task waits for a slot to take jobs for: the slot a result's job
/// leaves is freed a moment after the result is queued (its directory is emptied first).
const SLOT_WAIT: Duration = Duration::from_millis(20);

struct Shared {
    client: Client,
    journal: Arc<Journal>,
    work_dir: PathBuf,
    node: NodeId,
    outbox: Mutex<Outbox>,
    /// Wakes the reporting task when it should send the outbox itself.
    send_now: Notify,
    /// Results not yet taken by the server.
    pending: AtomicUsize,
    drained: Notify,
    /// Set once the node exists: takes jobs with the results sent on their own.
    taker: OnceLock<Arc<dyn Taker>>,
}

#[derive(Default)]
struct Outbox {
    results: Vec<Pending>,
    /// A claim is in flight: results arriving now go out on their own.
    claiming: bool,
    /// No claim will follow (the node is stopping): everything goes out on its own.
    direct: bool,
    /// Results are due now, not with the next claim (an upload that failed is due again,
    /// a run given back): the reporting task sends them.
    due_now: bool,
}

struct Pending {
    result: RunResult,
    log_sent: bool,
    /// The run has an outbox of artifacts to upload before its result.
    outputs: bool,
    /// Failed tries of its current upload that the server answered.
    tries: u32,
    /// Its last upload failed: not tried again before then.
    not_before: Option<Instant>,
}

impl Pending {
    fn new(result: RunResult, log_sent: bool, outputs: bool) -> Pending {
        Pending {
            result,
            log_sent,
            outputs,
            tries: 0,
            not_before: None,
        }
    }
}

/// Takes up to `max` results that are due (no failed upload waiting out its pause).
fn take_due(results: &mut Vec<Pending>, max: usize) -> Vec<Pending> {
    let now = Instant::now();
    let mut taken = Vec::new();
    for p in std::mem::take(results) {
        if taken.len() < max && p.not_before.is_none_or(|t| t <= now) {
            taken.push(p);
        } else {
            results.push(p);
        }
    }
    taken
}

impl Reporter {
    /// Starts reporting for the registered node `node`, beginning with `unreported`: results
    /// a previous life of the node left.
    pub(crate) fn start(
        client: Client,
        journal: Arc<Journal>,
        work_dir: PathBuf,
        node: NodeId,
        unreported: Vec<RunResult>,
    ) -> Reporter {
        let reporter = Reporter {
            shared: Arc::new(Shared {
                client,
                journal,
                work_dir,
                node,
                outbox: Mutex::new(Outbox::default()),
                send_now: Notify::new(),
                pending: AtomicUsize::new(0),
                drained: Notify::new(),
                taker: OnceLock::new(),
            }),
        };
        if !unreported.is_empty() {
            tracing::info!(
                "{} from before the node restarted will be reported",
                lwr_model::words::count(unreported.len() as u64, "result", "results")
            );
        }
        for result in unreported {
            let outputs = artifact::outbox(&reporter.shared.work_dir, result.run_id).exists();
            reporter.queue(result, outputs);
        }
        tokio::spawn(reporter.shared.clone().run());
        reporter
    }

    /// From now on, results sent while a claim is in flight take jobs for free slots.
    pub(crate) fn set_taker(&self, taker: Arc<dyn Taker>) {
        let _ = self.shared.taker.set(taker);
    }

    /// Records a result in the journal and queues it for reporting; `outputs` says the run
    /// has artifacts waiting in its outbox.
    pub(crate) fn submit(&self, result: RunResult, outputs: bool) {
        self.shared.journal.ended(&result);
        self.queue(result, outputs);
    }

    /// Queues `result` to go out at once rather than with the next claim: a run given back
    /// unstarted must reach the server while the node's slots stay busy and no claim
    /// follows.
    pub(crate) fn submit_now(&self, result: RunResult) {
        self.submit(result, false);
        self.send_soon();
    }

    /// Has the results waiting go out now rather than with the next claim: a slot that
    /// takes its next job from the deck makes no claim.
    pub(crate) fn send_soon(&self) {
        let mut outbox = lock(&self.shared.outbox);
        if !outbox.results.is_empty() {
            outbox.due_now = true;
            self.shared.send_now.notify_one();
        }
    }

    /// Runs that ended here and whose results the server has not taken yet: their leases
    /// are still the node's to renew.
    pub(crate) fn unreported(&self) -> Vec<RunId> {
        self.shared.journal.unreported()
    }

    fn queue(&self, result: RunResult, outputs: bool) {
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let mut outbox = lock(&self.shared.outbox);
        outbox.results.push(Pending::new(result, false, outputs));
        if outbox.claiming || outbox.direct {
            self.shared.send_now.notify_one();
        }
    }

    /// Called by the claim loop before it claims: takes the waiting results, with their logs
    /// uploaded, to send with the claim. Until [`Reporter::end_claim`], new results go out on
    /// their own. A result whose uploads fail stays behind (see the module documentation).
    pub(crate) async fn begin_claim(&self) -> Vec<RunResult> {
        let taken = {
            let mut outbox = lock(&self.shared.outbox);
            outbox.claiming = true;
            take_due(&mut outbox.results, MAX_BATCH)
        };
        let ready = self.shared.prepare(taken).await;
        ready.into_iter().map(|p| p.result).collect()
    }

    /// Called by the claim loop when its claim is answered (`acks`) or failed (`None`: the
    /// results go back to the outbox and are sent again; a repeated result is harmless).
    pub(crate) fn end_claim(&self, sent: Vec<RunResult>, acks: Option<&[ResultAck]>) {
        match acks {
            Some(acks) => self.shared.acked(acks),
            None => self.put_back(
                sent.into_iter()
                    .map(|result| Pending::new(result, true, false))
                    .collect(),
            ),
        }
        lock(&self.shared.outbox).claiming = false;
    }

    fn put_back(&self, results: Vec<Pending>) {
        let mut outbox = lock(&self.shared.outbox);
        outbox.claiming = false;
        outbox.results.splice(0..0, results);
    }

    /// Sends everything still waiting and waits until the server took it, or `limit` passes
    /// (what is left stays in the journal for the node's next start).
    pub(crate) async fn flush(&self, limit: Duration) {
        lock(&self.shared.outbox).direct = true;
        self.shared.send_now.notify_one();
        let wait = async {
            loop {
                // Register interest before looking, so a drain in between is not missed.
                let drained = self.shared.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.shared.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                drained.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!(
                "{} results not reported yet; they stay in the journal for the next start",
                self.shared.pending.load(Ordering::SeqCst)
            );
        }
    }
}

impl Shared {
    /// The reporting task: sends the outbox whenever no claim will carry it, and retries
    /// uploads that failed once their pause is over.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            self.send_now.notified().await;
            loop {
                let (batch, stopping) = {
                    let mut outbox = lock(&self.outbox);
                    if !(outbox.claiming || outbox.direct || outbox.due_now) {
                        break;
                    }
                    outbox.due_now = false;
                    (take_due(&mut outbox.results, MAX_BATCH), outbox.direct)
                };
                if batch.is_empty() {
                    break;
                }
                let batch = self.prepare(batch).await;
                if batch.is_empty() {
                    continue;
                }
                let report = ReportResults {
                    results: batch.into_iter().map(|p| p.result).collect(),
                };
                if self.take_jobs(&report, stopping).await {
                    backoff.reset();
                    continue;
                }
                // Until the server answers, this batch is ours: retry it, adding nothing.
                loop {
                    match self.client.report(self.node, &report).await {
                        Ok(ack) => {
                            self.acked(&ack.acks);
                            backoff.reset();
                            break;
                        }
                        Err(e) => {
                            backoff
                                .wait(&format!("reporting {} results: {e}", report.results.len()))
                                .await
                        }
                    }
                }
            }
        }
    }

    /// Sends `report`'s results as a claim that does not wait, for the slots free now, and
    /// starts the jobs it gets. `false` when that was not done: no free slot, the node
    /// stopping, or the request failed (the results then go as a report, where a repeat of
    /// a result the server took is harmless).
    async fn take_jobs(&self, report: &ReportResults, stopping: bool) -> bool {
        let Some(taker) = self.taker.get().filter(|_| !stopping) else {
            return false;
        };
        let Some(free) = taker.slots() else {
            return false;
        };
        // While the claim loop waits on the server with the free slots, jobs this claim
        // gets beyond the slot its result left go to that claim instead of the deck, to
        // start at once in those slots.
        let parked = lock(&self.outbox).claiming;
        let ahead = if parked { 0 } else { taker.ahead() };
        let mut slots = Vec::new();
        if ahead == 0 {
            let Ok(Ok(first)) = tokio::time::timeout(SLOT_WAIT, free.clone().acquire_owned()).await
            else {
                return false;
            };
            slots.push(first);
        }
        slots.extend(std::iter::from_fn(|| free.clone().try_acquire_owned().ok()));
        let req = ClaimRequest {
            max: (slots.len() + ahead) as u32,
            wait_ms: 0,
            results: report.results.clone(),
            ahead: ahead as u32,
        };
        crate::step("claim", step_run(req.results.iter().map(|r| r.run_id)));
        match self.client.claim(self.node, &req).await {
            Ok(answer) => {
                crate::step(
                    "answered",
                    step_run(answer.assignments.iter().map(|a| a.run_id)),
                );
                self.acked(&answer.acks);
                taker.start(answer.assignments, slots);
                true
            }
            Err(e) => {
                tracing::debug!("sending results with a claim failed: {e}; reporting them");
                false
            }
        }
    }

    /// Uploads what each result's run left; returns the results ready to report and puts
    /// the others back to wait out a pause.
    async fn prepare(self: &Arc<Self>, batch: Vec<Pending>) -> Vec<Pending> {
        let (mut ready, mut later) = (Vec::with_capacity(batch.len()), Vec::new());
        for mut p in batch {
            loop {
                let Err(e) = self.upload(&mut p).await else {
                    ready.push(p);
                    break;
                };
                let run = p.result.run_id;
                if e.is_unreachable() {
                    // The server is away, not refusing: no try is counted.
                    p.not_before = Some(Instant::now() + UNREACHABLE_PAUSE);
                    later.push(p);
                    break;
                }
                p.tries += 1;
                let what = match p.outputs {
                    true => "its artifacts",
                    false => "its log",
                };
                if p.tries < timing::UPLOAD_TRIES {
                    let pause = timing::UPLOAD_RETRY.pause(p.tries);
                    tracing::warn!(
                        "run {run}: uploading {what} failed (try {} of {}): {e}; trying again in {:.1} s",
                        p.tries,
                        timing::UPLOAD_TRIES,
                        pause.as_secs_f64()
                    );
                    p.not_before = Some(Instant::now() + pause);
                    later.push(p);
                    break;
                }
                p.tries = 0;
                if p.outputs {
                    self.give_up_outputs(&mut p, &e);
                    continue; // the log is still to send
                }
                tracing::error!(
                    "run {run}: its log was not stored after {} tries: {e}; reporting the result without it",
                    timing::UPLOAD_TRIES
                );
                p.log_sent = true;
                ready.push(p);
                break;
            }
        }
        self.defer(later);
        ready
    }

    /// The run's artifacts could not be stored: the run ends as an infrastructure error
    /// saying why (so it is retried, or shows), and its outbox goes.
    fn give_up_outputs(&self, p: &mut Pending, e: &ClientError) {
        let run = p.result.run_id;
        let reason = format!(
            "the run's artifacts could not be stored after {} tries: {e}",
            timing::UPLOAD_TRIES
        );
        tracing::error!("run {run}: {reason}");
        p.result.outcome = Outcome::Exception;
        p.result.reason = Some(reason);
        // The server's storage failed, not this node.
        p.result.server_fault = e.status().is_some_and(|s| s.is_server_error());
        p.outputs = false;
        let dir = artifact::outbox(&self.work_dir, run);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("run {run}: cannot remove {}: {e}", dir.display());
        }
    }

    /// Puts results whose uploads failed back in the outbox, and wakes the reporting task
    /// when the first is due again.
    fn defer(self: &Arc<Self>, later: Vec<Pending>) {
        let Some(due) = later.iter().filter_map(|p| p.not_before).min() else {
            return;
        };
        lock(&self.outbox).results.extend(later);
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            lock(&shared.outbox).due_now = true;
            shared.send_now.notify_one();
        });
    }

    /// Uploads what a finished run leaves besides its result: artifacts and manifest (from
    /// the run's outbox, when it has one), then the log (when the job wrote one).
    async fn upload(&self, p: &mut Pending) -> Result<(), ClientError> {
        if p.log_sent {
            return Ok(());
        }
        if p.outputs {
            artifact::upload(&self.client, &self.work_dir, self.node, &mut p.result).await?;
            p.outputs = false;
            p.tries = 0;
        }
        let log = exec::log_path(&self.work_dir, p.result.run_id);
        let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if size > 0 {
            let path = log.clone();
            let hashed = tokio::task::spawn_blocking(move || artifact::sha256_file(&path))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            let sha256 = match hashed {
                Ok((sha256, _)) => sha256,
                Err(e) => {
                    tracing::warn!("run {}: cannot read its log: {e}", p.result.run_id);
                    p.log_sent = true;
                    return Ok(());
                }
            };
            match self
                .client
                .upload_log(p.result.run_id, self.node, &log, &sha256)
                .await
            {
                Ok(()) => {}
                // The server will not take it (not our run any more, too large): the
                // result report says what the server thinks of the run.
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    tracing::warn!("run {}: log not stored: {e}", p.result.run_id);
                }
                Err(e) => return Err(e),
            }
        }
        p.log_sent = true;
        Ok(())
    }

    fn acked(&self, acks: &[ResultAck]) {
        let mut done = Vec::with_capacity(acks.len());
        for a in acks {
            if !a.recorded {
                tracing::warn!(
                    "run {}: result not recorded: {}",
                    a.run_id,
                    a.note.as_deref().unwrap_or("refused")
                );
            }
            done.push(a.run_id);
            // The server has the result and the log: the node's copy of the log goes, so
            // its disk holds only logs of runs going or waiting to be reported.
            let log = exec::log_path(&self.work_dir, a.run_id);
            if let Err(e) = std::fs::remove_file(&log)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("run {}: cannot remove {}: {e}", a.run_id, log.display());
            }
        }
        self.journal.reported(&done);
        let n = done.len();
        if n > 0 && self.pending.fetch_sub(n, Ordering::SeqCst) == n {
            self.drained.notify_waiters();
        }
    }
}
