//! Submitting graphs and reading graphs and jobs back.

use std::collections::{BTreeMap, HashMap};

use lwr_model::api::{GraphInfo, JobDetail, JobInfo, RunInfo, StateCounts, SubmitGraph};
use lwr_model::{GraphId, JobId, JobSpec, JobState, Millis, Requirements, RunState};
use sqlx::any::AnyRow;

use crate::batch;
use crate::error::Op;
use crate::queue::Tx;
use crate::rows::{col, json, off_workers, typed, typed_opt, u32_of};
use crate::{Dialect, Result, Store, StoreError, rfc3339};

/// A job listing as [`Store::jobs_page`] decodes it.
struct Decoded {
    /// Oldest first.
    jobs: Vec<JobInfo>,
    /// The ready jobs' requirements, by their place in `jobs`, for `explain_unmet`.
    waiting: Vec<(usize, Requirements)>,
    /// Whether a pending job waits for needs (its reason names them).
    any_needs: bool,
    /// The last id a page scanned (before any name filter).
    scanned_last: Option<JobId>,
    /// Whether the page was full: another may follow.
    full_page: bool,
}

/// Decodes the listing's JSON text, oldest first, keeps the names `name` matches (the
/// newest `limit` of them, unless it is a page) and converts the rows: CPU work only.
fn decode_listing(
    text: Option<&str>,
    name: Option<impl Fn(&str) -> bool>,
    limit: Option<u32>,
    paged: bool,
) -> Result<Decoded> {
    let mut rows: Vec<ListedJob> = json(text.unwrap_or("[]"), "job listing")?;
    // Oldest first, whichever end the select read from.
    rows.sort_unstable_by_key(|row| row.id);
    let scanned_last = match rows.last() {
        Some(row) if paged => Some(JobId::from(row.id)),
        _ => None,
    };
    let full_page = paged && limit.is_some_and(|l| rows.len() >= l as usize);
    if let Some(name) = name {
        rows.retain(|row| name(&row.name));
        if let Some(limit) = limit.filter(|_| !paged) {
            let drop = rows.len().saturating_sub(limit as usize);
            rows.drain(..drop);
        }
    }
    let mut decoded = Decoded {
        jobs: Vec::with_capacity(rows.len()),
        waiting: Vec::new(),
        any_needs: false,
        scanned_last,
        full_page,
    };
    for row in rows {
        let (info, requirements, unmet) = row.into_info()?;
        if let Some(req) = requirements {
            decoded.waiting.push((decoded.jobs.len(), req));
        }
        decoded.any_needs |= info.state == JobState::Pending && unmet > 0;
        decoded.jobs.push(info);
    }
    Ok(decoded)
}

/// A job's columns for listings, with the placement and times of its latest run: read from
/// [`JOB_FROM`], whose one join finds that run (three subqueries, one per column, looked the
/// run up three times for every job listed).
const JOB_COLUMNS: &str = "j.id, j.graph_id, j.name, j.state, j.node, j.runs, j.reason, j.unmet, \
     j.requirements, r.placement AS placement, r.started_at AS run_started, \
     r.finished_at AS run_finished";
/// The jobs (`j`) with their latest run (`r`, none before the first claim), through the
/// unique index on `runs (job_id, number)`.
const JOB_FROM: &str = "jobs j LEFT JOIN runs r ON r.job_id = j.id AND r.number = j.runs";

/// Which jobs a listing wants (`GET /v1/jobs`): every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub graph: Option<GraphId>,
    /// Jobs in any of these states; empty: any state.
    pub states: Vec<JobState>,
    /// A glob on the job's name (`build-*`), in the dialect of [`lwr_model::glob`].
    pub name: Option<String>,
    /// The newest this many of the jobs that match (still listed oldest first); with
    /// `after`, the oldest this many after it.
    pub limit: Option<u32>,
    /// A page: only jobs with a larger id, oldest first (`limit` of them, scanned before
    /// the name pattern is applied, so a page may hold fewer).
    pub after: Option<JobId>,
}

