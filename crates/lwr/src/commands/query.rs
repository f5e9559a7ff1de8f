//! `lwr jobs`, `lwr nodes`: reading the server's state.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lwr_client::Client;
use lwr_model::{GraphId, JobId};

use crate::cli::{JobsArgs, NodesArgs};

pub async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let list = client.jobs(args.graph).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "{:>6} {:>5}  {:<30} {:<10} {:<12} {:>4}  REASON\n",
        "ID", "GRAPH", "NAME", "STATE", "NODE", "RUNS"
    );
    for j in &list.jobs {
        out.push_str(&format!(
            "{:>6} {:>5}  {:<30} {:<10} {:<12} {:>4}  {}\n",
            j.id,
            j.graph_id,
            j.name,
            j.state.as_str(),
            j.node.as_deref().unwrap_or("-"),
            j.runs,
            j.reason.as_deref().or(j.placement.as_deref()).unwrap_or("")
        ));
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
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
    outln!(
        "{:<16} {:<11} {:>7} {:>5}  {:<8} {:<8} TAGS",
        "NAME",
        "STATE",
        "RUNNING",
        "SLOTS",
        "OS",
        "ARCH"
    );
    for n in &list.nodes {
        let tags: Vec<String> = n
            .properties
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outln!(
            "{:<16} {:<11} {:>7} {:>5}  {:<8} {:<8} {}{}",
            n.name,
            n.state,
            n.running,
            n.slots,
            n.properties.os,
            n.properties.arch,
            tags.join(","),
            n.state_reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
