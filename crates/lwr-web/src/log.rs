//! `/jobs/{id}/log`: the log viewer. A stored log shows its end (at most [`TAIL_LINES`]
//! lines or [`TAIL_BYTES`]), rendered with its colours and numbered lines on the server, and
//! loads earlier parts on request (`/log/part`), so a 100 MB log opens as fast as a small
//! one. A running job's log comes over the same replay-then-follow stream as `lwr logs -f`
//! (`/log/events` is `GET /v1/jobs/{id}/log?follow=true` behind the session cookie): opening
//! the page is what makes the node start streaming.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, OnceLock};

use crate::api::ApiCall;
use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use lwr_model::api::{JobDetail, RunInfo};
use lwr_model::logstream::LiveToggle;
use lwr_model::{JobId, RunId, RunState};
use lwr_server::AppState;
use maud::{PreEscaped, html};
use serde::{Deserialize, Serialize};

use crate::access::Viewer;
use crate::ansi::{Style, line_to_html};
use crate::page::{WebError, WebResult, frame, post_button, state_badge};

/// Most lines a page shows at first.
pub const TAIL_LINES: usize = 5_000;
/// Most bytes a page shows at first, and the size of an earlier part loaded on request.
pub const TAIL_BYTES: u64 = 1 << 20;
/// Line counts remembered (a stored log never changes, so a count stays true).
const COUNT_CACHE: usize = 256;

#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    run: Option<u32>,
    /// For `/log/part`: the byte the part ends at (a line start).
    #[serde(default)]
    end: Option<u64>,
}

fn pick_run(job: &JobDetail, number: Option<u32>) -> Option<&RunInfo> {
    match number {
        Some(n) => job.run_history.iter().find(|r| r.number == n),
        None => job.run_history.last(),
    }
}

fn io_error(what: &str, e: std::io::Error) -> WebError {
    WebError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot read {what}: {e}"),
    )
}

/// Where the part of a log shown first begins: a line start at most [`TAIL_BYTES`] and
/// [`TAIL_LINES`] lines before `size`.
pub fn tail_start(file: &mut impl ReadSeek, size: u64) -> std::io::Result<u64> {
    let from = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((size - from) as usize);
    file.take(size - from).read_to_end(&mut buf)?;
    // The last byte is a newline or the end of an unfinished line: not a line start.
    let body = &buf[..buf.len().saturating_sub(1)];
    let mut lines = 0;
    for nl in memchr::memrchr_iter(b'\n', body) {
        lines += 1;
        if lines == TAIL_LINES {
            return Ok(from + nl as u64 + 1);
        }
    }
    if from == 0 {
        return Ok(0);
    }
    // Cut to the first whole line of the window.
    Ok(match memchr::memchr(b'\n', &buf) {
        Some(nl) => from + nl as u64 + 1,
        None => size,
    })
}

/// Something to read a log from.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Newlines in the first `upto` bytes of `file`.
pub fn count_lines(file: &mut impl ReadSeek, upto: u64) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = upto;
    let mut lines = 0u64;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        left -= n as u64;
    }
    Ok(lines)
}

/// [`count_lines`] for a stored log, remembered by run and offset.
fn cached_count(run: RunId, path: &FsPath, upto: u64) -> std::io::Result<u64> {
    static CACHE: OnceLock<Mutex<HashMap<(RunId, u64), u64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if upto == 0 {
        return Ok(0);
    }
    if let Some(n) = cache.lock().ok().and_then(|c| c.get(&(run, upto)).copied()) {
        return Ok(n);
    }
    let n = count_lines(&mut std::fs::File::open(path)?, upto)?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= COUNT_CACHE {
            c.clear();
        }
        c.insert((run, upto), n);
    }
    Ok(n)
}

/// The lines of `text` as the viewer's rows, numbered from `first`.
fn rows(text: &str, first: u64) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut style = Style::default();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return out;
    }
    for (i, line) in body.split('\n').enumerate() {
        let n = first + i as u64;
        out.push_str(&format!(
            "<div class=\"l\" id=\"L{n}\"><a class=\"n\" href=\"#L{n}\" data-n=\"{n}\"></a><span class=\"t\">{}</span></div>",
            line_to_html(line, &mut style)
        ));
    }
    out
}

/// A stored log's tail: `(first byte shown, number of its first line, text)`.
fn read_tail(run: RunId, path: &FsPath) -> std::io::Result<(u64, u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let start = tail_start(&mut file, size)?;
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((size - start) as usize);
    file.take(size - start).read_to_end(&mut buf)?;
    let first = cached_count(run, path, start)? + 1;
    Ok((start, first, String::from_utf8_lossy(&buf).into_owned()))
}

