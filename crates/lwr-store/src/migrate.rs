//! Embedded schema migrations, one list per dialect, applied in order on open.

use sqlx::Row;

use crate::error::Op;
use crate::tx::Tx;
use crate::{Dialect, Result, Store, StoreError};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 19;

/// The oldest schema this build migrates from: every migration since the first is embedded,
/// so any older database is brought up to `SCHEMA_VERSION` on open.
pub const OLDEST_SCHEMA: i64 = 0;

/// The compatibility window. A database may be newer than this build: a newer release's
/// server migrated it. Each migration records `readable_by`, the oldest schema whose
/// servers still work on the database once it is applied. Expand steps (new tables, new
/// columns with defaults, both shapes written) keep the previous release's schema
/// readable, so its servers go on and can restart mid-upgrade; a contract step (dropping
/// or renaming what an older release reads) raises `readable_by` and comes a release after
/// the one that stopped reading it. A build runs on a database when the newest
/// `readable_by` among the migrations it does not know is at most its own `SCHEMA_VERSION`.
///
/// `readable_by` of the migrations below: the schema before this window existed; a new
/// additive migration uses the previous release's `SCHEMA_VERSION` (CHANGELOG.md names it).
const PREVIOUS_RELEASE_SCHEMA: i64 = 8;

/// A test-only additive migration one past `SCHEMA_VERSION`, so the mixed-release test can
/// start a "next release" from this build before a next release exists (set the variable
/// to any value). Never set in production.
pub const SCHEMA_PROBE_ENV: &str = "LWR_TEST_SCHEMA_PROBE";
const PROBE_SQL: &str = "CREATE TABLE IF NOT EXISTS lwr_upgrade_probe (id BIGINT PRIMARY KEY, note TEXT NOT NULL DEFAULT '')";

/// The schema this process writes: `SCHEMA_VERSION`, or one more under the test probe.
pub fn schema_version() -> i64 {
    if probe() {
        SCHEMA_VERSION + 1
    } else {
        SCHEMA_VERSION
    }
}

fn probe() -> bool {
    std::env::var_os(SCHEMA_PROBE_ENV).is_some()
}

/// One migration: its version, its SQL, and the oldest schema whose servers still run on
/// the database after it.
struct Step {
    version: i64,
    sql: &'static str,
    readable_by: i64,
}

/// The advisory lock key migrations hold on PostgreSQL ("lwr" and the default port).
const MIGRATION_LOCK: i64 = 0x6c77_7200_1cc2;

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_artifacts.sql")),
    (3, include_str!("../migrations/sqlite/0003_pushes.sql")),
    (4, include_str!("../migrations/sqlite/0004_tokens.sql")),
    (5, include_str!("../migrations/sqlite/0005_pool.sql")),
    (6, include_str!("../migrations/sqlite/0006_settings.sql")),
    (7, include_str!("../migrations/sqlite/0007_push_author.sql")),
    (8, include_str!("../migrations/sqlite/0008_checkout.sql")),
    (9, include_str!("../migrations/sqlite/0009_node_tokens.sql")),
    (10, include_str!("../migrations/sqlite/0010_duties.sql")),
    (11, include_str!("../migrations/sqlite/0011_bounded.sql")),
    (12, include_str!("../migrations/sqlite/0012_live_logs.sql")),
    (
        13,
        include_str!("../migrations/sqlite/0013_node_reimage.sql"),
    ),
    (
        14,
        include_str!("../migrations/sqlite/0014_graph_counts.sql"),
    ),
    (
        15,
        include_str!("../migrations/sqlite/0015_cheaper_counts.sql"),
    ),
    (
        16,
        include_str!("../migrations/sqlite/0016_job_needs_checks.sql"),
    ),
    (
        17,
        include_str!("../migrations/sqlite/0017_affinity_index.sql"),
    ),
    (
        18,
        include_str!("../migrations/sqlite/0018_job_affinity.sql"),
    ),
    (
        19,
        include_str!("../migrations/sqlite/0019_linear_counts.sql"),
    ),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_artifacts.sql")),
    (3, include_str!("../migrations/postgres/0003_pushes.sql")),
    (4, include_str!("../migrations/postgres/0004_tokens.sql")),
    (5, include_str!("../migrations/postgres/0005_pool.sql")),
    (6, include_str!("../migrations/postgres/0006_settings.sql")),
    (
        7,
        include_str!("../migrations/postgres/0007_push_author.sql"),
    ),
    (8, include_str!("../migrations/postgres/0008_checkout.sql")),
    (
        9,
        include_str!("../migrations/postgres/0009_node_tokens.sql"),
    ),
    (10, include_str!("../migrations/postgres/0010_duties.sql")),
    (11, include_str!("../migrations/postgres/0011_bounded.sql")),
    (
        12,
        include_str!("../migrations/postgres/0012_live_logs.sql"),
    ),
    (
        13,
        include_str!("../migrations/postgres/0013_node_reimage.sql"),
    ),
    (
        14,
        include_str!("../migrations/postgres/0014_graph_counts.sql"),
    ),
    (
        15,
        include_str!("../migrations/postgres/0015_cheaper_counts.sql"),
    ),
    (
        16,
        include_str!("../migrations/postgres/0016_job_needs_checks.sql"),
    ),
    (
        17,
        include_str!("../migrations/postgres/0017_affinity_index.sql"),
    ),
    (
        18,
        include_str!("../migrations/postgres/0018_job_affinity.sql"),
    ),
    (
        19,
        include_str!("../migrations/postgres/0019_linear_counts.sql"),
    ),
];

