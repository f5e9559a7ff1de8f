//! The `/v1` HTTP API: routes, thin handlers and the OpenAPI document generated from them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use lwr_model::api::*;
use lwr_model::graph::LeftOut;
use lwr_model::{
    ArtifactDecl, Graph, JobSpec, JobState, NodeProperties, Requirements, Requires, RunState, When,
};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::{ApiError, AppState, artifacts, logs};

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

/// Largest JSON body accepted (a 10,000-job graph is a few MB).
const MAX_JSON_BODY: usize = 32 << 20;

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
        .route(
            "/v1/runs/{id}/manifest",
            put(put_manifest).get(get_run_manifest),
        )
        .route("/v1/jobs/{id}/manifest", get(get_job_manifest))
        .route("/v1/schemas/manifest-v1.json", get(manifest_schema))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .fallback(not_found)
        .with_state(state)
}

/// JSON body extractor whose rejections are JSON errors like every other error.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
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
    let info = state.queue.submit(&sub).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(Debug, Deserialize, IntoParams)]
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
    Path(id): Path<i64>,
    Query(q): Query<GraphWait>,
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
async fn get_graph_spec(State(state): Shared, Path(id): Path<i64>) -> ApiResult<Json<GraphSpec>> {
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
async fn remove_repo(State(state): Shared, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    state.queue.store().remove_repo(id).await?;
    state.poll.repos_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PushFilter {
    /// Only pushes of this repository.
    repo: Option<i64>,
    /// At most this many, newest first (default 100).
    limit: Option<i64>,
}

#[utoipa::path(
    get, path = "/v1/pushes", params(PushFilter), responses((status = 200, body = PushList))
)]
async fn list_pushes(
    State(state): Shared,
    Query(q): Query<PushFilter>,
) -> ApiResult<Json<PushList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(PushList {
        pushes: state.queue.store().pushes(q.repo, limit).await?,
    }))
}

