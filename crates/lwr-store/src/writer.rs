//! The connection the store writes with.
//!
//! sqlx tests every pooled connection when it goes back to its pool: a `ping`, which on
//! SQLite is a round trip to the connection's thread (a wake-up there and one back), run on
//! a task of its own, and the next writer waits until it is done. SQLite has one writer
//! connection, which every write of the server takes in turn, so that test cost each
//! claim's transaction a third round trip. On SQLite the store therefore keeps its writer
//! out of the pool once taken and hands it out itself, one holder at a time in the order
//! asked (a fair lock, as the pool's queue was); it goes back to the pool only to be closed.
//! It is still tested before it is handed out, once a second at most, and a connection that
//! may be inside a transaction whose rollback never ran is closed rather than handed on.
//! PostgreSQL's writers stay pooled: several write at once, and the test there checks a
//! connection the network may have cut.
//!
//! Beside sqlx's connection the kept writer holds a second one to the same file, opened
//! on first use for a combined claim's or a small graph's transaction ([`crate::direct`]);
//! both are used only by the lock's holder, so SQLite never sees two writers of this store
//! at once. (A sqlx statement whose caller went away still runs to its end on sqlx's
//! thread after the lock is released: a direct transaction begins `IMMEDIATE`, so it waits
//! for that statement at its BEGIN instead of failing at its first write.)

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::direct::Direct;

/// How often a kept connection is tested (a `ping`) before it is handed out: a connection
/// whose thread died fails every statement, and the pool's test after each use used to
/// close it. Once a second costs nothing next to the writes between.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where writes get their connection (see the module's comment).
#[derive(Clone)]
pub(crate) enum Writer {
    /// A connection from the pool for each write (PostgreSQL).
    Pooled(AnyPool),
    /// The pool's one connection, kept once taken (SQLite).
    Kept {
        pool: AnyPool,
        kept: Arc<Mutex<Option<Kept>>>,
        /// The database file, for the direct connection; `None` when there is none to
        /// open (an in-memory database, a URL with options).
        direct: Arc<std::sync::Mutex<Option<DirectFile>>>,
    },
}

/// Where the direct connection is opened, and when to try again after a failure.
pub(crate) struct DirectFile {
    path: PathBuf,
    /// After a failed open (too many open files...), the writes go through sqlx until then.
    retry_at: Option<Instant>,
}

/// How long the writes go through sqlx after the direct connection failed to open.
const DIRECT_RETRY: Duration = Duration::from_secs(60);

/// SQLite's writer connection while the store keeps it.
pub(crate) struct Kept {
    conn: PoolConnection<Any>,
    /// When it was last tested.
    checked: Instant,
    /// The direct connection, once opened (see the module's comment).
    direct: Option<Direct>,
}

/// A connection to write with, held until dropped. One dropped while a transaction may be
/// open on it ([`WriterConn::set_in_transaction`]) is closed, not handed to the next writer:
/// its rollback never ran (the task meant to run it was dropped with its runtime).
pub(crate) struct WriterConn {
    held: Held,
    in_transaction: bool,
}

enum Held {
    Pooled(PoolConnection<Any>),
    /// Always `Some` while handed out: [`Writer::acquire`] fills it.
    Kept(OwnedMutexGuard<Option<Kept>>),
}

impl Writer {
    /// A writer taking a connection from `pool` for each write (PostgreSQL).
    pub(crate) fn pooled(pool: AnyPool) -> Writer {
        Writer::Pooled(pool)
    }

    /// A writer keeping `pool`'s one connection, which every write shares (SQLite); with
    /// `direct`, the database file that claims and small graphs write to directly.
    pub(crate) fn kept(pool: AnyPool, direct: Option<PathBuf>) -> Writer {
        let direct = direct.map(|path| DirectFile {
            path,
            retry_at: None,
        });
        Writer::Kept {
            pool,
            kept: Arc::new(Mutex::new(None)),
            direct: Arc::new(std::sync::Mutex::new(direct)),
        }
    }

