//! Polled repositories, pushes, the graphs decision jobs submit for them, and self-serve
//! triggering of jobs a push's graph defines but did not run. Each call is one transaction.

use std::collections::{HashMap, HashSet};

use lwr_model::api::{AddRepo, EditRepo, GraphSpec, PushInfo, RepoInfo, SubmitGraph};
use lwr_model::graph::LeftOut;
use lwr_model::push::{DECISION_JOB, decision_job};
use lwr_model::{
    DurationMs, Graph, GraphError, GraphId, JobId, JobSpec, Millis, PushId, normalize_name,
};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::Op;
use crate::graphs::{Base, Origin, insert_graph, insert_jobs};
use crate::queue::Tx;
use crate::rows::{col, json, to_json, typed, typed_opt, u32_of};
use crate::{Dialect, Result, Store, StoreError, rfc3339};

/// Default time between two polls of a repository
/// ([`lwr_model::timing::DEFAULT_POLL_EVERY`]).
pub const DEFAULT_EVERY_MS: DurationMs =
    DurationMs(lwr_model::timing::DEFAULT_POLL_EVERY.as_millis() as i64);

/// A repository as the poller needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTarget {
    pub id: i64,
    pub url: String,
    pub branches: Vec<String>,
    pub every_ms: DurationMs,
    /// Polls failed in a row.
    pub failures: u32,
    /// When a failing repository may be tried again.
    pub retry_at: Option<Millis>,
    /// A poll succeeded once.
    pub polled: bool,
}

/// What a push's `spec` column holds: the graph as the decision job submitted it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSpec {
    graph: Graph,
    #[serde(default)]
    left_out: Vec<LeftOut>,
}

const REPO_COLUMNS: &str = "r.id, r.url, r.branches, r.every_ms, r.polled, r.failures, r.error, \
     r.retry_at, r.created_at, (SELECT COUNT(*) FROM pushes p WHERE p.repo_id = r.id) AS pushes";

const PUSH_COLUMNS: &str = "id, repo_id, repository, branch, revision, base, previous, graph_id, \
     spec IS NOT NULL AS decided, created_at";

