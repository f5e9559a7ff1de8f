//! Stored run logs: one file per run under `<data-dir>/logs`.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use lwr_model::RunId;
use lwr_model::logstream::truncation_marker;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::ApiError;

pub fn path(data_dir: &Path, run_id: RunId) -> PathBuf {
    data_dir.join("logs").join(format!("{run_id}.log"))
}

/// Streams an upload to the run's log file, never holding it whole in memory, and returns
/// the size and SHA-256 of what it stored. The file appears under its final name only when
/// complete and, if the node sent `expected` hash (of the whole upload), only when it
/// matches. A log longer than `limit` is stored cut there, ending with a line that says so
/// ([`truncation_marker`]): its start is what explains a runaway job, so it is not lost.
pub(crate) async fn store(
    data_dir: &Path,
    run_id: RunId,
    body: Body,
    limit: u64,
    expected: Option<&str>,
) -> Result<(u64, String), ApiError> {
    let final_path = path(data_dir, run_id);
    // Unique per upload: two uploads of one run at once never write the same file.
    let tmp = final_path.with_extension(format!("{}.part", uuid::Uuid::new_v4().simple()));
    let store_name = format!("log store ({})", data_dir.join("logs").display());
    let what = format!("the log of run {run_id}");
    let io_err = |e: std::io::Error| ApiError::storage(&store_name, &what, &e);
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(file) => file,
        Err(e) => {
            let _ = receive(None, body, 0).await;
            return Err(io_err(e));
        }
    };
    let received = match receive(Some(&mut file), body, limit).await {
        Ok(Err(e)) => Err(io_err(e)),
        Ok(Ok(sizes)) => Ok(sizes),
        Err(e) => Err(e),
    };
    let (size, whole, kept) = match received {
        Ok(sizes) => sizes,
        Err(e) => {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let mut stored = kept;
    if size > limit {
        let marker = truncation_marker(limit, Some(size - limit));
        let written = file.write_all(marker.as_bytes()).await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err(e));
        }
        stored.update(marker.as_bytes());
        tracing::warn!("run {run_id}: log of {size} bytes stored cut at {limit}");
    }
    if let Err(e) = file.flush().await {
        drop(file);
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err(e));
    }
    drop(file);
    let sha256 = hex::encode(whole.finalize());
    if let Some(expected) = expected
        && expected != sha256
    {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sha256",
            format!(
                "sha256 mismatch for the log of run {run_id}: declared {expected}, received {sha256}"
            ),
        ));
    }
    if let Err(e) = tokio::fs::rename(&tmp, &final_path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err(e));
    }
    let stored_size = tokio::fs::metadata(&final_path)
        .await
        .map_err(io_err)?
        .len();
    Ok((stored_size, hex::encode(stored.finalize())))
}

/// Writes the body to `file` up to `limit` bytes, reading (and hashing) the rest: the
/// whole size, the hash of the whole and the hash of what was written. A failed write
/// (a full disk) stops the writing, not the reading, so the uploader hears the answer
/// rather than a broken pipe; it comes back as the inner error.
type Received = (u64, Sha256, Sha256);

async fn receive(
    mut file: Option<&mut tokio::fs::File>,
    body: Body,
    limit: u64,
) -> Result<std::io::Result<Received>, ApiError> {
    let mut size = 0u64;
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
            && let Some(f) = file.as_deref_mut()
        {
            kept.update(&chunk[..room]);
            if let Err(e) = f.write_all(&chunk[..room]).await {
                failed = Some(e);
                file = None;
            }
        }
    }
    Ok(match failed {
        Some(e) => Err(e),
        None => Ok((size, whole, kept)),
    })
}

/// The run's stored log from byte `offset` on, as a stream that never holds it whole:
/// `(size of the whole log, body)`; `None` when no log is stored here.
pub async fn open(
    data_dir: &Path,
    run_id: RunId,
    offset: u64,
) -> Result<Option<(u64, Body)>, ApiError> {
    let io_err = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the log of run {run_id}: {e}"),
        )
    };
    let mut file = match tokio::fs::File::open(path(data_dir, run_id)).await {
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
