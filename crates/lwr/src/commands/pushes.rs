//! `lwr repos`, `lwr pushes` and `lwr trigger`: polled repositories and what they pushed.

use std::process::ExitCode;

use anyhow::bail;
use lwr_model::JobId;
use lwr_model::api::AddRepo;

use crate::cli::{PushesArgs, ReposAction, ReposArgs, TriggerArgs};

pub async fn repos(args: ReposArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.action {
        Some(ReposAction::Add(add)) => {
            let every_secs = add.every.as_secs();
            if every_secs == 0 {
                bail!("--every must be at least 1s");
            }
            let repo = client
                .add_repo(&AddRepo {
                    url: absolute_url(&add.url),
                    branches: add.branches,
                    every_secs: Some(every_secs),
                })
                .await?;
            outln!(
                "polling {} (repository {}) every {}s, branches: {}",
                repo.url,
                repo.id,
                repo.every_secs,
                branches(&repo.branches)
            );
        }
        Some(ReposAction::Remove(rm)) => {
            let id = match rm.repo.parse::<i64>() {
                Ok(id) => id,
                Err(_) => {
                    let wanted = absolute_url(&rm.repo);
                    let list = client.repos().await?;
                    match list
                        .repos
                        .iter()
                        .find(|r| r.url == rm.repo || r.url == wanted)
                    {
                        Some(r) => r.id,
                        None => bail!("no polled repository {} (see `lwr repos`)", rm.repo),
                    }
                }
            };
            client.remove_repo(id).await?;
            outln!("repository {id} is no longer polled; its pushes stay");
        }
        None => {
            let list = client.repos().await?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:>4}  {:<8} {:>6} {:>6}  {:<40} {:<16} DETAIL",
                "ID",
                "STATE",
                "EVERY",
                "PUSHES",
                "URL",
                "BRANCHES"
            );
            for r in &list.repos {
                let detail = match (&r.error, &r.retry_at) {
                    (Some(e), Some(at)) => {
                        format!("{} failures, retry at {at}: {e}", r.failures)
                    }
                    (Some(e), None) => e.clone(),
                    _ => r
                        .polled_at
                        .as_deref()
                        .map(|t| format!("polled {t}"))
                        .unwrap_or_default(),
                };
                outln!(
                    "{:>4}  {:<8} {:>5}s {:>6}  {:<40} {:<16} {}",
                    r.id,
                    r.state,
                    r.every_secs,
                    r.pushes,
                    r.url,
                    branches(&r.branches),
                    detail
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pushes(args: PushesArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let list = client.pushes(args.repo).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>5} {:>5}  {:<20} {:<12} {:<8} REPOSITORY",
        "ID",
        "GRAPH",
        "BRANCH",
        "REVISION",
        "DECIDED"
    );
    for p in &list.pushes {
        outln!(
            "{:>5} {:>5}  {:<20} {:<12} {:<8} {}",
            p.id,
            p.graph_id,
            p.branch,
            crate::output::short(&p.revision),
            if p.decided { "yes" } else { "no" },
            p.repository
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let name = lwr_model::normalize_name(&args.job);
    let result = client.trigger(args.push, &name).await?;
    let ids: Vec<String> = result.jobs.iter().map(JobId::to_string).collect();
    outln!(
        "triggered {name} in push {}: job {}",
        args.push,
        ids.join(", job ")
    );
    Ok(ExitCode::SUCCESS)
}

fn branches(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "(default)".into()
    } else {
        patterns.join(",")
    }
}

/// A local path made absolute (the server polls it from its own working directory); URLs
/// are left alone.
fn absolute_url(url: &str) -> String {
    if url.contains("://") || url.contains('@') {
        return url.to_string();
    }
    std::fs::canonicalize(url)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| url.to_string())
}
