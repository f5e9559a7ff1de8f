//! The lwr node agent.
//!
//! A node registers its properties, long-polls the server for jobs it can run, and runs each
//! one detached: in a fresh directory, in its own process group, with output going to a log
//! file on the node's own disk. Results are written to disk before they are reported and
//! reported until the server takes them, so neither a server restart nor a node restart
//! loses one.

mod artifact;
pub mod buildbot;
pub mod checkout;
mod deck;
mod exec;
mod glob;
mod journal;
pub mod props;
mod report;
mod slot;
pub mod stamp;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwr_client::{Client, ClientError, StatusCode};
use lwr_model::api::{
    Assignment, ClaimRequest, ClaimResponse, Heartbeat, JobSource, Outcome, RegisterNode, RunResult,
};
use lwr_model::sync::lock;
use lwr_model::timing;
use lwr_model::{NodeId, RunId, step_run};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::deck::Deck;
use crate::exec::{Launch, Stop};
use crate::journal::Journal;
use crate::report::Reporter;

/// Most runs one heartbeat names (the server's limit for a batch).
const MAX_HEARTBEAT_RUNS: usize = 4096;
/// How often a node whose health check fails runs it again.
const HEALTH_RETRY: Duration = Duration::from_secs(2);
/// Longest a health check may take before it counts as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub server: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub slots: u32,
    pub work_dir: PathBuf,
    /// Bearer token (scope `node:register`) for a server that checks tokens.
    pub token: Option<String>,
    /// Start every line of every job's log with the time it was written.
    pub timestamps: bool,
    /// Shell command run before each claim; while it fails the node claims nothing.
    pub health_check: Option<String>,
    /// Shell command run once the node drained for a reboot (`lwr nodes reboot`).
    pub reboot_command: Option<String>,
    /// Shell command run once the node drained for a reimage (`lwr nodes reimage`).
    pub reimage_command: Option<String>,
    /// Least free space on the work dir's disk: below it the node claims nothing (and says
    /// so) until there is room again.
    pub min_free_bytes: u64,
    /// `--buildbot URL`: the node is a bridge whose jobs are builds on that master.
    pub buildbot: Option<buildbot::BridgeConfig>,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `shutdown` resolved.
    Shutdown,
    /// An operator asked for a reboot and the node has no reboot command: the caller exits
    /// with [`REBOOT_EXIT_CODE`] for its supervisor to restart it.
    Reboot,
    /// The node drained and ran its reboot command.
    Rebooting,
}

/// The variable naming the file a job writes a reason to (`lwr node-bad REASON`) to have
/// its node quarantined when it ends.
pub const NODE_BAD_ENV: &str = "LWR_NODE_BAD";
/// Longest reason read from that file.
const MAX_NODE_BAD: u64 = 1000;

