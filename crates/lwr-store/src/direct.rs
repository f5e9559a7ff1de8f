//! SQLite's writer driven on the caller's thread, for the claim's transaction.
//!
//! sqlx runs every SQLite connection on a thread of its own: each statement (or text of
//! several) is a message to that thread and its rows a message back, a wake-up each way.
//! A claim's transaction made two such round trips, and on this project's two-core
//! machines they were the largest share of a claim's cost that was not SQLite's own work
//! (`bench/skeleton`'s floor: one committed statement a step took a chain of `true` jobs
//! from 1.30 to 1.45 times `make -j2` through sqlx). So the combined claim
//! ([`crate::combine`]) runs its transaction on a second writer connection of its own,
//! opened with rusqlite on the same file and held under the same lock as sqlx's writer
//! ([`crate::writer`]): the statements run where the claim runs, with no hand-off.
//!
//! The queries are still built as sqlx queries (the same text and arguments for both
//! paths) and answered as sqlx rows, so that the claim's code does not care which
//! connection ran them: [`Direct::run`] takes a query's text and arguments apart, runs each
//! statement of the text in turn (stopping at the first that fails, as SQLite's own
//! multi-statement execution does), and returns each statement's rows.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::any::{AnyArguments, AnyRow, AnyTypeInfo, AnyTypeInfoKind, AnyValue};
use sqlx::{Any, Execute};
use sqlx_core::any::{AnyColumn, AnyValueKind};
use sqlx_core::ext::ustr::UStr;

/// Texts split into statements, kept at most (texts vary with the number of results and
/// jobs in a claim; a claim of more than a few dozen of either is rare).
const TEXTS_KEPT: usize = 256;

/// Prepared statements kept by the connection.
const STATEMENTS_KEPT: usize = 128;

/// The columns of a statement's rows, as sqlx's rows name them.
struct Columns {
    names: Arc<sqlx_core::HashMap<UStr, usize>>,
    columns: Vec<AnyColumn>,
}

/// One statement of a text, and its columns once known.
struct Piece {
    sql: String,
    columns: Option<Columns>,
}

/// A second connection to SQLite's database file, used only while the writer's lock is
/// held (see the module's comment).
pub(crate) struct Direct {
    conn: rusqlite::Connection,
    texts: HashMap<String, Vec<Piece>>,
}

impl Direct {
    /// Opens the database file `path` (which must exist: sqlx created and migrated it)
    /// with the settings of the store's sqlx connections.
    pub(crate) fn open(path: &Path) -> Result<Direct, sqlx::Error> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_error)?;
        // As sqlx's: a busy wait here is another process's write (a CLI with `--data-dir`),
        // milliseconds long, on the runtime's thread.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; \
             PRAGMA foreign_keys = ON;",
        )
        .map_err(db_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
        Ok(Direct {
            conn,
            texts: HashMap::new(),
        })
    }

    /// Runs `query`'s statements in turn with its arguments (`$n` is the n-th in every
    /// statement), stopping at the first that fails; returns each statement's rows.
    pub(crate) fn run(
        &mut self,
        mut query: impl Execute<'static, Any>,
    ) -> Result<Vec<Vec<AnyRow>>, sqlx::Error> {
        let args = query
            .take_arguments()
            .map_err(sqlx::Error::Encode)?
            .unwrap_or_default();
        let sql = query.sql();
        self.run_text(sql.as_str(), &args)
    }

    /// Runs a text without arguments (`BEGIN`, `COMMIT`, `ROLLBACK`).
    pub(crate) fn plain(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.run_text(sql, &AnyArguments::default()).map(|_| ())
    }

    /// Whether a transaction is open on the connection.
    pub(crate) fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    fn run_text(
        &mut self,
        sql: &str,
        args: &AnyArguments,
    ) -> Result<Vec<Vec<AnyRow>>, sqlx::Error> {
        if !self.texts.contains_key(sql) {
            if self.texts.len() >= TEXTS_KEPT {
                self.texts.clear();
            }
            let pieces = split(sql)
                .into_iter()
                .map(|sql| Piece { sql, columns: None })
                .collect();
            self.texts.insert(sql.to_string(), pieces);
        }
        let Some(pieces) = self.texts.get_mut(sql) else {
            return Ok(Vec::new());
        };
        let mut each = Vec::with_capacity(pieces.len());
        // Anonymous parameters (`?`) are counted across the text's statements, as sqlx does.
        let mut anonymous = 0;
        for piece in pieces.iter_mut() {
            each.push(run_piece(&self.conn, piece, args, &mut anonymous)?);
        }
        Ok(each)
    }
}