/// Where a graph comes from: the push's repository, branch, revision, author and subject,
/// and `base`, the revision of the previous push on the repository and branch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Origin<'a> {
    pub repository: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub author: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub base: Base<'a>,
}

/// A graph's base revision.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Base<'a> {
    #[default]
    None,
    /// As the caller found it (a polled push's previous revision).
    Given(&'a str),
    /// The revision of the latest graph of the repository and branch that has one, looked
    /// up by the insert itself.
    Previous,
}

/// Inserts a graph row; returns its id.
pub(crate) async fn insert_graph(tx: &mut Tx, origin: Origin<'_>, now: Millis) -> Result<GraphId> {
    // The previous revision is found by the insert: one statement, not two, per graph.
    let base = match origin.base {
        Base::Previous => {
            "(SELECT p.revision FROM graphs p WHERE p.repository = $1 AND p.branch = $2 \
             AND p.revision IS NOT NULL ORDER BY p.id DESC LIMIT 1)"
        }
        Base::None | Base::Given(_) => "$7",
    };
    // A small graph's transaction on SQLite begins with this statement (see `Tx::lead`).
    let lead = tx.lead();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{lead}INSERT INTO graphs (repository, branch, revision, author, subject, created_at, \
         base) VALUES ($1, $2, $3, $4, $5, $6, {base}) RETURNING id"
    )))
    .bind(origin.repository.map(str::to_string))
    .bind(origin.branch.map(str::to_string))
    .bind(origin.revision.map(str::to_string))
    .bind(origin.author.map(str::to_string))
    .bind(origin.subject.map(str::to_string))
    .bind(now.get());
    match origin.base {
        Base::Previous => {}
        Base::None => query = query.bind(None::<String>),
        Base::Given(base) => query = query.bind(Some(base.to_string())),
    }
    // The insert's rows are the last statement's, with or without the BEGIN.
    let mut each = tx.rows(query).await.op("inserting graph")?;
    let row = each.pop().and_then(|rows| rows.into_iter().next());
    typed(
        &row.ok_or_else(|| StoreError::Corrupt {
            what: "inserted graph",
            detail: "no id returned".into(),
        })?,
        "id",
    )
}

/// Inserts `jobs` into graph `graph_id` as pending, each waiting for all its needs, with
/// their edges, in the caller's transaction; a need is one of `jobs` or a job of the graph in
/// `existing` (name to id). Returns the new jobs' ids by name.
pub(crate) async fn insert_jobs<'j>(
    tx: &mut Tx,
    dialect: Dialect,
    graph_id: GraphId,
    jobs: &[&'j JobSpec],
    existing: &HashMap<String, JobId>,
    now: Millis,
    commit: bool,
) -> Result<HashMap<&'j str, JobId>> {
    let mut ids: HashMap<&str, JobId> = HashMap::with_capacity(jobs.len());
    let ordered = batch::topological(jobs);
    let into = batch::InsertAt {
        dialect,
        graph_id,
        now,
    };
    batch::insert_rows(tx, into, &ordered, &mut ids, existing, commit).await?;
    Ok(ids)
}

