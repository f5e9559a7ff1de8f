//! Live logs shared by servers (PostgreSQL): the pieces of running jobs' logs, each byte
//! once, and who wants which run's log streamed. A node streams through any server, a
//! viewer follows through any other; neither server holds anything the other needs
//! (docs/logs.md, "why this design").

use lwr_model::{Millis, NodeId, RunId};
use sqlx::Row;

use crate::error::Op;
use crate::rows::{col, typed};
use crate::tx::Tx;
use crate::{Dialect, Result, Store};

/// Advisory lock class of a run's live log (the second key is the run id), so that two
/// servers appending pieces of one run at once keep each byte once.
const PIECE_LOCK_CLASS: i32 = 0x6c77_6c6f;

/// What the database holds of a run's live log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveHeld {
    pub size: u64,
    /// The node sent the end of the log: `size` is the whole of it.
    pub complete: bool,
}

/// What became of an appended piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveAppend {
    /// Kept (the bytes not held yet, `fresh` of them): the log is now `size` long;
    /// `wanted` says whether anyone still wants more of it.
    Kept { size: u64, fresh: u64, wanted: bool },
    /// The piece starts beyond what is held: resend from `held`.
    Gap { held: u64 },
    /// Keeping it would make the log longer than the limit.
    TooLarge,
}

impl Store {
    /// Wants run `run_id`'s log (of node `node_id`) streamed until `until`: `id` names the
    /// one who wants it (a viewer, or `live-RUN` for the toggle); calling again renews.
    pub async fn live_want(
        &self,
        id: &str,
        run_id: RunId,
        node_id: NodeId,
        until: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO live_log_wants (id, run_id, node_id, until_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET until_ms = excluded.until_ms",
        )
        .bind(id.to_string())
        .bind(run_id.get())
        .bind(node_id.get())
        .bind(until.get())
        .execute(&mut *self.writer().await?)
        .await
        .op("wanting a live log")?;
        Ok(())
    }