impl Store {
    /// Starts polling a repository. A URL already polled is a conflict.
    pub async fn add_repo(&self, add: &AddRepo, now: Millis) -> Result<RepoInfo> {
        let url = add.url.trim();
        if url.is_empty() || url.chars().any(char::is_control) {
            return Err(StoreError::Invalid {
                field: "url",
                message: "give the repository's URL or path".into(),
            });
        }
        check_branches(&add.branches)?;
        let every_ms = match add.every_secs {
            None => DEFAULT_EVERY_MS,
            Some(s) => every(s)?,
        };
        let existing = sqlx::query("SELECT id FROM repos WHERE url = $1")
            .bind(url.to_string())
            .fetch_optional(&mut *self.writer().await?)
            .await
            .op("looking for the repository")?;
        if let Some(row) = existing {
            let id: i64 = col(&row, "id")?;
            return Err(StoreError::Conflict(format!(
                "{url} is already polled (repository {id}); remove it first to change it"
            )));
        }
        let id: i64 = col(
            &sqlx::query(
                "INSERT INTO repos (url, branches, every_ms, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(url.to_string())
            .bind(to_json(&add.branches, "branch patterns")?)
            .bind(every_ms.get())
            .bind(now.get())
            .fetch_one(&mut *self.writer().await?)
            .await
            .op("adding repository")?,
            "id",
        )?;
        self.repo(id).await
    }

    pub async fn repo(&self, id: i64) -> Result<RepoInfo> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos r WHERE r.id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *self.writer().await?)
        .await
        .op("reading repository")?
        .ok_or_else(|| StoreError::NotFound {
            what: "repository",
            id: id.to_string(),
        })?;
        repo_info(&row)
    }

    /// Every polled repository, oldest first.
    pub async fn repos(&self) -> Result<Vec<RepoInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos r ORDER BY r.id"
        )))
        .fetch_all(&self.read)
        .await
        .op("listing repositories")?;
        rows.iter().map(repo_info).collect()
    }

    /// Changes a polled repository's branch patterns and interval (the fields given).
    pub async fn edit_repo(&self, id: i64, edit: &EditRepo) -> Result<RepoInfo> {
        if let Some(branches) = &edit.branches {
            check_branches(branches)?;
        }
        let every_ms = edit.every_secs.map(every).transpose()?;
        let branches = edit
            .branches
            .as_ref()
            .map(|b| to_json(b, "branch patterns"))
            .transpose()?;
        let n = sqlx::query(
            "UPDATE repos SET branches = COALESCE($1, branches), \
             every_ms = COALESCE($2, every_ms) WHERE id = $3",
        )
        .bind(branches)
        .bind(every_ms.map(DurationMs::get))
        .bind(id)
        .execute(&mut *self.writer().await?)
        .await
        .op("changing repository")?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "repository",
                id: id.to_string(),
            });
        }
        self.repo(id).await
    }

    /// Stops polling a repository; its pushes and graphs stay.
    pub async fn remove_repo(&self, id: i64) -> Result<()> {
        let n = sqlx::query("DELETE FROM repos WHERE id = $1")
            .bind(id)
            .execute(&mut *self.writer().await?)
            .await
            .op("removing repository")?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "repository",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// The repositories to poll, as the poller needs them.
    pub async fn poll_targets(&self) -> Result<Vec<PollTarget>> {
        let rows = sqlx::query(
            "SELECT id, url, branches, every_ms, failures, retry_at, polled FROM repos ORDER BY id",
        )
        .fetch_all(&self.read)
        .await
        .op("listing repositories to poll")?;
        rows.iter()
            .map(|row| {
                Ok(PollTarget {
                    id: col(row, "id")?,
                    url: col(row, "url")?,
                    branches: json(&col::<String>(row, "branches")?, "branch patterns")?,
                    every_ms: typed(row, "every_ms")?,
                    failures: u32_of(col(row, "failures")?),
                    retry_at: typed_opt(row, "retry_at")?,
                    polled: col::<i64>(row, "polled")? != 0,
                })
            })
            .collect()
    }

    /// Records a successful poll of repository `repo_id` that found `heads` (branch,
    /// revision) on wanted branches: one push per head not pushed before, each with a graph
    /// holding its decision job; the repository is marked healthy. Returns the new pushes.
    /// A head already pushed (by an earlier poll, before a restart, or by another server on
    /// the same database) makes no second push.
    pub async fn record_heads(
        &self,
        repo_id: i64,
        heads: &[(String, String)],
        now: Millis,
    ) -> Result<Vec<PushId>> {
        let mut tx = Tx::begin(&self.write).await.op("starting poll record")?;
        let row = sqlx::query("SELECT url FROM repos WHERE id = $1")
            .bind(repo_id)
            .fetch_optional(&mut *tx)
            .await
            .op("reading repository")?
            .ok_or_else(|| StoreError::NotFound {
                what: "repository",
                id: repo_id.to_string(),
            })?;
        let url: String = col(&row, "url")?;
        let mut pushes = Vec::new();
        for (branch, revision) in heads {
            if let Some(id) = create_push(
                &mut tx,
                self.dialect,
                Some(repo_id),
                &url,
                branch,
                revision,
                now,
            )
            .await?
            {
                pushes.push(id);
            }
        }
        sqlx::query(
            "UPDATE repos SET polled = 1, failures = 0, error = NULL, retry_at = NULL \
             WHERE id = $1 AND (polled = 0 OR failures > 0)",
        )
        .bind(repo_id)
        .execute(&mut *tx)
        .await
        .op("marking repository healthy")?;
        // Servers sharing the database wake their waiting nodes too.
        self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing poll record")
            .await?;
        Ok(pushes)
    }

    /// Records a failed poll: the error and when the poller tries again.
    pub async fn record_poll_failure(
        &self,
        repo_id: i64,
        failures: u32,
        error: &str,
        retry_at: Millis,
    ) -> Result<()> {
        sqlx::query("UPDATE repos SET failures = $2, error = $3, retry_at = $4 WHERE id = $1")
            .bind(repo_id)
            .bind(i64::from(failures))
            .bind(error.to_string())
            .bind(retry_at.get())
            .execute(&mut *self.writer().await?)
            .await
            .op("recording poll failure")?;
        Ok(())
    }

    /// Pushes, newest first, optionally of one repository; at most `limit`.
    /// Pushes, newest first: at most `limit`, only those older than `before` (a page).
    pub async fn pushes(&self, repo: Option<i64>, limit: i64) -> Result<Vec<PushInfo>> {
        self.pushes_before(repo, None, limit).await
    }

    /// [`Store::pushes`] from the page before push `before`.
    pub async fn pushes_before(
        &self,
        repo: Option<i64>,
        before: Option<PushId>,
        limit: i64,
    ) -> Result<Vec<PushInfo>> {
        let before = before.map_or(i64::MAX, |b| b.get());
        let rows = match repo {
            Some(r) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {PUSH_COLUMNS} FROM pushes WHERE repo_id = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3"
                )))
                .bind(r)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {PUSH_COLUMNS} FROM pushes WHERE id < $1 ORDER BY id DESC LIMIT $2"
                )))
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await
            }
        }
        .op("listing pushes")?;
        rows.iter().map(push_info).collect()
    }

    pub async fn push(&self, id: PushId) -> Result<PushInfo> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSH_COLUMNS} FROM pushes WHERE id = $1"
        )))
        .bind(id.get())
        .fetch_optional(&self.read)
        .await
        .op("reading push")?
        .ok_or_else(|| StoreError::NotFound {
            what: "push",
            id: id.to_string(),
        })?;
        push_info(&row)
    }

    /// The job definitions of a graph: for a push, the full graph its decision job
    /// submitted (with the jobs left out); otherwise the specs of its jobs.
    pub async fn graph_spec(&self, graph_id: GraphId) -> Result<GraphSpec> {
        let push = sqlx::query("SELECT id, spec FROM pushes WHERE graph_id = $1")
            .bind(graph_id.get())
            .fetch_optional(&self.read)
            .await
            .op("reading push of graph")?;
        if let Some(row) = push {
            let push_id: PushId = typed(&row, "id")?;
            let Some(text) = col::<Option<String>>(&row, "spec")? else {
                return Err(StoreError::Conflict(format!(
                    "graph {graph_id} (push {push_id}) has no jobs from lwr.yml yet: its decision \
                     job has not submitted them"
                )));
            };
            let spec: StoredSpec = json(&text, "push graph")?;
            return Ok(GraphSpec {
                graph_id,
                push: Some(push_id),
                graph: spec.graph,
                left_out: spec.left_out,
            });
        }
        self.graph(graph_id).await?;
        let rows = sqlx::query("SELECT spec FROM jobs WHERE graph_id = $1 ORDER BY id")
            .bind(graph_id.get())
            .fetch_all(&self.read)
            .await
            .op("reading job specs")?;
        let jobs = rows
            .iter()
            .map(|r| json::<JobSpec>(&col::<String>(r, "spec")?, "job spec"))
            .collect::<Result<Vec<_>>>()?;
        Ok(GraphSpec {
            graph_id,
            push: None,
            graph: Graph { jobs },
            left_out: Vec::new(),
        })
    }

    /// Adds the jobs of a push's graph, as its decision job submits them: every job but
    /// those left out joins the graph that holds the decision job, and the full graph is
    /// kept for `graph_spec` and `trigger`. Submitting the same graph again (a decision job
    /// run again after an infrastructure error) changes nothing.
    pub(crate) async fn submit_push_graph(
        &self,
        push_id: PushId,
        sub: &SubmitGraph,
        now: Millis,
    ) -> Result<GraphId> {
        if sub.graph.job(DECISION_JOB).is_some() {
            return Err(StoreError::InvalidGraph(GraphError::InvalidValue {
                file: "graph".into(),
                line: None,
                job: Some(DECISION_JOB.into()),
                field: Some("name".into()),
                message: format!(
                    "'{DECISION_JOB}' is the name of the push's decision job; rename the job"
                ),
            }));
        }
        let left: HashSet<&str> = sub.left_out.iter().map(|l| l.name.as_str()).collect();
        for l in &sub.left_out {
            if sub.graph.job(&l.name).is_none() {
                return Err(StoreError::Invalid {
                    field: "left_out",
                    message: format!("'{}' is not a job of the graph", l.name),
                });
            }
        }
        let scheduled: Vec<&JobSpec> = sub
            .graph
            .jobs
            .iter()
            .filter(|j| !left.contains(j.name.as_str()))
            .collect();
        for job in &scheduled {
            if let Some(need) = job.needs.iter().find(|n| left.contains(n.as_str())) {
                return Err(StoreError::Invalid {
                    field: "left_out",
                    message: format!(
                        "job '{}' needs '{need}', which is left out; a job runs with its needs",
                        job.name
                    ),
                });
            }
        }
        let spec = to_json(
            &StoredSpec {
                graph: sub.graph.clone(),
                left_out: sub.left_out.clone(),
            },
            "push graph",
        )?;
        let mut tx = Tx::begin(&self.write).await.op("starting push graph")?;
        let row = sqlx::query("SELECT graph_id, spec FROM pushes WHERE id = $1")
            .bind(push_id.get())
            .fetch_optional(&mut *tx)
            .await
            .op("reading push")?
            .ok_or_else(|| StoreError::NotFound {
                what: "push",
                id: push_id.to_string(),
            })?;
        let graph_id: GraphId = typed(&row, "graph_id")?;
        if let Some(before) = col::<Option<String>>(&row, "spec")? {
            if before == spec {
                return Ok(graph_id);
            }
            return Err(StoreError::Conflict(format!(
                "push {push_id} already has a different graph (graph {graph_id})"
            )));
        }
        insert_jobs(
            &mut tx,
            self.dialect,
            graph_id,
            &scheduled,
            &HashMap::new(),
            now,
            false,
        )
        .await?;
        // The decision job read the commit: it knows who made it and what it says.
        sqlx::query(
            "UPDATE graphs SET author = COALESCE($2, author), subject = COALESCE($3, subject) \
             WHERE id = $1",
        )
        .bind(graph_id.get())
        .bind(sub.author.clone())
        .bind(sub.subject.clone())
        .execute(&mut *tx)
        .await
        .op("recording push author")?;
        sqlx::query("UPDATE pushes SET spec = $2 WHERE id = $1")
            .bind(push_id.get())
            .bind(spec)
            .execute(&mut *tx)
            .await
            .op("recording push graph")?;
        // Servers sharing the database wake their waiting nodes too.
        self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing push graph")
            .await?;
        Ok(graph_id)
    }

    /// Adds job `name`, which push `push_id`'s graph defines but did not run, with every
    /// need of it (transitively) that is not in the graph yet. Returns the new jobs' ids,
    /// the triggered job first. A job already in the graph is a conflict (retrigger it), and
    /// so is a need that already ended without success (retrigger the need first).
    pub async fn trigger(&self, push_id: PushId, name: &str, now: Millis) -> Result<Vec<JobId>> {
        let name = normalize_name(name);
        let mut tx = Tx::begin(&self.write).await.op("starting trigger")?;
        let row = sqlx::query("SELECT graph_id, spec FROM pushes WHERE id = $1")
            .bind(push_id.get())
            .fetch_optional(&mut *tx)
            .await
            .op("reading push")?
            .ok_or_else(|| StoreError::NotFound {
                what: "push",
                id: push_id.to_string(),
            })?;
        let graph_id: GraphId = typed(&row, "graph_id")?;
        let Some(text) = col::<Option<String>>(&row, "spec")? else {
            return Err(StoreError::Conflict(format!(
                "push {push_id} has no graph yet: its decision job has not submitted one"
            )));
        };
        let spec: StoredSpec = json(&text, "push graph")?;
        if spec.graph.job(&name).is_none() {
            return Err(StoreError::NotFound {
                what: "job in the graph of push",
                id: format!("{push_id}: {name}"),
            });
        }
        let rows = sqlx::query("SELECT id, name, state FROM jobs WHERE graph_id = $1")
            .bind(graph_id.get())
            .fetch_all(&mut *tx)
            .await
            .op("reading the graph's jobs")?;
        let mut existing: HashMap<String, (JobId, String)> = HashMap::with_capacity(rows.len());
        for row in &rows {
            existing.insert(col(row, "name")?, (typed(row, "id")?, col(row, "state")?));
        }
        if let Some((id, state)) = existing.get(&name) {
            return Err(StoreError::Conflict(format!(
                "{name} is already in graph {graph_id} (job {id}, {state}); retrigger it instead"
            )));
        }
        // The job and the needs it is missing, in graph order.
        let mut wanted: HashSet<&str> = HashSet::new();
        let mut stack = vec![name.as_str()];
        while let Some(n) = stack.pop() {
            if existing.contains_key(n) || !wanted.insert(n) {
                continue;
            }
            if let Some(job) = spec.graph.job(n) {
                stack.extend(job.needs.iter().map(String::as_str));
            }
        }
        let adding: Vec<&JobSpec> = spec
            .graph
            .jobs
            .iter()
            .filter(|j| wanted.contains(j.name.as_str()))
            .collect();
        for job in &adding {
            if job.requires == lwr_model::Requires::AllFinished {
                continue;
            }
            for need in &job.needs {
                if let Some((_, state)) = existing.get(need)
                    && !matches!(state.as_str(), "pending" | "running" | "succeeded")
                {
                    return Err(StoreError::Conflict(format!(
                        "{} needs {need}, which is {state}; retrigger {need} first",
                        job.name
                    )));
                }
            }
        }
        let ids_by_name: HashMap<String, JobId> = existing
            .iter()
            .map(|(n, (id, _))| (n.clone(), *id))
            .collect();
        let ids = insert_jobs(
            &mut tx,
            self.dialect,
            graph_id,
            &adding,
            &ids_by_name,
            now,
            false,
        )
        .await?;
        let mut added = Vec::with_capacity(ids.len());
        added.extend(ids.get(name.as_str()).copied());
        for job in &adding {
            if job.name != name
                && let Some(id) = ids.get(job.name.as_str())
            {
                added.push(*id);
            }
        }
        for &id in &added {
            crate::control::count_unmet(&mut tx, id).await?;
        }
        // Servers sharing the database wake their waiting nodes too.
        self.commit_notifying(tx, crate::Effects::NEW_WORK, "committing trigger")
            .await?;
        Ok(added)
    }
}

