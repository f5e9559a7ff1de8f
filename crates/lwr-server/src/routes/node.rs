//! What nodes call: register, claim, heartbeat, report results, upload logs, artifacts and
//! manifests, and stream running logs. Every handler but registration takes a [`NodeCaller`]
//! or [`RunCaller`], which checks that the token acts for the node it names.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lwr_model::api::*;
use lwr_model::logstream::{ChunkAck, LogStreams, MAX_CHUNK};
use serde::Deserialize;
use tokio::time::{Instant, timeout_at};
use utoipa::IntoParams;

use super::access::{NewNode, NodeCaller, RunCaller};
use super::extract::*;
use crate::live::AppendError;
use crate::queue::{MAX_WAIT, Want};
use crate::{ApiError, artifacts, logs};

#[utoipa::path(
    post, path = "/v1/nodes", request_body = RegisterNode,
    responses(
        (status = 200, description = "the node's id", body = NodeInfo), (status = 400, body = ErrorBody),
        (status = 403, description = "the name belongs to another active token, or this token acts for another node name or was bound to other hostname and tags", body = ErrorBody),
    )
)]
pub(crate) async fn register_node(
    auth: NewNode,
    State(state): Shared,
    ApiJson(reg): ApiJson<RegisterNode>,
) -> ApiResult<Json<NodeInfo>> {
    if reg.name.trim().is_empty() || reg.name.len() > 200 || lwr_model::text::has_unsafe(&reg.name)
    {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            "node name must be 1 to 200 characters, none of them control characters or direction overrides",
        ));
    }
    if reg.slots == 0 || reg.slots > MAX_SLOTS {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "slots",
            format!("a node needs 1 to {MAX_SLOTS} slots"),
        ));
    }
    let p = &reg.properties;
    let shown = [&p.os, &p.arch, &p.hostname]
        .into_iter()
        .chain(p.tags.iter().flat_map(|(k, v)| [k, v]));
    if shown.into_iter().any(|t| lwr_model::text::has_unsafe(t)) {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "properties",
            "node properties may not hold control characters or direction overrides",
        ));
    }
    let props = serde_json::to_string(&reg.properties).unwrap_or_default();
    check_len("properties", &props, MAX_PROPERTIES_BYTES)?;
    let now = lwr_store::now_ms();
    let store = state.queue.store();
    // A node's name is its identity: another node's token may not take it over while the
    // token it registered with still works (a node whose token was revoked may re-register
    // with its new one).
    if let (Some(caller), false) = (&auth.caller, auth.is_admin())
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
    if let (Some(caller), false) = (&auth.caller, auth.is_admin()) {
        bind_token(store, caller.token_id, &reg).await?;
    }
    let id = store.register_node_for(&reg, now, auth.token_id()).await?;
    state.queue.registered(id);
    Ok(Json(store.node(id, now).await?))
}

/// What a node claims about itself that placement pins jobs on: its hostname and tags.
#[derive(serde::Serialize)]
struct Claims<'a> {
    hostname: &'a str,
    tags: &'a std::collections::BTreeMap<String, String>,
}

