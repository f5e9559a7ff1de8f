//! What readers call: graphs, jobs, pushes, repositories, nodes, logs (also followed live),
//! artifacts, manifests and the server's counters. Every handler takes a [`Reader`]: a token
//! with `read`.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lwr_model::api::*;
use lwr_model::logstream::{LiveState, LiveToggle, Stats};
use lwr_model::{GraphId, JobId, PushId, RunId, RunState};
use serde::Deserialize;
use utoipa::IntoParams;

use super::access::Reader;
use super::extract::*;
use super::follow;
use crate::{ApiError, artifacts, logs};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GraphWait {
    /// Wait for a change newer than this `seq` (from an earlier answer).
    after: Option<i64>,
    /// How long to wait for it, in milliseconds (at most 60000).
    #[serde(default)]
    wait_ms: u64,
    /// Wait for the graph to finish rather than for any change: the answer comes once it
    /// is finished, or after `wait_ms` with its state then (`after` is then not needed).
    #[serde(default)]
    finished: bool,
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}", params(("id" = i64, Path), GraphWait),
    responses((status = 200, body = GraphInfo), (status = 404, body = ErrorBody))
)]
pub(crate) async fn get_graph(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<GraphId>,
    ApiQuery(q): ApiQuery<GraphWait>,
) -> ApiResult<Json<GraphInfo>> {
    let wait = Duration::from_millis(q.wait_ms);
    let info = if q.finished {
        state.queue.graph_finished(id, wait).await?
    } else {
        state.queue.graph(id, q.after, wait).await?
    };
    Ok(Json(info))
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}/spec", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the graph's job definitions as submitted", body = GraphSpec),
        (status = 404, body = ErrorBody),
        (status = 409, description = "a push whose decision job has not submitted its graph yet", body = ErrorBody),
    )
)]
pub(crate) async fn get_graph_spec(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<GraphId>,
) -> ApiResult<Response> {
    let _turn = state.heavy_read().await?;
    heavy_json(state.queue.store().graph_spec(id).await?).await
}

/// A large answer as JSON, written on the blocking pool: serializing megabytes takes tens
/// of milliseconds of CPU, which must not hold up the async workers' heartbeats and claims.
/// Called while the listing's turn is held, so the text counts against the same bound.
async fn heavy_json<T: serde::Serialize + Send + 'static>(value: T) -> ApiResult<Response> {
    let written = tokio::task::spawn_blocking(move || serde_json::to_vec(&value)).await;
    match written {
        Ok(Ok(text)) => Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the answer: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing the answer was interrupted: {e}"),
        )),
    }
}