    /// `id` no longer wants its run's log.
    pub async fn live_unwant(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM live_log_wants WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *self.writer().await?)
            .await
            .op("unwanting a live log")?;
        Ok(())
    }

    /// How many want the run's log now (`live-RUN` included).
    pub async fn live_wants(&self, run_id: RunId, now: Millis) -> Result<u32> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM live_log_wants WHERE run_id = $1 AND until_ms > $2",
        )
        .bind(run_id.get())
        .bind(now.get())
        .fetch_one(&mut *self.writer().await?)
        .await
        .op("counting live log wants")?;
        Ok(col::<i64>(&row, "n")?.max(0) as u32)
    }

    /// The running runs of `node_id` whose log someone wants and that are not complete,
    /// each with what is held of it, in run order.
    pub async fn live_wanted(&self, node_id: NodeId, now: Millis) -> Result<Vec<(RunId, u64)>> {
        let rows = sqlx::query(
            "SELECT r.id AS run_id, \
               CAST(COALESCE((SELECT MAX(p.start_offset + length(p.data)) FROM live_log_pieces p \
                              WHERE p.run_id = r.id), 0) AS BIGINT) AS size, \
               CAST(COALESCE((SELECT MAX(p.last) FROM live_log_pieces p \
                              WHERE p.run_id = r.id), 0) AS BIGINT) AS complete \
             FROM runs r \
             WHERE r.node_id = $1 AND r.state = 'running' AND EXISTS \
               (SELECT 1 FROM live_log_wants w WHERE w.run_id = r.id AND w.until_ms > $2) \
             ORDER BY r.id",
        )
        .bind(node_id.get())
        .bind(now.get())
        .fetch_all(&mut *self.writer().await?)
        .await
        .op("reading wanted live logs")?;
        let mut out = Vec::new();
        for row in rows {
            if col::<i64>(&row, "complete")? == 0 {
                out.push((
                    typed(&row, "run_id")?,
                    col::<i64>(&row, "size")?.max(0) as u64,
                ));
            }
        }
        Ok(out)
    }

    /// How many running runs are wanted and not complete: the live logs streaming now.
    pub async fn live_streams(&self, now: Millis) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT w.run_id) AS n FROM live_log_wants w \
             JOIN runs r ON r.id = w.run_id \
             WHERE r.state = 'running' AND w.until_ms > $1 AND NOT EXISTS \
               (SELECT 1 FROM live_log_pieces p WHERE p.run_id = w.run_id AND p.last = 1)",
        )
        .bind(now.get())
        .fetch_one(&mut *self.writer().await?)
        .await
        .op("counting live logs")?;
        Ok(col::<i64>(&row, "n")?.max(0) as u64)
    }

    /// What is held of the run's live log.
    pub async fn live_held(&self, run_id: RunId) -> Result<LiveHeld> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(start_offset + length(data)), 0) AS BIGINT) AS size, \
                    CAST(COALESCE(MAX(last), 0) AS BIGINT) AS complete \
             FROM live_log_pieces WHERE run_id = $1",
        )
        .bind(run_id.get())
        .fetch_one(&mut *self.writer().await?)
        .await
        .op("reading a live log's size")?;
        Ok(LiveHeld {
            size: col::<i64>(&row, "size")?.max(0) as u64,
            complete: col::<i64>(&row, "complete")? != 0,
        })
    }

    /// Appends a piece of the run's log that starts at `offset`, keeping each byte once, in
    /// one transaction; `end` says the log ends after it. Nothing is kept while nobody
    /// wants the log.
    pub async fn live_append(
        &self,
        run_id: RunId,
        offset: u64,
        bytes: &[u8],
        end: bool,
        max_bytes: u64,
        now: Millis,
    ) -> Result<LiveAppend> {
        let mut tx = Tx::begin(&self.write)
            .await
            .op("starting a live log append")?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)::text AS locked")
                .bind(PIECE_LOCK_CLASS)
                .bind((run_id.get() & 0x7fff_ffff) as i32)
                .execute(&mut *tx)
                .await
                .op("locking a live log")?;
        }
        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(start_offset + length(data)), 0) AS BIGINT) AS size, \
                    CAST(COALESCE(MAX(last), 0) AS BIGINT) AS complete, \
                    (SELECT COUNT(*) FROM live_log_wants \
                     WHERE run_id = $1 AND until_ms > $2) AS wants \
             FROM live_log_pieces WHERE run_id = $1",
        )
        .bind(run_id.get())
        .bind(now.get())
        .fetch_one(&mut *tx)
        .await
        .op("reading a live log's size")?;
        let held = col::<i64>(&row, "size")?.max(0) as u64;
        let complete = col::<i64>(&row, "complete")? != 0;
        if complete || col::<i64>(&row, "wants")? == 0 {
            return Ok(LiveAppend::Kept {
                size: held,
                fresh: 0,
                wanted: false,
            });
        }
        let skip = match lwr_model::logstream::append(held, offset, bytes.len()) {
            lwr_model::logstream::Append::Gap { held } => return Ok(LiveAppend::Gap { held }),
            lwr_model::logstream::Append::From { skip } => skip,
        };
        let fresh = &bytes[skip..];
        let size = held + fresh.len() as u64;
        if size > max_bytes {
            return Ok(LiveAppend::TooLarge);
        }
        let last = end && offset + bytes.len() as u64 == size;
        if !fresh.is_empty() || last {
            sqlx::query(
                "INSERT INTO live_log_pieces (run_id, start_offset, data, last) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(run_id.get())
            .bind(held as i64)
            .bind(fresh.to_vec())
            .bind(i64::from(last))
            .execute(&mut *tx)
            .await
            .op("keeping a piece of live log")?;
        }
        tx.commit().await.op("committing a live log append")?;
        Ok(LiveAppend::Kept {
            size,
            fresh: fresh.len() as u64,
            wanted: !last,
        })
    }

    /// Up to `max` bytes of the run's live log from `offset` (fewer at the end of what is
    /// held), with what is held.
    pub async fn live_read(
        &self,
        run_id: RunId,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, LiveHeld)> {
        let held = self.live_held(run_id).await?;
        let rows = sqlx::query(
            "SELECT start_offset, data FROM live_log_pieces \
             WHERE run_id = $1 AND start_offset + length(data) > $2 \
             ORDER BY start_offset LIMIT 256",
        )
        .bind(run_id.get())
        .bind(offset as i64)
        .fetch_all(&mut *self.writer().await?)
        .await
        .op("reading a live log")?;
        let mut out = Vec::new();
        let mut at = offset;
        for row in rows {
            let start = col::<i64>(&row, "start_offset")?.max(0) as u64;
            let data: Vec<u8> = row
                .try_get("data")
                .map_err(|source| crate::StoreError::Db { op: "data", source })?;
            if start > at || out.len() >= max {
                break;
            }
            let from = (at - start) as usize;
            let take = (data.len() - from).min(max - out.len());
            out.extend_from_slice(&data[from..from + take]);
            at += take as u64;
        }
        Ok((out, held))
    }

    /// Drops what is held of the run's live log and who wants it: its log is stored.
    pub async fn live_drop(&self, run_id: RunId) -> Result<()> {
        let mut tx = Tx::begin(&self.write)
            .await
            .op("starting a live log drop")?;
        for sql in [
            "DELETE FROM live_log_pieces WHERE run_id = $1",
            "DELETE FROM live_log_wants WHERE run_id = $1",
        ] {
            sqlx::query(sql)
                .bind(run_id.get())
                .execute(&mut *tx)
                .await
                .op("dropping a live log")?;
        }
        tx.commit().await.op("committing a live log drop")?;
        Ok(())
    }

    /// Drops wants that ran out and the live logs of runs that ended before `ended_before`
    /// (their log is stored, or their node died and nobody came back); returns how many
    /// runs' pieces went.
    pub async fn live_sweep(&self, now: Millis, ended_before: Millis) -> Result<u64> {
        sqlx::query("DELETE FROM live_log_wants WHERE until_ms <= $1")
            .bind(now.get())
            .execute(&mut *self.writer().await?)
            .await
            .op("sweeping live log wants")?;
        let done = sqlx::query(
            "DELETE FROM live_log_pieces WHERE run_id IN \
             (SELECT id FROM runs WHERE state <> 'running' AND finished_at < $1)",
        )
        .bind(ended_before.get())
        .execute(&mut *self.writer().await?)
        .await
        .op("sweeping live logs")?;
        Ok(done.rows_affected())
    }
}
