//! The artifact store: where artifact bytes live. One trait, two implementations: a
//! directory under the data dir (the default) and S3-compatible object storage.
//!
//! An upload is written under a key nobody else uses and becomes visible only when it is
//! committed, so a refused upload (bad hash, too large, duplicate) leaves the store as it was.

mod dir;
mod s3;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use thiserror::Error;

pub use dir::DirStore;
pub use s3::S3Store;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The content of a stored artifact, chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ArtifactError>> + Send>>;

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("artifact object '{key}' not found")]
    NotFound { key: String },
    #[error("artifact object '{key}': {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact object '{key}' in object storage: {source}")]
    Object {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("bad artifact store '{spec}': {reason}")]
    Config { spec: String, reason: String },
}

/// Where artifacts are kept. Keys are chosen by the server: `RUN/UUID`.
pub trait ArtifactStore: Send + Sync {
    /// Says where the store keeps things, for logs.
    fn describe(&self) -> String;
    /// Starts writing `key`; nothing is visible under it until [`Upload::commit`].
    fn begin<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Upload>, ArtifactError>>;
    /// Reads `key` as a stream.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream, ArtifactError>>;
    /// Reads `key` from byte `offset` on: the size of the whole object and a stream of the
    /// rest (empty when `offset` is at or past the end).
    fn get_from<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ByteStream), ArtifactError>>;
    /// Deletes `key`; deleting what is not there is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>>;
}

/// An upload in progress.
pub trait Upload: Send {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), ArtifactError>>;
    /// Says every chunk is written: a store that writes in the background finishes here,
    /// so an upload waiting for its commit (staged) holds no thread.
    fn finish(&mut self) -> BoxFuture<'_, Result<(), ArtifactError>> {
        Box::pin(async { Ok(()) })
    }
    /// Makes the written bytes visible under the key.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>>;
    /// Drops the written bytes.
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>>;
}

/// Opens the store `spec` names: `dir` (under `data_dir`), `dir:///path`, or
/// `s3://bucket[/prefix]` (credentials, region and endpoint from the usual `AWS_*`
/// environment variables).
pub fn open(spec: &str, data_dir: &Path) -> Result<Arc<dyn ArtifactStore>, ArtifactError> {
    if spec == "dir" {
        return Ok(Arc::new(DirStore::new(data_dir.join("artifacts"))?));
    }
    if let Some(path) = spec.strip_prefix("dir://") {
        return Ok(Arc::new(DirStore::new(path.into())?));
    }
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Arc::new(S3Store::from_env(bucket, prefix)?));
    }
    Err(ArtifactError::Config {
        spec: spec.into(),
        reason: "use dir, dir:///path or s3://bucket/prefix".into(),
    })
}

/// A key the server made: `RUN/NAME` with plain components only.
fn check_key(key: &str) -> Result<(), ArtifactError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::Io {
            key: key.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad key"),
        })
    }
}