/// Exit code of `lwr node` that drained for a reboot and has no reboot command.
pub const REBOOT_EXIT_CODE: u8 = 75;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot use work dir {dir}: {source}")]
    WorkDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "work dir {dir} is in use by another lwr node{holder}; give each node its own --work-dir"
    )]
    WorkDirInUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the server refused node '{name}': {source}")]
    Refused {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Buildbot(#[from] buildbot::BuildbotError),
}

/// State shared by the node's tasks.
struct Node {
    config: NodeConfig,
    client: Client,
    id: NodeId,
    lease_secs: AtomicU64,
    /// Runs in progress, each with the handle that stops it.
    running: Mutex<HashMap<RunId, oneshot::Sender<Stop>>>,
    /// Job directories and log files not in use: one pair per slot, reused job after job,
    /// so thousands of short jobs do not create and delete thousands of files.
    free_dirs: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// The checkouts copied into slot dirs from kept trees, recorded, by slot dir, while
    /// the dir may still hold them: the next job of the same revision on that slot uses it
    /// as it is, if a check finds it unchanged. A previous life's dirs are emptied for their
    /// first job: nothing tells what happened to them meanwhile.
    trees: Mutex<HashMap<PathBuf, slot::Snapshot>>,
    /// Turns true when the server asks for a reboot (or a reimage).
    reboot: watch::Sender<bool>,
    /// The reboot asked for is a reimage: run the reimage command.
    reimage: std::sync::atomic::AtomicBool,
    /// Why the health check fails, told to the server with each heartbeat; `None`: healthy.
    unhealthy: Mutex<Option<String>>,
    /// Kept job directories (`keep_workdir`) a run uses now.
    kept_in_use: Mutex<std::collections::HashSet<String>>,
    journal: Arc<Journal>,
    reporter: Reporter,
    /// Given to every job as `LWR_BIN` and `LWR_CACHE_DIR`: decision jobs run this very
    /// binary and keep their clone cache there.
    lwr_bin: Option<String>,
    cache_dir: PathBuf,
    /// Where the logs of running jobs are, for streaming them when the server asks.
    run_logs: Arc<stream::RunLogs>,
    /// The Buildbot master this node bridges to, if it is a bridge.
    bridge: Option<buildbot::Bridge>,
    /// The node's slots: a job runs holding one.
    slots: Arc<Semaphore>,
    /// Jobs claimed ahead of a free slot ([`deck`]).
    deck: Deck,
    /// The slots the claim loop's claim asks for while it waits on the server.
    parked: Mutex<Vec<OwnedSemaphorePermit>>,
}

/// The node's free slots as the reporting task takes jobs for them ([`report::Taker`]).
struct SlotTaker {
    /// Weak: the node holds the reporter, which holds this.
    node: std::sync::Weak<Node>,
    /// Turns true when the node stops claiming.
    stop: watch::Receiver<bool>,
}

impl report::Taker for SlotTaker {
    fn slots(&self) -> Option<Arc<Semaphore>> {
        let node = self.node.upgrade()?;
        // As the claim loop: nothing while stopping, draining or unhealthy (as last checked).
        let busy = *self.stop.borrow() || *node.reboot.borrow() || lock(&node.unhealthy).is_some();
        (!busy).then(|| node.slots.clone())
    }

    fn ahead(&self) -> usize {
        self.node.upgrade().map_or(0, |node| node.deck.room())
    }

    fn start(&self, jobs: Vec<Assignment>, slots: Vec<OwnedSemaphorePermit>) {
        match self.node.upgrade() {
            Some(node) => node.start_jobs(jobs, slots),
            None => {
                for a in jobs {
                    tracing::error!(
                        "run {}: node gone before it started; left to expire",
                        a.run_id
                    );
                }
            }
        }
    }
}

/// How a claim of the claim loop ended.
enum ClaimEnd {
    /// The server answered (or the request failed) while the node ran.
    Answered(Result<ClaimResponse, ClientError>),
    /// The node began to stop meanwhile: the answer, if it came in time (see
    /// [`Node::answer_while_stopping`]).
    Stopped(Option<Result<ClaimResponse, ClientError>>),
}

/// Runs the node until `shutdown` resolves; then it claims nothing more, lets its running
/// jobs finish (a spot node, tagged `instance=spot`, stops them as interrupted) and reports
/// their results.
pub async fn run(
    mut config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, NodeError> {
    // Jobs run in their own directories and get paths into the work dir ($LWR_EXTRA,
    // $LWR_MANIFESTS): a relative work dir (`lwr dev`'s default `./.lwr`) would point them
    // nowhere.
    config.work_dir =
        std::path::absolute(&config.work_dir).map_err(|source| NodeError::WorkDir {
            dir: config.work_dir.clone(),
            source,
        })?;
    let work_error = |source| NodeError::WorkDir {
        dir: config.work_dir.clone(),
        source,
    };
    for sub in ["jobs", "logs", "outbox", "cache"] {
        std::fs::create_dir_all(config.work_dir.join(sub)).map_err(work_error)?;
    }
    // Held until the node returns: a second node on this work dir would take the first
    // one's jobs for leftovers of a previous life and kill them.
    let _lock = lock_work_dir(&config.work_dir)?;
    if config.token.is_some() {
        // Jobs run as this user: without this, one could read the node's token (given in
        // LWR_TOKEN) from /proc/PPID/environ. Not inherited across exec, so jobs are as usual.
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            tracing::warn!("cannot hide the node's token from its jobs (PR_SET_DUMPABLE): {e}");
        }
    }
    let (journal, recovered) = Journal::open(&config.work_dir).map_err(work_error)?;
    let journal = Arc::new(journal);
    // Jobs a previous life of the node left running: the server has (or will have) given
    // them to someone else, so they stop here and are reported as exceptions.
    let mut unreported = recovered.unreported;
    for (run, pgid) in recovered.leftovers {
        exec::kill_group(pgid);
        let result = journal::restarted(run);
        journal.ended(&result);
        unreported.push(result);
    }
    // Jobs it had claimed ahead and not started go back, no retry spent.
    for run in recovered.decked {
        let result = deck::given_back(run, "the node restarted before starting it");
        journal.ended(&result);
        unreported.push(result);
    }
    drop_orphan_outboxes(&config.work_dir, &unreported);
    drop_reported_logs(&config.work_dir, &unreported);
    let bridge = match &config.buildbot {
        Some(bb) => {
            let bridge = buildbot::Bridge::new(bb, &config.work_dir)?;
            // The builders it can start become its properties: placement sends it only
            // jobs of those builders.
            config.tags.extend(bridge.tags().await?);
            Some(bridge)
        }
        None => None,
    };
    // Builds a previous life of the bridge started: followed again, never forced twice.
    let resumed = bridge
        .as_ref()
        .map(|b| b.saved(&unreported))
        .unwrap_or_default();
    let client = Client::new(&config.server)?.with_token(config.token.clone());
    let id = register(&client, &config).await?;
    let reporter = Reporter::start(
        client.clone(),
        journal.clone(),
        config.work_dir.clone(),
        id,
        unreported,
    );
    let slots = config.slots.max(1);
    let free_dirs = (1..=slots)
        .map(|k| {
            let dir = config.work_dir.join("jobs").join(k.to_string());
            (
                dir,
                config.work_dir.join("logs").join(format!("slot-{k}.log")),
            )
        })
        .collect();
    let node = Arc::new(Node {
        client,
        id,
        // The first heartbeat goes out within a second; the server's answer sets the pace.
        lease_secs: AtomicU64::new(1),
        running: Mutex::new(HashMap::new()),
        free_dirs: Mutex::new(free_dirs),
        trees: Mutex::default(),
        kept_in_use: Mutex::new(Default::default()),
        unhealthy: Mutex::new(None),
        reboot: watch::channel(false).0,
        reimage: Default::default(),
        journal,
        reporter,
        lwr_bin: lwr_binary(),
        // Absolute: a job runs in its own directory.
        cache_dir: std::fs::canonicalize(config.work_dir.join("cache"))
            .unwrap_or_else(|_| config.work_dir.join("cache")),
        run_logs: Arc::default(),
        bridge,
        slots: Arc::new(Semaphore::new(slots as usize)),
        // A bridge's slots are builds it follows: a build waits on Buildbot, not here.
        deck: Deck::new(match config.buildbot {
            Some(_) => 0,
            None => slots as usize,
        }),
        parked: Mutex::default(),
        config,
    });
    tracing::info!(
        "node {} (id {id}) serving {} with {}, work dir {}",
        node.config.name,
        node.config.server,
        lwr_model::words::count(slots, "slot", "slots"),
        node.config.work_dir.display()
    );
    // Stopped together once the node's jobs are done.
    let background = [
        tokio::spawn(node.clone().heartbeat_loop()),
        tokio::spawn(node.clone().deck_watch()),
        tokio::spawn(stream::serve(
            node.client.clone(),
            node.id,
            node.config.work_dir.clone(),
            node.run_logs.clone(),
        )),
    ];
    let permits = node.slots.clone();
    for a in resumed {
        tracing::info!(
            "run {} of {}: resuming its Buildbot build",
            a.run_id,
            a.job_name
        );
        // Taken before the claim loop starts, so a resumed run is back in the heartbeats
        // (which keep its lease) at once.
        let permit = permits.clone().try_acquire_owned();
        let (node, permits) = (node.clone(), permits.clone());
        tokio::spawn(async move {
            let _permit = match permit {
                Ok(p) => p,
                Err(_) => match permits.acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            node.run_build(a, true).await;
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    node.reporter.set_taker(Arc::new(SlotTaker {
        node: Arc::downgrade(&node),
        stop: stop_rx.clone(),
    }));
    let claims = tokio::spawn(node.clone().claim_loop(stop_rx));
    let mut reboot = node.reboot.subscribe();
    let rebooting = tokio::select! {
        _ = shutdown => false,
        _ = reboot.wait_for(|r| *r) => true,
    };
    tracing::info!(
        "node {} {}: no new jobs; finishing running ones",
        node.config.name,
        if rebooting {
            "draining for a reboot"
        } else {
            "stopping"
        }
    );
    // Jobs claimed ahead go back at once rather than wait for this node's slots; the deck
    // takes no more (an answer still on its way gives its jobs back too).
    for a in node.deck.close() {
        node.give_back(&a, "the node is stopping");
    }
    let _ = stop_tx.send(true);
    let _ = claims.await;
    if node.bridge.is_some() && !rebooting {
        // A bridge's builds go on on Buildbot without it, and its next start follows them
        // again (WORK/buildbot): a restart need not wait for hours of builds.
        background.iter().for_each(|task| task.abort());
        node.reporter.flush(Duration::from_secs(10)).await;
        return Ok(Stopped::Shutdown);
    }
    // A spot instance being reclaimed will not live to see its jobs finish: stop them now
    // and report them, so they are retried (on a non-spot node) at once instead of after
    // their leases run out.
    if !rebooting
        && lwr_model::pool::is_spot(&lwr_model::NodeProperties {
            tags: node.config.tags.clone(),
            ..Default::default()
        })
    {
        let stops: Vec<_> = lock(&node.running).drain().collect();
        if !stops.is_empty() {
            tracing::info!(
                "spot node {}: interrupting {} running jobs",
                node.config.name,
                stops.len()
            );
        }
        for (_, stop) in stops {
            let _ = stop.send(Stop::Interrupted);
        }
    }
    // Every permit back means every job has ended and its result is queued.
    let _all = permits.acquire_many(slots).await;
    background.iter().for_each(|task| task.abort());
    node.reporter.flush(Duration::from_secs(10)).await;
    if !rebooting {
        return Ok(Stopped::Shutdown);
    }
    let reimage = node.reimage.load(Ordering::SeqCst);
    let command = match reimage {
        true => &node.config.reimage_command,
        false => &node.config.reboot_command,
    };
    let Some(cmd) = command else {
        if reimage {
            tracing::warn!(
                "node {} drained for a reimage but has no --reimage-command; exiting for its supervisor",
                node.config.name
            );
        }
        return Ok(Stopped::Reboot);
    };
    tracing::info!("node {} drained; running `{cmd}`", node.config.name);
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
    {
        Ok(status) if status.success() => {}
        Ok(status) => tracing::error!("command `{cmd}` failed ({status})"),
        Err(e) => tracing::error!("cannot run command `{cmd}`: {e}"),
    }
    Ok(Stopped::Rebooting)
}

/// Takes the work dir's lock file (`lock`, holding the owner's pid), or says who holds it.
/// The lock goes with the process, so a killed node never leaves it behind.
fn lock_work_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let io_error = |source| NodeError::WorkDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(NodeError::WorkDirInUse {
                dir: dir.to_path_buf(),
                holder: match pid.is_empty() {
                    true => String::new(),
                    false => format!(" (pid {pid})"),
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io_error)?;
    Ok(file)
}

/// Removes outboxes of runs with no result waiting: the node stopped between moving their
/// artifacts and recording the result, and such a run is reported as an exception.
fn drop_orphan_outboxes(work_dir: &std::path::Path, unreported: &[RunResult]) {
    let Ok(entries) = std::fs::read_dir(work_dir.join("outbox")) else {
        return;
    };
    for entry in entries.flatten() {
        let run = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RunId>().ok());
        if run.is_none_or(|run| !unreported.iter().any(|r| r.run_id == run)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the logs of runs whose results the server has (`logs/RUN.log` with no result
/// waiting; earlier versions kept every log): the node's disk holds only what is pending.
fn drop_reported_logs(work_dir: &Path, unreported: &[RunResult]) {
    let Ok(entries) = std::fs::read_dir(work_dir.join("logs")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let run = name
            .to_str()
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<RunId>().ok());
        if let Some(run) = run
            && !unreported.iter().any(|r| r.run_id == run)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Registers the node, retrying while the server cannot be reached; returns its id.
async fn register(client: &Client, config: &NodeConfig) -> Result<NodeId, NodeError> {
    let reg = RegisterNode {
        name: config.name.clone(),
        properties: props::discover(config.tags.clone()),
        slots: config.slots.max(1),
    };
    let mut backoff = Backoff::new();
    loop {
        match client.register_node(&reg).await {
            Ok(info) => return Ok(info.id),
            Err(e) if e.is_unreachable() || e.status().is_some_and(|s| s.is_server_error()) => {
                backoff
                    .wait(&format!("registering with {}: {e}", config.server))
                    .await;
            }
            Err(source) => {
                return Err(NodeError::Refused {
                    name: config.name.clone(),
                    source,
                });
            }
        }
    }
}

impl Node {
    /// A run's log with something in it becomes the run's (kept under its id, told to
    /// the live-log registry); an empty one stays in the slot for the next job.
    fn keep_run_log(&self, run: RunId, slot_log: &Path) {
        let log_size = std::fs::metadata(slot_log).map_or(0, |m| m.len());
        self.run_logs.ended(run, log_size);
        if log_size > 0 {
            let kept = exec::log_path(&self.config.work_dir, run);
            if let Err(e) = std::fs::rename(slot_log, &kept) {
                tracing::warn!("run {run}: cannot keep its log as {}: {e}", kept.display());
            }
        }
    }

    /// Claims work while slots are free, until `stop` turns true.
    async fn claim_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let slots = self.slots.clone();
        let mut backoff = Backoff::new();
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok(first) = first else { return };
            if !self.healthy().await {
                drop(first);
                // Nothing claimed ahead starts on an unhealthy node: it goes back.
                self.give_back_deck_if_unhealthy();
                tokio::select! {
                    _ = tokio::time::sleep(HEALTH_RETRY) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // The jobs on the deck are already this node's: they go first.
            self.fill_from_deck(&mut permits);
            if permits.is_empty() {
                continue;
            }
            let results = self.reporter.begin_claim().await;
            if *stop.borrow() {
                // Stopped meanwhile: no claim goes out (a server that did not hear of the
                // stop would hold it open); the results go back to the outbox, which the
                // node flushes before it exits.
                self.reporter.end_claim(results, None);
                return;
            }
            let ahead = self.deck.room();
            let req = ClaimRequest {
                max: (permits.len() + ahead) as u32,
                wait_ms: timing::CLAIM_WAIT.as_millis() as u64,
                results,
                ahead: ahead as u32,
            };
            // While the claim waits on the server, its slots are lent to the deck: a job a
            // result's claim put there meanwhile starts in one of them, not after the wait.
            *lock(&self.parked) = permits;
            step("claim", step_run(req.results.iter().map(|r| r.run_id)));
            let sent = Instant::now();
            let end = {
                let claim = self.client.claim(self.id, &req);
                tokio::pin!(claim);
                let answered = tokio::select! {
                    answer = &mut claim => Some(answer),
                    _ = stop.wait_for(|s| *s) => None,
                };
                match answered {
                    Some(answer) => ClaimEnd::Answered(answer),
                    None => ClaimEnd::Stopped(self.answer_while_stopping(claim).await),
                }
            };
            let received = match &end {
                ClaimEnd::Answered(Ok(resp)) | ClaimEnd::Stopped(Some(Ok(resp))) => Some(resp),
                _ => None,
            };
            if let Some(resp) = received {
                step(
                    "answered",
                    step_run(resp.assignments.iter().map(|a| a.run_id)),
                );
            }
            let permits = std::mem::take(&mut *lock(&self.parked));
            // Results without an answer go back to the outbox.
            self.reporter
                .end_claim(req.results, received.map(|r| r.acks.as_slice()));
            let answer = match end {
                ClaimEnd::Answered(answer) => answer,
                ClaimEnd::Stopped(answer) => {
                    // No new job starts on a stopping node: what the answer brought goes
                    // back unstarted, at once (the reporter is flushed before it exits).
                    drop(permits);
                    for a in answer.iter().flatten().flat_map(|r| &r.assignments) {
                        self.give_back(a, "the node is stopping");
                    }
                    return;
                }
            };
            match answer {
                Ok(resp) => {
                    backoff.reset();
                    // Empty long before its wait is never a server's normal answer (one
                    // that still takes this node for a stopping one, for a few seconds after
                    // a quick restart, gives it): asking again at once would spin.
                    let early =
                        resp.assignments.is_empty() && sent.elapsed() < timing::CLAIM_WAIT / 2;
                    self.start_jobs(resp.assignments, permits);
                    if early {
                        tokio::select! {
                            _ = tokio::time::sleep(HEALTH_RETRY) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
                // The server lost its database: nothing this node holds means anything there.
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                    tracing::error!(
                        "the server does not know this node (id {}); restart the node to register again",
                        self.id
                    );
                    backoff.wait("claiming work").await;
                }
                Err(e) => backoff.wait(&format!("claiming work: {e}")).await,
            }
        }
    }

    /// The answer to the claim in flight when the node began to stop. The server may be
    /// handing it jobs at this very moment: hung up on, those would wait out their lease.
    /// So the server is told that this node stops, which ends the claim's wait at once with
    /// no job, and the answer is awaited, for [`timing::STOP_CLAIM_WAIT`] at most (a server
    /// older than 0.2, or another one behind a balancer, goes on waiting for work). `None`
    /// when it did not come in that time, or when the server could not be told (it is
    /// going away, or out of reach: its claim could hang on for its whole wait).
    async fn answer_while_stopping(
        &self,
        claim: std::pin::Pin<&mut impl Future<Output = Result<ClaimResponse, ClientError>>>,
    ) -> Option<Result<ClaimResponse, ClientError>> {
        let hb = Heartbeat {
            runs: self.held_runs(),
            unhealthy: lock(&self.unhealthy).clone(),
            stopping: true,
        };
        let told_then_answered = async {
            match self.client.heartbeat(self.id, &hb).await {
                Ok(_) => Some(claim.await),
                Err(e) => {
                    tracing::debug!("cannot tell the server that this node stops: {e}");
                    None
                }
            }
        };
        // One bound for both: a hung server holds the stop no longer than this.
        match tokio::time::timeout(timing::STOP_CLAIM_WAIT, told_then_answered).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::info!(
                    "the server did not end this node's claim within {} s of its stop; a job \
                     it hands out now waits for its lease to run out",
                    timing::STOP_CLAIM_WAIT.as_secs()
                );
                None
            }
        }
    }

    /// The runs this node holds, as a heartbeat lists them: running, on the deck, or ended
    /// here and waiting for their uploads and report.
    fn held_runs(&self) -> Vec<RunId> {
        let mut runs: Vec<RunId> = lock(&self.running).keys().copied().collect();
        runs.extend(self.deck.runs());
        runs.extend(self.reporter.unreported());
        runs.sort_unstable();
        runs.dedup();
        runs.truncate(MAX_HEARTBEAT_RUNS);
        runs
    }

    /// Runs the jobs a claim handed out, each in a slot of `permits` (released when its job
    /// ends); the slots left over are freed now.
    fn start_jobs(self: &Arc<Self>, jobs: Vec<Assignment>, mut permits: Vec<OwnedSemaphorePermit>) {
        if let Some(a) = jobs.first() {
            self.lease_secs.store(a.lease_secs, Ordering::Relaxed);
        }
        // The free slots take the jobs already waiting on the deck first, then these.
        self.fill_from_deck(&mut permits);
        let mut jobs = jobs.into_iter();
        for (permit, a) in permits.into_iter().zip(jobs.by_ref()) {
            self.run_in_slot(a, permit);
        }
        // The rest were claimed ahead: on the deck (and in the journal, for a restart to
        // give back) until a slot frees.
        let now = Instant::now();
        for a in jobs {
            self.journal.decked(a.run_id);
            if let Some(a) = self.deck.push(a, now) {
                self.give_back(&a, "the node is stopping");
            }
        }
        // A slot freed while the claim was out takes a job from the deck now.
        self.start_from_deck();
    }

    /// Runs `a` in the slot `permit` holds, then jobs from the deck while there are any:
    /// the slot goes from one to the next without waiting for a claim's answer.
    fn run_in_slot(self: &Arc<Self>, a: Assignment, permit: OwnedSemaphorePermit) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut next = Some(a);
            while let Some(a) = next {
                node.run_job(a).await;
                next = node.next_from_deck();
                if next.is_some() {
                    // No claim follows this job's end: its result goes out on its own (with
                    // a claim that refills the deck).
                    node.reporter.send_soon();
                }
            }
            drop(permit);
            // A job may have come onto the deck after the last look, when no slot was free.
            node.start_from_deck();
        });
    }

    /// Starts jobs from the deck in the slots of `permits`; the slots left over stay there.
    fn fill_from_deck(self: &Arc<Self>, permits: &mut Vec<OwnedSemaphorePermit>) {
        while let Some(permit) = permits.pop() {
            let Some(a) = self.next_from_deck() else {
                permits.push(permit);
                return;
            };
            self.run_in_slot(a, permit);
        }
    }

    /// Starts jobs from the deck in the slots free now, or lent by the claim loop's waiting
    /// claim (whose jobs, when it gets some, go on the deck in turn).
    fn start_from_deck(self: &Arc<Self>) {
        while !self.deck.is_empty() {
            let free = self.slots.clone().try_acquire_owned().ok();
            let Some(permit) = free.or_else(|| lock(&self.parked).pop()) else {
                return;
            };
            let Some(a) = self.next_from_deck() else {
                return;
            };
            self.run_in_slot(a, permit);
        }
    }

    /// The deck's next job, unless the node turned unhealthy (its disk short, its health
    /// check failing) since it claimed it: it claims nothing then, and starts nothing
    /// claimed ahead either; the deck goes back.
    fn next_from_deck(&self) -> Option<Assignment> {
        match self.give_back_deck_if_unhealthy() {
            true => None,
            false => self.deck.pop(),
        }
    }

    /// Gives back every job on the deck if the node is unhealthy (as last checked);
    /// whether it was.
    fn give_back_deck_if_unhealthy(&self) -> bool {
        let Some(why) = lock(&self.unhealthy).clone() else {
            return false;
        };
        self.give_back_deck(&format!("the node is unhealthy: {why}"));
        true
    }

    /// Gives back every job on the deck.
    fn give_back_deck(&self, why: &str) {
        for a in self.deck.take_all() {
            self.give_back(&a, why);
        }
    }

    /// Gives the deck's jobs that waited [`deck::DECK_WAIT`] back to the server, so that
    /// a job does not wait behind long ones while other nodes could run it.
    async fn deck_watch(self: Arc<Self>) {
        loop {
            match self.deck.oldest() {
                None => self.deck.wait_filled().await,
                Some(at) => {
                    tokio::time::sleep_until((at + deck::DECK_WAIT).into()).await;
                    for a in self.deck.stale(Instant::now(), deck::DECK_WAIT) {
                        self.give_back(&a, "no slot of the node freed in time");
                    }
                }
            }
        }
    }

    /// Reports `a` as given back unstarted: the server queues its job again, no retry spent.
    fn give_back(&self, a: &Assignment, why: &str) {
        tracing::debug!(
            "run {} of {}: given back unstarted: {why}",
            a.run_id,
            a.job_name
        );
        self.reporter.submit_now(deck::given_back(a.run_id, why));
    }

    /// Checks the work dir's free space and runs the health check, if any; remembers (and
    /// logs, on a change) why the node is unhealthy.
    async fn healthy(&self) -> bool {
        let failure = match self.disk_short() {
            Some(why) => Some(why),
            None => self.check_health().await,
        };
        let mut current = lock(&self.unhealthy);
        if *current != failure {
            match &failure {
                Some(why) => tracing::warn!("{why}; claiming nothing until that changes"),
                None => tracing::info!("healthy again; claiming work"),
            }
            *current = failure;
        }
        current.is_none()
    }

    /// Why the work dir's disk is too full to take another job, if it is: a job there
    /// would fail for the node's own lack of room, not its own fault.
    fn disk_short(&self) -> Option<String> {
        let min = self.config.min_free_bytes;
        if min == 0 {
            return None;
        }
        let free = match nix::sys::statvfs::statvfs(&self.config.work_dir) {
            Ok(st) => st.blocks_available().saturating_mul(st.fragment_size()),
            Err(e) => {
                tracing::debug!("cannot read free space of the work dir: {e}");
                return None;
            }
        };
        (free < min).then(|| {
            format!(
                "the node's disk is full: work dir {} has {} MB free, below the {} MB it keeps                  free (--min-free-mb)",
                self.config.work_dir.display(),
                free >> 20,
                min >> 20
            )
        })
    }

    /// Runs the health check, if any: why it fails, or `None`.
    async fn check_health(&self) -> Option<String> {
        let Some(cmd) = &self.config.health_check else {
            return None;
        };
        let outcome = tokio::time::timeout(
            HEALTH_TIMEOUT,
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        match outcome {
            Ok(Ok(out)) if out.status.success() => None,
            Ok(Ok(out)) => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.trim().lines().last().unwrap_or_default().to_string();
                Some(format!(
                    "health check `{cmd}` failed ({}){}",
                    out.status,
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ))
            }
            Ok(Err(e)) => Some(format!("cannot run health check `{cmd}`: {e}")),
            Err(_) => Some(format!(
                "health check `{cmd}` took over {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        }
    }

    async fn run_job(&self, a: Assignment) {
        if a.buildbot.is_some() {
            return self.run_build(a, false).await;
        }
        let Some((slot_dir, slot_log)) = lock(&self.free_dirs).pop() else {
            // More jobs than slots cannot happen: each job holds a slot's permit.
            tracing::error!("run {}: no free job directory; left to expire", a.run_id);
            return;
        };
        // A kept directory serves one run at a time; a second run of the same job at once
        // gets a fresh slot directory.
        let kept = a
            .kept_dir
            .as_ref()
            .filter(|name| lock(&self.kept_in_use).insert((*name).clone()))
            .cloned();
        let dir = match &kept {
            Some(name) => self.config.work_dir.join("kept").join(name),
            None => slot_dir.clone(),
        };
        step("prepare", a.run_id);
        let mut held = lock(&self.trees).remove(&slot_dir);
        let mut env: BTreeMap<String, String> = a.env.clone().into();
        for (key, value) in a.source.iter().flat_map(JobSource::env) {
            env.insert(key.into(), value);
        }
        env.insert("LWR_SERVER".into(), self.config.server.clone());
        env.insert("LWR_JOB_ID".into(), a.job_id.to_string());
        env.insert("LWR_JOB_NAME".into(), a.job_name.clone());
        env.insert("LWR_GRAPH_ID".into(), a.graph_id.to_string());
        env.insert("LWR_RUN".into(), a.run_number.to_string());
        env.insert("LWR_RUN_ID".into(), a.run_id.to_string());
        // Beside the job dir, not in it: the job may write them, the node reads them after.
        let extra_file = dir.with_extension("extra.json");
        let _ = std::fs::remove_file(&extra_file);
        env.insert("LWR_EXTRA".into(), extra_file.display().to_string());
        let bad_file = dir.with_extension("node-bad");
        let _ = std::fs::remove_file(&bad_file);
        env.insert(NODE_BAD_ENV.into(), bad_file.display().to_string());
        let mut cannot_start = None;
        if !a.manifests.is_empty() {
            let file = dir.with_extension("manifests.json");
            if let Err(e) =
                artifact::write_manifests_file(&file, self.client.server(), &a.manifests)
            {
                cannot_start = Some(format!("cannot write {}: {e}", file.display()));
            }
            env.insert("LWR_MANIFESTS".into(), file.display().to_string());
        }
        if let Some(bin) = &self.lwr_bin {
            env.insert("LWR_BIN".into(), bin.clone());
        }
        // `lwr` on the job's PATH is this node's binary, unless the job sets its own PATH.
        if let (false, Some(path)) = (env.contains_key("PATH"), exec::job_path()) {
            env.insert("PATH".into(), path.to_string());
        }
        env.insert("LWR_CACHE_DIR".into(), self.cache_dir.display().to_string());
        // The job's own token, never the node's (exec drops an inherited LWR_TOKEN).
        if let Some(token) = &a.token {
            env.insert("LWR_TOKEN".into(), token.clone());
        }
        let launch = Launch {
            run_id: a.run_id,
            command: a.command.clone(),
            env,
            dir: dir.clone(),
            log: slot_log.clone(),
            timeout: Duration::from_secs(a.timeout_secs.max(1)),
            stamp_with: self
                .lwr_bin
                .as_ref()
                .filter(|_| self.config.timestamps || a.timestamps)
                .map(PathBuf::from),
            log_limit: a.max_log_bytes,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        lock(&self.running).insert(a.run_id, stop_tx);
        self.run_logs.started(a.run_id, &slot_log);
        tracing::debug!("run {} of {} started", a.run_id, a.job_name);
        // A job is short (worth claiming ahead for) by all a slot spends on it.
        let began = Instant::now();
        if cannot_start.is_none()
            && let Err(reason) = self
                .prepare(a.run_id, &dir, kept.is_some(), &mut held, a.source.as_ref())
                .await
        {
            // In the log too: that is where a person looks first.
            let _ = std::fs::write(&slot_log, format!("lwr: {reason}\n"));
            cannot_start = Some(reason);
        }
        let result = match cannot_start {
            None => {
                let ran = exec::run(launch, stop_rx, |pgid| self.journal.started(a.run_id, pgid));
                let ran = ran.await;
                self.deck.ran(began.elapsed());
                ran
            }
            Some(reason) => RunResult::exception(a.run_id, reason),
        };
        let mut result = result;
        result.node_bad = take_node_bad(&bad_file);
        if let Some(why) = &result.node_bad {
            tracing::warn!(
                "run {} of {} marked this node bad: {why}; the server quarantines it",
                a.run_id,
                a.job_name
            );
        }
        let ran = result.clone();
        let (result, outputs) = self
            .collect_artifacts(result, &dir, &extra_file, &a.artifacts)
            .await;
        // Why it failed goes at the end of the log, where a reader looks, unless the log
        // already says it (the job's own exit code is the job's to explain).
        if let Some(note) = exec::failure_note(&ran, &result)
            && let Err(e) = exec::append_note(&slot_log, &note)
        {
            tracing::warn!("run {}: cannot add why it failed to its log: {e}", a.run_id);
        }
        tracing::debug!(
            "run {} of {} ended: {:?}",
            a.run_id,
            a.job_name,
            result.outcome
        );
        if let Some(limit) = a.max_log_bytes
            && let Err(e) = exec::cap_log(&slot_log, limit)
        {
            tracing::warn!("run {}: cannot cut its log: {e}", a.run_id);
        }
        self.keep_run_log(a.run_id, &slot_log);
        step("ended", a.run_id);
        self.reporter.submit(result, outputs);
        lock(&self.running).remove(&a.run_id);
        match kept {
            Some(name) => {
                lock(&self.kept_in_use).remove(&name);
            }
            // On this thread, as emptying it was: a small tree's check is some
            // microseconds (a stat an entry), and a big tree's no slower than removing it.
            None => match slot::clean_up(&dir, held.take()) {
                Ok(tree) => held = tree,
                Err(e) => tracing::warn!("cannot empty job dir {}: {e}", dir.display()),
            },
        }
        if let Some(tree) = held {
            lock(&self.trees).insert(slot_dir.clone(), tree);
        }
        lock(&self.free_dirs).push((slot_dir, slot_log));
        step("freed", a.run_id);
    }

    /// Makes the job dir ready: emptied (unless kept) and, for a job of a push, with the
    /// push's revision checked out into it. A slot's dir that holds the copy of the same
    /// kept tree an earlier job got, unchanged, is used as it is ([`slot::fill_in_place`]).
    async fn prepare(
        &self,
        run: RunId,
        dir: &Path,
        keep: bool,
        held: &mut Option<slot::Snapshot>,
        source: Option<&JobSource>,
    ) -> Result<(), String> {
        let wanted = source
            .filter(|s| s.checkout.enabled)
            .and_then(|s| Some((s, s.revision.as_deref()?)));
        let at = wanted
            .and_then(|(s, _)| s.checkout.path.as_deref())
            .map(PathBuf::from)
            .unwrap_or_default();
        let tree = match at.as_os_str().is_empty() {
            true => dir.to_path_buf(),
            false => dir.join(&at),
        };
        let cannot_prepare = |e| format!("cannot prepare job dir {}: {e}", dir.display());
        let started = std::time::Instant::now();
        let template = match keep {
            // A kept dir is checked out over.
            true => {
                let owned = dir.to_path_buf();
                blocking(move || std::fs::create_dir_all(&owned))
                    .await
                    .map_err(cannot_prepare)?;
                None
            }
            false => {
                let template = wanted.map(|(s, revision)| {
                    checkout::template_path(&self.cache_dir, &s.repository, revision, &s.checkout)
                });
                let in_place = slot::fill_in_place(dir, held.take(), template.as_deref(), &at)
                    .map_err(|e| cannot_prepare(e.to_string()))?;
                let filled = match in_place {
                    Some(filled) => filled,
                    None => {
                        let (owned, marker) = (dir.to_path_buf(), dir.with_extension("stamp"));
                        let kept_tree = template.clone();
                        blocking(move || slot::refill(&owned, &marker, kept_tree.as_deref(), &at))
                            .await
                            .map_err(cannot_prepare)?
                    }
                };
                match filled {
                    slot::Filled::Ready(tree) => {
                        *held = tree;
                        return Ok(());
                    }
                    slot::Filled::Empty => template,
                }
            }
        };
        let Some((source, revision)) = wanted else {
            return Ok(());
        };
        self.check_out(run, source, revision, tree, template)
            .await
            .map_err(|e| {
                format!(
                    "cannot check out {} of {}: {e}",
                    &revision[..revision.len().min(12)],
                    source.repository
                )
            })?;
        tracing::debug!(
            "run {run}: checked out {revision} of {} in {:?}",
            source.repository,
            started.elapsed()
        );
        Ok(())
    }

    /// Checks `revision` out into `tree` from the node's clone cache, fetching what the
    /// cache lacks from the repository or, when the node cannot read the repository (a
    /// path on the machine `lwr push` ran on), from the bundle `lwr push` left on the server.
    /// `template`: where to keep a copy of the tree for the next jobs of the revision
    /// ([`checkout::template_path`]); `None` for a kept dir, checked out over.
    async fn check_out(
        &self,
        run: RunId,
        source: &JobSource,
        revision: &str,
        tree: PathBuf,
        template: Option<PathBuf>,
    ) -> Result<(), String> {
        let (cache, url, rev) = (
            self.cache_dir.clone(),
            source.repository.clone(),
            revision.to_string(),
        );
        let mirror = match blocking(move || checkout::update_mirror(&cache, &url, &rev)).await {
            Ok((mirror, how)) => {
                tracing::debug!("run {run}: {revision} {how}");
                mirror
            }
            Err(from_repository) => match self.fetch_bundle(run, source, revision).await {
                Ok(Some(mirror)) => mirror,
                Ok(None) => {
                    return Err(format!(
                        "{from_repository} (and the server has no bundle of the commit)"
                    ));
                }
                Err(e) => return Err(format!("{from_repository}; from the server's bundle: {e}")),
            },
        };
        let (rev, how) = (revision.to_string(), source.checkout.clone());
        blocking(move || {
            checkout::check_out(&mirror, &rev, &tree, &how)?;
            if let Some(template) = template
                && let Err(e) = checkout::keep_template(&tree, &template)
            {
                // The next job checks out again: slower, not wrong.
                tracing::warn!("cannot keep a copy of the checked-out tree: {e}");
            }
            Ok::<_, checkout::CheckoutError>(())
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Fetches `revision` into the repository's mirror from the server's bundle of it;
    /// `None` when the server has none.
    async fn fetch_bundle(
        &self,
        run: RunId,
        source: &JobSource,
        revision: &str,
    ) -> Result<Option<PathBuf>, String> {
        let (cache, url) = (self.cache_dir.clone(), source.repository.clone());
        let mirror = blocking(move || checkout::Mirror::lock(&cache, &url))
            .await
            .map_err(|e| e.to_string())?;
        // Another job may have fetched it while this one waited for the lock.
        if mirror.has(revision) {
            return Ok(Some(mirror.path().to_path_buf()));
        }
        let file = self.cache_dir.join("git").join(format!("run-{run}.bundle"));
        let found = self.client.download_bundle(run, self.id, &file).await;
        let fetched = match found {
            Ok(false) => return Ok(None),
            Ok(true) => {
                let (file, rev) = (file.clone(), revision.to_string());
                blocking(move || {
                    mirror
                        .fetch_bundle(&file, &rev)
                        .map(|()| mirror.path().to_path_buf())
                })
                .await
                .map(Some)
                .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_file(&file);
        fetched
    }

    /// Moves a finished run's artifacts out of its job dir into its outbox before the dir
    /// is emptied; returns the result (a missing artifact fails it) and whether there is an
    /// outbox to upload. A job without artifacts or `$LWR_EXTRA` costs one `stat` here.
    async fn collect_artifacts(
        &self,
        mut result: RunResult,
        dir: &std::path::Path,
        extra_file: &std::path::Path,
        decls: &[lwr_model::ArtifactDecl],
    ) -> (RunResult, bool) {
        if result.outcome == Outcome::Exception {
            // Retried elsewhere: what this run left is not its job's output.
            let _ = std::fs::remove_file(extra_file);
            return (result, false);
        }
        // The common case, no artifacts and no `$LWR_EXTRA`, costs one `stat` and no thread.
        if decls.is_empty() && std::fs::symlink_metadata(extra_file).is_err() {
            return (result, false);
        }
        let (work, dir, extra_file) = (
            self.config.work_dir.clone(),
            dir.to_path_buf(),
            extra_file.to_path_buf(),
        );
        let decls = decls.to_vec();
        let run = result.run_id;
        let collected = tokio::task::spawn_blocking(move || {
            let extra = match artifact::take_extra(&extra_file) {
                Ok(extra) => extra,
                Err(e) => {
                    artifact::fail(&mut result, &e.to_string());
                    Some(Default::default())
                }
            };
            if decls.is_empty() && extra.is_none() {
                return (result, false);
            }
            let extra = extra.unwrap_or_default();
            match artifact::collect(&work, &dir, &decls, extra, &mut result) {
                Ok(outputs) => (result, outputs),
                Err(e) => {
                    // The node's own trouble (disk): retry the job elsewhere.
                    result.outcome = Outcome::Exception;
                    result.reason = Some(e.to_string());
                    (result, false)
                }
            }
        })
        .await;
        collected.unwrap_or_else(|e| {
            (
                RunResult::exception(run, format!("collecting artifacts failed: {e}")),
                false,
            )
        })
    }

    /// Renews the leases of running jobs and stops those the server gave up on.
    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let lease = Duration::from_secs(self.lease_secs.load(Ordering::Relaxed));
            let every = timing::heartbeat_every(lease);
            tokio::time::sleep(every).await;
            // Runs that ended here and wait for their uploads and report stay this node's.
            let hb = Heartbeat {
                runs: self.held_runs(),
                unhealthy: lock(&self.unhealthy).clone(),
                stopping: false,
            };
            match self.client.heartbeat(self.id, &hb).await {
                Ok(resp) => {
                    self.lease_secs
                        .store(resp.lease_secs.max(1), Ordering::Relaxed);
                    if resp.reboot && !*self.reboot.borrow() {
                        let what = match resp.reimage {
                            true => "reimage",
                            false => "reboot",
                        };
                        tracing::info!("the server asks this node to {what}");
                        self.reimage.store(resp.reimage, Ordering::SeqCst);
                        self.reboot.send_replace(true);
                    }
                    for run in resp.abandon {
                        if self.deck.remove(run) {
                            self.journal.dropped(run);
                            tracing::warn!(
                                "run {run}: the server no longer holds it for this node; not starting it"
                            );
                        }
                        if let Some(stop) = lock(&self.running).remove(&run) {
                            tracing::warn!(
                                "run {run}: the server no longer holds it for this node; stopping it"
                            );
                            let _ = stop.send(Stop::Abandoned);
                        }
                    }
                }
                Err(e) => tracing::warn!("heartbeat failed: {e}"),
            }
        }
    }
}

/// Logs where a job is on its way through this node ([`lwr_model::STEP_LOG`]): one line,
/// `step <what> <run>`, read by `bench/steps`.
pub(crate) fn step(what: &str, run: impl std::fmt::Display) {
    tracing::trace!(target: lwr_model::STEP_LOG, "step {what} {run}");
}

/// The reason a job wrote to `$LWR_NODE_BAD`, if it did (the file is removed).
fn take_node_bad(file: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(file).ok()?;
    let mut text = String::new();
    let read = f.take(MAX_NODE_BAD).read_to_string(&mut text);
    let _ = std::fs::remove_file(file);
    if let Err(e) = read {
        text = format!("(its reason could not be read: {e})");
    }
    let text: String = text.trim().chars().filter(|c| !c.is_control()).collect();
    Some(match text.is_empty() {
        true => "no reason given".into(),
        false => text,
    })
}

/// The node's own binary, for jobs that run lwr (decision jobs); `None` when the OS does
/// not say, and those jobs then fail saying LWR_BIN is empty.
fn lwr_binary() -> Option<String> {
    match std::env::current_exe() {
        Ok(path) => Some(path.display().to_string()),
        Err(e) => {
            tracing::warn!("cannot find this node's own binary for LWR_BIN: {e}");
            None
        }
    }
}

/// Runs blocking work (git, the file system) off the async workers.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the task failed: {e}")),
    }
}

/// Backoff for talking to a server that is away ([`timing::NODE_RETRY`], jittered so nodes
/// do not come back in lockstep after a server restart); logs once per outage.
struct Backoff {
    retries: u32,
    warned: bool,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            retries: 0,
            warned: false,
        }
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
        self.retries = self.retries.saturating_add(1);
        tokio::time::sleep(timing::NODE_RETRY.pause(self.retries)).await;
    }
}
