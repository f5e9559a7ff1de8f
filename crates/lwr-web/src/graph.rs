//! `/graphs/{id}`: every job of a graph in columns by its needs, the need edges in SVG,
//! state counts that filter, and the jobs a push left out with a trigger button.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::ApiCall;
use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lwr_model::api::{TriggerRequest, TriggerResult};
use lwr_model::{GraphId, JobState, PushId};
use lwr_server::AppState;
use maud::{PreEscaped, html};
use serde::Deserialize;

use crate::access::Viewer;
use crate::layout::{self, BOX_H, BOX_W};
use crate::page::{
    STATES, WebError, WebResult, frame, post_button, repo_name, run_time, short_rev, time_ago,
};

#[derive(Debug, Default, Deserialize)]
pub struct GraphQuery {
    #[serde(default)]
    state: Option<String>,
}

/// `GET /graphs/{id}`.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<GraphId>,
    Query(q): Query<GraphQuery>,
) -> WebResult<Response> {
    let store = state.queue.store();
    let info = store.graph(id).await?;
    let jobs = store.job_cells(&[id]).await?;
    let edges = store.graph_edges(id).await?;
    let push = store
        .graph_summaries(&lwr_store::GraphFilter {
            before: Some(GraphId::from(id.get() + 1)),
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_iter()
        .find(|g| g.id == id);
    let push_id = push.as_ref().and_then(|p| p.push);
    let left_out = match push_id {
        // A push whose decision job has not run yet has nothing left out.
        Some(_) => store
            .graph_spec(id)
            .await
            .map(|s| s.left_out)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let only = q.state.as_deref().and_then(JobState::parse);
    let now = lwr_store::now_ms();

    let ids: Vec<i64> = jobs.iter().map(|j| j.id.get()).collect();
    let index = layout::index_of(&ids);
    let index_edges: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(need, job)| Some((*index.get(&need.get())?, *index.get(&job.get())?)))
        .collect();
    let laid = layout::layout(jobs.len(), &index_edges);

    // Built by hand: a 1,000-job graph has a few thousand elements.
    let mut svg = String::with_capacity(index_edges.len() * 90);
    for &(need, job) in &index_edges {
        let d = layout::edge_path(laid.places[need], laid.places[job]);
        svg.push_str(&format!(
            "<path data-edge=\"{}->{}\" d=\"{d}\"/>",
            maud::html!((jobs[need].name)).into_string(),
            maud::html!((jobs[job].name)).into_string(),
        ));
    }
    let may_trigger = viewer.may(Method::POST, "/pushes/{id}/trigger");
    let may_cancel = viewer.may(Method::POST, "/graphs/{id}/cancel");
    let title = format!("graph {id}");
    let body = html! {
        div.graph-head {
            h1 {
                "Graph " (id)
                @if let Some(repo) = &info.repository { " · " span title=(repo) { (repo_name(repo)) } }
                @if let Some(branch) = &info.branch { " · " span.branch { (branch) } }
                @if let Some(rev) = &info.revision { " · " code title=(rev) { (short_rev(rev)) } }
            }
            p.meta {
                @if let Some(subject) = &info.subject { span.subject { (subject) } " " }
                @if let Some(author) = &info.author { span.author { (author) } " " }
                @if let Some(p) = &push { (time_ago(now, p.created_at)) }
                @if let Some(pid) = push_id { " · push " (pid) }
            }
            @if may_cancel && !info.finished {
                (post_button(&viewer, &format!("/graphs/{id}/cancel"), "cancel graph", &[]))
            }
        }
        div.counts data-live="counts" {
            a class={ "count" @if only.is_none() { " on" } } href={ "/graphs/" (id) } data-filter="" { "all " (info.counts.total()) }
            @for s in STATES {
                @let n = count(&info.counts, s);
                @if n > 0 {
                    a class={ "count s-" (s.as_str()) @if only == Some(s) { " on" } }
                        href={ "/graphs/" (id) "?state=" (s.as_str()) } data-filter=(s.as_str()) {
                        (s.as_str()) " " (n)
                    }
                }
            }
        }
        @if !left_out.is_empty() {
            details.left-out {
                summary { (left_out.len()) " jobs left out of this push" }
                ul {
                    @for l in &left_out {
                        li {
                            code { (l.name) } " — " (l.reason) " "
                            @if may_trigger {
                                @if let Some(pid) = push_id {
                                    (post_button(&viewer, &format!("/pushes/{pid}/trigger"), "trigger", &[("job", l.name.as_str())]))
                                }
                            }
                        }
                    }
                }
            }
        }
        div.graph-scroll {
            div.graph #graph data-live="graph" data-jobs=(jobs.len())
                data-only=[only.map(|s| s.as_str())]
                style={ "width:" (laid.width) "px;height:" (laid.height) "px" } {
                svg.edges width=(laid.width) height=(laid.height) { (PreEscaped(svg)) }
                @for (i, job) in jobs.iter().enumerate() {
                    @let p = laid.places[i];
                    @let dim = only.is_some_and(|s| s != job.state);
                    a class={ "job s-" (job.state.as_str()) @if dim { " dim" } }
                        id={ "job-" (job.id) } href={ "/jobs/" (job.id) }
                        data-job=(job.name) data-state=(job.state.as_str())
                        style={ "left:" (p.x) "px;top:" (p.y) "px;width:" (BOX_W) "px;height:" (BOX_H) "px" } {
                        span.name { (job.name) }
                        span.detail {
                            (job.state.as_str())
                            @if let Some(t) = run_time(job.started_at, job.finished_at, now) { " · " (t) }
                            @if let Some(node) = &job.node { " · " (node) }
                        }
                    }
                }
            }
        }
        @if jobs.is_empty() { p.empty { "This graph has no jobs yet." } }
    };
    Ok(frame(&title, &viewer, "graph-page", body))
}

fn count(c: &lwr_model::api::StateCounts, s: JobState) -> u64 {
    match s {
        JobState::Pending => c.pending,
        JobState::Running => c.running,
        JobState::Succeeded => c.succeeded,
        JobState::Failed => c.failed,
        JobState::Exception => c.exception,
        JobState::Blocked => c.blocked,
        JobState::Cancelled => c.cancelled,
    }
}

/// `POST /graphs/{id}/cancel`: the API's cancel.
pub async fn cancel(api: ApiCall, Path(id): Path<GraphId>) -> WebResult<Response> {
    api.ok::<()>(Method::POST, &format!("/v1/graphs/{id}/cancel"), None)
        .await?;
    Ok(Redirect::to(&format!("/graphs/{id}")).into_response())
}

/// `POST /pushes/{id}/trigger`: the API's trigger; goes to the job it added.
pub async fn trigger(
    api: ApiCall,
    Path(id): Path<PushId>,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let Some(job) = form.get("job").cloned() else {
        return Err(WebError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "which job? (job)",
        ));
    };
    let resp = api
        .ok(
            Method::POST,
            &format!("/v1/pushes/{id}/trigger"),
            Some(&TriggerRequest { job }),
        )
        .await?;
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let to = match serde_json::from_slice::<TriggerResult>(&bytes)
        .ok()
        .and_then(|r| r.jobs.first().copied())
    {
        Some(job) => format!("/jobs/{job}"),
        None => format!("/pushes/{id}"),
    };
    Ok(Redirect::to(&to).into_response())
}
