//! Reporting results. Each result is in the journal before it is sent, and is sent until the
//! server takes it: log first, then the result.
//!
//! Results wait in an outbox. The claim loop takes them along with its next claim (a job just
//! ended, so a slot is free and a claim follows at once), which saves a request per job. If a
//! claim is already in flight (it may be held open for a while), the reporting task sends
//! them on their own instead, so no result waits for a long poll to end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_client::{Client, ClientError};
use lwr_model::NodeId;
use lwr_model::api::{ReportResults, ResultAck, RunResult};
use tokio::sync::Notify;

use crate::journal::Journal;
use lwr_model::sync::lock;

use crate::{Backoff, artifact, exec};

/// Most results sent in one request.
const MAX_BATCH: usize = 500;

#[derive(Clone)]
pub(crate) struct Reporter {
    shared: Arc<Shared>,
}

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
}

#[derive(Default)]
struct Outbox {
    results: Vec<Pending>,
    /// A claim is in flight: results arriving now go out on their own.
    claiming: bool,
    /// No claim will follow (the node is stopping): everything goes out on its own.
    direct: bool,
}

struct Pending {
    result: RunResult,
    log_sent: bool,
    /// The run has an outbox of artifacts to upload before its result.
    outputs: bool,
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

    /// Records a result in the journal and queues it for reporting; `outputs` says the run
    /// has artifacts waiting in its outbox.
    pub(crate) fn submit(&self, result: RunResult, outputs: bool) {
        self.shared.journal.ended(&result);
        self.queue(result, outputs);
    }

    fn queue(&self, result: RunResult, outputs: bool) {
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let mut outbox = lock(&self.shared.outbox);
        outbox.results.push(Pending {
            result,
            log_sent: false,
            outputs,
        });
        if outbox.claiming || outbox.direct {
            self.shared.send_now.notify_one();
        }
    }

    /// Called by the claim loop before it claims: takes the waiting results, with their logs
    /// uploaded, to send with the claim. Until [`Reporter::end_claim`], new results go out on
    /// their own.
    pub(crate) async fn begin_claim(&self) -> Result<Vec<RunResult>, ClientError> {
        let mut taken = {
            let mut outbox = lock(&self.shared.outbox);
            outbox.claiming = true;
            let n = outbox.results.len().min(MAX_BATCH);
            outbox.results.drain(..n).collect::<Vec<_>>()
        };
        if let Err(e) = self.shared.upload_logs(&mut taken).await {
            self.put_back(taken);
            return Err(e);
        }
        Ok(taken.into_iter().map(|p| p.result).collect())
    }

    /// Called by the claim loop when its claim is answered (`acks`) or failed (`None`: the
    /// results go back to the outbox and are sent again; a repeated result is harmless).
    pub(crate) fn end_claim(&self, sent: Vec<RunResult>, acks: Option<&[ResultAck]>) {
        match acks {
            Some(acks) => self.shared.acked(acks),
            None => self.put_back(
                sent.into_iter()
                    .map(|result| Pending {
                        result,
                        log_sent: true,
                        outputs: false,
                    })
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
    /// The reporting task: sends the outbox whenever no claim will carry it.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            self.send_now.notified().await;
            loop {
                let mut batch = {
                    let mut outbox = lock(&self.outbox);
                    if !(outbox.claiming || outbox.direct) || outbox.results.is_empty() {
                        break;
                    }
                    let n = outbox.results.len().min(MAX_BATCH);
                    outbox.results.drain(..n).collect::<Vec<_>>()
                };
                // Until the server answers, this batch is ours: retry it, adding nothing.
                loop {
                    match self.send(&mut batch).await {
                        Ok(()) => {
                            backoff.reset();
                            break;
                        }
                        Err(e) => {
                            backoff
                                .wait(&format!("reporting {} results: {e}", batch.len()))
                                .await
                        }
                    }
                }
            }
        }
    }

    async fn send(&self, batch: &mut [Pending]) -> Result<(), ClientError> {
        self.upload_logs(batch).await?;
        let report = ReportResults {
            results: batch.iter().map(|p| p.result.clone()).collect(),
        };
        let ack = self.client.report(self.node, &report).await?;
        self.acked(&ack.acks);
        Ok(())
    }

    /// Uploads what finished runs leave besides their result: artifacts and manifest (from
    /// the run's outbox, when it has one), then the log (when the job wrote one).
    async fn upload_logs(&self, batch: &mut [Pending]) -> Result<(), ClientError> {
        for p in batch.iter_mut().filter(|p| !p.log_sent) {
            if p.outputs {
                artifact::upload(&self.client, &self.work_dir, self.node, &mut p.result).await?;
                p.outputs = false;
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
                        continue;
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
        }
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
        }
        self.journal.reported(&done);
        let n = done.len();
        if n > 0 && self.pending.fetch_sub(n, Ordering::SeqCst) == n {
            self.drained.notify_waiters();
        }
    }
}
