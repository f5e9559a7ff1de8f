//! The v1 wire types: request and response bodies of the `/v1` HTTP API.
//!
//! Shared by the server, the typed client, the node and the CLI so that all of them agree on
//! one shape. Fields are only ever added (with serde defaults), never renamed or removed: a v1
//! client keeps working against every later server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::graph::{ArtifactDecl, Checkout, Graph, JobSpec, LeftOut};
use crate::ids::{GraphId, JobId, NodeId, PushId, RunId};
use crate::job::{JobState, RunState};
use crate::node::NodeProperties;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One line for a person.
    pub error: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /v1/graphs`: a push, with the graph it produced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitGraph {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Who made the commit (`Name <email>`), when the submitter knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The first line of the commit message, when the submitter knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub graph: Graph,
    /// The push this graph belongs to (a decision job submitting it): its jobs join the
    /// push's graph, and repository, branch and revision are the push's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub push: Option<PushId>,
    /// Jobs of `graph` not to schedule now (left out by a `when` filter); they are kept with
    /// the graph, so `lwr trigger` can add them later.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

impl SubmitGraph {
    /// A graph with nothing more said about it.
    pub fn new(graph: Graph) -> SubmitGraph {
        SubmitGraph {
            repository: None,
            branch: None,
            revision: None,
            author: None,
            subject: None,
            graph,
            push: None,
            left_out: Vec::new(),
        }
    }
}

/// `GET /v1/graphs/{id}/spec`: the job definitions of a graph, as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GraphSpec {
    #[schema(value_type = i64)]
    pub graph_id: GraphId,
    /// The push whose graph this is, if it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub push: Option<PushId>,
    /// Every job the lwr.yml defines (for a push: without its decision job, and with the
    /// jobs left out).
    pub graph: Graph,
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

/// `POST /v1/repos`: poll a repository for new heads.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddRepo {
    /// What `git ls-remote` accepts: a URL (`https://`, `ssh://`, `file://`) or a local path.
    pub url: String,
    /// Branch patterns (`main`, `release/*`); none means the repository's default branch.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Seconds between polls (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
}

/// `PATCH /v1/repos/{id}`: change what is polled and how often; an absent field stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EditRepo {
    /// New branch patterns (replacing the old ones); empty means the default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<String>>,
    /// New seconds between polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
}

/// A polled repository and how polling it goes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepoInfo {
    pub id: i64,
    pub url: String,
    pub branches: Vec<String>,
    pub every_secs: u64,
    /// `new` (not polled yet), `ok`, or `failing` (see `error` and `retry_at`).
    pub state: String,
    /// Polls failed in a row.
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339: when a failing repository is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// RFC 3339 time of the last poll this server made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled_at: Option<String>,
    pub pushes: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepoList {
    pub repos: Vec<RepoInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A push: one new head of a polled branch, with the graph its decision job fills.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushInfo {
    #[schema(value_type = i64)]
    pub id: PushId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_id: Option<i64>,
    pub repository: String,
    pub branch: String,
    pub revision: String,
    /// The revision of the previous push on the branch: changed files are relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The previous push on the same repository and branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub previous: Option<PushId>,
    #[schema(value_type = i64)]
    pub graph_id: GraphId,
    /// True once the decision job submitted the graph.
    pub decided: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushList {
    pub pushes: Vec<PushInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/pushes/{id}/trigger`: add a job the push's graph defines but did not run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerRequest {
    /// The job's (normalized) name.
    pub job: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerResult {
    /// Ids of the jobs added: the triggered job first, then the needs it was missing.
    #[schema(value_type = Vec<i64>)]
    pub jobs: Vec<JobId>,
}

/// Counts of a graph's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateCounts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub exception: u64,
    pub blocked: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Pending => &mut self.pending,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Failed => &mut self.failed,
            JobState::Exception => &mut self.exception,
            JobState::Blocked => &mut self.blocked,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    pub fn total(&self) -> u64 {
        self.pending
            + self.running
            + self.succeeded
            + self.failed
            + self.exception
            + self.blocked
            + self.cancelled
    }

    /// Every job reached a terminal state.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

/// A graph and where its jobs stand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GraphInfo {
    #[schema(value_type = i64)]
    pub id: GraphId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Who made the pushed commit, when its submitter said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The first line of the pushed commit's message, when its submitter said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub counts: StateCounts,
    /// True when no job is pending or running.
    pub finished: bool,
    /// Server change counter at the time of the answer; pass it back as `after` to long-poll
    /// for the next change.
    pub seq: i64,
    /// RFC 3339: when its first run started; absent while none has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339: when its last run ended, once the graph is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `GET /v1/graphs` answer: the newest graphs first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GraphList {
    pub graphs: Vec<GraphInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A job in listings (`GET /v1/jobs`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    #[schema(value_type = i64)]
    pub id: JobId,
    #[schema(value_type = i64)]
    pub graph_id: GraphId,
    pub name: String,
    pub state: JobState,
    /// Name of the node that holds or held the latest run.
    pub node: Option<String>,
    /// Number of runs (attempts) so far.
    pub runs: u32,
    /// Why the job is in its state, when there is more to say (exit code, blocked by, waiting
    /// for a node with ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the latest run went to its node (`affinity: last success of build on main`,
    /// `fastest matching`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// RFC 3339: when the latest run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339: when the latest run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// For a ready job that no usable node can run now: why (`no node matches: os=plan9
    /// (n1 has linux)`), as also said in `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cannot_start: Option<String>,
}

/// `GET /v1/jobs` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One run (attempt) of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    #[schema(value_type = i64)]
    pub id: RunId,
    /// 1 for the first attempt.
    pub number: u32,
    pub state: RunState,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Bytes of stored log (0 until the node uploads it).
    pub log_size: u64,
    /// Why the run went to its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
}

/// `GET /v1/jobs/{id}`: a job with its spec and every run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub info: JobInfo,
    pub spec: JobSpec,
    #[schema(value_type = Vec<i64>)]
    pub needs: Vec<JobId>,
    pub run_history: Vec<RunInfo>,
}

