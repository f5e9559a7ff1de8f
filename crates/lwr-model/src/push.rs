//! Pushes: which branches of a polled repository count, and the decision job each push gets.

use std::collections::BTreeMap;

use crate::glob::{self, glob_match};
use crate::graph::{JobSpec, Requires};
use crate::ids::PushId;
use crate::node::Requirements;

/// The name of a push's decision job; a graph submitted for a push may not use it.
pub const DECISION_JOB: &str = "decision";

/// What a decision job runs on its node: check the pushed revision out of the node's clone
/// cache, then generate, validate and submit the graph from that revision's lwr.yml. The
/// node sets `LWR_BIN` to its own binary; the rest comes from the job's `env`.
pub const DECISION_COMMAND: &str = "\"$LWR_BIN\" checkout \"$LWR_REPOSITORY\" \"$LWR_REVISION\" src \
     && \"$LWR_BIN\" graph --repo src --submit --push \"$LWR_PUSH\" --base \"$LWR_BASE\"";

/// Longest a decision job may take (mostly a first clone of a big repository).
const DECISION_TIMEOUT_SECS: u64 = 30 * 60;

/// The decision job of push `push`: `base` is the revision of the previous push on the
/// branch, against which changed files are computed (the commit's parent when `None`).
pub fn decision_job(
    push: PushId,
    repository: &str,
    branch: &str,
    revision: &str,
    base: Option<&str>,
) -> JobSpec {
    let env: BTreeMap<String, String> = [
        ("LWR_PUSH", push.to_string()),
        ("LWR_REPOSITORY", repository.to_string()),
        ("LWR_BRANCH", branch.to_string()),
        ("LWR_REVISION", revision.to_string()),
        ("LWR_BASE", base.unwrap_or_default().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    JobSpec {
        name: DECISION_JOB.to_string(),
        run: DECISION_COMMAND.to_string(),
        needs: Vec::new(),
        node: Requirements::default(),
        artifacts: Vec::new(),
        retries: crate::graph::DEFAULT_RETRIES,
        timeout_secs: DECISION_TIMEOUT_SECS,
        env,
        expires_secs: None,
        requires: Requires::default(),
        when: None,
        prefer: Vec::new(),
        // Its node's clone cache is warm, but a decision job is short and everything after
        // it waits for it: not worth more than a few seconds of waiting for a busy node.
        affinity_wait_secs: Some(DECISION_AFFINITY_WAIT_SECS),
        keep_workdir: false,
        timestamps: false,
    }
}

/// How long a decision job waits for the node that ran the branch's last one.
pub const DECISION_AFFINITY_WAIT_SECS: u64 = 5;

/// Whether a polled branch counts. With no patterns, only the repository's default branch
/// (what its HEAD points at; `main` or `master` when it does not say) counts.
pub fn branch_wanted(patterns: &[String], default_branch: Option<&str>, branch: &str) -> bool {
    if patterns.is_empty() {
        return match default_branch {
            Some(d) => d == branch,
            None => branch == "main" || branch == "master",
        };
    }
    patterns.iter().any(|p| glob_match(p, branch))
}

/// Checks a branch pattern as given to `lwr repos add --branch`.
pub fn check_branch_pattern(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("a branch pattern must not be empty".into());
    }
    if pattern.starts_with("refs/") {
        return Err(format!(
            "'{pattern}': give the branch name (main, release/*), not the ref"
        ));
    }
    if pattern.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("'{pattern}' contains a space or control character"));
    }
    glob::check(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_branch_only_without_patterns() {
        assert!(branch_wanted(&[], Some("trunk"), "trunk"));
        assert!(!branch_wanted(&[], Some("trunk"), "main"));
        assert!(branch_wanted(&[], None, "main"));
        let p = vec!["main".to_string(), "release/*".to_string()];
        assert!(branch_wanted(&p, Some("main"), "release/2"));
        assert!(!branch_wanted(&p, Some("main"), "feature/x"));
    }

    #[test]
    fn the_decision_job_is_a_valid_job() {
        let job = decision_job(PushId(7), "file:///r", "main", "abc", None);
        let graph = crate::Graph { jobs: vec![job] };
        graph.validate().unwrap();
        assert_eq!(graph.jobs[0].env["LWR_PUSH"], "7");
    }
}
