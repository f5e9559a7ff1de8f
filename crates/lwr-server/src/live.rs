//! Live logs: the server's half of streaming a running job's log from its node to viewers.
//!
//! A node sends nothing while nobody asks. A run's log becomes *wanted* when a viewer follows
//! it or someone turns `live` on; the node of each wanted run hears so through its streams
//! long-poll ([`LiveLogs::wanted`]) and sends the log in pieces, each tagged with its offset.
//! The server appends each byte once to a spool file (`<data-dir>/spool/RUN.log`) and every
//! viewer reads the spool at its own pace: one stream from the node, any number of viewers.
//! When the last viewer leaves and `live` is off, the run is no longer wanted and the node
//! stops; what the spool holds stays, so the next viewer replays it and the node resumes at
//! the spool's end instead of at zero. When the run ends its log is stored whole (the node
//! uploads it) and the spool is dropped.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lwr_model::logstream::{self, Append, ChunkAck, LogStats, LogStreams, StreamRequest};
use lwr_model::sync::lock;
use lwr_model::{NodeId, RunId};
use tokio::sync::watch;

/// How much of a run's log the server holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub size: u64,
    /// The node sent the end of the log: `size` is the whole of it.
    pub complete: bool,
    /// The run's log was stored whole: read it from the store from now on.
    pub stored: bool,
}

/// One run's live log.
pub struct LiveRun {
    pub run_id: RunId,
    pub node_id: NodeId,
    spool: PathBuf,
    held: watch::Sender<Held>,
    inner: Mutex<RunInner>,
}

#[derive(Default)]
struct RunInner {
    viewers: u32,
    live: bool,
    file: Option<std::fs::File>,
}

impl RunInner {
    fn wanted(&self) -> bool {
        self.viewers > 0 || self.live
    }
}

impl LiveRun {
    pub fn held(&self) -> Held {
        *self.held.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Held> {
        self.held.subscribe()
    }

    /// Reads up to `max` spooled bytes from `offset`; blocking file I/O.
    pub fn read(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let held = self.held().size;
        let want = held.saturating_sub(offset).min(max as u64) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut file = std::fs::File::open(&self.spool)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; want];
        let mut got = 0;
        while got < want {
            match file.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
}

#[derive(Default)]
struct Counters {
    streamed_bytes: AtomicU64,
    streamed_chunks: AtomicU64,
    duplicate_bytes: AtomicU64,
    viewer_bytes: AtomicU64,
    /// Viewers following through the database (PostgreSQL), not the spool.
    shared_viewers: AtomicU64,
}

/// Every live log of this server.
pub struct LiveLogs {
    dir: PathBuf,
    runs: Mutex<HashMap<RunId, Arc<LiveRun>>>,
    /// Per node, a counter that moves whenever the set of its wanted runs changes.
    nodes: Mutex<HashMap<NodeId, watch::Sender<u64>>>,
    /// Most bytes spooled for one run (the server's limit on a stored log).
    max_bytes: u64,
    /// First version of every node's set: the clock when the server started, so a node that
    /// holds a version from before a restart never mistakes the new set for the one it has.
    epoch: u64,
    counters: Counters,
}

/// Why a piece of log was not kept.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the log is larger than the server's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[source] std::io::Error),
}

/// A piece of log that starts beyond what the server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub held: u64,
}

impl LiveLogs {
    /// Spool files of a previous life are dropped: their runs' nodes resend from zero when
    /// asked again.
    pub fn open(data_dir: &Path, max_bytes: u64) -> std::io::Result<LiveLogs> {
        let dir = data_dir.join("spool");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(LiveLogs {
            dir,
            runs: Mutex::default(),
            nodes: Mutex::default(),
            max_bytes,
            epoch: lwr_store::now_ms().get().max(0) as u64,
            counters: Counters::default(),
        })
    }

