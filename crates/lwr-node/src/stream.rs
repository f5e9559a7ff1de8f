//! Streaming logs to the server, only while it asks.
//!
//! One task long-polls the server for the runs whose log it wants (a viewer follows it, or
//! `live` is on). For each such run a streamer reads the run's log file on this node's disk
//! from the offset the server holds, sends it in pieces of at most 1 MiB, and then follows
//! new output until the run ends. Every piece names its offset and every answer says what
//! the server holds, so after a broken connection the streamer resends from there: the
//! server keeps each byte once. When the server no longer wants a log the streamer stops.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_client::{Client, StatusCode};
use lwr_model::logstream::MAX_CHUNK;
use lwr_model::{NodeId, RunId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use lwr_model::sync::lock;
use lwr_model::timing;

use crate::{Backoff, exec};

/// How often a streamer that caught up looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(10);
/// How soon to look again for the log of a wanted run that has no log file yet.
const NOT_YET: Duration = Duration::from_millis(250);
/// How long a streamer told that nobody wants its log waits before it sends again.
const UNWANTED_PAUSE: Duration = Duration::from_millis(200);

/// The log files of runs in progress, for streamers to find.
#[derive(Default)]
pub(crate) struct RunLogs {
    runs: Mutex<HashMap<RunId, RunLog>>,
    /// The runs whose log the server last said it wants.
    wanted: Mutex<HashSet<RunId>>,
}

struct RunLog {
    path: PathBuf,
    /// The log's final size, once the run has ended.
    ended: watch::Sender<Option<u64>>,
    /// Whether the server wants its log now (someone follows it).
    wanted: watch::Sender<bool>,
}

impl RunLogs {
    /// A run starts writing its log to `path`. The answer says whether the server wants
    /// the log while the run goes: a run whose log costs to gather (a Buildbot build's)
    /// gathers it while someone follows, and once at its end otherwise.
    pub(crate) fn started(&self, run: RunId, path: &Path) -> watch::Receiver<bool> {
        let (wanted, wanted_rx) = watch::channel(lock(&self.wanted).contains(&run));
        lock(&self.runs).insert(
            run,
            RunLog {
                path: path.to_path_buf(),
                ended: watch::channel(None).0,
                wanted,
            },
        );
        wanted_rx
    }

    /// The server wants the logs of `runs` now, and no others.
    fn set_wanted(&self, runs: HashSet<RunId>) {
        for (run, log) in lock(&self.runs).iter() {
            log.wanted.send_if_modified(|w| {
                let now = runs.contains(run);
                std::mem::replace(w, now) != now
            });
        }
        *lock(&self.wanted) = runs;
    }

    /// The run ended with a log of `size` bytes; streamers send up to there and stop.
    pub(crate) fn ended(&self, run: RunId, size: u64) {
        if let Some(log) = lock(&self.runs).remove(&run) {
            log.ended.send_replace(Some(size));
        }
    }

    fn is_running(&self, run: RunId) -> bool {
        lock(&self.runs).contains_key(&run)
    }

    /// The open log of `run` and its end, when known: a run in progress, or one that ended
    /// and whose log is still kept on this node.
    fn open(
        &self,
        work_dir: &Path,
        run: RunId,
    ) -> Option<(std::fs::File, watch::Receiver<Option<u64>>)> {
        if let Some(log) = lock(&self.runs).get(&run) {
            // Opened while registered: the file cannot be renamed away in between.
            let file = std::fs::File::open(&log.path).ok()?;
            return Some((file, log.ended.subscribe()));
        }
        let file = std::fs::File::open(exec::log_path(work_dir, run)).ok()?;
        let size = file.metadata().ok()?.len();
        Some((file, watch::channel(Some(size)).1))
    }
}

/// Follows the server's wishes: starts a streamer for each run it wants, stops the others.
pub(crate) async fn serve(client: Client, node: NodeId, work_dir: PathBuf, logs: Arc<RunLogs>) {
    let mut version = None;
    let mut streamers: HashMap<RunId, JoinHandle<()>> = HashMap::new();
    let mut backoff = Backoff::new();
    let mut wait = timing::STREAMS_WAIT;
    loop {
        let wanted = match client.log_streams(node, version, wait).await {
            Ok(wanted) => {
                backoff.reset();
                wanted
            }
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                // A server without live logs, or one that forgot this node: ask rarely.
                tokio::time::sleep(timing::STREAMS_WAIT).await;
                continue;
            }
            Err(e) => {
                backoff
                    .wait(&format!("asking which logs to stream: {e}"))
                    .await;
                continue;
            }
        };
        version = Some(wanted.version);
        logs.set_wanted(wanted.streams.iter().map(|s| s.run_id).collect());
        streamers.retain(|run, task| {
            let keep = !task.is_finished() && wanted.streams.iter().any(|s| s.run_id == *run);
            if !keep {
                task.abort();
            }
            keep
        });
        wait = timing::STREAMS_WAIT;
        for s in wanted.streams {
            if streamers.contains_key(&s.run_id) {
                continue;
            }
            let Some((file, ended)) = logs.open(&work_dir, s.run_id) else {
                if logs.is_running(s.run_id) {
                    // Its job is starting and has no log file yet: look again shortly.
                    wait = NOT_YET;
                }
                // Otherwise nothing is here (an empty log, or uploaded): the store serves.
                continue;
            };
            tracing::debug!("run {}: streaming its log from byte {}", s.run_id, s.offset);
            let streamer = Streamer {
                client: client.clone(),
                node,
                run: s.run_id,
                file: Arc::new(file),
                ended,
            };
            streamers.insert(s.run_id, tokio::spawn(streamer.run(s.offset)));
        }
    }
}

