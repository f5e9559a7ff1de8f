//! Authentication and scopes. With `--auth` every request but the public ones carries
//! `Authorization: Bearer SECRET`; the middleware checks the secret against the store on
//! every request (one indexed lookup, no cache: revocation and expiry take effect at once,
//! on every server sharing the database) and compares its scopes with what the route needs.
//! A node's token may act only for the node it registered (see [`check_node`]).

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lwr_model::Scope;
use lwr_store::{Caller, TokenCheck};

use crate::{ApiError, AppState};

/// Longest secret worth looking up; ours are 68 characters.
const MAX_SECRET: usize = 256;

/// The scope a route needs; `None` for the public ones. A route not listed here needs
/// `admin` (and every GET `read`), so a new route is closed until someone opens it.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let scope = match (method, path) {
        // Public: liveness and what the API and its documents look like, never data.
        (_, "/v1/health" | "/v1/openapi.json" | "/v1/schemas/manifest-v1.json") => return None,
        (&Method::POST, "/v1/graphs") => Scope::GraphSubmit,
        (&Method::POST, "/v1/graphs/{id}/cancel" | "/v1/jobs/{id}/cancel") => Scope::JobCancel,
        (&Method::POST, "/v1/jobs/{id}/retrigger") => Scope::JobRetrigger,
        (&Method::POST, "/v1/pushes/{id}/trigger") => Scope::GraphSubmit,
        (&Method::POST, "/v1/repos") | (&Method::DELETE, "/v1/repos/{id}") => Scope::RepoAdmin,
        (&Method::POST, "/v1/nodes")
        | (
            &Method::PUT,
            "/v1/runs/{id}/log" | "/v1/runs/{id}/artifacts" | "/v1/runs/{id}/manifest",
        )
        | (
            &Method::POST,
            "/v1/nodes/{id}/claim"
            | "/v1/nodes/{id}/heartbeat"
            | "/v1/nodes/{id}/results"
            | "/v1/runs/{id}/log/stream"
            | "/v1/runs/{id}/artifact-commits",
        )
        | (&Method::GET, "/v1/nodes/{id}/streams") => Scope::NodeRegister,
        // Following a log makes its node stream it too: turning that on needs no more.
        (&Method::PUT, "/v1/jobs/{id}/log/live") => Scope::Read,
        (&Method::POST, "/v1/nodes/{id}/state" | "/v1/nodes/{id}/labels") => Scope::NodeAdmin,
        (_, p) if p == "/v1/tokens" || p.starts_with("/v1/tokens/") => Scope::Admin,
        (&Method::GET | &Method::HEAD, _) => Scope::Read,
        _ => Scope::Admin,
    };
    Some(scope)
}

/// 401: no usable token. Says `WWW-Authenticate: Bearer` as RFC 6750 asks.
fn unauthorized(message: &str) -> Response {
    let mut resp =
        ApiError::field(StatusCode::UNAUTHORIZED, "Authorization", message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The middleware: on routes that need a scope, checks the bearer token and puts the
/// [`Caller`] in the request for handlers that need to know who calls.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !state.config.auth {
        return next.run(req).await;
    }
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let Some(needed) = required_scope(req.method(), &path) else {
        return next.run(req).await;
    };
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return unauthorized(
            "authentication required: send Authorization: Bearer TOKEN (`lwr tokens create` makes one)",
        );
    };
    if secret.len() > MAX_SECRET {
        return unauthorized("unknown token");
    }
    let check = match state
        .queue
        .store()
        .check_token(secret, lwr_store::now_ms())
        .await
    {
        Ok(check) => check,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let caller = match check {
        TokenCheck::Valid(caller) => caller,
        TokenCheck::Unknown => return unauthorized("unknown token"),
        TokenCheck::Revoked => return unauthorized("this token has been revoked"),
        TokenCheck::Expired => return unauthorized("this token has expired"),
    };
    if !caller.scopes.allow(needed) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token lacks the '{needed}' scope (it has: {})",
                caller.scopes
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Who calls: `None` when the server runs without authentication.
pub struct Auth(pub Option<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Auth(parts.extensions.get::<Caller>().cloned()))
    }
}

impl Auth {
    /// The token id to bind a registering node to.
    pub fn token_id(&self) -> Option<i64> {
        self.0.as_ref().map(|c| c.token_id)
    }

    pub fn is_admin(&self) -> bool {
        self.0.as_ref().is_none_or(|c| c.scopes.is_admin())
    }
}

/// A node's requests must come with the token the node registered with (or an admin's):
/// one node's token cannot claim, renew, report or upload for another node.
pub async fn check_node(state: &AppState, auth: &Auth, node: i64) -> Result<(), ApiError> {
    let Some(caller) = &auth.0 else {
        return Ok(());
    };
    if caller.scopes.is_admin() {
        return Ok(());
    }
    let owner = state.queue.store().node_owner(node).await?;
    if owner != Some(caller.token_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node {node} registered with another token; this token may act only for its own node"
            ),
        ));
    }
    Ok(())
}

/// A node may send logs only for a run it holds: 404 for no such run, 403 for another node's.
pub async fn check_run(state: &AppState, run: i64, node: i64) -> Result<(), ApiError> {
    match state.queue.store().run_owner(run).await? {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run {run} not found"),
        )),
        Some((owner, _)) if owner != node => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("run {run} belongs to another node"),
        )),
        Some(_) => Ok(()),
    }
}
