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
//!
//! A combined claim's and a small graph's transaction on SQLite run on the writer's
//! direct connection ([`crate::direct`], [`Tx::begin_along`] with `direct`): their
//! statements go through [`Tx::rows`] and [`Tx::fetch_optional`], never through the sqlx
//! connection the transaction derefs to, which is not in it; a rollback on drop runs at
//! once.

use std::ops::{Deref, DerefMut};

use sqlx::{AnyConnection, Executor};

use crate::direct::Direct;
use crate::writer::{Writer, WriterConn};

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `BEGIN` goes with the first statement ([`Tx::lead`]).
    Unbegun,
    /// `BEGIN` was sent (or handed to a statement that may not have run: a rollback that
    /// finds no transaction is then only a connection closed).
    Open,
    /// Committed (or never begun and dropped); nothing to roll back.
    Over,
}

/// A write transaction on one pooled connection (see the module's comment).
pub(crate) struct Tx {
    /// `None` only while being dropped.
    conn: Option<WriterConn>,
    stage: Stage,
    /// A statement's text ends with the `COMMIT` ([`Tx::commit_along`]).
    commit_sent: bool,
    /// Statements run on the writer's direct connection ([`Tx::begin_along`]).
    direct: bool,
}

impl Tx {
    /// Takes a connection and begins a transaction on it now.
    pub(crate) async fn begin(writer: &Writer) -> sqlx::Result<Tx> {
        let mut conn = writer.acquire().await?;
        conn.set_in_transaction(true);
        let mut tx = Tx {
            conn: Some(conn),
            stage: Stage::Open,
            commit_sent: false,
            direct: false,
        };
        tx.execute("BEGIN").await?;
        Ok(tx)
    }

    /// Takes a connection; the transaction begins with the first statement, whose text
    /// must start with [`Tx::lead`] (SQLite's multi-statement texts only). With `direct` it
    /// runs on the writer's direct connection when it has one (SQLite's file): every
    /// statement must then go through [`Tx::rows`] or [`Tx::fetch_optional`], and it must
    /// be short, since it runs on the caller's thread.
    pub(crate) async fn begin_along(writer: &Writer, direct: bool) -> sqlx::Result<Tx> {
        let (conn, direct) = match direct {
            true => writer.acquire_direct().await?,
            false => (writer.acquire().await?, false),
        };
        Ok(Tx {
            conn: Some(conn),
            stage: Stage::Unbegun,
            commit_sent: false,
            direct,
        })
    }

    /// The direct connection, when this transaction runs on it.
    fn direct(&mut self) -> Option<&mut Direct> {
        if !self.direct {
            return None;
        }
        self.conn.as_mut().and_then(WriterConn::direct)
    }

    /// Runs `query` in the transaction and returns each statement's rows. On SQLite the
    /// text may hold several statements, each with the same numbered arguments: through
    /// sqlx one request to the connection's thread, on the direct connection one call.
    /// PostgreSQL prepares one statement at a time.
    pub(crate) async fn rows(
        &mut self,
        query: crate::queue::AnyQuery,
    ) -> sqlx::Result<Vec<Vec<sqlx::any::AnyRow>>> {
        use futures_util::TryStreamExt;
        // A statement sent before the transaction began would run outside it.
        debug_assert_ne!(self.stage, Stage::Unbegun, "a statement before BEGIN");
        if let Some(direct) = self.direct() {
            return direct.run(query);
        }
        let mut each = vec![Vec::new()];
        let mut stream = (&mut **self).fetch_many(query);
        while let Some(step) = stream.try_next().await? {
            match step {
                // A statement ended: the next rows are the next statement's.
                sqlx::Either::Left(_) => each.push(Vec::new()),
                sqlx::Either::Right(row) => {
                    if let Some(rows) = each.last_mut() {
                        rows.push(row);
                    }
                }
            }
        }
        // After the last statement's end.
        each.pop();
        Ok(each)
    }

    /// The first row of a one-statement `query`, if any.
    pub(crate) async fn fetch_optional(
        &mut self,
        query: crate::queue::AnyQuery,
    ) -> sqlx::Result<Option<sqlx::any::AnyRow>> {
        debug_assert_ne!(self.stage, Stage::Unbegun, "a statement before BEGIN");
        if let Some(direct) = self.direct() {
            return Ok(direct
                .run(query)?
                .pop()
                .and_then(|rows| rows.into_iter().next()));
        }
        query.fetch_optional(&mut **self).await
    }

