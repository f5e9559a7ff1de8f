//! Embedded schema migrations, one list per dialect, applied in order on open.

use sqlx::Row;

use crate::error::Op;
use crate::{Dialect, Result, Store, StoreError};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 8;

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
];

pub(crate) async fn run(store: &Store) -> Result<()> {
    let steps = match store.dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    let mut tx = store.write.begin().await.op("starting migration")?;
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
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let applied: Vec<i64> = sqlx::query("SELECT version FROM lwr_schema")
        .fetch_all(&mut *tx)
        .await
        .op("reading the applied schema versions")?
        .iter()
        .map(|row| row.try_get("version"))
        .collect::<std::result::Result<_, _>>()
        .op("reading the applied schema versions")?;
    for (version, sql) in steps.iter().filter(|(v, _)| !applied.contains(v)) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migrate {
                version: *version,
                source,
            })?;
        sqlx::query("INSERT INTO lwr_schema (version) VALUES ($1)")
            .bind(*version)
            .execute(&mut *tx)
            .await
            .op("recording the schema version")?;
    }
    tx.commit().await.op("committing migration")?;
    Ok(())
}