/// Creates a push of `revision` on `branch` unless that head was pushed before: its graph
/// and decision job, in the caller's transaction. Returns the new push's id.
async fn create_push(
    tx: &mut Tx,
    dialect: Dialect,
    repo_id: Option<i64>,
    url: &str,
    branch: &str,
    revision: &str,
    now: Millis,
) -> Result<Option<PushId>> {
    let seen = sqlx::query(
        "SELECT id FROM pushes WHERE repository = $1 AND branch = $2 AND revision = $3",
    )
    .bind(url.to_string())
    .bind(branch.to_string())
    .bind(revision.to_string())
    .fetch_optional(&mut **tx)
    .await
    .op("looking for the push")?;
    if seen.is_some() {
        return Ok(None);
    }
    let previous = sqlx::query(
        "SELECT id, revision FROM pushes WHERE repository = $1 AND branch = $2 \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(url.to_string())
    .bind(branch.to_string())
    .fetch_optional(&mut **tx)
    .await
    .op("finding the previous push")?;
    let (previous, base) = match previous {
        Some(row) => (
            Some(typed::<PushId>(&row, "id")?),
            Some(col::<String>(&row, "revision")?),
        ),
        None => (None, None),
    };
    let origin = Origin {
        repository: Some(url),
        branch: Some(branch),
        revision: Some(revision),
        base: base.as_deref().map_or(Base::None, Base::Given),
        ..Origin::default()
    };
    let graph_id = insert_graph(tx, origin, now).await?;
    let push_id: PushId = typed(
        &sqlx::query(
            "INSERT INTO pushes (repo_id, repository, branch, revision, previous, base, \
             graph_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(repo_id)
        .bind(url.to_string())
        .bind(branch.to_string())
        .bind(revision.to_string())
        .bind(previous.map(PushId::get))
        .bind(base.clone())
        .bind(graph_id.get())
        .bind(now.get())
        .fetch_one(&mut **tx)
        .await
        .op("inserting push")?,
        "id",
    )?;
    let job = decision_job();
    insert_jobs(tx, dialect, graph_id, &[&job], &HashMap::new(), now, false).await?;
    Ok(Some(push_id))
}

fn check_branches(patterns: &[String]) -> Result<()> {
    for pattern in patterns {
        lwr_model::push::check_branch_pattern(pattern).map_err(|message| StoreError::Invalid {
            field: "branches",
            message,
        })?;
    }
    Ok(())
}

/// A polling interval in seconds, within bounds.
fn every(secs: u64) -> Result<DurationMs> {
    match secs {
        1..=86_400 => Ok(DurationMs::from_secs(secs as i64)),
        s => Err(StoreError::Invalid {
            field: "every_secs",
            message: format!("{s} s: poll at least once a day and at most once a second"),
        }),
    }
}

fn repo_info(row: &AnyRow) -> Result<RepoInfo> {
    let failures = u32_of(col(row, "failures")?);
    let polled = col::<i64>(row, "polled")? != 0;
    let state = if failures > 0 {
        "failing"
    } else if polled {
        "ok"
    } else {
        "new"
    };
    Ok(RepoInfo {
        id: col(row, "id")?,
        url: col(row, "url")?,
        branches: json(&col::<String>(row, "branches")?, "branch patterns")?,
        every_secs: (col::<i64>(row, "every_ms")? / 1000).max(1) as u64,
        state: state.to_string(),
        failures,
        error: col(row, "error")?,
        retry_at: typed_opt(row, "retry_at")?.map(rfc3339),
        polled_at: None,
        pushes: col::<i64>(row, "pushes")?.max(0) as u64,
        created_at: rfc3339(typed(row, "created_at")?),
    })
}

fn push_info(row: &AnyRow) -> Result<PushInfo> {
    Ok(PushInfo {
        id: typed(row, "id")?,
        repo_id: col(row, "repo_id")?,
        repository: col(row, "repository")?,
        branch: col(row, "branch")?,
        revision: col(row, "revision")?,
        base: col(row, "base")?,
        previous: typed_opt(row, "previous")?,
        graph_id: typed(row, "graph_id")?,
        decided: decided(row)?,
        created_at: rfc3339(typed(row, "created_at")?),
    })
}

/// `spec IS NOT NULL` comes back as an integer from SQLite and a boolean from PostgreSQL.
fn decided(row: &AnyRow) -> Result<bool> {
    use sqlx::Row;
    if let Ok(b) = row.try_get::<bool, _>("decided") {
        return Ok(b);
    }
    Ok(col::<i64>(row, "decided")? != 0)
}
