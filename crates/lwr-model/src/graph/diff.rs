//! Comparing two graphs: which jobs and edges were added, removed or changed.
//!
//! This is how a change to lwr.yml is reviewed ("easy to verify by comparing its output to
//! earlier runs"): `lwr graph diff` between two revisions names exactly what moved.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Graph, JobSpec};

/// What differs between an old and a new graph. Names are normalized job names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GraphDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Jobs in both graphs whose definition differs, with the fields that differ.
    pub changed: Vec<JobChange>,
    /// `(job, need)` pairs present only in the new graph.
    pub edges_added: Vec<(String, String)>,
    /// `(job, need)` pairs present only in the old graph.
    pub edges_removed: Vec<(String, String)>,
    /// Jobs that were builds on Buildbot (`buildbot:`) and now run in lwr (`run:`): the
    /// whole migration of a job in phase one. Also listed in `changed`.
    pub moved_off_buildbot: Vec<MovedOff>,
}

/// A job moved from `buildbot:` to `run:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovedOff {
    pub name: String,
    /// The builder it ran as.
    pub builder: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobChange {
    pub name: String,
    /// Among `run`, `title`, `buildbot`, `needs`, `node`, `artifacts`, `env`, `retries`,
    /// `timeout`, `requires`, `when`.
    pub fields: Vec<&'static str>,
}

impl GraphDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.edges_added.is_empty()
            && self.edges_removed.is_empty()
    }
}

/// Compares `old` with `new`.
pub fn diff(old: &Graph, new: &Graph) -> GraphDiff {
    let old_jobs: BTreeMap<&str, &JobSpec> =
        old.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let new_jobs: BTreeMap<&str, &JobSpec> =
        new.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let mut out = GraphDiff::default();
    for (name, job) in &new_jobs {
        match old_jobs.get(name) {
            None => out.added.push(name.to_string()),
            Some(before) => {
                let fields = changed_fields(before, job);
                if let (Some(bb), None) = (&before.buildbot, &job.buildbot) {
                    out.moved_off_buildbot.push(MovedOff {
                        name: name.to_string(),
                        builder: bb.builder.clone(),
                    });
                }
                if !fields.is_empty() {
                    out.changed.push(JobChange {
                        name: name.to_string(),
                        fields,
                    });
                }
            }
        }
    }
    out.removed = old_jobs
        .keys()
        .filter(|n| !new_jobs.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    let old_edges = edges(old);
    let new_edges = edges(new);
    out.edges_added = new_edges.difference(&old_edges).cloned().collect();
    out.edges_removed = old_edges.difference(&new_edges).cloned().collect();
    out
}

fn changed_fields(a: &JobSpec, b: &JobSpec) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let needs = |j: &JobSpec| j.needs.iter().cloned().collect::<BTreeSet<_>>();
    let checks = [
        ("run", a.run != b.run),
        ("title", a.title != b.title),
        ("buildbot", a.buildbot != b.buildbot),
        ("needs", needs(a) != needs(b)),
        ("node", a.node != b.node),
        ("artifacts", a.artifacts != b.artifacts),
        ("env", a.env != b.env),
        ("retries", a.retries != b.retries),
        ("timeout", a.timeout_secs != b.timeout_secs),
        ("requires", a.requires != b.requires),
        ("when", a.when != b.when),
    ];
    for (field, differs) in checks {
        if differs {
            fields.push(field);
        }
    }
    fields
}

fn edges(g: &Graph) -> BTreeSet<(String, String)> {
    g.jobs
        .iter()
        .flat_map(|j| j.needs.iter().map(move |n| (j.name.clone(), n.clone())))
        .collect()
}

impl std::fmt::Display for GraphDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no differences");
        }
        for name in &self.added {
            writeln!(f, "+ {name}")?;
        }
        for name in &self.removed {
            writeln!(f, "- {name}")?;
        }
        for change in &self.changed {
            match self
                .moved_off_buildbot
                .iter()
                .find(|m| m.name == change.name)
            {
                Some(moved) => writeln!(
                    f,
                    "~ {} moved off Buildbot (was builder {}; {})",
                    change.name,
                    moved.builder,
                    change.fields.join(", ")
                )?,
                None => writeln!(f, "~ {} ({})", change.name, change.fields.join(", "))?,
            }
        }
        for (job, need) in &self.edges_added {
            writeln!(f, "+ edge {job} needs {need}")?;
        }
        for (job, need) in &self.edges_removed {
            writeln!(f, "- edge {job} needs {need}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::parse;

    fn g(text: &str) -> Graph {
        parse(text, "lwr.yml").unwrap()
    }

    #[test]
    fn names_exactly_what_changed() {
        let old = g(
            "version: 1\njobs:\n  hello:\n    run: echo one\n  steady:\n    run: echo same\n  gone:\n    run: x\n",
        );
        let new = g(
            "version: 1\njobs:\n  hello:\n    run: echo two\n  steady:\n    run: echo same\n  fresh:\n    run: y\n    needs: [steady]\n",
        );
        let d = diff(&old, &new);
        assert_eq!(d.added, ["fresh"]);
        assert_eq!(d.removed, ["gone"]);
        assert_eq!(
            d.changed,
            [JobChange {
                name: "hello".into(),
                fields: vec!["run"]
            }]
        );
        assert_eq!(d.edges_added, [("fresh".to_string(), "steady".to_string())]);
        assert!(d.edges_removed.is_empty());
        let text = d.to_string();
        assert!(
            text.contains("~ hello (run)") && !text.contains("steady ("),
            "{text}"
        );
    }

    #[test]
    fn a_job_moved_from_buildbot_to_run_says_so() {
        let old = g("version: 1\njobs:\n  test:\n    buildbot: {builder: linux64-test}\n");
        let new = g("version: 1\njobs:\n  test:\n    run: make test\n");
        let d = diff(&old, &new);
        assert_eq!(
            d.moved_off_buildbot,
            [MovedOff {
                name: "test".into(),
                builder: "linux64-test".into()
            }]
        );
        let text = d.to_string();
        assert!(
            text.contains("~ test moved off Buildbot (was builder linux64-test; run, buildbot)"),
            "{text}"
        );
        // The other way is an ordinary change.
        let back = diff(&new, &old);
        assert!(back.moved_off_buildbot.is_empty());
        assert_eq!(back.changed[0].fields, ["run", "buildbot"]);
    }

    #[test]
    fn identical_graphs_have_no_differences() {
        let a = g(
            "version: 1\njobs:\n  a:\n    run: x\n  b:\n    run: y\n    needs: [a]\n    timeout: 5m\n",
        );
        assert!(diff(&a, &a).is_empty());
        assert_eq!(diff(&a, &a).to_string(), "no differences\n");
    }

    #[test]
    fn requirement_timeout_and_needs_changes_are_named() {
        let a = g("version: 1\njobs:\n  a:\n    run: x\n  b:\n    run: y\n    needs: [a]\n");
        let b = g(
            "version: 1\njobs:\n  a:\n    run: x\n  b:\n    run: y\n    node: {os: linux}\n    timeout: 5m\n",
        );
        let d = diff(&a, &b);
        assert_eq!(
            d.changed,
            [JobChange {
                name: "b".into(),
                fields: vec!["needs", "node", "timeout"]
            }]
        );
        assert_eq!(d.edges_removed, [("b".to_string(), "a".to_string())]);
    }
}
