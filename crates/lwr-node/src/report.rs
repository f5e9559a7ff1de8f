//! Reporting results: each result is on disk before it is sent, and is sent (log first,
//! then the result, in batches) until the server takes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use lwr_client::{Client, ClientError};
use lwr_model::api::{Outcome, ReportResults, RunResult};
use tokio::sync::{Notify, mpsc};

use crate::{Backoff, exec};

/// Most results sent in one report.
const MAX_BATCH: usize = 500;

pub(crate) struct Reporter {
    tx: mpsc::UnboundedSender<RunResult>,
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    work_dir: PathBuf,
    node: AtomicI64,
    /// Results not yet taken by the server.
    pending: AtomicUsize,
    drained: Notify,
}

struct Pending {
    result: RunResult,
    log_sent: bool,
}

impl Reporter {
    /// Starts the reporting task, first queueing what a previous life of the node left:
    /// results not yet reported, and runs that were going when it stopped.
    pub(crate) fn start(client: Client, work_dir: PathBuf) -> std::io::Result<Reporter> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            work_dir,
            node: AtomicI64::new(0),
            pending: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        let reporter = Reporter { tx, shared: shared.clone() };
        for result in recover(&shared.work_dir)? {
            shared.pending.fetch_add(1, Ordering::SeqCst);
            let _ = reporter.tx.send(result);
        }
        tokio::spawn(shared.run(rx));
        Ok(reporter)
    }

    pub(crate) fn set_node(&self, id: i64) {
        self.shared.node.store(id, Ordering::SeqCst);
    }

    /// Keeps a result on disk and queues it for reporting.
    pub(crate) fn submit(&self, result: RunResult) {
        if let Err(e) = save(&self.shared.work_dir, &result) {
            tracing::error!("run {}: cannot keep the result on disk ({e}); reporting it anyway", result.run_id);
        }
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(result);
    }

    /// Waits until every queued result is reported, or `limit` passes (what is left stays
    /// on disk for the node's next start).
    pub(crate) async fn flush(&self, limit: Duration) {
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
                "{} results not reported yet; they stay on disk for the next start",
                self.shared.pending.load(Ordering::SeqCst)
            );
        }
    }
}

impl Shared {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<RunResult>) {
        let mut batch: Vec<Pending> = Vec::new();
        let mut backoff = Backoff::new();
        loop {
            if batch.is_empty() {
                match rx.recv().await {
                    Some(result) => batch.push(Pending { result, log_sent: false }),
                    None => return,
                }
            }
            // Whatever piled up while the last report was in flight goes in this one.
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(result) => batch.push(Pending { result, log_sent: false }),
                    Err(_) => break,
                }
            }
            match self.send(&mut batch).await {
                Ok(()) => backoff.reset(),
                Err(e) => backoff.wait(&format!("reporting {} results: {e}", batch.len())).await,
            }
        }
    }

    async fn send(&self, batch: &mut Vec<Pending>) -> Result<(), ClientError> {
        let node = self.node.load(Ordering::SeqCst);
        for p in batch.iter_mut().filter(|p| !p.log_sent) {
            let log = exec::log_path(&self.work_dir, p.result.run_id);
            let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if size > 0 {
                match self.client.upload_log(p.result.run_id, node, &log).await {
                    Ok(()) => {}
                    // The server will not take it (not our run any more, too large): the
                    // result report below says what the server thinks of the run.
                    Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                        tracing::warn!("run {}: log not stored: {e}", p.result.run_id);
                    }
                    Err(e) => return Err(e),
                }
            }
            p.log_sent = true;
        }
        let report = ReportResults { results: batch.iter().map(|p| p.result.clone()).collect() };
        let ack = self.client.report(node, &report).await?;
        for a in ack.acks {
            if !a.recorded {
                tracing::warn!(
                    "run {}: result not recorded: {}",
                    a.run_id,
                    a.note.unwrap_or_else(|| "refused".into())
                );
            }
            let _ = std::fs::remove_file(result_path(&self.work_dir, a.run_id));
        }
        let n = batch.len();
        batch.clear();
        if self.pending.fetch_sub(n, Ordering::SeqCst) == n {
            self.drained.notify_waiters();
        }
        Ok(())
    }
}

fn result_path(work_dir: &Path, run_id: i64) -> PathBuf {
    work_dir.join("results").join(format!("{run_id}.json"))
}

fn save(work_dir: &Path, result: &RunResult) -> std::io::Result<()> {
    let path = result_path(work_dir, result.run_id);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(result).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

/// Results left by a previous life of the node, plus an `exception` for each run that was
/// still going when it stopped (its process group is killed: the server retries the job).
fn recover(work_dir: &Path) -> std::io::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for entry in std::fs::read_dir(work_dir.join("results"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            match std::fs::read(&path).map(|b| serde_json::from_slice::<RunResult>(&b)) {
                Ok(Ok(result)) => results.push(result),
                _ => {
                    tracing::warn!("dropping unreadable result file {}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    for entry in std::fs::read_dir(work_dir.join("pids"))? {
        let path = entry?.path();
        let Some(run_id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        exec::kill_leftover(&path);
        if results.iter().any(|r| r.run_id == run_id) {
            continue;
        }
        let result = RunResult {
            run_id,
            outcome: Outcome::Exception,
            exit_code: None,
            reason: Some("the node restarted while the job ran".into()),
        };
        save(work_dir, &result)?;
        results.push(result);
    }
    if !results.is_empty() {
        tracing::info!("{} results from before the node restarted will be reported", results.len());
    }
    Ok(results)
}