/// `POST /v1/nodes`: a node announces itself (again, after a restart: same name, same node).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterNode {
    pub name: String,
    pub properties: NodeProperties,
    /// Jobs it runs at once.
    pub slots: u32,
}

/// A node as the server sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    #[schema(value_type = i64)]
    pub id: NodeId,
    pub name: String,
    pub properties: NodeProperties,
    pub slots: u32,
    /// `idle`, `busy`, `lost`, `unhealthy`, `disabled`, `quarantined` or `draining`: what
    /// an operator made of it first, then its health, then what it is doing.
    pub state: String,
    /// Runs it holds now.
    pub running: u32,
    /// RFC 3339 time of its last request.
    pub last_seen: String,
    /// Why it is disabled, quarantined, draining or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Its latest runs that ended in infrastructure errors, in a row.
    #[serde(default)]
    pub infra_errors: u32,
}

/// `POST /v1/nodes/{name}/state`: take a node out of the pool or put it back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetNodeState {
    /// `enabled`, `disabled`, `quarantined` or `draining`.
    pub state: crate::pool::NodeState,
    /// Shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `draining`: the node drains for a reimage (`lwr nodes reimage`) and then runs
    /// its `--reimage-command` instead of its reboot command.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reimage: bool,
}

/// `POST /v1/nodes/{name}/labels`: set tags on a node, as an operator (`speed`, `instance`
/// ...); an empty value removes the tag.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelNode {
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/nodes` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/nodes/{id}/claim`: ask for up to `max` jobs, waiting up to `wait_ms` for one.
/// A node that just finished runs sends their results along (recorded first, in the same
/// transaction as the claim), saving a round trip per job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimRequest {
    pub max: u32,
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<RunResult>,
    /// How many of `max` are beyond the node's free slots: jobs it would keep until a slot
    /// frees (claiming ahead). A claim that found nothing and waited takes only its free
    /// slots' worth (at least one) while another node's claim waits too, so that a job does
    /// not wait behind this node's running jobs while that node idles. Added in 0.2; 0 when
    /// absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ahead: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Work handed to a node: one run of one job. The node holds a lease on it that it must
