//! Self-serve control of jobs: cancel and retrigger. Each call is one transaction.

use lwr_model::{GraphId, JobId, JobSpec, Millis};

use crate::error::Op;
use crate::graphs::parse_job_state;
use crate::queue::{Effects, Tx, block_dependents};
use crate::rows::{col, json, typed};
use crate::{Result, Store, StoreError};

/// What a cancellation stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cancelled {
    /// Jobs that were pending or running and are now cancelled.
    pub jobs: u64,
    /// Runs that were going; their nodes kill them at the next heartbeat.
    pub runs: u64,
    pub effects: Effects,
}

impl Store {
    /// Cancels a job that has not ended. A live run ends `cancelled` (its node learns at its
    /// next heartbeat and kills the process group) and every job depending on it is blocked.
    pub async fn cancel_job(&self, job_id: JobId, now: Millis) -> Result<Cancelled> {
        let mut tx = Tx::begin(&self.write).await.op("starting cancel")?;
        let (name, state) = job_state(&mut tx, job_id).await?;
        if state.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "job {job_id} ({name}) already ended: {state}"
            )));
        }
        let runs = cancel_runs(&mut tx, "job_id = $1", job_id.get(), now).await?;
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', reason = 'cancelled', updated_at = $2 \
             WHERE id = $1 AND state IN ('pending', 'running')",
        )
        .bind(job_id.get())
        .bind(now.get())
        .execute(&mut *tx)
        .await
        .op("cancelling job")?;
        let ready = block_dependents(
            &mut tx,
            job_id,
            &format!("needs {name}, which was cancelled"),
            now,
        )
        .await?;
        let effects = Effects::changed(ready);
        self.commit_notifying(tx, effects, "committing cancel")
            .await?;
        Ok(Cancelled {
            jobs: 1,
            runs,
            effects,
        })
    }

    /// Cancels every job of a graph that has not ended.
    pub async fn cancel_graph(&self, graph_id: GraphId, now: Millis) -> Result<Cancelled> {
        let mut tx = Tx::begin(&self.write).await.op("starting cancel")?;
        let exists = sqlx::query("SELECT id FROM graphs WHERE id = $1")
            .bind(graph_id.get())
            .fetch_optional(&mut *tx)
            .await
            .op("reading graph")?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "graph",
                id: graph_id.to_string(),
            });
        }
        let runs = cancel_runs(
            &mut tx,
            "job_id IN (SELECT id FROM jobs WHERE graph_id = $1)",
            graph_id.get(),
            now,
        )
        .await?;
        let jobs = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', reason = 'graph cancelled', updated_at = $2 \
             WHERE graph_id = $1 AND state IN ('pending', 'running')",
        )
        .bind(graph_id.get())
        .bind(now.get())
        .execute(&mut *tx)
        .await
        .op("cancelling graph")?
        .rows_affected();
        let effects = Effects {
            changed: jobs > 0,
            ..Effects::default()
        };
        self.commit_notifying(tx, effects, "committing cancel")
            .await?;
        Ok(Cancelled {
            jobs,
            runs,
            effects,
        })
    }

    /// Runs an ended job again as a new run, with its retries restored; with
    /// `with_dependents`, every job that depends on it runs again too. Returns the jobs put
    /// back in the queue. A job whose needs did not all succeed cannot run: retrigger the
    /// need instead (with its dependents).
    pub async fn retrigger(
        &self,
        job_id: JobId,
        with_dependents: bool,
        now: Millis,
    ) -> Result<Vec<JobId>> {
        let mut tx = Tx::begin(&self.write).await.op("starting retrigger")?;
        let (name, state) = job_state(&mut tx, job_id).await?;
        if !state.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "job {job_id} ({name}) is {state}; only an ended job can run again"
            )));
        }
        // An all-finished job needs its needs ended; any other job needs them succeeded.
        let unmet = sqlx::query(
            "SELECT n.name, n.state FROM job_needs jn JOIN jobs n ON n.id = jn.need_id \
             JOIN jobs j ON j.id = jn.job_id WHERE jn.job_id = $1 \
             AND (n.state IN ('pending', 'running') \
                  OR (j.all_finished = 0 AND n.state <> 'succeeded')) \
             ORDER BY n.id LIMIT 1",
        )
        .bind(job_id.get())
        .fetch_optional(&mut *tx)
        .await
        .op("checking needs")?;
        if let Some(row) = unmet {
            let need: String = col(&row, "name")?;
            let need_state: String = col(&row, "state")?;
            return Err(StoreError::Conflict(format!(
                "job {job_id} ({name}) needs {need}, which is {need_state}; retrigger {need} \
                 with its dependents instead"
            )));
        }
        let mut targets = vec![job_id];
        if with_dependents {
            let rows = sqlx::query(
                "WITH RECURSIVE deps (id) AS ( \
                     SELECT job_id FROM job_needs WHERE need_id = $1 \
                     UNION SELECT jn.job_id FROM job_needs jn JOIN deps d ON jn.need_id = d.id) \
                 SELECT j.id, j.name, j.state FROM jobs j JOIN deps d ON d.id = j.id ORDER BY j.id",
            )
            .bind(job_id.get())
            .fetch_all(&mut *tx)
            .await
            .op("finding dependents")?;
            for row in rows {
                let state: String = col(&row, "state")?;
                if state == "running" {
                    let dep: String = col(&row, "name")?;
                    return Err(StoreError::Conflict(format!(
                        "{dep}, which depends on {name}, is running; cancel it first"
                    )));
                }
                targets.push(typed(&row, "id")?);
            }
        }
        for &id in &targets {
            let spec: String = col(
                &sqlx::query("SELECT spec FROM jobs WHERE id = $1")
                    .bind(id.get())
                    .fetch_one(&mut *tx)
                    .await
                    .op("reading job spec")?,
                "spec",
            )?;
            let spec: JobSpec = json(&spec, "job spec")?;
            sqlx::query(
                "UPDATE jobs SET state = 'pending', retries_left = $2, reason = 'retriggered', \
                 updated_at = $3 WHERE id = $1",
            )
            .bind(id.get())
            .bind(i64::from(spec.retries))
            .bind(now.get())
            .execute(&mut *tx)
            .await
            .op("requeueing job")?;
        }
        // Needs are counted once every target is pending again, so a dependent waits for
        // the retriggered job.
        for &id in &targets {
            count_unmet(&mut tx, id).await?;
        }
        // A dependent run again that also needs a job which did not succeed can never run:
        // it is blocked again (with what depends on it), not left waiting for ever.
        for &id in &targets[1..] {
            block_if_stuck(&mut tx, id, now).await?;
        }
        // A pending job that needs a target counted it as done already; it waits for the
        // new run now (else it would be released twice, and start too early).
        for &id in &targets {
            let waiting = sqlx::query(
                "SELECT jn.job_id FROM job_needs jn JOIN jobs j ON j.id = jn.job_id \
                 WHERE jn.need_id = $1 AND j.state = 'pending'",
            )
            .bind(id.get())
            .fetch_all(&mut *tx)
            .await
            .op("finding waiting dependents")?;
            for row in waiting {
                let dependent: JobId = typed(&row, "job_id")?;
                if !targets.contains(&dependent) {
                    count_unmet(&mut tx, dependent).await?;
                }
            }
        }
        self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing retrigger")
            .await?;
        Ok(targets)
    }
}

