//! Graphs: the jobs of one `lwr.yml` at one commit, expanded and validated.
//!
//! `parse` reads the file (with line numbers for every error), expands matrices, normalizes
//! names and resolves `needs`; `Graph::validate` checks an already expanded graph (what the
//! server does with a submitted graph, because it trusts no client).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::buildbot::BuildbotJob;
use crate::node::Requirements;
use crate::pool::Prefer;

mod diff;
mod env;
mod parse;
mod select;
mod validate;
mod yaml;

pub use diff::{GraphDiff, JobChange, MovedOff, diff};
pub use env::Env;
pub use parse::{MAX_FILE_BYTES, parse, parse_duration, parse_stream};
pub use select::{LeftOut, select};
pub use validate::{
    GraphError, MAX_CHECKOUT_DEPTH, MAX_TITLE_CHARS, checkout_path_problem, title_problem,
};
pub(crate) use validate::{MAX_EXPIRES_SECS, MAX_TIMEOUT_SECS, find_cycle, is_env_name};

/// Default number of extra runs after an infrastructure failure.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default job timeout: one hour.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// An expanded, validated job graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Graph {
    /// Jobs in the order the file declares them (matrix expansions in place).
    pub jobs: Vec<JobSpec>,
}

/// One job as the server stores it and a node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobSpec {
    /// Normalized name, unique in the graph.
    pub name: String,
    /// What people see beside the name (`title:`), e.g. the label of an imported task,
    /// which normalization would have changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Shell command, run with `sh -c`.
    pub run: String,
    /// Normalized names of the jobs this one needs (matrix needs expanded).
    #[serde(default)]
    pub needs: Vec<String>,
    /// Requirements on the node.
    #[serde(default)]
    pub node: Requirements,
    #[serde(default)]
    pub artifacts: Vec<ArtifactDecl>,
    /// Extra runs allowed after an infrastructure failure (`exception`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long the server keeps the job's artifacts; `None` means the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
    // An object of strings on the wire and in the API's document, as the map it was.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub env: Env,
    /// When the job may start: after its needs succeeded (default), or once they all
    /// finished whatever their result (`all-finished`, for summaries).
    #[serde(default, skip_serializing_if = "Requires::is_default")]
    pub requires: Requires,
    /// A filter a decision job applies: the job runs only if the push changed a matching
    /// file (or a job that runs needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Which node to prefer among those that match, most important first (`prefer:`);
    /// empty means the default, `[affinity, fastest]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer: Vec<Prefer>,
    /// How long the job waits for the node that last built it (`affinity_wait`); `None`
    /// means 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_wait_secs: Option<u64>,
    /// Keep the job's work dir on the node between runs, so the next run on that node
    /// (affinity sends it there) builds incrementally (`keep_workdir: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_workdir: bool,
    /// Start every line of the job's log with the time it was written (`timestamps: true`),
    /// as `lwr node --timestamps` does for all its jobs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
    /// Whether and how the node checks the push's revision out into the job dir before the
    /// job starts (`checkout:`); only jobs of a graph that came from a repository have one.
    #[serde(default, skip_serializing_if = "Checkout::is_default")]
    pub checkout: Checkout,
    /// `buildbot: {builder, properties}`: the job is a build on a Buildbot master, run by a
    /// bridge node (`lwr node --buildbot URL`), and `run` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildbot: Option<BuildbotJob>,
}

impl JobSpec {
    /// What the job requires of its node: its `node:`, and for a Buildbot job a bridge
    /// serving its builder (`buildbot.builder.NAME`).
    pub fn requirements(&self) -> Requirements {
        let mut req = self.node.clone();
        if let Some(bb) = &self.buildbot {
            req.properties
                .insert(crate::buildbot::builder_tag(&bb.builder), "true".into());
        }
        req
    }
}

/// `checkout:` of a job (or the file's default): `false`, `true`, or
/// `{depth, submodules, lfs, path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Checkout {
    /// `checkout: false` makes this false: the job starts in an empty directory.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Commits of history the job's tree holds; `None`: all the node's cache has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Also check out the submodules, recursively.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submodules: bool,
    /// Also fetch Git LFS files (`git lfs` must be on the node).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lfs: bool,
    /// Where in the job dir the tree goes (relative); `None`: the job dir itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Default for Checkout {
    fn default() -> Checkout {
        Checkout {
            enabled: true,
            depth: None,
            submodules: false,
            lfs: false,
            path: None,
        }
    }
}

impl Checkout {
    /// `checkout: false`.
    pub fn off() -> Checkout {
        Checkout {
            enabled: false,
            ..Checkout::default()
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Checkout::default()
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `requires:` of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Requires {
    /// Every need succeeded; a need that did not blocks the job.
    #[default]
    AllSucceeded,
    /// Every need finished: succeeded, failed, exception, blocked or cancelled.
    AllFinished,
}

impl Requires {
    pub fn is_default(&self) -> bool {
        *self == Requires::AllSucceeded
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Requires::AllSucceeded => "all-succeeded",
            Requires::AllFinished => "all-finished",
        }
    }
}

/// `when:` of a job: conditions on the push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct When {
    /// Path patterns (`docs/**`, `*.md`); the job runs if a changed file matches one.
    #[serde(default)]
    pub changed: Vec<String>,
}

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// An artifact a job declares: `{name, path, kind}`; `path` may be a glob in the job dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactDecl {
    pub name: String,
    pub path: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub optional: bool,
}

fn default_kind() -> String {
    "other".to_string()
}

/// Normalizes a job name: lowercase; spaces, `/`, `_` and `.` become `-`; runs of `-`
/// collapse; leading and trailing `-` go. `"Test Linux/opt"` → `"test-linux-opt"`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if matches!(c, ' ' | '/' | '_' | '.' | '\t') {
            '-'
        } else {
            c
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}
