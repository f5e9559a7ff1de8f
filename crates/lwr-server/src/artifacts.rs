//! Artifact uploads, downloads, manifests and the expiry sweep.
//!
//! Every refusal happens before anything becomes visible: the bytes go to a fresh key that
//! is committed only after the size and hash check out, and the row that names them is
//! added last (a duplicate name found then deletes the fresh key again). An upload without
//! a hash is staged (see [`crate::staged`]) until its uploader commits it with one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use lwr_model::api::{ArtifactCommit, ManifestUpload, StagedArtifact};
use lwr_model::manifest::{self, Artifact, LOG_ARTIFACT, Manifest};
use lwr_model::{DurationMs, NodeId, RunId, RunState};
use lwr_store::{NewArtifact, UploadTarget, now_ms, rfc3339};
use sha2::{Digest, Sha256};

use crate::artifact::{ArtifactError, ArtifactStore, ByteStream};
use crate::staged::{self, STAGE_TTL, Staged};
use crate::{ApiError, AppState};

/// What the node says about an artifact it uploads.
#[derive(Debug, Clone)]
pub(crate) struct UploadInfo {
    pub node: NodeId,
    pub name: String,
    /// `None`: stage the upload for a commit.
    pub sha256: Option<String>,
    pub kind: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The request's `Content-Length`, when it has one.
    pub length: Option<u64>,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::BAD_REQUEST, field, message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("artifact store: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// An artifact store's failure to keep `what`: 507 naming the store and `what` when its
/// disk is full, 500 otherwise.
fn storage_error(state: &AppState, what: &str, e: ArtifactError) -> ApiError {
    match &e {
        ArtifactError::Io { source, .. } => ApiError::storage(
            &format!("artifact store ({})", state.artifacts.describe()),
            what,
            source,
        ),
        _ => internal(e),
    }
}

/// Reads and drops what is left of a refused upload's body, up to `limit` bytes.
async fn drain(stream: &mut axum::body::BodyDataStream, limit: u64) {
    let mut left = limit;
    while let Some(Ok(chunk)) = stream.next().await {
        left = left.saturating_sub(chunk.len() as u64);
        if left == 0 {
            break;
        }
    }
}

/// Checks what an upload claims before reading its body.
fn check_info(info: &UploadInfo, limit: u64) -> Result<String, ApiError> {
    manifest::check_artifact_name(&info.name).map_err(|m| bad("name", m))?;
    if info.name == LOG_ARTIFACT {
        return Err(bad(
            "name",
            "'log' is the run's log: upload it with PUT /v1/runs/{id}/log",
        ));
    }
    if let Some(sha256) = &info.sha256
        && !manifest::valid_sha256(sha256)
    {
        return Err(bad("sha256", "sha256 must be 64 lowercase hex digits"));
    }
    if !manifest::valid_kind(&info.kind) {
        return Err(bad(
            "kind",
            format!("'{}' is not an artifact kind", info.kind),
        ));
    }
    if info.path.len() > 4096 || info.path.contains('\0') {
        return Err(bad("path", "path must be at most 4096 bytes, without NUL"));
    }
    let content_type = match &info.content_type {
        Some(ct)
            if ct.is_empty() || ct.len() > 200 || !ct.bytes().all(|b| (32..127).contains(&b)) =>
        {
            return Err(bad(
                "content_type",
                "content_type must be 1 to 200 printable ASCII characters",
            ));
        }
        Some(ct) => ct.clone(),
        None => manifest::content_type(&info.name).to_string(),
    };
    if let Some(len) = info.length
        && len > limit
    {
        return Err(too_large(limit));
    }
    Ok(content_type)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("artifact larger than the server's limit of {limit} bytes"),
    )
}

/// What a node may still send for one of its runs. Dependents trust what a run left, so
/// once its node reported its result, nothing of it changes (409); a run the server ended
/// without its node (cancelled, lease ran out) takes what its node still sends, each part
/// once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Log,
    Artifact,
    Manifest,
}

