//! The harness every store test goes through: a fresh, migrated store on SQLite and on
//! PostgreSQL, and after the test body the queue's invariants checked on what it left
//! (`Store::check_invariants`). A test cannot skip the check: the only way to get a store is
//! [`run`] (or [`run_at`] for a database file a test brings), and [`on_both_backends!`]
//! and [`on_postgres!`] turn plain `async fn(Fixture)` bodies into tests through it.

#![allow(dead_code, unused_macros)]

use lwr_store::scratch::{POSTGRES_URL_VAR, ScratchDb};
use lwr_store::{Dialect, Store};

/// A fresh, migrated store for one test body, on either backend.
pub struct Fixture {
    pub store: Store,
    /// The database's URL, for tests that open it again (a restart, a second server).
    pub url: String,
}

/// Runs `body` against a fresh database of `dialect`: a SQLite file in a temp dir, or a
/// database of its own on the PostgreSQL server named by `LWR_TEST_POSTGRES_URL`, dropped
/// afterwards whether the body passed or not. A body that passed is followed by the
/// invariant check.
pub async fn run<F, Fut>(dialect: Dialect, body: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (url, _dir, scratch) = match dialect {
        Dialect::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
            (url, Some(dir), None)
        }
        Dialect::Postgres => {
            let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
                panic!("set {POSTGRES_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run the PostgreSQL variants")
            });
            let db = ScratchDb::create(&admin).await.unwrap();
            (db.url.clone(), None, Some(db))
        }
    };
    let outcome = run_at(&url, body).await;
    if let Some(db) = scratch {
        db.drop_db().await.unwrap();
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` on the database at `url` (which the caller made), then checks the queue's
/// invariants there. Returns the body's or the check's panic, for the caller to resume
/// once it has cleaned up.
pub async fn run_at<F, Fut>(url: &str, body: F) -> Result<(), Box<dyn std::any::Any + Send>>
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let store = Store::open(url).await.unwrap();
    let outcome = tokio::spawn(body(Fixture {
        store: store.clone(),
        url: url.to_string(),
    }))
    .await;
    store.close().await;
    if let Err(e) = outcome {
        return Err(e.into_panic());
    }
    // A store of its own: the body may have closed its store, and what counts is what is
    // in the database, not what a store remembers.
    tokio::spawn(assert_invariants(url.to_string()))
        .await
        .map_err(|e| e.into_panic())
}

/// Panics with every broken invariant of the queue in the database at `url`.
pub async fn assert_invariants(url: String) {
    let store = Store::open(&url).await.unwrap();
    let checked = store.check_invariants().await;
    store.close().await;
    if let Err(e) = checked {
        panic!("after the test, {e}");
    }
}

/// Each test body runs twice: `sqlite::NAME` always, and `postgres::NAME`, which is
/// ignored (reported as such) unless run with `--include-ignored`, and then needs
/// `LWR_TEST_POSTGRES_URL`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::run(lwr_store::Dialect::Sqlite, super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
                async fn $name() {
                    crate::common::run(lwr_store::Dialect::Postgres, super::$name).await
                }
            )*
        }
    };
}

/// Tests of PostgreSQL only (plans, locks, several servers), ignored unless asked for like
/// the others.
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        mod postgres_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
                async fn $name() {
                    crate::common::run(lwr_store::Dialect::Postgres, super::$name).await
                }
            )*
        }
    };
}

/// A job running `echo NAME` after `needs`, with 2 retries and a 60 s timeout: the job most
/// store tests submit.
pub fn job(name: &str, needs: &[&str]) -> lwr_model::JobSpec {
    lwr_model::JobSpec {
        needs: needs.iter().map(|n| n.to_string()).collect(),
        retries: 2,
        timeout_secs: 60,
        ..job_as_written(name, &[])
    }
}

/// A job as an lwr.yml or API body gives it with only `name`, `run: echo NAME` and `needs`:
/// every other field at its wire default.
pub fn job_as_written(name: &str, needs: &[&str]) -> lwr_model::JobSpec {
    let mut j: lwr_model::JobSpec =
        serde_json::from_value(serde_json::json!({"name": name, "run": format!("echo {name}")}))
            .expect("a job with a name and a command");
    j.needs = needs.iter().map(|n| n.to_string()).collect();
    j
}

/// Registers node `n1` (default properties, 8 slots) at time 0; returns its id.
pub async fn node_n1(store: &Store) -> lwr_model::NodeId {
    store
        .register_node(
            &lwr_model::api::RegisterNode {
                name: "n1".into(),
                properties: lwr_model::NodeProperties::default(),
                slots: 8,
            },
            lwr_model::Millis(0),
        )
        .await
        .expect("registering n1")
}
