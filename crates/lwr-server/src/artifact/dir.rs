//! Artifacts as files in a directory: `ROOT/RUN/UUID`, written under `ROOT/.tmp` first.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ArtifactError, ArtifactStore, BoxFuture, ByteStream, Upload, check_key};

/// Bytes read per chunk when serving a file.
const CHUNK: usize = 256 * 1024;

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: PathBuf) -> Result<DirStore, ArtifactError> {
        std::fs::create_dir_all(root.join(".tmp")).map_err(|source| ArtifactError::Io {
            key: root.display().to_string(),
            source,
        })?;
        Ok(DirStore { root })
    }
}

fn io(key: &str) -> impl Fn(std::io::Error) -> ArtifactError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ArtifactError::NotFound { key: key.into() }
        } else {
            ArtifactError::Io {
                key: key.into(),
                source,
            }
        }
    }
}

impl ArtifactStore for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn begin<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Upload>, ArtifactError>> {
        Box::pin(async move {
            check_key(key)?;
            let tmp = self
                .root
                .join(".tmp")
                .join(format!("{}.part", uuid::Uuid::new_v4()));
            let file = tokio::fs::File::create(&tmp).await.map_err(io(key))?;
            Ok(Box::new(DirUpload {
                key: key.into(),
                tmp,
                dest: self.root.join(key),
                file: tokio::io::BufWriter::with_capacity(CHUNK, file),
            }) as Box<dyn Upload>)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream, ArtifactError>> {
        Box::pin(async move {
            check_key(key)?;
            let file = tokio::fs::File::open(self.root.join(key))
                .await
                .map_err(io(key))?;
            let key = key.to_string();
            let chunks = stream::try_unfold((file, key), |(mut file, key)| async move {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf).await.map_err(io(&key))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (file, key))))
            });
            Ok(Box::pin(chunks) as ByteStream)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            check_key(key)?;
            match tokio::fs::remove_file(self.root.join(key)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(key)(e)),
            }
        })
    }
}

struct DirUpload {
    key: String,
    tmp: PathBuf,
    dest: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl Upload for DirUpload {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), ArtifactError>> {
        Box::pin(async move { self.file.write_all(&chunk).await.map_err(io(&self.key)) })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>> {
        Box::pin(async move {
            let DirUpload {
                key,
                tmp,
                dest,
                mut file,
            } = *self;
            let done = async {
                file.flush().await?;
                drop(file);
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::rename(&tmp, &dest).await
            };
            match done.await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    Err(io(&key)(e))
                }
            }
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>> {
        Box::pin(async move {
            drop(self.file);
            match tokio::fs::remove_file(&self.tmp).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&self.key)(e)),
            }
        })
    }
}
