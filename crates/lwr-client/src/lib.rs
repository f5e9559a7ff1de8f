//! A typed client for the lwr server's `/v1` API, used by the node, the CLI and the tests.

mod follow;
pub mod paths;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lwr_model::api::*;
use lwr_model::auth::{CreateToken, CreatedToken, TokenInfo, TokenList};
use lwr_model::manifest::Manifest;
use lwr_model::{GraphId, JobId, NodeId, PushId, RunId};
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

pub use follow::{FollowEvent, LogFollow};
pub use paths::Endpoint;
pub use reqwest::StatusCode;

/// The server a client talks to when nothing else is said.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7370";

/// Time allowed for an ordinary request; long polls add their wait to it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for reaching a server: a dead one among several is left for the next soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for moving a log or an artifact.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the node says about an artifact it uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactMeta {
    pub name: String,
    pub sha256: String,
    pub kind: String,
    pub path: String,
    pub content_type: String,
}

async fn open(file: &std::path::Path) -> Result<tokio::fs::File> {
    tokio::fs::File::open(file)
        .await
        .map_err(|source| ClientError::File {
            path: file.display().to_string(),
            source,
        })
}

/// `file` opened, with its length (an upload's Content-Length).
async fn open_sized(file: &std::path::Path) -> Result<(tokio::fs::File, u64)> {
    let f = open(file).await?;
    let meta = f.metadata().await.map_err(|source| ClientError::File {
        path: file.display().to_string(),
        source,
    })?;
    Ok((f, meta.len()))
}

/// Bytes read from a file per chunk of an upload: large enough that a big artifact is a few
/// hundred reads, small enough to keep a node's memory flat.
const UPLOAD_CHUNK: usize = 1 << 20;

/// A file as a streamed request body, read a chunk at a time (never whole in memory).
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut filled = 0;
        // Fill the chunk: a file read may return less than asked.
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(filled);
        Ok(Some((bytes::Bytes::from(buf), file)))
    });
    reqwest::Body::wrap_stream(chunks)
}

/// Chunks in flight between the thread reading (and hashing) a file and the request body:
/// bounds the memory of an upload to a few chunks.
const UPLOAD_QUEUE: usize = 4;

/// A file as a streamed request body, read and hashed on a blocking thread in one pass; the
/// handle yields the SHA-256 of what was read once the body is sent (`None` when the body
/// was dropped before the end).
fn hashing_body(
    file: std::fs::File,
) -> (
    reqwest::Body,
    tokio::task::JoinHandle<std::io::Result<Option<String>>>,
) {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(UPLOAD_QUEUE);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut hasher = Sha256::new();
        loop {
            // Filled by the read itself: no zeroing of each chunk first.
            let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
            match (&mut file).take(UPLOAD_CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => return Ok(Some(hex::encode(hasher.finalize()))),
                Ok(_) => {}
                Err(e) => {
                    let copy = std::io::Error::new(e.kind(), e.to_string());
                    let _ = tx.blocking_send(Err(copy));
                    return Err(e);
                }
            }
            hasher.update(&buf);
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return Ok(None);
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (reqwest::Body::wrap_stream(chunks), reader)
}

/// A temporary name in the same directory as `dest`, so the final rename is atomic.
fn temp_beside(dest: &std::path::Path) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    dest.with_file_name(format!(".{name}.lwr-part-{}", std::process::id()))
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bad server URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot make https requests (for {url}): {reason}")]
    Tls { url: String, reason: String },
    #[error(
        "cannot reach the lwr server at {server}: {detail} (is `lwr server` or `lwr dev` running there?)"
    )]
    Unreachable { server: String, detail: String },
    /// The server's own words; the request and status are in [`ClientError::detail`], for
    /// `lwr -v`: a user reads what is wrong, not which endpoint said it.
    #[error("{error}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        error: String,
    },
    /// Something answered that is not an lwr server (a web server's HTML page, say).
    #[error("{server} is not an lwr server (it answered {answer}); check --server or LWR_SERVER")]
    NotLwr {
        server: String,
        /// `GET /v1/jobs`: the request it answered.
        request: String,
        status: StatusCode,
        answer: String,
    },
    #[error("{method} {path}: unreadable answer: {detail}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Manifest {
        url: String,
        #[source]
        source: lwr_model::manifest::ManifestError,
    },
    #[error(
        "{url}: sha256 mismatch: the manifest says {expected}, the download has {got}; \
         nothing was kept"
    )]
    HashMismatch {
        url: String,
        expected: String,
        got: String,
    },
    /// A request body that does not serialize (no lwr type does that).
    #[error("cannot encode the request as JSON: {detail}")]
    Encode { detail: String },
}

impl ClientError {
    /// The HTTP status of an error answer, if the server gave one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            // A proxy's error page still carries the status callers retry (or not) on.
            ClientError::Api { status, .. } | ClientError::NotLwr { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server could not be reached at all (down, restarting, network).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// True when the server said the thing asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// The request and the HTTP status behind an error, for `lwr -v`: `GET /v1/jobs/8/log
    /// (HTTP 404 Not Found)`. `None` when no request was answered.
    pub fn detail(&self) -> Option<String> {
        match self {
            ClientError::Api {
                method,
                path,
                status,
                ..
            } => Some(format!("{method} {path} (HTTP {status})")),
            ClientError::NotLwr {
                request, status, ..
            } => Some(format!("{request} (HTTP {status})")),
            ClientError::Decode { method, path, .. } => Some(format!("{method} {path}")),
            _ => None,
        }
    }
}

/// What a non-lwr answer was, in a few words: its status and content type, never its body
/// (a web server's error page is many lines of HTML).
fn describe_answer(status: StatusCode, headers: &reqwest::header::HeaderMap) -> String {
    let kind = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| format!(", {}", v.trim()))
        .unwrap_or_default();
    format!("HTTP {status}{kind}")
}

