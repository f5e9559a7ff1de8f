//! `/jobs/{id}`: the spec, every run with its node, placement, times, exit code and reason,
//! the manifest with its artifacts, and the buttons for retrigger and cancel.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::ApiCall;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use lwr_model::api::RetriggerRequest;
use lwr_model::{JobId, JobSpec, RunId, RunState};
use lwr_server::AppState;
use maud::{Markup, html};

use crate::access::Viewer;
use crate::page::{WebResult, frame, post_button, state_badge};

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `GET /jobs/{id}`.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<JobId>,
) -> WebResult<Response> {
    let store = state.queue.store();
    let job = store.job(id).await?;
    let graph = job.info.graph_id;
    let names: HashMap<JobId, String> = store
        .job_cells(&[graph])
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    let dependents: Vec<(JobId, String)> = store
        .graph_edges(graph)
        .await?
        .into_iter()
        .filter(|(need, _)| *need == id)
        .filter_map(|(_, dep)| Some((dep, names.get(&dep)?.clone())))
        .collect();
    let last = job.run_history.last();
    let manifest = match last {
        Some(run) if run.state != RunState::Running => store.manifest(run.id).await.ok(),
        _ => None,
    };
    let terminal = job.info.state.is_terminal();
    let may_retrigger = terminal && viewer.may(Method::POST, "/jobs/{id}/retrigger");
    let may_cancel = !terminal && viewer.may(Method::POST, "/jobs/{id}/cancel");
    let spec = &job.spec;
    let title = format!("{} · job {id}", job.info.name);
    let body = html! {
        div.job-head data-live="job-head" {
            h1 data-job=(job.info.name) data-state=(job.info.state.as_str()) {
                (job.info.name) " " (state_badge(job.info.state))
            }
            p.meta {
                "job " (id) " of " a href={ "/graphs/" (graph) } { "graph " (graph) }
                @if let Some(node) = &job.info.node { " · on " (node) }
                " · " (job.info.runs) " runs"
                @if let Some(reason) = &job.info.reason { " · " span.reason { (reason) } }
            }
            div.actions {
                @if !job.run_history.is_empty() { a.button href={ "/jobs/" (id) "/log" } data-key="l" { "log" } }
                @if may_retrigger {
                    (post_button(&viewer, &format!("/jobs/{id}/retrigger"), "retrigger", &[("with_dependents", "false")]))
                    @if !dependents.is_empty() {
                        (post_button(&viewer, &format!("/jobs/{id}/retrigger"), "retrigger with dependents", &[("with_dependents", "true")]))
                    }
                }
                @if may_cancel { (post_button(&viewer, &format!("/jobs/{id}/cancel"), "cancel", &[])) }
            }
        }
        h2 { "Spec" }
        dl.spec {
            @if let Some(t) = &spec.title { dt { "title" } dd { (t) } }
            (what_runs(spec))
            dt { "needs" } dd {
                @if job.needs.is_empty() { "none" }
                @for need in &job.needs {
                    a.need href={ "/jobs/" (need) } { (names.get(need).map_or("?", String::as_str)) } " "
                }
            }
            dt { "needed by" } dd {
                @if dependents.is_empty() { "none" }
                @for (dep, name) in &dependents { a.need href={ "/jobs/" (dep) } { (name) } " " }
            }
            dt { "requirements" } dd {
                @if spec.node.is_empty() { "any node" } @else { code { (serde_json::to_string(&spec.node).unwrap_or_default()) } }
            }
            dt { "env" } dd {
                @if spec.env.is_empty() { "none" }
                // Names only: values may be secrets a page should not show.
                @for name in spec.env.keys() { code { (name) } " " }
            }
            dt { "retries, timeout" } dd { (spec.retries) " retries · " (spec.timeout_secs) " s" }
        }
        h2 { "Runs" }
        div data-live="runs" {
            @if job.run_history.is_empty() { p.empty { "Not run yet." } }
            @else {
                table.runs {
                    thead { tr { th { "#" } th { "state" } th { "node" } th { "placement" } th { "started" } th { "finished" } th { "exit" } th { "reason" } th { "log" } } }
                    tbody {
                        @for run in job.run_history.iter().rev() {
                            tr {
                                td { (run.number) }
                                td { span class={ "badge r-" (run.state.as_str()) } { (run.state.as_str()) } }
                                td { (run.node) }
                                td { (run.placement.as_deref().unwrap_or("")) }
                                td { (run.started_at) }
                                td { (run.finished_at.as_deref().unwrap_or("")) }
                                td { @if let Some(c) = run.exit_code { (c) } }
                                td { (run.reason.as_deref().unwrap_or("")) }
                                td { a href={ "/jobs/" (id) "/log?run=" (run.number) } { "log" } " " (size(run.log_size)) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(m) = &manifest {
            h2 { "Artifacts" }
            @if m.artifacts.is_empty() { p.empty { "None." } }
            @else {
                table.artifacts {
                    thead { tr { th { "name" } th { "kind" } th { "size" } th { "sha256" } } }
                    tbody {
                        @for a in &m.artifacts {
                            tr {
                                td { a href={ "/runs/" (last.map_or(0, |r| r.id.get())) "/artifacts/" (a.name) } { (a.name) } }
                                td { (a.kind) }
                                td { (size(a.size)) }
                                td { code.sha { (a.sha256) } }
                            }
                        }
                    }
                }
            }
            @for missing in &m.missing { p.error { "missing artifact " code { (missing.name) } } }
        }
    };
    Ok(frame(&title, &viewer, "job-page", body))
}

/// `POST /jobs/{id}/retrigger`: the API's retrigger.
pub async fn retrigger(
    api: ApiCall,
    Path(id): Path<JobId>,
    Form(form): Form<HashMap<String, String>>,
) -> WebResult<Response> {
    let with_dependents = form.get("with_dependents").is_some_and(|v| v == "true");
    api.ok(
        Method::POST,
        &format!("/v1/jobs/{id}/retrigger"),
        Some(&RetriggerRequest { with_dependents }),
    )
    .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `POST /jobs/{id}/cancel`: the API's cancel.
pub async fn cancel(api: ApiCall, Path(id): Path<JobId>) -> WebResult<Response> {
    api.ok::<()>(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `GET /runs/{id}/artifacts/{*name}`: the API's download, for a browser with a cookie.
pub async fn artifact(
    api: ApiCall,
    Path((run, name)): Path<(RunId, String)>,
) -> WebResult<Response> {
    let name: String = name
        .split('/')
        .map(|p| form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/");
    api.ok::<()>(
        Method::GET,
        &format!("/v1/runs/{run}/artifacts/{name}"),
        None,
    )
    .await
}

/// What the job runs: its command, or the Buildbot builder a bridge node starts for it
/// (a `buildbot:` job has no command of its own).
fn what_runs(spec: &JobSpec) -> Markup {
    match &spec.buildbot {
        Some(bb) => html! {
            dt { "Buildbot builder" } dd { code { (bb.builder) } }
            @if !bb.properties.is_empty() {
                dt { "build properties" } dd {
                    @for (name, value) in &bb.properties { code { (name) "=" (value) } " " }
                }
            }
        },
        None => html! { dt { "command" } dd { pre { (spec.run) } } },
    }
}

#[cfg(test)]
mod tests {
    use lwr_model::buildbot::BuildbotJob;

    fn spec(yml: &str) -> lwr_model::JobSpec {
        let graph = lwr_model::graph::parse(yml, "lwr.yml").expect("a valid lwr.yml");
        graph.jobs.into_iter().next().expect("one job")
    }

    #[test]
    fn a_job_shows_its_command_or_its_builder() {
        let plain =
            super::what_runs(&spec("version: 1\njobs:\n  a:\n    run: make check\n")).into_string();
        assert!(plain.contains("<pre>make check</pre>"), "{plain}");
        let bb = spec(
            "version: 1\njobs:\n  t:\n    buildbot: {builder: linux64-test, properties: {suite: mochitest}}\n",
        );
        assert!(
            matches!(&bb.buildbot, Some(BuildbotJob { builder, .. }) if builder == "linux64-test")
        );
        let shown = super::what_runs(&bb).into_string();
        assert!(shown.contains("<code>linux64-test</code>"), "{shown}");
        assert!(shown.contains("<code>suite=mochitest</code>"), "{shown}");
        assert!(!shown.contains("command"), "no empty command: {shown}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(super::size(512), "512 B");
        assert_eq!(super::size(1536), "1.5 KiB");
        assert_eq!(super::size(100 << 20), "100.0 MiB");
    }
}
