//! `lwr graphs`: the newest graphs with where they stand.

use std::process::ExitCode;

use lwr_model::api::GraphInfo;

use crate::cli::GraphsArgs;
use crate::output::{Table, duration, short, span, when};

pub async fn run(args: GraphsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let list = client.graphs(args.limit.max(1)).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ">ID",
        "REPOSITORY",
        "BRANCH",
        "REVISION",
        "STATE",
        "JOBS",
        "STARTED",
        ">DURATION",
    ]);
    for g in &list.graphs {
        let took = span(g.started_at.as_deref(), g.finished_at.as_deref());
        table.row(vec![
            g.id.to_string(),
            g.repository.clone().unwrap_or_else(|| "-".into()),
            g.branch.clone().unwrap_or_else(|| "-".into()),
            g.revision
                .as_deref()
                .map(|r| short(r).to_string())
                .unwrap_or_else(|| "-".into()),
            state(g).into(),
            jobs(g),
            when(g.started_at.as_deref()),
            took.map(duration).unwrap_or_else(|| "-".into()),
        ]);
    }
    out!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// One word for where a graph stands: the worst ending once it finished.
pub fn state(g: &GraphInfo) -> &'static str {
    let c = &g.counts;
    if !g.finished {
        return if c.running > 0 || c.total() > c.pending {
            "running"
        } else {
            "pending"
        };
    }
    if c.succeeded == c.total() {
        "succeeded"
    } else if c.failed > 0 || c.exception > 0 {
        "failed"
    } else if c.cancelled > 0 {
        "cancelled"
    } else {
        "blocked"
    }
}

/// `4/5 ok, 1 failed`: the counts that say most.
fn jobs(g: &GraphInfo) -> String {
    let c = &g.counts;
    let mut s = format!("{}/{} ok", c.succeeded, c.total());
    for (n, word) in [
        (c.failed + c.exception, "failed"),
        (c.running, "running"),
        (c.pending, "pending"),
        (c.blocked, "blocked"),
        (c.cancelled, "cancelled"),
    ] {
        if n > 0 {
            s.push_str(&format!(", {n} {word}"));
        }
    }
    s
}
