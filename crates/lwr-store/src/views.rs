//! Read-only views for pages that show many graphs or jobs at once (the web app): one
//! query per page instead of one per graph or per job. Nothing here changes state.

use lwr_model::api::GraphInfo;
use lwr_model::{GraphId, JobId, JobState, Millis, PushId};

use crate::error::Op;
use crate::graphs::parse_job_state;
use crate::rows::{col, typed, typed_opt};
use crate::{Result, Store};

/// Which graphs a listing shows, newest first.
#[derive(Debug, Clone, Default)]
pub struct GraphFilter {
    /// Only graphs with an id below this one (the next page).
    pub before: Option<GraphId>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    /// Only graphs with a job in this state.
    pub state: Option<JobState>,
    /// Only graphs with a job whose name contains this text.
    pub job: Option<String>,
    pub limit: u32,
}

/// A graph as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSummary {
    pub id: GraphId,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub author: Option<String>,
    pub subject: Option<String>,
    pub created_at: Millis,
    /// The push whose graph this is.
    pub push: Option<PushId>,
}

/// A job as a listing or a drawn graph shows it, with the times of its latest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCell {
    pub id: JobId,
    pub graph_id: GraphId,
    pub name: String,
    pub state: JobState,
    pub node: Option<String>,
    pub runs: u32,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// `x` escaped for `LIKE ... ESCAPE '\'`, the same on both databases.
fn like_pattern(x: &str) -> String {
    let mut out = String::with_capacity(x.len() + 2);
    out.push('%');
    for c in x.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// The rows of the graphs, newest first, that pass `filter`, each with its kept counts
    /// ([`crate::graphs::COUNT_COLUMNS`]): one query, reading one row per graph listed
    /// however many jobs the graphs hold (but a `job` filter looks at their names).
    async fn graph_rows(&self, filter: &GraphFilter) -> Result<Vec<sqlx::any::AnyRow>> {
        enum Bind {
            Int(i64),
            Text(String),
        }
        // A graph still being inserted is not shown until it is whole.
        let mut conds = vec!["g.staging = 0".to_string()];
        let mut binds = Vec::new();
        let mut push = |cond: &str, bind: Bind| {
            binds.push(bind);
            conds.push(cond.replace('?', &format!("${}", binds.len())));
        };
        if let Some(before) = filter.before {
            push("g.id < ?", Bind::Int(before.get()));
        }
        if let Some(repo) = &filter.repository {
            push("g.repository = ?", Bind::Text(repo.clone()));
        }
        if let Some(branch) = &filter.branch {
            push("g.branch = ?", Bind::Text(branch.clone()));
        }
        if let Some(job) = filter.job.as_deref().filter(|j| !j.is_empty()) {
            push(
                "EXISTS (SELECT 1 FROM jobs j WHERE j.graph_id = g.id AND j.name LIKE ? ESCAPE '\\')",
                Bind::Text(like_pattern(job)),
            );
        }
        if let Some(state) = filter.state {
            // A column named by the enum, never the caller's text.
            conds.push(format!("{} > 0", crate::graphs::kept_count(state)));
        }
        let sql = format!(
            "SELECT g.id, g.repository, g.branch, g.revision, g.author, g.subject, g.created_at, \
             (SELECT p.id FROM pushes p WHERE p.graph_id = g.id) AS push_id, {} \
             FROM graphs g {} \
             WHERE {} ORDER BY g.id DESC LIMIT {}",
            crate::graphs::COUNT_COLUMNS,
            crate::graphs::COUNTS_JOIN,
            conds.join(" AND "),
            filter.limit.clamp(1, 1000)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        query.fetch_all(&self.read).await.op("listing graphs")
    }

    /// Graphs, newest first, that pass `filter`: one query.
    pub async fn graph_summaries(&self, filter: &GraphFilter) -> Result<Vec<GraphSummary>> {
        self.graph_rows(filter).await?.iter().map(summary).collect()
    }

    /// Graphs, newest first, that pass `filter`, each with its counts and the times of its
    /// runs (`GET /v1/graphs`): one query; `seq` is left 0.
    pub async fn graph_infos(&self, filter: &GraphFilter) -> Result<Vec<GraphInfo>> {
        let rows = self.graph_rows(filter).await?;
        rows.iter().map(crate::graphs::graph_info).collect()
    }

    /// The jobs of `graphs`, oldest first, with their latest run's times: one query.
    pub async fn job_cells(&self, graphs: &[GraphId]) -> Result<Vec<JobCell>> {
        if graphs.is_empty() {
            return Ok(Vec::new());
        }
        let list = (1..=graphs.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT j.id, j.graph_id, j.name, j.state, j.node, j.runs, r.started_at, r.finished_at \
             FROM jobs j LEFT JOIN runs r ON r.job_id = j.id AND r.number = j.runs \
             WHERE j.graph_id IN ({list}) ORDER BY j.id"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for g in graphs {
            query = query.bind(g.get());
        }
        let rows = query
            .fetch_all(&self.read)
            .await
            .op("listing jobs of graphs")?;
        rows.iter().map(job_cell).collect()
    }

    /// Every running job with its node, for the pool's page. (No index on state, by
    /// design: a scan of the jobs table, as `counts` does.)
    pub async fn running_jobs(&self) -> Result<Vec<JobCell>> {
        let rows = sqlx::query(
            "SELECT j.id, j.graph_id, j.name, j.state, j.node, j.runs, r.started_at, r.finished_at \
             FROM jobs j LEFT JOIN runs r ON r.job_id = j.id AND r.number = j.runs \
             WHERE j.state = 'running' ORDER BY j.id",
        )
        .fetch_all(&self.read)
        .await
        .op("listing running jobs")?;
        rows.iter().map(job_cell).collect()
    }

    /// The need edges of a graph as `(need, job)` job ids.
    pub async fn graph_edges(&self, graph: GraphId) -> Result<Vec<(JobId, JobId)>> {
        let rows = sqlx::query(
            "SELECT n.need_id, n.job_id FROM job_needs n JOIN jobs j ON j.id = n.job_id \
             WHERE j.graph_id = $1 ORDER BY n.job_id, n.need_id",
        )
        .bind(graph.get())
        .fetch_all(&self.read)
        .await
        .op("listing a graph's edges")?;
        rows.iter()
            .map(|row| Ok((typed(row, "need_id")?, typed(row, "job_id")?)))
            .collect()
    }
}

fn summary(row: &sqlx::any::AnyRow) -> Result<GraphSummary> {
    Ok(GraphSummary {
        id: typed(row, "id")?,
        repository: col(row, "repository")?,
        branch: col(row, "branch")?,
        revision: col(row, "revision")?,
        author: col(row, "author")?,
        subject: col(row, "subject")?,
        created_at: typed(row, "created_at")?,
        push: typed_opt(row, "push_id")?,
    })
}

fn job_cell(row: &sqlx::any::AnyRow) -> Result<JobCell> {
    Ok(JobCell {
        id: typed(row, "id")?,
        graph_id: typed(row, "graph_id")?,
        name: col(row, "name")?,
        state: parse_job_state(&col::<String>(row, "state")?)?,
        node: col(row, "node")?,
        runs: crate::rows::u32_of(col(row, "runs")?),
        started_at: typed_opt(row, "started_at")?,
        finished_at: typed_opt(row, "finished_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Test"), "%test%");
        assert_eq!(like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
