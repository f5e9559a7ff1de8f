//! One test suite for every artifact store: the directory store, and the S3 store against
//! a real S3-compatible server (moto) on loopback, started here. Without moto
//! (`pip install 'moto[server]'`; `.ci/run` installs it) the S3 half fails, unless
//! `LWR_TEST_SKIP_S3=1` says to skip it.

#[path = "support/moto.rs"]
mod moto;

use bytes::Bytes;
use futures_util::StreamExt;
use lwr_server::artifact::{ArtifactError, ArtifactStore, DirStore, S3Store};
use moto::Moto;
use object_store::aws::AmazonS3Builder;

async fn read_all(store: &dyn ArtifactStore, key: &str) -> Result<Vec<u8>, ArtifactError> {
    let mut stream = store.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

async fn put(store: &dyn ArtifactStore, key: &str, chunks: &[&[u8]]) {
    let mut up = store.begin(key).await.expect("begin");
    for c in chunks {
        up.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
    up.commit().await.expect("commit");
}

/// The suite every store must pass.
async fn suite(store: &dyn ArtifactStore) {
    // Round trip, in several chunks and across an S3 part boundary (5 MiB).
    let big: Vec<u8> = (0..6 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let (a, b) = big.split_at(3 * 1024 * 1024);
    put(store, "1/big", &[a, b]).await;
    assert_eq!(read_all(store, "1/big").await.unwrap(), big);
    put(store, "1/small", &[b"installer-bytes"]).await;
    assert_eq!(
        read_all(store, "1/small").await.unwrap(),
        b"installer-bytes"
    );
    put(store, "1/empty", &[]).await;
    assert_eq!(read_all(store, "1/empty").await.unwrap(), b"");

    // Nothing is visible before commit, and an aborted upload leaves nothing.
    let mut up = store.begin("2/pending").await.unwrap();
    up.write(Bytes::from_static(b"half")).await.unwrap();
    assert!(matches!(
        read_all(store, "2/pending").await,
        Err(ArtifactError::NotFound { .. })
    ));
    up.abort().await.unwrap();
    assert!(matches!(
        read_all(store, "2/pending").await,
        Err(ArtifactError::NotFound { .. })
    ));

    // Deleting works, and deleting what is gone is not an error.
    store.delete("1/small").await.unwrap();
    assert!(matches!(
        read_all(store, "1/small").await,
        Err(ArtifactError::NotFound { .. })
    ));
    store.delete("1/small").await.unwrap();
    assert_eq!(read_all(store, "1/big").await.unwrap().len(), big.len());

    // Keys that could leave the store are refused.
    for bad in ["../x", "/abs", "a/../b", "", "a//b"] {
        assert!(store.begin(bad).await.is_err(), "{bad:?}");
        assert!(store.get(bad).await.is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn the_directory_store_passes_the_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::new(tmp.path().join("artifacts")).unwrap();
    suite(&store).await;
    // Aborted and committed uploads leave no temporary files behind.
    let tmp_files = std::fs::read_dir(tmp.path().join("artifacts/.tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp_files, 0);
}

#[tokio::test]
async fn the_s3_store_passes_the_suite_against_a_local_s3_server() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket("lwr-suite");
    let builder = AmazonS3Builder::new()
        .with_endpoint(&moto.url)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test");
    let store = S3Store::from_builder(builder, "lwr-suite", "prefix/x").unwrap();
    suite(&store).await;
}
