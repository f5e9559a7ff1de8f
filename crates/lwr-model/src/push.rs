//! Pushes: which branches of a polled repository count, and the decision job each push gets.

use crate::glob::{self, glob_match};
use crate::graph::{Env, JobSpec, Requires};
use crate::node::Requirements;

/// The name of a push's decision job; a graph submitted for a push may not use it.
pub const DECISION_JOB: &str = "decision";

/// What a decision job runs on its node, which has checked the pushed revision out into the
/// job dir (as for every job of a push): generate, validate and submit the graph from that
/// revision's lwr.yml. The node sets `LWR_BIN` to its own binary and the `LWR_*` variables
/// of the commit.
pub const DECISION_COMMAND: &str = "\"$LWR_BIN\" graph --repo . --submit --push \"$LWR_PUSH_ID\" \
     --base \"$LWR_BASE_REVISION\"";

/// Longest a decision job may take (mostly a first clone of a big repository).
const DECISION_TIMEOUT_SECS: u64 = 30 * 60;

/// The decision job of a push. It needs no environment of its own: the node names the
/// push, its revision and the previous push's (the base, against which changed files are
/// computed) in the `LWR_*` variables every job of a push gets.
pub fn decision_job() -> JobSpec {
    JobSpec {
        name: DECISION_JOB.to_string(),
        title: None,
        run: DECISION_COMMAND.to_string(),
        needs: Vec::new(),
        node: Requirements::default(),
        artifacts: Vec::new(),
        retries: crate::graph::DEFAULT_RETRIES,
        timeout_secs: DECISION_TIMEOUT_SECS,
        env: Env::new(),
        expires_secs: None,
        requires: Requires::default(),
        when: None,
        prefer: Vec::new(),
        // Its node's clone cache is warm, but a decision job is short and everything after
        // it waits for it: not worth more than a few seconds of waiting for a busy node.
        affinity_wait_secs: Some(DECISION_AFFINITY_WAIT_SECS),
        keep_workdir: false,
        timestamps: false,
        checkout: Default::default(),
        buildbot: None,
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

/// The one spelling of a repository's URL, so that one repository is never polled (and
/// pushed) twice under two names: `file:///r`, `/r/`, `/r/.` and a symbolic link to `/r` are
/// all `/r` (with links resolved when the path exists); other URLs lose trailing slashes.
pub fn canonical_repo_url(url: &str) -> String {
    let url = url.trim();
    let local = match url.strip_prefix("file://") {
        // file:///path and file://localhost/path; another host is not this machine's.
        Some(rest) if rest.starts_with('/') => Some(rest),
        Some(rest) => rest
            .strip_prefix("localhost")
            .filter(|r| r.starts_with('/')),
        None => url.starts_with('/').then_some(url),
    };
    let Some(path) = local else {
        return url.trim_end_matches('/').to_string();
    };
    match std::fs::canonicalize(path) {
        Ok(real) => real.display().to_string(),
        // Not there (yet): the path as written, without `.` parts and trailing slashes.
        Err(_) => {
            let clean: std::path::PathBuf = std::path::Path::new(path).components().collect();
            clean.display().to_string()
        }
    }
}

/// Whether a graph's `repository` says where a node can fetch it from: a URL
/// (`https://...`, `file:///...`), git's scp-like `host:path`, or an absolute path (what
/// polling and `lwr push` name). Anything else (`bench`, `tools/x`) is a label a graph
/// submitted over the API carries for people and listings: its jobs have nothing to check
/// out and start in an empty directory, rather than fail to fetch from a path relative to
/// wherever the node runs.
pub fn is_repository_location(repository: &str) -> bool {
    let r = repository.trim();
    if r.starts_with('/') || r.contains("://") {
        return true;
    }
    // scp-like: `[user@]host:path`, a colon before any slash (git's own rule).
    match r.find(':') {
        Some(colon) => colon > 0 && !r[..colon].contains('/'),
        None => false,
    }
}

/// Whether a branch pattern names one branch (no glob characters), which must then exist.
pub fn is_literal_branch(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_urls_scp_paths_and_absolute_paths_are_repository_locations() {
        for place in [
            "https://example.org/r.git",
            "file:///srv/r",
            "ssh://git@host/r",
            "git@github.com:org/r.git",
            "host:r",
            "/srv/repos/r",
        ] {
            assert!(is_repository_location(place), "{place}");
        }
        for label in ["bench", "tools/x", "./r", "../r", "", ":r", "a/b:c"] {
            assert!(!is_repository_location(label), "{label}");
        }
    }

    use super::*;

    #[test]
    fn a_repository_has_one_url() {
        let tmp = std::env::temp_dir().join(format!("lwr-canon-{}", std::process::id()));
        let real = tmp.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let link = tmp.join("link");
        let _ = std::os::unix::fs::symlink(&real, &link);
        let want = std::fs::canonicalize(&real).unwrap().display().to_string();
        let r = real.display().to_string();
        for form in [
            r.clone(),
            format!("{r}/"),
            format!("{r}/."),
            format!("file://{r}"),
            format!("file://localhost{r}/"),
            link.display().to_string(),
        ] {
            assert_eq!(canonical_repo_url(&form), want, "{form}");
        }
        assert_eq!(canonical_repo_url("/no/such//repo/"), "/no/such/repo");
        assert_eq!(
            canonical_repo_url("https://example.org/r.git/"),
            "https://example.org/r.git"
        );
        assert_eq!(canonical_repo_url("git@host:r.git"), "git@host:r.git");
        let _ = std::fs::remove_dir_all(&tmp);
    }

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
        let graph = crate::Graph {
            jobs: vec![decision_job()],
        };
        graph.validate().unwrap();
        assert!(
            graph.jobs[0].checkout.enabled,
            "it reads the commit's lwr.yml"
        );
    }
}