    /// The run's entry, made if need be, with `change` applied to it while the map is
    /// locked, so that no [`LiveLogs::forget_if_idle`] can drop it in between.
    fn with_run<T>(
        &self,
        run_id: RunId,
        node_id: NodeId,
        change: impl FnOnce(&mut RunInner) -> T,
    ) -> (Arc<LiveRun>, T) {
        let mut runs = lock(&self.runs);
        let run = runs
            .entry(run_id)
            .or_insert_with(|| {
                Arc::new(LiveRun {
                    run_id,
                    node_id,
                    spool: self.dir.join(format!("{run_id}.log")),
                    held: watch::channel(Held::default()).0,
                    inner: Mutex::default(),
                })
            })
            .clone();
        let out = change(&mut lock(&run.inner));
        (run, out)
    }

    fn bump(&self, node_id: NodeId) {
        lock(&self.nodes)
            .entry(node_id)
            .or_insert_with(|| watch::channel(self.epoch).0)
            .send_modify(|v| *v += 1);
    }

    /// A viewer starts following `run_id`: the run is wanted until the guard drops.
    pub fn follow(self: &Arc<Self>, run_id: RunId, node_id: NodeId) -> Viewer {
        let (run, became_wanted) = self.with_run(run_id, node_id, |inner| {
            let was = inner.wanted();
            inner.viewers += 1;
            !was
        });
        if became_wanted && !run.held().stored {
            self.bump(node_id);
        }
        Viewer {
            logs: self.clone(),
            run,
        }
    }

    fn unfollow(&self, run: &Arc<LiveRun>) {
        let now_unwanted = {
            let mut inner = lock(&run.inner);
            inner.viewers = inner.viewers.saturating_sub(1);
            !inner.wanted()
        };
        if now_unwanted {
            self.bump(run.node_id);
        }
        self.forget_if_idle(run);
    }

    /// Turns streaming without a viewer on or off; returns the viewers following it now.
    pub fn set_live(&self, run_id: RunId, node_id: NodeId, live: bool) -> u32 {
        let (run, (changed, viewers)) = self.with_run(run_id, node_id, |inner| {
            let was = inner.wanted();
            inner.live = live;
            (was != inner.wanted(), inner.viewers)
        });
        if changed {
            self.bump(node_id);
        }
        self.forget_if_idle(&run);
        viewers
    }

    pub fn is_live(&self, run_id: RunId) -> bool {
        lock(&self.runs)
            .get(&run_id)
            .is_some_and(|r| lock(&r.inner).live)
    }

    /// The runs of `node_id` whose log is wanted, and the version of that set.
    pub fn wanted(&self, node_id: NodeId) -> LogStreams {
        let version = *lock(&self.nodes)
            .entry(node_id)
            .or_insert_with(|| watch::channel(self.epoch).0)
            .borrow();
        let mut streams: Vec<StreamRequest> = lock(&self.runs)
            .values()
            .filter(|r| r.node_id == node_id)
            .filter(|r| {
                let held = r.held();
                !held.complete && !held.stored && lock(&r.inner).wanted()
            })
            .map(|r| StreamRequest {
                run_id: r.run_id,
                offset: r.held().size,
            })
            .collect();
        streams.sort_by_key(|s| s.run_id);
        LogStreams { version, streams }
    }

    /// Wakes when the set of wanted runs of `node_id` changes.
    pub fn node_changes(&self, node_id: NodeId) -> watch::Receiver<u64> {
        lock(&self.nodes)
            .entry(node_id)
            .or_insert_with(|| watch::channel(self.epoch).0)
            .subscribe()
    }