    /// Runs a statement without arguments or rows (`BEGIN`, `COMMIT`).
    async fn plain(&mut self, sql: &'static str) -> sqlx::Result<()> {
        if let Some(direct) = self.direct() {
            return direct.plain(sql);
        }
        self.execute(sql).await.map(|_| ())
    }

    /// What the next statement's text starts with: `BEGIN; ` if the transaction has not
    /// begun yet (it is taken as begun from now on), else nothing.
    pub(crate) fn lead(&mut self) -> &'static str {
        match self.stage {
            // On the direct connection the write lock is taken at once (see `writer`).
            Stage::Unbegun if self.direct => {
                self.set_stage(Stage::Open);
                "BEGIN IMMEDIATE; "
            }
            Stage::Unbegun => {
                self.set_stage(Stage::Open);
                "BEGIN; "
            }
            Stage::Open | Stage::Over => "",
        }
    }

    /// What the transaction's last statement's text ends with to commit in the same round
    /// trip (SQLite's multi-statement texts only): `; COMMIT`, after which no statement may
    /// follow. SQLite stops at the first statement that fails, so the COMMIT runs only if
    /// everything before it did. [`Tx::commit`] then sends nothing; a text that failed leaves
    /// the transaction open, and dropping it rolls back whatever is left.
    pub(crate) fn commit_along(&mut self) -> &'static str {
        debug_assert_eq!(self.stage, Stage::Open, "a commit sent along before BEGIN");
        self.commit_sent = true;
        "; COMMIT"
    }

    /// Records that the statement carrying the COMMIT ([`Tx::commit_along`]) ran: the
    /// transaction is over, so dropping it rolls nothing back (an error found afterwards in
    /// the rows the statement returned comes after the commit).
    pub(crate) fn commit_ran(&mut self) {
        debug_assert!(
            self.commit_sent,
            "a commit recorded that was not sent along"
        );
        self.set_stage(Stage::Over);
    }

    /// Commits (or, after [`Tx::commit_along`], records that the statement carrying the
    /// COMMIT ran). A transaction in which nothing ran commits nothing.
    pub(crate) async fn commit(mut self) -> sqlx::Result<()> {
        if self.stage == Stage::Unbegun || self.commit_sent {
            self.set_stage(Stage::Over);
            return Ok(());
        }
        let done = self.plain("COMMIT").await;
        if done.is_ok() {
            self.set_stage(Stage::Over);
        }
        // Else the drop rolls back what is left: a COMMIT refused (a full disk) may have
        // ended the transaction or not.
        done
    }

    /// PostgreSQL: runs `sql`, a text without arguments, and the COMMIT in one round trip
    /// (the simple protocol takes several statements at once). If `sql` fails the COMMIT
    /// does not run, and the drop rolls back.
    pub(crate) async fn commit_after(mut self, sql: &str) -> sqlx::Result<()> {
        if self.stage != Stage::Open || self.commit_sent {
            // Nothing ran yet, so nothing to tell (or the COMMIT went along already, which
            // only SQLite does, and SQLite has no one to tell).
            return self.commit().await;
        }
        // Through sqlx's connection: never a direct transaction's (`DerefMut` checks).
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{sql}; COMMIT")))
            .execute(&mut *self)
            .await;
        if done.is_ok() {
            self.set_stage(Stage::Over);
        }
        done.map(|_| ())
    }
}

