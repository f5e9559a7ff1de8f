//! Bringing graphs from other CI systems over to lwr: pure conversions (text in, an lwr.yml
//! and a report out), so that the CLI only reads and writes files.
//!
//! Only TaskCluster's `taskcluster-taskgraph` output is read today ([`taskgraph`]).

pub mod taskgraph;

mod fields;
mod payload;
mod yaml;

use std::collections::BTreeMap;

use crate::graph::Graph;

/// What an import made, and what it could not carry over.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The graph, validated as `lwr graph` would validate the file.
    pub graph: Graph,
    /// The lwr.yml text for `graph`, with a comment above each job naming its source and
    /// what was not imported.
    pub yaml: String,
    /// Tasks and dependencies in the input.
    pub tasks: usize,
    pub dependencies: usize,
    /// Per job (normalized name) with anything to say: what the source said that lwr cannot
    /// express, and what changed on the way.
    pub notes: BTreeMap<String, JobNotes>,
    /// Labels that normalized alike, and the distinct job names they were given.
    pub clashes: Vec<Clash>,
    /// Tasks left out (with `--skip-unsupported`), and why.
    pub skipped: Vec<Skipped>,
}

/// What an import says about one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobNotes {
    /// Fields of the source lwr has no place for (`routes`, `payload.features`).
    pub not_imported: Vec<String>,
    /// Sentences about what was changed, left out or kept as written, and why.
    pub notes: Vec<String>,
}

impl JobNotes {
    pub fn is_empty(&self) -> bool {
        self.not_imported.is_empty() && self.notes.is_empty()
    }
}

/// Two or more labels whose job names came out alike. None is merged: the first (in label
/// order) keeps the name, the others get a numbered one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash {
    pub normalized: String,
    /// (label, the job name it got)
    pub labels: Vec<(String, String)>,
}

/// A task that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub label: String,
    pub reason: String,
}

/// How to import.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Every command becomes `true`, node requirements and artifacts are dropped: the
    /// graph's shape, runnable on any laptop cluster.
    pub dry_run_commands: bool,
    /// Leave out tasks whose payload lwr does not understand, and their dependents, instead
    /// of failing.
    pub skip_unsupported: bool,
}

/// `s` on one line: control and line-breaking characters escaped (`\n`, `\u{2028}`).
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
