//! The lwr node agent.
//!
//! A node registers its properties, long-polls the server for jobs it can run, and runs each
//! one detached: in a fresh directory, in its own process group, with output going to a log
//! file on the node's own disk. Results are written to disk before they are reported and
//! reported until the server takes them, so neither a server restart nor a node restart
//! loses one.

mod exec;
pub mod props;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_client::{Client, ClientError, StatusCode};
use lwr_model::api::{Assignment, ClaimRequest, Heartbeat, RegisterNode};
use thiserror::Error;
use tokio::sync::{Semaphore, oneshot};

use crate::exec::{Launch, Stop};
use crate::report::Reporter;

/// How long one claim waits on the server for a job before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// Longest pause between attempts to reach a server that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub server: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub slots: u32,
    pub work_dir: PathBuf,
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot use work dir {dir}: {source}")]
    WorkDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the server refused node '{name}': {source}")]
    Refused {
        name: String,
        #[source]
        source: ClientError,
    },
}

/// State shared by the node's tasks.
struct Node {
    config: NodeConfig,
    client: Client,
    id: AtomicI64,
    lease_secs: AtomicU64,
    /// Runs in progress, each with the handle that stops it.
    running: Mutex<HashMap<i64, oneshot::Sender<Stop>>>,
    reporter: Reporter,
}

/// Runs the node until `shutdown` resolves; then it claims nothing more, lets its running
/// jobs finish and reports their results.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    for sub in ["jobs", "logs", "results", "pids"] {
        let dir = config.work_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::WorkDir { dir, source })?;
    }
    let client = Client::new(&config.server)?;
    let reporter = Reporter::start(client.clone(), config.work_dir.clone())
        .map_err(|source| NodeError::WorkDir { dir: config.work_dir.clone(), source })?;
    let node = Arc::new(Node {
        client,
        id: AtomicI64::new(0),
        lease_secs: AtomicU64::new(30),
        running: Mutex::new(HashMap::new()),
        reporter,
        config,
    });
    node.register().await?;
    node.reporter.set_node(node.id.load(Ordering::SeqCst));
    tracing::info!(
        "node {} (id {}) serving {} with {} slots, work dir {}",
        node.config.name,
        node.id.load(Ordering::SeqCst),
        node.config.server,
        node.config.slots,
        node.config.work_dir.display()
    );
    let heartbeat = tokio::spawn(node.clone().heartbeat_loop());
    let slots = Arc::new(Semaphore::new(node.config.slots.max(1) as usize));
    tokio::select! {
        _ = node.clone().claim_loop(slots.clone()) => {}
        _ = shutdown => tracing::info!("node {} stopping: no new jobs; finishing running ones", node.config.name),
    }
    // Every slot back means every job has ended and its result is queued.
    let _all = slots.acquire_many(node.config.slots.max(1)).await;
    heartbeat.abort();
    node.reporter.flush(Duration::from_secs(10)).await;
    Ok(())
}

impl Node {
    fn id(&self) -> i64 {
        self.id.load(Ordering::SeqCst)
    }

    /// Registers, retrying while the server cannot be reached.
    async fn register(&self) -> Result<(), NodeError> {
        let reg = RegisterNode {
            name: self.config.name.clone(),
            properties: props::discover(self.config.tags.clone()),
            slots: self.config.slots.max(1),
        };
        let mut backoff = Backoff::new();
        loop {
            match self.client.register_node(&reg).await {
                Ok(info) => {
                    self.id.store(info.id, Ordering::SeqCst);
                    self.reporter.set_node(info.id);
                    return Ok(());
                }
                Err(e) if e.is_unreachable() || e.status().is_some_and(|s| s.is_server_error()) => {
                    backoff.wait(&format!("registering with {}: {e}", self.config.server)).await;
                }
                Err(source) => {
                    return Err(NodeError::Refused { name: self.config.name.clone(), source });
                }
            }
        }
    }

