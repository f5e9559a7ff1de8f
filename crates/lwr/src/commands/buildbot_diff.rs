//! `lwr graph diff --buildbot URL --revision REV`: phase one's check that a graph describes
//! what Buildbot really does. The graph at REV is compared with the builds the master ran
//! for REV, builder names normalized the way job names are; a Buildbot job also matches its
//! own builder.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::Context;
use lwr_model::{Graph, normalize_name};
use lwr_node::buildbot::{Credentials, Rest};
use serde::Serialize;

use crate::cli::GraphDiffArgs;

/// Builds read from the master, newest first: far more than one revision's.
const BUILDS_READ: u32 = 5000;

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct BuildbotDiff {
    revision: String,
    /// Jobs of the graph no build of the revision matches.
    only_in_graph: Vec<String>,
    /// Builders that built the revision and match no job (as Buildbot names them).
    only_on_buildbot: Vec<String>,
    /// Jobs and the builder that matched each.
    matched: BTreeMap<String, String>,
}

pub async fn run(args: &GraphDiffArgs, url: &str) -> anyhow::Result<ExitCode> {
    let revision = args
        .revision
        .as_deref()
        .context("--buildbot needs --revision REV")?;
    let graph = super::graph::load(revision, &args.repo)?;
    let rest = Rest::new(url, Credentials::from_env())?;
    let names = rest.builder_names().await?;
    let builds = rest.recent_builds(BUILDS_READ).await?;
    let ran: BTreeSet<String> = builds
        .iter()
        .filter(|b| {
            b.properties
                .get("revision")
                .is_some_and(|(v, _)| v.as_str() == Some(revision))
        })
        .filter_map(|b| names.get(&b.builderid).cloned())
        .collect();
    let full = compare(&graph, revision, &ran);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&full)?);
    } else {
        out!("{}", describe(&full, graph.jobs.len(), ran.len()));
    }
    let same = full.only_in_graph.is_empty() && full.only_on_buildbot.is_empty();
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Compares `graph` with the builders `ran` for `revision`.
fn compare(graph: &Graph, revision: &str, ran: &BTreeSet<String>) -> BuildbotDiff {
    // normalized builder name → as Buildbot spells it
    let ran: BTreeMap<String, &String> = ran.iter().map(|b| (normalize_name(b), b)).collect();
    let mut out = BuildbotDiff {
        revision: revision.to_string(),
        ..Default::default()
    };
    let mut used = BTreeSet::new();
    for job in &graph.jobs {
        let builder = job.buildbot.as_ref().map(|b| normalize_name(&b.builder));
        let hit = builder
            .iter()
            .chain(std::iter::once(&job.name))
            .find_map(|n| ran.get_key_value(n));
        match hit {
            Some((key, name)) => {
                used.insert(key.clone());
                out.matched.insert(job.name.clone(), (*name).clone());
            }
            None => out.only_in_graph.push(job.name.clone()),
        }
    }
    out.only_on_buildbot = ran
        .iter()
        .filter(|(key, _)| !used.contains(*key))
        .map(|(_, name)| (*name).clone())
        .collect();
    out
}

fn describe(d: &BuildbotDiff, jobs: usize, builders: usize) -> String {
    let short = &d.revision[..d.revision.len().min(12)];
    let mut out =
        format!("graph at {short}: {jobs} jobs; Buildbot built {short} on {builders} builders\n");
    if d.only_in_graph.is_empty() && d.only_on_buildbot.is_empty() {
        out.push_str("no differences\n");
        return out;
    }
    for job in &d.only_in_graph {
        out.push_str(&format!("- {job} (in the graph, not built by Buildbot)\n"));
    }
    for builder in &d.only_on_buildbot {
        out.push_str(&format!(
            "+ {builder} (built by Buildbot, not in the graph)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_match_jobs_by_normalized_name_or_builder() {
        let graph = lwr_model::graph::parse(
            "version: 1\njobs:\n  Build Linux: {run: make}\n  test: {buildbot: {builder: linux64-test}}\n  lint: {run: x}\n",
            "lwr.yml",
        )
        .unwrap();
        let ran: BTreeSet<String> = ["build_linux", "linux64-test", "Extra Builder"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let d = compare(&graph, "abc", &ran);
        assert_eq!(d.only_in_graph, ["lint"]);
        assert_eq!(d.only_on_buildbot, ["Extra Builder"]);
        assert_eq!(d.matched["test"], "linux64-test");
        assert_eq!(d.matched["build-linux"], "build_linux");
        let text = describe(&d, 3, 3);
        assert!(
            text.contains("+ Extra Builder (built by Buildbot"),
            "{text}"
        );
    }
}
