//! Live logs through any server, for servers sharing a PostgreSQL database: the pieces a
//! node streams are kept in the database (each byte once, `lwr_store::LiveAppend`) instead
//! of one server's spool, and who wants a run's log is a row there too, so a viewer on any
//! server makes the node stream (through whichever server it talks to) and reads what any
//! server received. A server dying loses nothing: the node goes on through the next URL
//! from the offset the database holds, the viewer resumes with `Last-Event-ID` elsewhere.
//! docs/logs.md tells why this design; SQLite (one server) keeps the spool ([`crate::live`]).

use std::time::Duration;

use lwr_model::logstream::{LogStreams, StreamRequest};
use lwr_model::{Millis, NodeId, RunId};
use lwr_store::{Store, StoreError};
use tokio::task::JoinHandle;

/// How long a viewer's want lasts unless renewed: a server that died leaves no run wanted
/// for longer than this.
const WANT_FOR: Duration = Duration::from_secs(15);
/// How often a viewer renews its want.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a viewer that caught up looks for new pieces (a piece may arrive on any server).
pub const VIEWER_POLL: Duration = Duration::from_millis(200);
/// How often a node's streams long-poll looks for a change of its wanted runs.
pub const STREAMS_POLL: Duration = Duration::from_millis(500);
/// Pieces of runs that ended this long ago are swept (their log is stored, or never will be).
pub const KEEP_ENDED: Duration = Duration::from_secs(600);

fn later(d: Duration) -> Millis {
    Millis(lwr_store::now_ms().get() + d.as_millis() as i64)
}

/// A viewer's want of a run's log, renewed while it lives and withdrawn when dropped.
pub struct SharedWant {
    store: Store,
    id: String,
    renew: JoinHandle<()>,
}

impl SharedWant {
    pub async fn start(store: &Store, run: RunId, node: NodeId) -> Result<SharedWant, StoreError> {
        let id = format!("viewer-{}", uuid::Uuid::new_v4().simple());
        store.live_want(&id, run, node, later(WANT_FOR)).await?;
        let renew = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move {
                let mut tick = tokio::time::interval(RENEW_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = store.live_want(&id, run, node, later(WANT_FOR)).await {
                        tracing::warn!("renewing the want of run {run}'s log: {e}");
                    }
                }
            }
        });
        Ok(SharedWant {
            store: store.clone(),
            id,
            renew,
        })
    }
}

impl Drop for SharedWant {
    fn drop(&mut self) {
        self.renew.abort();
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.id));
        // Withdrawn at once; if this fails the want runs out after WANT_FOR anyway.
        tokio::spawn(async move {
            if let Err(e) = store.live_unwant(&id).await {
                tracing::debug!("withdrawing a live log want: {e}");
            }
        });
    }
}

/// The `live` toggle of a run, as a want that lasts until turned off or the run ends.
pub async fn set_live(
    store: &Store,
    run: RunId,
    node: NodeId,
    live: bool,
) -> Result<u32, StoreError> {
    let id = format!("live-{run}");
    if live {
        store.live_want(&id, run, node, Millis(i64::MAX)).await?;
    } else {
        store.live_unwant(&id).await?;
    }
    let now = lwr_store::now_ms();
    Ok(store.live_wants(run, now).await? - u32::from(live))
}

/// The runs of `node` whose log someone wants, each from what the database holds; the
/// version is a hash of the set, the same on every server, so a node that moves to another
/// server keeps its streamers.
pub async fn wanted(store: &Store, node: NodeId) -> Result<LogStreams, StoreError> {
    let runs = store.live_wanted(node, lwr_store::now_ms()).await?;
    // FNV-1a over the run ids: the set, not the offsets, decides what the node streams.
    let mut version: u64 = 0xcbf2_9ce4_8422_2325;
    for (run, _) in &runs {
        for b in run.get().to_le_bytes() {
            version = (version ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(LogStreams {
        version,
        streams: runs
            .into_iter()
            .map(|(run_id, offset)| StreamRequest { run_id, offset })
            .collect(),
    })
}

/// Every minute, drops wants that ran out and pieces of runs long ended.
pub async fn sweep(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = lwr_store::now_ms();
        let before = Millis(now.get() - KEEP_ENDED.as_millis() as i64);
        if let Err(e) = store.live_sweep(now, before).await {
            tracing::warn!("live log sweep: {e}");
        }
    }
}
