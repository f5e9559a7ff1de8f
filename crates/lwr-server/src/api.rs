//! The `/v1` HTTP API: routes, thin handlers and the OpenAPI document generated from them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use lwr_model::api::*;
use lwr_model::auth::{CreateToken, CreatedToken, MAX_LABEL, TokenInfo, TokenList};
use lwr_model::graph::LeftOut;
use lwr_model::{
    ArtifactDecl, Graph, JobSpec, JobState, NodeProperties, Requirements, Requires, RunState,
    Scope, Scopes, When,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::auth::{Auth, check_node, check_run};
use crate::{ApiError, AppState, artifacts, auth, follow, logs};

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

/// Largest JSON body accepted (a 10,000-job graph is a few MB).
const MAX_JSON_BODY: usize = 32 << 20;
/// Bodies larger than this are decoded on a blocking thread.
const BLOCKING_DECODE_BYTES: usize = 256 << 10;
/// Most results or runs in one node request: a node has at most this many slots.
const MAX_BATCH: usize = 4096;
/// Most slots a node may declare.
const MAX_SLOTS: u32 = 4096;
/// Longest serialized node properties.
const MAX_PROPERTIES_BYTES: usize = 64 << 10;
/// Longest repository, branch or revision of a push.
const MAX_PUSH_FIELD: usize = 4096;
/// Longest reason a node gives for a result.
const MAX_REASON: usize = 64 << 10;
/// Longest token lifetime: ten years.
const MAX_TOKEN_SECS: u64 = 10 * 366 * 24 * 3600;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/graphs", post(submit_graph))
        .route("/v1/graphs/{id}", get(get_graph))
        .route("/v1/graphs/{id}/jobs/{name}", get(get_job_by_name))
        .route("/v1/graphs/{id}/cancel", post(cancel_graph))
        .route("/v1/graphs/{id}/spec", get(get_graph_spec))
        .route("/v1/repos", post(add_repo).get(list_repos))
        .route("/v1/repos/{id}", delete(remove_repo))
        .route("/v1/pushes", get(list_pushes))
        .route("/v1/pushes/{id}", get(get_push))
        .route("/v1/pushes/{id}/trigger", post(trigger_job))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/log", get(get_log))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/retrigger", post(retrigger_job))
        .route("/v1/nodes", post(register_node).get(list_nodes))
        .route("/v1/nodes/{id}/claim", post(claim))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{id}/results", post(report_results))
        .route(
            "/v1/runs/{id}/log",
            put(upload_log).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/runs/{id}/artifacts",
            put(upload_artifact).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/runs/{id}/artifacts/{*name}", get(get_artifact))
        .route("/v1/runs/{id}/artifact-commits", post(commit_artifact))
        .route(
            "/v1/runs/{id}/manifest",
            put(put_manifest).get(get_run_manifest),
        )
        .route("/v1/jobs/{id}/manifest", get(get_job_manifest))
        .route("/v1/schemas/manifest-v1.json", get(manifest_schema))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .merge(follow::routes())
        .merge(crate::pool_api::routes())
        // After routing, so the middleware sees the matched route and knows its scope.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// JSON body extractor: a JSON error naming the field for every bad body (wrong content
/// type, too large, malformed, a field of the wrong type, a NUL character anywhere).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::field(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::field(r.status(), "body", r.body_text()))?;
        // Decoding megabytes takes a while: off the async workers, so other requests
        // (heartbeats above all) are not held up behind a large graph.
        if bytes.len() > BLOCKING_DECODE_BYTES {
            return tokio::task::spawn_blocking(move || decode_json(&bytes))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("decoding the body failed: {e}"),
                    )
                })?
                .map(ApiJson);
        }
        decode_json(&bytes).map(ApiJson)
    }
}

