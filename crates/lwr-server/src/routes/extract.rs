//! What every handler shares: the JSON body, path and query extractors whose rejections are
//! JSON naming the field, the size limits of what a request may carry, and the server's URL
//! as the client reached it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

pub(crate) type Shared = State<Arc<AppState>>;
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Largest JSON body accepted: a graph at lwr.yml's limits (100,000 jobs, a 48 MiB file) is
/// about twice its YAML as JSON, with room for matrices that expand in the JSON only.
pub(crate) const MAX_JSON_BODY: usize = 128 << 20;
/// Bodies larger than this are decoded on a blocking thread.
const BLOCKING_DECODE_BYTES: usize = 256 << 10;
/// Most results or runs in one node request: a node has at most this many slots.
pub(crate) const MAX_BATCH: usize = 4096;
/// Most slots a node may declare.
pub(crate) const MAX_SLOTS: u32 = 4096;
/// Longest serialized node properties.
pub(crate) const MAX_PROPERTIES_BYTES: usize = 64 << 10;
/// Longest repository, branch or revision of a push.
pub(crate) const MAX_PUSH_FIELD: usize = 4096;
/// Longest reason a node gives for a result.
pub(crate) const MAX_REASON: usize = 64 << 10;
/// Longest token lifetime: ten years.
pub(crate) const MAX_TOKEN_SECS: u64 = 10 * 366 * 24 * 3600;

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
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                // Say which limit: the one a huge graph meets first.
                let limit = MAX_JSON_BODY >> 20;
                let message = format!("the body is larger than the API's limit of {limit} MiB");
                return ApiError::field(r.status(), "body", message);
            }
            ApiError::field(r.status(), "body", r.body_text())
        })?;
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
pub(crate) fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// The server's URL as the client reached it, for absolute locations in manifests: the
/// configured public URL, else `http://` and the Host header.
pub(crate) fn base_url(config: &crate::Config, headers: &HeaderMap) -> String {
    if let Some(url) = &config.public_url {
        return url.clone();
    }
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() && !host.contains(['/', ' ', '@']) => {
            format!("http://{host}")
        }
        _ => String::new(),
    }
}

/// A stored log as a plain-text answer (empty when none is stored).
pub(crate) fn text_body(stored: Option<(u64, Body)>) -> Response {
    let body = stored.map_or_else(Body::empty, |(_, body)| body);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
