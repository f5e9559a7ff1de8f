//! `lwr graph`: the offline graph tool.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lwr_model::Graph;

use crate::cli::{GraphAction, GraphArgs, GraphDiffArgs};

/// The graph file's name at the repository root.
pub const GRAPH_FILE: &str = "lwr.yml";

pub fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    if let Some(GraphAction::Diff(diff)) = args.action {
        return run_diff(diff);
    }
    let graph = read_working_tree(&args.repo)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&graph)?);
    } else {
        print!("{}", describe(&graph));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_diff(args: GraphDiffArgs) -> anyhow::Result<ExitCode> {
    let old = load(&args.old, &args.repo)?;
    let new = load(&args.new, &args.repo)?;
    let diff = lwr_model::graph::diff(&old, &new);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        print!("{diff}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A graph from a `--json` file, a directory's lwr.yml, or a revision of `repo`.
fn load(what: &str, repo: &Path) -> anyhow::Result<Graph> {
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
    let path = repo.join(GRAPH_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(lwr_model::graph::parse(&text, &path.display().to_string())?)
}

/// A graph for people: one line per job with what it needs and where it runs.
pub fn describe(graph: &Graph) -> String {
    let edges: usize = graph.jobs.iter().map(|j| j.needs.len()).sum();
    let mut out = format!("{} jobs, {} edges\n", graph.jobs.len(), edges);
    for job in &graph.jobs {
        out.push_str(&format!("{}\n", job.name));
        if !job.needs.is_empty() {
            out.push_str(&format!("  needs: {}\n", job.needs.join(", ")));
        }
        if !job.node.is_empty() {
            out.push_str(&format!("  node:  {}\n", job.node.describe()));
        }
        out.push_str(&format!(
            "  run:   {}\n",
            job.run.lines().next().unwrap_or("")
        ));
    }
    out
}
