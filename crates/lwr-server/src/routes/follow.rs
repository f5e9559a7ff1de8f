//! Following a job's log: the viewer's Server-Sent Events, replayed from the stored log or
//! the spool and then live until the run ends, and the sweep of spools nobody watches. The
//! routes that lead here are in [`super::reader`] (viewers) and [`super::node`] (the node's
//! streams); the bookkeeping lives in [`crate::live`]; docs/logs.md tells the whole path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lwr_model::api::{JobDetail, RunInfo};
use lwr_model::logstream::{EndEvent, LogEvent, RunEvent, text_boundary};
use lwr_model::{JobId, NodeId, RunId, RunState};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::extract::ApiResult;
use crate::followed::JobFeed;
use crate::live::Viewer;
use crate::shared_live::{self, SharedWant};
use crate::{ApiError, AppState, logs};

/// Most log bytes in one event to a viewer.
const EVENT_BYTES: usize = 256 << 10;
/// A viewer looks at its run's state at least this often, in case a wake-up was missed.
const RECHECK: Duration = Duration::from_secs(2);
// How long a run that ended without a result of its own (cancelled, lost) may take to get
// its log to the server (see the contract in `lwr_model::timing`).
use lwr_model::timing::UPLOAD_GRACE;

/// The run a request means: `number` of the job, or its latest.
pub(crate) fn pick_run(job: &JobDetail, number: Option<u32>) -> Option<&RunInfo> {
    match number {
        Some(n) => job.run_history.iter().find(|r| r.number == n),
        None => job.run_history.last(),
    }
}

/// Every minute, drops the spool of runs that ended while nobody watched them.
pub(crate) async fn sweep(state: Arc<AppState>) {
    if state.shared_live() {
        return crate::shared_live::sweep(state.queue.store().clone()).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        for run in state.live.unwatched() {
            match state.queue.store().run_owner(run).await {
                Ok(Some((_, true))) => {}
                Ok(_) => state.live.stored(run),
                Err(e) => tracing::warn!("live log sweep: {e}"),
            }
        }
    }
}

/// Where a viewer starts: which run of the job, and at which byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    pub run_number: Option<u32>,
    /// A run id from `Last-Event-ID`: resume exactly that run.
    pub run_id: Option<RunId>,
    pub offset: u64,
}

/// Parses `Last-Event-ID` as this module writes event ids: `RUN:OFFSET`.
pub(crate) fn last_event_id(value: &str) -> Option<(RunId, u64)> {
    let (run, offset) = value.trim().split_once(':')?;
    Some((run.parse().ok()?, offset.parse().ok()?))
}

/// `GET /v1/jobs/{id}/log?follow=true`: the log as Server-Sent Events, replayed from
/// `start.offset`, then followed live until the run ends.
pub(crate) async fn sse(state: Arc<AppState>, job_id: JobId, start: Start) -> ApiResult<Response> {
    let job = state.queue.store().job(job_id).await?;
    // A run that does not exist yet is waited for, unless it never will.
    if let Some(n) = start.run_number
        && pick_run(&job, Some(n)).is_none()
        && (n == 0 || job.info.state.is_terminal())
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {job_id} has no run {n}"),
        ));
    }
    if let Some(run) = start.run_id
        && !job.run_history.iter().any(|r| r.id == run)
    {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "Last-Event-ID",
            format!("run {run} is not a run of job {job_id}"),
        ));
    }
    if job.run_history.is_empty() && job.info.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "job {job_id} ended ({}) without running: it has no log",
                job.info.state
            ),
        ));
    }
    let (tx, rx) = mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        // The job as all its viewers see it: one read per change for all of them.
        let feed = state.queue.follow_job(job_id);
        let mut follow = Follow {
            state,
            tx,
            job_id,
            feed,
        };
        if let Err(Stop::Failed(e)) = follow.run(start).await {
            let _ = follow
                .tx
                .send(Event::default().event("error").data(e.body.error))
                .await;
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(lwr_model::timing::SSE_KEEPALIVE))
        .into_response())
}

/// Runs `f` when dropped.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