/// renew (heartbeat) within `lease_secs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    pub run_number: u32,
    #[schema(value_type = i64)]
    pub job_id: JobId,
    pub job_name: String,
    #[schema(value_type = i64)]
    pub graph_id: GraphId,
    pub command: String,
    #[schema(value_type = BTreeMap<String, String>)]
    pub env: crate::graph::Env,
    pub timeout_secs: u64,
    pub lease_secs: u64,
    #[serde(default)]
    pub artifacts: Vec<ArtifactDecl>,
    /// Each job this one needs, with the location of its manifest on the server
    /// (`/v1/runs/{id}/manifest`). The node writes it to the file named by `$LWR_MANIFESTS`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manifests: BTreeMap<String, String>,
    /// `keep_workdir: true`: the name of a directory the node keeps for this job (of this
    /// repository and branch) between runs, so a run on the node that built the job last
    /// finds its previous work. `None`: a fresh, empty directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_dir: Option<String>,
    /// On a server with `--auth`: the token the job gets as `$LWR_TOKEN` (for `lwr fetch`),
    /// allowed to read (scope `read`) while this run is running, and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `timestamps: true` in lwr.yml: every line of the log starts with its time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
    /// The commit the job is for, when its graph came from a repository: the node checks
    /// it out into the job dir (unless `checkout: false`) and names it in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<JobSource>,
    /// `buildbot:` of the job: a bridge node starts this build on its Buildbot master
    /// instead of running `command` (which is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildbot: Option<crate::buildbot::BuildbotJob>,
    /// The longest log the server keeps (its `--max-log-size`): the node stops a job whose
    /// log grows beyond it and cuts the log there, with a line saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_bytes: Option<u64>,
}

/// `PUT /v1/bundles/{revision}` answer: a git bundle the server keeps for nodes that cannot
/// read the repository a push came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleInfo {
    pub revision: String,
    /// Bytes.
    pub size: u64,
}

/// Where a job's graph came from, and how the node checks it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobSource {
    /// The repository as the push named it: a URL, or a path on the machine `lwr push` ran
    /// on (then the server may hold a bundle of the commit: `GET /v1/bundles/{revision}`).
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit (full hash); `None` for a push of a directory that is not a git
    /// repository, which is not checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision of the previous push on the branch, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<String>,
    /// The push, for a graph of a polled push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_id: Option<PushId>,
    /// The job's `checkout:`.
    #[serde(default)]
    pub checkout: Checkout,
}

impl JobSource {
    /// The job's environment variables about its commit: `LWR_REPOSITORY`, `LWR_BRANCH`,
    /// `LWR_REVISION`, `LWR_BASE_REVISION`, `LWR_PUSH_ID` (those that are known).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("LWR_REPOSITORY", self.repository.clone())];
        let known = [
            ("LWR_BRANCH", self.branch.clone()),
            ("LWR_REVISION", self.revision.clone()),
            ("LWR_BASE_REVISION", self.base_revision.clone()),
            ("LWR_PUSH_ID", self.push_id.map(|p| p.to_string())),
        ];
        env.extend(known.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        env
    }
}

/// `PUT /v1/runs/{id}/manifest`: the node's part of a run's manifest, sent after the run's
/// artifacts. The server adds the job and run fields and the artifacts' locations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ManifestUpload {
    /// Names of the artifacts the node uploaded for the run; each must be stored.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Declared artifacts the run did not produce.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub missing: Vec<crate::manifest::MissingArtifact>,
    /// What the job wrote to `$LWR_EXTRA`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `PUT /v1/runs/{id}/artifacts` without `sha256` (answer 202): the bytes are received and
/// hashed but staged, not stored: nothing is visible until the uploader commits them with
/// the hash it computed itself (`POST /v1/runs/{id}/artifact-commits`). This lets a node
/// hash a file while sending it, reading it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StagedArtifact {
    /// Names the staged upload in the commit.
    pub upload: String,
    pub name: String,
    /// Bytes received.
    pub size: u64,
    /// SHA-256 of the bytes received, 64 lowercase hex digits.
    pub sha256: String,
}

/// `POST /v1/runs/{id}/artifact-commits`: stores a staged upload if `sha256` (the
/// uploader's own hash of what it sent) matches what the server received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactCommit {
    /// `upload` of the [`StagedArtifact`] answer.
    pub upload: String,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    pub assignments: Vec<Assignment>,
    /// One answer per result sent with the claim.
    #[serde(default)]
    pub acks: Vec<ResultAck>,
}

