//! The lwr store: graphs, jobs, runs and nodes in SQLite or PostgreSQL.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the SQL is written
//! once with `$n` placeholders, and [`Dialect`] switches the few statements that differ
//! (row locking, schema). Every state change of the queue is one transaction; the functions
//! take `now` ([`Millis`]) as an argument so tests can drive time. Ids, instants and spans
//! are the model's newtypes ([`lwr_model::ids`]); sqlx cannot encode them (the model has no
//! sqlx), so they are bound with `.get()` and read with `rows::typed`.

mod artifacts;
mod batch;
mod combine;
mod control;
mod direct;
mod duties;
mod error;
mod events;
mod gauges;
mod graphs;
mod invariants;
mod livelogs;
mod migrate;
mod nodes;
mod pool;
mod pushes;
mod queue;
mod retention;
mod rows;
pub mod scratch;
mod tokens;
mod tx;
mod views;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lwr_model::Millis;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};

pub use artifacts::{NewArtifact, StoredArtifact, UploadTarget, location};
pub use control::Cancelled;
pub use duties::DutyHolder;
pub use error::StoreError;
pub use events::{CHANNEL, Event, Events};
pub use gauges::{Gauges, PoolUse};
pub use graphs::{JobQuery, submitted_graph};
pub use invariants::{InvariantError, Violation};
pub use livelogs::{LiveAppend, LiveHeld};
pub use migrate::{OLDEST_SCHEMA, SCHEMA_PROBE_ENV, SCHEMA_VERSION, schema_version};
pub use nodes::LOST_AFTER_MS;
pub use pool::PoolConfig;
pub use pushes::{DEFAULT_EVERY_MS, PollTarget};
pub use queue::{Claimed, Effects};
pub use retention::Removed;
pub use tokens::{Caller, TokenCheck, hash_secret, new_secret};
pub use views::{GraphFilter, GraphSummary, JobCell};

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

