//! `lwr repos`, `lwr pushes` and `lwr trigger`: polled repositories and what they pushed.

use std::process::ExitCode;

use anyhow::bail;
use lwr_model::JobId;
use lwr_model::api::{AddRepo, EditRepo, PushInfo};
use lwr_model::words::count;

use super::graph::GRAPH_FILE;
use crate::cli::{PushesArgs, ReposAction, ReposArgs, ServerConn, TriggerArgs};

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
                branches_text(&repo.branches)
            );
        }
        Some(ReposAction::Remove(rm)) => {
            let id = repo_id(&args.conn, &client, &rm.repo).await?;
            client.remove_repo(id).await?;
            outln!("repository {id} is no longer polled; its pushes stay");
        }
        Some(ReposAction::Edit(e)) => {
            let branches = match (e.default_branch, e.branches.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, false) => Some(e.branches),
                (false, true) => None,
            };
            let every_secs = e.every.map(|d| d.as_secs());
            if every_secs == Some(0) {
                bail!("--every must be at least 1s");
            }
            if branches.is_none() && every_secs.is_none() {
                bail!("nothing to change: give --branch, --default-branch or --every");
            }
            let id = repo_id(&args.conn, &client, &e.repo).await?;
            let repo = client
                .edit_repo(
                    id,
                    &EditRepo {
                        branches,
                        every_secs,
                    },
                )
                .await?;
            outln!(
                "polling {} (repository {}) every {}s, branches: {}",
                repo.url,
                repo.id,
                repo.every_secs,
                branches_text(&repo.branches)
            );
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
                        format!(
                            "{}, retry at {at}: {e}",
                            count(r.failures, "failure", "failures")
                        )
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
                    branches_text(&r.branches),
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
    // No pushes of a repository that is not there is an error, not an empty table (the
    // pushes of a removed repository stay, and are listed).
    if let (Some(id), true) = (args.repo, list.pushes.is_empty())
        && !client.repos().await?.repos.iter().any(|r| r.id == id)
    {
        bail!(
            "repository {id} not found (see {})",
            args.conn.hint("lwr repos")
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::with_capacity(list.pushes.len());
    for p in &list.pushes {
        rows.push([
            p.id.to_string(),
            p.graph_id.to_string(),
            p.branch.clone(),
            crate::output::short(&p.revision).to_string(),
            push_state(&client, p).await?,
            p.repository.clone(),
        ]);
    }
    let head = ["ID", "GRAPH", "BRANCH", "REVISION", "STATE", "REPOSITORY"].map(String::from);
    let mut width = head.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        outln!(
            "{:>w0$} {:>w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A push's state in words: `decided` once its graph is in; before that what its decision
/// job says: `deciding`, `no lwr.yml` (the revision has none: nothing to run),
/// `invalid lwr.yml: WHY` (the last line of the decision job's log), `decision failed: WHY`.
async fn push_state(client: &lwr_client::Client, p: &PushInfo) -> anyhow::Result<String> {
    use lwr_model::JobState;
    if p.decided {
        return Ok("decided".into());
    }
    let decision = match client
        .job_by_name(p.graph_id, lwr_model::push::DECISION_JOB)
        .await
    {
        Ok(job) => job,
        Err(e) if e.is_not_found() => return Ok("no decision job".into()),
        Err(e) => return Err(e.into()),
    };
    Ok(match decision.info.state {
        JobState::Pending | JobState::Running => "deciding".into(),
        JobState::Succeeded => "no lwr.yml".into(),
        JobState::Failed | JobState::Exception => {
            let log = client.log(decision.info.id, None).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&log);
            let why = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("---"))
                .unwrap_or(decision.info.state.as_str());
            let why = why.strip_prefix("error: ").unwrap_or(why);
            match why.contains(GRAPH_FILE) {
                true => format!("invalid lwr.yml: {}", why.replace("./lwr.yml", "lwr.yml")),
                false => format!("decision failed: {why}"),
            }
        }
        state => format!("decision {}", state.as_str()),
    })
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

fn branches_text(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "(default)".into()
    } else {
        patterns.join(",")
    }
}

/// A polled repository named by id or URL (in any of its spellings).
async fn repo_id(
    conn: &ServerConn,
    client: &lwr_client::Client,
    repo: &str,
) -> anyhow::Result<i64> {
    if let Ok(id) = repo.parse::<i64>() {
        return Ok(id);
    }
    let wanted = absolute_url(repo);
    let list = client.repos().await?;
    match list.repos.iter().find(|r| r.url == repo || r.url == wanted) {
        Some(r) => Ok(r.id),
        None => bail!(
            "repository {repo} not found (see {})",
            conn.hint("lwr repos")
        ),
    }
}

/// A repository's URL as the server keeps it: a local path made absolute (the server polls
/// it from its own working directory), then in its one canonical spelling (`file:///r` is
/// `/r`; the server does the same, for other clients).
fn absolute_url(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") || url.contains('@') || url.starts_with('/') {
        return lwr_model::push::canonical_repo_url(url);
    }
    match std::path::absolute(url) {
        Ok(path) => lwr_model::push::canonical_repo_url(&path.display().to_string()),
        Err(_) => url.to_string(),
    }
}