/// `POST /v1/nodes/{id}/heartbeat`: renews the leases of the runs the node holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    #[schema(value_type = Vec<i64>)]
    pub runs: Vec<RunId>,
    /// Why the node's health check fails; absent when healthy (or it has none). An unhealthy
    /// node claims nothing and no job waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    /// The node is stopping: its claim waiting on this server ends now, answered with no
    /// job, and its claims take none for 10 s or until it registers again. A stopping node waits for
    /// that answer instead of hanging up on it, so that no job the server hands out in that
    /// moment is left to wait out its lease. Added in 0.2; false when absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub lease_secs: u64,
    /// An operator asked the node to reboot (`lwr nodes reboot`): it claims nothing more,
    /// finishes its running jobs, then runs its reboot command (or exits for its
    /// supervisor to restart it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reboot: bool,
    /// With `reboot`: the operator asked for a reimage (`lwr nodes reimage`): the node runs
    /// its reimage command instead of its reboot command.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reimage: bool,
    /// Runs the node holds that are no longer its own (lease expired, cancelled): it must
    /// kill them and not report them.
    #[schema(value_type = Vec<i64>)]
    pub abandon: Vec<RunId>,
}

/// How a run ended, as the node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit or timeout: the job's own fault, not retried.
    Failed,
    /// The node could not run it (spawn error, work dir error): retried while retries remain.
    Exception,
}

/// One finished run, reported by its node (`POST /v1/nodes/{id}/results`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunResult {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The job marked its node bad (`lwr node-bad REASON`): the server quarantines the node
    /// with this reason when it records the result; the run ends as it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_bad: Option<String>,
    /// An exception the server's side caused (its storage refused what the run left): it
    /// does not count as the node's infrastructure error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_fault: bool,
    /// With an exception: the node never started the run. It claimed the job ahead, for
    /// the next slot to free, and gives it back because none freed in time (or the node is
    /// stopping). The job goes back to the queue without spending a retry, and the node is
    /// not counted an infrastructure error. Ignored with any other outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unstarted: bool,
}

impl RunResult {
    /// The result of `run_id` that ended in an exception (the node's trouble, not the
    /// job's) for `reason`.
    pub fn exception(run_id: RunId, reason: impl Into<String>) -> RunResult {
        RunResult {
            run_id,
            outcome: Outcome::Exception,
            exit_code: None,
            reason: Some(reason.into()),
            node_bad: None,
            server_fault: false,
            unstarted: false,
        }
    }

    /// The result of `run_id` that exited 0.
    pub fn succeeded(run_id: RunId) -> RunResult {
        RunResult {
            run_id,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
            node_bad: None,
            server_fault: false,
            unstarted: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportResults {
    pub results: Vec<RunResult>,
}

/// The server's answer per reported run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultAck {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    /// True when the result is recorded (now or by an earlier report of the same result).
    /// False when the run is no longer the node's to report (its lease expired): the node
    /// drops it.
    pub recorded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportAck {
    pub acks: Vec<ResultAck>,
}

/// What `POST /v1/jobs/{id}/cancel` or `POST /v1/graphs/{id}/cancel` stopped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelResult {
    /// Jobs that were pending or running and are now cancelled.
    pub jobs: u64,
    /// Runs that were going; their nodes kill them at their next heartbeat.
    pub runs: u64,
}

/// `POST /v1/gc`: remove (or list) the graphs retention would remove now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GcRequest {
    /// Only say what would be removed.
    #[serde(default)]
    pub dry_run: bool,
    /// Remove graphs with no activity for this many seconds; the server's `--keep` when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_secs: Option<u64>,
}

/// What `POST /v1/gc` removed (or, a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GcResult {
    pub dry_run: bool,
    /// Graphs with no activity since this time (ms since the Unix epoch) went (or would go).
    pub before_ms: i64,
    /// Graphs removed; `graph_ids` lists the first [`GC_LISTED`] of them.
    pub graphs: u64,
    #[schema(value_type = Vec<i64>)]
    pub graph_ids: Vec<GraphId>,
    pub jobs: u64,
    pub runs: u64,
    pub pushes: u64,
    pub artifacts: u64,
}

/// Most graph ids a [`GcResult`] lists.
pub const GC_LISTED: usize = 1000;

/// `PUT /v1/graphs/{id}/keep` and `PUT /v1/jobs/{id}/keep`: whether retention leaves the
/// graph (or the job's graph) alone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeepRequest {
    pub keep: bool,
}

/// `POST /v1/jobs/{id}/retrigger`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RetriggerRequest {
    /// Also run again every job that depends on this one.
    #[serde(default)]
    pub with_dependents: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetriggerResult {
    /// Ids of the jobs put back in the queue, the retriggered one first.
    #[schema(value_type = Vec<i64>)]
    pub jobs: Vec<JobId>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub database: String,
}
