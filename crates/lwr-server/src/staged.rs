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
}

impl Staging {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Staged>> {
        lwr_model::sync::lock(&self.uploads)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
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
