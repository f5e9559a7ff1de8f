//! Choosing the jobs of a push: `when: {changed: [...]}` filters, path patterns, and the
//! closure over needs. Pure functions; the decision job supplies the changed files.

use std::collections::{HashMap, HashSet};

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Graph, When};
use crate::glob;

/// A job of a push's graph that the decision job did not schedule, and why. It can still be
/// added later with `lwr trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeftOut {
    pub name: String,
    pub reason: String,
}

impl When {
    /// True when one of `files` (paths relative to the repository root) matches a
    /// `changed` pattern (the [`crate::glob`] dialect). A pattern without `/` matches a
    /// file's name in any directory, as in `.gitignore`: `*.md` matches `docs/intro.md`.
    pub fn matches(&self, files: &[String]) -> bool {
        // Compiled once per job, not per file: a push may change thousands of files.
        let patterns: Vec<(GlobMatcher, bool)> = self
            .changed
            .iter()
            .filter_map(|p| {
                let p = p.trim_start_matches('/');
                glob::compile(p).ok().map(|m| (m, !p.contains('/')))
            })
            .collect();
        files.iter().any(|file| {
            let name = file.rsplit('/').next().unwrap_or(file);
            patterns
                .iter()
                .any(|(m, by_name)| m.is_match(file) || (*by_name && m.is_match(name)))
        })
    }
}

/// The jobs of `graph` a push that changed `changed` leaves out: those whose `when` filter
/// matches no changed file, unless a job that runs needs them (a job always runs with its
/// needs). `changed: None` means unknown: every job runs.
pub fn select(graph: &Graph, changed: Option<&[String]>) -> Vec<LeftOut> {
    let Some(changed) = changed else {
        return Vec::new();
    };
    let index: HashMap<&str, usize> = graph
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut run: HashSet<usize> = HashSet::with_capacity(graph.jobs.len());
    let mut stack: Vec<usize> = graph
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.when.as_ref().is_none_or(|w| w.matches(changed)))
        .map(|(i, _)| i)
        .collect();
    while let Some(i) = stack.pop() {
        if !run.insert(i) {
            continue;
        }
        for need in &graph.jobs[i].needs {
            if let Some(&n) = index.get(need.as_str()) {
                stack.push(n);
            }
        }
    }
    graph
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| !run.contains(i))
        .map(|(_, j)| LeftOut {
            name: j.name.clone(),
            reason: format!(
                "when: no changed file matches {}",
                j.when
                    .as_ref()
                    .map(|w| w.changed.join(", "))
                    .unwrap_or_default()
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::glob_match;
    use crate::graph::parse;

    #[test]
    fn globs() {
        for (p, t) in [
            ("main", "main"),
            ("release/*", "release/1.0"),
            ("docs/**", "docs/a/b.md"),
            ("**/*.md", "a.md"),
            ("**/*.md", "x/y/a.md"),
            ("src/**/test.rs", "src/test.rs"),
            ("v?", "v1"),
            ("a/**/b", "a/b"),
            ("a/**/b", "a/x/y/b"),
            ("**", "a/b/c"),
            ("*", ".hidden"),
            ("release/*", "release/"),
            ("docs/**", "docs/"),
            ("*.tar.gz", "app-1.2.tar.gz"),
            ("a-*-b", "a--b"),
        ] {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("main", "mainline"),
            ("release/*", "release/1/2"),
            ("*.md", "docs/a.md"),
            ("v?", "v12"),
            ("docs/**", "doc/a"),
            ("docs/**", "docs"),
            ("a?b", "a/b"),
            ("*", "a/b"),
            ("src/*.rs", "src/a/b.rs"),
            ("a/**/b", "a/bc"),
        ] {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn patterns_without_a_slash_match_names_anywhere() {
        let w = When {
            changed: vec!["*.md".into()],
        };
        assert!(w.matches(&["docs/intro.md".into()]));
        assert!(!w.matches(&["src/main.rs".into()]));
        let rooted = When {
            changed: vec!["/src/*.rs".into()],
        };
        assert!(rooted.matches(&["src/main.rs".into()]));
        assert!(!rooted.matches(&["lib/src/main.rs".into()]));
    }

    #[test]
    fn left_out_jobs_come_back_when_a_running_job_needs_them() {
        let g = parse(
            "version: 1\njobs:\n  docs:\n    run: x\n    when: {changed: [\"docs/**\"]}\n  \
             build:\n    run: y\n  publish:\n    run: z\n    needs: [docs]\n    when: {changed: [\"*.md\"]}\n  \
             lint:\n    run: w\n    when: {changed: [\"src/**\"]}\n",
            "lwr.yml",
        )
        .unwrap();
        let names = |l: Vec<LeftOut>| l.into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(
            names(select(&g, Some(&["README.md".into()]))),
            ["lint"],
            "publish runs, so docs (its need) runs too"
        );
        assert_eq!(
            names(select(&g, Some(&["src/a.rs".into()]))),
            ["docs", "publish"]
        );
        assert!(select(&g, None).is_empty());
    }
}
