//! Providers: where nodes come from. `static` (the default) leaves it to nodes to register
//! themselves; `local` starts and stops `lwr node` processes on this machine; `command` runs
//! an operator's scripts (the way to cloud instances, Kubernetes and the like).
//!
//! One scaler loop serves every provider: once a second it counts ready jobs and the runs
//! of the nodes it started, and asks the provider for as many nodes as that takes (within
//! `min..=max`); nodes idle for `idle` are stopped, down to `min` (0: none when idle).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwr_model::NodeState;
use thiserror::Error;

use crate::AppState;

#[derive(Debug, Error)]
pub enum ProviderError {
    #[error("cannot start node {name}: {source}")]
    Start {
        name: String,
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
}

impl Default for ProviderConfig {
    fn default() -> ProviderConfig {
        ProviderConfig {
            kind: ProviderKind::Static,
            min: 0,
            max: 4,
            idle: Duration::from_secs(30),
            slots: 1,
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
}

/// `lwr node` processes on this machine, children of the server.
pub struct Local {
    bin: PathBuf,
    work: PathBuf,
    children: Mutex<BTreeMap<String, Child>>,
}

impl Local {
    pub fn new(bin: PathBuf, work: PathBuf) -> Local {
        Local {
            bin,
            work,
            children: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Provider for Local {
    fn describe(&self) -> String {
        format!("local ({} node)", self.bin.display())
    }

    fn start(&self, node: &NewNode) -> Result<(), ProviderError> {
        let name = node.name.as_str();
        let work_dir = self.work.join(name);
        let log = std::fs::create_dir_all(&self.work)
            .and_then(|_| std::fs::File::create(self.work.join(format!("{name}.log"))))
            .map_err(|source| ProviderError::Start {
                name: name.into(),
                source,
            })?;
        let err = log.try_clone().map_err(|source| ProviderError::Start {
            name: name.into(),
            source,
        })?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .args(["--server", &node.server, "--name", name])
            .args(["--slots", &node.slots.to_string()])
            .arg("--work-dir")
            .arg(&work_dir)
            .env_remove("LWR_TOKEN");
        if let Some(token) = &node.token {
            cmd.env("LWR_TOKEN", token);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| ProviderError::Start {
                name: name.into(),
                source,
            })?;
        lock(&self.children).insert(name.to_string(), child);
        Ok(())
    }

    fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let child = lock(&self.children).remove(name);
        if let Some(mut child) = child {
            // SIGTERM: the node claims nothing more, finishes what it runs and exits.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            // Reaped off the scaler's path.
            std::thread::spawn(move || child.wait());
        }
        Ok(())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let names: Vec<String> = lock(&self.children).keys().cloned().collect();
        for name in names {
            let _ = self.stop(&name);
        }
    }
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
            .env("LWR_NODE_SLOTS", node.slots.to_string())
            .env_remove("LWR_TOKEN");
        if let Some(token) = &node.token {
            sh.env("LWR_TOKEN", token);
        }
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

/// A node the provider started: its name and when it last held a run.
struct Started {
    name: String,
    busy_at: Instant,
}

/// The scaler loop; runs until the server stops.
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
    let token = match state.config.auth {
        true => node_token(&state).await,
        false => None,
    };
    let mut started: Vec<Started> = Vec::new();
    let mut next = 1u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let store = state.queue.store();
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
        let want = wanted(ready, held, config.slots, config.min, config.max) as usize;
        while started.len() < want {
            let name = format!("{}-{next}", provider_prefix(&config.kind));
            next += 1;
            let p = provider.clone();
            let node = NewNode {
                name: name.clone(),
                server: server.clone(),
                slots: config.slots,
                token: token.clone(),
            };
            match tokio::task::spawn_blocking(move || p.start(&node)).await {
                Ok(Ok(())) => {
                    tracing::info!("provider: started node {name} ({ready} jobs ready)");
                    started.push(Started { name, busy_at: now });
                }
                Ok(Err(e)) => {
                    tracing::warn!("provider: {e}");
                    break;
                }
                Err(e) => {
                    tracing::warn!("provider: starting {name}: {e}");
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
                    .set_node_state(id, NodeState::Draining, Some("stopped by the provider"))
                    .await
            {
                tracing::warn!("provider: {e}");
            }
        }
    }
}

/// The `node:register` token this server's provided nodes register with, made at start;
/// the one an earlier start of the same server (same data dir) made is revoked. Without it
/// (an error, logged) provided nodes are refused and say so in their logs.
async fn node_token(state: &AppState) -> Option<String> {
    let data_dir = &state.config.data_dir;
    let label = format!(
        "lwr provider nodes of the server with data dir {}",
        std::path::absolute(data_dir)
            .unwrap_or_else(|_| data_dir.clone())
            .display()
    );
    let store = state.queue.store();
    let now = lwr_store::now_ms();
    let made = async {
        store.revoke_tokens_labelled(&label, false, now).await?;
        let scopes = lwr_model::Scopes(vec![lwr_model::Scope::NodeRegister]);
        store.create_token(&scopes, Some(&label), None, now).await
    };
    match made.await {
        Ok((_, secret)) => Some(secret),
        Err(e) => {
            tracing::error!("provider: cannot make a token for its nodes: {e}");
            None
        }
    }
}

fn provider_prefix(kind: &ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Local => "local",
        _ => "provided",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