/// Why a viewer's task ends early.
enum Stop {
    /// The viewer closed its connection.
    Gone,
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<lwr_store::StoreError> for Stop {
    fn from(e: lwr_store::StoreError) -> Stop {
        Stop::Failed(e.into())
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Stop {
    Stop::Failed(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what}: {e}"),
    ))
}

/// One viewer's task.
struct Follow {
    state: Arc<AppState>,
    tx: mpsc::Sender<Event>,
    job_id: JobId,
    feed: JobFeed,
}

impl Follow {
    async fn send(&self, event: Event) -> Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::Gone)
    }

    async fn send_json<T: serde::Serialize>(&self, name: &str, data: &T) -> Result<(), Stop> {
        let event = Event::default()
            .event(name)
            .json_data(data)
            .map_err(|e| internal("encoding an event", e))?;
        self.send(event).await
    }

    /// Sends `bytes` (log from `offset`) as a text event; returns how many bytes went out:
    /// all of them at the end of the log, else up to the last whole character.
    async fn send_text(
        &self,
        run_id: RunId,
        offset: u64,
        bytes: &[u8],
        at_end: bool,
    ) -> Result<usize, Stop> {
        let n = text_boundary(bytes, at_end);
        if n == 0 {
            return Ok(0);
        }
        let text = String::from_utf8_lossy(&bytes[..n]).into_owned();
        let end = offset + n as u64;
        let event = Event::default()
            .event("log")
            .id(format!("{run_id}:{end}"))
            .json_data(LogEvent {
                run_id,
                offset,
                end,
                text,
            })
            .map_err(|e| internal("encoding an event", e))?;
        self.send(event).await?;
        self.state.live.count_viewer_bytes(n);
        Ok(n)
    }

    async fn run(&mut self, start: Start) -> Result<(), Stop> {
        let store = self.state.queue.store().clone();
        // A job that has not started yet: wait for its run.
        let run = loop {
            let job = self.feed.latest().await?;
            let run = match start.run_id {
                Some(id) => job.run_history.iter().find(|r| r.id == id),
                None => pick_run(&job, start.run_number),
            };
            if let Some(run) = run {
                break run.clone();
            }
            if job.info.state.is_terminal() {
                return Err(Stop::Failed(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "job {} ended ({}) without running",
                        self.job_id, job.info.state
                    ),
                )));
            }
            self.wait_change().await?;
        };
        self.send_json(
            "run",
            &RunEvent {
                run_id: run.id,
                number: run.number,
                node: run.node.clone(),
            },
        )
        .await?;
        let mut offset = start.offset;
        let node_id = match store.run_owner(run.id).await? {
            Some((node_id, true)) => node_id,
            _ => return self.finish(run.id, offset, None).await,
        };
        if self.state.shared_live() {
            return self.run_shared(run.id, node_id, offset).await;
        }
        // Following makes the run wanted: its node starts streaming.
        let viewer = self.state.live.follow(run.id, node_id);
        let live = viewer.run.clone();
        let mut held_rx = live.subscribe();
        let mut check = true;
        // When the run was first seen ended, and how: its node may still be sending the end
        // of the log (a cancelled run's last words) and uploading it.
        let mut ended: Option<(Instant, RunState)> = None;
        loop {
            if check && ended.is_none() {
                let (state, _) = self.run_info(run.id).await?;
                if state != RunState::Running {
                    ended = Some((Instant::now(), state));
                }
            }
            check = false;
            let held = *held_rx.borrow_and_update();
            if held.size > offset && !held.stored {
                let (at, from) = (offset, live.clone());
                let bytes = tokio::task::spawn_blocking(move || from.read(at, EVENT_BYTES))
                    .await
                    .map_err(|e| internal("reading the spool", e))?
                    .map_err(|e| internal("reading the spool", e))?;
                let at_end = held.complete && at + bytes.len() as u64 == held.size;
                let sent = self.send_text(run.id, at, &bytes, at_end).await?;
                offset += sent as u64;
                if sent > 0 {
                    continue;
                }
            }
            let done = match ended {
                _ if held.stored => true,
                None => false,
                // A result means the log, if any, was uploaded before it.
                Some((_, RunState::Succeeded | RunState::Failed)) => true,
                Some((since, _)) => held.complete || since.elapsed() >= UPLOAD_GRACE,
            };
            if done {
                return self.finish(run.id, offset, Some(viewer)).await;
            }
            // Caught up: wait for more bytes, the run's end, or its log.
            let grace = ended.map_or(RECHECK, |(since, _)| {
                UPLOAD_GRACE.saturating_sub(since.elapsed())
            });
            tokio::select! {
                r = held_rx.changed() => check |= r.is_err(),
                r = self.wait_change() => { r?; check = true; }
                _ = tokio::time::sleep(grace) => {}
            }
        }
    }

    /// [`Follow::run`] on servers sharing a database: the pieces come from the database,
    /// whichever server received them, and the want that makes the node stream is a row
    /// there ([`crate::shared_live`]).
    async fn run_shared(
        &mut self,
        run_id: RunId,
        node_id: NodeId,
        mut offset: u64,
    ) -> Result<(), Stop> {
        let store = self.state.queue.store().clone();
        let _want = SharedWant::start(&store, run_id, node_id).await?;
        self.state.live.count_shared_viewer(true);
        let live = self.state.live.clone();
        let _counted = scopeguard(move || live.count_shared_viewer(false));
        let mut changes = self.state.queue.subscribe_changes();
        let mut ended: Option<(Instant, RunState)> = None;
        loop {
            if ended.is_none() {
                let (state, _) = self.run_info(run_id).await?;
                if state != RunState::Running {
                    ended = Some((Instant::now(), state));
                }
            }
            let (bytes, held) = store.live_read(run_id, offset, EVENT_BYTES).await?;
            if !bytes.is_empty() {
                let at_end = held.complete && offset + bytes.len() as u64 == held.size;
                let sent = self.send_text(run_id, offset, &bytes, at_end).await?;
                offset += sent as u64;
                if sent > 0 {
                    continue;
                }
            }
            let done = match ended {
                None => false,
                // A result means the log, if any, was uploaded before it.
                Some((_, RunState::Succeeded | RunState::Failed)) => true,
                Some((since, _)) => held.complete || since.elapsed() >= UPLOAD_GRACE,
            };
            if done {
                return self.finish(run_id, offset, None).await;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(shared_live::VIEWER_POLL) => {}
                _ = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Waits for a newer read of the job (one follows each change, and [`RECHECK`]);
    /// fails when the viewer left.
    async fn wait_change(&mut self) -> Result<(), Stop> {
        let (feed, tx) = (&mut self.feed, &self.tx);
        tokio::select! {
            _ = feed.changed() => Ok(()),
            _ = tokio::time::sleep(RECHECK) => Ok(()),
            _ = tx.closed() => Err(Stop::Gone),
        }
    }

    /// The run's state and the size of its stored log, as of the latest read of the job.
    async fn run_info(&mut self, run_id: RunId) -> Result<(RunState, u64), Stop> {
        let job = self.feed.latest().await?;
        Ok(job
            .run_history
            .iter()
            .find(|r| r.id == run_id)
            .map_or((RunState::Exception, 0), |r| (r.state, r.log_size)))
    }

    /// The run's log is whole: the rest of it from the store (or, when its node could not
    /// store it, from the spool the viewer still holds), then the end with the run's state.
    async fn finish(
        &mut self,
        run_id: RunId,
        mut offset: u64,
        viewer: Option<Viewer>,
    ) -> Result<(), Stop> {
        // The node uploads the log just before it reports the result: wait for the result
        // (briefly), so that `end` says how the run ended.
        let deadline = Instant::now() + UPLOAD_GRACE;
        let (state, log_size) = loop {
            let (state, size) = self.run_info(run_id).await?;
            if state != RunState::Running || Instant::now() >= deadline {
                break (state, size);
            }
            let (feed, tx) = (&mut self.feed, &self.tx);
            tokio::select! {
                _ = feed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tx.closed() => return Err(Stop::Gone),
            }
        };
        let spool = viewer.as_ref().map(|v| v.run.clone());
        loop {
            let read = match logs::read_at(&self.state, run_id, offset, EVENT_BYTES).await? {
                Some(read) => read,
                // No stored log (its node could not store it, or an earlier version stored
                // it in another server's data dir): what the spool holds, if anything.
                None if log_size > 0 && spool.is_none() => {
                    return Err(Stop::Failed(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!(
                            "the log of run {run_id} ({log_size} bytes) is neither in the \
                             artifact store nor in this server's data dir"
                        ),
                    )));
                }
                None => match spool.clone() {
                    Some(live) => {
                        let size = live.held().size;
                        let at = offset;
                        tokio::task::spawn_blocking(move || live.read(at, EVENT_BYTES))
                            .await
                            .map_err(|e| internal("reading the spool", e))?
                            .map(|bytes| (bytes, size))
                            .map_err(|e| internal(&format!("reading the log of run {run_id}"), e))?
                    }
                    None => (Vec::new(), 0),
                },
            };
            let (bytes, size) = read;
            if bytes.is_empty() {
                return self
                    .send_json(
                        "end",
                        &EndEvent {
                            run_id,
                            size: size.max(offset),
                            state,
                        },
                    )
                    .await;
            }
            let at_end = offset + bytes.len() as u64 >= size;
            let sent = self.send_text(run_id, offset, &bytes, at_end).await?;
            offset += sent as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        assert_eq!(last_event_id("12:345"), Some((RunId(12), 345)));
        assert_eq!(last_event_id(" 1:0 "), Some((RunId(1), 0)));
        assert_eq!(last_event_id("12"), None);
        assert_eq!(last_event_id("a:1"), None);
        assert_eq!(last_event_id("1:-1"), None);
    }
}