/// Whether an answer is a web page, which no lwr API answer is.
fn is_html(headers: &reqwest::header::HeaderMap, text: &str) -> bool {
    let declared = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("html"));
    declared || text.trim_start().starts_with('<')
}

/// Whether an answer's content type is JSON, as every lwr API answer's is.
fn is_json(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

type Result<T> = std::result::Result<T, ClientError>;

/// `value` as JSON in one allocation of its exact size, measured by a first pass: the body of
/// a 100,000-job graph is some 15 MB, and a buffer grown by doubling could take twice that.
fn json_body(value: &impl Serialize) -> Result<Vec<u8>> {
    let encode = |e: serde_json::Error| ClientError::Encode {
        detail: e.to_string(),
    };
    let mut body = Vec::with_capacity(json_len(value)?);
    serde_json::to_writer(&mut body, value).map_err(encode)?;
    Ok(body)
}

/// The length of `value` as JSON, measured by writing it to a counter.
fn json_len(value: &impl Serialize) -> Result<usize> {
    let mut size = ByteCount(0);
    serde_json::to_writer(&mut size, value).map_err(|e| ClientError::Encode {
        detail: e.to_string(),
    })?;
    Ok(size.0)
}

/// A writer that only counts.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of JSON per chunk of a streamed request body, and chunks in flight: a 35 MB graph
/// body is sent with a few hundred KB of it in memory.
const JSON_CHUNK: usize = 64 << 10;
const JSON_QUEUE: usize = 4;

/// `value` as the chunks of a streamed JSON request body, written a chunk at a time on a
/// blocking thread (never whole in memory), with its length (a first pass counts it, as for
/// [`json_body`], so the request has a Content-Length and a server's size limit answers
/// before the upload).
fn json_stream<T: Serialize + Send + Sync + 'static>(
    value: Arc<T>,
) -> Result<(
    impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>>,
    u64,
)> {
    let size = json_len(&*value)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(JSON_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            chunk: Vec::with_capacity(JSON_CHUNK),
            tx,
        };
        let sent = serde_json::to_writer(&mut out, &*value)
            .map_err(std::io::Error::other)
            .and_then(|()| out.send());
        // A body dropped before its end (the request failed) needs no error; any other
        // failure ends the body with it, so the request fails rather than sends half.
        if let Err(e) = sent
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((chunks, size as u64))
}

/// A writer that sends what it is given in chunks of [`JSON_CHUNK`] bytes.
struct ChunkSender {
    chunk: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

impl ChunkSender {
    /// Sends the chunk so far; `BrokenPipe` when the body was dropped.
    fn send(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(JSON_CHUNK));
        self.tx
            .blocking_send(Ok(bytes::Bytes::from(chunk)))
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= JSON_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which jobs [`Client::jobs_matching`] asks for; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct JobsQuery {
    pub graph: Option<GraphId>,
    /// Any of these states; empty: any state.
    pub states: Vec<lwr_model::JobState>,
    /// A glob on the name.
    pub name: Option<String>,
    /// The newest this many that match; with `cursor`, the size of a page.
    pub limit: Option<u32>,
    /// A page, oldest first: `0` for the first, then the `next_cursor` of the one before.
    pub cursor: Option<String>,
}

/// `text` as the URL of a server (http or https, a host, maybe a path; no query or
/// fragment), without trailing slashes: what `--server` and a server's `--public-url` take.
pub fn server_url(text: &str) -> Result<String> {
    parse_server_url(text).map(|(base, _)| base)
}

fn parse_server_url(text: &str) -> Result<(String, reqwest::Url)> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: text.to_string(),
        reason: reason.into(),
    };
    let base = text.trim_end_matches('/').to_string();
    let url = reqwest::Url::parse(&base)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| bad("it must start with http:// or https:// and name a host"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a server URL has no query (?) or fragment (#)"));
    }
    // `http://HOST:PORT@evil/` is evil's URL: no user-info, so what it names is plain.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "a server URL has no user-info (user@): give a token with --token or LWR_TOKEN",
        ));
    }
    Ok((base, url))
}

