//! Providers: where nodes come from. `static` (the default) leaves it to nodes to register
//! themselves; `local` starts and stops `lwr node` processes on this machine; `command` runs
//! an operator's scripts (the way to cloud instances, Kubernetes and the like).
//!
//! One scaler loop serves every provider: once a second it counts ready jobs and the runs
//! of the nodes it started, and asks the provider for as many nodes as that takes (within
//! `min..=max`); nodes idle for `idle` are stopped, down to `min` (0: none when idle).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwr_model::NodeState;
use lwr_model::sync::lock;
use thiserror::Error;

use crate::AppState;
use crate::duty::Duty;

#[derive(Debug, Error)]
pub enum ProviderError {
    #[error("cannot start node {name}: {source}")]
    Start {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--provider-user {user}: {detail}")]
    User { user: String, detail: String },
    #[error("cannot make the provided nodes' work dir {dir}: {source}")]
    WorkDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` for node {name} failed: {detail}")]
    Command {
        cmd: String,
        name: String,
        detail: String,
    },
}

/// How the server gets nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    Static,
    Local,
    Command { up: String, down: String },
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub min: u32,
    pub max: u32,
    /// A started node that ran nothing for this long is stopped (down to `min`).
    pub idle: Duration,
    /// Slots of each started node.
    pub slots: u32,
    /// `local`: the user its nodes (and so their jobs) run as; `None`: the server's.
    pub user: Option<String>,
}

impl Default for ProviderConfig {
    fn default() -> ProviderConfig {
        ProviderConfig {
            kind: ProviderKind::Static,
            min: 0,
            max: 4,
            idle: Duration::from_secs(30),
            slots: 1,
            user: None,
        }
    }
}

/// A node to start: it registers as `name` with `server`.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: String,
    pub server: String,
    pub slots: u32,
    /// On a server with `--auth`: the `node:register` token the node registers with, given
    /// to it as `LWR_TOKEN` (never on a command line, where `ps` shows it).
    pub token: Option<String>,
}

/// Starts and stops nodes by name. Calls may block (they run processes).
pub trait Provider: Send + Sync {
    /// For logs: `local`, `command (./up.sh, ./down.sh)`.
    fn describe(&self) -> String;
    fn start(&self, node: &NewNode) -> Result<(), ProviderError>;
    /// Stops node `name` (it finishes its running jobs first, as on SIGTERM).
    fn stop(&self, name: &str) -> Result<(), ProviderError>;
    /// The server stops: so do the nodes it started itself (waits a few seconds at most).
    fn stop_all(&self) {}
}

/// `lwr node` processes on this machine, children of the server. They work outside the
/// server's data dir (a job there could reach the database), as `--provider-user` when
/// given, and stop with the server. A node's work dir is removed once its process has
/// exited; the provider's own dir once every node is gone (when the server stops).
pub struct Local {
    bin: PathBuf,
    /// The server's, for the nodes' own logs (the server writes them).
    logs: PathBuf,
    /// Where the nodes' work dirs are: a fresh dir outside the data dir.
    work: PathBuf,
    /// The uid and gid nodes run as, when not the server's.
    user: Option<(u32, u32)>,
    children: Mutex<BTreeMap<String, Child>>,
    /// Nodes told to stop whose process has not exited yet (their reapers run).
    stopping: Arc<(Mutex<usize>, std::sync::Condvar)>,
}

/// How long a stopping server waits for its provided nodes to exit before it leaves their
/// work dirs behind: more than the 10 s an idle node may spend trying to report results to
/// the server that just stopped (a node finishes its running jobs first, which may take
/// longer still).
const STOP_GRACE: Duration = Duration::from_secs(15);

impl Local {
    pub fn new(bin: PathBuf, data_dir: &Path, user: Option<&str>) -> Result<Local, ProviderError> {
        let user = user.map(resolve_user).transpose()?;
        let work = std::env::temp_dir().join(format!(
            "lwr-provided-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        // Other users may pass through it (to their own node's dir), nothing more.
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&work)
            .map_err(|source| ProviderError::WorkDir {
                dir: work.clone(),
                source,
            })?;
        Ok(Local {
            bin,
            logs: data_dir.join("provided-nodes"),
            work,
            user,
            children: Mutex::new(BTreeMap::new()),
            stopping: Default::default(),
        })
    }

    /// The node's work dir, its user's alone.
    fn work_dir(&self, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.work.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }
}

/// The uid and gid of user `name` (or a numeric uid).
fn resolve_user(name: &str) -> Result<(u32, u32), ProviderError> {
    use nix::unistd::{Uid, User};
    let err = |detail: String| ProviderError::User {
        user: name.into(),
        detail,
    };
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    }
    .map_err(|e| err(e.to_string()))?
    .ok_or_else(|| err("no such user".into()))?;
    let (uid, gid) = (found.uid.as_raw(), found.gid.as_raw());
    if uid != nix::unistd::geteuid().as_raw() && !nix::unistd::geteuid().is_root() {
        return Err(err(
            "only a server running as root can start nodes as another user".into(),
        ));
    }
    Ok((uid, gid))
}

impl Provider for Local {
    fn describe(&self) -> String {
        format!(
            "local ({} node, working in {})",
            self.bin.display(),
            self.work.display()
        )
    }

    fn start(&self, node: &NewNode) -> Result<(), ProviderError> {
        let name = node.name.as_str();
        let failed = |source| ProviderError::Start {
            name: name.into(),
            source,
        };
        let work_dir = self.work_dir(name).map_err(failed)?;
        let log = std::fs::create_dir_all(&self.logs)
            .and_then(|_| std::fs::File::create(self.logs.join(format!("{name}.log"))))
            .map_err(failed)?;
        let err = log.try_clone().map_err(failed)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .args(["--server", &node.server, "--name", name])
            .args(["--slots", &node.slots.to_string()])
            .arg("--work-dir")
            .arg(&work_dir)
            .current_dir(&work_dir);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            // std drops root's supplementary groups with the uid. Its own home: the
            // server's is not its to read or write.
            cmd.uid(uid).gid(gid).env("HOME", &work_dir);
        }
        give_token(&mut cmd, node);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(failed)?;
        lock(&self.children).insert(name.to_string(), child);
        Ok(())
    }

    fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let child = lock(&self.children).remove(name);
        if let Some(mut child) = child {
            // SIGTERM: the node claims nothing more, finishes what it runs and exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            // Reaped off the scaler's path; its work dir (checkouts, caches, outboxes) goes
            // with it, since no later node of this server reuses the name.
            let dir = self.work.join(name);
            let stopping = self.stopping.clone();
            *lock(&stopping.0) += 1;
            std::thread::spawn(move || {
                let _ = child.wait();
                remove_dir(&dir);
                *lock(&stopping.0) -= 1;
                stopping.1.notify_all();
            });
        }
        Ok(())
    }

    /// Stops every node, then waits (at most [`STOP_GRACE`]) for them to exit and removes
    /// the provider's dir; a node still running by then keeps its dir, and says so.
    fn stop_all(&self) {
        let names: Vec<String> = lock(&self.children).keys().cloned().collect();
        for name in names {
            let _ = self.stop(&name);
        }
        let deadline = Instant::now() + STOP_GRACE;
        let (count, exited) = &*self.stopping;
        let mut left = lock(count);
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            left = match exited.wait_timeout(left, deadline - now) {
                Ok((left, _)) => left,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        if *left == 0 {
            remove_dir(&self.work);
        } else {
            tracing::warn!(
                "provider: {} provided nodes still finishing their jobs; their work dirs stay \
                 in {}",
                *left,
                self.work.display()
            );
        }
    }
}

/// Removes a provided node's (or the provider's) dir; gone already is fine.
fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("provider: cannot remove {}: {e}", dir.display());
        }
        _ => {}
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Once: the server's stop has usually done it.
        if !lock(&self.children).is_empty() {
            self.stop_all();
        }
    }
}

/// The node's token as `LWR_TOKEN`, in place of one the server itself may have been given.
fn give_token(cmd: &mut Command, node: &NewNode) {
    match &node.token {
        Some(token) => cmd.env("LWR_TOKEN", token),
        None => cmd.env_remove("LWR_TOKEN"),
    };
}

/// Operator scripts: `up` starts a node, `down` stops it; both get `LWR_NODE_NAME`,
/// `LWR_SERVER` and `LWR_NODE_SLOTS` in their environment, and `up` on a server with
/// `--auth` the node's token as `LWR_TOKEN`.
pub struct Scripts {
    up: String,
    down: String,
}

impl Scripts {
    pub fn new(up: String, down: String) -> Scripts {
        Scripts { up, down }
    }

    fn run(&self, cmd: &str, node: &NewNode) -> Result<(), ProviderError> {
        let name = node.name.as_str();
        let mut sh = Command::new("sh");
        sh.args(["-c", cmd])
            .env("LWR_NODE_NAME", name)
            .env("LWR_SERVER", &node.server)
            .env("LWR_NODE_SLOTS", node.slots.to_string());
        give_token(&mut sh, node);
        let out = sh
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ProviderError::Command {
                cmd: cmd.into(),
                name: name.into(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr);
        Err(ProviderError::Command {
            cmd: cmd.into(),
            name: name.into(),
            detail: format!(
                "{}: {}",
                out.status,
                said.trim().lines().last().unwrap_or_default()
            ),
        })
    }
}

impl Provider for Scripts {
    fn describe(&self) -> String {
        format!("command (up `{}`, down `{}`)", self.up, self.down)
    }

    fn start(&self, node: &NewNode) -> Result<(), ProviderError> {
        self.run(&self.up, node)
    }

    fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let node = NewNode {
            name: name.into(),
            server: String::new(),
            slots: 0,
            token: None,
        };
        self.run(&self.down, &node)
    }
}

/// How many nodes a provider should have: enough for the ready jobs and the runs its nodes
/// hold, within `min..=max`. Pure, for tests.
pub fn wanted(ready: u64, held: u64, slots: u32, min: u32, max: u32) -> u32 {
    let slots = u64::from(slots.max(1));
    let need = (ready + held).div_ceil(slots);
    (need.min(u64::from(max)) as u32).max(min)
}

/// A node the provider started: its name, when it last held a run, and its token's id.
struct Started {
    name: String,
    busy_at: Instant,
    token: Option<i64>,
}

/// A stopped node whose token is revoked once it has held no run (it reports its last
/// results with that token) for a grace period.
struct Retiring {
    name: String,
    token: i64,
    since: Instant,
}

/// How long a stopped node keeps its token after it last held a run: time to report.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// The scaler loop; runs until the server stops, and scales while this server holds the
/// provider duty (one scaler for all the servers sharing a database). Nodes are numbered by
/// the duty's sequence in the database, so no two servers, nor one server before and after
/// a restart, ever start two nodes of one name.
pub(crate) async fn scale(state: Arc<AppState>, provider: Arc<dyn Provider>, server: String) {
    let config = state.config.provider.clone();
    tracing::info!(
        "provider {}: {}..={} nodes of {} slots, stopped after {:?} idle",
        provider.describe(),
        config.min,
        config.max,
        config.slots,
        config.idle
    );
    let tokens = match state.config.auth {
        true => NodeTokens::start(&state).await,
        false => None,
    };
    let mut retiring: Vec<Retiring> = Vec::new();
    let mut started: Vec<Started> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let store = state.queue.store();
        if !state.duties.holds(Duty::Provider) {
            // Another server scales now and counts only its own nodes: ours stop (each
            // finishes its jobs first), or the fleet could hold more than `max`.
            if !started.is_empty() {
                tracing::info!(
                    "provider: another server scales now; stopping {} started here",
                    lwr_model::words::count(started.len() as u64, "node", "nodes")
                );
            }
            for gone in std::mem::take(&mut started) {
                if let Some(token) = gone.token {
                    retiring.push(Retiring {
                        name: gone.name.clone(),
                        token,
                        since: Instant::now(),
                    });
                }
                let p = provider.clone();
                let name = gone.name.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || p.stop(&name)).await {
                    tracing::warn!("provider: {e}");
                }
            }
            if retiring.is_empty() {
                continue; // nothing to look at until this server scales again
            }
        }
        let (ready, pool) = match (store.ready_jobs().await, store.pool().await) {
            (Ok(ready), Ok(pool)) => (ready, pool),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("provider: cannot read the queue: {e}");
                continue;
            }
        };
        let now = Instant::now();
        let mut held = 0u64;
        for s in &mut started {
            let running = pool
                .nodes()
                .iter()
                .find(|n| n.name == s.name)
                .map_or(0, |n| n.running);
            if running > 0 {
                s.busy_at = now;
            }
            held += u64::from(running);
        }
        let mut retired = Vec::new();
        retiring.retain_mut(|r| {
            let running = pool
                .nodes()
                .iter()
                .find(|n| n.name == r.name)
                .map_or(0, |n| n.running);
            if running > 0 {
                r.since = now;
            }
            let done = now.duration_since(r.since) >= RETIRE_GRACE;
            if done {
                retired.push(r.token);
            }
            !done
        });
        if let Some(tokens) = &tokens {
            tokens.revoke(&retired).await;
        }
        let want = match state.duties.holds(Duty::Provider) {
            true => wanted(ready, held, config.slots, config.min, config.max) as usize,
            false => 0,
        };
        while started.len() < want {
            // Numbered in the database only while we still hold the duty there.
            let next = match state.duties.next_number(Duty::Provider).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("provider: cannot number a new node: {e}");
                    break;
                }
            };
            let name = format!("{}-{next}", provider_prefix(&config.kind));
            // One token per node: a node's token acts for that node only.
            let token = match &tokens {
                Some(tokens) => match tokens.make(&name).await {
                    Some(made) => Some(made),
                    None => break,
                },
                None => None,
            };
            let p = provider.clone();
            let node = NewNode {
                name: name.clone(),
                server: server.clone(),
                slots: config.slots,
                token: token.as_ref().map(|(_, secret)| secret.clone()),
            };
            match tokio::task::spawn_blocking(move || p.start(&node)).await {
                Ok(Ok(())) => {
                    tracing::info!("provider: started node {name} ({ready} jobs ready)");
                    started.push(Started {
                        name,
                        busy_at: now,
                        token: token.map(|(id, _)| id),
                    });
                }
                failed => {
                    match failed {
                        Ok(Err(e)) => tracing::warn!("provider: {e}"),
                        _ => tracing::warn!("provider: starting {name} failed"),
                    }
                    // A node that never started would keep its token forever.
                    if let (Some(tokens), Some((id, _))) = (&tokens, token) {
                        tokens.revoke(&[id]).await;
                    }
                    break;
                }
            }
        }
        // Stop idle nodes, newest first, while more are running than wanted.
        let mut i = started.len();
        while i > 0 && started.len() > want.max(config.min as usize) {
            i -= 1;
            if now.duration_since(started[i].busy_at) < config.idle {
                continue;
            }
            let gone = started.remove(i);
            if let Some(token) = gone.token {
                retiring.push(Retiring {
                    name: gone.name.clone(),
                    token,
                    since: now,
                });
            }
            let p = provider.clone();
            let name = gone.name.clone();
            match tokio::task::spawn_blocking(move || p.stop(&name)).await {
                Ok(Ok(())) => tracing::info!("provider: stopped idle node {}", gone.name),
                Ok(Err(e)) => tracing::warn!("provider: {e}"),
                Err(e) => tracing::warn!("provider: stopping {}: {e}", gone.name),
            }
            // Out of the pool at once (no job waits for it), and enabled again should a node
            // of that name register later.
            if let Ok(id) = store.find_node(&gone.name).await
                && let Err(e) = store
                    .set_node_state(
                        id,
                        NodeState::Draining,
                        Some("stopped by the provider"),
                        false,
                    )
                    .await
            {
                tracing::warn!("provider: {e}");
            }
        }
    }
}

/// The `node:register` tokens of this server's provided nodes, one per node, labelled
/// `lwr provider of HOST:DATA_DIR: node NAME`. A start revokes those of an earlier start of
/// the same server (it does not adopt their nodes); a stopped node's token is revoked once
/// it has reported.
struct NodeTokens {
    state: Arc<AppState>,
    /// The labels' common start, naming this server.
    prefix: String,
}

impl NodeTokens {
    async fn start(state: &Arc<AppState>) -> Option<NodeTokens> {
        let data_dir = &state.config.data_dir;
        let prefix = format!(
            "lwr provider of {}:{}: node ",
            hostname(),
            std::path::absolute(data_dir)
                .unwrap_or_else(|_| data_dir.clone())
                .display()
        );
        let store = state.queue.store();
        if let Err(e) = store
            .revoke_tokens_labelled(&prefix, lwr_store::now_ms())
            .await
        {
            tracing::error!("provider: cannot revoke an earlier start's tokens: {e}");
            return None;
        }
        Some(NodeTokens {
            state: state.clone(),
            prefix,
        })
    }

    /// A token for node `name`: its id and secret; `None` (logged) when it cannot be made.
    async fn make(&self, name: &str) -> Option<(i64, String)> {
        let label = format!("{}{name}", self.prefix);
        let scopes = lwr_model::Scopes(vec![lwr_model::Scope::NodeRegister]);
        let store = self.state.queue.store();
        let made = match store
            .create_token(&scopes, Some(&label), None, lwr_store::now_ms())
            .await
        {
            // For that node only, from the start.
            Ok((info, secret)) => store
                .bind_node_token(info.id, name, None)
                .await
                .map(|_| (info.id, secret)),
            Err(e) => Err(e),
        };
        match made {
            Ok(made) => Some(made),
            Err(e) => {
                tracing::error!("provider: cannot make a token for node {name}: {e}");
                None
            }
        }
    }

    /// Revokes the tokens of stopped nodes that are done reporting.
    async fn revoke(&self, ids: &[i64]) {
        let store = self.state.queue.store();
        for &id in ids {
            if let Err(e) = store.revoke_token(id, lwr_store::now_ms()).await {
                tracing::warn!("provider: cannot revoke token {id} of a stopped node: {e}");
            }
        }
    }
}

/// This machine's name, for labels; two servers sharing a database may have the same data
/// dir path on different machines.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn provider_prefix(kind: &ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Local => "local",
        _ => "provided",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_wanted_follow_the_work_within_bounds() {
        assert_eq!(wanted(0, 0, 1, 0, 4), 0);
        assert_eq!(wanted(3, 0, 1, 0, 4), 3);
        assert_eq!(wanted(30, 0, 1, 0, 4), 4);
        assert_eq!(wanted(3, 2, 2, 0, 4), 3);
        assert_eq!(wanted(0, 0, 1, 1, 4), 1);
    }
}
