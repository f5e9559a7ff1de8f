//! The store's write transactions, begun and ended by the store itself rather than by
//! sqlx, so that on SQLite the `BEGIN` can travel with the transaction's first statement.
//!
//! Every statement on SQLite is a round trip to the connection's own thread (a hand-off
//! and a wake-up each way). sqlx sends `BEGIN` as a statement of its own, one round trip of
//! the four of a claim or a small graph's submission. A transaction begun with
//! [`Tx::begin_along`] sends nothing until its first statement, whose text starts with
//! [`Tx::lead`]. SQLite runs a multi-statement text as one command on its thread and stops
//! at the first statement that fails, so a failure there leaves the transaction open, to be
//! rolled back here.
//!
//! A transaction that is neither committed nor known to be over is rolled back when it is
//! dropped (an error returned mid-way, a request whose client hung up), on a task of its
//! own; the connection goes back to its pool only once that has succeeded, and is closed
//! otherwise (closing rolls back too). A connection is never handed out inside a
//! transaction it did not begin.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `BEGIN` goes with the first statement ([`Tx::lead`]).
    Unbegun,
    /// `BEGIN` was sent (or handed to a statement that may not have run: a rollback that
    /// finds no transaction is then only a connection closed).
    Open,
    /// Committed, or ended by the database itself; nothing to roll back.
    Over,
}

/// A write transaction on one pooled connection (see the module's comment).
pub(crate) struct Tx {
    /// `None` only while being dropped.
    conn: Option<PoolConnection<Any>>,
    stage: Stage,
}

impl Tx {
    /// Takes a connection and begins a transaction on it now.
    pub(crate) async fn begin(pool: &AnyPool) -> sqlx::Result<Tx> {
        let mut tx = Tx {
            conn: Some(pool.acquire().await?),
            stage: Stage::Open,
        };
        tx.execute("BEGIN").await?;
        Ok(tx)
    }

    /// Takes a connection; the transaction begins with the first statement, whose text
    /// must start with [`Tx::lead`] (SQLite's multi-statement texts only).
    pub(crate) async fn begin_along(pool: &AnyPool) -> sqlx::Result<Tx> {
        Ok(Tx {
            conn: Some(pool.acquire().await?),
            stage: Stage::Unbegun,
        })
    }

    /// What the next statement's text starts with: `BEGIN; ` if the transaction has not
    /// begun yet (it is taken as begun from now on), else nothing.
    pub(crate) fn lead(&mut self) -> &'static str {
        match self.stage {
            Stage::Unbegun => {
                self.stage = Stage::Open;
                "BEGIN; "
            }
            Stage::Open | Stage::Over => "",
        }
    }

    /// Commits. A transaction in which nothing ran commits nothing.
    pub(crate) async fn commit(mut self) -> sqlx::Result<()> {
        if self.stage == Stage::Unbegun {
            self.stage = Stage::Over;
            return Ok(());
        }
        let done = self.execute("COMMIT").await.map(|_| ());
        if done.is_ok() {
            self.stage = Stage::Over;
        }
        // Else the drop rolls back what is left: a COMMIT refused (a full disk) may have
        // ended the transaction or not.
        done
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        // Set from construction until the drop takes it.
        self.conn.as_deref().expect("a transaction's connection")
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        // A statement sent before the transaction began would run outside it.
        debug_assert_ne!(self.stage, Stage::Unbegun, "a statement before BEGIN");
        self.conn
            .as_deref_mut()
            .expect("a transaction's connection")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match self.stage {
            Stage::Over | Stage::Unbegun => {}
            Stage::Open => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(e) = conn.execute("ROLLBACK").await {
                            // No transaction (SQLite ended it, or a BEGIN sent along never
                            // ran), or a broken connection: closing it is safe either way.
                            tracing::debug!("rolling back a dropped transaction: {e}");
                            conn.close_on_drop();
                        }
                    });
                }
                // No runtime to roll back on: closing the connection rolls it back.
                Err(_) => conn.close_on_drop(),
            },
        }
    }
}