#[utoipa::path(
    get, path = "/v1/repos", params(PageQuery),
    responses((status = 200, description = "repositories by id", body = RepoList))
)]
pub(crate) async fn list_repos(
    _: Reader,
    State(state): Shared,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<RepoList>> {
    let repos = state.queue.store().repos().await?;
    let (mut repos, next_cursor) = page_of(repos, |r| r.id, q.cursor_id()?, q.limit());
    for repo in &mut repos {
        repo.polled_at = state.poll.polled_at(repo.id).map(lwr_store::rfc3339);
    }
    Ok(Json(RepoList { repos, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PushFilter {
    /// Only pushes of this repository.
    repo: Option<i64>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
    /// The next page: `next_cursor` of the page before.
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/pushes", params(PushFilter), responses((status = 200, body = PushList))
)]
pub(crate) async fn list_pushes(
    _: Reader,
    State(state): Shared,
    ApiQuery(q): ApiQuery<PushFilter>,
) -> ApiResult<Json<PushList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let before = cursor(q.cursor.as_deref())?.map(PushId);
    let pushes = state
        .queue
        .store()
        .pushes_before(q.repo, before, i64::from(limit))
        .await?;
    let next_cursor = next_page(pushes.len(), limit, pushes.last().map(|p| p.id.get()));
    Ok(Json(PushList {
        pushes,
        next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/v1/pushes/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = PushInfo), (status = 404, body = ErrorBody))
)]
pub(crate) async fn get_push(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<PushId>,
) -> ApiResult<Json<PushInfo>> {
    Ok(Json(state.queue.store().push(id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GraphListQuery {
    /// Only graphs of this repository (as pushes name it).
    repository: Option<String>,
    /// Only graphs of this branch.
    branch: Option<String>,
    /// At most this many, newest first (default 20, at most 1000).
    limit: Option<u32>,
    /// Only graphs older than this one (the next page).
    #[param(value_type = Option<i64>)]
    before: Option<GraphId>,
    /// The next page: `next_cursor` of the page before (the same as `before`).
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/graphs", params(GraphListQuery),
    responses((status = 200, description = "graphs, newest first, with their counts and times", body = GraphList))
)]
pub(crate) async fn list_graphs(
    _: Reader,
    State(state): Shared,
    ApiQuery(q): ApiQuery<GraphListQuery>,
) -> ApiResult<Json<GraphList>> {
    let seq = *state.queue.subscribe_changes().borrow();
    let before = match cursor(q.cursor.as_deref())? {
        Some(id) => Some(GraphId(id)),
        None => q.before,
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let filter = lwr_store::GraphFilter {
        before,
        repository: q.repository,
        branch: q.branch,
        limit,
        ..Default::default()
    };
    let mut graphs = state.queue.store().graph_infos(&filter).await?;
    for g in &mut graphs {
        g.seq = seq;
    }
    let next_cursor = next_page(graphs.len(), limit, graphs.last().map(|g| g.id.get()));
    Ok(Json(GraphList {
        graphs,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs of this graph.
    #[param(value_type = Option<i64>)]
    graph: Option<GraphId>,
    /// Only jobs in these states (comma-separated: `failed,exception`).
    state: Option<String>,
    /// Only jobs whose name matches this glob (`build-*`).
    name: Option<String>,
    /// Only the newest this many of the jobs that match (still oldest first), at most
    /// 20,000. Without `graph` or `cursor` the default is 1000: a listing of everything is
    /// bounded.
    limit: Option<u32>,
    /// Page through jobs oldest first: `0` starts at the oldest job, then `next_cursor` of
    /// the page before. A page holds `limit` jobs (default 1000, at most 10,000) before the
    /// `name` pattern is applied.
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/jobs", params(JobFilter),
    responses(
        (status = 200, body = JobList),
        (status = 400, description = "an unknown state or a bad name pattern", body = ErrorBody),
        (status = 404, description = "no such graph", body = ErrorBody),
        (status = 503, description = "too many large listings at once: try again after Retry-After seconds", body = ErrorBody),
    )
)]
pub(crate) async fn list_jobs(
    _: Reader,
    State(state): Shared,
    ApiQuery(q): ApiQuery<JobFilter>,
) -> ApiResult<Response> {
    let store = state.queue.store();
    let mut states = Vec::new();
    for word in q.state.iter().flat_map(|s| s.split(',')).map(str::trim) {
        match lwr_model::JobState::parse(word) {
            Some(s) => states.push(s),
            None if word.is_empty() => {}
            None => {
                let known: Vec<&str> = lwr_model::JobState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect();
                return Err(ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "state",
                    format!(
                        "unknown job state '{word}'; states are {}",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(pattern) = q.name.as_deref()
        && let Err(e) = lwr_model::glob::check(pattern)
    {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            format!("bad name pattern '{pattern}': {e}"),
        ));
    }
    let query = lwr_store::JobQuery {
        graph: q.graph,
        states,
        name: q.name.filter(|n| !n.is_empty()),
        limit: match (&q.cursor, q.graph) {
            (Some(_), _) => Some(q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)),
            // A graph's jobs are bounded by the graph's own limit (100,000 jobs).
            (None, Some(_)) => q.limit.map(|n| n.clamp(1, crate::MAX_LISTED_JOBS)),
            (None, None) => Some(
                q.limit
                    .unwrap_or(DEFAULT_PAGE)
                    .clamp(1, crate::MAX_LISTED_JOBS),
            ),
        },
        after: cursor(q.cursor.as_deref())?.map(JobId),
    };
    let _turn = state.heavy_read().await?;
    let (jobs, next) = store.jobs_page(&query).await?;
    let next_cursor = next.map(|id| id.to_string());
    if let Some(graph) = q.graph.filter(|_| jobs.is_empty()) {
        // No jobs: an unknown graph is an error, not an empty list (a graph has jobs, or
        // is a push whose decision job runs, which is a job too).
        store.graph(graph).await?;
    }
    heavy_json(JobList { jobs, next_cursor }).await
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
pub(crate) async fn get_job(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
) -> ApiResult<Json<JobDetail>> {
    Ok(Json(state.queue.store().job(id).await?))
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}/jobs/{name}",
    params(("id" = i64, Path), ("name" = String, Path, description = "normalized job name")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
pub(crate) async fn get_job_by_name(
    _: Reader,
    State(state): Shared,
    ApiPath((graph, name)): ApiPath<(GraphId, String)>,
) -> ApiResult<Json<JobDetail>> {
    // No job name holds a control character (validation refuses them); answer as for any
    // other unknown name instead of handing the database a NUL.
    if name.chars().any(char::is_control) || name.len() > 1024 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("graph {graph} has no job with that name"),
        ));
    }
    let id = state.queue.store().job_by_name(graph, &name).await?;
    Ok(Json(state.queue.store().job(id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Run number (1 for the first attempt); default the latest run.
    run: Option<u32>,
    /// Answer with Server-Sent Events: the log from `offset`, then live output until the run
    /// ends (`run`, `log`, `end` events; docs/logs.md). A `Last-Event-ID` header resumes.
    #[serde(default)]
    follow: bool,
    /// Start at this byte of the log.
    #[serde(default)]
    offset: u64,
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/log", params(("id" = i64, Path), LogQuery),
    responses(
        (status = 200, description = "the stored log of the run from `offset` on; with `follow=true` a stream of Server-Sent Events (`run`, `log`, `end`, `error`), each `log` event's id `RUN:OFFSET`", content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        )),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the run is still going; its log is on its node", body = ErrorBody),
    )
)]
pub(crate) async fn get_log(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if q.follow {
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(follow::last_event_id);
        let start = follow::Start {
            run_number: q.run,
            run_id: resume.map(|(run, _)| run),
            offset: resume.map_or(q.offset, |(_, offset)| offset),
        };
        return follow::sse(state, id, start).await;
    }
    let job = state.queue.store().job(id).await?;
    let run = match q.run {
        Some(n) => job.run_history.iter().find(|r| r.number == n),
        None => job.run_history.last(),
    };
    let Some(run) = run else {
        // Named as a user types it (GRAPH/NAME), with the id for those who typed that.
        let named = format!("job {}/{} (id {id})", job.info.graph_id, job.info.name);
        let msg = match q.run {
            Some(n) => format!("{named} has no run {n}"),
            None => format!("{named} has not run yet (state {})", job.info.state),
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, msg));
    };
    if run.state == RunState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run {} of job {id} is still running; its log stays on node {} until it ends",
                run.number, run.node
            ),
        ));
    }
    let stored = logs::open(&state, run.id, q.offset).await?;
    if stored.is_none() && run.log_size > 0 {
        // Stored by an earlier version into the data dir of another server.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the log of run {} of job {id} ({} bytes) is neither in the artifact store \
                 nor in this server's data dir (an earlier version stored it in its own)",
                run.number, run.log_size
            ),
        ));
    }
    Ok(text_body(stored))
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/artifacts/{name}",
    params(("id" = i64, Path), ("name" = String, Path, description = "artifact name; `log` is the run's log")),
    responses(
        (status = 200, description = "the artifact's bytes; `X-Lwr-Sha256` holds their hash", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_artifact(
    _: Reader,
    State(state): Shared,
    ApiPath((run, name)): ApiPath<(RunId, String)>,
) -> ApiResult<Response> {
    if name == lwr_model::manifest::LOG_ARTIFACT {
        if state.queue.store().run_owner(run).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            ));
        }
        return Ok(text_body(logs::open(&state, run, 0).await?));
    }
    let (content_type, size, sha256, stream) = artifacts::download(&state, run, &name).await?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::HeaderName::from_static("x-lwr-sha256"), sha256),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/manifest", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the run's manifest (JSON Schema: /v1/schemas/manifest-v1.json)", content_type = "application/json"),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_run_manifest(
    _: Reader,
    State(state): Shared,
    ApiPath(run): ApiPath<RunId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let m = artifacts::manifest(&state, run, &base_url(&state.config, &headers)).await?;
    Ok(Json(m).into_response())
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/manifest", params(("id" = i64, Path), LogQuery),
    responses(
        (status = 200, description = "the manifest of the job's latest run, or of run `run`", content_type = "application/json"),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_job_manifest(
    _: Reader,
    State(state): Shared,
    ApiPath(job): ApiPath<JobId>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = state.queue.store().run_of_job(job, q.run).await?;
    let m = artifacts::manifest(&state, run, &base_url(&state.config, &headers)).await?;
    Ok(Json(m).into_response())
}

#[utoipa::path(
    get, path = "/v1/nodes", params(PageQuery),
    responses((status = 200, description = "nodes by name", body = NodeList))
)]
pub(crate) async fn list_nodes(
    _: Reader,
    State(state): Shared,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<NodeList>> {
    let nodes = state.queue.store().nodes(lwr_store::now_ms()).await?;
    let after = q.cursor.clone().filter(|c| !c.is_empty());
    let (nodes, next_cursor) = page_of(nodes, |n| n.name.clone(), after, q.limit());
    Ok(Json(NodeList { nodes, next_cursor }))
}

#[utoipa::path(
    put, path = "/v1/jobs/{id}/log/live", params(("id" = i64, Path)), request_body = LiveToggle,
    responses(
        (status = 200, description = "the toggle of the job's running run", body = LiveState),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job has no running run", body = ErrorBody),
    )
)]
pub(crate) async fn set_live(
    _: Reader,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(toggle): ApiJson<LiveToggle>,
) -> ApiResult<Json<LiveState>> {
    let store = state.queue.store();
    let job = store.job(id).await?;
    let run = follow::pick_run(&job, None).filter(|r| r.state == RunState::Running);
    let Some(run) = run else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} has no running run (state {}); its log is stored once a run ends",
                job.info.state
            ),
        ));
    };
    let Some((node, true)) = store.run_owner(run.id).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {} of job {id} just ended", run.number),
        ));
    };
    let viewers = if state.shared_live() {
        crate::shared_live::set_live(store, run.id, node, toggle.live).await?
    } else {
        state.live.set_live(run.id, node, toggle.live)
    };
    Ok(Json(LiveState {
        job_id: id,
        run_id: run.id,
        live: toggle.live,
        viewers,
    }))
}