impl Store {
    /// Stores a push's graph and all its jobs in one transaction; returns the graph id.
    /// The graph is validated again here: the store trusts no client. With `sub.push`, the
    /// jobs join the push's graph (see [`Store::submit_push_graph`]).
    pub async fn submit_graph(&self, sub: &SubmitGraph, now: Millis) -> Result<GraphId> {
        sub.graph.validate()?;
        // On SQLite's one writer, after any claim waiting for it (see `WriterTurns`).
        let _turn = match self.dialect {
            Dialect::Sqlite => self.turns.submission().await,
            Dialect::Postgres => None,
        };
        if let Some(push) = sub.push {
            return self.submit_push_graph(push, sub, now).await;
        }
        if !sub.left_out.is_empty() {
            return Err(StoreError::Invalid {
                field: "left_out",
                message: "jobs can only be left out of a push's graph (give push)".into(),
            });
        }
        let small = sub.graph.jobs.len() <= batch::JOBS_PER_TRANSACTION;
        let begun = match self.dialect {
            // Its BEGIN goes with the graph's insert; a graph of one statement's jobs runs
            // on the writer's direct connection (no hand-off per statement, and short
            // enough for the runtime's thread it runs on).
            Dialect::Sqlite if small => {
                let direct = sub.graph.jobs.len() <= batch::DIRECT_JOBS;
                Tx::begin_along(&self.write, direct).await
            }
            _ => Tx::begin(&self.write).await,
        };
        let mut tx = begun.op("starting graph submission")?;
        let origin = Origin {
            repository: sub.repository.as_deref(),
            branch: sub.branch.as_deref(),
            revision: sub.revision.as_deref(),
            author: sub.author.as_deref(),
            subject: sub.subject.as_deref(),
            // A graph of a pushed revision records the branch's previous one.
            base: if sub.repository.is_some() && sub.branch.is_some() && sub.revision.is_some() {
                Base::Previous
            } else {
                Base::None
            },
        };
        let graph_id = insert_graph(&mut tx, origin, now).await?;
        let jobs: Vec<&JobSpec> = sub.graph.jobs.iter().collect();
        if small {
            // On SQLite the COMMIT goes with the last insert: a one-job graph is two round
            // trips to the database's thread, not three. (Only PostgreSQL notifies, within
            // the transaction, and there it is committed apart.)
            let along = self.dialect == Dialect::Sqlite;
            let none = HashMap::new();
            insert_jobs(&mut tx, self.dialect, graph_id, &jobs, &none, now, along).await?;
            self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing graph")
                .await?;
            return Ok(graph_id);
        }
        // A large graph: staged in transactions of a bounded size (see `batch`), each
        // letting claims, heartbeats and results in between, then shown in one statement.
        sqlx::query("UPDATE graphs SET staging = 1 WHERE id = $1")
            .bind(graph_id.get())
            .execute(&mut *tx)
            .await
            .op("staging graph")?;
        tx.commit().await.op("committing staged graph")?;
        let ordered = batch::topological(&jobs);
        let mut ids: HashMap<&str, JobId> = HashMap::with_capacity(jobs.len());
        let existing = HashMap::new();
        for chunk in ordered.chunks(batch::JOBS_PER_TRANSACTION) {
            let staged = async {
                let mut tx = batch::begin_staged(&self.write, self.dialect).await?;
                let into = batch::InsertAt {
                    dialect: self.dialect,
                    graph_id,
                    now,
                };
                batch::insert_rows(&mut tx, into, chunk, &mut ids, &existing, false).await?;
                tx.commit().await.op("committing staged jobs")
            };
            if let Err(e) = staged.await {
                // Nobody saw the graph: take back what was stored (best effort; a graph
                // left staging is never listed or claimed).
                let _ = batch::discard_staged(&self.write, graph_id).await;
                return Err(e);
            }
        }
        let mut tx = Tx::begin(&self.write).await.op("showing graph")?;
        sqlx::query("UPDATE graphs SET staging = 0 WHERE id = $1")
            .bind(graph_id.get())
            .execute(&mut *tx)
            .await
            .op("showing graph")?;
        self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing graph")
            .await?;
        Ok(graph_id)
    }

