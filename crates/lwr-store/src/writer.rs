//! The connection the store writes with.
//!
//! sqlx tests every pooled connection when it goes back to its pool: a `ping`, which on
//! SQLite is a round trip to the connection's thread (a wake-up there and one back), run on
//! a task of its own, and the next writer waits until it is done. SQLite has one writer
//! connection, which every write of the server takes in turn, so that test cost each
//! claim's transaction a third round trip. On SQLite the store therefore keeps its writer
//! out of the pool once taken and hands it out itself, one holder at a time in the order
//! asked (a fair lock, as the pool's queue was); it goes back to the pool only to be closed.
//! PostgreSQL's writers stay pooled: several write at once, and the test there checks a
//! connection the network may have cut.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Where writes get their connection (see the module's comment).
#[derive(Clone)]
pub(crate) enum Writer {
    /// A connection from the pool for each write (PostgreSQL).
    Pooled(AnyPool),
    /// The pool's one connection, kept once taken (SQLite).
    Kept {
        pool: AnyPool,
        conn: Arc<Mutex<Option<PoolConnection<Any>>>>,
    },
}

/// A connection to write with, held until dropped.
pub(crate) enum WriterConn {
    Pooled(PoolConnection<Any>),
    /// Always `Some` while handed out: [`Writer::acquire`] fills it.
    Kept(OwnedMutexGuard<Option<PoolConnection<Any>>>),
}

impl Writer {
    /// A writer on `pool`; `keep` for a pool of one connection that every write shares.
    pub(crate) fn new(pool: AnyPool, keep: bool) -> Writer {
        match keep {
            true => Writer::Kept {
                pool,
                conn: Arc::new(Mutex::new(None)),
            },
            false => Writer::Pooled(pool),
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        match self {
            Writer::Pooled(pool) | Writer::Kept { pool, .. } => pool,
        }
    }

    /// Waits for the connection to write with.
    pub(crate) async fn acquire(&self) -> sqlx::Result<WriterConn> {
        match self {
            Writer::Pooled(pool) => Ok(WriterConn::Pooled(pool.acquire().await?)),
            Writer::Kept { pool, conn } => {
                let mut kept = conn.clone().lock_owned().await;
                // As the pool's `before_acquire` does: a connection that still counts a
                // transaction of sqlx's is out of step with its database.
                if kept.as_ref().is_some_and(|c| c.is_in_transaction()) {
                    tracing::warn!(
                        "closing the database writer left in a transaction by a failed \
                         commit or rollback; a new one replaces it"
                    );
                    if let Some(mut stale) = kept.take() {
                        stale.close_on_drop();
                    }
                }
                if kept.is_none() {
                    *kept = Some(pool.acquire().await?);
                }
                Ok(WriterConn::Kept(kept))
            }
        }
    }

    /// Closes the writer's connections (waits for a holder to finish).
    pub(crate) async fn close(&self) {
        if let Writer::Kept { conn, .. } = self {
            // Back to the pool, which then closes it.
            drop(conn.lock().await.take());
        }
        self.pool().close().await;
    }

    /// Connections open and idle, as the pool would count them: a kept connection is idle
    /// while nobody holds it.
    pub(crate) fn open_idle(&self) -> (u32, u32) {
        match self {
            Writer::Pooled(pool) => (pool.size(), pool.num_idle() as u32),
            Writer::Kept { pool, conn } => {
                let idle_kept = conn.try_lock().is_ok_and(|kept| kept.is_some());
                (pool.size(), pool.num_idle() as u32 + u32::from(idle_kept))
            }
        }
    }
}

impl WriterConn {
    /// Closes the connection instead of handing it to the next writer (it may be inside a
    /// transaction that could not be rolled back): the next writer gets a new one.
    pub(crate) fn discard(self) {
        match self {
            WriterConn::Pooled(mut conn) => conn.close_on_drop(),
            WriterConn::Kept(mut kept) => {
                if let Some(mut conn) = kept.take() {
                    conn.close_on_drop();
                }
            }
        }
    }
}

impl Deref for WriterConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            WriterConn::Pooled(conn) => conn,
            WriterConn::Kept(kept) => kept.as_deref().expect("a kept writer connection"),
        }
    }
}

impl DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            WriterConn::Pooled(conn) => conn,
            WriterConn::Kept(kept) => kept.as_deref_mut().expect("a kept writer connection"),
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
            .connect(&url)
            .await
            .unwrap();
        Writer::new(pool, true)
    }

    /// Whether `conn` is the connection that made the temporary table `mark` (a temporary
    /// table lives and dies with its connection).
    async fn has_mark(conn: &mut AnyConnection) -> bool {
        conn.execute("SELECT 1 FROM temp.mark").await.is_ok()
    }

    #[tokio::test]
    async fn the_kept_connection_serves_one_writer_at_a_time_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let writer = kept_writer(dir.path()).await;
        let mut first = writer.acquire().await.unwrap();
        first.execute("CREATE TEMP TABLE mark (x)").await.unwrap();
        assert_eq!(writer.open_idle(), (1, 0), "held");
        let mut second = Box::pin(writer.acquire());
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "a second writer got in while the first held it");
        drop(first);
        let mut second = second.await.unwrap();
        assert!(has_mark(&mut second).await, "a new connection, not the kept one");
        drop(second);
        assert_eq!(writer.open_idle(), (1, 1), "idle once dropped");
    }

    #[tokio::test]
    async fn a_discarded_connection_is_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let writer = kept_writer(dir.path()).await;
        let mut first = writer.acquire().await.unwrap();
        first.execute("CREATE TEMP TABLE mark (x)").await.unwrap();
        first.discard();
        let mut next = writer.acquire().await.unwrap();
        assert!(!has_mark(&mut next).await, "the discarded connection came back");
        next.execute("CREATE TABLE t (x)").await.unwrap();
        drop(next);
        writer.close().await;
        assert!(writer.pool().is_closed());
    }
}
