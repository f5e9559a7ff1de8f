//! The pool's operator endpoints: take a node out of the pool or put it back, and label it.
//! Scope `node:admin` (see `auth::required_scope`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use lwr_model::api::{ErrorBody, LabelNode, NodeInfo, SetNodeState};
use lwr_store::Effects;

use crate::api::{ApiJson, ApiPath};
use crate::{ApiError, AppState};

type Shared = State<Arc<AppState>>;

/// Longest state reason or label an operator may give.
const MAX_TEXT: usize = 1024;
/// Most labels in one request.
const MAX_LABELS: usize = 64;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/nodes/{id}/state", post(set_node_state))
        .route("/v1/nodes/{id}/labels", post(label_node))
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            format!("must be at most {MAX_TEXT} bytes without control characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/state",
    params(("id" = String, Path, description = "node name, or id")),
    request_body = SetNodeState,
    responses(
        (status = 200, description = "the node with its new state", body = NodeInfo),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn set_node_state(
    State(state): Shared,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<SetNodeState>,
) -> Result<Json<NodeInfo>, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("reason", reason)?;
    }
    let store = state.queue.store();
    let id = store.find_node(&node).await?;
    store
        .set_node_state(id, req.state, req.reason.as_deref())
        .await?;
    // Jobs held for this node, and the node itself when enabled again, look again now.
    state.queue.wake(Effects::NEW_WORK);
    Ok(Json(store.node(id, lwr_store::now_ms()).await?))
}

#[utoipa::path(
    post, path = "/v1/nodes/{id}/labels",
    params(("id" = String, Path, description = "node name, or id")),
    request_body = LabelNode,
    responses(
        (status = 200, description = "the node with its labels merged into its tags", body = NodeInfo),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn label_node(
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