/// Decodes a JSON body; an error names the field at fault as a path (`graph.jobs[3].run`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(field) = nul_field(bytes) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            &field,
            "text may not contain NUL characters",
        ));
    }
    // Every request body is an object; serde would also take a struct written as an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "body",
                    "the body must be a JSON object",
                ),
                Err(e) => ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "body",
                    format!("invalid JSON body: {e}"),
                ),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let status = if inner.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        let field = if path == "." { "body" } else { &path };
        ApiError::field(status, field, format!("invalid JSON body: {inner}"))
    })?;
    de.end().map_err(|e| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "body",
            format!("invalid JSON body: {e}"),
        )
    })?;
    Ok(value)
}

/// The path of a string holding an escaped NUL (`\u0000`), which no database text column
/// takes and no command can carry. Scanned cheaply first; located only when present.
fn nul_field(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut found = false;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                found = true;
                break;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(find_nul(&value, String::new()).unwrap_or_else(|| "body".into()))
}

fn find_nul(value: &serde_json::Value, path: String) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(k))
            } else {
                find_nul(v, join(k))
            }
        }),
        _ => None,
    }
}

/// Path parameters whose rejections (an id that is not a number, too large) are JSON.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| ApiError::field(StatusCode::BAD_REQUEST, "path", r.body_text()))
    }
}

/// Query parameters whose rejections are JSON.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiError::field(StatusCode::BAD_REQUEST, "query", r.body_text()))
    }
}

/// Checks a text field's length; NUL characters never get this far (see [`ApiJson`]).
fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see /v1/openapi.json",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /v1/openapi.json",
    )
}

#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health(State(state): Shared) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: state.queue.store().dialect().name().into(),
    })
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_string(),
    )
        .into_response()
}

#[utoipa::path(
    post, path = "/v1/graphs", request_body = SubmitGraph,
    responses(
        (status = 201, description = "the graph is stored and its ready jobs queued", body = GraphInfo),
        (status = 422, description = "the graph is invalid", body = ErrorBody),
    )
)]
async fn submit_graph(
    State(state): Shared,
    ApiJson(sub): ApiJson<SubmitGraph>,
) -> ApiResult<(StatusCode, Json<GraphInfo>)> {
    for (field, value) in [
        ("repository", &sub.repository),
        ("branch", &sub.branch),
        ("revision", &sub.revision),
    ] {
        if let Some(value) = value {
            check_len(field, value, MAX_PUSH_FIELD)?;
        }
    }
    let info = state.queue.submit(&sub).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GraphWait {
    /// Wait for a change newer than this `seq` (from an earlier answer).
    after: Option<i64>,
    /// How long to wait for it, in milliseconds (at most 60000).
    #[serde(default)]
    wait_ms: u64,
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}", params(("id" = i64, Path), GraphWait),
    responses((status = 200, body = GraphInfo), (status = 404, body = ErrorBody))
)]
async fn get_graph(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<GraphWait>,
) -> ApiResult<Json<GraphInfo>> {
    let info = state
        .queue
        .graph(id, q.after, Duration::from_millis(q.wait_ms))
        .await?;
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
async fn get_graph_spec(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<GraphSpec>> {
    Ok(Json(state.queue.store().graph_spec(id).await?))
}

#[utoipa::path(
    post, path = "/v1/repos", request_body = AddRepo,
    responses(
        (status = 201, description = "the repository is polled from now on", body = RepoInfo),
        (status = 409, description = "the URL is polled already", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn add_repo(
    State(state): Shared,
    ApiJson(add): ApiJson<AddRepo>,
) -> ApiResult<(StatusCode, Json<RepoInfo>)> {
    let repo = state
        .queue
        .store()
        .add_repo(&add, lwr_store::now_ms())
        .await?;
    state.poll.repos_changed();
    Ok((StatusCode::CREATED, Json(repo)))
}

#[utoipa::path(get, path = "/v1/repos", responses((status = 200, body = RepoList)))]
async fn list_repos(State(state): Shared) -> ApiResult<Json<RepoList>> {
    let mut repos = state.queue.store().repos().await?;
    for repo in &mut repos {
        repo.polled_at = state.poll.polled_at(repo.id).map(lwr_store::rfc3339);
    }
    Ok(Json(RepoList { repos }))
}

#[utoipa::path(
    delete, path = "/v1/repos/{id}", params(("id" = i64, Path)),
    responses((status = 204, description = "no longer polled; its pushes stay"), (status = 404, body = ErrorBody))
)]
async fn remove_repo(State(state): Shared, ApiPath(id): ApiPath<i64>) -> ApiResult<StatusCode> {
    state.queue.store().remove_repo(id).await?;
    state.poll.repos_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PushFilter {
    /// Only pushes of this repository.
    repo: Option<i64>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/pushes", params(PushFilter), responses((status = 200, body = PushList))
)]
async fn list_pushes(
    State(state): Shared,
    ApiQuery(q): ApiQuery<PushFilter>,
) -> ApiResult<Json<PushList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(PushList {
        pushes: state.queue.store().pushes(q.repo, i64::from(limit)).await?,
    }))
}

