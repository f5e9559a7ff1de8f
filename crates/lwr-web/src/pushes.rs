//! `/`: pushes (graphs), newest first, each with its jobs as a row of symbols coloured by
//! state. Filters live in the query string, so a filtered view can be shared; a page holds
//! [`PAGE`] pushes and links to the older ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use lwr_model::api::StateCounts;
use lwr_model::{GraphId, JobId, JobState, Millis};
use lwr_server::AppState;
use lwr_store::{GraphFilter, GraphSummary, JobCell};
use maud::{Markup, html};
use serde::Deserialize;

use crate::access::Viewer;
use crate::page::{STATES, WebResult, frame, repo_name, short_rev, time_ago};

/// Pushes on one page.
pub const PAGE: u32 = 30;
/// Jobs sharing a name prefix fold into one group from this many on.
const GROUP_FROM: usize = 3;

#[derive(Debug, Default, Deserialize)]
pub struct PushQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    before: Option<GraphId>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl PushQuery {
    fn filter(&self) -> GraphFilter {
        GraphFilter {
            before: self.before,
            repository: nonempty(&self.repo),
            branch: nonempty(&self.branch),
            state: self.state.as_deref().and_then(JobState::parse),
            job: nonempty(&self.job),
            limit: PAGE,
        }
    }

    /// The query string of this view with `before` replaced.
    fn with_before(&self, before: Option<GraphId>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("repo", &self.repo),
            ("branch", &self.branch),
            ("job", &self.job),
        ] {
            if let Some(v) = nonempty(v) {
                q.append_pair(k, &v);
            }
        }
        if let Some(b) = before {
            q.append_pair("before", &b.to_string());
        }
        let q = q.finish();
        if q.is_empty() {
            "/".into()
        } else {
            format!("/?{q}")
        }
    }
}

/// `test-1` → `t1`, `build` → `b`: short enough for a row of hundreds.
pub fn symbol(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                p.to_string()
            } else {
                p.chars().next().map(String::from).unwrap_or_default()
            }
        })
        .collect()
}

/// The group a job folds into: the name before its last `-`, when enough jobs share it.
fn group_key<'a>(name: &'a str, sizes: &HashMap<&str, usize>) -> Option<&'a str> {
    let (prefix, _) = name.rsplit_once('-')?;
    (sizes.get(prefix).copied().unwrap_or(0) >= GROUP_FROM).then_some(prefix)
}

fn failed(state: JobState) -> bool {
    matches!(state, JobState::Failed | JobState::Exception)
}

/// The state a group shows: the worst of its jobs.
fn worst(jobs: &[&JobCell]) -> JobState {
    STATES
        .into_iter()
        .find(|s| jobs.iter().any(|j| j.state == *s))
        .unwrap_or(JobState::Succeeded)
}

fn job_symbol(job: &JobCell) -> Markup {
    html! {
        a class={ "sym s-" (job.state.as_str()) } href={ "/jobs/" (job.id) }
            data-job=(job.name) data-state=(job.state.as_str()) title={ (job.name) " · " (job.state.as_str()) } {
            (symbol(&job.name))
        }
    }
}

/// The job symbols of one push: groups folded, failures always shown.
fn symbols(jobs: &[&JobCell], only: Option<JobState>) -> Markup {
    let mut sizes: HashMap<&str, usize> = HashMap::new();
    for job in jobs {
        if let Some((prefix, _)) = job.name.rsplit_once('-') {
            *sizes.entry(prefix).or_default() += 1;
        }
    }
    // Groups in order of their first job.
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&JobCell>> = BTreeMap::new();
    let mut singles: HashMap<JobId, &JobCell> = HashMap::new();
    for job in jobs {
        let shown = only.is_none_or(|s| job.state == s) || failed(job.state);
        if !shown {
            continue;
        }
        match group_key(&job.name, &sizes) {
            Some(key) => {
                if !groups.contains_key(key) {
                    order.push(Some(key));
                }
                groups.entry(key).or_default().push(job);
            }
            None => {
                order.push(None);
                singles.insert(job.id, job);
            }
        }
    }
    let mut singles_in_order = jobs.iter().filter(|j| singles.contains_key(&j.id));
    html! {
        @for slot in &order {
            @match slot {
                None => @if let Some(job) = singles_in_order.next() { (job_symbol(job)) },
                Some(key) => {
                    @let members = &groups[key];
                    @let state = worst(members);
                    // Failed members stay outside the fold: never hidden.
                    @for job in members.iter().filter(|j| failed(j.state)) { (job_symbol(job)) }
                    @let rest: Vec<&&JobCell> = members.iter().filter(|j| !failed(j.state)).collect();
                    @if !rest.is_empty() {
                        details.grp {
                            summary class={ "sym s-" (state.as_str()) } title={ (key) ": " (members.len()) " jobs" } {
                                (key) " " (rest.len())
                            }
                            @for job in rest { (job_symbol(job)) }
                        }
                    }
                }
            }
        }
    }
}

fn counts_of(jobs: &[&JobCell]) -> StateCounts {
    let mut counts = StateCounts::default();
    for job in jobs {
        counts.add(job.state, 1);
    }
    counts
}

/// `85% - 3 running`.
pub fn progress(counts: &StateCounts) -> String {
    let total = counts.total();
    if total == 0 {
        return "no jobs yet".into();
    }
    let done = total - counts.pending - counts.running;
    let pct = done * 100 / total;
    if counts.running > 0 {
        format!("{pct}% - {} running", counts.running)
    } else if counts.pending > 0 {
        format!("{pct}% - {} pending", counts.pending)
    } else {
        format!("{pct}%")
    }
}