impl FromStr for Dialect {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            Err(StoreError::BadUrl {
                url: url.to_string(),
            })
        }
    }
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// All writes go here. For SQLite it is one connection, so writers queue for it
    /// instead of failing with `SQLITE_BUSY` (kept out of its pool: see `writer`).
    write: writer::Writer,
    /// Reads; for SQLite in WAL mode they never block the writer.
    read: AnyPool,
    /// What nodes and token checks read (claims' pool snapshot, node and run owners,
    /// tokens): connections of their own, so that heavy listings filling `read` never
    /// delay a heartbeat into a lost lease. On PostgreSQL the write pool, which readers
    /// do not use either.
    node: AnyPool,
    dialect: Dialect,
    /// Node names and properties by id, read on every claim.
    nodes: nodes::NodeCache,
    /// The pool snapshot the claim decides with.
    pool: pool::PoolCache,
    /// Where recently claimed graphs came from (never changes once a graph is stored).
    origins: queue::OriginCache,
    /// Serves claims that arrive together in one transaction.
    combiner: combine::Combiner,
    /// A claim before a submission for SQLite's writer.
    turns: Arc<tx::WriterTurns>,
    /// Names this store in notifications, so a server skips its own.
    instance: Arc<str>,
    /// For listening to other servers (PostgreSQL only).
    postgres_url: Option<String>,
    /// The key job tokens are signed with, read from the database once.
    job_key: Arc<tokio::sync::OnceCell<[u8; 32]>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`: `sqlite:///path/lwr.db`
    /// or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect: Dialect = url.parse()?;
        let connect = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                // A SQLite connection is a file in this process: the ping sqlx sends before
                // handing one out is a round trip to its thread that cannot fail, on every
                // statement a node's request makes. A PostgreSQL connection may have been
                // cut, and is checked.
                .test_before_acquire(dialect == Dialect::Postgres)
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if dialect == Dialect::Sqlite {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
                // A connection that still counts a transaction when the pool hands it out
                // is out of step with its database: close it (a new one replaces it).
                // SQLite rolls a transaction back by itself when its COMMIT fails with
                // SQLITE_FULL (a full disk); sqlx's ROLLBACK then fails ("no transaction is
                // active") and its count stays at 1. The next `begin` is then a SAVEPOINT,
                // which opens a real transaction; once that savepoint is rolled back (another
                // commit refused, an error returned mid-transaction) the transaction stays
                // open and every later commit only releases an inner savepoint: writes seen
                // by this connection alone.
                .before_acquire(|conn, _meta| {
                    Box::pin(async move {
                        let stale = conn.is_in_transaction();
                        if stale {
                            tracing::warn!(
                                "closing a database connection left in a transaction by a \
                                 failed commit or rollback; a new one replaces it"
                            );
                        }
                        Ok(!stale)
                    })
                })
        };
        let (write, read, node) = match dialect {
            Dialect::Sqlite => {
                sqlite_without_memory_statistics();
                create_private(url);
                let url = sqlite_create_url(url);
                let write =
                    connect(1)
                        .connect(&url)
                        .await
                        .map_err(|source| StoreError::Connect {
                            url: url.clone(),
                            source,
                        })?;
                let read =
                    connect(4)
                        .connect(&url)
                        .await
                        .map_err(|source| StoreError::Connect {
                            url: url.clone(),
                            source,
                        })?;
                let node =
                    connect(2)
                        .connect(&url)
                        .await
                        .map_err(|source| StoreError::Connect {
                            url: url.clone(),
                            source,
                        })?;
                // Claims and small graphs run on a connection of their own to the file
                // (`direct`).
                let write = writer::Writer::kept(write, direct_file(&url));
                (write, read, node)
            }
            Dialect::Postgres => {
                let pool = |max: u32| connect(max).connect(url);
                let failed = |source| StoreError::Connect {
                    url: redact(url),
                    source,
                };
                // Sixteen connections as before, but readers take at most six of them.
                let write = pool(10).await.map_err(failed)?;
                let read = pool(6).await.map_err(failed)?;
                (writer::Writer::pooled(write.clone()), read, write)
            }
        };
        let store = Store {
            write,
            read,
            node,
            dialect,
            nodes: Default::default(),
            pool: Default::default(),
            origins: Default::default(),
            combiner: Default::default(),
            turns: Arc::new(tx::WriterTurns::new()),
            instance: uuid::Uuid::new_v4().simple().to_string().into(),
            postgres_url: (dialect == Dialect::Postgres).then(|| url.to_string()),
            job_key: Default::default(),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection to write with, for a statement outside a transaction (see `writer`).
    async fn writer(&self) -> Result<writer::WriterConn> {
        use crate::error::Op;
        self.write
            .acquire()
            .await
            .op("waiting for the database writer")
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        self.node.close().await;
    }
}

/// SQLite creates the file only when asked to.
/// Creates a new SQLite database file as 0600 before SQLite does: it holds the key job tokens
/// are signed with, and SQLite gives its -wal and -shm files the database file's mode. An
/// existing file is left as it is (the server checks data dir modes at start); failures are
/// left for SQLite to report.
/// Turns off SQLite's memory statistics, once per process, before its first connection.
/// With them on (SQLite's default), every allocation and free inside SQLite takes one
/// process-wide mutex to count bytes: each row sqlx reads copies every column value
/// (`sqlite3_value_dup`) and frees it again on another thread, so the claim path and
/// listings paid that mutex per column. Nothing here reads the statistics or sets a soft
/// heap limit, the only features that need them.
fn sqlite_without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` is called before any connection of this process exists
        // (this runs before the first pool connects; SQLite initializes on first open). Had
        // SQLite been initialized already, it would refuse with SQLITE_MISUSE and change
        // nothing, which is harmless: the statistics stay on.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0i32)
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!("SQLite memory statistics stay on (sqlite3_config: {rc})");
        }
    });
}

fn create_private(url: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = sqlite_file(url) else {
        return;
    };
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
}

/// The file of a `sqlite://` URL as sqlx decodes it; `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    let name = file.to_string_lossy();
    (!name.is_empty() && !name.contains(":memory:")).then(|| file.to_path_buf())
}