fn steps(dialect: Dialect) -> Vec<Step> {
    let list = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    let mut steps: Vec<Step> = list
        .iter()
        .map(|&(version, sql)| Step {
            version,
            sql,
            readable_by: PREVIOUS_RELEASE_SCHEMA.min(version),
        })
        .collect();
    if probe() {
        steps.push(Step {
            version: SCHEMA_VERSION + 1,
            sql: PROBE_SQL,
            readable_by: SCHEMA_VERSION,
        });
    }
    steps
}

pub(crate) async fn run(store: &Store) -> Result<()> {
    let steps = steps(store.dialect);
    let ours = schema_version();
    let mut tx = Tx::begin(&store.write).await.op("starting migration")?;
    if store.dialect == Dialect::Postgres {
        // Two servers starting on one database must not migrate at the same time: the
        // second waits here until the first commits, then finds the schema current. The
        // lock is taken before creating lwr_schema, because two concurrent
        // `CREATE TABLE IF NOT EXISTS` can both try to create it and one fails. It is a
        // transaction-scoped advisory lock, so it goes with the transaction whatever happens.
        sqlx::query("SELECT pg_advisory_xact_lock($1)::text AS locked")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .op("locking the schema for migration")?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS lwr_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .op("creating the schema table")?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM lwr_schema")
        .fetch_one(&mut *tx)
        .await
        .op("reading the schema version")?
        .try_get("v")
        .op("reading the schema version")?;
    // Which schemas a newer server's migrations left readable: the window table is created
    // here, beside lwr_schema, so a database of any age has it.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS lwr_schema_window \
         (version BIGINT PRIMARY KEY, readable_by BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .op("creating the schema window table")?;
    if current > ours {
        let needs: i64 = sqlx::query(
            "SELECT COALESCE(MAX(readable_by), 0) AS r FROM lwr_schema_window WHERE version > $1",
        )
        .bind(ours)
        .fetch_one(&mut *tx)
        .await
        .op("reading the schema window")?
        .try_get("r")
        .op("reading the schema window")?;
        // A newer schema whose migrations left no record came from a build before the
        // window existed: nothing says this build can read it.
        let recorded: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM lwr_schema_window WHERE version > $1")
                .bind(ours)
                .fetch_one(&mut *tx)
                .await
                .op("reading the schema window")?
                .try_get("n")
                .op("reading the schema window")?;
        let unrecorded = recorded < current - ours;
        if needs > ours || unrecorded {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: ours,
                needs: if unrecorded { current } else { needs },
            });
        }
        // Within the window: run on it as it is. Nothing to migrate; a newer server did.
        tx.commit().await.op("committing migration")?;
        return Ok(());
    }
    let applied: Vec<i64> = sqlx::query("SELECT version FROM lwr_schema")
        .fetch_all(&mut *tx)
        .await
        .op("reading the applied schema versions")?
        .iter()
        .map(|row| row.try_get("version"))
        .collect::<std::result::Result<_, _>>()
        .op("reading the applied schema versions")?;
    for step in steps.iter().filter(|s| !applied.contains(&s.version)) {
        sqlx::raw_sql(step.sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migrate {
                version: step.version,
                source,
            })?;
        sqlx::query("INSERT INTO lwr_schema (version) VALUES ($1)")
            .bind(step.version)
            .execute(&mut *tx)
            .await
            .op("recording the schema version")?;
    }
    // Record the window of every known version (also those applied before the window
    // existed), so an older server reading this database knows what it may do.
    for step in &steps {
        let upsert = match store.dialect {
            Dialect::Sqlite => {
                "INSERT OR IGNORE INTO lwr_schema_window (version, readable_by) VALUES ($1, $2)"
            }
            Dialect::Postgres => {
                "INSERT INTO lwr_schema_window (version, readable_by) VALUES ($1, $2) \
                 ON CONFLICT (version) DO NOTHING"
            }
        };
        sqlx::query(upsert)
            .bind(step.version)
            .bind(step.readable_by)
            .execute(&mut *tx)
            .await
            .op("recording the schema window")?;
    }
    tx.commit().await.op("committing migration")?;
    Ok(())
}