fn push_row(g: &GraphSummary, jobs: &[&JobCell], only: Option<JobState>, now: Millis) -> Markup {
    let counts = counts_of(jobs);
    let state = if counts.failed + counts.exception > 0 {
        "failed"
    } else if !counts.finished() {
        "running"
    } else {
        "succeeded"
    };
    html! {
        section.push id={ "push-" (g.id) } data-graph=(g.id) data-state=(state) {
            div.push-head {
                a.push-id href={ "/graphs/" (g.id) } { "#" (g.id) }
                @if let Some(repo) = &g.repository {
                    a.repo href={ "/?repo=" (form_urlencoded::byte_serialize(repo.as_bytes()).collect::<String>()) } title=(repo) { (repo_name(repo)) }
                }
                @if let Some(branch) = &g.branch {
                    span.branch { (branch) }
                }
                @if let Some(rev) = &g.revision { code.rev title=(rev) { (short_rev(rev)) } }
                @if let Some(subject) = &g.subject { span.subject { (subject) } }
                @if let Some(author) = &g.author { span.author { (author) } }
                span.age { (time_ago(now, g.created_at)) }
                span.progress { (progress(&counts)) }
            }
            div.syms { (symbols(jobs, only)) }
        }
    }
}

/// `GET /`.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<PushQuery>,
) -> WebResult<Response> {
    let store = state.queue.store();
    let filter = q.filter();
    let graphs = store.graph_summaries(&filter).await?;
    let ids: Vec<GraphId> = graphs.iter().map(|g| g.id).collect();
    let cells = store.job_cells(&ids).await?;
    let mut by_graph: HashMap<GraphId, Vec<&JobCell>> = HashMap::new();
    for cell in &cells {
        by_graph.entry(cell.graph_id).or_default().push(cell);
    }
    let now = lwr_store::now_ms();
    let more = graphs.len() as u32 == PAGE;
    let body = html! {
        form.filters method="get" action="/" {
            label { "state "
                select name="state" {
                    option value="" { "any" }
                    @for s in crate::page::STATES {
                        option value=(s.as_str()) selected[filter.state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "repository " input name="repo" value=[filter.repository.as_deref()] placeholder="path or URL"; }
            label { "branch " input name="branch" value=[filter.branch.as_deref()] size="12"; }
            label { "job " input name="job" value=[filter.job.as_deref()] placeholder="name contains" size="14"; }
            button type="submit" { "filter" }
            @if q.with_before(None) != "/" { a href="/" { "clear" } }
        }
        div #pushes data-live="pushes" data-refresh=[q.before.is_none().then_some("1")] {
            @if graphs.is_empty() {
                p.empty { "No pushes" @if q.with_before(None) != "/" { " match these filters" } ". " code { "lwr push" } " submits one." }
            }
            @for g in &graphs {
                (push_row(g, by_graph.get(&g.id).map(Vec::as_slice).unwrap_or(&[]), filter.state, now))
            }
        }
        nav.pager {
            @if q.before.is_some() { a href=(q.with_before(None)) { "← newest" } }
            @if more { @if let Some(last) = ids.last() { a href=(q.with_before(Some(*last))) { "older →" } } }
        }
    };
    Ok(frame("pushes", &viewer, "pushes", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: i64, name: &str, state: JobState) -> JobCell {
        JobCell {
            id: JobId(id),
            graph_id: GraphId(1),
            name: name.into(),
            state,
            node: None,
            runs: 1,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn symbols_are_short() {
        assert_eq!(symbol("build"), "b");
        assert_eq!(symbol("test-12"), "t12");
        assert_eq!(symbol("unit-tests-linux"), "utl");
    }

    #[test]
    fn progress_says_how_far_and_what_runs() {
        let mut c = StateCounts {
            succeeded: 17,
            running: 3,
            ..Default::default()
        };
        assert_eq!(progress(&c), "85% - 3 running");
        c.running = 0;
        assert_eq!(progress(&c), "100%");
        assert_eq!(progress(&StateCounts::default()), "no jobs yet");
    }

    #[test]
    fn a_failed_job_stays_visible_in_a_folded_group() {
        let jobs = [
            cell(1, "build", JobState::Succeeded),
            cell(2, "test-1", JobState::Succeeded),
            cell(3, "test-2", JobState::Failed),
            cell(4, "test-3", JobState::Running),
        ];
        let refs: Vec<&JobCell> = jobs.iter().collect();
        let html = symbols(&refs, None).into_string();
        let fold = html.find("<details").expect("the test jobs fold");
        let failed = html.find("data-job=\"test-2\"").expect("test-2 shown");
        assert!(failed < fold, "the failed job is outside the fold: {html}");
        assert_eq!(html.matches("data-job=\"test-2\"").count(), 1);
        assert!(html.contains("data-job=\"test-3\""), "{html}");
        assert!(
            html.contains("class=\"sym s-failed\""),
            "the group shows its worst state"
        );
    }

    #[test]
    fn a_state_filter_keeps_failures() {
        let jobs = [
            cell(1, "build", JobState::Succeeded),
            cell(2, "lint", JobState::Failed),
            cell(3, "docs", JobState::Running),
        ];
        let refs: Vec<&JobCell> = jobs.iter().collect();
        let html = symbols(&refs, Some(JobState::Running)).into_string();
        assert!(html.contains("data-job=\"docs\"") && html.contains("data-job=\"lint\""));
        assert!(!html.contains("data-job=\"build\""));
    }

    #[test]
    fn filters_stay_in_the_query_string() {
        let q = PushQuery {
            state: Some("failed".into()),
            repo: Some("/r a".into()),
            job: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(
            q.with_before(Some(GraphId(40))),
            "/?state=failed&repo=%2Fr+a&before=40"
        );
        assert_eq!(PushQuery::default().with_before(None), "/");
    }
}
