//! `GET /events`: a `change` event whenever some job changes state or a graph is added (the
//! queue's change counter, the one `push --wait` long-polls on), at most four a second.
//! Pages refetch themselves on it and patch what changed: one stream per tab whatever the
//! page, and no page state on the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lwr_server::AppState;

/// Changes closer together than this become one event.
const COALESCE: Duration = Duration::from_millis(250);

pub async fn stream(State(state): State<Arc<AppState>>) -> Response {
    let rx = state.queue.subscribe_changes();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        tokio::time::sleep(COALESCE).await;
        let seq = *rx.borrow_and_update();
        Some((
            Ok::<_, Infallible>(Event::default().event("change").data(seq.to_string())),
            rx,
        ))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
