//! Staged artifact uploads: received and hashed, not yet stored, waiting for the
//! uploader's commit with its own hash (`POST /v1/runs/{id}/artifact-commits`).
//!
//! They live in memory: an uncommitted upload of the artifact store holds the bytes, so a
//! staged upload that is never committed is aborted (its bytes dropped) by the expiry sweep
//! or when its run's manifest arrives, and a server restart forgets it (the node sends
//! the artifact again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lwr_model::{NodeId, RunId};

use crate::artifact::Upload;

/// How long a staged upload waits for its commit; the node commits right after sending.
pub(crate) const STAGE_TTL: Duration = Duration::from_secs(600);
/// Staged uploads held at most: each holds an open upload of the artifact store.
pub(crate) const MAX_STAGED: usize = 256;
/// Staged uploads (and uploads being received to be staged) one node may hold: a node
/// commits each right after sending it, so one that holds many fills the server's slots
/// for every other node.
pub(crate) const MAX_STAGED_PER_NODE: usize = 24;
/// The same for one run.
pub(crate) const MAX_STAGED_PER_RUN: usize = 16;

/// What a staged upload holds until its commit.
pub(crate) struct Staged {
    pub run: RunId,
    pub node: NodeId,
    pub name: String,
    pub kind: String,
    pub path: String,
    pub content_type: String,
    pub expires: Duration,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub upload: Box<dyn Upload>,
    pub since: Instant,
}

#[derive(Default)]
pub struct Staging {
    uploads: Mutex<HashMap<String, Staged>>,
    /// Uploads being received to be staged, by run and node: they count as staged.
    receiving: Mutex<Vec<(RunId, NodeId)>>,
}

/// A slot taken for an upload being received; given back when dropped (by then the upload
/// is staged, and counts as such, or refused).
pub(crate) struct Reserved<'a> {
    staging: &'a Staging,
    run: RunId,
    node: NodeId,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut receiving = lwr_model::sync::lock(&self.staging.receiving);
        if let Some(i) = receiving.iter().position(|r| *r == (self.run, self.node)) {
            receiving.swap_remove(i);
        }
    }
}

impl Staging {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Staged>> {
        lwr_model::sync::lock(&self.uploads)
    }

    /// Takes a slot for an upload of `run` by `node` to be staged, or says which limit it
    /// would pass: the server's, the node's or the run's.
    pub(crate) fn reserve(&self, run: RunId, node: NodeId) -> Result<Reserved<'_>, String> {
        let uploads = self.lock();
        let mut receiving = lwr_model::sync::lock(&self.receiving);
        let held = uploads
            .values()
            .map(|s| (s.run, s.node))
            .chain(receiving.iter().copied());
        let (mut total, mut of_node, mut of_run) = (0, 0, 0);
        for (r, n) in held {
            total += 1;
            of_node += usize::from(n == node);
            of_run += usize::from(r == run);
        }
        if total >= MAX_STAGED {
            return Err(format!(
                "{MAX_STAGED} uploads wait for their commit already"
            ));
        }
        if of_node >= MAX_STAGED_PER_NODE {
            return Err(format!(
                "node {node} has {MAX_STAGED_PER_NODE} uploads waiting for their commit: commit them first"
            ));
        }
        if of_run >= MAX_STAGED_PER_RUN {
            return Err(format!(
                "run {run} has {MAX_STAGED_PER_RUN} uploads waiting for their commit: commit them first"
            ));
        }
        receiving.push((run, node));
        Ok(Reserved {
            staging: self,
            run,
            node,
        })
    }

    pub(crate) fn add(&self, id: String, staged: Staged) {
        self.lock().insert(id, staged);
    }

    /// Takes the staged upload `id` if it belongs to `run` and `node`.
    pub(crate) fn take(&self, id: &str, run: RunId, node: NodeId) -> Option<Staged> {
        let mut uploads = self.lock();
        match uploads.get(id) {
            Some(s) if s.run == run && s.node == node => uploads.remove(id),
            _ => None,
        }
    }

    /// Takes the staged uploads of `run`, or (with `None`) those older than `ttl`.
    pub(crate) fn take_stale(&self, run: Option<RunId>, ttl: Duration) -> Vec<Staged> {
        let mut uploads = self.lock();
        let stale: Vec<String> = uploads
            .iter()
            .filter(|(_, s)| match run {
                Some(run) => s.run == run,
                None => s.since.elapsed() > ttl,
            })
            .map(|(id, _)| id.clone())
            .collect();
        stale.iter().filter_map(|id| uploads.remove(id)).collect()
    }
}

/// Drops the bytes of staged uploads nobody will commit.
pub(crate) async fn abort(stale: Vec<Staged>) {
    for s in stale {
        if let Err(e) = s.upload.abort().await {
            tracing::warn!("run {}: dropping staged upload {}: {e}", s.run, s.key);
        }
    }
}