#[utoipa::path(
    get, path = "/v1/pushes/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = PushInfo), (status = 404, body = ErrorBody))
)]
async fn get_push(State(state): Shared, Path(id): Path<i64>) -> ApiResult<Json<PushInfo>> {
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
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<TriggerRequest>,
) -> ApiResult<Json<TriggerResult>> {
    Ok(Json(TriggerResult {
        jobs: state.queue.trigger(id, &req.job).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct JobFilter {
    /// Only jobs of this graph.
    graph: Option<i64>,
}

#[utoipa::path(
    get, path = "/v1/jobs", params(JobFilter), responses((status = 200, body = JobList))
)]
async fn list_jobs(State(state): Shared, Query(q): Query<JobFilter>) -> ApiResult<Json<JobList>> {
    Ok(Json(JobList {
        jobs: state.queue.store().jobs(q.graph).await?,
    }))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
async fn get_job(State(state): Shared, Path(id): Path<i64>) -> ApiResult<Json<JobDetail>> {
    Ok(Json(state.queue.store().job(id).await?))
}

#[utoipa::path(
    get, path = "/v1/graphs/{id}/jobs/{name}",
    params(("id" = i64, Path), ("name" = String, Path, description = "normalized job name")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody))
)]
async fn get_job_by_name(
    State(state): Shared,
    Path((graph, name)): Path<(i64, String)>,
) -> ApiResult<Json<JobDetail>> {
    let id = state.queue.store().job_by_name(graph, &name).await?;
    Ok(Json(state.queue.store().job(id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LogQuery {
    /// Run number (1 for the first attempt); default the latest run.
    run: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/log", params(("id" = i64, Path), LogQuery),
    responses(
        (status = 200, description = "the stored log of the run", content_type = "text/plain", body = String),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the run is still going; its log is on its node", body = ErrorBody),
    )
)]
async fn get_log(
    State(state): Shared,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
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
    let bytes = logs::read(&state.config.data_dir, run.id).await?;
    if bytes.is_empty() && run.log_size > 0 {
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
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the job is cancelled and its dependents blocked", body = CancelResult),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job already ended", body = ErrorBody),
    )
)]
async fn cancel_job(State(state): Shared, Path(id): Path<i64>) -> ApiResult<Json<CancelResult>> {
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
async fn cancel_graph(State(state): Shared, Path(id): Path<i64>) -> ApiResult<Json<CancelResult>> {
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
    Path(id): Path<i64>,
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
    ApiJson(reg): ApiJson<RegisterNode>,
) -> ApiResult<Json<NodeInfo>> {
    if reg.name.trim().is_empty() || reg.name.len() > 200 {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            "node name must be 1 to 200 characters",
        ));
    }
    if reg.slots == 0 {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "slots",
            "a node needs at least one slot",
        ));
    }
    let now = lwr_store::now_ms();
    let id = state.queue.store().register_node(&reg, now).await?;
    let node = state
        .queue
        .store()
        .nodes(now)
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "node vanished after registering",
            )
        })?;
    Ok(Json(node))
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
    Path(node): Path<i64>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult<Json<ClaimResponse>> {
    let wait = Duration::from_millis(req.wait_ms);
    let claimed = state
        .queue
        .claim(node, req.max.min(256), &req.results, wait)
        .await?;
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
    Path(node): Path<i64>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let abandon = state.queue.heartbeat(node, &hb.runs).await?;
    Ok(Json(HeartbeatResponse {
        lease_secs: state.queue.lease().as_secs(),
        abandon,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/results", params(("id" = i64, Path)), request_body = ReportResults,
    responses((status = 200, body = ReportAck))
)]
async fn report_results(
    State(state): Shared,
    Path(node): Path<i64>,
    ApiJson(rep): ApiJson<ReportResults>,
) -> ApiResult<Json<ReportAck>> {
    Ok(Json(ReportAck {
        acks: state.queue.report(node, &rep.results).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
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
    Path(run): Path<i64>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let store = state.queue.store();
    match store.run_owner(run).await? {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            ));
        }
        Some((owner, _)) if owner != q.node => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("run {run} belongs to another node"),
            ));
        }
        Some(_) => {}
    }
    let (size, sha256) = logs::store(
        &state.config.data_dir,
        run,
        body,
        state.config.max_log_bytes,
        q.sha256.as_deref(),
    )
    .await?;
    store.set_log_size(run, size, &sha256).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ArtifactUploadQuery {
    /// The node uploading; it must hold the run.
    node: i64,
    /// Artifact name, unique in the run: a relative path of plain components (no `..`, no
    /// leading `/`, no NUL).
    name: String,
    /// SHA-256 of the content, 64 lowercase hex digits; an upload that does not match is
    /// refused and nothing is stored.
    sha256: String,
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
        (status = 400, description = "bad name, kind, hash or path", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already has an artifact of that name", body = ErrorBody),
        (status = 413, description = "larger than the server's limit", body = ErrorBody),
        (status = 422, description = "the content does not match its sha256", body = ErrorBody),
    )
)]
async fn upload_artifact(
    State(state): Shared,
    Path(run): Path<i64>,
    Query(q): Query<ArtifactUploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
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
    let mut artifact = artifacts::upload(&state, run, info, body).await?;
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
    Path((run, name)): Path<(i64, String)>,
) -> ApiResult<Response> {
    if name == lwr_model::manifest::LOG_ARTIFACT {
        if state.queue.store().run_owner(run).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            ));
        }
        let bytes = logs::read(&state.config.data_dir, run).await?;
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response());
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
    Path(run): Path<i64>,
    Query(q): Query<NodeQuery>,
    ApiJson(upload): ApiJson<ManifestUpload>,
) -> ApiResult<StatusCode> {
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
    Path(run): Path<i64>,
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
    Path(job): Path<i64>,
    Query(q): Query<LogQuery>,
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lwr",
        description = "The lwr server's v1 API: graphs, jobs, runs, nodes, polled repositories and pushes."
    ),
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
        get_artifact,
        put_manifest,
        get_run_manifest,
        get_job_manifest,
        manifest_schema
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
        TriggerResult
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the v1 API, generated from the handlers and types above.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // A fixed version keeps the checked-in document stable across releases of the binary.
    doc.info.version = "1".into();
    doc
}

/// The OpenAPI document as the server serves it and the repository keeps it.
pub fn openapi_string() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
