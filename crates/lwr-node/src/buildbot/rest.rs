//! A small client for the parts of Buildbot's REST API (`/api/v2`) the bridge uses: the
//! force scheduler lwr may start (`packaging/buildbot/lwr.cfg`), buildsets, build requests,
//! builds, steps and logs, and the stop and cancel actions; and for its event stream
//! (`/sse`, server-sent events), which tells of each build and build request as it changes.
//! Every request has a timeout, so a master that hangs is an error, not a hang (the event
//! stream, which lasts, is only a hint: the bridge's REST poll stays the safety net).

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
    /// Worker ids to names: a build's worker is in the manifest, and a build seen only
    /// through events has its worker's id, not its name.
    workers: std::sync::Arc<std::sync::Mutex<BTreeMap<i64, String>>>,
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
    /// The build it is a step of.
    #[serde(default)]
    pub buildid: i64,
    pub number: i64,
    pub name: String,
    #[serde(default)]
    pub complete: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Log {
    pub logid: i64,
    /// The step it is a log of.
    #[serde(default)]
    pub stepid: i64,
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
            workers: Default::default(),
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
        // Each request costs the master CPU: `LWR_LOG=lwr_node::buildbot=trace` counts them.
        tracing::trace!("Buildbot request: {method} {path}");
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

    /// The builds of all the build requests `brids`, in one request, without their
    /// properties: the master reads each build's properties for a `property=` (the worker's
    /// name is asked once per worker instead, `worker_name`).
    pub async fn builds_of_requests(&self, brids: &[i64]) -> Result<Vec<Build>> {
        // `__in`, not the field's plain name: Buildbot's builds endpoint takes a plain
        // `buildrequestid` with several values as no filter at all.
        self.get(
            &format!("builds?{}", any_of("buildrequestid__in", brids)),
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

    /// The name of worker `workerid`, asked once per worker (a worker's id never changes
    /// its name).
    pub async fn worker_name(&self, workerid: i64) -> Result<Option<String>> {
        if let Some(name) = lwr_model::sync::lock(&self.workers).get(&workerid) {
            return Ok(Some(name.clone()));
        }
        #[derive(Deserialize)]
        struct Worker {
            name: String,
        }
        let found: Vec<Worker> = self.get(&format!("workers/{workerid}"), "workers").await?;
        let name = found.into_iter().next().map(|w| w.name);
        if let Some(name) = &name {
            lwr_model::sync::lock(&self.workers).insert(workerid, name.clone());
        }
        Ok(name)
    }

    /// Opens the master's event stream on the event `paths` (`builds/*/*`: every event of
    /// every build): Buildbot's `/sse/listen/PATH` for the first, `/sse/add/ID/PATH` for the
    /// others. Answers once every path is registered.
    pub async fn events(&self, paths: &[&str]) -> Result<Events> {
        let Some((first, others)) = paths.split_first() else {
            return Err(BuildbotError::BadUrl {
                url: self.base.clone(),
                reason: "an event stream needs a path".into(),
            });
        };
        if self.credentials.user.is_some() && lwr_model::sync::lock(&self.cookie).is_none() {
            self.login().await?;
        }
        let url = format!("{}/sse/listen/{first}", self.base);
        // No request timeout: the answer lasts as long as the stream.
        let resp = self
            .with_cookie(self.http.get(&url))
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let body: String = text.chars().take(300).collect();
            return Err(BuildbotError::Status { url, status, body });
        }
        let mut events = Events {
            url: url.clone(),
            resp,
            parser: SseParser::default(),
        };
        let id = match tokio::time::timeout(REQUEST_TIMEOUT, events.next()).await {
            Ok(Ok(Some(Event::Handshake(id)))) => id,
            Ok(Ok(other)) => {
                return Err(BuildbotError::Decode {
                    url,
                    reason: format!("the event stream began with {other:?}, not its handshake"),
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(BuildbotError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("no handshake on {url} in {} s", REQUEST_TIMEOUT.as_secs()),
                });
            }
        };
        for path in others {
            let add = format!("{}/sse/add/{id}/{path}", self.base);
            let resp = self
                .with_cookie(self.http.get(&add))
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| self.unreachable(&add, e))?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                let body: String = text.chars().take(300).collect();
                return Err(BuildbotError::Status {
                    url: add,
                    status,
                    body,
                });
            }
        }
        Ok(events)
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match lwr_model::sync::lock(&self.cookie).clone() {
            Some(cookie) => req.header(reqwest::header::COOKIE, cookie),
            None => req,
        }
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

/// One event of the master's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The stream's id, its first event.
    Handshake(String),
    /// Something changed: `key` is its routing key (`["builds", "12", "finished"]`),
    /// `message` the thing as it is now (the build, the build request).
    Message { key: Vec<String>, message: Value },
}

/// The master's event stream (see [`Rest::events`]).
pub struct Events {
    url: String,
    resp: reqwest::Response,
    parser: SseParser,
}

impl Events {
    /// The next event; `None` when the master closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(block) = self.parser.next_block() {
                match parse_event(&block) {
                    Ok(Some(event)) => return Ok(Some(event)),
                    // A comment, or a kind of event the bridge does not know.
                    Ok(None) => continue,
                    Err(reason) => {
                        return Err(BuildbotError::Decode {
                            url: self.url.clone(),
                            reason,
                        });
                    }
                }
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => {
                    self.parser
                        .push(&bytes)
                        .map_err(|reason| BuildbotError::Decode {
                            url: self.url.clone(),
                            reason,
                        })?
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(BuildbotError::Unreachable {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}

/// Longest event block kept while waiting for its end: a stream that never ends a block is
/// broken, not an event worth the memory.
const MAX_EVENT_BLOCK: usize = 16 << 20;

/// Splits a `text/event-stream` into its blocks (lines up to an empty line).
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_EVENT_BLOCK {
            return Err(format!("an event of over {} MiB", MAX_EVENT_BLOCK >> 20));
        }
        Ok(())
    }

    /// The next whole block, its lines without their ends.
    fn next_block(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + n];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            start += n + 1;
            if line.is_empty() {
                if lines.is_empty() {
                    // Blank lines between blocks.
                    continue;
                }
                self.buf.drain(..start);
                return Some(lines);
            }
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
        None
    }
}

/// An event from its block: Buildbot's are `event: handshake` with the stream's id as
/// data, and `event: event` with `{"key": [...], "message": {...}}`.
fn parse_event(lines: &[String]) -> std::result::Result<Option<Event>, String> {
    let mut kind = "message";
    let mut data = String::new();
    for line in lines {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value,
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    match kind {
        "handshake" => Ok(Some(Event::Handshake(data))),
        "event" => {
            #[derive(Deserialize)]
            struct Raw {
                key: Vec<String>,
                #[serde(default)]
                message: Value,
            }
            let raw: Raw = serde_json::from_str(&data)
                .map_err(|e| format!("an event that is not {{key, message}}: {e}"))?;
            Ok(Some(Event::Message {
                key: raw.key,
                message: raw.message,
            }))
        }
        _ => Ok(None),
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
    fn the_event_stream_is_read_in_whatever_pieces_it_comes() {
        // As Buildbot 4.3 writes it (www/sse.py), cut at every byte.
        let stream = "event: handshake\ndata: 5b1c\n\n\
            event: event\ndata: {\"key\": [\"builds\", \"7\", \"finished\"], \"message\": {\"buildid\": 7}}\n\n\
            : a comment\n\n\
            event: event\r\ndata: {\"key\": [\"buildrequests\", \"3\", \"complete\"], \"message\": {\"results\": 0}}\r\n\r\n";
        let want = vec![
            Event::Handshake("5b1c".into()),
            Event::Message {
                key: vec!["builds".into(), "7".into(), "finished".into()],
                message: json!({"buildid": 7}),
            },
            Event::Message {
                key: vec!["buildrequests".into(), "3".into(), "complete".into()],
                message: json!({"results": 0}),
            },
        ];
        for cut in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut got = Vec::new();
            for piece in [&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]] {
                parser.push(piece).unwrap();
                while let Some(block) = parser.next_block() {
                    if let Some(event) = parse_event(&block).unwrap() {
                        got.push(event);
                    }
                }
            }
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn an_event_that_is_not_buildbots_is_an_error() {
        let block = vec!["event: event".to_string(), "data: [1, 2]".to_string()];
        assert!(parse_event(&block).is_err());
        let unknown = vec!["event: ping".to_string(), "data: x".to_string()];
        assert_eq!(parse_event(&unknown), Ok(None));
    }

    #[test]
    fn a_bad_url_is_refused() {
        assert!(Rest::new("ftp://x", Credentials::default()).is_err());
        assert!(Rest::new("http://127.0.0.1:8010/", Credentials::default()).is_ok());
    }
}
