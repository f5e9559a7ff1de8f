//! What operators call: submit, cancel and retrigger work, trigger a push's job, add and
//! remove polled repositories, take nodes out of the pool or label them, and (admins)
//! manage tokens. Each handler's first argument says who may: an [`Operator`] holds the
//! scope the route table names for it, an [`Admin`] holds `admin`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use lwr_model::api::*;
use lwr_model::auth::{CreateToken, CreatedToken, MAX_LABEL, TokenInfo, TokenList};
use lwr_model::{DurationMs, GraphId, JobId, PushId, Scopes};
use lwr_store::Effects;

use super::access::{Admin, Operator};
use super::extract::*;
use crate::ApiError;

/// Longest state reason or label an operator may give.
const MAX_TEXT: usize = 1024;
/// Most labels in one request.
const MAX_LABELS: usize = 64;

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_TEXT || lwr_model::text::has_unsafe(value) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            format!(
                "must be at most {MAX_TEXT} bytes without control characters or direction overrides"
            ),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/graphs", request_body = SubmitGraph,
    responses(
        (status = 201, description = "the graph is stored and its ready jobs queued", body = GraphInfo),
        (status = 422, description = "the graph is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn submit_graph(
    _: Operator,
    State(state): Shared,
    ApiJson(sub): ApiJson<SubmitGraph>,
) -> ApiResult<(StatusCode, Json<GraphInfo>)> {
    for (field, value) in [
        ("repository", &sub.repository),
        ("branch", &sub.branch),
        ("revision", &sub.revision),
        ("author", &sub.author),
        ("subject", &sub.subject),
    ] {
        if let Some(value) = value {
            check_len(field, value, MAX_PUSH_FIELD)?;
        }
    }
    let info = state.queue.submit(&sub).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the job is cancelled and its dependents blocked", body = CancelResult),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job already ended", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_job(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
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
pub(crate) async fn cancel_graph(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<GraphId>,
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
pub(crate) async fn retrigger_job(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(req): ApiJson<RetriggerRequest>,
) -> ApiResult<Json<RetriggerResult>> {
    Ok(Json(RetriggerResult {
        jobs: state.queue.retrigger(id, req.with_dependents).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/pushes/{id}/trigger", params(("id" = i64, Path)), request_body = TriggerRequest,
    responses(
        (status = 200, description = "the job, and the needs it was missing, are queued", body = TriggerResult),
        (status = 404, description = "no such push, or its graph defines no such job", body = ErrorBody),
        (status = 409, description = "the job is in the graph already, a need failed, or the push has no graph yet", body = ErrorBody),
    )
)]
pub(crate) async fn trigger_job(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<PushId>,
    ApiJson(req): ApiJson<TriggerRequest>,
) -> ApiResult<Json<TriggerResult>> {
    Ok(Json(TriggerResult {
        jobs: state.queue.trigger(id, &req.job).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/repos", request_body = AddRepo,
    responses(
        (status = 201, description = "the repository is polled from now on", body = RepoInfo),
        (status = 409, description = "the URL is polled already", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn add_repo(
    _: Operator,
    State(state): Shared,
    ApiJson(mut add): ApiJson<AddRepo>,
) -> ApiResult<(StatusCode, Json<RepoInfo>)> {
    // One repository, one URL: `file:///r` and `/r` must not be polled (and pushed) twice.
    add.url = lwr_model::push::canonical_repo_url(&add.url);
    // Found out now, not at the first poll: a path that is not there, a host that does not
    // answer, a branch the repository does not have.
    if !add.url.is_empty() && !add.url.chars().any(char::is_control) {
        crate::poller::check_repo(&add.url, &add.branches)
            .await
            .map_err(|(field, message)| {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            })?;
    }
    let repo = state
        .queue
        .store()
        .add_repo(&add, lwr_store::now_ms())
        .await?;
    state.poll.repos_changed();
    Ok((StatusCode::CREATED, Json(repo)))
}

#[utoipa::path(
    patch, path = "/v1/repos/{id}", params(("id" = i64, Path)), request_body = EditRepo,
    responses(
        (status = 200, description = "polled with the new branches and interval from now on", body = RepoInfo),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn edit_repo(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
    ApiJson(edit): ApiJson<EditRepo>,
) -> ApiResult<Json<RepoInfo>> {
    let store = state.queue.store();
    if let Some(branches) = &edit.branches {
        let repo = store.repo(id).await?;
        crate::poller::check_repo(&repo.url, branches)
            .await
            .map_err(|(field, message)| {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            })?;
    }
    let repo = store.edit_repo(id, &edit).await?;
    state.poll.repos_changed();
    Ok(Json(repo))
}

#[utoipa::path(
    delete, path = "/v1/repos/{id}", params(("id" = i64, Path)),
    responses((status = 204, description = "no longer polled; its pushes stay"), (status = 404, body = ErrorBody))
)]
pub(crate) async fn remove_repo(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.queue.store().remove_repo(id).await?;
    state.poll.repos_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/state",
    // The tag the v1 document has always given the pool's operations.
    tag = "crate::pool_api",
    params(("id" = String, Path, description = "node name, or id")),
    request_body = SetNodeState,
    responses(
        (status = 200, description = "the node with its new state", body = NodeInfo),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn set_node_state(
    _: Operator,
    State(state): Shared,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<SetNodeState>,
) -> Result<Json<NodeInfo>, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("reason", reason)?;
    }
    if req.reimage && req.state != lwr_model::NodeState::Draining {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reimage",
            "reimage goes with state draining",
        ));
    }
    let store = state.queue.store();
    let id = store.find_node(&node).await?;
    store
        .set_node_state(id, req.state, req.reason.as_deref(), req.reimage)
        .await?;
    // Jobs held for this node, and the node itself when enabled again, look again now.
    state.queue.wake(Effects::NEW_WORK);
    Ok(Json(store.node(id, lwr_store::now_ms()).await?))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/labels",
    // The tag the v1 document has always given the pool's operations.
    tag = "crate::pool_api",
    params(("id" = String, Path, description = "node name, or id")),
    request_body = LabelNode,
    responses(
        (status = 200, description = "the node with its labels merged into its tags", body = NodeInfo),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn label_node(
    _: Operator,
    State(state): Shared,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<LabelNode>,
) -> Result<Json<NodeInfo>, ApiError> {
    if req.labels.len() > MAX_LABELS {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "labels",
            format!("more than {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in &req.labels {
        check_text("labels", k)?;
        check_text("labels", v)?;
        if k.trim().is_empty() || lwr_model::node::is_builtin(k) {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "labels",
                format!(
                    "'{k}' cannot be a label: give a tag name other than os, arch, hostname, cores or memory_mb"
                ),
            ));
        }
    }
    let store = state.queue.store();
    let id = store.find_node(&node).await?;
    let labels: Vec<(String, String)> = req.labels.into_iter().collect();
    store.label_node(id, &labels).await?;
    state.queue.wake(Effects::NEW_WORK);
    Ok(Json(store.node(id, lwr_store::now_ms()).await?))
}

#[utoipa::path(
    post, path = "/v1/tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "the token; its secret is shown only in this answer", body = CreatedToken),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    _: Admin,
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
        if lwr_model::text::has_unsafe(label) {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "label",
                "a label may not hold control characters or direction overrides",
            ));
        }
    }
    if let Some(node) = &req.node
        && (node.trim().is_empty() || node.len() > 200 || lwr_model::text::has_unsafe(node))
    {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "node",
            "node name must be 1 to 200 characters, none of them control characters",
        ));
    }
    let now = lwr_store::now_ms();
    let expires_at = match req.expires_secs {
        None => None,
        Some(secs) if (1..=MAX_TOKEN_SECS).contains(&secs) => {
            Some(now.plus(DurationMs::from_secs(secs as i64)))
        }
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
    if let Some(node) = &req.node {
        state
            .queue
            .store()
            .bind_node_token(info.id, node, None)
            .await?;
    }
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

#[utoipa::path(
    get, path = "/v1/tokens", params(super::reader::PageQuery),
    responses((status = 200, description = "tokens by id", body = TokenList))
)]
pub(crate) async fn list_tokens(
    _: Admin,
    State(state): Shared,
    ApiQuery(q): ApiQuery<super::reader::PageQuery>,
) -> ApiResult<Json<TokenList>> {
    let tokens = state.queue.store().tokens(lwr_store::now_ms()).await?;
    let (tokens, next_cursor) = super::reader::page_of(tokens, |t| t.id, q.cursor_id()?, q.limit());
    Ok(Json(TokenList {
        tokens,
        next_cursor,
    }))
}

#[utoipa::path(
    post, path = "/v1/tokens/{id}/revoke", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "revoked: it stops working at once", body = TokenInfo),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn revoke_token(
    _: Admin,
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

#[utoipa::path(
    post, path = "/v1/gc", request_body = GcRequest,
    responses(
        (status = 200, description = "what was removed (or, a dry run, would be)", body = GcResult),
        (status = 409, description = "retention is off on this server and no keep_secs was given", body = ErrorBody),
    )
)]
pub(crate) async fn gc(
    _: Admin,
    State(state): Shared,
    ApiJson(req): ApiJson<GcRequest>,
) -> ApiResult<Json<GcResult>> {
    let keep = match (req.keep_secs, state.config.keep) {
        (Some(secs), _) => std::time::Duration::from_secs(secs.min(i64::MAX as u64 / 1000)),
        (None, Some(keep)) => keep,
        (None, None) => {
            return Err(ApiError::field(
                StatusCode::CONFLICT,
                "keep_secs",
                "retention is off on this server (--keep off): say how old a graph must be",
            ));
        }
    };
    let store = state.queue.store().clone();
    let result = crate::retention::collect(
        &store,
        state.artifacts.as_ref(),
        &state.config.data_dir,
        keep,
        req.dry_run,
    )
    .await?;
    Ok(Json(result))
}

#[utoipa::path(
    put, path = "/v1/graphs/{id}/keep", params(("id" = i64, Path)), request_body = KeepRequest,
    responses((status = 200, body = KeepRequest), (status = 404, body = ErrorBody))
)]
pub(crate) async fn keep_graph(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<GraphId>,
    ApiJson(req): ApiJson<KeepRequest>,
) -> ApiResult<Json<KeepRequest>> {
    match state.queue.store().set_graph_keep(id, req.keep).await? {
        true => Ok(Json(req)),
        false => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no graph {id}"),
        )),
    }
}

#[utoipa::path(
    put, path = "/v1/jobs/{id}/keep", params(("id" = i64, Path)), request_body = KeepRequest,
    responses((status = 200, body = KeepRequest), (status = 404, body = ErrorBody))
)]
pub(crate) async fn keep_job(
    _: Operator,
    State(state): Shared,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(req): ApiJson<KeepRequest>,
) -> ApiResult<Json<KeepRequest>> {
    match state.queue.store().set_job_keep(id, req.keep).await? {
        true => Ok(Json(req)),
        false => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}