/// The file a direct connection ([`direct`]) opens for `url`, as sqlx decodes it: only for
/// a plain read-write file (no in-memory, read-only, immutable or VFS option), where both
/// connections are sure to reach the same database.
fn direct_file(url: &str) -> Option<std::path::PathBuf> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let plain = query
        .split('&')
        .all(|option| matches!(option, "" | "mode=rw" | "mode=rwc"));
    if !plain {
        return None;
    }
    sqlite_file(url).filter(|file| file.is_file())
}

fn sqlite_create_url(url: &str) -> String {
    if url.contains('?') {
        url.to_string()
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Hides a password in a database URL before it goes into an error message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// An instant as RFC 3339, for API answers.
pub fn rfc3339(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at.get())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The current time.
pub fn now_ms() -> Millis {
    Millis(chrono::Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct connection opens the file sqlx opened, and none where the URL's options
    /// could make the two reach different databases.
    #[test]
    fn the_direct_connection_opens_only_the_plain_file_sqlx_reaches() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("a b.db");
        std::fs::write(&file, b"").expect("a file");
        let url = format!("sqlite://{}", dir.path().join("a%20b.db").display());
        assert_eq!(
            direct_file(&url).as_deref(),
            Some(file.as_path()),
            "decoded as sqlx does"
        );
        assert_eq!(
            direct_file(&format!("{url}?mode=rwc")).as_deref(),
            Some(file.as_path())
        );
        for options in [
            "mode=memory",
            "mode=ro",
            "immutable=true",
            "vfs=unix-dotfile",
        ] {
            assert_eq!(direct_file(&format!("{url}?{options}")), None, "{options}");
        }
        let missing = format!("sqlite://{}", dir.path().join("none.db").display());
        assert_eq!(direct_file(&missing), None);
        assert_eq!(direct_file("sqlite::memory:"), None);
    }

    #[test]
    fn urls_pick_the_dialect() {
        assert_eq!(
            "sqlite:///tmp/x.db".parse::<Dialect>().unwrap(),
            Dialect::Sqlite
        );
        assert_eq!(
            "postgres://u@h/db".parse::<Dialect>().unwrap(),
            Dialect::Postgres
        );
        assert!("mysql://h/db".parse::<Dialect>().is_err());
    }

    /// SQLite ends a transaction by itself when its COMMIT fails with SQLITE_FULL (the
    /// database's disk full), and sqlx's ROLLBACK after it fails. Commits after that, even
    /// after a request that failed mid-transaction, must reach the database: other
    /// connections (the read pool) see them.
    #[tokio::test]
    async fn commits_after_sqlite_ended_a_transaction_by_itself_are_seen_by_readers() {
        use lwr_model::api::SubmitGraph;
        use lwr_model::{Graph, JobId, JobSpec};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
        let store = Store::open(&url).await.unwrap();
        // `OR ROLLBACK` ends the transaction as a COMMIT refused for a full disk does,
        // without filling a disk.
        let mut tx = crate::tx::Tx::begin(&store.write).await.unwrap();
        sqlx::query(
            "INSERT OR ROLLBACK INTO settings (name, value) VALUES ('probe', 'a'), ('probe', 'b')",
        )
        .execute(&mut *tx)
        .await
        .unwrap_err();
        assert!(tx.commit().await.is_err(), "SQLite ended the transaction");
        // A request that fails on its own: its transaction is dropped, not committed.
        let missing = store.cancel_job(JobId(999), now_ms()).await.unwrap_err();
        assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
        for i in 0..3 {
            let job: JobSpec =
                serde_json::from_value(serde_json::json!({"name": format!("j{i}"), "run": "true"}))
                    .unwrap();
            let id = store
                .submit_graph(&SubmitGraph::new(Graph { jobs: vec![job] }), now_ms())
                .await
                .unwrap();
            // `graph` reads on the read pool, other connections than the writer's.
            let seen = store.graph(id).await;
            assert!(seen.is_ok(), "graph {id} committed but not seen: {seen:?}");
        }
        store.close().await;
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
