//! What `GET /metrics` reads from the database when it is scraped: counts the whole fleet
//! shares, so every server sharing the database answers the same. Read at scrape time, never
//! kept up to date on the dispatch path.

use crate::error::Op;
use crate::rows::col;
use crate::{Result, Store};

/// The database's counts at one scrape.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Jobs by state (`pending`, `running`, ...), only states that have jobs.
    pub jobs: Vec<(String, i64)>,
    /// Pending jobs whose needs have all succeeded.
    pub ready: i64,
    /// Runs by state (`running`, `succeeded`, `failed`, `exception`, ...).
    pub runs: Vec<(String, i64)>,
    /// Bytes of the stored logs of finished runs.
    pub log_bytes: i64,
    /// Artifacts kept, and their bytes.
    pub artifacts: i64,
    pub artifact_bytes: i64,
}

/// One connection pool's use.
#[derive(Debug, Clone)]
pub struct PoolUse {
    /// `write`, `read` or `node` (the last shares `write` on PostgreSQL and is not listed).
    pub pool: &'static str,
    /// Connections open, of them idle, and the most it opens.
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

impl Store {
    /// Counts for the metrics: a few aggregate reads on the read pool.
    pub async fn gauges(&self) -> Result<Gauges> {
        // SUM is NUMERIC on PostgreSQL, which the Any driver does not read: cast it.
        let mut gauges = Gauges::default();
        for (sql, out) in [
            (
                "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state ORDER BY state",
                &mut gauges.jobs,
            ),
            (
                "SELECT state, COUNT(*) AS n FROM runs GROUP BY state ORDER BY state",
                &mut gauges.runs,
            ),
        ] {
            let rows = sqlx::query(sql)
                .fetch_all(&self.read)
                .await
                .op("counting by state")?;
            for row in rows {
                out.push((col(&row, "state")?, col(&row, "n")?));
            }
        }
        gauges.ready = self.ready_jobs().await? as i64;
        let row = sqlx::query("SELECT CAST(COALESCE(SUM(log_size), 0) AS BIGINT) AS n FROM runs")
            .fetch_one(&self.read)
            .await
            .op("adding up log sizes")?;
        gauges.log_bytes = col(&row, "n")?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM artifacts",
        )
        .fetch_one(&self.read)
        .await
        .op("adding up artifact sizes")?;
        gauges.artifacts = col(&row, "n")?;
        gauges.artifact_bytes = col(&row, "bytes")?;
        Ok(gauges)
    }

    /// How much of each connection pool is in use now (no database round trip).
    pub fn pool_use(&self) -> Vec<PoolUse> {
        let of = |pool: &'static str, p: &sqlx::AnyPool| PoolUse {
            pool,
            open: p.size(),
            idle: p.num_idle() as u32,
            max: p.options().get_max_connections(),
        };
        let (open, idle) = self.write.open_idle();
        let write = PoolUse {
            open,
            idle,
            ..of("write", self.write.pool())
        };
        let mut all = vec![write, of("read", &self.read)];
        if self.dialect == crate::Dialect::Sqlite {
            all.push(of("node", &self.node));
        }
        all
    }
}
