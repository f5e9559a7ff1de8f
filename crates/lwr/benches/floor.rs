//! The floor of `bench/builds` (issue 18): a scheduler that costs nothing. It answers the
//! few requests the benchmark's Python client makes, with the same JSON shapes as `lwr server`,
//! and keeps everything in memory: no database, no durability, no logs, no files. Its nodes are
//! tasks in the same process, one per slot, that take the next pending job from an in-memory
//! queue (woken by a `Notify`, no polling), spawn `true` directly and mark the job ended.
//! What `bench/builds` measures against it is the cost of the harness itself (Python clients,
//! HTTP, JSON, process creation) on this machine: the best ratio any implementation could reach.
//!
//! ```text
//! cargo bench -p lwr --bench floor -- --listen 127.0.0.1:PORT [--nodes 2] [--slots 1]
//! LWR_BENCH_FLOOR=1 bench/builds [N] [RUNS]
//! ```
//! Serves `GET /v1/health`, `GET /v1/nodes`, `POST /v1/graphs` (the body parsed into a
//! `serde_json::Value`, every job of `graph.jobs` queued) and `GET /v1/jobs` (the last 1000
//! jobs, with the fields `lwr server` lists).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// `lwr server` lists at most this many jobs without a cursor (the newest ones).
const LISTED: usize = 1000;

struct Args {
    listen: String,
    nodes: usize,
    slots: usize,
}