struct Streamer {
    client: Client,
    node: NodeId,
    run: RunId,
    file: Arc<std::fs::File>,
    ended: watch::Receiver<Option<u64>>,
}

impl Streamer {
    async fn run(mut self, mut offset: u64) {
        let mut backoff = Backoff::new();
        loop {
            let end = *self.ended.borrow_and_update();
            let bytes = match self.read(offset, end).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!("run {}: cannot read its log to stream: {e}", self.run);
                    return;
                }
            };
            let last = end.is_some_and(|size| offset + bytes.len() as u64 >= size);
            if bytes.is_empty() && !last {
                // Caught up with a running job: look again shortly, or at its end.
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                    _ = self.ended.changed() => {}
                }
                continue;
            }
            match self
                .client
                .send_log_piece(self.run, self.node, offset, last, bytes)
                .await
            {
                Ok(ack) => {
                    backoff.reset();
                    // Usually offset + len; after a lost answer or a gap, where the server
                    // stands.
                    offset = ack.offset;
                    if last && end == Some(offset) {
                        return;
                    }
                    if !ack.wanted {
                        // Nobody wants it this moment: the streams poll stops this streamer
                        // in a moment, unless a viewer came back meanwhile; ask again then.
                        tokio::time::sleep(UNWANTED_PAUSE).await;
                    }
                }
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    tracing::warn!("run {}: the server refused its log: {e}", self.run);
                    return;
                }
                // Resent from the same offset: the server keeps each byte once.
                Err(e) => {
                    backoff
                        .wait(&format!("streaming the log of run {}: {e}", self.run))
                        .await
                }
            }
        }
    }

    /// Up to [`MAX_CHUNK`] bytes of the log from `offset`, no further than its end.
    async fn read(&self, offset: u64, end: Option<u64>) -> std::io::Result<Vec<u8>> {
        let file = self.file.clone();
        let limit = end.map(|size| size.saturating_sub(offset));
        tokio::task::spawn_blocking(move || {
            let want = limit.map_or(MAX_CHUNK, |l| l.min(MAX_CHUNK as u64) as usize);
            let mut buf = vec![0; want];
            let mut got = 0;
            while got < want {
                match file.read_at(&mut buf[got..], offset + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            buf.truncate(got);
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