    /// A graph with its job counts; `seq` is left 0 for the caller to fill. One row: the
    /// counts and times are kept with the graph (`graph_counts`), never recounted here.
    pub async fn graph(&self, id: GraphId) -> Result<GraphInfo> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT g.id, g.repository, g.branch, g.revision, g.author, g.subject, \
             g.created_at, {COUNT_COLUMNS} FROM graphs g {COUNTS_JOIN} \
             WHERE g.id = $1 AND g.staging = 0"
        )))
        .bind(id.get())
        .fetch_optional(&self.read)
        .await
        .op("reading graph")?
        .ok_or_else(|| StoreError::NotFound {
            what: "graph",
            id: id.to_string(),
        })?;
        graph_info(&row)
    }

    /// Jobs, oldest first, optionally of one graph.
    pub async fn jobs(&self, graph: Option<GraphId>) -> Result<Vec<JobInfo>> {
        self.jobs_matching(&JobQuery {
            graph,
            ..JobQuery::default()
        })
        .await
    }

    /// The jobs `query` asks for, oldest first.
    pub async fn jobs_matching(&self, query: &JobQuery) -> Result<Vec<JobInfo>> {
        Ok(self.jobs_page(query).await?.0)
    }

    /// The jobs `query` asks for, oldest first, and with `after`, the cursor of the next
    /// page when this one was full (the last id scanned).
    pub async fn jobs_page(&self, query: &JobQuery) -> Result<(Vec<JobInfo>, Option<JobId>)> {
        let name = match &query.name {
            Some(pattern) => {
                Some(
                    lwr_model::glob::compile(pattern).map_err(|e| StoreError::Invalid {
                        field: "name",
                        message: format!("bad pattern '{pattern}': {e}"),
                    })?,
                )
            }
            None => None,
        };
        // A graph still being inserted is not listed until it is whole.
        let mut conds =
            vec!["j.graph_id NOT IN (SELECT id FROM graphs WHERE staging <> 0)".to_string()];
        if query.graph.is_some() {
            conds.push("j.graph_id = $1".to_string());
        }
        if !query.states.is_empty() {
            // The states are the enum's own words, never the caller's text.
            let list: Vec<String> = query
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            conds.push(format!("j.state IN ({})", list.join(", ")));
        }
        if let Some(after) = query.after {
            // An integer, never the caller's text.
            conds.push(format!("j.id > {}", after.get()));
        }
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM {JOB_FROM}");
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        // A name pattern is matched here, not in SQL: its limit applies after it (except on
        // a page, which is a range of ids).
        let paged = query.after.is_some();
        // The newest `limit` are read newest first, then listed oldest first.
        match (query.limit, &name) {
            (Some(limit), _) if paged => sql.push_str(&format!(" ORDER BY j.id LIMIT {limit}")),
            (Some(limit), None) => sql.push_str(&format!(" ORDER BY j.id DESC LIMIT {limit}")),
            _ => sql.push_str(" ORDER BY j.id"),
        }
        let sql = listed_as_json(self.dialect, &sql);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(g) = query.graph {
            q = q.bind(g.get());
        }
        let text: Option<String> = q
            .fetch_one(&self.read)
            .await
            .op("listing jobs")
            .and_then(|row| col(&row, "listed"))?;
        // Decoding thousands of rows is CPU work of tens of milliseconds: off the async
        // workers, which must stay free for heartbeats and claims while listings are read.
        let limit = query.limit;
        let Decoded {
            mut jobs,
            waiting,
            any_needs,
            scanned_last,
            full_page,
        } = off_workers("decoding a job listing", move || {
            let matches = name.as_ref().map(|glob| |n: &str| glob.is_match(n));
            decode_listing(text.as_deref(), matches, limit, paged)
        })
        .await?;
        let graph = query.graph;
        self.explain_unmet(&mut jobs, waiting).await?;
        if any_needs {
            self.explain_needs(&mut jobs, graph).await?;
        }
        for job in &mut jobs {
            if job.state == JobState::Pending && job.reason.is_none() {
                job.reason = Some("ready, waiting for a node".into());
            }
        }
        Ok((jobs, scanned_last.filter(|_| full_page)))
    }

    /// Gives each pending job that waits for needs a reason naming them (`waits for build,
    /// lint`): one query for the listing, only when such a job is in it.
    async fn explain_needs(&self, jobs: &mut [JobInfo], graph: Option<GraphId>) -> Result<()> {
        // Two texts, not `$1 IS NULL OR graph_id = $1`, which no index can serve.
        const NEEDS: &str = "SELECT n.job_id, j.name FROM job_needs n JOIN jobs j ON j.id = n.need_id \
             WHERE j.state <> 'succeeded' AND n.job_id IN \
             (SELECT id FROM jobs WHERE state = 'pending' AND unmet > 0";
        const ORDER: &str = ") ORDER BY n.job_id, n.need_id";
        // Only the listing's range of ids: a page, not every waiting job stored (nor every
        // one of a 100,000-job graph when a page of it is listed).
        let low = jobs.iter().map(|j| j.id.get()).min().unwrap_or(0);
        let high = jobs.iter().map(|j| j.id.get()).max().unwrap_or(0);
        let rows = match graph {
            Some(g) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{NEEDS} AND graph_id = $3 AND id BETWEEN $1 AND $2{ORDER}"
                )))
                .bind(low)
                .bind(high)
                .bind(g.get())
                .fetch_all(&self.read)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{NEEDS} AND id BETWEEN $1 AND $2{ORDER}"
                )))
                .bind(low)
                .bind(high)
                .fetch_all(&self.read)
                .await
            }
        }
        .op("listing the needs of pending jobs")?;
        let mut needs: BTreeMap<JobId, Vec<String>> = BTreeMap::new();
        for row in &rows {
            needs
                .entry(typed(row, "job_id")?)
                .or_default()
                .push(col(row, "name")?);
        }
        for job in jobs.iter_mut().filter(|j| j.reason.is_none()) {
            if let Some(names) = needs.get(&job.id) {
                job.reason = Some(waits_for(names));
            }
        }
        Ok(())
    }

    /// Gives each ready job that no usable node can run a reason naming the requirement
    /// none meets (`no node matches: os=plan9 (n1 has linux)`). Worked out when asked,
    /// from the pool as it is now, so it is never stale and costs the claim nothing.
    async fn explain_unmet(
        &self,
        jobs: &mut [JobInfo],
        waiting: Vec<(usize, Requirements)>,
    ) -> Result<()> {
        if waiting.is_empty() {
            return Ok(());
        }
        self.refresh_pool().await?;
        let now = crate::now_ms();
        self.pool.with(|pool| {
            for (i, req) in waiting {
                if let Some(why) = pool.unmet(&req, now) {
                    let job = &mut jobs[i];
                    job.cannot_start = Some(why.clone());
                    job.reason = Some(match job.reason.take() {
                        Some(r) => format!("{r}; {why}"),
                        None => why,
                    });
                }
            }
        });
        Ok(())
    }

    /// Finds a job by `graph_id/name`.
    pub async fn job_by_name(&self, graph_id: GraphId, name: &str) -> Result<JobId> {
        let row = sqlx::query("SELECT id FROM jobs WHERE graph_id = $1 AND name = $2")
            .bind(graph_id.get())
            .bind(name.to_string())
            .fetch_optional(&self.read)
            .await
            .op("finding job by name")?
            .ok_or_else(|| StoreError::NotFound {
                what: "job",
                id: format!("{graph_id}/{name}"),
            })?;
        typed(&row, "id")
    }

    /// A job with its spec, needs and every run.
    pub async fn job(&self, id: JobId) -> Result<JobDetail> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS}, j.spec FROM {JOB_FROM} WHERE j.id = $1"
        )))
        .bind(id.get())
        .fetch_optional(&self.read)
        .await
        .op("reading job")?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let (info, requirements) = job_row(&row)?;
        let mut one = [info];
        self.explain_unmet(&mut one, requirements.map(|r| (0, r)).into_iter().collect())
            .await?;
        let [info] = one;
        let spec: JobSpec = json(&col::<String>(&row, "spec")?, "job spec")?;
        let needs = sqlx::query("SELECT need_id FROM job_needs WHERE job_id = $1 ORDER BY need_id")
            .bind(id.get())
            .fetch_all(&self.read)
            .await
            .op("reading job needs")?
            .iter()
            .map(|r| typed(r, "need_id"))
            .collect::<Result<Vec<JobId>>>()?;
        let runs = sqlx::query(
            "SELECT r.id, r.number, r.state, n.name AS node, r.exit_code, r.reason, \
             r.started_at, r.finished_at, r.log_size, r.placement \
             FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.job_id = $1 ORDER BY r.number",
        )
        .bind(id.get())
        .fetch_all(&self.read)
        .await
        .op("reading runs")?;
        let run_history = runs.iter().map(run_info).collect::<Result<Vec<_>>>()?;
        Ok(JobDetail {
            info,
            spec,
            needs,
            run_history,
        })
    }
}

