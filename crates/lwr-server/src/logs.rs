//! Stored run logs: in the artifact store (a directory or S3) under `RUN/log`, so that every
//! server sharing the database serves every log. Logs stored by versions before 0.2 are
//! files under `<data-dir>/logs/RUN.log`; they are read when the store has none.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use lwr_model::RunId;
use lwr_model::logstream::truncation_marker;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::artifact::{ArtifactError, ArtifactStore, Upload};
use crate::{ApiError, AppState};

/// The key of a run's log in the artifact store (artifacts are `RUN/UUID`: no clash).
pub fn key(run_id: RunId) -> String {
    format!("{run_id}/log")
}

/// Where versions before 0.2 stored a run's log; also where a server keeps its copy of a
/// stored log for the web app's random reads ([`local_copy`]).
pub fn path(data_dir: &Path, run_id: RunId) -> PathBuf {
    data_dir.join("logs").join(format!("{run_id}.log"))
}

fn store_err(run_id: RunId, what: &str, e: ArtifactError) -> ApiError {
    tracing::error!("{what} the log of run {run_id}: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot {what} the log of run {run_id}: {e}"),
    )
}

/// A failure to keep a run's log: 507 naming the store and the log when its disk is full
/// (the node ends the run as an infrastructure error after a few tries), 500 otherwise.
fn keep_err(artifacts: &dyn ArtifactStore, run_id: RunId, e: ArtifactError) -> ApiError {
    match &e {
        ArtifactError::Io { source, .. } => ApiError::storage(
            &format!("artifact store ({})", artifacts.describe()),
            &format!("the log of run {run_id}"),
            source,
        ),
        _ => store_err(run_id, "store", e),
    }
}

/// Streams an upload into the store as the run's log, never holding it whole in memory,
/// and returns the size and SHA-256 of what it stored. The log appears under its key only
/// when complete and, if the node sent `expected` hash (of the whole upload), only when it
/// matches. A log longer than `limit` is stored cut there, ending with a line that says so
/// ([`truncation_marker`]): its start is what explains a runaway job, so it is not lost.
pub(crate) async fn store(
    artifacts: &dyn ArtifactStore,
    run_id: RunId,
    body: Body,
    limit: u64,
    expected: Option<&str>,
) -> Result<(u64, String), ApiError> {
    let key = key(run_id);
    let mut upload = match artifacts.begin(&key).await {
        Ok(upload) => upload,
        Err(e) => {
            // Read the body all the same, so the node hears why rather than a broken pipe.
            let _ = receive(None, body, 0).await;
            return Err(keep_err(artifacts, run_id, e));
        }
    };
    let received = match receive(Some(upload.as_mut()), body, limit).await {
        Ok(Ok(sizes)) => Ok(sizes),
        Ok(Err(e)) => Err(keep_err(artifacts, run_id, e)),
        Err(e) => Err(e),
    };
    let (size, whole, mut kept, mut stored_size) = match received {
        Ok(sizes) => sizes,
        Err(e) => {
            let _ = upload.abort().await;
            return Err(e);
        }
    };
    if size > limit {
        let marker = truncation_marker(limit, Some(size - limit));
        if let Err(e) = upload.write(Bytes::from(marker.clone().into_bytes())).await {
            let _ = upload.abort().await;
            return Err(keep_err(artifacts, run_id, e));
        }
        kept.update(marker.as_bytes());
        stored_size += marker.len() as u64;
        tracing::warn!("run {run_id}: log of {size} bytes stored cut at {limit}");
    }
    let sha256 = hex::encode(whole.finalize());
    if let Some(expected) = expected
        && expected != sha256
    {
        let _ = upload.abort().await;
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sha256",
            format!(
                "sha256 mismatch for the log of run {run_id}: declared {expected}, received {sha256}"
            ),
        ));
    }
    if let Err(e) = upload.finish().await {
        let _ = upload.abort().await;
        return Err(keep_err(artifacts, run_id, e));
    }
    upload
        .commit()
        .await
        .map_err(|e| keep_err(artifacts, run_id, e))?;
    Ok((stored_size, hex::encode(kept.finalize())))
}

