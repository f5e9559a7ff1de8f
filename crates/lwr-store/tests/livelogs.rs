//! Live logs shared by servers: pieces kept each byte once whatever order and repeats they
//! arrive in, only while someone wants them, and dropped when the log is stored.

use std::collections::BTreeMap;

use lwr_model::api::{RegisterNode, SubmitGraph};
use lwr_model::{DurationMs, Graph, Millis, NodeId, NodeProperties, RunId};
use lwr_store::{LiveAppend, LiveHeld, Store};

#[macro_use]
mod common;
use common::{Fixture, job};

const LEASE: DurationMs = DurationMs(30_000);
const LIMIT: u64 = 1000;

/// A node holding one running run.
async fn running(store: &Store) -> (NodeId, RunId) {
    store
        .submit_graph(
            &SubmitGraph::new(Graph {
                jobs: vec![job("talk", &[])],
            }),
            Millis(0),
        )
        .await
        .unwrap();
    let properties = NodeProperties {
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: "n1".into(),
        cores: 2,
        memory_mb: 1024,
        tags: BTreeMap::new(),
    };
    let node = store
        .register_node(
            &RegisterNode {
                name: "n1".into(),
                properties,
                slots: 1,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let claimed = store.claim(node, 1, &[], Millis(0), LEASE).await.unwrap();
    (node, claimed.assignments[0].run_id)
}

async fn append(store: &Store, run: RunId, offset: u64, bytes: &[u8], end: bool) -> LiveAppend {
    store
        .live_append(run, offset, bytes, end, LIMIT, Millis(10))
        .await
        .unwrap()
}

async fn pieces_are_kept_once_in_order_while_wanted(f: Fixture) {
    let store = &f.store;
    let (node, run) = running(store).await;
    // Nobody wants it: nothing is kept, and the node is told so.
    assert_eq!(
        append(store, run, 0, b"early", false).await,
        LiveAppend::Kept {
            size: 0,
            fresh: 0,
            wanted: false
        }
    );
    assert!(
        store
            .live_wanted(node, Millis(10))
            .await
            .unwrap()
            .is_empty()
    );
    store
        .live_want("viewer-1", run, node, Millis(1000))
        .await
        .unwrap();
    assert_eq!(
        store.live_wanted(node, Millis(10)).await.unwrap(),
        vec![(run, 0)]
    );
    assert_eq!(
        append(store, run, 0, b"hello ", false).await,
        LiveAppend::Kept {
            size: 6,
            fresh: 6,
            wanted: true
        }
    );
    // Sent again with more behind it (its answer was lost), through another server.
    assert_eq!(
        append(store, run, 3, b"lo world", false).await,
        LiveAppend::Kept {
            size: 11,
            fresh: 5,
            wanted: true
        }
    );
    assert_eq!(
        append(store, run, 20, b"x", false).await,
        LiveAppend::Gap { held: 11 }
    );
    assert_eq!(
        append(store, run, 11, &[b'x'; LIMIT as usize], false).await,
        LiveAppend::TooLarge
    );
    let (bytes, held) = store.live_read(run, 0, 100).await.unwrap();
    assert_eq!(bytes, b"hello world");
    assert_eq!(
        held,
        LiveHeld {
            size: 11,
            complete: false
        }
    );
    assert_eq!(store.live_read(run, 6, 3).await.unwrap().0, b"wor");
    // A node resuming elsewhere is asked from what is held.
    assert_eq!(
        store.live_wanted(node, Millis(10)).await.unwrap(),
        vec![(run, 11)]
    );
    assert_eq!(
        append(store, run, 11, b"!", true).await,
        LiveAppend::Kept {
            size: 12,
            fresh: 1,
            wanted: false
        }
    );
    assert!(store.live_read(run, 0, 100).await.unwrap().1.complete);
    // Complete: no longer asked for, nothing more kept.
    assert!(
        store
            .live_wanted(node, Millis(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        append(store, run, 12, b"more", false).await,
        LiveAppend::Kept {
            size: 12,
            fresh: 0,
            wanted: false
        }
    );
    // The log is stored: pieces and wants go.
    store.live_drop(run).await.unwrap();
    assert_eq!(store.live_held(run).await.unwrap(), LiveHeld::default());
    assert_eq!(store.live_wants(run, Millis(10)).await.unwrap(), 0);
}

async fn wants_run_out_unless_renewed(f: Fixture) {
    let store = &f.store;
    let (node, run) = running(store).await;
    store
        .live_want("viewer-1", run, node, Millis(100))
        .await
        .unwrap();
    store
        .live_want("viewer-2", run, node, Millis(100))
        .await
        .unwrap();
    assert_eq!(store.live_wants(run, Millis(50)).await.unwrap(), 2);
    store.live_unwant("viewer-2").await.unwrap();
    // Renewed: still wanted after the first term.
    store
        .live_want("viewer-1", run, node, Millis(300))
        .await
        .unwrap();
    assert_eq!(store.live_wants(run, Millis(200)).await.unwrap(), 1);
    assert_eq!(store.live_wanted(node, Millis(200)).await.unwrap().len(), 1);
    // Its server died: the want runs out and the sweep removes it.
    assert!(
        store
            .live_wanted(node, Millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    store.live_sweep(Millis(300), Millis(0)).await.unwrap();
    assert_eq!(store.live_wants(run, Millis(0)).await.unwrap(), 0);
}

on_both_backends!(
    pieces_are_kept_once_in_order_while_wanted,
    wants_run_out_unless_renewed,
);
