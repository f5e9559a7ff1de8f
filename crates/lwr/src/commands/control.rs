//! `lwr cancel`, `lwr retrigger`, `lwr gc` and `lwr keep`: self-serve control of jobs.

use std::process::ExitCode;

use lwr_model::JobId;
use lwr_model::words::count;

use super::query::resolve_job;
use crate::cli::{CancelArgs, GcArgs, KeepArgs, RetriggerArgs};

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let (what, result) = match (args.graph, &args.job) {
        (Some(graph), _) => (format!("graph {graph}"), client.cancel_graph(graph).await?),
        (None, Some(job)) => {
            let id = resolve_job(&client, job).await?;
            (format!("job {id}"), client.cancel_job(id).await?)
        }
        (None, None) => anyhow::bail!("name a job, or a graph with --graph"),
    };
    outln!(
        "cancelled {what}: {}, {} (their nodes stop them within seconds)",
        count(result.jobs, "job", "jobs"),
        count(result.runs, "running run", "running runs")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn retrigger(args: RetriggerArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let id = resolve_job(&client, &args.job).await?;
    let result = client.retrigger(id, args.with_dependents).await?;
    let ids: Vec<String> = result.jobs.iter().map(JobId::to_string).collect();
    outln!("queued again: job {}", ids.join(", job "));
    Ok(ExitCode::SUCCESS)
}

pub async fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let req = lwr_model::api::GcRequest {
        dry_run: args.dry_run,
        keep_secs: args.older_than.map(|d| d.as_secs()),
    };
    let result = client.gc(&req).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = match result.dry_run {
        true => "would remove",
        false => "removed",
    };
    outln!(
        "{verb} {} ({}, {}, {}, {})",
        count(result.graphs, "graph", "graphs"),
        count(result.jobs, "job", "jobs"),
        count(result.runs, "run", "runs"),
        count(result.pushes, "push", "pushes"),
        count(result.artifacts, "artifact", "artifacts"),
    );
    if !result.graph_ids.is_empty() {
        let ids: Vec<String> = result.graph_ids.iter().map(|g| g.to_string()).collect();
        let more = match result.graphs > result.graph_ids.len() as u64 {
            true => " ...",
            false => "",
        };
        outln!("graphs: {}{more}", ids.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keep(args: KeepArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let keep = !args.off;
    let what = match (args.graph, &args.job) {
        (Some(graph), _) => {
            client.keep_graph(graph, keep).await?;
            format!("graph {graph}")
        }
        (None, Some(job)) => {
            let id = resolve_job(&client, job).await?;
            client.keep_job(id, keep).await?;
            format!("job {id} (and its graph)")
        }
        (None, None) => anyhow::bail!("name a job, or a graph with --graph"),
    };
    match keep {
        true => outln!("keeping {what}: retention leaves it"),
        false => outln!("{what} no longer kept: retention may remove it"),
    }
    Ok(ExitCode::SUCCESS)
}