    /// Appends a piece of `run_id`'s log that starts at `offset`, keeping each byte once;
    /// `end` says the log ends after it. Blocking file I/O.
    pub fn append(
        &self,
        run_id: RunId,
        offset: u64,
        bytes: &[u8],
        end: bool,
    ) -> Result<Result<ChunkAck, Gap>, AppendError> {
        let Some(run) = lock(&self.runs).get(&run_id).cloned() else {
            // Nobody asked (the server restarted, or the run's log is stored): drop it.
            return Ok(Ok(ChunkAck {
                offset: offset + bytes.len() as u64,
                wanted: false,
            }));
        };
        let mut inner = lock(&run.inner);
        let held = run.held();
        if held.stored || !inner.wanted() {
            // Nobody wants it now (the node hears so from its streams poll in a moment):
            // nothing is kept, and the node resumes from what is held if asked again.
            return Ok(Ok(ChunkAck {
                offset: held.size,
                wanted: false,
            }));
        }
        let skip = match logstream::append(held.size, offset, bytes.len()) {
            Append::Gap { held } => return Ok(Err(Gap { held })),
            Append::From { skip } => skip,
        };
        let fresh = &bytes[skip..];
        if held.size + fresh.len() as u64 > self.max_bytes {
            return Err(AppendError::TooLarge {
                limit: self.max_bytes,
            });
        }
        if !fresh.is_empty() {
            if inner.file.is_none() {
                inner.file = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&run.spool)
                        .map_err(AppendError::Io)?,
                );
            }
            if let Some(file) = inner.file.as_mut() {
                file.write_all(fresh).map_err(AppendError::Io)?;
            }
        }
        let c = &self.counters;
        c.streamed_bytes
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        c.duplicate_bytes.fetch_add(skip as u64, Ordering::Relaxed);
        c.streamed_chunks.fetch_add(1, Ordering::Relaxed);
        let size = held.size + fresh.len() as u64;
        let complete = end && offset + bytes.len() as u64 == size;
        run.held.send_modify(|h| {
            h.size = size;
            h.complete |= complete;
        });
        let wanted = inner.wanted() && !complete;
        if complete {
            inner.file = None;
            drop(inner);
            self.bump(run.node_id);
        }
        Ok(Ok(ChunkAck {
            offset: size,
            wanted,
        }))
    }

    /// The run's log is stored whole (or the run ended and no log will come): viewers read
    /// the rest from the store, the node stops, and the spool goes with the last viewer.
    pub fn stored(&self, run_id: RunId) {
        let Some(run) = lock(&self.runs).get(&run_id).cloned() else {
            return;
        };
        run.held.send_modify(|h| h.stored = true);
        self.bump(run.node_id);
        self.forget_if_idle(&run);
    }

    /// Drops a run's entry and spool once nothing needs them: no viewer, and either its log
    /// is stored or nobody wants it and nothing is spooled. Checked with the map locked, so a
    /// viewer arriving meanwhile keeps it.
    fn forget_if_idle(&self, run: &Arc<LiveRun>) {
        {
            let mut runs = lock(&self.runs);
            let mut inner = lock(&run.inner);
            let held = run.held();
            let idle = inner.viewers == 0 && (held.stored || (!inner.wanted() && held.size == 0));
            let ours = runs.get(&run.run_id).is_some_and(|r| Arc::ptr_eq(r, run));
            if !idle || !ours {
                return;
            }
            runs.remove(&run.run_id);
            inner.file = None;
        }
        if let Err(e) = std::fs::remove_file(&run.spool)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove spool {}: {e}", run.spool.display());
        }
    }

    /// Runs held here that no viewer follows (live or not): the sweep drops those whose run
    /// has ended (their node died, their log was empty or refused, nobody came back).
    pub fn unwatched(&self) -> Vec<RunId> {
        lock(&self.runs)
            .values()
            .filter(|r| lock(&r.inner).viewers == 0)
            .map(|r| r.run_id)
            .collect()
    }

    /// A viewer following through the database starts (`true`) or stops.
    pub fn count_shared_viewer(&self, starts: bool) {
        let v = &self.counters.shared_viewers;
        if starts {
            v.fetch_add(1, Ordering::Relaxed);
        } else {
            v.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a piece kept elsewhere (in the database, on PostgreSQL): `fresh` bytes kept,
    /// `duplicate` received again and dropped.
    pub fn count_streamed(&self, fresh: u64, duplicate: u64) {
        let c = &self.counters;
        c.streamed_bytes.fetch_add(fresh, Ordering::Relaxed);
        c.duplicate_bytes.fetch_add(duplicate, Ordering::Relaxed);
        c.streamed_chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_viewer_bytes(&self, n: usize) {
        self.counters
            .viewer_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> LogStats {
        let runs = lock(&self.runs);
        let mut streams = 0;
        let mut viewers = 0;
        for r in runs.values() {
            let held = r.held();
            let inner = lock(&r.inner);
            viewers += u64::from(inner.viewers);
            if inner.wanted() && !held.complete && !held.stored {
                streams += 1;
            }
        }
        let c = &self.counters;
        LogStats {
            streamed_bytes: c.streamed_bytes.load(Ordering::Relaxed),
            streamed_chunks: c.streamed_chunks.load(Ordering::Relaxed),
            duplicate_bytes: c.duplicate_bytes.load(Ordering::Relaxed),
            viewer_bytes: c.viewer_bytes.load(Ordering::Relaxed),
            streams,
            viewers: viewers + c.shared_viewers.load(Ordering::Relaxed),
        }
    }
}

/// A viewer following a run; the run stays wanted while one lives.
pub struct Viewer {
    logs: Arc<LiveLogs>,
    pub run: Arc<LiveRun>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.logs.unfollow(&self.run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> (tempfile::TempDir, Arc<LiveLogs>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Arc::new(LiveLogs::open(dir.path(), 1000).expect("open"));
        (dir, logs)
    }

    fn ack(logs: &LiveLogs, run: RunId, offset: u64, bytes: &[u8], end: bool) -> ChunkAck {
        logs.append(run, offset, bytes, end)
            .expect("io")
            .expect("no gap")
    }

    #[test]
    fn nothing_is_wanted_until_a_viewer_follows() {
        let (_d, logs) = logs();
        assert!(logs.wanted(NodeId(7)).streams.is_empty());
        let v0 = logs.wanted(NodeId(7)).version;
        let viewer = logs.follow(RunId(1), NodeId(7));
        let w = logs.wanted(NodeId(7));
        assert!(w.version > v0);
        assert_eq!(
            w.streams,
            vec![StreamRequest {
                run_id: RunId(1),
                offset: 0
            }]
        );
        // Another node's set is untouched.
        assert!(logs.wanted(NodeId(8)).streams.is_empty());
        drop(viewer);
        assert!(logs.wanted(NodeId(7)).streams.is_empty());
        assert_eq!(logs.stats().viewers, 0);
    }

    #[test]
    fn each_byte_is_kept_once_and_resumes_where_it_stopped() {
        let (_d, logs) = logs();
        let viewer = logs.follow(RunId(1), NodeId(7));
        assert_eq!(ack(&logs, RunId(1), 0, b"hello ", false).offset, 6);
        // Resent after a lost answer, with more behind it.
        assert_eq!(ack(&logs, RunId(1), 3, b"lo world", false).offset, 11);
        assert_eq!(
            logs.append(RunId(1), 20, b"x", false).expect("io"),
            Err(Gap { held: 11 })
        );
        assert_eq!(viewer.run.read(0, 100).expect("read"), b"hello world");
        assert_eq!(viewer.run.read(6, 3).expect("read"), b"wor");
        drop(viewer);
        // The next viewer replays the spool; the node resumes at its end.
        let again = logs.follow(RunId(1), NodeId(7));
        assert_eq!(
            logs.wanted(NodeId(7)).streams,
            vec![StreamRequest {
                run_id: RunId(1),
                offset: 11
            }]
        );
        let done = ack(&logs, RunId(1), 11, b"!", true);
        assert_eq!(done.offset, 12);
        assert!(!done.wanted);
        assert!(again.run.held().complete);
        assert!(logs.wanted(NodeId(7)).streams.is_empty());
        let s = logs.stats();
        assert_eq!((s.streamed_bytes, s.duplicate_bytes), (12, 3));
    }

    #[test]
    fn runs_nobody_watches_any_more_are_listed_for_the_sweep() {
        let (_d, logs) = logs();
        let viewer = logs.follow(RunId(5), NodeId(1));
        ack(&logs, RunId(5), 0, b"abc", false);
        assert!(logs.unwatched().is_empty());
        drop(viewer);
        assert_eq!(logs.unwatched(), vec![RunId(5)]);
        logs.stored(RunId(5));
        assert!(logs.unwatched().is_empty());
    }

    #[test]
    fn a_live_run_followed_to_its_end_leaves_no_spool() {
        let (dir, logs) = logs();
        logs.set_live(RunId(6), NodeId(1), true);
        let viewer = logs.follow(RunId(6), NodeId(1));
        ack(&logs, RunId(6), 0, b"abc", false);
        logs.stored(RunId(6));
        drop(viewer);
        assert!(!dir.path().join("spool").join("6.log").exists());
        let s = logs.stats();
        assert_eq!((s.streams, s.viewers, s.streamed_bytes), (0, 0, 3));
        assert!(logs.unwatched().is_empty());
    }

    #[test]
    fn the_spool_holds_no_more_than_the_log_limit() {
        let (_d, logs) = logs();
        let _viewer = logs.follow(RunId(8), NodeId(1));
        ack(&logs, RunId(8), 0, &[b'x'; 600], false);
        assert!(matches!(
            logs.append(RunId(8), 600, &[b'x'; 600], false),
            Err(AppendError::TooLarge { limit: 1000 })
        ));
        // Nothing of the refused piece was kept.
        assert_eq!(ack(&logs, RunId(8), 600, b"ok", false).offset, 602);
    }

    #[test]
    fn pieces_nobody_wants_are_not_kept() {
        let (_d, logs) = logs();
        let viewer = logs.follow(RunId(9), NodeId(1));
        ack(&logs, RunId(9), 0, b"abc", false);
        drop(viewer);
        let late = ack(&logs, RunId(9), 3, b"def", false);
        assert_eq!((late.offset, late.wanted), (3, false));
        assert_eq!(logs.stats().streamed_bytes, 3);
    }

    #[test]
    fn live_keeps_a_run_wanted_without_viewers() {
        let (_d, logs) = logs();
        assert_eq!(logs.set_live(RunId(3), NodeId(9), true), 0);
        assert_eq!(logs.wanted(NodeId(9)).streams.len(), 1);
        assert!(logs.is_live(RunId(3)));
        logs.set_live(RunId(3), NodeId(9), false);
        assert!(logs.wanted(NodeId(9)).streams.is_empty());
    }

    #[test]
    fn a_stored_log_ends_the_stream_and_drops_the_spool() {
        let (dir, logs) = logs();
        let viewer = logs.follow(RunId(1), NodeId(7));
        ack(&logs, RunId(1), 0, b"abc", false);
        let spool = dir.path().join("spool").join("1.log");
        assert!(spool.exists());
        logs.stored(RunId(1));
        assert!(viewer.run.held().stored);
        assert!(logs.wanted(NodeId(7)).streams.is_empty());
        let late = ack(&logs, RunId(1), 3, b"def", false);
        assert!(!late.wanted);
        drop(viewer);
        assert!(!spool.exists());
        assert!(logs.unwatched().is_empty());
        // Pieces for a run nobody follows are dropped and the node told to stop.
        assert!(!ack(&logs, RunId(42), 0, b"x", false).wanted);
        assert_eq!(logs.stats().streams, 0);
    }
}