/// `GET /jobs/{id}/log`.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<JobId>,
    Query(q): Query<LogQuery>,
) -> WebResult<Response> {
    let job = state.queue.store().job(id).await?;
    let name = job.info.name.clone();
    let Some(run) = pick_run(&job, q.run).cloned() else {
        let msg = match q.run {
            Some(n) => format!("job {id} ({name}) has no run {n}"),
            None => format!("job {id} ({name}) has not run yet ({})", job.info.state),
        };
        return Err(WebError::new(StatusCode::NOT_FOUND, msg));
    };
    let copy = match run.state {
        RunState::Running => None,
        _ => lwr_server::logs::local_copy(&state, run.id).await?,
    };
    let stored = match copy {
        // Not uploaded yet (a cancelled run's node sends it a little later): follow.
        None => None,
        Some(p) => {
            let r = run.id;
            match tokio::task::spawn_blocking(move || read_tail(r, &p)).await {
                Ok(Ok(tail)) => Some(tail),
                // Not uploaded yet (a cancelled run's node sends it a little later): follow.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
                Ok(Err(e)) => return Err(io_error("the log", e)),
                Err(e) => return Err(io_error("the log", std::io::Error::other(e))),
            }
        }
    };
    let may_live =
        run.state == RunState::Running && viewer.may(Method::POST, "/jobs/{id}/log/live");
    let title = format!("log · {name}");
    let body = html! {
        div.log-head {
            h1 data-job=(name) data-state=(job.info.state.as_str()) {
                a href={ "/jobs/" (id) } { (name) } " " (state_badge(job.info.state))
                small { " run " (run.number) " on " (run.node) }
            }
            div.log-tools {
                label { input #follow type="checkbox" checked; " follow" }
                input #search type="search" placeholder="search (/)" size="18";
                button #prev type="button" title="previous match (N)" { "↑" }
                button #next type="button" title="next match (n)" { "↓" }
                span #hits {}
                a href={ "/jobs/" (id) "/log/raw?run=" (run.number) } { "raw" }
                @if may_live {
                    (post_button(&viewer, &format!("/jobs/{id}/log/live"), "live on", &[("live", "true")]))
                    (post_button(&viewer, &format!("/jobs/{id}/log/live"), "live off", &[("live", "false")]))
                }
                @for other in job.run_history.iter().rev().filter(|r| r.number != run.number).take(5) {
                    a href={ "/jobs/" (id) "/log?run=" (other.number) } { "run " (other.number) }
                }
            }
        }
        @match &stored {
            Some((start, first, text)) => {
                div #log.log data-job-id=(id) data-run=(run.number) data-mode="stored"
                    data-start=(start) data-first=(first) {
                    @if *start > 0 {
                        button #earlier type="button" { "load earlier lines (" (start) " bytes before)" }
                    }
                    div #lines { (PreEscaped(rows(text, *first))) }
                }
                p #log-status.log-status { "end of log · " (run.state.as_str()) }
            }
            None => {
                div #log.log data-job-id=(id) data-run=(run.number) data-mode="live" data-start="0" data-first="1" {
                    div #lines {}
                }
                p #log-status.log-status {
                    noscript { "This run is going: its log streams with JavaScript on, or read it when it ends. " }
                    "waiting for the node…"
                }
            }
        }
    };
    Ok(frame(&title, &viewer, "log-page", body))
}

#[derive(Debug, Serialize)]
struct Part {
    start: u64,
    text: String,
}

/// `GET /jobs/{id}/log/part?end=N`: the whole lines of about [`TAIL_BYTES`] before byte
/// `end`, as JSON `{start, text}`.
pub async fn part(
    State(state): State<Arc<AppState>>,
    Path(id): Path<JobId>,
    Query(q): Query<LogQuery>,
) -> WebResult<Response> {
    let job = state.queue.store().job(id).await?;
    let Some(run) = pick_run(&job, q.run) else {
        return Err(WebError::new(StatusCode::NOT_FOUND, "no such run"));
    };
    let Some(path) = lwr_server::logs::local_copy(&state, run.id).await? else {
        return Err(WebError::new(StatusCode::NOT_FOUND, "no stored log"));
    };
    let end = q.end.unwrap_or(0);
    let part = tokio::task::spawn_blocking(move || -> std::io::Result<Part> {
        let mut file = std::fs::File::open(&path)?;
        let end = end.min(file.metadata()?.len());
        let from = end.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::with_capacity((end - from) as usize);
        file.take(end - from).read_to_end(&mut buf)?;
        let skip = if from == 0 {
            0
        } else {
            memchr::memchr(b'\n', &buf).map_or(buf.len(), |nl| nl + 1)
        };
        Ok(Part {
            start: from + skip as u64,
            text: String::from_utf8_lossy(&buf[skip..]).into_owned(),
        })
    })
    .await
    .map_err(|e| io_error("the log", std::io::Error::other(e)))?
    .map_err(|e| io_error("the log", e))?;
    Ok(axum::Json(part).into_response())
}

