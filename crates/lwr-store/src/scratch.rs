//! Throw-away PostgreSQL databases for tests: each test gets its own, so tests never share
//! state and can run in parallel against one server.

use sqlx::Connection;

use crate::error::Op;
use crate::{Result, StoreError};

/// The environment variable naming the PostgreSQL server tests may use, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_VAR: &str = "LWR_TEST_POSTGRES_URL";

/// A database created for one test on the server named by [`POSTGRES_URL_VAR`]; dropped by
/// [`ScratchDb::drop_db`] (call it also when the test failed).
#[derive(Debug, Clone)]
pub struct ScratchDb {
    /// URL of the fresh database.
    pub url: String,
    /// The database name, `lwr_t_<random>`.
    pub name: String,
    admin_url: String,
}

impl ScratchDb {
    /// Creates an empty database `lwr_t_<random>` on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> Result<ScratchDb> {
        sqlx::any::install_default_drivers();
        let name = format!("lwr_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect(admin_url).await?;
        // The name is ours (hex digits), never input; CREATE DATABASE takes no parameters.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .op("creating a scratch database")?;
        let _ = conn.close().await;
        Ok(ScratchDb {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// Drops the database, disconnecting whoever still uses it.
    pub async fn drop_db(&self) -> Result<()> {
        let mut conn = connect(&self.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .op("dropping a scratch database")?;
        let _ = conn.close().await;
        Ok(())
    }
}

async fn connect(url: &str) -> Result<sqlx::AnyConnection> {
    sqlx::AnyConnection::connect(url)
        .await
        .map_err(|source| StoreError::Connect {
            url: crate::redact(url),
            source,
        })
}

/// `url` with its database (the path) replaced by `db`, keeping any `?options`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