#[utoipa::path(
    get, path = "/v1/pushes/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = PushInfo), (status = 404, body = ErrorBody))
)]
async fn get_push(State(state): Shared, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<PushInfo>> {
    Ok(Json(state.queue.store().push(id).await?))
}

#[utoipa::path(
    post, path = "/v1/pushes/{id}/trigger", params(("id" = i64, Path)), request_body = TriggerRequest,
    responses(
        (status = 200, description = "the job, and the needs it was missing, are queued", body = TriggerResult),
        (status = 404, description = "no such push, or its graph defines no such job", body = ErrorBody),
        (status = 409, description = "the job is in the graph already, a need failed, or the push has no graph yet", body = ErrorBody),
    )
)]
async fn trigger_job(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<TriggerRequest>,
) -> ApiResult<Json<TriggerResult>> {
    Ok(Json(TriggerResult {
        jobs: state.queue.trigger(id, &req.job).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs of this graph.
    graph: Option<i64>,
}

#[utoipa::path(
    get, path = "/v1/jobs", params(JobFilter),
    responses((status = 200, body = JobList), (status = 404, description = "no such graph", body = ErrorBody))
)]
async fn list_jobs(
    State(state): Shared,
    ApiQuery(q): ApiQuery<JobFilter>,
) -> ApiResult<Json<JobList>> {
    let store = state.queue.store();
    let jobs = store.jobs(q.graph).await?;
    if let Some(graph) = q.graph.filter(|_| jobs.is_empty()) {
        // No jobs: an unknown graph is an error, not an empty list (a graph has jobs, or
        // is a push whose decision job runs, which is a job too).
        store.graph(graph).await?;
    }
    Ok(Json(JobList { jobs }))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
async fn get_job(State(state): Shared, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<JobDetail>> {
    Ok(Json(state.queue.store().job(id).await?))
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}/jobs/{name}",
    params(("id" = i64, Path), ("name" = String, Path, description = "normalized job name")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
async fn get_job_by_name(
    State(state): Shared,
    ApiPath((graph, name)): ApiPath<(i64, String)>,
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
async fn get_log(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
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
        let msg = match q.run {
            Some(n) => format!("job {id} has no run {n}"),
            None => format!("job {id} has not run yet (state {})", job.info.state),
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
    let stored = logs::open(&state.config.data_dir, run.id, q.offset).await?;
    if stored.is_none() && run.log_size > 0 {
        // Uploaded through another server sharing the database, into its data dir.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the log of run {} of job {id} ({} bytes) was stored by another server; \
                 servers sharing a database must share --data-dir",
                run.number, run.log_size
            ),
        ));
    }
    Ok(text_body(stored))
}

/// A stored log as a plain-text answer (empty when none is stored).
fn text_body(stored: Option<(u64, Body)>) -> Response {
    let body = stored.map_or_else(Body::empty, |(_, body)| body);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the job is cancelled and its dependents blocked", body = CancelResult),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job already ended", body = ErrorBody),
    )
)]
async fn cancel_job(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<CancelResult>> {
    let c = state.queue.cancel_job(id).await?;
    Ok(Json(CancelResult {
        jobs: c.jobs,
        runs: c.runs,
    }))
}

#[utoipa::path(
    post, path = "/v1/graphs/{id}/cancel", params(("id" = i64, Path)),
    responses((status = 200, body = CancelResult), (status = 404, body = ErrorBody))
)]
async fn cancel_graph(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<CancelResult>> {
    let c = state.queue.cancel_graph(id).await?;
    Ok(Json(CancelResult {
        jobs: c.jobs,
        runs: c.runs,
    }))
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/retrigger", params(("id" = i64, Path)), request_body = RetriggerRequest,
    responses(
        (status = 200, description = "the job (and dependents) are back in the queue as new runs", body = RetriggerResult),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job has not ended, or a need did not succeed", body = ErrorBody),
    )
)]
async fn retrigger_job(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RetriggerRequest>,
) -> ApiResult<Json<RetriggerResult>> {
    Ok(Json(RetriggerResult {
        jobs: state.queue.retrigger(id, req.with_dependents).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes", request_body = RegisterNode,
    responses((status = 200, description = "the node's id", body = NodeInfo), (status = 400, body = ErrorBody))
)]
async fn register_node(
    State(state): Shared,
    auth: Auth,
    ApiJson(reg): ApiJson<RegisterNode>,
) -> ApiResult<Json<NodeInfo>> {
    if reg.name.trim().is_empty() || reg.name.len() > 200 || reg.name.chars().any(char::is_control)
    {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            "node name must be 1 to 200 characters, none of them control characters",
        ));
    }
    if reg.slots == 0 || reg.slots > MAX_SLOTS {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "slots",
            format!("a node needs 1 to {MAX_SLOTS} slots"),
        ));
    }
    let props = serde_json::to_string(&reg.properties).unwrap_or_default();
    check_len("properties", &props, MAX_PROPERTIES_BYTES)?;
    let now = lwr_store::now_ms();
    let store = state.queue.store();
    // A node's name is its identity: another node's token may not take it over while the
    // token it registered with still works (a node whose token was revoked may re-register
    // with its new one).
    if let (Some(caller), false) = (&auth.0, auth.is_admin())
        && let Some(Some(owner)) = store.node_owner_by_name(&reg.name).await?
        && owner != caller.token_id
        && store.token_active(owner, now).await?
    {
        return Err(ApiError::field(
            StatusCode::FORBIDDEN,
            "name",
            format!(
                "node '{}' is registered with another token that is still active",
                reg.name
            ),
        ));
    }
    let id = store.register_node_for(&reg, now, auth.token_id()).await?;
    Ok(Json(store.node(id, now).await?))
}

