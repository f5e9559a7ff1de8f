//! Artifacts as files in a directory: `ROOT/RUN/UUID`, written under `ROOT/.tmp` first.
//!
//! An upload is written by one blocking thread fed through a short queue, so the request's
//! task goes on receiving and hashing while the disk writes (no blocking-pool hop per
//! chunk). Committing renames the file into place without fsync: a committed artifact
//! survives the server's crash or restart, not the machine's power loss (the OS writes it
//! back within seconds).

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream;
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ArtifactError, ArtifactStore, BoxFuture, ByteStream, Upload, check_key};

/// Bytes read per chunk when serving a file.
const CHUNK: usize = 256 * 1024;
/// Received chunks waiting for the writer thread.
const WRITE_QUEUE: usize = 16;
/// The writer's buffer: the network's small chunks become few large writes.
const WRITE_BUFFER: usize = 1 << 20;

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: PathBuf) -> Result<DirStore, ArtifactError> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|source| ArtifactError::Io {
            key: root.display().to_string(),
            source,
        })?;
        // Uploads a previous server process never finished (crash, or staged and never
        // committed): nobody will commit them now.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
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
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(io(key))?
                .into_std()
                .await;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
            let writer = tokio::task::spawn_blocking(move || {
                let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
                while let Some(chunk) = rx.blocking_recv() {
                    out.write_all(&chunk)?;
                }
                out.flush()
            });
            Ok(Box::new(DirUpload {
                key: key.into(),
                tmp,
                dest: self.root.join(key),
                tx: Some(tx),
                writer: Some(writer),
            }) as Box<dyn Upload>)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream, ArtifactError>> {
        Box::pin(async move { Ok(self.get_from(key, 0).await?.1) })
    }

    fn get_from<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ByteStream), ArtifactError>> {
        Box::pin(async move {
            check_key(key)?;
            let mut file = tokio::fs::File::open(self.root.join(key))
                .await
                .map_err(io(key))?;
            let size = file.metadata().await.map_err(io(key))?.len();
            file.seek(std::io::SeekFrom::Start(offset.min(size)))
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
            Ok((size, Box::pin(chunks) as ByteStream))
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
    /// Chunks to the writer; dropped to say the upload is complete.
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    writer: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl DirUpload {
    /// Ends the writer and returns how it went (`Ok` once it ended well before).
    async fn end_writer(&mut self) -> std::io::Result<()> {
        self.tx = None;
        match self.writer.take() {
            Some(w) => w.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Upload for DirUpload {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), ArtifactError>> {
        Box::pin(async move {
            let sent = match &self.tx {
                Some(tx) => tx.send(chunk).await.is_ok(),
                None => false,
            };
            if sent {
                return Ok(());
            }
            // The writer stopped: its error says why.
            let err = match self.end_writer().await {
                Err(e) => e,
                Ok(()) => std::io::Error::other("the upload's writer stopped"),
            };
            Err(io(&self.key)(err))
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), ArtifactError>> {
        Box::pin(async move { self.end_writer().await.map_err(io(&self.key)) })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>> {
        Box::pin(async move {
            let mut this = *self;
            let done = this.end_writer().await;
            let DirUpload { key, tmp, dest, .. } = this;
            let done = async {
                done?;
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
            let mut this = *self;
            let _ = this.end_writer().await;
            match tokio::fs::remove_file(&this.tmp).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&this.key)(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restarted_store_drops_unfinished_uploads_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        let store = DirStore::new(root.clone()).unwrap();
        let mut kept = store.begin("1/kept").await.unwrap();
        kept.write(Bytes::from_static(b"kept")).await.unwrap();
        kept.commit().await.unwrap();
        let mut left = store.begin("1/left").await.unwrap();
        left.write(Bytes::from_static(b"left")).await.unwrap();
        let parts = || std::fs::read_dir(root.join(".tmp")).unwrap().count();
        assert_eq!(parts(), 1, "an unfinished upload waits in .tmp");
        drop(left);
        DirStore::new(root.clone()).unwrap();
        assert_eq!(parts(), 0);
        assert_eq!(std::fs::read(root.join("1/kept")).unwrap(), b"kept");
        assert!(!root.join("1/left").exists());
    }
}
