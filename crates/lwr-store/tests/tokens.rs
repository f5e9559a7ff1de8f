//! Tokens in the store: only hashes are kept; revocation and expiry are seen at once; a node
//! remembers the token it registered with.

use lwr_model::api::RegisterNode;
use lwr_model::{DurationMs, Millis, NodeId, Scopes};
use lwr_store::{Dialect, TokenCheck, hash_secret};

#[macro_use]
mod common;
use common::Fixture;

async fn tokens_are_checked_revoked_and_expire(f: Fixture) {
    let store = f.store;
    let now = Millis(1_000_000);
    let scopes = Scopes::parse("read graph:submit").unwrap();
    let (info, secret) = store
        .create_token(&scopes, Some("ci"), Some(now.plus(DurationMs(5_000))), now)
        .await
        .unwrap();
    assert_eq!(info.state, "active");
    match store
        .check_token(&secret, now.plus(DurationMs(1)))
        .await
        .unwrap()
    {
        TokenCheck::Valid(caller) => {
            assert_eq!(caller.token_id, info.id);
            assert_eq!(caller.scopes, scopes);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .check_token(&secret, now.plus(DurationMs(5_000)))
            .await
            .unwrap(),
        TokenCheck::Expired
    );
    assert_eq!(
        store.check_token("lwr_nope", now).await.unwrap(),
        TokenCheck::Unknown
    );
    let (other, other_secret) = store.create_token(&scopes, None, None, now).await.unwrap();
    assert!(store.token_active(other.id, now).await.unwrap());
    let revoked = store
        .revoke_token(other.id, now.plus(DurationMs(10)))
        .await
        .unwrap();
    assert_eq!(revoked.state, "revoked");
    assert_eq!(
        store
            .check_token(&other_secret, now.plus(DurationMs(11)))
            .await
            .unwrap(),
        TokenCheck::Revoked
    );
    assert!(
        !store
            .token_active(other.id, now.plus(DurationMs(11)))
            .await
            .unwrap()
    );
    assert!(store.revoke_token(999, now).await.is_err());
    let states: Vec<String> = store
        .tokens(now.plus(DurationMs(6_000)))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["expired", "revoked"]);

    // Only the hash is in the database.
    let text = match store.dialect() {
        Dialect::Sqlite => {
            store.close().await;
            let path = f.url.trim_start_matches("sqlite://");
            let dir = std::path::Path::new(path).parent().unwrap();
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Dialect::Postgres => {
            use sqlx::{Connection, Row};
            let mut conn = sqlx::AnyConnection::connect(&f.url).await.unwrap();
            let rows = sqlx::query("SELECT CAST(t AS TEXT) AS row FROM tokens t")
                .fetch_all(&mut conn)
                .await
                .unwrap();
            rows.iter().map(|r| r.get::<String, _>("row")).collect()
        }
    };
    assert!(!text.contains(&secret) && !text.contains(&other_secret));
    assert!(text.contains(&hash_secret(&secret)));
}

async fn a_node_remembers_the_token_it_registered_with(f: Fixture) {
    let store = f.store;
    let reg = RegisterNode {
        name: "n1".into(),
        properties: Default::default(),
        slots: 1,
    };
    assert_eq!(store.node_owner_by_name("n1").await.unwrap(), None);
    let id = store
        .register_node_for(&reg, Millis(1), Some(7))
        .await
        .unwrap();
    assert_eq!(store.node_owner(id).await.unwrap(), Some(7));
    assert_eq!(store.node_owner_by_name("n1").await.unwrap(), Some(Some(7)));
    // Registering again (a restart, a new token) keeps the id and takes the new token.
    assert_eq!(
        store
            .register_node_for(&reg, Millis(2), Some(8))
            .await
            .unwrap(),
        id
    );
    assert_eq!(store.node_owner(id).await.unwrap(), Some(8));
    assert!(store.node_owner(NodeId(id.get() + 1)).await.is_err());
}

/// A node token acts for one name, bound when made or at its first registration, with the
/// hostname and tags its node claimed first; a second binding changes nothing.
async fn a_node_token_binds_one_name_and_its_first_claims(f: Fixture) {
    let store = f.store;
    let now = Millis(1_000_000);
    let scopes = Scopes::parse("node:register").unwrap();
    let (first, _) = store.create_token(&scopes, None, None, now).await.unwrap();
    let bound = store
        .bind_node_token(first.id, "n1", Some("c1"))
        .await
        .unwrap();
    assert_eq!(bound.name.as_deref(), Some("n1"));
    assert_eq!(bound.claims.as_deref(), Some("c1"));
    let other = store
        .bind_node_token(first.id, "n2", Some("c1"))
        .await
        .unwrap();
    assert_eq!(other, bound, "another name binds nothing");
    let other = store
        .bind_node_token(first.id, "n1", Some("c2"))
        .await
        .unwrap();
    assert_eq!(other, bound, "other claims bind nothing");
    // Made for a name: the claims come with the first registration.
    let (made, _) = store.create_token(&scopes, None, None, now).await.unwrap();
    let at_creation = store.bind_node_token(made.id, "n3", None).await.unwrap();
    assert_eq!(
        (at_creation.name.as_deref(), at_creation.claims),
        (Some("n3"), None)
    );
    let registered = store
        .bind_node_token(made.id, "n3", Some("c3"))
        .await
        .unwrap();
    assert_eq!(registered.claims.as_deref(), Some("c3"));
}

on_both_backends!(
    tokens_are_checked_revoked_and_expire,
    a_node_remembers_the_token_it_registered_with,
    a_node_token_binds_one_name_and_its_first_claims,
);