#[utoipa::path(
    get, path = "/v1/stats",
    responses((status = 200, description = "counters of this server since it started", body = Stats))
)]
pub(crate) async fn stats(_: Reader, State(state): Shared) -> ApiResult<Json<Stats>> {
    let mut logs = state.live.stats();
    if state.shared_live() {
        // Streams are the fleet's (wants live in the database); viewers are this server's.
        logs.streams = state
            .queue
            .store()
            .live_streams(lwr_store::now_ms())
            .await?;
    }
    Ok(Json(Stats { logs }))
}

#[utoipa::path(
    get, path = "/metrics",
    responses((
        status = 200,
        description = "this server's counters and the fleet's gauges in the Prometheus text \
            format 0.0.4 (docs/operations.md, \"Metrics scraping\")",
        content_type = "text/plain",
        body = String
    ))
)]
pub(crate) async fn metrics(_: Reader, State(state): Shared) -> ApiResult<Response> {
    let text = crate::metrics::render(&state).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Jobs in a page of `GET /v1/jobs` unless `limit` says otherwise, and in a listing without
/// a graph or a cursor.
const DEFAULT_PAGE: u32 = 1000;
/// Most jobs in one page.
const MAX_PAGE: u32 = 10_000;

/// A `cursor` parameter: the id a page continues from (opaque to clients: only ever what a
/// `next_cursor` said, or `0` to start).
fn cursor(text: Option<&str>) -> ApiResult<Option<i64>> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|&n| n >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "cursor",
                    format!("bad cursor '{t}': pass the next_cursor of the page before, or 0"),
                )
            }),
    }
}