/// Writes the body to `upload` up to `limit` bytes, reading (and hashing) the rest: the
/// whole size, the hash of the whole, the hash of what was written and its size. When the
/// store fails, the rest of the body is still read, and the store's error returned after.
async fn receive(
    mut upload: Option<&mut dyn Upload>,
    body: Body,
    limit: u64,
) -> Result<Result<(u64, Sha256, Sha256, u64), ArtifactError>, ApiError> {
    let mut size = 0u64;
    let mut written = 0u64;
    let mut whole = Sha256::new();
    let mut kept = Sha256::new();
    let mut failed = None;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("log upload broke off: {e}")))?;
        whole.update(&chunk);
        let room = limit.saturating_sub(size).min(chunk.len() as u64) as usize;
        size += chunk.len() as u64;
        if room > 0
            && failed.is_none()
            && let Some(upload) = upload.as_mut()
        {
            kept.update(&chunk[..room]);
            written += room as u64;
            if let Err(e) = upload.write(chunk.slice(..room)).await {
                failed = Some(e);
            }
        }
    }
    Ok(match failed {
        Some(e) => Err(e),
        None => Ok((size, whole, kept, written)),
    })
}

/// The run's stored log from byte `offset` on, as a stream that never holds it whole:
/// `(size of the whole log, body)`; `None` when no log is stored. The store first, then
/// the data dir (a log stored by an earlier version).
pub async fn open(
    state: &AppState,
    run_id: RunId,
    offset: u64,
) -> Result<Option<(u64, Body)>, ApiError> {
    match state.artifacts.get_from(&key(run_id), offset).await {
        Ok((size, stream)) => return Ok(Some((size, Body::from_stream(stream)))),
        Err(ArtifactError::NotFound { .. }) => {}
        Err(e) => return Err(store_err(run_id, "read", e)),
    }
    let io_err = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the log of run {run_id}: {e}"),
        )
    };
    let mut file = match tokio::fs::File::open(path(&state.config.data_dir, run_id)).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let size = file.metadata().await.map_err(io_err)?.len();
    file.seek(std::io::SeekFrom::Start(offset.min(size)))
        .await
        .map_err(io_err)?;
    Ok(Some((size, stream_file(file))))
}

/// Up to `max` bytes of the run's stored log from `offset`, and the log's size; `None` when
/// no log is stored.
pub async fn read_at(
    state: &AppState,
    run_id: RunId,
    offset: u64,
    max: usize,
) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
    let Some((size, body)) = open(state, run_id, offset).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while out.len() < max {
        match stream.next().await {
            Some(Ok(chunk)) => out.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the log of run {run_id}: {e}"),
                ));
            }
            None => break,
        }
    }
    out.truncate(max);
    Ok(Some((out, size)))
}

/// A file holding the run's whole stored log, for reads anywhere in it (the web app's
/// pages): the data dir's own file (an earlier version's, or a copy made here before),
/// else a copy of the store's made now. `None` when no log is stored. A stored log never
/// changes once its run ended, so a copy stays true.
pub async fn local_copy(state: &AppState, run_id: RunId) -> Result<Option<PathBuf>, ApiError> {
    let dest = path(&state.config.data_dir, run_id);
    if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        return Ok(Some(dest));
    }
    let stream = match state.artifacts.get(&key(run_id)).await {
        Ok(stream) => stream,
        Err(ArtifactError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(run_id, "read", e)),
    };
    let io_err = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot copy the log of run {run_id}: {e}"),
        )
    };
    // Unique per copy: two readers at once never write the same file.
    let tmp = dest.with_extension(format!("{}.part", uuid::Uuid::new_v4().simple()));
    let copied = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_err(run_id, "read", e))?;
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        tokio::fs::rename(&tmp, &dest).await.map_err(io_err)
    }
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(Some(dest))
}

/// A response body reading `file` from where it stands, piece by piece.
pub(crate) fn stream_file(file: tokio::fs::File) -> Body {
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Body::from_stream(chunks)
}