    async fn claim_loop(self: Arc<Self>, slots: Arc<Semaphore>) {
        let mut backoff = Backoff::new();
        loop {
            let Ok(first) = slots.clone().acquire_owned().await else { return };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let req = ClaimRequest { max: permits.len() as u32, wait_ms: CLAIM_WAIT.as_millis() as u64 };
            match self.client.claim(self.id(), &req).await {
                Ok(resp) => {
                    backoff.reset();
                    for assignment in resp.assignments {
                        let Some(permit) = permits.pop() else {
                            tracing::error!("server sent more jobs than asked for; run {} left to expire", assignment.run_id);
                            continue;
                        };
                        self.lease_secs.store(assignment.lease_secs, Ordering::Relaxed);
                        let node = self.clone();
                        tokio::spawn(async move {
                            node.run_job(assignment).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                    tracing::warn!("the server does not know this node any more; registering again");
                    if let Err(e) = self.register().await {
                        tracing::error!("{e}");
                        backoff.wait("registering again").await;
                    }
                }
                Err(e) => backoff.wait(&format!("claiming work: {e}")).await,
            }
        }
    }

    async fn run_job(&self, a: Assignment) {
        let work = &self.config.work_dir;
        let mut env = a.env.clone();
        env.insert("LWR_SERVER".into(), self.config.server.clone());
        env.insert("LWR_JOB_ID".into(), a.job_id.to_string());
        env.insert("LWR_JOB_NAME".into(), a.job_name.clone());
        env.insert("LWR_GRAPH_ID".into(), a.graph_id.to_string());
        env.insert("LWR_RUN".into(), a.run_number.to_string());
        env.insert("LWR_RUN_ID".into(), a.run_id.to_string());
        let launch = Launch {
            run_id: a.run_id,
            command: a.command.clone(),
            env,
            dir: exec::job_dir(work, a.run_id),
            log: exec::log_path(work, a.run_id),
            pid_file: work.join("pids").join(a.run_id.to_string()),
            timeout: Duration::from_secs(a.timeout_secs.max(1)),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        lock(&self.running).insert(a.run_id, stop_tx);
        tracing::debug!("run {} of {} started", a.run_id, a.job_name);
        let dir = launch.dir.clone();
        let result = exec::run(launch, stop_rx).await;
        tracing::debug!("run {} of {} ended: {:?}", a.run_id, a.job_name, result.outcome);
        self.reporter.submit(result);
        lock(&self.running).remove(&a.run_id);
        let _ = tokio::fs::remove_dir_all(dir).await;
    }

    /// Renews the leases of running jobs and stops those the server gave up on.
    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let every = Duration::from_secs((self.lease_secs.load(Ordering::Relaxed) / 3).max(1));
            tokio::time::sleep(every).await;
            let runs: Vec<i64> = lock(&self.running).keys().copied().collect();
            match self.client.heartbeat(self.id(), &Heartbeat { runs }).await {
                Ok(resp) => {
                    self.lease_secs.store(resp.lease_secs.max(1), Ordering::Relaxed);
                    for run in resp.abandon {
                        if let Some(stop) = lock(&self.running).remove(&run) {
                            tracing::warn!("run {run}: the server no longer holds it for this node; stopping it");
                            let _ = stop.send(Stop::Abandoned);
                        }
                    }
                }
                Err(e) => tracing::warn!("heartbeat failed: {e}"),
            }
        }
    }
}

/// Locks a mutex, carrying on if a panicking task poisoned it (the map stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exponential backoff for talking to a server that is away; logs once per outage.
struct Backoff {
    delay: Duration,
    warned: bool,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { delay: Duration::from_millis(100), warned: false }
    }

    fn reset(&mut self) {
        if self.warned {
            tracing::info!("server reachable again");
        }
        *self = Backoff::new();
    }

    async fn wait(&mut self, what: &str) {
        if !self.warned {
            tracing::warn!("{what}; retrying with backoff");
            self.warned = true;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }
}