/// Runs one statement and reads all its rows (so that it has run to its end before the
/// next statement: `changes()` in the next one counts its rows).
fn run_piece(
    conn: &rusqlite::Connection,
    piece: &mut Piece,
    args: &AnyArguments,
    anonymous: &mut usize,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let mut stmt = conn.prepare_cached(&piece.sql).map_err(db_error)?;
    for i in 1..=stmt.parameter_count() {
        let value = match stmt.parameter_name(i) {
            Some(name) => {
                let n = name
                    .strip_prefix('$')
                    .or_else(|| name.strip_prefix('?'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!(
                            "unsupported parameter {name} in {}",
                            piece.sql
                        ))
                    })?;
                args.values.0.get(n.wrapping_sub(1))
            }
            None => {
                *anonymous += 1;
                args.values.0.get(*anonymous - 1)
            }
        };
        let value = value.map_or(Ok(ToSqlOutput::Borrowed(ValueRef::Null)), argument)?;
        stmt.raw_bind_parameter(i, value).map_err(db_error)?;
    }
    let count = stmt.column_count();
    // Known after the first run; a statement prepared again after a schema change may
    // have other columns.
    if piece
        .columns
        .as_ref()
        .is_some_and(|c| c.columns.len() != count)
    {
        piece.columns = None;
    }
    let columns = piece.columns.get_or_insert_with(|| columns_of(&stmt));
    let mut out = Vec::new();
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(db_error)? {
        let mut values = Vec::with_capacity(count);
        for i in 0..count {
            values.push(AnyValue {
                kind: value(row.get_ref(i).map_err(db_error)?),
            });
        }
        out.push(AnyRow {
            column_names: columns.names.clone(),
            columns: columns.columns.clone(),
            values,
        });
    }
    Ok(out)
}

/// A statement's columns, named as sqlx names them.
fn columns_of(stmt: &rusqlite::Statement<'_>) -> Columns {
    let mut names = sqlx_core::HashMap::default();
    let mut columns = Vec::with_capacity(stmt.column_count());
    for (ordinal, name) in stmt.column_names().into_iter().enumerate() {
        let name = UStr::new(name);
        names.insert(name.clone(), ordinal);
        columns.push(AnyColumn {
            ordinal,
            name,
            type_info: AnyTypeInfo {
                kind: AnyTypeInfoKind::Null,
            },
        });
    }
    Columns {
        names: Arc::new(names),
        columns,
    }
}

