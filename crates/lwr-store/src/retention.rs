//! Retention: removing graphs whose last activity is old, with their jobs, runs, pushes and
//! the rows of their artifacts, a few graphs per transaction. The artifact store's bytes are
//! the server's to delete once the rows are gone (`Removed::artifact_keys`, `Removed::runs`).

use lwr_model::{DurationMs, GraphId, Millis, RunId};

use crate::error::Op;
use crate::rows::typed;
use crate::tx::Tx;
use crate::{Result, Store};

/// What a graph must be to go: not marked keep, no job marked keep, every job ended, no
/// activity since `$1`, and not the newest push of its branch (the poller tells a new head
/// from the pushes it has, so removing that one would build the head again). Or staging
/// since before `$2`: a submission its server died in, or a removal that stopped half-way.
const ELIGIBLE: &str = "((g.staging <> 0 AND g.created_at <= $2) OR (g.staging = 0 AND g.keep = 0 \
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.graph_id = g.id \
         AND (j.keep <> 0 OR j.state IN ('pending', 'running') OR j.updated_at > $1)) \
     AND g.created_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM pushes p WHERE p.graph_id = g.id AND NOT EXISTS \
         (SELECT 1 FROM pushes q WHERE q.repository = p.repository AND q.branch = p.branch \
          AND q.id > p.id))))";

/// Jobs removed per transaction.
const JOBS_PER_TRANSACTION: usize = 1000;

/// A graph staging for longer than this is not being submitted any more.
const STAGING_STALE: DurationMs = DurationMs(3600 * 1000);

/// Before when a graph still staging was left so (never later than `before`).
fn stale_staging(before: Millis) -> Millis {
    before.min(crate::now_ms().minus(STAGING_STALE))
}

/// What removing some graphs took (or would take).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub graphs: Vec<GraphId>,
    pub jobs: u64,
    pub runs: u64,
    pub pushes: u64,
    pub artifacts: u64,
    /// The removed runs: their logs are `RUN/log` in the artifact store.
    pub run_ids: Vec<RunId>,
    /// Where the removed artifacts' bytes are.
    pub artifact_keys: Vec<String>,
}

