//! Inserting many jobs at once: multi-row statements, and for a large graph, transactions
//! of a bounded size so that claims, heartbeats and results get the writer between them.
//!
//! A graph submitted in several transactions is *staging* (`graphs.staging <> 0`) until its
//! last job and edge are in: claims and listings leave staging graphs out, so readers and
//! claimers see a graph whole or not at all. Clearing the flag is one row, whatever the size
//! of the graph. A graph left staging by a server that died mid-submission is never claimed
//! or listed, and the retention pass removes it.

use std::collections::HashMap;

use lwr_model::{GraphId, JobId, JobSpec, Millis, Requires};

use crate::error::Op;
use crate::queue::Tx;
use crate::rows::{col, to_json, typed};
use crate::writer::Writer;
use crate::{Dialect, Result, StoreError};

/// Jobs per multi-row INSERT: 9 bound values each. Each statement is a round trip (to sqlx's
/// SQLite thread, or to PostgreSQL, where it also runs the statement-level count trigger
/// once); the bounds are SQLite's 32,766 values a statement and PostgreSQL's 65,535.
const fn job_rows_per_statement(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Sqlite => 200,
        Dialect::Postgres => JOBS_PER_TRANSACTION,
    }
}

/// Edges per multi-row INSERT (2 values each).
const fn edge_rows_per_statement(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Sqlite => 1_000,
        Dialect::Postgres => 10_000,
    }
}

