//! Who may see and do what in the browser. A page or action is allowed exactly when the
//! `/v1` route it stands for is allowed to the same token ([`lwr_server::auth::required_scope`]
//! decides both): the table [`API_OF`] names that route for each of the app's routes.
//!
//! With `--auth`, the login page takes a token and keeps it in an `HttpOnly`,
//! `SameSite=Strict` cookie; each request checks it against the store as the API checks a
//! bearer token (so revocation holds on the next click). Every state change is a POST that
//! must come from one of our own pages: its `Origin` (or `Referer`) must be this server, and
//! with `--auth` it must carry the form token derived from the session, which a page on
//! another site cannot read.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use lwr_model::Scope;
use std::sync::OnceLock;

use lwr_server::AppState;
use lwr_store::{Caller, TokenCheck};
use sha2::{Digest, Sha256};

use crate::page::WebError;

/// The session cookie: the token itself, never readable by scripts.
pub const COOKIE: &str = "lwr_session";
/// Largest form a POST may send.
const MAX_FORM: usize = 64 << 10;
/// Longest token worth looking up (ours are 68 characters).
const MAX_SECRET: usize = 256;

/// For each route of the app: the `/v1` route whose scope it needs. A route missing here
/// needs `admin`, so a new route is closed until someone names its API twin.
pub const API_OF: &[(Method, &str, Method, &str)] = &[
    (Method::GET, "/", Method::GET, "/v1/pushes"),
    (Method::GET, "/events", Method::GET, "/v1/graphs/{id}"),
    (Method::GET, "/graphs/{id}", Method::GET, "/v1/graphs/{id}"),
    (
        Method::POST,
        "/graphs/{id}/cancel",
        Method::POST,
        "/v1/graphs/{id}/cancel",
    ),
    (
        Method::POST,
        "/pushes/{id}/trigger",
        Method::POST,
        "/v1/pushes/{id}/trigger",
    ),
    (Method::GET, "/jobs/{id}", Method::GET, "/v1/jobs/{id}"),
    (
        Method::POST,
        "/jobs/{id}/retrigger",
        Method::POST,
        "/v1/jobs/{id}/retrigger",
    ),
    (
        Method::POST,
        "/jobs/{id}/cancel",
        Method::POST,
        "/v1/jobs/{id}/cancel",
    ),
    (
        Method::GET,
        "/jobs/{id}/log",
        Method::GET,
        "/v1/jobs/{id}/log",
    ),
    (
        Method::GET,
        "/jobs/{id}/log/raw",
        Method::GET,
        "/v1/jobs/{id}/log",
    ),
    (
        Method::GET,
        "/jobs/{id}/log/part",
        Method::GET,
        "/v1/jobs/{id}/log",
    ),
    (
        Method::GET,
        "/jobs/{id}/log/events",
        Method::GET,
        "/v1/jobs/{id}/log",
    ),
    (
        Method::POST,
        "/jobs/{id}/log/live",
        Method::PUT,
        "/v1/jobs/{id}/log/live",
    ),
    (
        Method::GET,
        "/runs/{id}/artifacts/{*name}",
        Method::GET,
        "/v1/runs/{id}/artifacts/{*name}",
    ),
    (Method::GET, "/nodes", Method::GET, "/v1/nodes"),
    (
        Method::POST,
        "/nodes/{id}/state",
        Method::POST,
        "/v1/nodes/{id}/state",
    ),
    (
        Method::POST,
        "/nodes/{id}/labels",
        Method::POST,
        "/v1/nodes/{id}/labels",
    ),
    (Method::GET, "/repos", Method::GET, "/v1/repos"),
    (Method::POST, "/repos", Method::POST, "/v1/repos"),
    (
        Method::POST,
        "/repos/{id}/remove",
        Method::DELETE,
        "/v1/repos/{id}",
    ),
];

/// The scope a `/v1` route needs, from the server's route table (the one its router and
/// its token checks are made from); `admin` for a route not in it.
fn api_scope(method: &Method, path: &str) -> Option<Scope> {
    type Row = (Method, &'static str, Option<Scope>);
    static TABLE: OnceLock<Vec<Row>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        lwr_server::routes::table()
            .into_iter()
            .map(|r| (r.method, r.path, r.audience.scope()))
            .collect()
    });
    match table.iter().find(|(m, p, _)| m == method && *p == path) {
        Some((_, _, scope)) => *scope,
        None => Some(Scope::Admin),
    }
}

/// The scope an app route needs: its API twin's; `admin` for a route not in [`API_OF`].
pub fn scope_of(method: &Method, route: &str) -> Option<Scope> {
    match API_OF
        .iter()
        .find(|(m, r, _, _)| m == method && *r == route)
    {
        Some((_, _, api_method, api_route)) => api_scope(api_method, api_route),
        None => Some(Scope::Admin),
    }
}

/// Who looks at a page: what to offer them, and the form token their POSTs carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// `None` without `--auth`: everything is allowed (loopback only).
    pub caller: Option<Caller>,
    /// Goes into every form; empty without `--auth`.
    pub csrf: String,
}

impl Viewer {
    /// May this viewer use the app route `route` with `method`? Pages offer an action only
    /// when this says yes, the same answer the request itself would get.
    pub fn may(&self, method: Method, route: &str) -> bool {
        match (&self.caller, scope_of(&method, route)) {
            (_, None) | (None, _) => true,
            (Some(caller), Some(scope)) => caller.scopes.allow(scope),
        }
    }

