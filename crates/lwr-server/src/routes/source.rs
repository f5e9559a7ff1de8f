//! Bundles of pushed commits: `lwr push` of a repository on the client's disk uploads a git
//! bundle of its commit (an operator route, `graph:submit`), and a node that cannot read
//! that path fetches the commit of a run it holds from it (a node route).
//!
//! The server never looks inside beyond the bundle's header (which must name the revision
//! as one of its heads): checking out stays the nodes' work. Bundles are files under
//! `<data-dir>/bundles`, one per revision; they go a week after their upload.

use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use lwr_model::api::{BundleInfo, ErrorBody};
use tokio::io::AsyncWriteExt;

use super::access::{Operator, RunCaller};
use super::extract::{ApiPath, ApiResult, Shared};
use crate::ApiError;

/// Largest bundle accepted. A repository whose history is larger is fetched by nodes from
/// where it is (a URL they can reach), not through the server.
pub const MAX_BUNDLE_BYTES: u64 = 512 << 20;
/// How long a bundle is kept after its upload.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest header read to find the bundle's heads.
const MAX_HEADER: usize = 64 << 10;

/// Stores a git bundle of `revision` (full history up to it), as `lwr push` uploads it.
#[utoipa::path(
    put, path = "/v1/bundles/{revision}",
    params(("revision" = String, Path, description = "the commit's full hash")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "a git bundle (`git bundle create`) with `revision` as one of its heads"),
    responses(
        (status = 201, body = BundleInfo),
        (status = 400, description = "not a bundle of the revision", body = ErrorBody),
        (status = 413, description = "larger than the server's limit (512 MiB)", body = ErrorBody),
    )
)]
pub(crate) async fn put_bundle(
    _: Operator,
    State(state): Shared,
    ApiPath(revision): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    check_revision(&revision)?;
    let dir = state.config.data_dir.join("bundles");
    tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
    forget_old(&dir).await;
    let tmp = dir.join(format!("{revision}.{}.part", uuid::Uuid::new_v4()));
    let stored = receive(body, &tmp, &revision).await;
    let size = match stored {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, bundle_path(&dir, &revision))
        .await
        .map_err(io_error)?;
    let info = BundleInfo { revision, size };
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// Whether the server has a bundle of `revision` (`lwr push` asks before making one).
#[utoipa::path(
    head, path = "/v1/bundles/{revision}",
    params(("revision" = String, Path, description = "the commit's full hash")),
    responses(
        (status = 200, description = "the server has a bundle of the revision"),
        (status = 404, description = "it has none"),
    )
)]
pub(crate) async fn has_bundle(
    _: Operator,
    State(state): Shared,
    ApiPath(revision): ApiPath<String>,
) -> ApiResult<StatusCode> {
    check_revision(&revision)?;
    let path = bundle_path(&state.config.data_dir.join("bundles"), &revision);
    match tokio::fs::try_exists(&path).await.map_err(io_error)? {
        true => Ok(StatusCode::OK),
        false => Ok(StatusCode::NOT_FOUND),
    }
}

/// The bundle of the commit of a run the node holds, for a node that cannot read the
/// repository the commit was pushed from.
#[utoipa::path(
    get, path = "/v1/runs/{id}/bundle",
    params(("id" = i64, Path), ("node" = i64, Query, description = "The node asking; it must hold the run.")),
    responses(
        (status = 200, description = "the git bundle", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such run, or no bundle of its commit", body = ErrorBody),
    )
)]
pub(crate) async fn get_run_bundle(caller: RunCaller, State(state): Shared) -> ApiResult<Response> {
    caller.holds_run(&state).await?;
    let run = caller.run;
    let Some(revision) = state.queue.store().run_revision(run).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run {run} is of a graph without a revision"),
        ));
    };
    let path = bundle_path(&state.config.data_dir.join("bundles"), &revision);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no bundle of {revision}"),
            ));
        }
        Err(e) => return Err(io_error(e)),
    };
    let len = file.metadata().await.map_err(io_error)?.len();
    let body = crate::logs::stream_file(file);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A full commit hash: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn check_revision(revision: &str) -> Result<(), ApiError> {
    let hex = revision
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && matches!(revision.len(), 40 | 64) {
        return Ok(());
    }
    Err(ApiError::field(
        StatusCode::BAD_REQUEST,
        "revision",
        "give the commit's full hash (40 or 64 lowercase hex digits)",
    ))
}

fn bundle_path(dir: &FsPath, revision: &str) -> PathBuf {
    dir.join(format!("{revision}.bundle"))
}

/// Streams the body to `tmp`, within the size limit; its header must name `revision`.
async fn receive(body: Body, tmp: &FsPath, revision: &str) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(tmp).await.map_err(io_error)?;
    let mut size = 0u64;
    let mut header: Vec<u8> = Vec::new();
    let mut header_checked = false;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("bundle upload broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > MAX_BUNDLE_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("bundle larger than the server's limit of {MAX_BUNDLE_BYTES} bytes"),
            ));
        }
        if !header_checked {
            header.extend_from_slice(&chunk[..chunk.len().min(MAX_HEADER - header.len())]);
            header_checked = check_header(&header, revision, header.len() >= MAX_HEADER)?;
        }
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    if !header_checked {
        check_header(&header, revision, true)?;
    }
    file.flush().await.map_err(io_error)?;
    Ok(size)
}

/// Whether the header so far (all of it when `whole`) is a bundle's with `revision` as a
/// head; `Ok(false)`: not enough of it yet.
fn check_header(header: &[u8], revision: &str, whole: bool) -> Result<bool, ApiError> {
    let not_bundle =
        || ApiError::bad_request("not a git bundle (expected what `git bundle create` writes)");
    // The header ends at the first empty line; the pack follows.
    let end = header.windows(2).position(|w| w == b"\n\n");
    let Some(end) = end else {
        return match whole {
            true => Err(not_bundle()),
            false => Ok(false),
        };
    };
    let text = std::str::from_utf8(&header[..end]).map_err(|_| not_bundle())?;
    let mut lines = text.lines();
    if !matches!(lines.next(), Some("# v2 git bundle" | "# v3 git bundle")) {
        return Err(not_bundle());
    }
    let has_head = lines.any(|l| l.split(' ').next() == Some(revision));
    match has_head {
        true => Ok(true),
        false => Err(ApiError::bad_request(format!(
            "the bundle does not hold {revision} as one of its heads"
        ))),
    }
}

/// Removes bundles uploaded longer ago than [`KEEP`], and uploads that broke off.
async fn forget_old(dir: &FsPath) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let now = SystemTime::now();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let old = entry
            .metadata()
            .await
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > KEEP));
        if old {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

fn io_error(e: std::io::Error) -> ApiError {
    tracing::error!("bundles: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot store or read the bundle: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_must_name_the_revision() {
        let rev = "2fd1b6fbd9aacda4ea5de8f0b9c77d41bc686f89";
        let good = format!("# v2 git bundle\n{rev} refs/lwr/push\n\nPACK...");
        assert!(check_header(good.as_bytes(), rev, false).unwrap());
        assert!(!check_header(b"# v2 git bundle\n", rev, false).unwrap());
        let other = "1111111111111111111111111111111111111111";
        assert!(check_header(good.as_bytes(), other, false).is_err());
        assert!(check_header(b"PK\x03\x04zip\n\n", rev, false).is_err());
        assert!(check_revision(rev).is_ok());
        assert!(check_revision("HEAD").is_err());
        assert!(check_revision(&rev.to_uppercase()).is_err());
    }
}
