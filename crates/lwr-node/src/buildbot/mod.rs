//! The Buildbot bridge: a node (`lwr node --buildbot URL`) whose jobs are builds on a
//! Buildbot master. It claims, heartbeats and reports through the node's own machinery;
//! what differs is how a run runs (`run.rs`: force the build, follow it, map its result),
//! where its log comes from (`logs.rs`), and that a restarted bridge resumes its runs
//! instead of killing them: each run's assignment is kept in `WORK/buildbot/RUN.json` until
//! its result is recorded, and the build it started carries the run in its buildset reason.
//! The master's event stream and one poller (`watch.rs`) follow all of the bridge's builds,
//! whatever their number.

mod logs;
pub mod rest;
mod run;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use lwr_model::RunId;
use lwr_model::api::{Assignment, RunResult};
use lwr_model::buildbot::{BRIDGE_TAG, builder_tag};
use lwr_model::sync::lock;
use tokio::sync::oneshot;

pub use rest::{BuildbotError, Credentials, Rest};

use crate::{Backoff, Node};

/// `lwr node --buildbot URL`, with the credentials from the environment.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub url: String,
    pub credentials: Credentials,
}

pub(crate) struct Bridge {
    pub(crate) rest: Rest,
    /// `WORK/buildbot`: one file per run in progress.
    state_dir: PathBuf,
    /// The build requests the runs follow, the task that polls them and the one that
    /// follows the master's event stream.
    watched: Arc<watch::Watched>,
    poller: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.poller.abort();
        self.events.abort();
    }
}

impl Bridge {
    pub(crate) fn new(
        config: &BridgeConfig,
        work_dir: &std::path::Path,
    ) -> Result<Bridge, BuildbotError> {
        let rest = Rest::new(&config.url, config.credentials.clone())?;
        let watched = Arc::new(watch::Watched::default());
        let poller = tokio::spawn(watch::poll(rest.clone(), watched.clone()));
        let events = tokio::spawn(watch::follow_events(rest.clone(), watched.clone()));
        Ok(Bridge {
            rest,
            state_dir: work_dir.join("buildbot"),
            watched,
            poller,
            events,
        })
    }

    /// The node tags of the bridge: `buildbot` (the master's URL) and `buildbot.builder.NAME`
    /// for each builder lwr's force scheduler may start. Waits for a master that is down,
    /// saying so; a master without the scheduler is an error.
    pub(crate) async fn tags(&self) -> Result<BTreeMap<String, String>, BuildbotError> {
        let mut backoff = Backoff::new();
        let builders = loop {
            match self.rest.forceable_builders().await {
                Ok(b) => break b,
                Err(e) if e.is_transient() => backoff.wait(&e.to_string()).await,
                Err(e) => return Err(e),
            }
        };
        backoff.reset();
        if builders.is_empty() {
            tracing::warn!(
                "Buildbot at {}: the lwr scheduler may start no builder (LWR_BUILDERS is empty)",
                self.rest.base()
            );
        }
        tracing::info!(
            "bridging to Buildbot at {}: builders {}",
            self.rest.base(),
            builders.join(", ")
        );
        let mut tags: BTreeMap<String, String> = builders
            .iter()
            .map(|b| (builder_tag(b), "true".to_string()))
            .collect();
        tags.insert(BRIDGE_TAG.into(), self.rest.base().to_string());
        Ok(tags)
    }

    fn state_file(&self, run: RunId) -> PathBuf {
        self.state_dir.join(format!("{run}.json"))
    }

    /// Keeps `a` on disk before its build is forced, so a restart can resume it.
    fn save(&self, a: &Assignment) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let text = serde_json::to_vec(a).map_err(std::io::Error::other)?;
        let file = self.state_file(a.run_id);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &file)
    }

    fn forget(&self, run: RunId) {
        let _ = std::fs::remove_file(self.state_file(run));
    }

    /// Runs a previous life left going, except those whose result it already recorded.
    pub(crate) fn saved(&self, recorded: &[RunResult]) -> Vec<Assignment> {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Assignment>(&t).ok())
            {
                Some(a) if recorded.iter().any(|r| r.run_id == a.run_id) => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(a) => out.push(a),
                None => {
                    tracing::warn!("dropping unreadable {}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }
}

impl Node {
    /// Runs a Buildbot job: a build on the master the bridge serves, with the build's
    /// logs as the run's log and the build in the manifest's `extra`. `resumed`: a previous
    /// life of the bridge claimed the run (and may have started its build).
    pub(crate) async fn run_build(&self, a: Assignment, resumed: bool) {
        let Some((slot_dir, slot_log)) = lock(&self.free_dirs).pop() else {
            tracing::error!("run {}: no free slot; left to expire", a.run_id);
            return;
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        lock(&self.running).insert(a.run_id, stop_tx);
        let wanted = self.run_logs.started(a.run_id, &slot_log);
        let extra_file = slot_dir.with_extension("extra.json");
        let _ = std::fs::remove_file(&extra_file);
        let result = match &self.bridge {
            None => RunResult::exception(
                a.run_id,
                "this node is no Buildbot bridge (lwr node --buildbot URL)",
            ),
            Some(bridge) => match bridge.save(&a) {
                Err(e) => RunResult::exception(
                    a.run_id,
                    format!("cannot keep the run in {}: {e}", bridge.state_dir.display()),
                ),
                Ok(()) => {
                    bridge
                        .run(
                            &self.client,
                            &a,
                            &slot_log,
                            &extra_file,
                            run::Signals {
                                stop: stop_rx,
                                wanted,
                            },
                            resumed,
                        )
                        .await
                }
            },
        };
        tracing::debug!(
            "run {} of {} ended: {:?}",
            a.run_id,
            a.job_name,
            result.outcome
        );
        let (result, outputs) = self
            .collect_artifacts(result, &slot_dir, &extra_file, &[])
            .await;
        self.keep_run_log(a.run_id, &slot_log);
        // Recorded in the journal first: a restart in between finds the result, not the run.
        self.reporter.submit(result, outputs);
        if let Some(bridge) = &self.bridge {
            bridge.forget(a.run_id);
        }
        lock(&self.running).remove(&a.run_id);
        lock(&self.free_dirs).push((slot_dir, slot_log));
    }
}