#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = NodeList)))]
async fn list_nodes(State(state): Shared) -> ApiResult<Json<NodeList>> {
    Ok(Json(NodeList {
        nodes: state.queue.store().nodes(lwr_store::now_ms()).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/claim", params(("id" = i64, Path)), request_body = ClaimRequest,
    responses(
        (status = 200, description = "jobs for the node, possibly none after the wait", body = ClaimResponse),
        (status = 404, description = "unknown node: register again", body = ErrorBody),
    )
)]
async fn claim(
    State(state): Shared,
    auth: Auth,
    ApiPath(node): ApiPath<i64>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult<Json<ClaimResponse>> {
    check_node(&state, &auth, node).await?;
    check_results(&req.results)?;
    let wait = Duration::from_millis(req.wait_ms);
    let mut claimed = state
        .queue
        .claim(node, req.max.min(256), &req.results, wait)
        .await?;
    if state.config.auth {
        // Without it, a job could not read its needs' manifests (`lwr fetch`). The key was
        // loaded at start, so this cannot fail after the claim committed.
        for a in &mut claimed.assignments {
            a.token = Some(state.queue.store().job_token(a.run_id).await?);
        }
    }
    Ok(Json(ClaimResponse {
        assignments: claimed.assignments,
        acks: claimed.acks,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/heartbeat", params(("id" = i64, Path)), request_body = Heartbeat,
    responses((status = 200, body = HeartbeatResponse))
)]
async fn heartbeat(
    State(state): Shared,
    auth: Auth,
    ApiPath(node): ApiPath<i64>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    check_node(&state, &auth, node).await?;
    if hb.runs.len() > MAX_BATCH {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "runs",
            format!("more than {MAX_BATCH} runs"),
        ));
    }
    if let Some(why) = &hb.unhealthy {
        check_len("unhealthy", why, MAX_REASON)?;
    }
    let abandon = state
        .queue
        .heartbeat(node, &hb.runs, hb.unhealthy.as_deref())
        .await?;
    let reboot =
        state.queue.store().node_state(node).await? == Some(lwr_model::NodeState::Draining);
    Ok(Json(HeartbeatResponse {
        lease_secs: state.queue.lease().as_secs(),
        abandon,
        reboot,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/results", params(("id" = i64, Path)), request_body = ReportResults,
    responses((status = 200, body = ReportAck))
)]
async fn report_results(
    State(state): Shared,
    auth: Auth,
    ApiPath(node): ApiPath<i64>,
    ApiJson(rep): ApiJson<ReportResults>,
) -> ApiResult<Json<ReportAck>> {
    check_node(&state, &auth, node).await?;
    check_results(&rep.results)?;
    Ok(Json(ReportAck {
        acks: state.queue.report(node, &rep.results).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The node uploading; it must hold the run.
    node: i64,
    /// SHA-256 of the log (64 lowercase hex digits); when given, a log that does not match
    /// is refused.
    sha256: Option<String>,
}

#[utoipa::path(
    put, path = "/v1/runs/{id}/log", params(("id" = i64, Path), UploadQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "stored"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    )
)]
async fn upload_log(
    State(state): Shared,
    auth: Auth,
    ApiPath(run): ApiPath<i64>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    check_node(&state, &auth, q.node).await?;
    let store = state.queue.store();
    check_run(&state, run, q.node).await?;
    let (size, sha256) = logs::store(
        &state.config.data_dir,
        run,
        body,
        state.config.max_log_bytes,
        q.sha256.as_deref(),
    )
    .await?;
    store.set_log_size(run, size, &sha256).await?;
    state.live.stored(run);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArtifactUploadQuery {
    /// The node uploading; it must hold the run.
    node: i64,
    /// Artifact name, unique in the run: a relative path of plain components (no `..`, no
    /// leading `/`, no NUL).
    name: String,
    /// SHA-256 of the content, 64 lowercase hex digits; an upload that does not match is
    /// refused and nothing is stored. Without it the upload is staged (202): nothing is
    /// stored until `POST /v1/runs/{id}/artifact-commits` names it with the uploader's hash.
    sha256: Option<String>,
    /// `installer`, `symbols`, `tests`, `report`, `other` or a custom word.
    #[serde(default = "other_kind")]
    kind: String,
    /// The file's path in the job dir.
    #[serde(default)]
    path: String,
    /// Default: guessed from the name.
    content_type: Option<String>,
}

fn other_kind() -> String {
    "other".into()
}

#[utoipa::path(
    put, path = "/v1/runs/{id}/artifacts", params(("id" = i64, Path), ArtifactUploadQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "stored; the artifact as manifests list it", content_type = "application/json"),
        (status = 202, description = "received without `sha256`: staged, not stored, until committed", body = StagedArtifact),
        (status = 400, description = "bad name, kind, hash or path", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already has an artifact of that name", body = ErrorBody),
        (status = 413, description = "larger than the server's limit", body = ErrorBody),
        (status = 422, description = "the content does not match its sha256", body = ErrorBody),
        (status = 503, description = "without `sha256`: too many uploads wait for their commit; retry later", body = ErrorBody),
    )
)]
async fn upload_artifact(
    State(state): Shared,
    auth: Auth,
    ApiPath(run): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ArtifactUploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_node(&state, &auth, q.node).await?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let info = artifacts::UploadInfo {
        node: q.node,
        name: q.name,
        sha256: q.sha256,
        kind: q.kind,
        path: q.path,
        content_type: q.content_type,
        length,
    };
    match artifacts::upload(&state, run, info, body).await? {
        artifacts::Uploaded::Stored(mut artifact) => {
            artifact.location = format!("{}{}", base_url(&headers), artifact.location);
            Ok((StatusCode::CREATED, Json(artifact)).into_response())
        }
        artifacts::Uploaded::Staged(staged) => {
            Ok((StatusCode::ACCEPTED, Json(staged)).into_response())
        }
    }
}

#[utoipa::path(
    post, path = "/v1/runs/{id}/artifact-commits", params(("id" = i64, Path), NodeQuery),
    request_body = ArtifactCommit,
    responses(
        (status = 201, description = "verified and stored; the artifact as manifests list it", content_type = "application/json"),
        (status = 400, description = "bad hash", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such run, or no such staged upload (expired or the server restarted: upload again)", body = ErrorBody),
        (status = 409, description = "the run already has an artifact of that name", body = ErrorBody),
        (status = 422, description = "the content received does not match `sha256`: dropped", body = ErrorBody),
    )
)]
async fn commit_artifact(
    State(state): Shared,
    auth: Auth,
    ApiPath(run): ApiPath<i64>,
    ApiQuery(q): ApiQuery<NodeQuery>,
    headers: HeaderMap,
    ApiJson(commit): ApiJson<ArtifactCommit>,
) -> ApiResult<Response> {
    check_node(&state, &auth, q.node).await?;
    let mut artifact = artifacts::commit(&state, run, q.node, &commit).await?;
    artifact.location = format!("{}{}", base_url(&headers), artifact.location);
    Ok((StatusCode::CREATED, Json(artifact)).into_response())
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/artifacts/{name}",
    params(("id" = i64, Path), ("name" = String, Path, description = "artifact name; `log` is the run's log")),
    responses(
        (status = 200, description = "the artifact's bytes; `X-Lwr-Sha256` holds their hash", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_artifact(
    State(state): Shared,
    ApiPath((run, name)): ApiPath<(i64, String)>,
) -> ApiResult<Response> {
    if name == lwr_model::manifest::LOG_ARTIFACT {
        if state.queue.store().run_owner(run).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            ));
        }
        return Ok(text_body(logs::open(&state.config.data_dir, run, 0).await?));
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// The node sending; it must hold the run.
    node: i64,
}

#[utoipa::path(
    put, path = "/v1/runs/{id}/manifest", params(("id" = i64, Path), NodeQuery),
    request_body = ManifestUpload,
    responses(
        (status = 204, description = "recorded"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already has a manifest", body = ErrorBody),
        (status = 422, description = "a listed artifact was not uploaded", body = ErrorBody),
    )
)]
async fn put_manifest(
    State(state): Shared,
    auth: Auth,
    ApiPath(run): ApiPath<i64>,
    ApiQuery(q): ApiQuery<NodeQuery>,
    ApiJson(upload): ApiJson<ManifestUpload>,
) -> ApiResult<StatusCode> {
    check_node(&state, &auth, q.node).await?;
    artifacts::put_manifest(&state, run, q.node, &upload).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/manifest", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the run's manifest (JSON Schema: /v1/schemas/manifest-v1.json)", content_type = "application/json"),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_run_manifest(
    State(state): Shared,
    ApiPath(run): ApiPath<i64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let m = artifacts::manifest(&state, run, &base_url(&headers)).await?;
    Ok(Json(m).into_response())
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/manifest", params(("id" = i64, Path), LogQuery),
    responses(
        (status = 200, description = "the manifest of the job's latest run, or of run `run`", content_type = "application/json"),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_job_manifest(
    State(state): Shared,
    ApiPath(job): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = state.queue.store().run_of_job(job, q.run).await?;
    let m = artifacts::manifest(&state, run, &base_url(&headers)).await?;
    Ok(Json(m).into_response())
}

#[utoipa::path(
    get, path = "/v1/schemas/manifest-v1.json",
    responses((status = 200, description = "the JSON Schema of manifest v1", content_type = "application/schema+json"))
)]
async fn manifest_schema() -> Response {
    static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = SCHEMA.get_or_init(lwr_model::manifest::schema_json).clone();
    ([(header::CONTENT_TYPE, "application/schema+json")], text).into_response()
}

/// The server's URL as the client reached it, for absolute locations in manifests.
fn base_url(headers: &HeaderMap) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() && !host.contains(['/', ' ', '@']) => {
            format!("http://{host}")
        }
        _ => String::new(),
    }
}

/// Results a node sends: a bounded batch, each reason of bounded length.
fn check_results(results: &[RunResult]) -> Result<(), ApiError> {
    if results.len() > MAX_BATCH {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "results",
            format!("more than {MAX_BATCH} results"),
        ));
    }
    for (i, r) in results.iter().enumerate() {
        if let Some(reason) = &r.reason {
            check_len(&format!("results[{i}].reason"), reason, MAX_REASON)?;
        }
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "the token; its secret is shown only in this answer", body = CreatedToken),
        (status = 422, body = ErrorBody),
    )
)]
async fn create_token(
    State(state): Shared,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if req.scopes.is_empty() {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes",
            "a token needs at least one scope",
        ));
    }
    if let Some(label) = &req.label {
        check_len("label", label, MAX_LABEL)?;
        if label.chars().any(char::is_control) {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "label",
                "a label may not hold control characters",
            ));
        }
    }
    let now = lwr_store::now_ms();
    let expires_at = match req.expires_secs {
        None => None,
        Some(secs) if (1..=MAX_TOKEN_SECS).contains(&secs) => Some(now + secs as i64 * 1000),
        Some(_) => {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "expires_secs",
                format!("must be between 1 and {MAX_TOKEN_SECS} seconds"),
            ));
        }
    };
    let mut scopes = req.scopes.clone();
    scopes.sort();
    scopes.dedup();
    let (info, token) = state
        .queue
        .store()
        .create_token(&Scopes(scopes), req.label.as_deref(), expires_at, now)
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = TokenList)))]
async fn list_tokens(State(state): Shared) -> ApiResult<Json<TokenList>> {
    Ok(Json(TokenList {
        tokens: state.queue.store().tokens(lwr_store::now_ms()).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/tokens/{id}/revoke", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "revoked: it stops working at once", body = TokenInfo),
        (status = 404, body = ErrorBody),
    )
)]
async fn revoke_token(
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(
        state
            .queue
            .store()
            .revoke_token(id, lwr_store::now_ms())
            .await?,
    ))
}

