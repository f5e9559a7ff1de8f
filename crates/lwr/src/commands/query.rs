//! `lwr jobs`, `lwr nodes`: reading the server's state.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lwr_client::{Client, JobsQuery};
use lwr_model::{GraphId, JobId, JobState};

use crate::cli::{GraphRef, JobsArgs, NodesArgs};
use crate::output::{Table, duration, span, when};

pub async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let graph = match args.graph {
        Some(g) => Some(resolve_graph(&client, g).await?),
        None => None,
    };
    let mut query = JobsQuery {
        graph,
        states: args.state,
        name: args.name,
        limit: args.limit,
        cursor: args.all.then(|| "0".to_string()),
    };
    let mut list = client.jobs_matching(&query).await?;
    // --all: page through; each page continues where the one before ended, so jobs added
    // meanwhile come in later pages and none is listed twice.
    while let Some(next) = list.next_cursor.take().filter(|_| args.all) {
        query.cursor = Some(next);
        let page = client.jobs_matching(&query).await?;
        list.jobs.extend(page.jobs);
        list.next_cursor = page.next_cursor;
    }
    let bounded = !args.all && args.limit.is_none() && graph.is_none();
    if bounded
        && list.jobs.len() >= DEFAULT_JOBS
        && let Some(cut) = list.jobs.first().map(|j| j.graph_id)
    {
        // The server's newest jobs may begin inside a graph (or hold only part of one
        // bigger than the page): the recent graphs are shown whole, never a cut one.
        let whole = client
            .jobs_matching(&JobsQuery {
                graph: Some(cut),
                ..query.clone()
            })
            .await?;
        list.jobs.retain(|j| j.graph_id != cut);
        list.jobs.extend(whole.jobs);
        list.jobs.sort_by_key(|j| j.id);
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ">ID",
        ">GRAPH",
        "NAME",
        "STATE",
        "NODE",
        ">RUNS",
        "STARTED",
        ">DURATION",
        "REASON",
    ]);
    for j in &list.jobs {
        let took = match j.state {
            JobState::Pending => None,
            _ => span(j.started_at.as_deref(), j.finished_at.as_deref()),
        };
        table.row(vec![
            j.id.to_string(),
            j.graph_id.to_string(),
            j.name.clone(),
            j.state.as_str().into(),
            j.node.clone().unwrap_or_else(|| "-".into()),
            j.runs.to_string(),
            when(j.started_at.as_deref()),
            took.map(duration).unwrap_or_else(|| "-".into()),
            j.reason
                .clone()
                .or_else(|| j.placement.clone())
                .unwrap_or_default(),
        ]);
    }
    out!("{}", table.render());
    if bounded && list.jobs.len() >= DEFAULT_JOBS {
        eprintln!(
            "(the recent graphs, whole: about the newest {DEFAULT_JOBS} jobs; --all for every job, --graph ID for one graph)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the server lists without a graph, a limit or a cursor.
const DEFAULT_JOBS: usize = 1000;

/// A graph named by id or `latest` (the newest on the server).
pub async fn resolve_graph(client: &Client, graph: GraphRef) -> anyhow::Result<GraphId> {
    match graph {
        GraphRef::Id(id) => Ok(id),
        GraphRef::Latest => match client.graphs(1).await?.graphs.first() {
            Some(g) => Ok(g.id),
            None => bail!("the server has no graphs yet: push one with `lwr push`"),
        },
    }
}

/// A job named by id (`42`) or by graph and name (`3/build`).
pub async fn resolve_job(client: &Client, job: &str) -> anyhow::Result<JobId> {
    if let Ok(id) = job.parse::<JobId>() {
        return Ok(id);
    }
    let Some((graph, name)) = job.split_once('/') else {
        bail!("'{job}' is not a job: use a job id (42) or GRAPH/NAME (3/build)");
    };
    let graph: i64 = graph
        .parse()
        .with_context(|| format!("'{job}': the part before / must be a graph id"))?;
    if lwr_model::normalize_name(name).is_empty() {
        bail!("'{job}' names no job: give its name after the / (e.g. {graph}/build)");
    }
    Ok(client
        .job_by_name(GraphId(graph), &lwr_model::normalize_name(name))
        .await?
        .info
        .id)
}

pub async fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    if let Some(action) = args.action {
        return super::nodes::act(&client, action, args.json).await;
    }
    let list = client.nodes().await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "NAME", "STATE", ">RUNNING", ">SLOTS", "OS", "ARCH", "TAGS", "REASON",
    ]);
    for n in &list.nodes {
        let tags: Vec<String> = n
            .properties
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        table.row(vec![
            n.name.clone(),
            n.state.clone(),
            n.running.to_string(),
            n.slots.to_string(),
            n.properties.os.clone(),
            n.properties.arch.clone(),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
            n.state_reason.clone().unwrap_or_default(),
        ]);
    }
    out!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
