//! `lwr cancel` and `lwr retrigger`: self-serve control of jobs.

use std::process::ExitCode;

use lwr_model::JobId;
use lwr_model::words::count;

use super::query::resolve_job;
use crate::cli::{CancelArgs, RetriggerArgs};

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
