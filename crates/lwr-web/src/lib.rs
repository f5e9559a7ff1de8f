//! The web app: pushes, graphs, jobs, live logs, nodes and repositories in the browser,
//! served by `lwr server` and `lwr dev` at `/` beside `/v1`.
//!
//! Its one interface is [`router`]. Pages are rendered on the server (maud) and read with no
//! script at all; the committed script (`assets/app.js`) adds live updates (Server-Sent
//! Events), the graph's highlighting, the log viewer and the keyboard shortcuts. Every read
//! goes through the store and every change through the `/v1` router itself, as the session's token ([`api`]), so
//! the app has no rules of its own; [`access`] lets a token do here exactly what it may do
//! through the API. docs/web.md tells the whole story.

pub mod access;
pub mod ansi;
mod api;
mod assets;
mod events;
mod graph;
mod job;
pub mod layout;
mod log;
mod login;
mod page;
mod pool;
mod pushes;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::{Extension, Router};
use lwr_server::AppState;

pub use log::{count_lines, tail_start};

/// The app's routes, for the server to merge beside `/v1` (see `lwr_server::Config::web`).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pushes::page))
        .route("/events", get(events::stream))
        .route("/graphs/{id}", get(graph::page))
        .route("/graphs/{id}/cancel", post(graph::cancel))
        .route("/pushes/{id}/trigger", post(graph::trigger))
        .route("/jobs/{id}", get(job::page))
        .route("/jobs/{id}/retrigger", post(job::retrigger))
        .route("/jobs/{id}/cancel", post(job::cancel))
        .route("/jobs/{id}/log", get(log::page))
        .route("/jobs/{id}/log/raw", get(log::raw))
        .route("/jobs/{id}/log/part", get(log::part))
        .route("/jobs/{id}/log/events", get(log::events))
        .route("/jobs/{id}/log/live", post(log::live))
        .route("/runs/{id}/artifacts/{*name}", get(job::artifact))
        .route("/nodes", get(pool::nodes))
        .route("/nodes/{id}/state", post(pool::node_state))
        .route("/nodes/{id}/labels", post(pool::node_labels))
        .route("/repos", get(pool::repos).post(pool::add_repo))
        .route("/repos/{id}/remove", post(pool::remove_repo))
        .route("/login", get(login::page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/static/{file}", get(assets::serve))
        // After routing, so the guard sees the matched route and knows its scope.
        .route_layer(middleware::from_fn_with_state(state.clone(), access::guard))
        .layer(Extension(api::Api(lwr_server::router(state.clone()))))
        .with_state(state)
}
