//! What anyone may call without a token: liveness and what the API and its documents look
//! like, never data.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lwr_model::api::Health;

use super::access::Public;
use super::extract::Shared;

/// The OpenAPI document's text, made once when the router is built (see [`crate::openapi`]).
#[derive(Clone)]
pub(crate) struct ApiDocument(pub Bytes);

#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
pub(crate) async fn health(_: Public, State(state): Shared) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: state.queue.store().dialect().name().into(),
    })
}

/// `GET /v1/openapi.json`: the document describes every route but itself.
pub(crate) async fn openapi_json(_: Public, Extension(doc): Extension<ApiDocument>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}

#[utoipa::path(
    get, path = "/v1/schemas/manifest-v1.json",
    responses((status = 200, description = "the JSON Schema of manifest v1", content_type = "application/schema+json"))
)]
pub(crate) async fn manifest_schema(_: Public) -> Response {
    static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = SCHEMA.get_or_init(lwr_model::manifest::schema_json).clone();
    ([(header::CONTENT_TYPE, "application/schema+json")], text).into_response()
}
