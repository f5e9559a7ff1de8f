//! The lwr model: graphs, jobs, runs, nodes, requirements and the v1 wire types.
//!
//! This crate does no I/O. Everything here is plain data and pure functions so that the
//! server, the node, the CLI and the tests agree on one definition of each thing.

pub mod api;
pub mod auth;
pub mod backoff;
pub mod buildbot;
pub mod glob;
pub mod graph;
pub mod ids;
pub mod import;
pub mod iteration;
pub mod job;
pub mod logstream;
pub mod manifest;
pub mod node;
pub mod pool;
pub mod push;
pub mod sync;
pub mod text;
pub mod timing;
pub mod urlpath;
pub mod words;

pub use auth::{Scope, Scopes};
pub use graph::{
    ArtifactDecl, Checkout, Env, Graph, GraphError, JobSpec, Requires, When, normalize_name,
};
pub use ids::{DurationMs, GraphId, JobId, Millis, NodeId, PushId, RunId};
pub use job::{JobState, RunState};
pub use node::{NodeProperties, Requirements};
pub use pool::{NodeState, Prefer};

/// The log target of the events that mark a job's way through a node and the server, one
/// line each (`step <what> <run id>`; the combiner's `turn` and `turned` give the turn's
/// number of claims instead), shown with `LWR_LOG=info,lwr_step=trace`: `bench/steps` reads
/// them to say where a chain step's time goes. Off (the default), each costs one check of
/// the log filter.
pub const STEP_LOG: &str = "lwr_step";

/// The run a step event names for a claim or its answer: the first of `runs` (0: none).
pub fn step_run(mut runs: impl Iterator<Item = RunId>) -> i64 {
    runs.next().map_or(0, RunId::get)
}
