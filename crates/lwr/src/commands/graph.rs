//! `lwr graph`: the offline graph tool.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use lwr_model::api::SubmitGraph;
use lwr_model::words::count;
use lwr_model::{Graph, PushId};

use super::push::git;
use crate::cli::{GraphAction, GraphArgs, GraphDiffArgs};
use crate::output::short;

/// The graph file's name at the repository root.
pub const GRAPH_FILE: &str = "lwr.yml";

pub async fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    if let Some(GraphAction::Diff(diff)) = args.action {
        return run_diff(diff).await;
    }
    // A polled revision without lwr.yml has nothing to run; that is no failure of the
    // decision job (`lwr pushes` shows the push as `no lwr.yml`).
    if let (true, Some(push)) = (args.submit, args.push)
        && !args.repo.join(GRAPH_FILE).exists()
    {
        outln!("no {GRAPH_FILE} at this revision: push {push} runs nothing");
        return Ok(ExitCode::SUCCESS);
    }
    let graph = read_working_tree(&args.repo)?;
    if args.submit {
        return submit(&args, graph).await;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&graph)?);
    } else {
        out!("{}", describe(&graph));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_diff(args: GraphDiffArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.buildbot {
        return super::buildbot_diff::run(&args, url).await;
    }
    let (old, new) = match (&args.push, &args.old, &args.new) {
        (Some(push), _, _) => {
            let (old, new, header) = push_graphs(&args.conn, *push).await?;
            if !args.json {
                outln!("{header}");
            }
            (old, new)
        }
        (None, Some(old), Some(new)) => (load(old, &args.repo)?, load(new, &args.repo)?),
        _ => bail!("give OLD and NEW, or --push ID"),
    };
    let diff = lwr_model::graph::diff(&old, &new);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        out!("{diff}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The graphs of the push before `push` on its branch and of `push`, and a line saying
/// which pushes they are. Earlier pushes without a graph (a broken lwr.yml) are skipped.
async fn push_graphs(
    conn: &crate::cli::ServerConn,
    push: PushId,
) -> anyhow::Result<(Graph, Graph, String)> {
    let client = conn.client()?;
    let new = client.push(push).await?;
    let mut previous = new.previous;
    let old = loop {
        let Some(id) = previous else {
            bail!(
                "push {push} is the first push of {} in {} with a graph: there is nothing to \
                 compare it with",
                new.branch,
                new.repository
            );
        };
        let old = client.push(id).await?;
        if old.decided {
            break old;
        }
        previous = old.previous;
    };
    let old_spec = client.graph_spec(old.graph_id).await?;
    let new_spec = client.graph_spec(new.graph_id).await?;
    let header = format!(
        "push {} ({} {}) -> push {} ({})",
        old.id,
        new.branch,
        short(&old.revision),
        new.id,
        short(&new.revision)
    );
    Ok((old_spec.graph, new_spec.graph, header))
}

/// `lwr graph --submit`: posts the graph of `args.repo`'s working tree. With `--push`,
/// as the graph of that push (what a decision job does), leaving out the jobs whose `when`
/// filter matches no changed file.
async fn submit(args: &GraphArgs, graph: Graph) -> anyhow::Result<ExitCode> {
    let filtered = graph.jobs.iter().any(|j| j.when.is_some());
    let changed = match (args.push, filtered) {
        (Some(_), true) => changed_files(&args.repo, args.base.as_deref().unwrap_or(""))?,
        _ => None,
    };
    let left_out = lwr_model::graph::select(&graph, changed.as_deref());
    let mut sub = SubmitGraph::new(graph);
    if args.push.is_none() {
        sub.repository = std::fs::canonicalize(&args.repo)
            .ok()
            .map(|p| p.display().to_string());
        sub.revision = git(&args.repo, &["rev-parse", "--verify", "HEAD"]);
        sub.branch =
            git(&args.repo, &["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD");
    }
    (sub.author, sub.subject) = super::push::commit_author(&args.repo, "HEAD");
    sub.push = args.push;
    sub.left_out = left_out;
    if let Some(changed) = &changed {
        outln!("{} changed", count(changed.len() as u64, "file", "files"));
    }
    for l in &sub.left_out {
        outln!("left out {}: {}", l.name, l.reason);
    }
    let client = args.conn.client()?;
    // A decision job should not fail because the server restarts just then.
    let mut attempt = 0;
    let info = loop {
        match client.submit_graph(&sub).await {
            Ok(info) => break info,
            Err(e) if e.is_unreachable() && attempt < 8 => {
                attempt += 1;
                eprintln!("{e}; retrying");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let scheduled = sub.graph.jobs.len() - sub.left_out.len();
    match sub.push {
        Some(push) => outln!(
            "submitted {} to graph {} of push {push} ({} left out)",
            count(scheduled as u64, "job", "jobs"),
            info.id,
            sub.left_out.len()
        ),
        None => outln!(
            "pushed graph {} ({})",
            info.id,
            count(scheduled as u64, "job", "jobs")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Files changed at HEAD of `repo`: since `base` when that is a known commit, else since
/// HEAD's parent; every file for a first commit. `None` when git cannot tell.
fn changed_files(repo: &Path, base: &str) -> anyhow::Result<Option<Vec<String>>> {
    let known = |rev: &str| git(repo, &["cat-file", "-e", &format!("{rev}^{{commit}}")]).is_some();
    let listing = if !base.is_empty() && known(base) {
        git(repo, &["diff", "--name-only", base, "HEAD"])
    } else if known("HEAD^") {
        git(repo, &["diff", "--name-only", "HEAD^", "HEAD"])
    } else if known("HEAD") {
        git(repo, &["ls-tree", "-r", "--name-only", "HEAD"])
    } else {
        eprintln!("note: {} has no commit; every job runs", repo.display());
        return Ok(None);
    };
    let text = listing.context("git could not list the changed files")?;
    Ok(Some(
        text.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

/// A graph from a `--json` file, a directory's lwr.yml, or a revision of `repo`.
pub(super) fn load(what: &str, repo: &Path) -> anyhow::Result<Graph> {
    let path = Path::new(what);
    if path.is_dir() {
        return read_working_tree(path);
    }
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what}"))?;
        let graph: Graph = serde_json::from_str(&text)
            .with_context(|| format!("{what} is not a graph from `lwr graph --json`"))?;
        graph.validate()?;
        return Ok(graph);
    }
    let text = super::push::git(repo, &["show", &format!("{what}:./{GRAPH_FILE}")]).with_context(|| {
        format!("'{what}' is neither a file, a directory, nor a revision of {} with an {GRAPH_FILE}", repo.display())
    })?;
    Ok(lwr_model::graph::parse(
        &text,
        &format!("{GRAPH_FILE}@{what}"),
    )?)
}

/// Parses and validates `<repo>/lwr.yml` as it is on disk.
pub fn read_working_tree(repo: &Path) -> anyhow::Result<Graph> {
    // Streamed: a 100,000-job file is 30 MiB of text not to hold beside its graph.
    super::stream::parse_file(&repo.join(GRAPH_FILE))
}

/// A graph for people: one line per job with what it needs and where it runs.
pub fn describe(graph: &Graph) -> String {
    let edges: usize = graph.jobs.iter().map(|j| j.needs.len()).sum();
    let mut out = format!(
        "{}, {}\n",
        count(graph.jobs.len() as u64, "job", "jobs"),
        count(edges as u64, "edge", "edges")
    );
    for job in &graph.jobs {
        out.push_str(&format!("{}\n", job.name));
        if let Some(title) = &job.title {
            out.push_str(&format!("  title: {title}\n"));
        }
        if !job.needs.is_empty() {
            out.push_str(&format!("  needs: {}\n", job.needs.join(", ")));
        }
        if !job.node.is_empty() {
            out.push_str(&format!("  node:  {}\n", job.node.describe()));
        }
        if !job.requires.is_default() {
            out.push_str(&format!("  requires: {}\n", job.requires.as_str()));
        }
        if let Some(when) = &job.when {
            out.push_str(&format!("  when:  changed {}\n", when.changed.join(", ")));
        }
        if job.timestamps {
            out.push_str("  log:   timestamped lines\n");
        }
        if !job.checkout.is_default() {
            out.push_str(&format!(
                "  checkout: {}\n",
                describe_checkout(&job.checkout)
            ));
        }
        if !job.prefer.is_empty() || job.affinity_wait_secs.is_some() || job.keep_workdir {
            let prefer: Vec<&str> = job.prefer.iter().map(|p| p.as_str()).collect();
            let mut parts = Vec::new();
            if !prefer.is_empty() {
                parts.push(format!("prefer {}", prefer.join(", ")));
            }
            if let Some(secs) = job.affinity_wait_secs {
                parts.push(format!("affinity wait {secs} s"));
            }
            if job.keep_workdir {
                parts.push("keeps its work dir".to_string());
            }
            out.push_str(&format!("  pool:  {}\n", parts.join("; ")));
        }
        match &job.buildbot {
            Some(bb) => out.push_str(&format!("  buildbot: builder {}\n", bb.builder)),
            None => out.push_str(&format!(
                "  run:   {}\n",
                job.run.lines().next().unwrap_or("")
            )),
        }
    }
    out
}

/// `checkout:` in words, for `lwr graph`.
fn describe_checkout(c: &lwr_model::Checkout) -> String {
    if !c.enabled {
        return "none (starts in an empty dir)".into();
    }
    let mut parts = Vec::new();
    if let Some(path) = &c.path {
        parts.push(format!("into {path}"));
    }
    if let Some(depth) = c.depth {
        parts.push(format!("depth {depth}"));
    }
    if c.submodules {
        parts.push("with submodules".into());
    }
    if c.lfs {
        parts.push("with LFS files".into());
    }
    parts.join(", ")
}