/// An argument as SQLite binds it, as sqlx's SQLite driver maps it.
fn argument(value: &AnyValueKind) -> Result<ToSqlOutput<'_>, sqlx::Error> {
    Ok(ToSqlOutput::Borrowed(match value {
        AnyValueKind::Null(_) => ValueRef::Null,
        AnyValueKind::Bool(b) => ValueRef::Integer(i64::from(*b)),
        AnyValueKind::SmallInt(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::Integer(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::BigInt(i) => ValueRef::Integer(*i),
        AnyValueKind::Real(r) => ValueRef::Real(f64::from(*r)),
        AnyValueKind::Double(d) => ValueRef::Real(*d),
        AnyValueKind::Text(t) => ValueRef::Text(t.as_bytes()),
        AnyValueKind::TextSlice(t) => ValueRef::Text(t.as_bytes()),
        AnyValueKind::Blob(b) => ValueRef::Blob(b),
        other => {
            return Err(sqlx::Error::Protocol(format!(
                "cannot bind {other:?} to a SQLite statement"
            )));
        }
    }))
}

/// A column's value as sqlx's `Any` driver gives SQLite's: by the value's own type.
fn value(v: ValueRef<'_>) -> AnyValueKind {
    match v {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(i) => AnyValueKind::BigInt(i),
        ValueRef::Real(r) => AnyValueKind::Double(r),
        ValueRef::Text(t) => AnyValueKind::Text(Arc::new(String::from_utf8_lossy(t).into_owned())),
        ValueRef::Blob(b) => AnyValueKind::Blob(Arc::new(b.to_vec())),
    }
}

/// Splits a text of several statements where SQLite would (`sqlite3_complete` says where
/// a statement ends: not at a `;` inside a literal, a comment or a trigger's body).
fn split(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c != ';' {
            continue;
        }
        let candidate = &text[start..=i];
        if complete(candidate) {
            let sql = candidate[..candidate.len() - 1].trim();
            if !sql.is_empty() {
                pieces.push(sql.to_string());
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

/// Whether `sql` ends with a complete statement.
fn complete(sql: &str) -> bool {
    let Ok(sql) = CString::new(sql) else {
        return false;
    };
    // SAFETY: a NUL-terminated string that outlives the call; sqlite3_complete only reads it.
    unsafe { libsqlite3_sys::sqlite3_complete(sql.as_ptr()) != 0 }
}

/// A rusqlite error as sqlx reports SQLite's, so that the store reads both alike (a full
/// disk is code 13).
fn db_error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            sqlx::Error::Database(Box::new(DirectError {
                code: code.extended_code,
                message: message.unwrap_or_else(|| code.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// SQLite's error, as [`db_error`] hands it to sqlx.
#[derive(Debug, thiserror::Error)]
#[error("(code: {code}) {message}")]
struct DirectError {
    code: i32,
    message: String,
}

impl sqlx::error::DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use libsqlite3_sys as ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                sqlx::error::ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    fn open() -> (tempfile::TempDir, Direct) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        rusqlite::Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "PRAGMA journal_mode = WAL; \
                     CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER NOT NULL);",
                )
            })
            .expect("database");
        let direct = Direct::open(&path).expect("direct connection");
        (dir, direct)
    }

    #[test]
    fn a_text_of_several_statements_gives_each_its_rows_with_shared_numbered_arguments() {
        let (_dir, mut d) = open();
        let query = sqlx::query::<Any>(
            "BEGIN; INSERT INTO t (name, n) VALUES ($1, $2), ('a;b', $2 + 1); \
             SELECT id, name, n FROM t WHERE n >= $2 ORDER BY id; \
             UPDATE t SET name = NULL WHERE n = $2 + 1 RETURNING id; COMMIT",
        )
        .bind("x")
        .bind(5i64);
        let each = d.run(query).expect("runs");
        assert_eq!(
            each.len(),
            5,
            "one entry per statement, the `;` in a literal kept"
        );
        let rows = &each[2];
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].try_get::<String, _>("name").ok().as_deref(),
            Some("x")
        );
        assert_eq!(
            rows[1].try_get::<String, _>("name").ok().as_deref(),
            Some("a;b")
        );
        assert_eq!(rows[1].try_get::<i64, _>("n").ok(), Some(6));
        assert_eq!(each[3].len(), 1);
        assert!(!d.in_transaction());
        let again = d
            .run(sqlx::query::<Any>("SELECT name FROM t WHERE n = $1").bind(6i64))
            .expect("runs");
        assert_eq!(
            again[0][0].try_get::<Option<String>, _>("name").ok(),
            Some(None)
        );
    }

    #[test]
    fn a_failing_statement_stops_the_text_and_leaves_the_transaction_to_the_caller() {
        let (_dir, mut d) = open();
        let ran = d.run(sqlx::query::<Any>(
            "BEGIN; INSERT INTO t (name, n) VALUES ('a', 1); \
             INSERT INTO t (name, n) VALUES ('b', NULL); COMMIT",
        ));
        match ran {
            Err(sqlx::Error::Database(e)) => {
                assert_eq!(e.kind(), sqlx::error::ErrorKind::NotNullViolation)
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("NOT NULL did not refuse"),
        }
        assert!(
            d.in_transaction(),
            "the COMMIT after the failure did not run"
        );
        d.plain("ROLLBACK").expect("rolls back");
        let rows = d
            .run(sqlx::query::<Any>("SELECT COUNT(*) AS c FROM t"))
            .expect("runs");
        assert_eq!(rows[0][0].try_get::<i64, _>("c").ok(), Some(0));
    }

    #[test]
    fn anonymous_parameters_are_counted_across_the_texts_statements() {
        let (_dir, mut d) = open();
        let query = sqlx::query::<Any>(
            "INSERT INTO t (name, n) VALUES (?, ?); SELECT name, n FROM t WHERE n = ?",
        )
        .bind("x")
        .bind(7i64)
        .bind(7i64);
        let each = d.run(query).expect("runs");
        assert_eq!(each[1].len(), 1, "the select's `?` is the third argument");
        assert_eq!(
            each[1][0].try_get::<String, _>("name").ok().as_deref(),
            Some("x")
        );
    }

    #[test]
    fn split_cuts_only_where_a_statement_ends() {
        assert_eq!(
            split("SELECT 1; SELECT ';'"),
            vec!["SELECT 1", "SELECT ';'"]
        );
        assert_eq!(split("BEGIN;  ; COMMIT;"), vec!["BEGIN", "COMMIT"]);
    }
}