/// Adds what every operation shares to the document: the bearer scheme, the error answers
/// any request may get (bad path or query, malformed body, no token, missing scope), and
/// the public operations that need no token.
struct Shared_;

impl Modify for Shared_ {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            // The routes the middleware lets through without a token (all of them GETs).
            let public = crate::auth::required_scope(&axum::http::Method::GET, path).is_none();
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let has_params = path.contains('{') || op.parameters.is_some();
                let responses = &mut op.responses.responses;
                if path.contains('{') {
                    responses
                        .entry("404".into())
                        .or_insert_with(|| error("nothing with that id"));
                }
                if has_params || op.request_body.is_some() {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| error("bad path, query or body"));
                }
                if op.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("body too large"));
                    responses
                        .entry("415".into())
                        .or_insert_with(|| error("wrong Content-Type"));
                    responses
                        .entry("422".into())
                        .or_insert_with(|| error("a field is invalid; `field` names it"));
                }
                if public {
                    op.security = Some(vec![
                        utoipa::openapi::security::SecurityRequirement::default(),
                    ]);
                } else {
                    responses.entry("401".into()).or_insert_with(|| {
                        error("no token, or an unknown, revoked or expired one")
                    });
                    responses
                        .entry("403".into())
                        .or_insert_with(|| error("the token lacks the scope the operation needs"));
                }
            }
        }
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lwr",
        description = "The lwr server's v1 API: graphs, jobs, runs, nodes, polled repositories, \
            pushes and artifacts. With `lwr server --auth`, every operation but /v1/health, /v1/openapi.json and /v1/schemas/manifest-v1.json needs \
            `Authorization: Bearer TOKEN` with the scope it names in docs/security.md."
    ),
    modifiers(&Shared_),
    paths(
        health,
        submit_graph,
        get_graph,
        get_job_by_name,
        list_jobs,
        get_job,
        get_log,
        cancel_job,
        cancel_graph,
        retrigger_job,
        get_graph_spec,
        add_repo,
        list_repos,
        remove_repo,
        list_pushes,
        get_push,
        trigger_job,
        register_node,
        list_nodes,
        claim,
        heartbeat,
        report_results,
        upload_log,
        upload_artifact,
        commit_artifact,
        get_artifact,
        put_manifest,
        get_run_manifest,
        get_job_manifest,
        manifest_schema,
        create_token,
        list_tokens,
        revoke_token,
        crate::pool_api::set_node_state,
        crate::pool_api::label_node
    ),
    components(schemas(
        ErrorBody,
        SubmitGraph,
        Graph,
        JobSpec,
        ArtifactDecl,
        Requirements,
        GraphInfo,
        StateCounts,
        JobInfo,
        JobList,
        JobDetail,
        RunInfo,
        JobState,
        RunState,
        RegisterNode,
        NodeProperties,
        NodeInfo,
        NodeList,
        ClaimRequest,
        ClaimResponse,
        Assignment,
        Heartbeat,
        HeartbeatResponse,
        Outcome,
        RunResult,
        ReportResults,
        ResultAck,
        ReportAck,
        ManifestUpload,
        StagedArtifact,
        ArtifactCommit,
        Health,
        CancelResult,
        RetriggerRequest,
        RetriggerResult,
        Requires,
        When,
        LeftOut,
        GraphSpec,
        AddRepo,
        RepoInfo,
        RepoList,
        PushInfo,
        PushList,
        TriggerRequest,
        TriggerResult,
        Scope,
        CreateToken,
        CreatedToken,
        TokenInfo,
        TokenList,
        SetNodeState,
        LabelNode,
        lwr_model::NodeState,
        lwr_model::Prefer
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the v1 API, generated from the handlers and types above.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(follow::FollowDoc::openapi());
    // Again, for the merged operations: it only adds what an operation does not say.
    Shared_.modify(&mut doc);
    // A fixed version keeps the checked-in document stable across releases of the binary.
    doc.info.version = "1".into();
    doc
}

/// The OpenAPI document as the server serves it and the repository keeps it.
pub fn openapi_string() -> String {
    let doc = serde_json::to_value(openapi()).map(|mut v| {
        unsigned_ranges(&mut v);
        v
    });
    let mut text = doc
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// utoipa describes `u32` as `int32` and `u64` as `int64` with a minimum of 0, which claims
/// half the range the server takes; say the real range instead, so that a client (or a
/// schemathesis run) and the server agree on which numbers are valid.
fn unsigned_ranges(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(|m| m.as_f64()) == Some(0.0);
            let max = match map.get("format").and_then(|f| f.as_str()) {
                Some("int32") if unsigned => Some(serde_json::Value::from(u32::MAX)),
                Some("int64") if unsigned => Some(serde_json::Value::from(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.insert("maximum".into(), max);
            }
            map.values_mut().for_each(unsigned_ranges);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}
