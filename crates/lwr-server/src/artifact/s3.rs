//! Artifacts in S3-compatible object storage, through the `object_store` crate. Uploads
//! are multipart: parts go up as the bytes arrive (memory stays bounded), and the object
//! appears only when the upload completes.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::{ArtifactError, ArtifactStore, BoxFuture, ByteStream, Upload, check_key};

/// Size of one multipart part (S3's minimum for all but the last).
const PART: usize = 5 << 20;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// A store in `bucket` under `prefix`, configured from the `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ..., `AWS_ALLOW_HTTP`).
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Store, ArtifactError> {
        S3Store::from_builder(AmazonS3Builder::from_env(), bucket, prefix)
    }

    /// A store from an explicit configuration (tests, embedding).
    pub fn from_builder(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
    ) -> Result<S3Store, ArtifactError> {
        let store =
            builder
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| ArtifactError::Config {
                    spec: format!("s3://{bucket}/{prefix}"),
                    reason: e.to_string(),
                })?;
        Ok(S3Store {
            store: Arc::new(store),
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
        })
    }

    fn path(&self, key: &str) -> Result<Path, ArtifactError> {
        check_key(key)?;
        let full = match self.prefix.is_empty() {
            true => key.to_string(),
            false => format!("{}/{key}", self.prefix),
        };
        Path::parse(&full).map_err(|e| ArtifactError::Config {
            spec: full.clone(),
            reason: e.to_string(),
        })
    }
}

fn object(key: &str) -> impl Fn(object_store::Error) -> ArtifactError + '_ {
    move |source| match source {
        object_store::Error::NotFound { .. } => ArtifactError::NotFound { key: key.into() },
        source => ArtifactError::Object {
            key: key.into(),
            source,
        },
    }
}

impl ArtifactStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn begin<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Upload>, ArtifactError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let upload = self.store.put_multipart(&path).await.map_err(object(key))?;
            Ok(Box::new(S3Upload {
                key: key.into(),
                writer: WriteMultipart::new_with_chunk_size(upload, PART),
            }) as Box<dyn Upload>)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream, ArtifactError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let got = self.store.get(&path).await.map_err(object(key))?;
            let key = key.to_string();
            let chunks = got
                .into_stream()
                .map(move |chunk| chunk.map_err(|e| object(&key)(e)));
            Ok(Box::pin(chunks) as ByteStream)
        })
    }

    fn get_from<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<(u64, ByteStream), ArtifactError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            // A range at or past the end is an error in S3: ask for the size first.
            let size = self.store.head(&path).await.map_err(object(key))?.size;
            if offset >= size {
                return Ok((size, Box::pin(futures_util::stream::empty()) as ByteStream));
            }
            let options = GetOptions::default().with_range(Some(GetRange::Offset(offset)));
            let got = self
                .store
                .get_opts(&path, options)
                .await
                .map_err(object(key))?;
            let key = key.to_string();
            let chunks = got
                .into_stream()
                .map(move |chunk| chunk.map_err(|e| object(&key)(e)));
            Ok((size, Box::pin(chunks) as ByteStream))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(object(key)(e)),
            }
        })
    }
}

struct S3Upload {
    key: String,
    writer: WriteMultipart,
}

impl Upload for S3Upload {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), ArtifactError>> {
        Box::pin(async move {
            // Waiting for a free part slot keeps memory at a few parts per upload.
            self.writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(object(&self.key))?;
            self.writer.write(&chunk);
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>> {
        Box::pin(async move {
            let key = self.key;
            self.writer.finish().await.map(|_| ()).map_err(object(&key))
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), ArtifactError>> {
        Box::pin(async move {
            let key = self.key;
            self.writer.abort().await.map_err(object(&key))
        })
    }
}