/// A `node:register` token acts for one node name (bound when it is made or at its first
/// registration), and that node's hostname and tags stay what it first claimed: a stolen
/// token can neither register a second node nor make its own node look like another
/// (`hostname: secure-signer`, `hsm: "true"`) to jobs pinned there. Only an operator changes
/// them (`lwr nodes label`), or a new token.
async fn bind_token(
    store: &lwr_store::Store,
    token: i64,
    reg: &RegisterNode,
) -> Result<(), ApiError> {
    let claims = serde_json::to_string(&Claims {
        hostname: &reg.properties.hostname,
        tags: &reg.properties.tags,
    })
    .unwrap_or_default();
    let bound = store
        .bind_node_token(token, &reg.name, Some(&claims))
        .await?;
    if bound.name.as_deref() != Some(reg.name.as_str()) {
        return Err(ApiError::field(
            StatusCode::FORBIDDEN,
            "name",
            format!(
                "this token acts for node '{}' only; make a token for each node \
                 (`lwr tokens create --scope node:register --node {}`)",
                bound.name.unwrap_or_default(),
                reg.name
            ),
        ));
    }
    if bound.claims.as_deref() != Some(claims.as_str()) {
        return Err(ApiError::field(
            StatusCode::FORBIDDEN,
            "properties",
            format!(
                "node '{}' claimed other hostname and tags ({}) when it first registered with \
                 this token; an operator changes them (`lwr nodes label`), or gives it a new token",
                reg.name,
                bound.claims.unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/claim", params(("id" = i64, Path)), request_body = ClaimRequest,
    responses(
        (status = 200, description = "jobs for the node, possibly none after the wait", body = ClaimResponse),
        (status = 404, description = "unknown node: register again", body = ErrorBody),
    )
)]
pub(crate) async fn claim(
    NodeCaller { node }: NodeCaller,
    State(state): Shared,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult<Json<ClaimResponse>> {
    tracing::trace!(
        target: lwr_model::STEP_LOG,
        "step received {}",
        lwr_model::step_run(req.results.iter().map(|r| r.run_id))
    );
    check_results(&req.results)?;
    let wait = Duration::from_millis(req.wait_ms);
    let want = Want {
        max: req.max.min(256),
        ahead: req.ahead,
    };
    let mut claimed = state.queue.claim(node, want, &req.results, wait).await?;
    for a in &mut claimed.assignments {
        a.max_log_bytes = Some(state.config.max_log_bytes);
    }
    if state.config.auth {
        // Without it, a job could not read its needs' manifests (`lwr fetch`). The key was
        // loaded at start, so this cannot fail after the claim committed.
        for a in &mut claimed.assignments {
            a.token = Some(state.queue.store().job_token(a.run_id).await?);
        }
    }
    tracing::trace!(
        target: lwr_model::STEP_LOG,
        "step answer {}",
        lwr_model::step_run(claimed.assignments.iter().map(|a| a.run_id))
    );
    Ok(Json(ClaimResponse {
        assignments: claimed.assignments,
        acks: claimed.acks,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/heartbeat", params(("id" = i64, Path)), request_body = Heartbeat,
    responses((status = 200, body = HeartbeatResponse))
)]
pub(crate) async fn heartbeat(
    NodeCaller { node }: NodeCaller,
    State(state): Shared,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
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
    // Before the write, which may fail (a full disk): the node hangs up on its claim when
    // this request fails, so its waiting claim must have ended by then.
    if hb.stopping {
        state.queue.stopping(node);
    }
    let abandon = state
        .queue
        .heartbeat(node, &hb.runs, hb.unhealthy.as_deref())
        .await?;
    let reboot =
        state.queue.store().node_state(node).await? == Some(lwr_model::NodeState::Draining);
    // Read only for a draining node: the common heartbeat costs no statement for it.
    let reimage = reboot && state.queue.store().node_reimage(node).await?;
    Ok(Json(HeartbeatResponse {
        lease_secs: state.queue.lease().as_secs(),
        abandon,
        reboot,
        reimage,
    }))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/results", params(("id" = i64, Path)), request_body = ReportResults,
    responses((status = 200, body = ReportAck))
)]
pub(crate) async fn report_results(
    NodeCaller { node }: NodeCaller,
    State(state): Shared,
    ApiJson(rep): ApiJson<ReportResults>,
) -> ApiResult<Json<ReportAck>> {
    check_results(&rep.results)?;
    Ok(Json(ReportAck {
        acks: state.queue.report(node, &rep.results).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamsQuery {
    /// The `version` of the last answer: the call waits until the set differs from it.
    #[serde(default)]
    version: Option<u64>,
    /// Longest wait in milliseconds (at most 60,000); 0 answers at once.
    #[serde(default)]
    wait_ms: u64,
}

#[utoipa::path(
    get, path = "/v1/nodes/{id}/streams", params(("id" = i64, Path), StreamsQuery),
    responses(
        (status = 200, description = "the runs of this node whose log the server wants now, each from the offset it holds", body = LogStreams),
        (status = 403, body = ErrorBody),
    )
)]
pub(crate) async fn node_streams(
    NodeCaller { node }: NodeCaller,
    State(state): Shared,
    ApiQuery(q): ApiQuery<StreamsQuery>,
) -> ApiResult<Json<LogStreams>> {
    let wait = Duration::from_millis(q.wait_ms).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    if state.shared_live() {
        let store = state.queue.store();
        loop {
            let now = crate::shared_live::wanted(store, node).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if q.version != Some(now.version) || left.is_zero() {
                return Ok(Json(now));
            }
            tokio::time::sleep(left.min(crate::shared_live::STREAMS_POLL)).await;
        }
    }
    let mut changes = state.live.node_changes(node);
    loop {
        let now = state.live.wanted(node);
        if q.version != Some(now.version) || Instant::now() >= deadline {
            return Ok(Json(now));
        }
        if timeout_at(deadline, changes.changed()).await.is_err() {
            return Ok(Json(state.live.wanted(node)));
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// SHA-256 of the log (64 lowercase hex digits); when given, a log that does not match
    /// is refused.
    sha256: Option<String>,
}

#[utoipa::path(
    put, path = "/v1/runs/{id}/log", params(("id" = i64, Path), ("node" = i64, Query, description = "The node uploading; it must hold the run."), UploadQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "stored"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run ended with its node's result, or ended and has its log: nothing changes", body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub(crate) async fn upload_log(
    caller: RunCaller,
    State(state): Shared,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let run = caller.run;
    let store = state.queue.store();
    artifacts::writable_run(&state, run, caller.node, artifacts::Part::Log).await?;
    let (size, sha256) = logs::store(
        state.artifacts.as_ref(),
        run,
        body,
        state.config.max_log_bytes,
        q.sha256.as_deref(),
    )
    .await?;
    store.set_log_size(run, size, &sha256).await?;
    state.live.stored(run);
    if state.shared_live() {
        store.live_drop(run).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArtifactUploadQuery {
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
    put, path = "/v1/runs/{id}/artifacts", params(("id" = i64, Path), ("node" = i64, Query, description = "The node uploading; it must hold the run."), ArtifactUploadQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "stored; the artifact as manifests list it", content_type = "application/json"),
        (status = 202, description = "received without `sha256`: staged, not stored, until committed", body = StagedArtifact),
        (status = 400, description = "bad name, kind, hash or path", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already has an artifact of that name, has its manifest, or ended with its node's result", body = ErrorBody),
        (status = 413, description = "larger than the server's limit", body = ErrorBody),
        (status = 422, description = "the content does not match its sha256", body = ErrorBody),
        (status = 503, description = "without `sha256`: too many uploads wait for their commit; retry later", body = ErrorBody),
    )
)]
pub(crate) async fn upload_artifact(
    caller: RunCaller,
    State(state): Shared,
    ApiQuery(q): ApiQuery<ArtifactUploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let run = caller.run;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let info = artifacts::UploadInfo {
        node: caller.node,
        name: q.name,
        sha256: q.sha256,
        kind: q.kind,
        path: q.path,
        content_type: q.content_type,
        length,
    };
    match artifacts::upload(&state, run, info, body).await? {
        artifacts::Uploaded::Stored(mut artifact) => {
            artifact.location =
                format!("{}{}", base_url(&state.config, &headers), artifact.location);
            Ok((StatusCode::CREATED, Json(artifact)).into_response())
        }
        artifacts::Uploaded::Staged(staged) => {
            Ok((StatusCode::ACCEPTED, Json(staged)).into_response())
        }
    }
}

#[utoipa::path(
    post, path = "/v1/runs/{id}/artifact-commits", params(("id" = i64, Path), ("node" = i64, Query, description = "The node sending; it must hold the run.")),
    request_body = ArtifactCommit,
    responses(
        (status = 201, description = "verified and stored; the artifact as manifests list it", content_type = "application/json"),
        (status = 400, description = "bad hash", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such run, or no such staged upload (expired or the server restarted: upload again)", body = ErrorBody),
        (status = 409, description = "the run already has an artifact of that name, has its manifest, or ended with its node's result", body = ErrorBody),
        (status = 422, description = "the content received does not match `sha256`: dropped", body = ErrorBody),
    )
)]
pub(crate) async fn commit_artifact(
    caller: RunCaller,
    State(state): Shared,
    headers: HeaderMap,
    ApiJson(commit): ApiJson<ArtifactCommit>,
) -> ApiResult<Response> {
    let run = caller.run;
    let mut artifact = artifacts::commit(&state, run, caller.node, &commit).await?;
    artifact.location = format!("{}{}", base_url(&state.config, &headers), artifact.location);
    Ok((StatusCode::CREATED, Json(artifact)).into_response())
}

#[utoipa::path(
    put, path = "/v1/runs/{id}/manifest", params(("id" = i64, Path), ("node" = i64, Query, description = "The node sending; it must hold the run.")),
    request_body = ManifestUpload,
    responses(
        (status = 204, description = "recorded"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already has a manifest, or ended with its node's result", body = ErrorBody),
        (status = 422, description = "a listed artifact was not uploaded", body = ErrorBody),
    )
)]
pub(crate) async fn put_manifest(
    caller: RunCaller,
    State(state): Shared,
    ApiJson(upload): ApiJson<ManifestUpload>,
) -> ApiResult<StatusCode> {
    let run = caller.run;
    artifacts::put_manifest(&state, run, caller.node, &upload).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PieceQuery {
    /// Byte offset in the log of the first byte of the body.
    offset: u64,
    /// The log ends with this piece.
    #[serde(default)]
    end: bool,
}

#[utoipa::path(
    post, path = "/v1/runs/{id}/log/stream", params(("id" = i64, Path), ("node" = i64, Query, description = "The node sending; it must hold the run."), PieceQuery),
    request_body(content = String, content_type = "application/octet-stream",
        description = "bytes of the log from `offset` on, at most 1 MiB"),
    responses(
        (status = 200, description = "what the server holds now: the next piece starts at `offset` (a piece that started beyond it was not taken)", body = ChunkAck),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    )
)]
pub(crate) async fn stream_piece(
    caller: RunCaller,
    State(state): Shared,
    ApiQuery(q): ApiQuery<PieceQuery>,
    body: Bytes,
) -> ApiResult<Json<ChunkAck>> {
    let run = caller.run;
    if body.len() > MAX_CHUNK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a piece of log is at most {MAX_CHUNK} bytes"),
        ));
    }
    if q.offset.checked_add(body.len() as u64).is_none() {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "offset",
            "offset out of range",
        ));
    }
    caller.holds_run(&state).await?;
    if state.shared_live() {
        let kept = state
            .queue
            .store()
            .live_append(
                run,
                q.offset,
                &body,
                q.end,
                state.config.max_log_bytes,
                lwr_store::now_ms(),
            )
            .await?;
        return match kept {
            lwr_store::LiveAppend::Kept {
                size,
                fresh,
                wanted,
            } => {
                if wanted || fresh > 0 {
                    let duplicate = (body.len() as u64).saturating_sub(fresh);
                    state.live.count_streamed(fresh, duplicate);
                }
                Ok(Json(ChunkAck {
                    offset: size,
                    wanted,
                }))
            }
            // A gap: say where the node must resume.
            lwr_store::LiveAppend::Gap { held } => Ok(Json(ChunkAck {
                offset: held,
                wanted: true,
            })),
            lwr_store::LiveAppend::TooLarge => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "run {run}: the log is larger than the server's limit of {} bytes",
                    state.config.max_log_bytes
                ),
            )),
        };
    }
    let live = state.live.clone();
    let appended =
        tokio::task::spawn_blocking(move || live.append(run, q.offset, &body, q.end)).await;
    let io = |e: String| {
        tracing::error!("spooling the log of run {run}: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot spool log: {e}"),
        )
    };
    match appended {
        Ok(Ok(Ok(ack))) => Ok(Json(ack)),
        // A gap: say where the node must resume.
        Ok(Ok(Err(gap))) => Ok(Json(ChunkAck {
            offset: gap.held,
            wanted: true,
        })),
        Ok(Err(e @ AppendError::TooLarge { .. })) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("run {run}: {e}"),
        )),
        Ok(Err(e @ AppendError::Io(_))) => Err(io(e.to_string())),
        Err(e) => Err(io(e.to_string())),
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
        if let Some(why) = &r.node_bad {
            check_len(&format!("results[{i}].node_bad"), why, MAX_REASON)?;
        }
    }
    Ok(())
}