/// Sets a pending job's count of needs it still waits for: needs not yet succeeded, or for
/// an all-finished job, needs not yet ended.
pub(crate) async fn count_unmet(tx: &mut Tx, job_id: JobId) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET unmet = (SELECT COUNT(*) FROM job_needs jn \
         JOIN jobs n ON n.id = jn.need_id WHERE jn.job_id = $1 \
         AND (n.state IN ('pending', 'running') \
              OR (jobs.all_finished = 0 AND n.state <> 'succeeded'))) \
         WHERE id = $1",
    )
    .bind(job_id.get())
    .execute(&mut **tx)
    .await
    .op("counting needs")?;
    Ok(())
}

/// Blocks pending job `job_id`, and what depends on it, when it is an ordinary job with a
/// need that ended without success: it could never run. Returns whether it did, and whether
/// an all-finished job became ready on the way.
pub(crate) async fn block_if_stuck(
    tx: &mut Tx,
    job_id: JobId,
    now: Millis,
) -> Result<(bool, bool)> {
    let stuck = sqlx::query(
        "UPDATE jobs SET state = 'blocked', updated_at = $2, \
         reason = 'needs a job that did not succeed' \
         WHERE id = $1 AND state = 'pending' AND all_finished = 0 AND EXISTS ( \
             SELECT 1 FROM job_needs jn JOIN jobs n ON n.id = jn.need_id \
             WHERE jn.job_id = $1 \
             AND n.state IN ('failed', 'exception', 'blocked', 'cancelled')) \
         RETURNING name",
    )
    .bind(job_id.get())
    .bind(now.get())
    .fetch_optional(&mut **tx)
    .await
    .op("blocking a job that cannot run")?;
    let Some(row) = stuck else {
        return Ok((false, false));
    };
    let name: String = col(&row, "name")?;
    let ready =
        block_dependents(tx, job_id, &format!("needs {name}, which is blocked"), now).await?;
    Ok((true, ready))
}

async fn job_state(tx: &mut Tx, job_id: JobId) -> Result<(String, lwr_model::JobState)> {
    let row = sqlx::query("SELECT name, state FROM jobs WHERE id = $1")
        .bind(job_id.get())
        .fetch_optional(&mut **tx)
        .await
        .op("reading job")?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            id: job_id.to_string(),
        })?;
    Ok((
        col(&row, "name")?,
        parse_job_state(&col::<String>(&row, "state")?)?,
    ))
}

/// Ends the live runs matching `filter` (with `$1` bound to `id`, a job's or a graph's) as
/// cancelled.
async fn cancel_runs(tx: &mut Tx, filter: &'static str, id: i64, now: Millis) -> Result<u64> {
    let sql = format!(
        "UPDATE runs SET state = 'cancelled', reason = 'cancelled', finished_at = $2, \
         lease_expires = NULL WHERE state = 'running' AND {filter}"
    );
    let n = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(now.get())
        .execute(&mut **tx)
        .await
        .op("cancelling runs")?
        .rows_affected();
    Ok(n)
}
