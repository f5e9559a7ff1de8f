//! `/nodes` (the pool: state, properties, slots, what each runs, health; disable, enable,
//! quarantine, reboot, label) and `/repos` (polled repositories; add, remove). Every action
//! is the `/v1` request of the same change (see [`crate::api`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::ApiCall;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lwr_model::api::{AddRepo, LabelNode, RepoList, SetNodeState};
use lwr_model::pool::NodeState;
use lwr_server::AppState;
use maud::html;

use crate::access::Viewer;
use crate::page::{WebError, WebResult, frame, post_button};

/// `GET /nodes`.
pub async fn nodes(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
) -> WebResult<Response> {
    let store = state.queue.store();
    let now = lwr_store::now_ms();
    let nodes = store.nodes(now).await?;
    let mut running: HashMap<String, Vec<(lwr_model::JobId, String)>> = HashMap::new();
    for job in store.running_jobs().await? {
        if let Some(node) = job.node {
            running.entry(node).or_default().push((job.id, job.name));
        }
    }
    let may_state = viewer.may(Method::POST, "/nodes/{id}/state");
    let may_label = viewer.may(Method::POST, "/nodes/{id}/labels");
    let body = html! {
        h1 { "Nodes" }
        @if nodes.is_empty() { p.empty { "No node has registered. " code { "lwr node --server URL" } " starts one." } }
        table.nodes data-live="nodes" {
            thead { tr { th { "node" } th { "state" } th { "properties and tags" } th { "slots" } th { "running" } th { "health" } th { "last seen" } @if may_state || may_label { th { "actions" } } } }
            tbody {
                @for node in &nodes {
                    @let path = format!("/nodes/{}", node.id);
                    tr data-node=(node.name) data-state=(node.state) {
                        td { b { (node.name) } }
                        td { span class={ "badge n-" (node.state) } { (node.state) }
                             @if let Some(r) = &node.state_reason { br; small { (r) } } }
                        td.props {
                            code { "os=" (node.properties.os) } " " code { "arch=" (node.properties.arch) } " "
                            code { "cores=" (node.properties.cores) } " " code { "memory_mb=" (node.properties.memory_mb) } " "
                            @for (k, v) in &node.properties.tags { code.tag { (k) "=" (v) } " " }
                        }
                        td { (node.running) " / " (node.slots) }
                        td {
                            @for (id, name) in running.get(&node.name).map(Vec::as_slice).unwrap_or(&[]) {
                                a href={ "/jobs/" (id) } data-job=(name) data-state="running" { (name) } " "
                            }
                        }
                        td { @if node.infra_errors > 0 { span.error { (node.infra_errors) " infrastructure errors in a row" } } @else { "ok" } }
                        td { time datetime=(node.last_seen) { (node.last_seen) } }
                        @if may_state || may_label {
                            td.actions {
                                @if may_state {
                                    @for (label, to) in [("enable", "enabled"), ("disable", "disabled"), ("quarantine", "quarantined"), ("reboot", "draining")] {
                                        (post_button(&viewer, &format!("{path}/state"), label, &[("state", to)]))
                                    }
                                }
                                @if may_label {
                                    form.inline method="post" action={ (path) "/labels" } {
                                        (crate::page::csrf(&viewer))
                                        input name="label" placeholder="tag=value" size="12" required;
                                        button type="submit" { "label" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(frame("nodes", &viewer, "nodes-page", body))
}

/// `POST /nodes/{id}/state`.
pub async fn node_state(
    api: ApiCall,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let to = form.get("state").map(String::as_str).unwrap_or("");
    let Some(to) = NodeState::ALL.into_iter().find(|s| s.as_str() == to) else {
        return Err(WebError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("state must be one of enabled, disabled, quarantined, draining (not '{to}')"),
        ));
    };
    let reason = form
        .get("reason")
        .filter(|r| !r.trim().is_empty())
        .cloned()
        .or_else(|| Some("from the web app".into()))
        .filter(|_| to != NodeState::Enabled);
    let path: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    api.ok(
        Method::POST,
        &format!("/v1/nodes/{path}/state"),
        Some(&SetNodeState {
            state: to,
            reason,
            reimage: false,
        }),
    )
    .await?;
    Ok(Redirect::to("/nodes").into_response())
}

/// `POST /nodes/{id}/labels`: `label=KEY=VALUE` (or `KEY`, meaning `KEY=true`, as the CLI).
pub async fn node_labels(
    api: ApiCall,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let text = form.get("label").map(|l| l.trim()).unwrap_or("");
    let (k, v) = text.split_once('=').unwrap_or((text, "true"));
    let labels = BTreeMap::from([(k.trim().to_string(), v.trim().to_string())]);
    let path: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    api.ok(
        Method::POST,
        &format!("/v1/nodes/{path}/labels"),
        Some(&LabelNode { labels }),
    )
    .await?;
    Ok(Redirect::to("/nodes").into_response())
}

/// `GET /repos`.
pub async fn repos(api: ApiCall, Extension(viewer): Extension<Viewer>) -> WebResult<Response> {
    let repos = api.json::<RepoList>("/v1/repos").await?.repos;
    let may_add = viewer.may(Method::POST, "/repos");
    let may_remove = viewer.may(Method::POST, "/repos/{id}/remove");
    let body = html! {
        h1 { "Repositories" }
        @if repos.is_empty() { p.empty { "No repository is polled." } }
        table.repos {
            thead { tr { th { "url" } th { "branches" } th { "every" } th { "state" } th { "last error" } th { "next try" } th { "last poll" } th { "pushes" } @if may_remove { th {} } } }
            tbody {
                @for r in &repos {
                    tr data-repo=(r.url) data-state=(r.state) {
                        td { a href={ "/?repo=" (form_urlencoded::byte_serialize(r.url.as_bytes()).collect::<String>()) } { (r.url) } }
                        td { @if r.branches.is_empty() { "default" } @else { (r.branches.join(", ")) } }
                        td { (r.every_secs) " s" }
                        td { span class={ "badge p-" (r.state) } { (r.state) } @if r.failures > 0 { " (" (r.failures) " failures)" } }
                        td { @if let Some(e) = &r.error { span.error { (e) } } }
                        td { (r.retry_at.as_deref().unwrap_or("")) }
                        td { (r.polled_at.as_deref().unwrap_or("")) }
                        td { (r.pushes) }
                        @if may_remove {
                            td { (post_button(&viewer, &format!("/repos/{}/remove", r.id), "remove", &[])) }
                        }
                    }
                }
            }
        }
        @if may_add {
            h2 { "Poll a repository" }
            form.add-repo method="post" action="/repos" {
                (crate::page::csrf(&viewer))
                label { "URL or path " input name="url" required size="40"; }
                label { "branches " input name="branches" placeholder="main, release/*" size="20"; }
                label { "every " input name="every_secs" type="number" min="1" placeholder="30" size="5"; " s" }
                button type="submit" { "add" }
            }
        }
    };
    Ok(frame("repos", &viewer, "repos-page", body))
}

/// `POST /repos`.
pub async fn add_repo(
    api: ApiCall,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let url = form
        .get("url")
        .map(|u| u.trim().to_string())
        .unwrap_or_default();
    let branches = form
        .get("branches")
        .map(|b| {
            b.split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let every_secs = match form
        .get("every_secs")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            WebError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("every_secs: '{s}' is not a number of seconds"),
            )
        })?),
        None => None,
    };
    api.ok(
        Method::POST,
        "/v1/repos",
        Some(&AddRepo {
            url,
            branches,
            every_secs,
        }),
    )
    .await?;
    Ok(Redirect::to("/repos").into_response())
}

/// `POST /repos/{id}/remove`.
pub async fn remove_repo(api: ApiCall, Path(id): Path<i64>) -> WebResult<Response> {
    api.ok::<()>(Method::DELETE, &format!("/v1/repos/{id}"), None)
        .await?;
    Ok(Redirect::to("/repos").into_response())
}