    pub fn signed_in(&self) -> bool {
        self.caller.is_some()
    }
}

/// The form token of a session: derived from its secret, so it needs no storage, and
/// useless without the cookie; a page on another site can read neither.
pub fn csrf_token(secret: &str) -> String {
    let digest = Sha256::digest(format!("lwr-web form\0{secret}").as_bytes());
    hex::encode(&digest[..16])
}

/// The session secret in the request's cookies.
pub fn session_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= MAX_SECRET)
}

/// Did this POST come from a page of this server? Browsers send `Origin` with every POST
/// (and `Referer` unless told not to); a forged form on another site names that site.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let ours = |url: &str| {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        rest.is_some_and(|r| r.split('/').next() == Some(host))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().is_ok_and(ours);
    }
    headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .is_some_and(ours)
}

/// Where to go after logging in: a path on this server, never another site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

fn form_field<'a>(body: &'a [u8], name: &str) -> Option<std::borrow::Cow<'a, str>> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The middleware in front of every route of the app.
pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let public = route == "/login" || route == "/logout" || route.starts_with("/static/");
    if method == Method::POST && !same_origin(req.headers()) {
        return WebError::new(
            StatusCode::FORBIDDEN,
            "refused: this form was not sent from a page of this server",
        )
        .into_response();
    }
    if !state.config.auth {
        let mut req = req;
        req.extensions_mut().insert(Viewer {
            caller: None,
            csrf: String::new(),
        });
        return next.run(req).await;
    }
    if public {
        return next.run(req).await;
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let login = || {
        if method == Method::GET {
            let next: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
            Redirect::to(&format!("/login?next={next}")).into_response()
        } else {
            WebError::new(StatusCode::UNAUTHORIZED, "sign in first").into_response()
        }
    };
    let Some(secret) = session_secret(req.headers()).map(str::to_string) else {
        return login();
    };
    let caller = match state
        .queue
        .store()
        .check_token(&secret, lwr_store::now_ms())
        .await
    {
        Ok(TokenCheck::Valid(caller)) => caller,
        Ok(_) => return login(),
        Err(e) => return WebError::from(lwr_server::ApiError::from(e)).into_response(),
    };
    if let Some(needed) = scope_of(&method, &route)
        && !caller.scopes.allow(needed)
    {
        return WebError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token lacks the '{needed}' scope (it has: {})",
                caller.scopes
            ),
        )
        .into_response();
    }
    let csrf = csrf_token(&secret);
    let mut req = req;
    if method == Method::POST {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return WebError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
        };
        if form_field(&bytes, "csrf").as_deref() != Some(csrf.as_str()) {
            return WebError::new(
                StatusCode::FORBIDDEN,
                "refused: the form does not belong to this session (reload the page)",
            )
            .into_response();
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(Viewer {
        caller: Some(caller),
        csrf,
    });
    req.extensions_mut().insert(crate::api::Session(secret));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn every_twin_is_a_route_of_the_api() {
        for (_, route, method, api) in API_OF {
            assert!(
                lwr_server::routes::table()
                    .iter()
                    .any(|r| r.method == method && r.path == *api),
                "{route}: no {method} {api} in the API"
            );
        }
    }

    #[test]
    fn every_route_has_the_scope_of_its_api_twin() {
        assert_eq!(scope_of(&Method::GET, "/"), Some(Scope::Read));
        assert_eq!(
            scope_of(&Method::POST, "/jobs/{id}/retrigger"),
            Some(Scope::JobRetrigger)
        );
        assert_eq!(
            scope_of(&Method::POST, "/jobs/{id}/log/live"),
            Some(Scope::Read)
        );
        assert_eq!(
            scope_of(&Method::POST, "/repos/{id}/remove"),
            Some(Scope::RepoAdmin)
        );
        assert_eq!(
            scope_of(&Method::POST, "/nodes/{id}/state"),
            Some(Scope::NodeAdmin)
        );
        assert_eq!(scope_of(&Method::POST, "/no-twin"), Some(Scope::Admin));
    }

    #[test]
    fn a_post_from_another_site_is_not_same_origin() {
        let host = (header::HOST, "127.0.0.1:7370");
        assert!(same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:7370")
        ])));
        assert!(!same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:7370.evil.example")
        ])));
        assert!(same_origin(&headers(&[
            host.clone(),
            (header::REFERER, "http://127.0.0.1:7370/jobs/3")
        ])));
        assert!(
            !same_origin(&headers(std::slice::from_ref(&host))),
            "no origin at all"
        );
        assert!(!same_origin(&headers(&[host, (header::ORIGIN, "null")])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[(header::COOKIE, "a=1; lwr_session=lwr_abc ; b=2")]);
        assert_eq!(session_secret(&h), Some("lwr_abc"));
        assert_eq!(session_secret(&headers(&[(header::COOKIE, "a=1")])), None);
    }

    #[test]
    fn form_tokens_differ_per_session_and_reveal_nothing() {
        let a = csrf_token("lwr_secret_a");
        assert_eq!(a, csrf_token("lwr_secret_a"));
        assert_ne!(a, csrf_token("lwr_secret_b"));
        assert!(!a.contains("secret"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(
            safe_next(Some("/graphs/3?state=failed")),
            "/graphs/3?state=failed"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