/// `GET /jobs/{id}/log/raw`: the API's stored log, streamed.
pub async fn raw(
    api: ApiCall,
    Path(id): Path<JobId>,
    Query(q): Query<LogQuery>,
) -> WebResult<Response> {
    let run = q.run.map(|n| format!("?run={n}")).unwrap_or_default();
    api.ok::<()>(Method::GET, &format!("/v1/jobs/{id}/log{run}"), None)
        .await
}

/// `GET /jobs/{id}/log/events`: the API's follow stream (`run`, `log`, `end` events), with
/// the browser's `Last-Event-ID`, so a resumed stream repeats nothing.
pub async fn events(
    api: ApiCall,
    Path(id): Path<JobId>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let run = q.run.map(|n| format!("&run={n}")).unwrap_or_default();
    let resume: Vec<_> = headers
        .get("last-event-id")
        .map(|v| (header::HeaderName::from_static("last-event-id"), v.clone()))
        .into_iter()
        .collect();
    let resp = api
        .call(
            Method::GET,
            &format!("/v1/jobs/{id}/log?follow=true{run}"),
            &resume,
        )
        .await?;
    if !resp.status().is_success() {
        // EventSource shows no body: say it as an event the viewer prints.
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<lwr_model::api::ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| status.to_string());
        return Err(WebError::new(status, message));
    }
    Ok(resp)
}

/// `POST /jobs/{id}/log/live`: the API's live toggle.
pub async fn live(
    api: ApiCall,
    Path(id): Path<JobId>,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let live = form.get("live").is_some_and(|v| v == "true");
    api.ok(
        Method::PUT,
        &format!("/v1/jobs/{id}/log/live"),
        Some(&LiveToggle { live }),
    )
    .await?;
    Ok(Redirect::to(&format!("/jobs/{id}/log")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn log(lines: usize) -> Vec<u8> {
        (1..=lines)
            .map(|i| format!("line {i}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_small_log_is_shown_whole() {
        let data = log(10);
        let size = data.len() as u64;
        assert_eq!(tail_start(&mut Cursor::new(data), size).unwrap(), 0);
    }

    #[test]
    fn a_long_log_shows_its_last_lines_from_a_line_start() {
        let data = log(TAIL_LINES + 100);
        let size = data.len() as u64;
        let mut c = Cursor::new(data.clone());
        let start = tail_start(&mut c, size).unwrap() as usize;
        assert_eq!(data[start - 1], b'\n');
        let shown = std::str::from_utf8(&data[start..]).unwrap();
        assert_eq!(shown.lines().count(), TAIL_LINES);
        assert!(shown.starts_with("line 101\n"), "{}", &shown[..20]);
        assert_eq!(count_lines(&mut c, start as u64).unwrap(), 100);
    }

    #[test]
    fn a_huge_log_shows_at_most_its_last_bytes() {
        // Few, long lines: the byte bound applies before the line bound.
        let line = format!("{}\n", "x".repeat(9_999));
        let data = line.repeat(300).into_bytes();
        let size = data.len() as u64;
        let start = tail_start(&mut Cursor::new(data.clone()), size).unwrap();
        assert!(size - start <= TAIL_BYTES);
        assert_eq!(start % 10_000, 0, "starts at a line");
    }

    #[test]
    fn rows_are_numbered_and_linkable() {
        let html = rows("a\n\x1b[31mb\n", 7);
        assert!(html.contains("id=\"L7\""));
        assert!(html.contains("href=\"#L8\""));
        assert!(html.contains("<span class=\"f1\">b</span>"));
        assert_eq!(html.matches("class=\"l\"").count(), 2);
        // An unfinished last line is a line too.
        assert_eq!(rows("a\nb", 1).matches("class=\"l\"").count(), 2);
        assert_eq!(rows("", 1), "");
    }
}