/// A kept count of `graph_counts k` with the deltas beside it (`d`, see [`KEPT`]).
macro_rules! kept_count {
    ($column:literal) => {
        concat!("k.", $column, " + COALESCE(d.", $column, ", 0)")
    };
}

/// The first start and last end of `graph_counts k` with the deltas beside it.
macro_rules! kept_times {
    ($first:literal, $last:literal) => {
        concat!(
            "CASE WHEN d.first_start IS NULL OR k.first_start < d.first_start ",
            "THEN k.first_start ELSE d.first_start END AS ",
            $first,
            ", CASE WHEN d.last_end IS NULL OR k.last_end > d.last_end ",
            "THEN k.last_end ELSE d.last_end END AS ",
            $last
        )
    };
}

/// The deltas that PostgreSQL's triggers left beside `graph_counts`, summed by graph
/// (`graph_count_deltas`, a few rows at most, folded into the row by the next transaction
/// that takes it; always empty on SQLite).
macro_rules! deltas {
    () => {
        concat!(
            "(SELECT graph_id, CAST(SUM(pending) AS BIGINT) AS pending, ",
            "CAST(SUM(running) AS BIGINT) AS running, CAST(SUM(succeeded) AS BIGINT) AS succeeded, ",
            "CAST(SUM(failed) AS BIGINT) AS failed, CAST(SUM(exception) AS BIGINT) AS exception, ",
            "CAST(SUM(blocked) AS BIGINT) AS blocked, CAST(SUM(cancelled) AS BIGINT) AS cancelled, ",
            "MIN(first_start) AS first_start, MAX(last_end) AS last_end ",
            "FROM graph_count_deltas GROUP BY graph_id)"
        )
    };
}