/// Checks that `node` holds run `run` and that the run still takes `part`; returns the
/// upload target (the job's own expiry, the log's hash).
pub(crate) async fn writable_run(
    state: &AppState,
    run: RunId,
    node: NodeId,
    part: Part,
) -> Result<UploadTarget, ApiError> {
    let target = match state.queue.store().upload_target(run).await? {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("run {run} not found"),
            ));
        }
        Some(t) if t.node_id != node => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("run {run} belongs to another node"),
            ));
        }
        Some(t) => t,
    };
    let sealed = |why: String| Err(ApiError::new(StatusCode::CONFLICT, why));
    let running = target.state == RunState::Running;
    if !running && !target.ended_by_server {
        return sealed(format!(
            "run {run} ended {} with its node's result: its log, artifacts and manifest are final",
            target.state
        ));
    }
    match part {
        Part::Artifact if target.has_manifest => sealed(format!(
            "run {run} has its manifest: no artifact can be added to it"
        )),
        Part::Log if !running && target.log_sha256.is_some() => {
            sealed(format!("run {run} ended and its log is stored"))
        }
        _ => Ok(target),
    }
}

/// What an upload of `PUT /v1/runs/{id}/artifacts` became.
pub(crate) enum Uploaded {
    /// Verified against the `sha256` given and stored.
    Stored(Artifact),
    /// Received without a `sha256`: waits for its commit.
    Staged(StagedArtifact),
}

/// Most of a refused upload's body read before answering (see [`upload`]).
const REFUSED_DRAIN: u64 = 1 << 20;

/// The checks of an upload before its body is read: its content type, its expiry, and its
/// place among the staged uploads (held until it is staged or refused).
async fn admit<'a>(
    state: &'a AppState,
    run: RunId,
    info: &UploadInfo,
    limit: u64,
) -> Result<(String, Duration, Option<crate::staged::Reserved<'a>>), ApiError> {
    let content_type = check_info(info, limit)?;
    let expires = writable_run(state, run, info.node, Part::Artifact)
        .await?
        .expires_secs
        .map(Duration::from_secs)
        .unwrap_or(state.config.artifact_expiry);
    let store = state.queue.store();
    if store.has_artifact(run, &info.name).await? {
        return Err(duplicate(run, &info.name));
    }
    // Held until the upload is staged (or refused): uploads being received count too.
    let slot = match info.sha256 {
        Some(_) => None,
        None => Some(state.staged.reserve(run, info.node).map_err(|why| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}: try again later"),
            )
        })?),
    };
    Ok((content_type, expires, slot))
}

