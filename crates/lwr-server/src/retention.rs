//! Retention (`--keep`): graphs with no activity for that long go with their jobs, runs,
//! pushes, logs and artifacts, a few graphs per transaction so the writer is never held
//! long. Run every [`timing::RETENTION_SWEEP`] by the server holding the duty, and at once
//! by `POST /v1/gc`. The artifact store's bytes are deleted after the rows' transaction
//! commits: bytes without rows would leak, but a failed delete only leaks (it is logged).

use std::sync::Arc;
use std::time::Duration;

use lwr_model::api::{GC_LISTED, GcResult};
use lwr_model::{DurationMs, GraphId, timing};
use lwr_store::{Store, StoreError, now_ms};

use crate::AppState;
use crate::artifact::ArtifactStore;
use crate::duty::Duty;

/// Graphs per transaction: each takes its jobs, runs and artifacts with it.
const GRAPHS_PER_TRANSACTION: i64 = 4;
/// Graphs a dry run counts per query.
const DRY_RUN_PAGE: i64 = 200;

/// Runs the retention pass periodically while this server holds the duty.
pub(crate) async fn sweep(state: Arc<AppState>) {
    let Some(keep) = state.config.keep else {
        return;
    };
    let mut tick = tokio::time::interval(timing::RETENTION_SWEEP);
    loop {
        tick.tick().await;
        if !state.duties.holds(Duty::Retention) {
            continue;
        }
        let store = state.queue.store().clone();
        match collect(
            &store,
            state.artifacts.as_ref(),
            &state.config.data_dir,
            keep,
            false,
        )
        .await
        {
            Ok(r) if r.graphs > 0 => tracing::info!(
                "retention removed {} graphs ({} jobs, {} runs, {} artifacts)",
                r.graphs,
                r.jobs,
                r.runs,
                r.artifacts
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("retention pass failed: {e}"),
        }
    }
}

/// One pass: removes (or, `dry_run`, counts) the graphs with no activity for `keep`.
pub async fn collect(
    store: &Store,
    artifacts: &dyn ArtifactStore,
    data_dir: &std::path::Path,
    keep: Duration,
    dry_run: bool,
) -> Result<GcResult, StoreError> {
    let before = now_ms().minus(DurationMs::from_std(keep));
    let mut out = GcResult {
        dry_run,
        before_ms: before.get(),
        ..GcResult::default()
    };
    let mut after: Option<GraphId> = None;
    loop {
        let limit = match dry_run {
            true => DRY_RUN_PAGE,
            false => GRAPHS_PER_TRANSACTION,
        };
        let batch = store.retention_candidates(before, after, limit).await?;
        let Some(last) = batch.last().copied() else {
            return Ok(out);
        };
        after = Some(last);
        let removed = match dry_run {
            true => store.retention_counts(&batch).await?,
            false => store.remove_graphs(&batch, before).await?,
        };
        if !dry_run {
            delete_bytes(artifacts, data_dir, &removed).await;
        }
        out.graphs += removed.graphs.len() as u64;
        let room = GC_LISTED.saturating_sub(out.graph_ids.len());
        out.graph_ids
            .extend(removed.graphs.iter().take(room).copied());
        out.jobs += removed.jobs;
        out.runs += removed.runs;
        out.pushes += removed.pushes;
        out.artifacts += removed.artifacts;
        // Between transactions: claims and results waiting for the writer go first.
        tokio::task::yield_now().await;
    }
}

/// Deletes the removed runs' logs and artifacts from the artifact store, and this server's
/// local copies of the logs.
async fn delete_bytes(
    artifacts: &dyn ArtifactStore,
    data_dir: &std::path::Path,
    removed: &lwr_store::Removed,
) {
    let logs = removed.run_ids.iter().map(|r| crate::logs::key(*r));
    for key in removed.artifact_keys.iter().cloned().chain(logs) {
        if let Err(e) = artifacts.delete(&key).await {
            tracing::warn!("retention: cannot delete {key} from the artifact store: {e}");
        }
    }
    for run in &removed.run_ids {
        let copy = crate::logs::path(data_dir, *run);
        match tokio::fs::remove_file(&copy).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("retention: cannot delete {}: {e}", copy.display()),
        }
    }
}
