//! Jobs followed by viewers (`lwr logs -f`, the web page's log): one read of a followed job
//! per change, shared by all its followers. Each follower used to read the job itself on
//! every change of any job, so 1,500 followers of a pending job made every submit wait
//! behind 1,500 reads; now one task per followed job reads it and hands the answer to all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lwr_model::JobId;
use lwr_model::api::JobDetail;
use lwr_model::sync::lock;
use lwr_store::Store;
use tokio::sync::watch;

use crate::ApiError;

/// The job is read again at least this often, in case a wake-up was missed.
const RECHECK: Duration = Duration::from_secs(2);

/// The latest read of a job: `None` until the first one is done.
type Seen = Option<Result<Arc<JobDetail>, ApiError>>;

/// The followed jobs of a server.
#[derive(Default)]
pub struct Followed {
    jobs: Mutex<HashMap<JobId, Weak<Reader>>>,
    /// Reads of followed jobs so far, for tests and stats.
    reads: Arc<AtomicU64>,
}

/// The task that reads one followed job; it ends with its last follower.
struct Reader {
    rx: watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One follower's view of a job: the latest shared read.
pub struct JobFeed {
    rx: watch::Receiver<Seen>,
    _reader: Arc<Reader>,
}

impl Followed {
    /// A feed of job `id`, sharing the reader of its other followers (or starting one).
    /// `changes` moves whenever some job changes.
    pub fn follow(&self, id: JobId, store: &Store, changes: &watch::Sender<i64>) -> JobFeed {
        let mut jobs = lock(&self.jobs);
        if let Some(reader) = jobs.get(&id).and_then(Weak::upgrade) {
            return JobFeed {
                rx: reader.rx.clone(),
                _reader: reader,
            };
        }
        jobs.retain(|_, r| r.strong_count() > 0);
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(read_on_change(
            id,
            store.clone(),
            changes.subscribe(),
            tx,
            self.reads.clone(),
        ));
        let reader = Arc::new(Reader {
            rx: rx.clone(),
            task,
        });
        jobs.insert(id, Arc::downgrade(&reader));
        JobFeed {
            rx,
            _reader: reader,
        }
    }

    /// Reads of followed jobs since the server started.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// Reads job `id` now, then after every change (coalesced: changes made during a read
/// make one more read), or after [`RECHECK`].
async fn read_on_change(
    id: JobId,
    store: Store,
    mut changes: watch::Receiver<i64>,
    tx: watch::Sender<Seen>,
    reads: Arc<AtomicU64>,
) {
    loop {
        changes.borrow_and_update();
        reads.fetch_add(1, Ordering::Relaxed);
        let seen = store.job(id).await.map(Arc::new).map_err(ApiError::from);
        tx.send_replace(Some(seen));
        tokio::select! {
            r = changes.changed() => if r.is_err() {
                // No more change counter (the queue is going away): keep rechecking.
                tokio::time::sleep(RECHECK).await;
            },
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

impl JobFeed {
    /// The latest read of the job (waiting for the first one), marked seen.
    pub async fn latest(&mut self) -> Result<Arc<JobDetail>, ApiError> {
        let seen = match self.rx.wait_for(Option::is_some).await {
            Ok(seen) => seen.clone(),
            Err(_) => None,
        };
        seen.unwrap_or_else(|| {
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
            ))
        })
    }

    /// Waits for a read newer than the one [`JobFeed::latest`] last gave.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