impl Tx {
    /// Moves the transaction to `stage`; the connection knows whether one may be open on
    /// it, so that it is closed if dropped before a rollback ran.
    fn set_stage(&mut self, stage: Stage) {
        self.stage = stage;
        if let Some(conn) = self.conn.as_mut() {
            conn.set_in_transaction(stage == Stage::Open);
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        // sqlx's connection is not in a direct transaction: a statement there would run
        // outside it (and wait for SQLite's write lock, which the transaction holds).
        assert!(
            !self.direct,
            "a direct transaction's statement sent through sqlx"
        );
        // Set from construction until the drop takes it.
        self.conn.as_deref().expect("a transaction's connection")
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        // A statement sent before the transaction began would run outside it.
        debug_assert_ne!(self.stage, Stage::Unbegun, "a statement before BEGIN");
        assert!(
            !self.direct,
            "a direct transaction's statement sent through sqlx"
        );
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
            // Rolled back here and now: no hand-off to wait for.
            Stage::Open if self.direct => {
                let rolled_back = conn
                    .direct()
                    .is_some_and(|d| d.plain("ROLLBACK").is_ok() || !d.in_transaction());
                match rolled_back {
                    true => conn.set_in_transaction(false),
                    false => conn.discard(),
                }
            }
            Stage::Open => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    // If this task never runs (its runtime is shutting down), dropping it
                    // drops the connection marked inside a transaction, which closes it.
                    runtime.spawn(async move {
                        match conn.execute("ROLLBACK").await {
                            Ok(_) => conn.set_in_transaction(false),
                            // No transaction (SQLite ended it, or a BEGIN sent along never
                            // ran), or a broken connection: closing it is safe either way.
                            Err(e) => {
                                tracing::debug!("rolling back a dropped transaction: {e}");
                                conn.discard();
                            }
                        }
                    });
                }
                // No runtime to roll back on: closing the connection rolls it back.
                Err(_) => conn.discard(),
            },
        }
    }
}

/// Who goes first for SQLite's one writer connection: a claim (a node's next job) before a
/// graph's submission. The pool hands its connection out in the order it was asked for, so
/// a claim that arrived while four clients submitted waited for all four submissions, about
/// as long as its own transaction took (measured: 0.35 ms a claim on average, 1.3 ms at the
/// 90th percentile, under `bench/builds`). Submissions now ask for the writer one at a time,
/// and only while no claim waits for it: a claim waits for one submission at most. Neither
/// starves the other: a submission goes in as soon as no claim is waiting, which a claim
/// being served (it holds the writer) is not.
pub(crate) struct WriterTurns {
    claims_waiting: std::sync::atomic::AtomicUsize,
    claims_in: tokio::sync::Notify,
    submission: tokio::sync::Semaphore,
}

impl WriterTurns {
    pub(crate) fn new() -> WriterTurns {
        WriterTurns {
            claims_waiting: std::sync::atomic::AtomicUsize::new(0),
            claims_in: tokio::sync::Notify::new(),
            submission: tokio::sync::Semaphore::new(1),
        }
    }

    /// Marks a claim waiting for the writer until the guard is dropped (once it has it).
    pub(crate) fn claim(&self) -> ClaimWaiting<'_> {
        use std::sync::atomic::Ordering;
        self.claims_waiting.fetch_add(1, Ordering::AcqRel);
        ClaimWaiting(self)
    }

    /// Waits for a submission's turn: the other submissions' done, and no claim waiting.
    /// Held until the submission has committed.
    pub(crate) async fn submission(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        use std::sync::atomic::Ordering;
        // Never closed; without a permit the submission goes as it used to.
        let permit = self.submission.acquire().await.ok();
        loop {
            let claims_in = self.claims_in.notified();
            if self.claims_waiting.load(Ordering::Acquire) == 0 {
                return permit;
            }
            claims_in.await;
        }
    }
}

/// A claim waiting for the writer (see [`WriterTurns::claim`]).
pub(crate) struct ClaimWaiting<'a>(&'a WriterTurns);

impl Drop for ClaimWaiting<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0.claims_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.claims_in.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::WriterTurns;

    const A_WHILE: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_submission_waits_while_a_claim_waits_and_for_the_submission_before_it() {
        let turns = WriterTurns::new();
        let claim = turns.claim();
        let mut next = Box::pin(turns.submission());
        assert!(tokio::time::timeout(A_WHILE, &mut next).await.is_err());
        drop(claim);
        let first = tokio::time::timeout(A_WHILE, next).await;
        assert!(matches!(first, Ok(Some(_))), "its turn once no claim waits");
        let mut second = Box::pin(turns.submission());
        assert!(tokio::time::timeout(A_WHILE, &mut second).await.is_err());
        drop(first);
        assert!(tokio::time::timeout(A_WHILE, second).await.is_ok());
        // Two claims waiting: the turn comes when both have the writer.
        let (one, two) = (turns.claim(), turns.claim());
        let mut third = Box::pin(turns.submission());
        drop(one);
        assert!(tokio::time::timeout(A_WHILE, &mut third).await.is_err());
        drop(two);
        assert!(tokio::time::timeout(A_WHILE, third).await.is_ok());
    }
}
