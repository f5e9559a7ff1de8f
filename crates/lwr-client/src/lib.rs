//! A typed client for the lwr server's `/v1` API, used by the node, the CLI and the tests.

use std::time::Duration;

use lwr_model::api::*;
use lwr_model::auth::{CreateToken, CreatedToken, TokenInfo, TokenList};
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

pub use reqwest::StatusCode;

/// The server a client talks to when nothing else is said.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7370";

/// Time allowed for an ordinary request; long polls add their wait to it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bad server URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "cannot reach the lwr server at {server}: {detail} (is `lwr server` or `lwr dev` running there?)"
    )]
    Unreachable { server: String, detail: String },
    #[error("{method} {path}: {error} (HTTP {status})")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        error: String,
    },
    #[error("{method} {path}: unreadable answer: {detail}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The HTTP status of an error answer, if the server gave one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server could not be reached at all (down, restarting, network).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Sent as `Authorization: Bearer` on every request when set.
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: server.to_string(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: server.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            token: None,
        })
    }

    /// The same client, sending `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        req: RequestBuilder,
    ) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let error = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                }
            });
        Err(ClientError::Api {
            method,
            path: path.to_string(),
            status,
            error,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        ClientError::Unreachable {
            server: self.base.clone(),
            detail,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T> {
        let mut req = self.request(method.clone(), path, timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = self.send(method.clone(), path, req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            method,
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(Method::GET, path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.json(Method::POST, path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    pub async fn health(&self) -> Result<Health> {
        self.get("/v1/health").await
    }

    pub async fn submit_graph(&self, sub: &SubmitGraph) -> Result<GraphInfo> {
        self.post("/v1/graphs", sub).await
    }

    /// A graph's state; with `after`, the server holds the answer up to `wait` for a change.
    pub async fn graph(&self, id: i64, after: Option<i64>, wait: Duration) -> Result<GraphInfo> {
        let path = match after {
            Some(seq) => format!("/v1/graphs/{id}?after={seq}&wait_ms={}", wait.as_millis()),
            None => format!("/v1/graphs/{id}"),
        };
        self.json(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT + wait)
            .await
    }

    pub async fn jobs(&self, graph: Option<i64>) -> Result<JobList> {
        match graph {
            Some(g) => self.get(&format!("/v1/jobs?graph={g}")).await,
            None => self.get("/v1/jobs").await,
        }
    }

    pub async fn job(&self, id: i64) -> Result<JobDetail> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn job_by_name(&self, graph: i64, name: &str) -> Result<JobDetail> {
        self.get(&format!("/v1/graphs/{graph}/jobs/{name}")).await
    }

    /// The stored log of a job's latest run (or of run `run`).
    pub async fn log(&self, job: i64, run: Option<u32>) -> Result<Vec<u8>> {
        let path = match run {
            Some(n) => format!("/v1/jobs/{job}/log?run={n}"),
            None => format!("/v1/jobs/{job}/log"),
        };
        let req = self.request(Method::GET, &path, REQUEST_TIMEOUT);
        let resp = self.send(Method::GET, &path, req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(bytes.to_vec())
    }

    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken> {
        self.post("/v1/tokens", req).await
    }

    pub async fn tokens(&self) -> Result<TokenList> {
        self.get("/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo> {
        self.post(&format!("/v1/tokens/{id}/revoke"), &()).await
    }

    pub async fn cancel_job(&self, job: i64) -> Result<CancelResult> {
        self.post(&format!("/v1/jobs/{job}/cancel"), &()).await
    }

    pub async fn cancel_graph(&self, graph: i64) -> Result<CancelResult> {
        self.post(&format!("/v1/graphs/{graph}/cancel"), &()).await
    }

    pub async fn retrigger(&self, job: i64, with_dependents: bool) -> Result<RetriggerResult> {
        self.post(
            &format!("/v1/jobs/{job}/retrigger"),
            &RetriggerRequest { with_dependents },
        )
        .await
    }

    pub async fn register_node(&self, reg: &RegisterNode) -> Result<NodeInfo> {
        self.post("/v1/nodes", reg).await
    }

    pub async fn nodes(&self) -> Result<NodeList> {
        self.get("/v1/nodes").await
    }

    /// Long-polls for work: the server answers as soon as a job is ready, or after the wait.
    pub async fn claim(&self, node: i64, req: &ClaimRequest) -> Result<ClaimResponse> {
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(req.wait_ms);
        self.json(
            Method::POST,
            &format!("/v1/nodes/{node}/claim"),
            Some(req),
            timeout,
        )
        .await
    }

    pub async fn heartbeat(&self, node: i64, hb: &Heartbeat) -> Result<HeartbeatResponse> {
        self.post(&format!("/v1/nodes/{node}/heartbeat"), hb).await
    }

    pub async fn report(&self, node: i64, rep: &ReportResults) -> Result<ReportAck> {
        self.post(&format!("/v1/nodes/{node}/results"), rep).await
    }

    /// Uploads a run's log file as a stream.
    pub async fn upload_log(&self, run: i64, node: i64, file: &std::path::Path) -> Result<()> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::File {
                path: file.display().to_string(),
                source,
            })?;
        let path = format!("/v1/runs/{run}/log?node={node}");
        let req = self
            .request(Method::PUT, &path, Duration::from_secs(600))
            .body(reqwest::Body::from(f));
        self.send(Method::PUT, &path, req).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:7370/").is_ok());
        assert_eq!(Client::new("http://h:1/").unwrap().server(), "http://h:1");
        assert!(Client::new("127.0.0.1:7370").is_err());
    }
}