/// `rows` groups of `per_row` placeholders, `(…), (…)`, the row's fixed SQL (`'pending'`)
/// spliced in at `fixed.0` as `fixed.1`. SQLite gets anonymous `?`: sqlx looks a named `$n`
/// up by its name, and SQLite finds a name by scanning the statement's list of names, so a
/// statement of V named values cost V^2/2 string comparisons to bind (a quarter of a
/// 100,000-job submission). PostgreSQL needs `$n`, bound by position.
fn placeholders(
    dialect: Dialect,
    rows: usize,
    per_row: usize,
    fixed: Option<(usize, &str)>,
) -> String {
    let mut sql = String::with_capacity(rows * per_row * 7);
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for i in 0..per_row {
            if i > 0 {
                sql.push_str(", ");
            }
            if let Some((at, text)) = fixed
                && at == i
            {
                sql.push_str(text);
                sql.push_str(", ");
            }
            n += 1;
            match dialect {
                Dialect::Sqlite => sql.push('?'),
                Dialect::Postgres => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Jobs per transaction of a staged submission: small enough that one transaction holds the
/// writer for a few tens of milliseconds (SQLite, debug build), large enough that a
/// 100,000-job graph needs few of them.
pub(crate) const JOBS_PER_TRANSACTION: usize = 2_000;

/// Jobs of a graph whose submission runs on SQLite's direct connection, on the runtime's
/// thread (`crate::direct`): one jobs statement's worth, a millisecond or two.
pub(crate) const DIRECT_JOBS: usize = job_rows_per_statement(Dialect::Sqlite);

/// A transaction of a staged submission. On PostgreSQL its commit does not wait for the WAL
/// to reach the disk: nobody sees a staging graph, and the transaction that shows it commits
/// synchronously, which flushes all WAL written before it, these chunks included. A crash
/// before that loses at most a graph still staging, which the retention pass removes.
pub(crate) async fn begin_staged(write: &Writer, dialect: Dialect) -> Result<Tx> {
    let mut tx = Tx::begin(write).await.op("staging jobs")?;
    if dialect == Dialect::Postgres {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .op("staging jobs")?;
    }
    Ok(tx)
}

/// Where [`insert_rows`] inserts, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertAt {
    pub dialect: Dialect,
    pub graph_id: GraphId,
    pub now: Millis,
}

/// Inserts `jobs` into graph `graph_id` as pending, each waiting for all its needs, with
/// their edges; a need is one of `jobs`, one already in `ids` (inserted earlier, possibly in
/// an earlier transaction of the same submission) or a job of the graph in `existing`.
/// Adds the new jobs' ids to `ids`. Every need must come before the job that names it, in
/// `jobs` or in `ids` (see [`topological`]); a need found nowhere is skipped (callers
/// validate the graph first). With `commit` (SQLite only) the last statement carries the
/// transaction's COMMIT ([`Tx::commit_along`]), one round trip less; the caller's
/// [`Tx::commit`] then sends none.
pub(crate) async fn insert_rows<'j>(
    tx: &mut Tx,
    into: InsertAt,
    jobs: &[&'j JobSpec],
    ids: &mut HashMap<&'j str, JobId>,
    existing: &HashMap<String, JobId>,
    commit: bool,
) -> Result<()> {
    let InsertAt {
        dialect,
        graph_id,
        now,
    } = into;
    // With `commit`, the COMMIT goes with the last statement: the last jobs' insert when no
    // job needs another, else the last edges'.
    let without_edges = jobs.iter().all(|j| j.needs.is_empty());
    let job_chunks = jobs.len().div_ceil(job_rows_per_statement(dialect));
    for (n, chunk) in jobs.chunks(job_rows_per_statement(dialect)).enumerate() {
        let mut sql = String::from(
            "INSERT INTO jobs (graph_id, name, state, unmet, spec, requirements, \
             retries_left, updated_at, all_finished, placement) VALUES ",
        );
        sql.push_str(&placeholders(
            dialect,
            chunk.len(),
            9,
            Some((2, "'pending'")),
        ));
        // Rows come back by name: neither database promises RETURNING in VALUES order.
        sql.push_str(" RETURNING id, name");
        if commit && without_edges && n + 1 == job_chunks {
            sql.push_str(tx.commit_along());
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job in chunk {
            let row = JobRow::of(job)?;
            q = q
                .bind(graph_id.get())
                .bind(job.name.clone())
                .bind(job.needs.len() as i64)
                .bind(row.spec)
                .bind(row.requirements)
                .bind(i64::from(job.retries))
                .bind(now.get())
                .bind(i64::from(job.requires == Requires::AllFinished))
                .bind(row.placement);
        }
        // The jobs' rows (a COMMIT sent along has none).
        let rows: Vec<_> = tx
            .rows(q)
            .await
            .op("inserting jobs")?
            .into_iter()
            .flatten()
            .collect();
        note_ids(&rows, chunk, ids)?;
    }
    let edges = edges_of(jobs, ids, existing);
    if dialect == Dialect::Postgres {
        check_needs_stored(tx, jobs, ids, &edges).await?;
    }
    let edge_chunks = edges.len().div_ceil(edge_rows_per_statement(dialect));
    for (n, chunk) in edges.chunks(edge_rows_per_statement(dialect)).enumerate() {
        let mut sql = String::from("INSERT INTO job_needs (job_id, need_id) VALUES ");
        sql.push_str(&placeholders(dialect, chunk.len(), 2, None));
        if commit && n + 1 == edge_chunks {
            sql.push_str(tx.commit_along());
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (job, need) in chunk {
            q = q.bind(job.get()).bind(need.get());
        }
        tx.rows(q).await.op("inserting job needs")?;
    }
    // Nothing carried it (no jobs, or needs that named none): the caller's commit sends it.
    Ok(())
}

/// A job's computed columns, as stored.
struct JobRow {
    spec: String,
    /// With what `buildbot:` implies: placement reads only this column.
    requirements: Option<String>,
    placement: Option<String>,
}

impl JobRow {
    fn of(job: &JobSpec) -> Result<JobRow> {
        let requirements = job.requirements();
        let requirements = if requirements.is_empty() {
            None
        } else {
            Some(to_json(&requirements, "requirements")?)
        };
        Ok(JobRow {
            spec: to_json(job, "job spec")?,
            requirements,
            placement: crate::pool::Placement::column(job)?,
        })
    }
}

/// Adds the ids of `rows` (`id, name` of the jobs just inserted) to `ids` under the names of
/// `chunk`'s jobs.
fn note_ids<'j>(
    rows: &[sqlx::any::AnyRow],
    chunk: &[&'j JobSpec],
    ids: &mut HashMap<&'j str, JobId>,
) -> Result<()> {
    let by_name: HashMap<String, JobId> = rows
        .iter()
        .map(|r| Ok((col::<String>(r, "name")?, typed::<JobId>(r, "id")?)))
        .collect::<Result<_>>()?;
    for job in chunk {
        let id = by_name
            .get(job.name.as_str())
            .copied()
            .ok_or_else(|| StoreError::Corrupt {
                what: "inserted job",
                detail: job.name.clone(),
            })?;
        ids.insert(job.name.as_str(), id);
    }
    Ok(())
}

/// The edges (job, need) of `jobs` whose ids are known.
fn edges_of(
    jobs: &[&JobSpec],
    ids: &HashMap<&str, JobId>,
    existing: &HashMap<String, JobId>,
) -> Vec<(JobId, JobId)> {
    let mut edges: Vec<(JobId, JobId)> = Vec::new();
    for job in jobs {
        let Some(&job_id) = ids.get(job.name.as_str()) else {
            continue;
        };
        for need in &job.needs {
            let need_id = ids
                .get(need.as_str())
                .or_else(|| existing.get(need.as_str()));
            if let Some(&need_id) = need_id {
                edges.push((job_id, need_id));
            }
        }
    }
    edges
}

/// On PostgreSQL (schema 16), `job_needs` has no foreign keys: their key check per edge
/// locked a job row and cost more than half of a big submission. The needs stored before
/// `jobs` (an earlier chunk of the submission, the push's graph) are looked up once each
/// instead, and a missing one refuses the submission; `jobs` themselves are in this
/// transaction, which no other one can delete.
async fn check_needs_stored(
    tx: &mut Tx,
    jobs: &[&JobSpec],
    ids: &HashMap<&str, JobId>,
    edges: &[(JobId, JobId)],
) -> Result<()> {
    let own: std::collections::HashSet<JobId> = jobs
        .iter()
        .filter_map(|j| ids.get(j.name.as_str()).copied())
        .collect();
    let outside: std::collections::BTreeSet<i64> = edges
        .iter()
        .flat_map(|(job, need)| [*job, *need])
        .filter(|id| !own.contains(id))
        .map(|id| id.get())
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    let list = to_json(&outside, "job ids")?;
    let found: i64 = col(
        &sqlx::query(
            "SELECT COUNT(*) AS n FROM jobs WHERE id IN \
             (SELECT e::BIGINT FROM json_array_elements_text($1::json) e)",
        )
        .bind(list)
        .fetch_one(&mut **tx)
        .await
        .op("finding needed jobs")?,
        "n",
    )?;
    if found != outside.len() as i64 {
        return Err(StoreError::Corrupt {
            what: "job needs",
            detail: format!(
                "{} of the {} needed jobs stored before are gone",
                outside.len() as i64 - found,
                outside.len()
            ),
        });
    }
    Ok(())
}

/// Deletes a staging graph that failed to be stored whole: its edges and jobs a transaction
/// of at most `JOBS_PER_TRANSACTION` jobs at a time, then the graph. Its jobs never ran (no
/// claim sees a staging graph), so nothing else refers to them.
pub(crate) async fn discard_staged(write: &Writer, graph_id: GraphId) -> Result<()> {
    loop {
        let mut tx = Tx::begin(write).await.op("discarding a staged graph")?;
        let chunk = format!(
            "SELECT id FROM jobs WHERE graph_id = $1 ORDER BY id LIMIT {JOBS_PER_TRANSACTION}"
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM job_needs WHERE job_id IN ({chunk}) OR need_id IN ({chunk})"
        )))
        .bind(graph_id.get())
        .execute(&mut *tx)
        .await
        .op("discarding staged edges")?;
        let gone = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM jobs WHERE id IN ({chunk})"
        )))
        .bind(graph_id.get())
        .execute(&mut *tx)
        .await
        .op("discarding staged jobs")?
        .rows_affected();
        if gone == 0 {
            sqlx::query("DELETE FROM graphs WHERE id = $1 AND staging <> 0")
                .bind(graph_id.get())
                .execute(&mut *tx)
                .await
                .op("discarding a staged graph")?;
        }
        tx.commit().await.op("discarding a staged graph")?;
        if gone == 0 {
            return Ok(());
        }
    }
}