/// Receives one artifact of run `run` from `body`, checking its size and hashing it. With
/// the `sha256` given, it is verified and stored; without, it is staged for a commit.
pub(crate) async fn upload(
    state: &AppState,
    run: RunId,
    info: UploadInfo,
    body: Body,
) -> Result<Uploaded, ApiError> {
    let limit = state.config.max_artifact_bytes;
    let mut stream = body.into_data_stream();
    let admitted = admit(state, run, &info, limit).await;
    let (content_type, expires, _slot) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // Read a small body all the same: an uploader still sending it would hear a
            // broken pipe instead of the answer. A big one is cut off.
            drain(&mut stream, REFUSED_DRAIN).await;
            return Err(e);
        }
    };
    let key = format!("{run}/{}", uuid::Uuid::new_v4());
    let what = format!("artifact '{}' of run {run}", info.name);
    let mut upload = match state.artifacts.begin(&key).await {
        Ok(upload) => upload,
        Err(e) => {
            drain(&mut stream, limit).await;
            return Err(storage_error(state, &what, e));
        }
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let refused = loop {
        let chunk = match stream.next().await {
            None => break None,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => break Some(ApiError::bad_request(format!("upload broke off: {e}"))),
        };
        size += chunk.len() as u64;
        if size > limit {
            break Some(too_large(limit));
        }
        hasher.update(&chunk);
        if let Err(e) = upload.write(chunk).await {
            // Read the rest, so the uploader hears the answer rather than a broken pipe.
            drain(&mut stream, limit.saturating_sub(size)).await;
            break Some(storage_error(state, &what, e));
        }
    };
    let refused = match refused {
        None => upload
            .finish()
            .await
            .err()
            .map(|e| storage_error(state, &what, e)),
        refused => refused,
    };
    if let Some(err) = refused {
        if let Err(e) = upload.abort().await {
            tracing::warn!("run {run}: dropping refused upload {key}: {e}");
        }
        return Err(err);
    }
    let staged = Staged {
        run,
        node: info.node,
        name: info.name,
        kind: info.kind,
        path: info.path,
        content_type,
        expires,
        key,
        size,
        sha256: hex::encode(hasher.finalize()),
        upload,
        since: Instant::now(),
    };
    match info.sha256 {
        Some(declared) => store_staged(state, staged, &declared)
            .await
            .map(Uploaded::Stored),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            let answer = StagedArtifact {
                upload: id.clone(),
                name: staged.name.clone(),
                size: staged.size,
                sha256: staged.sha256.clone(),
            };
            state.staged.add(id, staged);
            Ok(Uploaded::Staged(answer))
        }
    }
}

/// Stores the staged upload `commit.upload` of run `run` if `commit.sha256` matches what
/// was received; a mismatch drops the bytes.
pub(crate) async fn commit(
    state: &AppState,
    run: RunId,
    node: NodeId,
    commit: &ArtifactCommit,
) -> Result<Artifact, ApiError> {
    if !manifest::valid_sha256(&commit.sha256) {
        return Err(bad("sha256", "sha256 must be 64 lowercase hex digits"));
    }
    writable_run(state, run, node, Part::Artifact).await?;
    let staged = state
        .staged
        .take(&commit.upload, run, node)
        .ok_or_else(|| {
            ApiError::field(
                StatusCode::NOT_FOUND,
                "upload",
                format!(
                    "run {run} has no staged upload '{}' (expired, or the server restarted): \
                     send the artifact again",
                    commit.upload
                ),
            )
        })?;
    store_staged(state, staged, &commit.sha256).await
}

/// Verifies received bytes against the uploader's hash, makes them visible and adds the
/// row that names them; any refusal drops them.
async fn store_staged(
    state: &AppState,
    staged: Staged,
    declared: &str,
) -> Result<Artifact, ApiError> {
    let Staged {
        run,
        name,
        kind,
        path,
        content_type,
        expires,
        key,
        size,
        sha256: got,
        upload,
        ..
    } = staged;
    if got != declared {
        if let Err(e) = upload.abort().await {
            tracing::warn!("run {run}: dropping refused upload {key}: {e}");
        }
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sha256",
            format!(
                "sha256 mismatch for artifact '{name}': declared {declared}, received {got} ({size} bytes)"
            ),
        ));
    }
    upload
        .commit()
        .await
        .map_err(|e| storage_error(state, &format!("artifact '{name}' of run {run}"), e))?;
    let now = now_ms();
    let expires_at = now.plus(DurationMs::from_std(expires));
    let row = NewArtifact {
        run_id: run,
        name: name.clone(),
        kind: kind.clone(),
        path: path.clone(),
        size,
        sha256: got.clone(),
        content_type: content_type.clone(),
        storage_key: key.clone(),
        created_at: now,
        expires_at,
    };
    let added = state.queue.store().add_artifact(&row).await;
    if !matches!(added, Ok(true)) {
        // Lost a race with an upload of the same name, or the database failed: the bytes
        // must not outlive the refusal.
        if let Err(e) = state.artifacts.delete(&key).await {
            tracing::warn!("run {run}: cannot delete refused upload {key}: {e}");
        }
        added?;
        return Err(duplicate(run, &name));
    }
    Ok(Artifact {
        location: lwr_store::location(run, &name),
        name,
        kind,
        path,
        size,
        sha256: got,
        content_type,
        expires_at: Some(rfc3339(expires_at)),
    })
}