/// Every graph's kept counts and times, as a table `(graph_id, pending, ..., first_start,
/// last_end)`: its row of `graph_counts` plus its deltas. For reading them all (the
/// invariant check); a query about some graphs joins [`COUNTS_JOIN`] instead, which the
/// database looks up by key rather than building this table whole for each query.
pub(crate) const KEPT: &str = concat!(
    "(SELECT k.graph_id, ",
    kept_count!("pending"),
    " AS pending, ",
    kept_count!("running"),
    " AS running, ",
    kept_count!("succeeded"),
    " AS succeeded, ",
    kept_count!("failed"),
    " AS failed, ",
    kept_count!("exception"),
    " AS exception, ",
    kept_count!("blocked"),
    " AS blocked, ",
    kept_count!("cancelled"),
    " AS cancelled, ",
    kept_times!("first_start", "last_end"),
    " FROM graph_counts k LEFT JOIN ",
    deltas!(),
    " d ON d.graph_id = k.graph_id)"
);

/// Joined to `graphs g`, each graph's kept counts: `k` its row of `graph_counts` (by key)
/// and `d` its deltas, read by [`COUNT_COLUMNS`].
pub(crate) const COUNTS_JOIN: &str = concat!(
    "LEFT JOIN graph_counts k ON k.graph_id = g.id LEFT JOIN ",
    deltas!(),
    " d ON d.graph_id = k.graph_id"
);

/// A graph's kept count of jobs in `state` under [`COUNTS_JOIN`] (NULL without its row).
pub(crate) fn kept_count(state: JobState) -> &'static str {
    match state {
        JobState::Pending => concat!("(", kept_count!("pending"), ")"),
        JobState::Running => concat!("(", kept_count!("running"), ")"),
        JobState::Succeeded => concat!("(", kept_count!("succeeded"), ")"),
        JobState::Failed => concat!("(", kept_count!("failed"), ")"),
        JobState::Exception => concat!("(", kept_count!("exception"), ")"),
        JobState::Blocked => concat!("(", kept_count!("blocked"), ")"),
        JobState::Cancelled => concat!("(", kept_count!("cancelled"), ")"),
    }
}