/// The `next_cursor` of a page listed newest first: its last id when it was full.
fn next_page(len: usize, limit: u32, last: Option<i64>) -> Option<String> {
    last.filter(|_| len >= limit as usize)
        .map(|id| id.to_string())
}

/// `limit` and `cursor` of the short lists (nodes, repositories, tokens): a page of at most
/// `limit` (default 1000), in the list's order, after the item `cursor` names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many (default 1000, at most 10,000).
    limit: Option<u32>,
    /// The next page: `next_cursor` of the page before.
    cursor: Option<String>,
}

impl PageQuery {
    pub(crate) fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize
    }

    pub(crate) fn cursor_id(&self) -> ApiResult<Option<i64>> {
        cursor(self.cursor.as_deref())
    }
}

/// One page of a short list the store reads whole: the items after `after` in the order of
/// `key`, at most `limit`, and the next page's cursor when more follow.
pub(crate) fn page_of<T, K: Ord + ToString>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> K,
    after: Option<K>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    // Sorted here, not by the database's collation, so the cursor compares as the page did.
    items.sort_by_key(|t| key(t));
    if let Some(after) = after {
        items.retain(|t| key(t) > after);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more
        .then(|| items.last().map(|t| key(t).to_string()))
        .flatten();
    (items, next)
}