    /// Waits for the writer, as [`Writer::acquire`], with its direct connection open if it
    /// has one (SQLite's file); `false` when there is none and the caller goes through sqlx.
    pub(crate) async fn acquire_direct(&self) -> sqlx::Result<(WriterConn, bool)> {
        let mut conn = self.acquire().await?;
        let (Writer::Kept { direct: file, .. }, Held::Kept(slot)) = (self, &mut conn.held) else {
            return Ok((conn, false));
        };
        let Some(kept) = slot.as_mut() else {
            return Ok((conn, false));
        };
        if kept.direct.is_none() {
            let mut file = lwr_model::sync::lock(file);
            let Some(file) = file.as_mut() else {
                return Ok((conn, false));
            };
            if file.retry_at.is_some_and(|at| Instant::now() < at) {
                return Ok((conn, false));
            }
            match Direct::open(&file.path) {
                Ok(direct) => {
                    kept.direct = Some(direct);
                    file.retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot open {} for claims and graphs without sqlx's thread ({e}); \
                         they go through sqlx for a minute",
                        file.path.display()
                    );
                    file.retry_at = Some(Instant::now() + DIRECT_RETRY);
                    return Ok((conn, false));
                }
            }
        }
        Ok((conn, true))
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        match self {
            Writer::Pooled(pool) | Writer::Kept { pool, .. } => pool,
        }
    }

    /// Waits for the connection to write with, as long as the pool would have let a writer
    /// wait for its connection.
    pub(crate) async fn acquire(&self) -> sqlx::Result<WriterConn> {
        let held = match self {
            Writer::Pooled(pool) => Held::Pooled(pool.acquire().await?),
            Writer::Kept { pool, kept, .. } => {
                let timeout = pool.options().get_acquire_timeout();
                let deadline = tokio::time::Instant::now() + timeout;
                let mut slot = tokio::time::timeout_at(deadline, kept.clone().lock_owned())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?;
                if let Some(k) = slot.as_mut()
                    && k.checked.elapsed() >= CHECK_EVERY
                {
                    match k.conn.ping().await {
                        Ok(()) => k.checked = Instant::now(),
                        Err(e) => {
                            tracing::warn!("closing the database writer, which failed a test: {e}");
                            close(slot.take());
                        }
                    }
                }
                if slot.is_none() {
                    let conn = tokio::time::timeout_at(deadline, pool.acquire())
                        .await
                        .map_err(|_| sqlx::Error::PoolTimedOut)??;
                    *slot = Some(Kept {
                        conn,
                        checked: Instant::now(),
                        direct: None,
                    });
                }
                Held::Kept(slot)
            }
        };
        Ok(WriterConn {
            held,
            in_transaction: false,
        })
    }

    /// Closes the writer's connections (waits for a holder to finish).
    pub(crate) async fn close(&self) {
        if let Writer::Kept { kept, .. } = self {
            // Back to the pool, which then closes it.
            drop(kept.lock().await.take());
        }
        self.pool().close().await;
    }

    /// Connections open and idle, as the pool would count them: a kept connection is idle
    /// while nobody holds it.
    pub(crate) fn open_idle(&self) -> (u32, u32) {
        match self {
            Writer::Pooled(pool) => (pool.size(), pool.num_idle() as u32),
            Writer::Kept { pool, kept, .. } => {
                let idle_kept = kept.try_lock().is_ok_and(|slot| slot.is_some());
                (pool.size(), pool.num_idle() as u32 + u32::from(idle_kept))
            }
        }
    }
}

/// Closes a connection taken from the writer: it goes to the pool to be closed, and the
/// pool opens a new one for the next writer.
fn close(kept: Option<Kept>) {
    if let Some(mut k) = kept {
        k.conn.close_on_drop();
    }
}