fn id_list(ids: &[GraphId]) -> String {
    ids.iter()
        .map(|g| g.get().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Store {
    /// Up to `limit` graphs retention may remove, oldest ids first, after `after`.
    pub async fn retention_candidates(
        &self,
        before: Millis,
        after: Option<GraphId>,
        limit: i64,
    ) -> Result<Vec<GraphId>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT g.id FROM graphs g WHERE g.id > $3 AND {ELIGIBLE} ORDER BY g.id LIMIT $4"
        )))
        .bind(before.get())
        .bind(stale_staging(before).get())
        .bind(after.map_or(0, GraphId::get))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .op("finding graphs to remove")?;
        rows.iter().map(|r| typed(r, "id")).collect()
    }

    /// What removing `graphs` would remove (a dry run): counts only.
    pub async fn retention_counts(&self, graphs: &[GraphId]) -> Result<Removed> {
        let mut out = Removed {
            graphs: graphs.to_vec(),
            ..Removed::default()
        };
        if graphs.is_empty() {
            return Ok(out);
        }
        let list = id_list(graphs);
        let jobs = format!("SELECT id FROM jobs WHERE graph_id IN ({list})");
        let runs = format!("SELECT id FROM runs WHERE job_id IN ({jobs})");
        for (sql, slot) in [
            (
                format!("SELECT COUNT(*) AS n FROM jobs WHERE graph_id IN ({list})"),
                &mut out.jobs,
            ),
            (
                format!("SELECT COUNT(*) AS n FROM runs WHERE job_id IN ({jobs})"),
                &mut out.runs,
            ),
            (
                format!("SELECT COUNT(*) AS n FROM pushes WHERE graph_id IN ({list})"),
                &mut out.pushes,
            ),
            (
                format!("SELECT COUNT(*) AS n FROM artifacts WHERE run_id IN ({runs})"),
                &mut out.artifacts,
            ),
        ] {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.read)
                .await
                .op("counting what retention removes")?;
            *slot = crate::rows::col::<i64>(&row, "n")?.max(0) as u64;
        }
        Ok(out)
    }

    /// Removes those of `graphs` still eligible (see [`ELIGIBLE`]) with everything that
    /// refers to them. A first transaction checks them again and marks them staging (no
    /// claim or listing sees them from then on); then their jobs go at most
    /// [`JOBS_PER_TRANSACTION`] a transaction, with their runs and artifact rows, so a huge
    /// graph never holds the writer long; the pushes and graph rows go last. A pass that
    /// stops half-way leaves staging graphs, which a later pass removes.
    pub async fn remove_graphs(&self, graphs: &[GraphId], before: Millis) -> Result<Removed> {
        if graphs.is_empty() {
            return Ok(Removed::default());
        }
        let mut tx = Tx::begin(&self.write).await.op("starting retention")?;
        // Checked again under the write: a graph marked keep (which writes its graph row)
        // or retriggered since it was listed stays. On PostgreSQL this also locks the rows.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE graphs SET staging = 2 WHERE id IN ({}) AND id IN \
             (SELECT g.id FROM graphs g WHERE {ELIGIBLE}) RETURNING id",
            id_list(graphs)
        )))
        .bind(before.get())
        .bind(stale_staging(before).get())
        .fetch_all(&mut *tx)
        .await
        .op("checking graphs to remove")?;
        tx.commit().await.op("marking graphs to remove")?;
        let mut ids: Vec<GraphId> = rows.iter().map(|r| typed(r, "id")).collect::<Result<_>>()?;
        ids.sort();
        let mut out = Removed::default();
        if ids.is_empty() {
            return Ok(out);
        }
        let list = id_list(&ids);
        loop {
            let mut tx = Tx::begin(&self.write).await.op("starting retention")?;
            let jobs = format!(
                "SELECT id FROM jobs WHERE graph_id IN ({list}) ORDER BY id \
                 LIMIT {JOBS_PER_TRANSACTION}"
            );
            // Materialized once: the statements below must all see the same chunk.
            let chunk: Vec<i64> = sqlx::query(sqlx::AssertSqlSafe(jobs))
                .fetch_all(&mut *tx)
                .await
                .op("listing jobs to remove")?
                .iter()
                .map(|r| crate::rows::col(r, "id"))
                .collect::<Result<_>>()?;
            if chunk.is_empty() {
                break;
            }
            let jobs = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let runs = format!("SELECT id FROM runs WHERE job_id IN ({jobs})");
            let run_ids: Vec<RunId> = sqlx::query(sqlx::AssertSqlSafe(runs.clone()))
                .fetch_all(&mut *tx)
                .await
                .op("listing runs to remove")?
                .iter()
                .map(|r| typed(r, "id"))
                .collect::<Result<_>>()?;
            let keys: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT storage_key FROM artifacts WHERE run_id IN ({runs})"
            )))
            .fetch_all(&mut *tx)
            .await
            .op("listing artifacts to remove")?
            .iter()
            .map(|r| crate::rows::col(r, "storage_key"))
            .collect::<Result<_>>()?;
            // Children first: the foreign keys point from them to what is removed last.
            for sql in [
                format!("DELETE FROM artifacts WHERE run_id IN ({runs})"),
                format!("DELETE FROM manifests WHERE run_id IN ({runs})"),
                format!("DELETE FROM live_log_pieces WHERE run_id IN ({runs})"),
                format!("DELETE FROM live_log_wants WHERE run_id IN ({runs})"),
                format!("DELETE FROM runs WHERE job_id IN ({jobs})"),
                format!("DELETE FROM job_needs WHERE job_id IN ({jobs}) OR need_id IN ({jobs})"),
                format!("DELETE FROM jobs WHERE id IN ({jobs})"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .op("removing old jobs")?;
            }
            tx.commit().await.op("committing retention")?;
            out.jobs += chunk.len() as u64;
            out.runs += run_ids.len() as u64;
            out.artifacts += keys.len() as u64;
            out.run_ids.extend(run_ids);
            out.artifact_keys.extend(keys);
        }
        let mut tx = Tx::begin(&self.write).await.op("starting retention")?;
        out.pushes = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM pushes WHERE graph_id IN ({list})"
        )))
        .execute(&mut *tx)
        .await
        .op("removing old pushes")?
        .rows_affected();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM graphs WHERE id IN ({list}) AND staging <> 0"
        )))
        .execute(&mut *tx)
        .await
        .op("removing old graphs")?;
        tx.commit().await.op("committing retention")?;
        out.graphs = ids;
        Ok(out)
    }

    /// Marks a graph to keep (or not).
    pub async fn set_graph_keep(&self, graph: GraphId, keep: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE graphs SET keep = $2 WHERE id = $1")
            .bind(graph.get())
            .bind(i32::from(keep))
            .execute(&mut *self.writer().await?)
            .await
            .op("marking a graph to keep")?
            .rows_affected();
        Ok(n > 0)
    }

    /// Marks a job to keep (or not), and so its graph; writes the graph's row too, so that
    /// a removal deciding on the graph at the same time waits for it (or it for the removal).
    pub async fn set_job_keep(&self, job: lwr_model::JobId, keep: bool) -> Result<bool> {
        let mut tx = Tx::begin(&self.write).await.op("marking a job to keep")?;
        let n = sqlx::query("UPDATE jobs SET keep = $2 WHERE id = $1")
            .bind(job.get())
            .bind(i32::from(keep))
            .execute(&mut *tx)
            .await
            .op("marking a job to keep")?
            .rows_affected();
        sqlx::query(
            "UPDATE graphs SET keep = keep WHERE id = (SELECT graph_id FROM jobs WHERE id = $1)",
        )
        .bind(job.get())
        .execute(&mut *tx)
        .await
        .op("marking a job to keep")?;
        tx.commit().await.op("marking a job to keep")?;
        Ok(n > 0)
    }
}