/// The columns of [`COUNTS_JOIN`] that [`kept_counts`] reads (a graph without its row
/// reads as no jobs and no runs).
pub(crate) const COUNT_COLUMNS: &str = concat!(
    "COALESCE(",
    kept_count!("pending"),
    ", 0) AS c_pending, COALESCE(",
    kept_count!("running"),
    ", 0) AS c_running, COALESCE(",
    kept_count!("succeeded"),
    ", 0) AS c_succeeded, COALESCE(",
    kept_count!("failed"),
    ", 0) AS c_failed, COALESCE(",
    kept_count!("exception"),
    ", 0) AS c_exception, COALESCE(",
    kept_count!("blocked"),
    ", 0) AS c_blocked, COALESCE(",
    kept_count!("cancelled"),
    ", 0) AS c_cancelled, ",
    kept_times!("c_first_start", "c_last_end")
);

/// A graph's kept counts, first start and last end, from [`COUNT_COLUMNS`].
pub(crate) fn kept_counts(row: &AnyRow) -> Result<(StateCounts, Option<Millis>, Option<Millis>)> {
    let mut counts = StateCounts::default();
    for (state, column) in [
        (JobState::Pending, "c_pending"),
        (JobState::Running, "c_running"),
        (JobState::Succeeded, "c_succeeded"),
        (JobState::Failed, "c_failed"),
        (JobState::Exception, "c_exception"),
        (JobState::Blocked, "c_blocked"),
        (JobState::Cancelled, "c_cancelled"),
    ] {
        let n: i64 = col(row, column)?;
        counts.add(state, n.max(0) as u64);
    }
    Ok((
        counts,
        typed_opt(row, "c_first_start")?,
        typed_opt(row, "c_last_end")?,
    ))
}

/// A graph's row with its kept counts ([`COUNT_COLUMNS`]) as [`GraphInfo`]; `seq` is 0.
/// The end is shown only once the graph finished.
pub(crate) fn graph_info(row: &AnyRow) -> Result<GraphInfo> {
    let (counts, first, last) = kept_counts(row)?;
    let finished = counts.finished();
    Ok(GraphInfo {
        id: typed(row, "id")?,
        repository: col(row, "repository")?,
        branch: col(row, "branch")?,
        revision: col(row, "revision")?,
        author: col(row, "author")?,
        subject: col(row, "subject")?,
        created_at: rfc3339(typed(row, "created_at")?),
        finished,
        counts,
        seq: 0,
        started_at: first.map(rfc3339),
        finished_at: last.filter(|_| finished).map(rfc3339),
    })
}

/// The graph [`Store::submit_graph`] stored for `sub` (not a push's: those join a graph
/// that has jobs already) as `id` at `now`, as [`Store::graph`] reads it right after the
/// commit: every job pending, none started. What `POST /v1/graphs` answers, without reading
/// the graph back. `seq` is left 0 for the caller to fill.
pub fn submitted_graph(id: GraphId, sub: &SubmitGraph, now: Millis) -> Option<GraphInfo> {
    if sub.push.is_some() {
        return None;
    }
    let mut counts = StateCounts::default();
    counts.add(JobState::Pending, sub.graph.jobs.len() as u64);
    Some(GraphInfo {
        id,
        repository: sub.repository.clone(),
        branch: sub.branch.clone(),
        revision: sub.revision.clone(),
        author: sub.author.clone(),
        subject: sub.subject.clone(),
        created_at: rfc3339(now),
        finished: counts.finished(),
        counts,
        seq: 0,
        started_at: None,
        finished_at: None,
    })
}

/// `waits for a, b and 3 more`: a few names are enough to see where a graph stands.
fn waits_for(names: &[String]) -> String {
    const SHOWN: usize = 3;
    if names.len() <= SHOWN + 1 {
        return format!("waits for {}", names.join(", "));
    }
    format!(
        "waits for {} and {} more",
        names[..SHOWN].join(", "),
        names.len() - SHOWN
    )
}

