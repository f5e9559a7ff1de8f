//! The server's HTTP surface as other crates and tests see it: the router, and the OpenAPI
//! document the router serves. The routes themselves are in [`crate::routes`].

use std::sync::Arc;

use axum::Router;

use crate::AppState;
pub use crate::openapi::{openapi, openapi_string};
use crate::routes::{self, ApiDocument};

/// The `/v1` router, serving the OpenAPI document made once here.
pub fn router(state: Arc<AppState>) -> Router {
    routes::router(state, ApiDocument(openapi_string().into()))
}
