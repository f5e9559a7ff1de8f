//! Who may call what. With `--auth` every request but the public ones carries
//! `Authorization: Bearer SECRET`; [`authenticate`] checks the secret against the store on
//! every request (one indexed lookup, no cache: revocation and expiry take effect at once,
//! on every server sharing the database) and compares its scopes with what the route's
//! [`Audience`] in the route table needs.
//!
//! A handler says who may call it by the type of its first argument ([`Public`], [`Reader`],
//! [`Operator`], [`Admin`], [`NewNode`], [`NodeCaller`], [`RunCaller`]); the route table
//! takes the audience from that type, so the scope checked and the handler cannot disagree.
//! The node callers are the only way a handler gets the node id it acts for, and they check
//! that the token acts for that node: a handler cannot forget to.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lwr_model::{NodeId, RunId, Scope};
use lwr_store::{Caller, TokenCheck};
use serde::Deserialize;

use super::extract::{ApiPath, ApiQuery};
use crate::{ApiError, AppState};

/// Longest secret worth looking up; ours are 68 characters.
const MAX_SECRET: usize = 256;

/// Who a route is for; each has its caller type, and all but [`Audience::Public`] a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Liveness and what the API and its documents look like, never data: no token.
    Public,
    /// Reading: `read`.
    Reader,
    /// Changing what runs or is polled: the operator scope named.
    Operator(Scope),
    /// Tokens: `admin`.
    Admin,
    /// A node's own requests: `node:register`, and for a node id, the token it registered
    /// with (or an admin's).
    Node,
}

impl Audience {
    /// The scope a token needs; `None` for the public routes.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Audience::Public => None,
            Audience::Reader => Some(Scope::Read),
            Audience::Operator(scope) => Some(scope),
            Audience::Admin => Some(Scope::Admin),
            Audience::Node => Some(Scope::NodeRegister),
        }
    }
}

/// What [`authenticate`] let through, for the caller extractors: a handler mounted without
/// the table's middleware finds none and refuses, so it cannot be open by mistake.
#[derive(Debug, Clone)]
struct Granted {
    audience: Audience,
    /// `None` without `--auth`, or on a public route.
    caller: Option<Caller>,
}

/// 401: no usable token. Says `WWW-Authenticate: Bearer` as RFC 6750 asks.
fn unauthorized(message: &str) -> Response {
    let mut resp =
        ApiError::field(StatusCode::UNAUTHORIZED, "Authorization", message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The middleware of one route: checks the bearer token against the audience the route
/// table gives the route, and leaves the caller in the request for the caller extractors.
pub(crate) async fn authenticate(
    State((state, audience)): State<(Arc<AppState>, Audience)>,
    mut req: Request,
    next: Next,
) -> Response {
    let needed = match audience.scope() {
        Some(scope) if state.config.auth => scope,
        _ => {
            req.extensions_mut().insert(Granted {
                audience,
                caller: None,
            });
            return next.run(req).await;
        }
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
    req.extensions_mut().insert(Granted {
        audience,
        caller: Some(caller),
    });
    next.run(req).await
}

/// The grant for this request, if it is for `want`.
fn granted(parts: &Parts, want: fn(Audience) -> bool) -> Result<Granted, ApiError> {
    match parts.extensions.get::<Granted>() {
        Some(g) if want(g.audience) => Ok(g.clone()),
        // Only a handler mounted outside the route table, or under the wrong audience.
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this route is not in the server's route table",
        )),
    }
}

/// Declares a caller type that only says the middleware let the request through.
macro_rules! caller {
    ($(#[$doc:meta])* $name:ident, $pattern:pat) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(());

        impl FromRequestParts<Arc<AppState>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                _: &Arc<AppState>,
            ) -> Result<Self, ApiError> {
                granted(parts, |a| matches!(a, $pattern)).map(|_| $name(()))
            }
        }
    };
}

caller!(
    /// Anyone: no token needed.
    Public,
    Audience::Public
);
caller!(
    /// A token with `read`.
    Reader,
    Audience::Reader
);
caller!(
    /// A token with the operator scope the route table names.
    Operator,
    Audience::Operator(_)
);
caller!(
    /// A token with `admin`.
    Admin,
    Audience::Admin
);

/// A node registering: `node:register`; the node is bound to the caller's token.
#[derive(Debug)]
pub struct NewNode {
    /// `None` when the server runs without authentication.
    pub caller: Option<Caller>,
}

impl FromRequestParts<Arc<AppState>> for NewNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, ApiError> {
        let g = granted(parts, |a| a == Audience::Node)?;
        Ok(NewNode { caller: g.caller })
    }
}

impl NewNode {
    /// The token id to bind the registering node to.
    pub fn token_id(&self) -> Option<i64> {
        self.caller.as_ref().map(|c| c.token_id)
    }

    pub fn is_admin(&self) -> bool {
        self.caller.as_ref().is_none_or(|c| c.scopes.is_admin())
    }
}

/// A node acting for itself, its id the route's `{id}` (`/v1/nodes/{id}/...`).
#[derive(Debug)]
pub struct NodeCaller {
    pub node: NodeId,
}

impl FromRequestParts<Arc<AppState>> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let g = granted(parts, |a| a == Audience::Node)?;
        let ApiPath(node) = ApiPath::<NodeId>::from_request_parts(parts, state).await?;
        acts_for(state, g.caller.as_ref(), node).await?;
        Ok(NodeCaller { node })
    }
}

/// A node acting on one of its runs: the run is the route's `{id}` (`/v1/runs/{id}/...`),
/// the node the `node` query parameter (where the v1 API has it).
#[derive(Debug)]
pub struct RunCaller {
    pub run: RunId,
    pub node: NodeId,
}

#[derive(Deserialize)]
struct NodeParam {
    node: NodeId,
}

impl FromRequestParts<Arc<AppState>> for RunCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let g = granted(parts, |a| a == Audience::Node)?;
        let ApiPath(run) = ApiPath::<RunId>::from_request_parts(parts, state).await?;
        let ApiQuery(q) = ApiQuery::<NodeParam>::from_request_parts(parts, state).await?;
        acts_for(state, g.caller.as_ref(), q.node).await?;
        Ok(RunCaller { run, node: q.node })
    }
}

impl RunCaller {
    /// A node may send a log only for a run it holds: 404 for no such run, 403 for another
    /// node's.
    pub async fn holds_run(&self, state: &AppState) -> Result<(), ApiError> {
        let run = self.run;
        match state.queue.store().run_owner(run).await? {
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            )),
            Some((owner, _)) if owner != self.node => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("run {run} belongs to another node"),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// A node's requests must come with the token the node registered with (or an admin's):
/// one node's token cannot claim, renew, report or upload for another node.
async fn acts_for(state: &AppState, caller: Option<&Caller>, node: NodeId) -> Result<(), ApiError> {
    let Some(caller) = caller else {
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