/// Whether `url` is on the server at `ours`: the same scheme, host and port (parsed, not
/// compared as text: `https://ci.example.com.evil.net` is not `https://ci.example.com`), and
/// a path at or below the server's own, on a segment boundary.
fn is_on(ours: &reqwest::Url, url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    if url.scheme() != ours.scheme()
        || url.host() != ours.host()
        || url.port_or_known_default() != ours.port_or_known_default()
    {
        return false;
    }
    let below = ours.path().trim_end_matches('/');
    url.path()
        .strip_prefix(below)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// How a [`Client`] sends. Loading the system's TLS roots reads and parses every certificate
/// in /etc/ssl/certs: about 4 ms of CPU, a third of what a small `lwr push` costs itself, and
/// before its first request. So a client whose servers are all plain http talks to them with
/// a client that has no roots, and makes the one with roots only when it first needs it: for
/// an https URL, or a URL elsewhere (a manifest's location), which may redirect to one.
struct Transport {
    /// For the client's own servers, when none of them is https.
    plain: Option<reqwest::Client>,
    /// For everything else; made on first use unless a server is https.
    tls: OnceLock<std::result::Result<reqwest::Client, String>>,
}

impl Transport {
    fn new(all_plain: bool) -> reqwest::Result<Transport> {
        let tls = OnceLock::new();
        let plain = match all_plain {
            true => Some(
                transport()
                    .tls_certs_only(std::iter::empty())
                    .redirect(stay_plain())
                    .build()?,
            ),
            // Made now, so that a client that cannot do TLS says so before any request.
            false => {
                let _ = tls.set(Ok(transport().build()?));
                None
            }
        };
        Ok(Transport { plain, tls })
    }

    fn tls(&self) -> std::result::Result<&reqwest::Client, &str> {
        self.tls
            .get_or_init(|| transport().build().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }
}

fn transport() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(lwr_model::timing::CLIENT_POOL_IDLE)
}

/// The redirects the plain client follows: to http URLs only (it cannot check a
/// certificate), at most 10 as reqwest's default. A server that moved to https is to be
/// named by its https URL.
fn stay_plain() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.url().scheme() != "http" {
            let to = attempt.url().to_string();
            attempt.error(format!(
                "the server redirected to {to}: give lwr its https URL (--server or LWR_SERVER)"
            ))
        } else if attempt.previous().len() > 10 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// One server of a client's list: its URL as given and parsed.
#[derive(Debug)]
struct Server {
    base: String,
    /// `base` parsed: a URL on it (same scheme, host, port, and a path below its path) is
    /// this server's.
    origin: reqwest::Url,
}

/// A client of one server, or of several that share a database (`--server A,B,C`): it talks
/// to one at a time and goes on with the next when that one cannot be reached or answers
/// with a server error (5xx), retrying the request there when its body can be sent again.
#[derive(Clone)]
pub struct Client {
    http: Arc<Transport>,
    servers: Arc<[Server]>,
    /// Index in `servers` of the one in use, shared by the clones of this client so that a
    /// node's claims, heartbeats and streams all move on together.
    active: Arc<AtomicUsize>,
    /// Sent as `Authorization: Bearer` on every request to these servers when set.
    token: Option<String>,
}

impl Client {
    /// A client of `server`: one URL, or several separated by commas (tried in order).
    pub fn new(server: &str) -> Result<Client> {
        let servers = server
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| parse_server_url(s).map(|(base, origin)| Server { base, origin }))
            .collect::<Result<Vec<_>>>()?;
        if servers.is_empty() {
            return Err(ClientError::BadUrl {
                url: server.to_string(),
                reason: "no server URL given".into(),
            });
        }
        let all_plain = servers.iter().all(|s| s.origin.scheme() == "http");
        let http = Transport::new(all_plain).map_err(|e| ClientError::BadUrl {
            url: server.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Client {
            http: Arc::new(http),
            servers: servers.into(),
            active: Arc::new(AtomicUsize::new(0)),
            token: None,
        })
    }

    /// The same client, sending `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The URL of the server in use.
    pub fn server(&self) -> &str {
        &self.current().base
    }

    /// Every server URL this client was given, comma-separated (what `LWR_SERVER` takes).
    pub fn servers(&self) -> String {
        let urls: Vec<&str> = self.servers.iter().map(|s| s.base.as_str()).collect();
        urls.join(",")
    }

    fn current(&self) -> &Server {
        &self.servers[self.active.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Which of the servers `url` is on, if any.
    fn server_of(&self, url: &str) -> Option<usize> {
        self.servers.iter().position(|s| is_on(&s.origin, url))
    }

    /// `url` (on server `from`) moved to server `to`.
    fn moved(&self, url: &reqwest::Url, from: usize, to: usize) -> Option<reqwest::Url> {
        let prefix = self.servers[from].origin.as_str().trim_end_matches('/');
        let rest = url.as_str().strip_prefix(prefix)?;
        reqwest::Url::parse(&format!("{}{rest}", self.servers[to].base)).ok()
    }

    /// A request to `ep` on this server.
    fn request(&self, ep: &Endpoint, timeout: Duration) -> Result<RequestBuilder> {
        self.request_at(ep.method.clone(), &ep.path, timeout)
    }

    /// A request to `location`: a path on this server, or a URL (a manifest's locations
    /// are), which may be anywhere.
    fn request_at(
        &self,
        method: Method,
        location: &str,
        timeout: Duration,
    ) -> Result<RequestBuilder> {
        let url = self.url(location);
        // The token goes only to this server, never to a URL a manifest names elsewhere.
        let ours = self.is_ours(&url);
        let http = match (&self.http.plain, ours) {
            (Some(plain), true) => plain,
            _ => self.http.tls().map_err(|reason| ClientError::Tls {
                url: url.clone(),
                reason: reason.to_string(),
            })?,
        };
        let req = http.request(method, url).timeout(timeout);
        Ok(match &self.token {
            Some(token) if ours => req.bearer_auth(token),
            _ => req,
        })
    }

    /// Whether `url` is on one of this client's servers.
    fn is_ours(&self, url: &str) -> bool {
        self.server_of(url).is_some()
    }

    /// `path` on this server, or `path` itself when it is already a URL (a manifest's
    /// locations are).
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.current().base)
        }
    }

    /// Sends `req` (`method` `what`); an answer other than a success is an error. With
    /// several servers, a connection failure or a server error (5xx) moves the client on to
    /// the next server, and the request is sent there again when its body can be (a streamed
    /// upload cannot: its caller retries it, and then it goes to the next server).
    async fn send(
        &self,
        method: &Method,
        what: &str,
        req: RequestBuilder,
    ) -> Result<reqwest::Response> {
        let (http, req) = req.build_split();
        let mut req = req.map_err(|e| self.unreachable_at(self.server(), e))?;
        let n = self.servers.len();
        let mut tries = 0;
        loop {
            tries += 1;
            let on = self.server_of(req.url().as_str());
            let spare = match on {
                Some(_) if tries < n => req.try_clone(),
                _ => None,
            };
            let answer = http.execute(req).await;
            let failed = match &answer {
                Err(_) => true,
                Ok(resp) => resp.status().is_server_error(),
            };
            if let (true, Some(from)) = (failed && n > 1, on) {
                let to = (from + 1) % n;
                // Only the first of several requests failing at once moves the client on.
                let _ =
                    self.active
                        .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
                if let Some(next) = spare.and_then(|mut r| {
                    let url = self.moved(r.url(), from, to)?;
                    *r.url_mut() = url;
                    Some(r)
                }) {
                    req = next;
                    continue;
                }
            }
            let base = on.map_or_else(|| self.server(), |i| &self.servers[i].base);
            let resp = answer.map_err(|e| self.unreachable_at(base, e))?;
            return self.answer(method, what, base, resp).await;
        }
    }

    /// A received answer: itself when a success, else the error it says.
    async fn answer(
        &self,
        method: &Method,
        what: &str,
        base: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let error = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            // lwr answers /v1 errors with a JSON body (or a line of text); a web page came
            // from something else (a web server, a proxy's error page).
            Err(_) if is_html(&headers, &text) => {
                return Err(ClientError::NotLwr {
                    server: base.to_string(),
                    request: format!("{method} {what}"),
                    status,
                    answer: describe_answer(status, &headers),
                });
            }
            Err(_) if text.trim().is_empty() => status.to_string(),
            Err(_) => text.lines().next().unwrap_or_default().to_string(),
        };
        Err(ClientError::Api {
            method: method.clone(),
            path: what.to_string(),
            status,
            error,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        self.unreachable_at(self.server(), e)
    }

    fn unreachable_at(&self, base: &str, e: reqwest::Error) -> ClientError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        ClientError::Unreachable {
            server: base.to_string(),
            detail,
        }
    }

    /// The body of a successful answer as JSON.
    async fn decode<T: DeserializeOwned>(
        &self,
        method: &Method,
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T> {
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            if is_json(&headers) {
                ClientError::Decode {
                    method: method.clone(),
                    path: what.to_string(),
                    detail: e.to_string(),
                }
            } else {
                ClientError::NotLwr {
                    server: self.server().to_string(),
                    request: format!("{method} {what}"),
                    status,
                    answer: describe_answer(status, &headers),
                }
            }
        })
    }

    /// Sends `ep` with `req` (from [`Client::request`] for it).
    async fn send_ep(&self, ep: &Endpoint, req: RequestBuilder) -> Result<reqwest::Response> {
        self.send(&ep.method, &ep.path, req).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T> {
        let mut req = self.request(ep, timeout)?;
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = self.send_ep(ep, req).await?;
        self.decode(&ep.method, &ep.path, resp).await
    }

    async fn get<T: DeserializeOwned>(&self, ep: Endpoint) -> Result<T> {
        self.json(&ep, None::<&()>, REQUEST_TIMEOUT).await
    }

    async fn post<T: DeserializeOwned>(&self, ep: Endpoint, body: &impl Serialize) -> Result<T> {
        self.json(&ep, Some(body), REQUEST_TIMEOUT).await
    }

    /// Sends `ep` and ignores the body of its successful answer.
    async fn call(&self, ep: Endpoint, req: RequestBuilder) -> Result<()> {
        self.send_ep(&ep, req).await?;
        Ok(())
    }

    pub async fn health(&self) -> Result<Health> {
        self.get(paths::health()).await
    }

    pub async fn submit_graph(&self, sub: &SubmitGraph) -> Result<GraphInfo> {
        let ep = paths::submit_graph();
        let req = self
            .request(&ep, REQUEST_TIMEOUT)?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json_body(sub)?);
        let resp = self.send_ep(&ep, req).await?;
        self.decode(&ep.method, &ep.path, resp).await
    }

    /// [`Client::submit_graph`] with the body streamed from `sub` as it is written: a
    /// 100,000-job graph is never held twice (as itself and as JSON). A streamed body cannot
    /// be sent again, so with several servers the next one gets a body of its own.
    pub async fn submit_graph_streamed(&self, sub: Arc<SubmitGraph>) -> Result<GraphInfo> {
        let ep = paths::submit_graph();
        let mut tries = 0;
        loop {
            tries += 1;
            let (chunks, len) = json_stream(sub.clone())?;
            let req = self
                .request(&ep, REQUEST_TIMEOUT)?
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(chunks));
            // `send` has moved the client on to the next server after such a failure.
            match self.send_ep(&ep, req).await {
                Err(e)
                    if tries < self.servers.len()
                        && (e.is_unreachable()
                            || e.status().is_some_and(|s| s.is_server_error())) =>
                {
                    continue;
                }
                answer => return self.decode(&ep.method, &ep.path, answer?).await,
            }
        }
    }

    /// A graph's state; with `after`, the server holds the answer up to `wait` for a change.
    pub async fn graph(
        &self,
        id: GraphId,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<GraphInfo> {
        let ep = match after {
            Some(seq) => paths::graph(id)
                .query("after", seq)
                .query("wait_ms", wait.as_millis()),
            None => paths::graph(id),
        };
        self.json(&ep, None::<&()>, REQUEST_TIMEOUT + wait).await
    }

    /// The graph once it is finished, or after `wait` with its state then. A server from
    /// before 2026-12 answers at its first change instead, as [`Client::graph`] does.
    pub async fn graph_finished(
        &self,
        id: GraphId,
        after: i64,
        wait: Duration,
    ) -> Result<GraphInfo> {
        let ep = paths::graph(id)
            .query("after", after)
            .query("wait_ms", wait.as_millis())
            .query("finished", true);
        self.json(&ep, None::<&()>, REQUEST_TIMEOUT + wait).await
    }

    pub async fn jobs(&self, graph: Option<GraphId>) -> Result<JobList> {
        self.get(paths::jobs().query_opt("graph", graph)).await
    }

    /// The jobs `query` asks for, oldest first.
    pub async fn jobs_matching(&self, query: &JobsQuery) -> Result<JobList> {
        let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        let ep = paths::jobs()
            .query_opt("graph", query.graph)
            .query_opt("state", Some(states.join(",")).filter(|s| !s.is_empty()))
            .query_opt("name", query.name.as_deref())
            .query_opt("limit", query.limit)
            .query_opt("cursor", query.cursor.as_deref());
        self.get(ep).await
    }

    /// The newest `limit` graphs, newest first.
    pub async fn graphs(&self, limit: u32) -> Result<GraphList> {
        self.get(paths::graphs().query("limit", limit)).await
    }

    pub async fn job(&self, id: JobId) -> Result<JobDetail> {
        self.get(paths::job(id)).await
    }

    pub async fn job_by_name(&self, graph: GraphId, name: &str) -> Result<JobDetail> {
        self.get(paths::job_by_name(graph, name)).await
    }

    /// The stored log of a job's latest run (or of run `run`).
    pub async fn log(&self, job: JobId, run: Option<u32>) -> Result<Vec<u8>> {
        self.log_from(job, run, 0).await
    }

    /// The stored log of a job's latest run (or of run `run`) from byte `offset` on.
    pub async fn log_from(&self, job: JobId, run: Option<u32>, offset: u64) -> Result<Vec<u8>> {
        let ep = paths::job_log(job)
            .query_opt("run", run)
            .query_opt("offset", Some(offset).filter(|o| *o > 0));
        let req = self.request(&ep, REQUEST_TIMEOUT)?;
        let resp = self.send_ep(&ep, req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(bytes.to_vec())
    }

    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken> {
        self.post(paths::create_token(), req).await
    }

    pub async fn tokens(&self) -> Result<TokenList> {
        self.get(paths::tokens()).await
    }

    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo> {
        self.post(paths::revoke_token(id), &()).await
    }

    pub async fn cancel_job(&self, job: JobId) -> Result<CancelResult> {
        self.post(paths::cancel_job(job), &()).await
    }

    pub async fn cancel_graph(&self, graph: GraphId) -> Result<CancelResult> {
        self.post(paths::cancel_graph(graph), &()).await
    }

    /// Removes (or, a dry run, lists) old graphs now; the pass may take a while.
    pub async fn gc(&self, req: &GcRequest) -> Result<GcResult> {
        self.json(&paths::gc(), Some(req), UPLOAD_TIMEOUT).await
    }

    /// Marks a graph for retention to leave (or not).
    pub async fn keep_graph(&self, graph: GraphId, keep: bool) -> Result<KeepRequest> {
        self.json(
            &paths::keep_graph(graph),
            Some(&KeepRequest { keep }),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Marks a job, and so its graph, for retention to leave (or not).
    pub async fn keep_job(&self, job: JobId, keep: bool) -> Result<KeepRequest> {
        self.json(
            &paths::keep_job(job),
            Some(&KeepRequest { keep }),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn retrigger(&self, job: JobId, with_dependents: bool) -> Result<RetriggerResult> {
        self.post(paths::retrigger(job), &RetriggerRequest { with_dependents })
            .await
    }

    /// The job definitions of a graph, as submitted (for a push, with the jobs left out).
    pub async fn graph_spec(&self, graph: GraphId) -> Result<GraphSpec> {
        self.get(paths::graph_spec(graph)).await
    }

    pub async fn add_repo(&self, add: &AddRepo) -> Result<RepoInfo> {
        self.post(paths::add_repo(), add).await
    }

    pub async fn repos(&self) -> Result<RepoList> {
        self.get(paths::repos()).await
    }

    /// Changes a polled repository's branch patterns or interval.
    pub async fn edit_repo(&self, id: i64, edit: &EditRepo) -> Result<RepoInfo> {
        self.json(&paths::edit_repo(id), Some(edit), REQUEST_TIMEOUT)
            .await
    }

    pub async fn remove_repo(&self, id: i64) -> Result<()> {
        let ep = paths::remove_repo(id);
        let req = self.request(&ep, REQUEST_TIMEOUT)?;
        self.call(ep, req).await
    }

    pub async fn pushes(&self, repo: Option<i64>) -> Result<PushList> {
        self.get(paths::pushes().query_opt("repo", repo)).await
    }

    pub async fn push(&self, id: PushId) -> Result<PushInfo> {
        self.get(paths::push(id)).await
    }

    /// Adds job `job`, which push `push`'s graph defines but did not run.
    pub async fn trigger(&self, push: PushId, job: &str) -> Result<TriggerResult> {
        self.post(paths::trigger(push), &TriggerRequest { job: job.into() })
            .await
    }

    pub async fn register_node(&self, reg: &RegisterNode) -> Result<NodeInfo> {
        self.post(paths::register_node(), reg).await
    }

    pub async fn nodes(&self) -> Result<NodeList> {
        self.get(paths::nodes()).await
    }

    /// Disables, enables, quarantines or drains a node, by name (or id).
    pub async fn set_node_state(&self, node: &str, req: &SetNodeState) -> Result<NodeInfo> {
        self.post(paths::node_state(node), req).await
    }

    /// Sets operator labels on a node; an empty value removes one.
    pub async fn label_node(&self, node: &str, req: &LabelNode) -> Result<NodeInfo> {
        self.post(paths::node_labels(node), req).await
    }

    /// Long-polls for work: the server answers as soon as a job is ready, or after the wait.
    pub async fn claim(&self, node: NodeId, req: &ClaimRequest) -> Result<ClaimResponse> {
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(req.wait_ms);
        self.json(&paths::claim(node), Some(req), timeout).await
    }

    pub async fn heartbeat(&self, node: NodeId, hb: &Heartbeat) -> Result<HeartbeatResponse> {
        self.post(paths::heartbeat(node), hb).await
    }

    pub async fn report(&self, node: NodeId, rep: &ReportResults) -> Result<ReportAck> {
        self.post(paths::results(node), rep).await
    }

    /// Uploads a run's log file as a stream, with its SHA-256 for the server to check.
    pub async fn upload_log(
        &self,
        run: RunId,
        node: NodeId,
        file: &std::path::Path,
        sha256: &str,
    ) -> Result<()> {
        let f = open(file).await?;
        let ep = paths::upload_log(run)
            .query("node", node)
            .query("sha256", sha256);
        let req = self.request(&ep, UPLOAD_TIMEOUT)?.body(file_body(f));
        self.call(ep, req).await
    }

    /// The artifact upload of `meta` for a run, with or without its hash.
    fn artifact_upload(
        run: RunId,
        node: NodeId,
        meta: &ArtifactMeta,
        sha256: Option<&str>,
    ) -> Endpoint {
        paths::upload_artifact(run)
            .query("node", node)
            .query("name", &meta.name)
            .query_opt("sha256", sha256)
            .query("kind", &meta.kind)
            .query("path", &meta.path)
            .query("content_type", &meta.content_type)
    }

    /// Uploads one artifact of a run as a stream; the server checks it against `meta.sha256`.
    pub async fn upload_artifact(
        &self,
        run: RunId,
        node: NodeId,
        meta: &ArtifactMeta,
        file: &std::path::Path,
    ) -> Result<()> {
        let (f, len) = open_sized(file).await?;
        let ep = Client::artifact_upload(run, node, meta, Some(&meta.sha256));
        let req = self
            .request(&ep, UPLOAD_TIMEOUT)?
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(file_body(f));
        self.call(ep, req).await
    }

    /// Uploads an artifact reading the file once: its bytes are hashed while they are sent
    /// (staged on the server), then committed with that hash, which the server checks
    /// against what it received. `meta.sha256` is not used. Returns the file's SHA-256.
    pub async fn upload_artifact_hashing(
        &self,
        run: RunId,
        node: NodeId,
        meta: &ArtifactMeta,
        file: &std::path::Path,
    ) -> Result<String> {
        let file_err = |source| ClientError::File {
            path: file.display().to_string(),
            source,
        };
        // A staged upload the server lost (it restarted in between) is sent once more.
        let mut attempts = 2;
        loop {
            attempts -= 1;
            let f = std::fs::File::open(file).map_err(file_err)?;
            let len = f.metadata().map_err(file_err)?.len();
            let (body, hashed) = hashing_body(f);
            let ep = Client::artifact_upload(run, node, meta, None);
            let req = self
                .request(&ep, UPLOAD_TIMEOUT)?
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(body);
            let sent = match self.send_ep(&ep, req).await {
                Ok(resp) => Ok(resp),
                // A read error explains a broken request better; a reader still running
                // waits on a body nobody reads any more, so only a finished one is asked.
                Err(e) if hashed.is_finished() => match hashed.await {
                    Ok(Err(read)) => return Err(file_err(read)),
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            };
            // The server answered after the whole body: the reader has ended.
            let sha256 = match (hashed.await, sent) {
                (Ok(Err(e)), _) => return Err(file_err(e)),
                (Err(e), _) => return Err(file_err(std::io::Error::other(e))),
                (Ok(Ok(_)), Err(e)) => return Err(e),
                (Ok(Ok(None)), Ok(_)) => {
                    return Err(file_err(std::io::Error::other("the upload stopped early")));
                }
                (Ok(Ok(Some(sha256))), Ok(resp)) => {
                    let staged: StagedArtifact = self.decode(&ep.method, &ep.path, resp).await?;
                    let commit = ArtifactCommit {
                        upload: staged.upload,
                        sha256: sha256.clone(),
                    };
                    let ep = paths::commit_artifact(run).query("node", node);
                    match self
                        .json::<serde_json::Value>(&ep, Some(&commit), REQUEST_TIMEOUT)
                        .await
                    {
                        Ok(_) => sha256,
                        Err(e) if attempts > 0 && e.status() == Some(StatusCode::NOT_FOUND) => {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            return Ok(sha256);
        }
    }

    /// Whether the server holds a bundle of `revision` (`lwr push` asks before uploading).
    pub async fn has_bundle(&self, revision: &str) -> Result<bool> {
        let ep = paths::has_bundle(revision);
        let req = self.request(&ep, REQUEST_TIMEOUT)?;
        match self.send_ep(&ep, req).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a git bundle holding `revision`, for nodes that cannot read the repository
    /// it came from. Returns the stored bundle's description.
    pub async fn upload_bundle(
        &self,
        revision: &str,
        file: &std::path::Path,
    ) -> Result<BundleInfo> {
        let (f, len) = open_sized(file).await?;
        let ep = paths::upload_bundle(revision);
        let req = self
            .request(&ep, UPLOAD_TIMEOUT)?
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(file_body(f));
        let resp = self.send_ep(&ep, req).await?;
        self.decode(&ep.method, &ep.path, resp).await
    }

    /// Downloads the server's bundle of the commit of run `run` (which node `node` holds)
    /// to `dest`; `false` when it has none.
    pub async fn download_bundle(
        &self,
        run: RunId,
        node: NodeId,
        dest: &std::path::Path,
    ) -> Result<bool> {
        let file_err = |source| ClientError::File {
            path: dest.display().to_string(),
            source,
        };
        let ep = paths::run_bundle(run).query("node", node);
        let req = self.request(&ep, UPLOAD_TIMEOUT)?;
        let resp = match self.send_ep(&ep, req).await {
            Ok(resp) => resp,
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(file_err)?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            file.write_all(&chunk).await.map_err(file_err)?;
        }
        file.flush().await.map_err(file_err)?;
        Ok(true)
    }

    /// Sends the node's part of a run's manifest, after its artifacts.
    pub async fn put_manifest(&self, run: RunId, node: NodeId, m: &ManifestUpload) -> Result<()> {
        let ep = paths::put_manifest(run).query("node", node);
        let req = self.request(&ep, REQUEST_TIMEOUT)?.json(m);
        self.call(ep, req).await
    }

    /// The manifest at `location` (a URL or a path on this server), read by the v1 reader.
    pub async fn manifest_at(&self, location: &str) -> Result<Manifest> {
        let req = self.request_at(Method::GET, location, REQUEST_TIMEOUT)?;
        self.read_manifest(location, req).await
    }

    async fn read_manifest(&self, location: &str, req: RequestBuilder) -> Result<Manifest> {
        let resp = self.send(&Method::GET, location, req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        lwr_model::manifest::read(&bytes).map_err(|source| ClientError::Manifest {
            url: self.url(location),
            source,
        })
    }

    /// The manifest of a job's latest run (or of run `run`).
    pub async fn job_manifest(&self, job: JobId, run: Option<u32>) -> Result<Manifest> {
        let ep = paths::job_manifest(job).query_opt("run", run);
        let req = self.request(&ep, REQUEST_TIMEOUT)?;
        self.read_manifest(&ep.path, req).await
    }

    /// Downloads `location` to `dest`, streaming, and checks it against `sha256`. On a
    /// mismatch or an error `dest` is left as it was: the bytes go to a temporary file
    /// beside it that replaces `dest` only when verified. Returns the size.
    pub async fn download_verified(
        &self,
        location: &str,
        sha256: &str,
        dest: &std::path::Path,
    ) -> Result<u64> {
        let file_err = |source| ClientError::File {
            path: dest.display().to_string(),
            source,
        };
        let req = self.request_at(Method::GET, location, UPLOAD_TIMEOUT)?;
        let resp = self.send(&Method::GET, location, req).await?;
        let tmp = temp_beside(dest);
        let mut file = tokio::fs::File::create(&tmp).await.map_err(file_err)?;
        let result = async {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.unreachable(e))?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(file_err)?;
            }
            file.flush().await.map_err(file_err)?;
            let got = hex::encode(hasher.finalize());
            if got != sha256 {
                return Err(ClientError::HashMismatch {
                    url: self.url(location),
                    expected: sha256.to_string(),
                    got,
                });
            }
            tokio::fs::rename(&tmp, dest).await.map_err(file_err)?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_the_json_in_a_buffer_of_its_size() {
        let job = |i: usize| lwr_model::JobSpec {
            needs: (0..i % 3).map(|n| format!("j{n}")).collect(),
            ..serde_json::from_str(&format!(r#"{{"name": "j{i}", "run": "echo é {i}"}}"#)).unwrap()
        };
        let sub = SubmitGraph::new(lwr_model::Graph {
            jobs: (0..500).map(job).collect(),
        });
        let body = json_body(&sub).unwrap();
        assert_eq!(body, serde_json::to_vec(&sub).unwrap());
        assert_eq!(body.capacity(), body.len());
    }

    #[tokio::test]
    async fn a_streamed_json_body_is_the_json_in_chunks_of_its_length() {
        let job = |i: usize| lwr_model::JobSpec {
            needs: (0..i % 3).map(|n| format!("j{n}")).collect(),
            ..serde_json::from_str(&format!(r#"{{"name": "j{i}", "run": "echo é {i}"}}"#)).unwrap()
        };
        for n in [1, 3000] {
            let sub = Arc::new(SubmitGraph::new(lwr_model::Graph {
                jobs: (0..n).map(job).collect(),
            }));
            let (chunks, len) = json_stream(sub.clone()).unwrap();
            let chunks: Vec<bytes::Bytes> = chunks.map(|c| c.unwrap()).collect().await;
            assert!(chunks.iter().all(|c| c.len() <= 2 * JSON_CHUNK));
            let body = chunks.concat();
            assert_eq!(body, serde_json::to_vec(&*sub).unwrap());
            assert_eq!(body.len() as u64, len);
        }
        // A body dropped unread ends the writing thread, which holds the graph until then.
        let sub = Arc::new(SubmitGraph::new(lwr_model::Graph {
            jobs: (0..3000).map(job).collect(),
        }));
        drop(json_stream(sub.clone()).unwrap());
        for _ in 0..500 {
            if Arc::strong_count(&sub) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the writing thread still holds the graph");
    }

    #[test]
    fn server_urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:7370/").is_ok());
        assert_eq!(Client::new("http://h:1/").unwrap().server(), "http://h:1");
        assert!(Client::new("127.0.0.1:7370").is_err());
        assert!(Client::new("http://127.0.0.1:7370@evil.net/").is_err());
        assert!(Client::new("http://user:pw@127.0.0.1:7370/").is_err());
    }

    #[test]
    fn the_token_goes_to_this_server_only() {
        let root = Client::new("https://ci.example.com").unwrap();
        assert!(!root.is_ours("https://ci.example.com.evil.net/v1/jobs"));
        assert!(!root.is_ours("https://ci.example.com:1/v1/jobs"));
        assert!(root.is_ours("https://ci.example.com/v1/jobs"));
        let c = Client::new("https://ci.example.com/lwr/").unwrap();
        for elsewhere in [
            "https://ci.example.com.evil.net/lwr/v1/jobs",
            "https://ci.example.com@evil.net/lwr/v1/jobs",
            "https://ci.example.com/lwrx/v1/jobs",
            "https://ci.example.com/other/v1/jobs",
            "http://ci.example.com/lwr/v1/jobs",
            "https://ci.example.com:8443/lwr/v1/jobs",
            "https://evil.net/https://ci.example.com/lwr/",
            "not a url",
        ] {
            assert!(!c.is_ours(elsewhere), "{elsewhere}");
        }
        for ours in [
            "https://ci.example.com/lwr/v1/jobs",
            "https://ci.example.com:443/lwr/v1/runs/1/artifacts/a",
            "https://CI.example.com/lwr",
        ] {
            assert!(c.is_ours(ours), "{ours}");
        }
        let root = Client::new("http://127.0.0.1:7370").unwrap();
        assert!(root.is_ours("http://127.0.0.1:7370/v1/jobs"));
        assert!(!root.is_ours("http://127.0.0.1:73700/v1/jobs"));
        assert!(!root.is_ours("http://127.0.0.1:7370@evil.net/v1/jobs"));
        assert!(!root.is_ours("http://someone@127.0.0.1:7370/v1/jobs"));
    }

    #[test]
    fn a_list_of_servers_is_parsed_and_kept() {
        let c = Client::new("http://a:1, http://b:2/ ,http://c:3").unwrap();
        assert_eq!(c.server(), "http://a:1");
        assert_eq!(c.servers(), "http://a:1,http://b:2,http://c:3");
        assert!(c.is_ours("http://b:2/v1/jobs"));
        assert!(Client::new("http://a:1,b:2").is_err());
        assert!(Client::new(" , ").is_err());
    }

    #[test]
    fn plain_servers_are_asked_without_loading_tls_roots() {
        let c = Client::new("http://a:1,http://b:2").unwrap();
        assert!(c.http.plain.is_some());
        let ask = |location: &str| {
            let req = c.request_at(Method::GET, location, REQUEST_TIMEOUT);
            req.unwrap().build().unwrap().url().to_string()
        };
        assert_eq!(ask("/v1/jobs"), "http://a:1/v1/jobs");
        assert_eq!(ask("http://b:2/v1/jobs"), "http://b:2/v1/jobs");
        assert!(c.http.tls.get().is_none(), "its servers need no roots");
        // A URL elsewhere may be https or redirect to it: the client with roots is made.
        assert_eq!(ask("http://c:3/m.json"), "http://c:3/m.json");
        assert!(c.http.tls.get().is_some_and(|t| t.is_ok()));
        // With an https server it is made at once, and used for everything.
        let tls = Client::new("http://a:1,https://b:2").unwrap();
        assert!(tls.http.plain.is_none());
        assert!(tls.http.tls.get().is_some_and(|t| t.is_ok()));
    }

    #[tokio::test]
    async fn a_plain_server_that_moved_to_https_says_so() {
        let (url, _task) =
            answering_with(301, "location: https://ci.example.com/v1/stats\r\n").await;
        let c = Client::new(&url).unwrap();
        let e = c
            .get::<serde_json::Value>(paths::stats())
            .await
            .expect_err("the plain client does not follow to https");
        let text = e.to_string();
        assert!(
            text.contains("redirected to https://ci.example.com/v1/stats")
                && text.contains("its https URL"),
            "{text}"
        );
    }

    /// A server that redirects to itself forever is followed 10 times, as reqwest's own
    /// policy would, then named as such: no endless loop, no silent cap at 9.
    #[tokio::test]
    async fn a_redirect_loop_is_followed_ten_times_then_refused() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        let _task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let _ = conn.read(&mut buf).await;
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = "HTTP/1.1 302 X\r\nlocation: /v1/stats\r\ncontent-length: 0\r\n\
                              connection: close\r\n\r\n";
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        let c = Client::new(&url).unwrap();
        let e = c
            .get::<serde_json::Value>(paths::stats())
            .await
            .expect_err("a loop never answers");
        assert!(e.to_string().contains("too many redirects"), "{e}");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            11,
            "the request and ten redirects"
        );
    }

    /// A server that answers every request with `status` and an empty JSON object.
    async fn answering(status: u16) -> (String, tokio::task::JoinHandle<()>) {
        answering_with(status, "").await
    }

    /// [`answering`], with `headers` (each line ending in CRLF) added to the answer.
    async fn answering_with(
        status: u16,
        headers: &'static str,
    ) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{headers}connection: close\r\n\r\n{{}}"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_dead_or_failing_server_is_left_for_the_next() {
        // A port nobody listens on: bound, then closed.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (failing, _f) = answering(503).await;
        let (good, _g) = answering(200).await;
        let c = Client::new(&format!("{dead},{failing},{good}")).unwrap();
        let got: serde_json::Value = c.get(paths::stats()).await.expect("the third answers");
        assert_eq!(got, serde_json::json!({}));
        // It stays with the one that answered, also for clones (a node's tasks).
        assert_eq!(c.clone().server(), good);
        let only_bad = Client::new(&format!("{dead},{failing}")).unwrap();
        let e = only_bad.get::<serde_json::Value>(paths::stats()).await;
        assert_eq!(
            e.expect_err("none answers").status(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
