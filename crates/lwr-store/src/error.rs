use thiserror::Error;

/// What can go wrong in the store. Each variant says what was being done.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("unsupported database URL '{url}' (use sqlite:///path/lwr.db or postgres://...)")]
    BadUrl { url: String },
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database error while {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database has schema version {found}, outside this lwr's window (it writes schema \
         {supported} and runs on newer ones only while they stay readable by it); start an lwr \
         whose schema is at least {needs} on this database (CHANGELOG.md names the release)"
    )]
    SchemaTooNew {
        found: i64,
        supported: i64,
        needs: i64,
    },
    #[error("migration to schema version {version} failed: {source}")]
    Migrate {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A job that exists has no such run (yet): why, in the job's words.
    #[error("job {job} {why}")]
    NoRun { job: lwr_model::JobId, why: String },
    /// The request makes no sense in the current state (cancelling an ended job...).
    #[error("{0}")]
    Conflict(String),
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A request field that is not acceptable (the graph itself is fine).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Work handed to a blocking thread did not finish (it panicked, or the runtime stops).
    #[error("{what} was interrupted: {detail}")]
    Interrupted { what: &'static str, detail: String },
    #[error("cannot get random bytes for a token: {0}")]
    Random(String),
    #[error("invalid graph: {0}")]
    InvalidGraph(#[from] lwr_model::GraphError),
}

/// Attaches what the store was doing to a sqlx error.
pub(crate) trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Op<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { op, source })
    }
}

impl StoreError {
    /// True when the database failed because its disk (or quota) is full: SQLite's
    /// `SQLITE_FULL`, PostgreSQL's `disk_full` (53100), or the OS saying so. Nothing was
    /// written (the transaction rolled back), and the same request works once there is room.
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            StoreError::Db { source, .. } | StoreError::Migrate { source, .. } => source,
            StoreError::Connect { source, .. } => source,
            _ => return false,
        };
        match source {
            sqlx::Error::Database(e) => {
                let code = e.code();
                matches!(code.as_deref(), Some("13" | "53100"))
                    || e.message().contains("database or disk is full")
            }
            sqlx::Error::Io(e) => {
                e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
            }
            _ => false,
        }
    }
}
