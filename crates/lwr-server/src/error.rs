//! API errors: every error answer is a status and a JSON body naming the problem.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lwr_model::api::ErrorBody;
use lwr_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds after which the request may succeed (`Retry-After`), for a 503 of a server
    /// that is busy rather than broken.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    /// The same error, saying when to try again.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn field(status: StatusCode, field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                field: Some(field.into()),
            },
            retry_after: None,
        }
    }

    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
}

/// True when an I/O error means the disk (or the quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122)) // ENOSPC, EDQUOT
}

impl ApiError {
    /// A storage failure while keeping `what`: 507 naming the store when its disk is full
    /// (the uploader may try again once there is room), 500 otherwise.
    pub fn storage(store: &str, what: &str, e: &std::io::Error) -> ApiError {
        if is_disk_full(e) {
            tracing::error!("{store} is full: cannot store {what}: {e}");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the server's {store} is full: cannot store {what} ({e})"),
            )
        } else {
            tracing::error!("{store}: cannot store {what}: {e}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the server's {store} cannot store {what}: {e}"),
            )
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match &err {
            StoreError::NotFound { .. } | StoreError::NoRun { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, err.to_string())
            }
            StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            StoreError::Invalid { field, .. } => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, err.to_string())
            }
            StoreError::InvalidGraph(e) => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "graph", e.to_string())
            }
            _ if err.is_disk_full() => {
                tracing::error!("the database's disk is full: {err}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "the server's database is full (no space left on its disk); nothing \
                         was changed: try again once there is room ({err})"
                    ),
                )
            }
            _ => {
                tracing::error!("{err}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