fn duplicate(run: RunId, name: &str) -> ApiError {
    ApiError::field(
        StatusCode::CONFLICT,
        "name",
        format!("run {run} already has an artifact named '{name}'"),
    )
}

/// Records the node's part of a run's manifest, once its artifacts are stored.
pub(crate) async fn put_manifest(
    state: &AppState,
    run: RunId,
    node: NodeId,
    upload: &ManifestUpload,
) -> Result<(), ApiError> {
    writable_run(state, run, node, Part::Manifest).await?;
    let store = state.queue.store();
    for name in &upload.artifacts {
        if name != LOG_ARTIFACT && !store.has_artifact(run, name).await? {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "artifacts",
                format!("artifact '{name}' of run {run} was not uploaded"),
            ));
        }
    }
    for m in &upload.missing {
        manifest::check_artifact_name(&m.name).map_err(|e| bad("missing", e))?;
    }
    if !store
        .set_manifest(run, &upload.missing, &upload.extra, now_ms())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {run} already has a manifest"),
        ));
    }
    // The run's end: an upload still staged will never be committed.
    staged::abort(state.staged.take_stale(Some(run), STAGE_TTL)).await;
    Ok(())
}

/// The manifest of run `run`, with locations made absolute on `base`.
pub(crate) async fn manifest(
    state: &AppState,
    run: RunId,
    base: &str,
) -> Result<Manifest, ApiError> {
    let mut m = state.queue.store().manifest(run).await?;
    for a in &mut m.artifacts {
        a.location = format!("{base}{}", a.location);
    }
    Ok(m)
}

/// The bytes of artifact `name` of run `run`: `(content type, size, sha256, stream)`.
pub(crate) async fn download(
    state: &AppState,
    run: RunId,
    name: &str,
) -> Result<(String, u64, String, ByteStream), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run {run} has no artifact named '{name}'"),
        )
    };
    let stored = state
        .queue
        .store()
        .artifact(run, name)
        .await?
        .ok_or_else(not_found)?;
    let stream = match state.artifacts.get(&stored.storage_key).await {
        Ok(s) => s,
        Err(ArtifactError::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(internal(e)),
    };
    Ok((stored.content_type, stored.size, stored.sha256, stream))
}

/// Deletes expired artifacts and their rows, a batch at a time, beside the dispatch path.
pub(crate) async fn sweep(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.artifact_sweep);
    loop {
        tick.tick().await;
        // Staged uploads are this server's own; expired artifacts are the fleet's, deleted
        // by the server that holds the duty.
        staged::abort(state.staged.take_stale(None, STAGE_TTL)).await;
        if !state.duties.holds(crate::duty::Duty::ArtifactSweep) {
            continue;
        }
        if let Err(e) = sweep_once(&state.queue.store().clone(), state.artifacts.as_ref()).await {
            tracing::warn!("artifact sweep failed: {e}");
        }
    }
}

/// One pass of the sweep; returns how many artifacts it deleted.
pub async fn sweep_once(
    store: &lwr_store::Store,
    artifacts: &dyn ArtifactStore,
) -> Result<usize, String> {
    let mut deleted = 0;
    loop {
        let batch = store
            .expired_artifacts(now_ms(), 100)
            .await
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(deleted);
        }
        for (id, key) in batch {
            // Bytes first: a row without bytes is a 404, bytes without a row would leak.
            artifacts.delete(&key).await.map_err(|e| e.to_string())?;
            store.delete_artifact(id).await.map_err(|e| e.to_string())?;
            deleted += 1;
        }
    }
}
