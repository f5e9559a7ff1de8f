//! A small client for the parts of Buildbot's REST API (`/api/v2`) the bridge uses: the
//! force scheduler lwr may start (`packaging/buildbot/lwr.cfg`), buildsets, build requests,
//! builds, steps and logs, and the stop and cancel actions. Every request has a timeout, so
//! a master that hangs is an error, not a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use thiserror::Error;

/// Name of the force scheduler `packaging/buildbot/lwr.cfg` adds.
pub const SCHEDULER: &str = "lwr";
/// Longest a request to the master may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum BuildbotError {
    #[error("Buildbot master at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Buildbot master at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("Buildbot master at {url} refused to {what}: {message}")]
    Refused {
        url: String,
        what: String,
        message: String,
    },
    #[error("unexpected answer from Buildbot at {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("bad Buildbot URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
}

impl BuildbotError {
    /// The master could not be reached or failed on its side: worth trying again later.
    pub fn is_transient(&self) -> bool {
        match self {
            BuildbotError::Unreachable { .. } => true,
            BuildbotError::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, BuildbotError>;

/// How the bridge logs in, from the environment (`LWR_BUILDBOT_USER` and
/// `LWR_BUILDBOT_PASSWORD`): Buildbot's `/auth/login` with HTTP basic auth, then its
/// session cookie.
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug print.
        write!(f, "Credentials {{ user: {:?} }}", self.user)
    }
}

impl Credentials {
    pub fn from_env() -> Credentials {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Credentials {
            user: var("LWR_BUILDBOT_USER"),
            password: var("LWR_BUILDBOT_PASSWORD"),
        }
    }
}

#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    /// The master's web URL without a trailing slash (`http://host:8010`).
    base: String,
    credentials: Credentials,
    /// The session cookie after a login.
    cookie: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// A build request of a buildset.
#[derive(Debug, Clone, Deserialize)]
pub struct BuildRequest {
    pub buildrequestid: i64,
    #[serde(default)]
    pub complete: bool,
    #[serde(default)]
    pub results: Option<i64>,
}

/// A build, with the properties asked for.
#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub buildid: i64,
    pub number: i64,
    pub builderid: i64,
    /// The build request it serves.
    #[serde(default)]
    pub buildrequestid: Option<i64>,
    #[serde(default)]
    pub workerid: Option<i64>,
    #[serde(default)]
    pub complete: bool,
    #[serde(default)]
    pub results: Option<i64>,
    #[serde(default)]
    pub state_string: Option<String>,
    /// name → [value, source]
    #[serde(default)]
    pub properties: BTreeMap<String, (Value, String)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub stepid: i64,
    pub number: i64,
    pub name: String,
    #[serde(default)]
    pub complete: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Log {
    pub logid: i64,
    pub name: String,
    #[serde(default)]
    pub num_lines: i64,
    /// `s`: stdio (each line starts with its stream: o, e or h), `t`: text, `h`: HTML.
    #[serde(rename = "type")]
    pub kind: String,
}

/// What forcing a build answered: the buildset and the build request per builder.
#[derive(Debug, Clone)]
pub struct Forced {
    pub bsid: i64,
    pub requests: Vec<i64>,
}

impl Rest {
    pub fn new(url: &str, credentials: Credentials) -> Result<Rest> {
        let base = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| BuildbotError::BadUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(BuildbotError::BadUrl {
                url: url.into(),
                reason: "it must start with http:// or https:// and name a host".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BuildbotError::BadUrl {
                url: url.into(),
                reason: e.to_string(),
            })?;
        Ok(Rest {
            http,
            base,
            credentials,
            cookie: Default::default(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The web page of a build.
    pub fn build_url(&self, build: &Build) -> String {
        format!(
            "{}/#/builders/{}/builds/{}",
            self.base, build.builderid, build.number
        )
    }

    /// Logs in when credentials are set; a no-op otherwise.
    async fn login(&self) -> Result<()> {
        let (Some(user), password) = (&self.credentials.user, &self.credentials.password) else {
            return Ok(());
        };
        let url = format!("{}/auth/login", self.base);
        let resp = self
            .http
            .get(&url)
            .basic_auth(user, password.as_ref())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let cookie: Vec<String> = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::to_string)
            .collect();
        if !resp.status().is_success() && !resp.status().is_redirection() {
            return Err(BuildbotError::Refused {
                url: self.base.clone(),
                what: format!("log in as {user}"),
                message: resp.status().to_string(),
            });
        }
        *lwr_model::sync::lock(&self.cookie) = Some(cookie.join("; "));
        Ok(())
    }

    fn unreachable(&self, _url: &str, e: reqwest::Error) -> BuildbotError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        BuildbotError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// One request to `/api/v2/{path}`; logs in again once on 401 or 403.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/api/v2/{path}", self.base);
        if self.credentials.user.is_some() && lwr_model::sync::lock(&self.cookie).is_none() {
            self.login().await?;
        }
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(REQUEST_TIMEOUT);
            if let Some(cookie) = lwr_model::sync::lock(&self.cookie).clone() {
                req = req.header(reqwest::header::COOKIE, cookie);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| self.unreachable(&url, e))?;
            let status = resp.status();
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && attempt == 0
                && self.credentials.user.is_some()
            {
                self.login().await?;
                continue;
            }
            let text = resp.text().await.map_err(|e| self.unreachable(&url, e))?;
            if !status.is_success() {
                let body: String = text.chars().take(300).collect();
                return Err(BuildbotError::Status { url, status, body });
            }
            return serde_json::from_str(&text).map_err(|e| BuildbotError::Decode {
                url,
                reason: format!("not JSON: {e}"),
            });
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, key: &str) -> Result<Vec<T>> {
        let answer = self.call(Method::GET, path, None).await?;
        let items = answer.get(key).cloned().unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(items).map_err(|e| BuildbotError::Decode {
            url: format!("{}/api/v2/{path}", self.base),
            reason: format!("'{key}': {e}"),
        })
    }

    /// A JSON-RPC control call (`force`, `stop`, `cancel`) on `path`.
    async fn control(&self, path: &str, method: &str, params: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let answer = match self.call(Method::POST, path, Some(&body)).await {
            // Buildbot answers a refused call with a 4xx and a JSON-RPC error body.
            Err(BuildbotError::Status { body, status, .. }) if status.is_client_error() => {
                serde_json::from_str::<Value>(&body).unwrap_or(json!({"error": {"message": body}}))
            }
            other => other?,
        };
        if let Some(error) = answer.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string);
            return Err(BuildbotError::Refused {
                url: self.base.clone(),
                what: format!("{method} {path}"),
                message,
            });
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The builders the `lwr` force scheduler may start.
    pub async fn forceable_builders(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Scheduler {
            name: String,
            #[serde(default)]
            builder_names: Vec<String>,
        }
        let all: Vec<Scheduler> = self.get("forceschedulers", "forceschedulers").await?;
        match all.into_iter().find(|s| s.name == SCHEDULER) {
            Some(s) => Ok(s.builder_names),
            None => Err(BuildbotError::Refused {
                url: self.base.clone(),
                what: "list its force schedulers".into(),
                message: format!(
                    "it has no force scheduler '{SCHEDULER}'; add packaging/buildbot/lwr.cfg to \
                     its master.cfg"
                ),
            }),
        }
    }

    /// Forces a build of `builder` through the `lwr` scheduler. `reason` identifies the run
    /// (the scheduler keeps it as the buildset's reason, which [`Rest::find_buildset`]
    /// searches); `properties` reach the build as properties.
    pub async fn force(
        &self,
        builder: &str,
        reason: &str,
        revision: Option<&str>,
        properties: &BTreeMap<String, String>,
    ) -> Result<Forced> {
        let props = serde_json::to_string(properties).unwrap_or_else(|_| "{}".into());
        let mut params = json!({
            "builderNames": [builder],
            "reason": reason,
            "lwr_properties": props,
        });
        if let Some(rev) = revision {
            params["revision"] = json!(rev);
        }
        let result = self
            .control(&format!("forceschedulers/{SCHEDULER}"), "force", params)
            .await?;
        forced(&result).ok_or_else(|| BuildbotError::Decode {
            url: self.base.clone(),
            reason: format!("force answered {result}, not [bsid, {{builderid: brid}}]"),
        })
    }

    /// The newest buildset whose reason is exactly `reason`.
    pub async fn find_buildset(&self, reason: &str) -> Result<Option<i64>> {
        #[derive(Deserialize)]
        struct Buildset {
            bsid: i64,
        }
        let path = format!(
            "buildsets?reason={}&order=-bsid&limit=1",
            lwr_model::urlpath::segment(reason)
        );
        let found: Vec<Buildset> = self.get(&path, "buildsets").await?;
        Ok(found.first().map(|b| b.bsid))
    }

    pub async fn requests_of(&self, bsid: i64) -> Result<Vec<BuildRequest>> {
        self.get(&format!("buildrequests?buildsetid={bsid}"), "buildrequests")
            .await
    }

    pub async fn request(&self, brid: i64) -> Result<Option<BuildRequest>> {
        let found: Vec<BuildRequest> = self
            .get(&format!("buildrequests/{brid}"), "buildrequests")
            .await?;
        Ok(found.into_iter().next())
    }

    /// The builds of a build request (more than one after a retry), oldest first, with the
    /// worker's name.
    pub async fn builds_of(&self, brid: i64) -> Result<Vec<Build>> {
        let mut builds: Vec<Build> = self
            .get(
                &format!("builds?buildrequestid={brid}&property=workername"),
                "builds",
            )
            .await?;
        builds.sort_by_key(|b| b.buildid);
        Ok(builds)
    }

    /// The builds of all the build requests `brids`, in one request, with the worker's name.
    pub async fn builds_of_requests(&self, brids: &[i64]) -> Result<Vec<Build>> {
        // `__in`, not the field's plain name: Buildbot's builds endpoint takes a plain
        // `buildrequestid` with several values as no filter at all.
        self.get(
            &format!(
                "builds?{}&property=workername",
                any_of("buildrequestid__in", brids)
            ),
            "builds",
        )
        .await
    }

    /// The build requests `brids`, in one request.
    pub async fn requests(&self, brids: &[i64]) -> Result<Vec<BuildRequest>> {
        self.get(
            &format!("buildrequests?{}", any_of("buildrequestid__in", brids)),
            "buildrequests",
        )
        .await
    }

    /// Builds of every builder, with the `revision` property (for `lwr graph diff`), newest
    /// first, `limit` at most.
    pub async fn recent_builds(&self, limit: u32) -> Result<Vec<Build>> {
        self.get(
            &format!("builds?property=revision&order=-buildid&limit={limit}"),
            "builds",
        )
        .await
    }

    /// Builder ids to names.
    pub async fn builder_names(&self) -> Result<BTreeMap<i64, String>> {
        #[derive(Deserialize)]
        struct Builder {
            builderid: i64,
            name: String,
        }
        let all: Vec<Builder> = self.get("builders", "builders").await?;
        Ok(all.into_iter().map(|b| (b.builderid, b.name)).collect())
    }

    pub async fn steps(&self, buildid: i64) -> Result<Vec<Step>> {
        self.get(&format!("builds/{buildid}/steps"), "steps").await
    }

    pub async fn logs(&self, stepid: i64) -> Result<Vec<Log>> {
        self.get(&format!("steps/{stepid}/logs"), "logs").await
    }

    /// Lines `from..` of a log (Buildbot counts lines from 0).
    pub async fn log_lines(&self, logid: i64, from: i64, count: i64) -> Result<String> {
        #[derive(Deserialize)]
        struct Chunk {
            #[serde(default)]
            content: String,
        }
        let chunks: Vec<Chunk> = self
            .get(
                &format!("logs/{logid}/contents?offset={from}&limit={count}"),
                "logchunks",
            )
            .await?;
        Ok(chunks.into_iter().map(|c| c.content).collect())
    }

    pub async fn stop_build(&self, buildid: i64, reason: &str) -> Result<()> {
        self.control(
            &format!("builds/{buildid}"),
            "stop",
            json!({"reason": reason}),
        )
        .await
        .map(drop)
    }

    pub async fn cancel_request(&self, brid: i64, reason: &str) -> Result<()> {
        self.control(
            &format!("buildrequests/{brid}"),
            "cancel",
            json!({"reason": reason}),
        )
        .await
        .map(drop)
    }
}

/// `field=1&field=2...`.
fn any_of(field: &str, ids: &[i64]) -> String {
    ids.iter()
        .map(|id| format!("{field}={id}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `[bsid, {"builderid": brid, ...}]`.
fn forced(result: &Value) -> Option<Forced> {
    let bsid = result.get(0)?.as_i64()?;
    let requests = result
        .get(1)?
        .as_object()?
        .values()
        .filter_map(Value::as_i64)
        .collect();
    Some(Forced { bsid, requests })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_force_answer_gives_the_buildset_and_its_requests() {
        let f = forced(&json!([7, {"3": 12}])).unwrap();
        assert_eq!((f.bsid, f.requests), (7, vec![12]));
        assert!(forced(&json!({"bsid": 7})).is_none());
    }

    #[tokio::test]
    async fn a_master_that_is_down_is_a_clear_transient_error() {
        // A port nobody listens on: bound, read, let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let rest = Rest::new(&format!("http://127.0.0.1:{port}"), Credentials::default()).unwrap();
        let e = rest.forceable_builders().await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "Buildbot master at http://127.0.0.1:{port} is unreachable"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_bad_url_is_refused() {
        assert!(Rest::new("ftp://x", Credentials::default()).is_err());
        assert!(Rest::new("http://127.0.0.1:8010/", Credentials::default()).is_ok());
    }
}