/// `jobs` with every job after its needs (needs outside `jobs` do not count), otherwise in
/// the order given. A cycle (which validation rejects before) leaves its jobs at the end.
pub(crate) fn topological<'j>(jobs: &[&'j JobSpec]) -> Vec<&'j JobSpec> {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut waiting = vec![0usize; jobs.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for need in &job.needs {
            if let Some(&n) = index.get(need.as_str()) {
                waiting[i] += 1;
                dependents[n].push(i);
            }
        }
    }
    // Kahn's algorithm, taking ready jobs in the order given.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..jobs.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(jobs.len());
    let mut placed = vec![false; jobs.len()];
    while let Some(i) = ready.pop_first() {
        order.push(jobs[i]);
        placed[i] = true;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order.extend((0..jobs.len()).filter(|&i| !placed[i]).map(|i| jobs[i]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, needs: &[&str]) -> JobSpec {
        serde_json::from_value(serde_json::json!({"name": name, "run": "true", "needs": needs}))
            .expect("a job spec")
    }

    #[test]
    fn placeholders_are_anonymous_on_sqlite_and_numbered_on_postgres() {
        let fixed = Some((1, "'pending'"));
        assert_eq!(
            placeholders(Dialect::Sqlite, 2, 2, fixed),
            "(?, 'pending', ?), (?, 'pending', ?)"
        );
        assert_eq!(
            placeholders(Dialect::Postgres, 2, 2, fixed),
            "($1, 'pending', $2), ($3, 'pending', $4)"
        );
        assert_eq!(placeholders(Dialect::Postgres, 1, 3, None), "($1, $2, $3)");
    }

    #[test]
    fn statements_stay_within_the_databases_bound_values() {
        for (dialect, most) in [(Dialect::Sqlite, 32_766), (Dialect::Postgres, 65_535)] {
            assert!(job_rows_per_statement(dialect) * 9 <= most);
            assert!(edge_rows_per_statement(dialect) * 2 <= most);
        }
    }

    #[test]
    fn needs_come_first() {
        let jobs = [job("c", &["b"]), job("a", &[]), job("b", &["a", "x"])];
        let refs: Vec<&JobSpec> = jobs.iter().collect();
        let names: Vec<&str> = topological(&refs).iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
