//! Every change, and every read the store alone cannot answer, goes through the `/v1`
//! router itself: the app builds the API request, with the session's token as its bearer
//! token, and hands it to the same router `/v1` serves. So the API's scope check, its checks
//! of input and its rules are the only ones; the app adds none and cannot skip any.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use lwr_model::api::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::page::WebError;

/// Largest API answer the app reads whole (a list of repositories, an error).
const MAX_ANSWER: usize = 16 << 20;

/// The `/v1` router, as a service the app calls in-process.
#[derive(Clone)]
pub struct Api(pub Router);

/// The session's token, forwarded to the API; deliberately without `Debug`.
#[derive(Clone)]
pub struct Session(pub String);

impl Api {
    /// Sends `method uri` (with a JSON body) as the session; the API's answer as it is.
    pub async fn call<B: Serialize>(
        &self,
        session: Option<&Session>,
        method: Method,
        uri: &str,
        body: Option<&B>,
        extra: &[(header::HeaderName, HeaderValue)],
    ) -> Result<Response, WebError> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(Session(secret)) = session {
            req = req.header(header::AUTHORIZATION, format!("Bearer {secret}"));
        }
        for (k, v) in extra {
            req = req.header(k, v.clone());
        }
        let body =
            match body {
                Some(b) => {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                    Body::from(serde_json::to_vec(b).map_err(|e| {
                        WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    })?)
                }
                None => Body::empty(),
            };
        let req = req
            .body(body)
            .map_err(|e| WebError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        // The router's error type is Infallible.
        let Ok(resp) = self.0.clone().oneshot(req).await;
        Ok(resp)
    }

    /// Like [`Api::call`], but an answer other than 2xx becomes the page's error.
    pub async fn ok<B: Serialize>(
        &self,
        session: Option<&Session>,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<Response, WebError> {
        let resp = self.call(session, method, uri, body, &[]).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(WebError::new(status, message))
    }

    /// A JSON answer, decoded.
    pub async fn json<T: DeserializeOwned>(
        &self,
        session: Option<&Session>,
        uri: &str,
    ) -> Result<T, WebError> {
        let resp = self.ok::<()>(session, Method::GET, uri, None).await?;
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| WebError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
}

/// A handler's way to the API: the router and the request's session.
pub struct ApiCall {
    api: Api,
    session: Option<Session>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ApiCall {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let api = parts.extensions.get::<Api>().cloned().ok_or_else(|| {
            WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "the API is not mounted")
        })?;
        Ok(ApiCall {
            api,
            session: parts.extensions.get::<Session>().cloned(),
        })
    }
}

impl ApiCall {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        extra: &[(header::HeaderName, HeaderValue)],
    ) -> Result<Response, WebError> {
        self.api
            .call::<()>(self.session.as_ref(), method, uri, None, extra)
            .await
    }

    pub async fn ok<B: Serialize>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<Response, WebError> {
        self.api.ok(self.session.as_ref(), method, uri, body).await
    }

    pub async fn json<T: DeserializeOwned>(&self, uri: &str) -> Result<T, WebError> {
        self.api.json(self.session.as_ref(), uri).await
    }
}