/// One job of a listing: [`JOB_COLUMNS`], in their order when read from the JSON array of
/// [`listed_as_json`] (serde reads a struct from an array field by field), or by name from
/// a row ([`job_row`]).
#[derive(Debug, serde::Deserialize)]
struct ListedJob {
    id: i64,
    graph_id: i64,
    name: String,
    state: String,
    node: Option<String>,
    runs: i64,
    reason: Option<String>,
    unmet: i64,
    requirements: Option<String>,
    placement: Option<String>,
    run_started: Option<i64>,
    run_finished: Option<i64>,
}

impl ListedJob {
    /// The job as the API shows it, the requirements of a ready job (to say why no node
    /// takes it) and its count of unmet needs.
    fn into_info(self) -> Result<(JobInfo, Option<Requirements>, i64)> {
        let info = JobInfo {
            id: JobId::from(self.id),
            graph_id: GraphId::from(self.graph_id),
            name: self.name,
            state: parse_job_state(&self.state)?,
            node: self.node,
            runs: u32_of(self.runs),
            reason: self.reason,
            placement: self.placement,
            started_at: self.run_started.map(|t| rfc3339(Millis::from(t))),
            finished_at: self.run_finished.map(|t| rfc3339(Millis::from(t))),
            cannot_start: None,
        };
        let unmet = self.unmet;
        let ready = info.state == JobState::Pending && unmet == 0;
        let requirements = match self.requirements {
            Some(text) if ready => Some(json::<Requirements>(&text, "requirements")?),
            _ => None,
        };
        Ok((info, requirements, unmet))
    }
}

/// A listing's `select` (of [`JOB_COLUMNS`]) as one row and one column, `listed`: a JSON
/// array of one array per job, in no particular order (the caller sorts them by id: an
/// `ORDER BY` in the aggregate made SQLite sort the rows again through a temporary b-tree,
/// a tenth of a listing's cost). sqlx hands each row of a result from SQLite's connection
/// thread over a channel and converts it for `Any`, about a microsecond and a half per row,
/// more than SQLite's own work and more than decoding the same row from JSON here; a
/// listing of a thousand jobs paid it a thousand times.
fn listed_as_json(dialect: Dialect, select: &str) -> String {
    const FIELDS: &str = "l.id, l.graph_id, l.name, l.state, l.node, l.runs, l.reason, \
         l.unmet, l.requirements, l.placement, l.run_started, l.run_finished";
    match dialect {
        Dialect::Sqlite => {
            format!("SELECT json_group_array(json_array({FIELDS})) AS listed FROM ({select}) l")
        }
        Dialect::Postgres => format!(
            "SELECT CAST(json_agg(json_build_array({FIELDS})) AS TEXT) AS listed \
             FROM ({select}) l"
        ),
    }
}

fn job_row(row: &AnyRow) -> Result<(JobInfo, Option<Requirements>)> {
    let listed = ListedJob {
        id: col(row, "id")?,
        graph_id: col(row, "graph_id")?,
        name: col(row, "name")?,
        state: col(row, "state")?,
        node: col(row, "node")?,
        runs: col(row, "runs")?,
        reason: col(row, "reason")?,
        unmet: col(row, "unmet")?,
        requirements: col(row, "requirements")?,
        placement: col(row, "placement")?,
        run_started: col(row, "run_started")?,
        run_finished: col(row, "run_finished")?,
    };
    let (info, requirements, _) = listed.into_info()?;
    Ok((info, requirements))
}

fn run_info(row: &AnyRow) -> Result<RunInfo> {
    let state: String = col(row, "state")?;
    Ok(RunInfo {
        id: typed(row, "id")?,
        number: u32_of(col(row, "number")?),
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            what: "run state",
            detail: state.clone(),
        })?,
        node: col(row, "node")?,
        exit_code: col::<Option<i64>>(row, "exit_code")?.map(|c| c as i32),
        reason: col(row, "reason")?,
        started_at: rfc3339(typed(row, "started_at")?),
        finished_at: typed_opt(row, "finished_at")?.map(rfc3339),
        log_size: col::<i64>(row, "log_size")?.max(0) as u64,
        placement: col(row, "placement")?,
    })
}

pub(crate) fn parse_job_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: "job state",
        detail: s.to_string(),
    })
}