impl WriterConn {
    /// Marks a transaction begun (`true`) or ended (`false`) on this connection; while one
    /// may be open, dropping the connection closes it.
    pub(crate) fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    /// The direct connection ([`Writer::acquire_direct`]), if open.
    pub(crate) fn direct(&mut self) -> Option<&mut Direct> {
        match &mut self.held {
            Held::Kept(slot) => slot.as_mut().and_then(|k| k.direct.as_mut()),
            Held::Pooled(_) => None,
        }
    }

    /// Closes the connection instead of handing it to the next writer (it may be inside a
    /// transaction that could not be rolled back): the next writer gets a new one.
    pub(crate) fn discard(mut self) {
        self.in_transaction = true;
    }
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        if !self.in_transaction {
            return;
        }
        match &mut self.held {
            Held::Pooled(conn) => conn.close_on_drop(),
            Held::Kept(slot) => close(slot.take()),
        }
    }
}

impl Deref for WriterConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.held {
            Held::Pooled(conn) => conn,
            Held::Kept(slot) => &slot.as_ref().expect("a kept writer connection").conn,
        }
    }
}

impl DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.held {
            Held::Pooled(conn) => conn,
            Held::Kept(slot) => &mut slot.as_mut().expect("a kept writer connection").conn,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Executor;

    use super::*;

    async fn kept_writer(dir: &std::path::Path) -> Writer {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("w.db").display());
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(200))
            .connect(&url)
            .await
            .unwrap();
        Writer::kept(pool, None)
    }

    /// A kept writer and its connection, held, marked with the temporary table `mark`.
    async fn marked_writer(dir: &std::path::Path) -> (Writer, WriterConn) {
        let writer = kept_writer(dir).await;
        let mut first = writer.acquire().await.unwrap();
        first.execute("CREATE TEMP TABLE mark (x)").await.unwrap();
        (writer, first)
    }

    /// Whether `conn` is the connection that made the temporary table `mark` (a temporary
    /// table lives and dies with its connection).
    async fn has_mark(conn: &mut AnyConnection) -> bool {
        conn.execute("SELECT 1 FROM temp.mark").await.is_ok()
    }

    #[tokio::test]
    async fn the_kept_connection_serves_one_writer_at_a_time_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, first) = marked_writer(dir.path()).await;
        assert_eq!(writer.open_idle(), (1, 0), "held");
        let mut second = Box::pin(writer.acquire());
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(
            waited.is_err(),
            "a second writer got in while the first held it"
        );
        drop(first);
        let mut second = second.await.unwrap();
        assert!(
            has_mark(&mut second).await,
            "a new connection, not the kept one"
        );
        drop(second);
        assert_eq!(writer.open_idle(), (1, 1), "idle once dropped");
    }

    #[tokio::test]
    async fn a_connection_dropped_inside_a_transaction_is_not_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut first) = marked_writer(dir.path()).await;
        first.execute("BEGIN").await.unwrap();
        first.set_in_transaction(true);
        drop(first);
        let mut next = writer.acquire().await.unwrap();
        assert!(
            !has_mark(&mut next).await,
            "handed on inside its transaction"
        );
        next.execute("BEGIN; CREATE TABLE t (x); COMMIT")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_writer_waits_no_longer_than_the_pools_acquire_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let writer = kept_writer(dir.path()).await;
        let _held = writer.acquire().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), writer.acquire()).await;
        assert!(
            matches!(waited, Ok(Err(sqlx::Error::PoolTimedOut))),
            "{:?}",
            waited.map(|r| r.map(|_| ()))
        );
    }

    #[tokio::test]
    async fn a_discarded_connection_is_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, first) = marked_writer(dir.path()).await;
        first.discard();
        let mut next = writer.acquire().await.unwrap();
        assert!(
            !has_mark(&mut next).await,
            "the discarded connection came back"
        );
        next.execute("CREATE TABLE t (x)").await.unwrap();
        drop(next);
        writer.close().await;
        assert!(writer.pool().is_closed());
    }
}
