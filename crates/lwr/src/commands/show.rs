//! `lwr show JOB`: one job, all of it: spec, runs with their placement, the latest run's
//! manifest and the end of its log.

use std::process::ExitCode;

use lwr_client::Client;
use lwr_model::api::JobDetail;
use lwr_model::{JobState, RunState};

use crate::cli::ShowArgs;
use crate::commands::query::resolve_job;
use crate::output::{Table, duration, span, when};

pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let id = resolve_job(&client, &args.job).await?;
    let job = client.job(id).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(ExitCode::SUCCESS);
    }
    let info = &job.info;
    outln!(
        "job {} {} (graph {}): {}",
        info.id,
        info.name,
        info.graph_id,
        info.state
    );
    if let Some(why) = info.cannot_start.as_ref().or(info.reason.as_ref()) {
        outln!("  why:       {why}");
    }
    spec(&job);
    runs(&job);
    manifest(&client, &job).await;
    log_tail(&client, &job, args.tail).await;
    Ok(ExitCode::SUCCESS)
}

fn spec(job: &JobDetail) {
    let s = &job.spec;
    outln!("  run:       {}", s.run);
    if !s.needs.is_empty() {
        outln!("  needs:     {}", s.needs.join(", "));
    }
    if !s.node.is_empty() {
        outln!("  node:      {}", s.node.describe());
    }
    outln!(
        "  retries:   {}   timeout: {}",
        s.retries,
        duration(std::time::Duration::from_secs(s.timeout_secs))
    );
    for a in &s.artifacts {
        outln!(
            "  artifact:  {} ({}, {}{})",
            a.name,
            a.kind,
            a.path,
            if a.optional { ", optional" } else { "" }
        );
    }
    for (k, v) in &s.env {
        outln!("  env:       {k}={v}");
    }
}

fn runs(job: &JobDetail) {
    if job.run_history.is_empty() {
        outln!("\nno runs yet");
        return;
    }
    outln!();
    let mut table = Table::new(&[
        ">RUN",
        "STATE",
        "NODE",
        "STARTED",
        ">DURATION",
        ">EXIT",
        "REASON",
        "PLACEMENT",
    ]);
    for r in &job.run_history {
        table.row(vec![
            r.number.to_string(),
            r.state.as_str().into(),
            r.node.clone(),
            when(Some(&r.started_at)),
            span(Some(&r.started_at), r.finished_at.as_deref())
                .map(duration)
                .unwrap_or_else(|| "-".into()),
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.reason.clone().unwrap_or_else(|| "-".into()),
            r.placement.clone().unwrap_or_default(),
        ]);
    }
    out!("{}", table.render());
}

/// The latest run's artifacts, from its manifest (once the run ended).
async fn manifest(client: &Client, job: &JobDetail) {
    let Some(run) = job.run_history.last() else {
        return;
    };
    if run.state == RunState::Running {
        return;
    }
    match client.job_manifest(job.info.id, None).await {
        Ok(m) => {
            outln!("\nmanifest of run {}:", run.number);
            for a in &m.artifacts {
                outln!(
                    "  {:<20} {:<8} {:>10}  sha256 {}",
                    a.name,
                    a.kind,
                    a.size,
                    crate::output::short(&a.sha256)
                );
            }
            for a in &m.missing {
                outln!(
                    "  {:<20} {:<8} missing ({}){}",
                    a.name,
                    a.kind,
                    a.path,
                    if a.optional { ", optional" } else { "" }
                );
            }
        }
        Err(e) => outln!("\nno manifest for run {}: {e}", run.number),
    }
}

/// The last `lines` lines of the latest run's log.
async fn log_tail(client: &Client, job: &JobDetail, lines: usize) {
    let Some(run) = job.run_history.last() else {
        return;
    };
    if job.info.state == JobState::Running && run.state == RunState::Running {
        outln!(
            "\nrun {} is running; follow its log with: lwr logs -f {}",
            run.number,
            job.info.id
        );
        return;
    }
    match super::logs::tail(client, job.info.id, run.log_size, lines).await {
        Ok(tail) => {
            outln!(
                "\nthe end of the log of run {} (all of it: lwr logs {}):",
                run.number,
                job.info.id
            );
            for line in &tail {
                outln!("  {line}");
            }
            if tail.is_empty() {
                outln!("  (empty)");
            }
        }
        Err(e) => outln!("\nno log for run {}: {e}", run.number),
    }
}