fn args() -> Result<Args> {
    let (mut listen, mut nodes, mut slots) = (None, 2, 1);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` adds `--bench`.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--nodes" => nodes = num(&value)?,
            "--slots" => slots = num(&value)?,
            _ => bail!("unknown flag {flag} (--listen ADDR [--nodes N] [--slots S])"),
        }
    }
    if nodes == 0 || slots == 0 {
        bail!("--nodes and --slots must be at least 1");
    }
    Ok(Args {
        listen: listen.context("--listen ADDR is required")?,
        nodes,
        slots,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

struct Job {
    name: String,
    graph_id: u64,
    state: JobState,
    /// Index of the node that ran it.
    node: Option<usize>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

#[derive(Default)]
struct Inner {
    graphs: u64,
    /// Job `i` has id `i + 1`.
    jobs: Vec<Job>,
    /// Indexes into `jobs`, oldest first.
    pending: VecDeque<usize>,
}

struct Floor {
    inner: Mutex<Inner>,
    wake: Notify,
    node_names: Vec<String>,
    slots: usize,
}

impl Floor {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock ends the benchmark anyway: keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job as `GET /v1/jobs` of `lwr server` lists it (`lwr_model::api::JobInfo`).
#[derive(Serialize)]
struct JobInfo<'a> {
    id: u64,
    graph_id: u64,
    name: &'a str,
    state: &'static str,
    node: Option<&'a str>,
    runs: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<&'a str>,
}

#[derive(Serialize)]
struct JobList<'a> {
    jobs: Vec<JobInfo<'a>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": message }).to_string().into_bytes();
    json_response(status, body)
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"ok":true}"#.to_vec())
}

async fn nodes(State(floor): State<Arc<Floor>>) -> Response {
    let nodes: Vec<Value> = floor
        .node_names
        .iter()
        .enumerate()
        .map(
            |(i, name)| json!({ "id": i + 1, "name": name, "slots": floor.slots, "state": "idle" }),
        )
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "nodes": nodes }).to_string().into_bytes(),
    )
}

async fn submit(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")),
    };
    let Some(specs) = request["graph"]["jobs"]
        .as_array()
        .filter(|j| !j.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "graph.jobs: a non-empty array is needed",
        );
    };
    let names: Vec<String> = specs
        .iter()
        .map(|j| j["name"].as_str().unwrap_or("job").to_owned())
        .collect();
    let count = names.len();
    let created_at = now();
    let id = {
        let mut inner = floor.lock();
        inner.graphs += 1;
        let graph_id = inner.graphs;
        for name in names {
            let index = inner.jobs.len();
            inner.jobs.push(Job {
                name,
                graph_id,
                state: JobState::Pending,
                node: None,
                started_at: None,
                finished_at: None,
            });
            inner.pending.push_back(index);
        }
        graph_id
    };
    for _ in 0..count {
        floor.wake.notify_one();
    }
    // The shape of `lwr server`'s answer (`GraphInfo`).
    let text = |k: &str| request[k].as_str().unwrap_or("").to_owned();
    let answer = json!({
        "id": id,
        "repository": text("repository"),
        "branch": text("branch"),
        "revision": text("revision"),
        "created_at": created_at,
        "counts": {"pending": count, "running": 0, "succeeded": 0, "failed": 0,
                   "exception": 0, "blocked": 0, "cancelled": 0},
        "finished": false,
        "seq": id,
    });
    json_response(StatusCode::CREATED, answer.to_string().into_bytes())
}

async fn jobs(State(floor): State<Arc<Floor>>) -> Response {
    let inner = floor.lock();
    let first = inner.jobs.len().saturating_sub(LISTED);
    let list = JobList {
        jobs: inner.jobs[first..]
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let ran = job.node.is_some();
                JobInfo {
                    id: (first + i + 1) as u64,
                    graph_id: job.graph_id,
                    name: &job.name,
                    state: match job.state {
                        JobState::Pending => "pending",
                        JobState::Running => "running",
                        JobState::Succeeded => "succeeded",
                        JobState::Failed => "failed",
                    },
                    node: job.node.map(|n| floor.node_names[n].as_str()),
                    runs: u32::from(ran),
                    reason: match job.state {
                        JobState::Pending => Some("ready, waiting for a node"),
                        JobState::Failed => Some("exit code 1"),
                        _ => None,
                    },
                    placement: ran.then_some("fastest matching"),
                    started_at: job.started_at.as_deref(),
                    finished_at: job.finished_at.as_deref(),
                }
            })
            .collect(),
    };
    match serde_json::to_vec(&list) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The next pending job, marked running on `node`; waits for one.
async fn take(floor: &Floor, node: usize) -> usize {
    loop {
        let notified = floor.wake.notified();
        tokio::pin!(notified);
        // Registered before the queue is looked at: a job queued in between wakes it.
        notified.as_mut().enable();
        {
            let mut inner = floor.lock();
            if let Some(index) = inner.pending.pop_front() {
                let job = &mut inner.jobs[index];
                job.state = JobState::Running;
                job.node = Some(node);
                job.started_at = Some(now());
                return index;
            }
        }
        notified.await;
    }
}

/// One slot of an in-process node: runs `true` for every job it takes.
async fn slot(floor: Arc<Floor>, node: usize) {
    loop {
        let index = take(&floor, node).await;
        let status = tokio::process::Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        let ok = match status {
            Ok(s) => s.success(),
            Err(e) => {
                eprintln!("floor: cannot run true: {e}");
                false
            }
        };
        let mut inner = floor.lock();
        let job = &mut inner.jobs[index];
        job.state = if ok {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        job.finished_at = Some(now());
    }
}

async fn serve(a: Args) -> Result<()> {
    let floor = Arc::new(Floor {
        inner: Mutex::new(Inner::default()),
        wake: Notify::new(),
        node_names: (1..=a.nodes).map(|i| format!("w{i}")).collect(),
        slots: a.slots,
    });
    for node in 0..a.nodes {
        for _ in 0..a.slots {
            tokio::spawn(slot(floor.clone(), node));
        }
    }
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/nodes", get(nodes))
        .route("/v1/graphs", post(submit))
        .route("/v1/jobs", get(jobs))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    eprintln!(
        "floor: listening on {} with {} nodes of {} slots",
        a.listen, a.nodes, a.slots
    );
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(serve(a))
}
