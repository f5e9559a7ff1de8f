//! Small helpers to read typed columns with errors that name the column.

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, StoreError};

pub(crate) fn col<'r, T>(row: &'r AnyRow, name: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name)
        .map_err(|source| StoreError::Db { op: name, source })
}

/// A column holding one of the model's typed integers (an id, an instant, a span): sqlx
/// cannot decode the model's types itself, since the model has no sqlx.
pub(crate) fn typed<T: From<i64>>(row: &AnyRow, name: &'static str) -> Result<T> {
    col::<i64>(row, name).map(T::from)
}

/// [`typed`] for a nullable column.
pub(crate) fn typed_opt<T: From<i64>>(row: &AnyRow, name: &'static str) -> Result<Option<T>> {
    col::<Option<i64>>(row, name).map(|v| v.map(T::from))
}

pub(crate) fn json<T: DeserializeOwned>(text: &str, what: &'static str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Runs CPU-heavy work (decoding a large listing) on the blocking pool, so that the async
/// workers keep answering small requests meanwhile.
pub(crate) async fn off_workers<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(StoreError::Interrupted {
            what,
            detail: e.to_string(),
        })
    })
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

pub(crate) fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}
