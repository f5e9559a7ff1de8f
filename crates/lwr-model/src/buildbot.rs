//! What the rest of lwr knows about Buildbot jobs: the `buildbot:` of a job, the node tags a
//! bridge (`lwr node --buildbot URL`) registers, and the names of the build properties the
//! bridge sets. The bridge itself lives in `lwr-node/src/buildbot/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::node::{NodeProperties, Requirements};

/// `buildbot: {builder, properties}` of a job: it runs as a build of that builder on a
/// Buildbot master, through a bridge node, instead of as a shell command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildbotJob {
    /// The builder's name on the master, as Buildbot spells it.
    pub builder: String,
    /// Extra build properties, given to the build as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The tag a bridge node carries: its master's URL.
pub const BRIDGE_TAG: &str = "buildbot";
/// Prefix of the tags naming the builders a bridge can start (`buildbot.builder.NAME`).
pub const BUILDER_TAG_PREFIX: &str = "buildbot.builder.";
/// Properties the bridge sets itself; a job's `properties` may not use these names.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "lwr_job",
    "lwr_job_id",
    "lwr_graph",
    "lwr_run",
    "lwr_run_id",
    "lwr_revision",
    "lwr_manifests",
];

/// The node tag (and job requirement) for a builder: `buildbot.builder.NAME`.
pub fn builder_tag(builder: &str) -> String {
    format!("{BUILDER_TAG_PREFIX}{builder}")
}

/// A node that bridges to a Buildbot master.
pub fn is_bridge(node: &NodeProperties) -> bool {
    node.tags.contains_key(BRIDGE_TAG)
}

/// A job needing a builder (its requirements name a `buildbot.builder.` property).
pub fn is_buildbot_job(req: Option<&Requirements>) -> bool {
    req.is_some_and(|r| {
        r.properties
            .keys()
            .any(|k| k.starts_with(BUILDER_TAG_PREFIX))
    })
}

/// Why `node` cannot take a job with `req` for Buildbot reasons: a bridge runs only Buildbot
/// jobs (a plain job's command would never run there); `None` when that is no obstacle.
/// (That a plain node lacks the builder's tag is an ordinary unmet requirement.)
pub fn bridge_refuses(req: Option<&Requirements>, node: &NodeProperties) -> Option<String> {
    (is_bridge(node) && !is_buildbot_job(req))
        .then(|| "a plain job (node bridges to Buildbot and runs only buildbot: jobs)".into())
}

/// A build property name from parts of lwr names: anything but ASCII letters and digits
/// becomes `_` (`linux64-build`, `installer` → `linux64_build_installer_url`), so that
/// `%(prop:...)s` in a master.cfg can name it.
pub fn property_name(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Buildbot's `results` codes, and what each means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildResult {
    /// SUCCESS (0) and WARNINGS (1): the run succeeded.
    Succeeded,
    /// FAILURE (2) and SKIPPED (3): the run failed (a skipped build ran nothing the job
    /// asked for).
    Failed,
    /// EXCEPTION (4), RETRY (5), CANCELLED (6) and unknown codes: an infrastructure error,
    /// retried like a lost node.
    Infrastructure,
}

impl BuildResult {
    pub fn of(code: i64) -> BuildResult {
        match code {
            0 | 1 => BuildResult::Succeeded,
            2 | 3 => BuildResult::Failed,
            _ => BuildResult::Infrastructure,
        }
    }

    /// Buildbot's name of a results code.
    pub fn name(code: i64) -> &'static str {
        match code {
            0 => "success",
            1 => "warnings",
            2 => "failure",
            3 => "skipped",
            4 => "exception",
            5 => "retry",
            6 => "cancelled",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(tags: &[&str]) -> NodeProperties {
        NodeProperties {
            tags: tags
                .iter()
                .map(|t| (t.to_string(), "true".to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bridge_takes_only_buildbot_jobs() {
        let bridge = props(&["buildbot", "buildbot.builder.b1"]);
        let plain = props(&[]);
        let mut req = Requirements::default();
        req.properties.insert(builder_tag("b1"), "true".into());
        assert!(bridge_refuses(None, &bridge).is_some());
        assert!(bridge_refuses(Some(&Requirements::default()), &bridge).is_some());
        assert!(bridge_refuses(Some(&req), &bridge).is_none());
        assert!(req.matches(&bridge));
        assert!(!req.matches(&plain));
        assert!(bridge_refuses(None, &plain).is_none());
    }

    #[test]
    fn results_map_to_outcomes() {
        assert_eq!(BuildResult::of(0), BuildResult::Succeeded);
        assert_eq!(BuildResult::of(1), BuildResult::Succeeded);
        assert_eq!(BuildResult::of(2), BuildResult::Failed);
        for code in [4, 5, 6, 99] {
            assert_eq!(BuildResult::of(code), BuildResult::Infrastructure);
        }
        assert_eq!(BuildResult::name(6), "cancelled");
    }

    #[test]
    fn property_names_are_identifiers() {
        assert_eq!(
            property_name(&["linux64-build", "installer", "url"]),
            "linux64_build_installer_url"
        );
    }
}
