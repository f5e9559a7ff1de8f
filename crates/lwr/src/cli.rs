//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lwr_model::{GraphId, PushId};

/// lwr: a lightweight CI and release job scheduler.
///
/// A small server keeps graphs, jobs and runs; nodes long-poll it for jobs and run them
/// detached; graphs of jobs live in each repository's lwr.yml.
#[derive(Debug, Parser)]
#[command(
    name = "lwr",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        lwr graph --repo .                 check lwr.yml offline\n  \
        lwr dev --nodes 2                  a server and two nodes on this machine\n  \
        lwr push --repo . --wait           run the graph of HEAD and wait for it\n  \
        lwr jobs --json                    every job and its state\n  \
        lwr logs 1/build                   the log of job build in graph 1\n  \
        lwr repos add URL --branch main    poll a repository; each new head is a push\n  \
        lwr trigger docs --push 3          run a job push 3's graph left out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// On an error, also show the HTTP request and status behind it.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the /v1 API, the queue, and the store.
    Server(ServerArgs),
    /// Run a node that claims jobs from a server and runs them.
    Node(NodeArgs),
    /// Run a laptop cluster: a server and N nodes in one process, SQLite in the data dir.
    Dev(DevArgs),
    /// Read lwr.yml, expand and validate its graph, and print it (no server needed).
    Graph(GraphArgs),
    /// Submit the graph of a repository's HEAD to the server.
    Push(PushArgs),
    /// Watch a graph until it ends: its jobs as they start, end and fail.
    Watch(WatchArgs),
    /// List graphs, newest first: repository, branch, revision, state, counts, times.
    Graphs(GraphsArgs),
    /// List jobs and their states.
    Jobs(JobsArgs),
    /// Show one job: its spec, runs, placement, manifest and the end of its log.
    Show(ShowArgs),
    /// Print a job's log: the stored log of its latest run, or with -f the log as it is
    /// written (replayed from the start, then followed until the run ends).
    Logs(LogsArgs),
    /// List the nodes the server knows.
    Nodes(NodesArgs),
    /// Download an artifact named in a manifest and check its sha256. Inside a job:
    /// NEED/ARTIFACT (a job this one needs, via $LWR_MANIFESTS); elsewhere JOB/ARTIFACT,
    /// JOB being an id (42/installer) or GRAPH/NAME (3/build/installer).
    Fetch(FetchArgs),
    /// Print the manifest of a job's latest run (or of --run N).
    Manifest(ManifestArgs),
    /// List the artifacts of a job's latest run (or of --run N).
    Artifacts(ArtifactsArgs),
    /// Stop a job (or every job of a graph) that has not ended; dependents are blocked.
    Cancel(CancelArgs),
    /// Remove graphs with no activity for a while (the server's --keep, or --older-than)
    /// now, with their jobs, runs, pushes, logs and artifacts; --dry-run lists them.
    Gc(GcArgs),
    /// Mark a job (and so its graph), or a graph, for retention to leave alone.
    Keep(KeepArgs),
    /// Run an ended job again as a new run, optionally with everything that depends on it.
    Retrigger(RetriggerArgs),
    /// List, add and remove the repositories the server polls for new heads.
    Repos(ReposArgs),
    /// List pushes: new heads found by polling, each with its graph.
    Pushes(PushesArgs),
    /// Add a job that a push's graph defines but did not run, with the needs it is missing.
    Trigger(TriggerArgs),
    /// Check a revision out of the node's clone cache into a directory (decision jobs).
    Checkout(CheckoutArgs),
    /// Run a command with each line of its output (stdout and stderr) prefixed by the time
    /// (what a node started with --timestamps runs jobs under).
    #[command(hide = true)]
    Stamp(StampArgs),
    /// Create, list and revoke access tokens (for `lwr server --auth`).
    Tokens(TokensArgs),
    /// Write an lwr.yml from another CI system's graph (a TaskCluster task graph).
    Import(ImportArgs),
    /// Inside a job: mark the node running it bad. When the job ends (as it ends), the
    /// server quarantines the node with REASON; an operator enables it again.
    #[command(name = "node-bad")]
    NodeBad(NodeBadArgs),
}

/// `lwr node-bad REASON`: writes REASON to the file `$LWR_NODE_BAD` names.
#[derive(Debug, Args)]
pub struct NodeBadArgs {
    /// Why the node is bad, shown as its quarantine reason.
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReposArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    #[command(subcommand)]
    pub action: Option<ReposAction>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReposAction {
    /// Poll a repository: every new head of a wanted branch becomes a push.
    ///
    /// The first poll pushes the current heads. URL is anything git ls-remote accepts; a
    /// local path is made absolute.
    Add(RepoAddArgs),
    /// Stop polling a repository (by URL or id); its pushes stay.
    Remove(RepoRemoveArgs),
    /// Change a polled repository's branches or interval (by URL or id).
    Edit(RepoEditArgs),
}

#[derive(Debug, Args)]
pub struct RepoEditArgs {
    /// The repository's URL, as `lwr repos` shows it, or its id.
    pub repo: String,
    /// Branch name or pattern (main, release/*); repeatable; replaces the current ones.
    #[arg(long = "branch", value_name = "PATTERN")]
    pub branches: Vec<String>,
    /// Poll only the repository's default branch (forget every --branch pattern).
    #[arg(long, conflicts_with = "branches")]
    pub default_branch: bool,
    /// Time between polls.
    #[arg(long, value_parser = parse_duration)]
    pub every: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RepoAddArgs {
    /// The repository: a URL git can read (https://..., ssh://..., git@host:path), a local
    /// path or its file:// form (both are the same repository). It must be readable now.
    pub url: String,
    /// Branch name or pattern (main, release/*); repeatable. Default: the repository's
    /// default branch (what its HEAD names).
    #[arg(long = "branch", value_name = "PATTERN")]
    pub branches: Vec<String>,
    /// Time between polls.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub every: Duration,
}

#[derive(Debug, Args)]
pub struct RepoRemoveArgs {
    /// The repository's URL, as `lwr repos` shows it, or its id.
    pub repo: String,
}

#[derive(Debug, Args)]
pub struct PushesArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Only pushes of this repository (id).
    #[arg(long)]
    pub repo: Option<i64>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub action: TokensAction,
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Create a token and print its secret, once; the server keeps only its hash.
    ///
    /// With --data-dir or --db the token is written straight into the database (no server
    /// needed): that is how the first admin token is made. Otherwise the server makes it,
    /// and the caller's token needs the `admin` scope.
    #[command(after_help = "Examples:\n  \
        lwr tokens create --data-dir /var/lib/lwr --scope admin\n  \
        lwr tokens create --scope node:register --label build-01 --expires 90d\n  \
        lwr tokens create --scope graph:submit read job:cancel")]
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(TokenListArgs),
    /// Revoke a token: it stops working at once.
    Revoke(TokenRevokeArgs),
}

/// Where token commands act: the server (with an admin token), or the database directly.
#[derive(Debug, Clone, Args)]
pub struct TokenTarget {
    /// The lwr server's URL, or several sharing a database separated by commas (the next is
    /// used when one cannot be reached).
    #[arg(long, env = "LWR_SERVER", default_value = lwr_client::DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token with the `admin` scope.
    #[arg(long, env = "LWR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Open the SQLite database of this data dir directly instead of asking a server.
    #[arg(long, conflicts_with = "db")]
    pub data_dir: Option<PathBuf>,
    /// Open this database directly (postgres://... or sqlite://...).
    #[arg(long)]
    pub db: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub target: TokenTarget,
    /// Scopes: graph:submit, job:cancel, job:retrigger, node:register, node:admin,
    /// repo:admin, read, admin. Repeatable; several may follow one --scope.
    #[arg(long, required = true, num_args = 1.., value_parser = parse_scope)]
    pub scope: Vec<lwr_model::Scope>,
    /// Lifetime, e.g. 30d or 12h; default never expires.
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    /// Who or what holds the token, for `lwr tokens list`.
    #[arg(long)]
    pub label: Option<String>,
    /// The one node name a node:register token may register (default: the first it does).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// The job's name in the push's graph.
    pub job: String,
    /// The push whose graph defines the job.
    #[arg(long)]
    pub push: PushId,
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// Repository URL or path.
    pub url: String,
    /// The commit to check out.
    pub revision: String,
    /// Directory to create.
    pub dir: PathBuf,
    /// Clone cache: bare mirrors kept between jobs. Default LWR_CACHE_DIR (set by the node);
    /// without either, a plain clone.
    #[arg(long, env = "LWR_CACHE_DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub target: TokenTarget,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub target: TokenTarget,
    /// Token id, from `lwr tokens list`.
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME.
    #[arg(required_unless_present = "graph", conflicts_with = "graph")]
    pub job: Option<String>,
    /// Cancel every job of this graph that has not ended.
    #[arg(long)]
    pub graph: Option<GraphId>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove graphs with no activity for this long (default: the server's --keep); 0s:
    /// every ended graph not marked keep.
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeepArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME.
    #[arg(required_unless_present = "graph", conflicts_with = "graph")]
    pub job: Option<String>,
    /// Keep this graph.
    #[arg(long)]
    pub graph: Option<GraphId>,
    /// Remove the mark: retention may remove it again.
    #[arg(long)]
    pub off: bool,
}

#[derive(Debug, Args)]
pub struct RetriggerArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME.
    pub job: String,
    /// Also run again every job that depends on it.
    #[arg(long)]
    pub with_dependents: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServerConn {
    /// The lwr server's URL, or several sharing a database separated by commas (the next is
    /// used when one cannot be reached).
    #[arg(long, env = "LWR_SERVER", default_value = lwr_client::DEFAULT_SERVER, global = true)]
    pub server: String,
    /// Bearer token for a server that runs with --auth.
    #[arg(long, env = "LWR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (first line): kept out of every environment
    /// and command line, where a job of the same user could read it.
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Data dir of a `lwr dev --auth` cluster: its admin.token is used when no token is given.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, or HOST:PORT (localhost:7370).
    #[arg(long, default_value = "127.0.0.1:7370", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Directory for the SQLite database and stored logs.
    #[arg(long, default_value = "./.lwr")]
    pub data_dir: PathBuf,
    /// Database URL (postgres://...); default SQLite in the data dir.
    #[arg(long, env = "LWR_DB")]
    pub db: Option<String>,
    /// A run whose node stops renewing it for this long ends as `exception` and is retried.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// A node not heard from for this long is `lost`: it gets no work, and no job waits
    /// for it (its runs end when their leases do).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub node_lost_after: Duration,
    /// Quarantine a node whose last N runs ended in infrastructure errors; 0: never.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub quarantine_after: u32,
    /// Where nodes come from: static (they register themselves), local (`lwr node`
    /// processes on this machine, started and stopped with the work), command
    /// (--provider-up and --provider-down scripts).
    #[arg(long, default_value = "static", value_parser = ["static", "local", "command"])]
    pub provider: String,
    /// Fewest nodes the provider keeps (0: none while idle).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub provider_min: u32,
    /// Most nodes the provider starts.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub provider_max: u32,
    /// A provided node that ran nothing for this long is stopped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub provider_idle: Duration,
    /// Slots of each provided node.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub provider_slots: u32,
    /// `--provider local`: run its nodes, and so their jobs, as this user (the server must
    /// run as root); default the server's own user, whose files its jobs can then read.
    #[arg(long, value_name = "USER")]
    pub provider_user: Option<String>,
    /// `--provider command`: starts a node named $LWR_NODE_NAME for $LWR_SERVER with
    /// $LWR_NODE_SLOTS slots (with --auth, $LWR_TOKEN is the token it registers with).
    #[arg(long, value_name = "CMD")]
    pub provider_up: Option<String>,
    /// `--provider command`: stops node $LWR_NODE_NAME.
    #[arg(long, value_name = "CMD")]
    pub provider_down: Option<String>,
    /// Serve on a non-loopback address without authentication. Anyone who can reach the
    /// server can then run commands on every node: only for networks you fully trust.
    #[arg(long, conflicts_with = "auth")]
    pub insecure_no_auth: bool,
    /// Where artifacts live: dir (under the data dir), dir:///path, or s3://bucket/prefix
    /// (configured by the usual AWS_* variables, e.g. AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
    #[arg(long, env = "LWR_ARTIFACT_STORE", default_value = "dir")]
    pub artifact_store: String,
    /// How long artifacts are kept when their job sets no `expires`.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub artifact_expires: Duration,
    /// How often expired artifacts are deleted.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub artifact_sweep: Duration,
    /// Remove graphs (with their jobs, runs, pushes, logs and artifacts) after this long
    /// without activity, unless marked with `lwr keep`; 0 or off: never.
    #[arg(long, default_value = "90d", value_parser = parse_keep)]
    pub keep: Duration,
    /// Largest artifact a node may upload: bytes, or with a K, M or G suffix.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub max_artifact_size: u64,
    /// Longest log kept of a run: bytes, or with a K, M or G suffix. A longer one is stored
    /// cut there, with a line saying so, and its node stops the job.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub max_log_size: u64,
    /// Require a bearer token on every request but /v1/health, /v1/openapi.json and the
    /// manifest schema; make the
    /// first one with `lwr tokens create --data-dir DIR --scope admin` (`lwr dev --auth`
    /// makes its own, in DIR/admin.token). Allows any address.
    #[arg(long)]
    pub auth: bool,
    /// The URL clients reach this server at, when a proxy stands in between
    /// (https://ci.example.com/lwr): artifact locations in manifests start with it.
    /// Default: http:// and the Host each request names.
    #[arg(long, value_name = "URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Node name, unique per server; default the hostname.
    #[arg(long)]
    pub name: Option<String>,
    /// A property for job requirements: key=value, or a bare key meaning key=true. Repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Jobs run at once; default the number of cores.
    #[arg(long)]
    pub slots: Option<u32>,
    /// Where job directories, logs and unreported results live.
    #[arg(long, default_value = "./.lwr-node")]
    pub work_dir: PathBuf,
    /// Start every line of every job's log with the UTC time it was written
    /// (2026-11-28T12:00:00.123Z); the job then runs under `lwr stamp`.
    #[arg(long)]
    pub timestamps: bool,
    /// Shell command run before each claim; while it fails (non-zero exit, or over 60 s)
    /// the node claims nothing and the server shows it `unhealthy`.
    #[arg(long, value_name = "CMD")]
    pub health_check: Option<String>,
    /// Shell command run after `lwr nodes reboot` drained the node (e.g. `sudo reboot`);
    /// without one the node exits with code 75 for its supervisor to restart it.
    #[arg(long, value_name = "CMD")]
    pub reboot_command: Option<String>,
    /// Shell command run after `lwr nodes reimage` drained the node (e.g. a script that
    /// reinstalls the machine); without one the node exits with code 75 as for a reboot.
    #[arg(long, value_name = "CMD")]
    pub reimage_command: Option<String>,
    /// Keep this much space free on the work dir's disk: below it the node claims no jobs
    /// (and shows unhealthy, saying so) until there is room again; 0 turns the check off.
    #[arg(long, value_name = "MB", default_value_t = 100)]
    pub min_free_mb: u64,
    /// Bridge to the Buildbot master at URL: the node runs only `buildbot:` jobs, as builds
    /// forced through its `lwr` scheduler (packaging/buildbot/lwr.cfg). Credentials come from
    /// LWR_BUILDBOT_USER and LWR_BUILDBOT_PASSWORD, never from the command line. Slots
    /// default to 32 (builds run on Buildbot's workers, not here).
    #[arg(long, value_name = "URL")]
    pub buildbot: Option<String>,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Nodes to start beside the server, named dev-1, dev-2, ...
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Slots per node; default the number of cores.
    #[arg(long)]
    pub slots: Option<u32>,
    /// Start every line of every job's log with the UTC time it was written.
    #[arg(long)]
    pub timestamps: bool,
}

/// `lwr stamp -- COMMAND...`: what a node with --timestamps runs a job under.
#[derive(Debug, Args)]
pub struct StampArgs {
    /// The job's command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GraphArgs {
    #[command(subcommand)]
    pub action: Option<GraphAction>,
    /// Repository whose lwr.yml to read (the working tree, committed or not).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Print the expanded graph as JSON.
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Submit the graph to the server (what a decision job does), after validating it.
    #[arg(long)]
    pub submit: bool,
    /// With --submit: the push the graph belongs to. Jobs whose `when` filter matches no
    /// file changed since --base are left out.
    #[arg(long, requires = "submit")]
    pub push: Option<PushId>,
    /// With --submit: the revision changed files are counted from (the previous push);
    /// empty or absent means the commit's parent.
    #[arg(long, requires = "submit")]
    pub base: Option<String>,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Debug, Subcommand)]
pub enum GraphAction {
    /// Compare two graphs: added, removed and changed jobs and edges.
    ///
    /// OLD and NEW are each a JSON file from `lwr graph --json`, a directory holding an
    /// lwr.yml, or a git revision of --repo (e.g. HEAD~1 HEAD).
    Diff(GraphDiffArgs),
}

#[derive(Debug, Args)]
pub struct GraphDiffArgs {
    /// The graph before: a revision of --repo (HEAD~1), a directory with an lwr.yml, or a
    /// file from `lwr graph --json`.
    #[arg(required_unless_present_any = ["push", "buildbot"], conflicts_with_all = ["push", "buildbot"])]
    pub old: Option<String>,
    /// The graph after, in the same forms as OLD.
    #[arg(required_unless_present_any = ["push", "buildbot"])]
    pub new: Option<String>,
    /// Compare this push's graph with the previous push's on the same branch.
    #[arg(long)]
    pub push: Option<PushId>,
    #[command(flatten)]
    pub conn: ServerConn,
    /// Repository whose revisions OLD and NEW name.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compare the graph at --revision with the builds this Buildbot master ran for that
    /// revision (builder names normalized like job names); exit 1 when they differ.
    #[arg(
        long,
        value_name = "URL",
        requires = "revision",
        conflicts_with = "push"
    )]
    pub buildbot: Option<String>,
    /// The revision of --repo to compare with Buildbot (with --buildbot).
    #[arg(long, value_name = "REV", requires = "buildbot")]
    pub revision: Option<String>,
}

// `lwr import`: kept together, so that merging other subcommands stays simple.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: ImportSource,
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// Convert a task graph made by taskcluster-taskgraph into an lwr.yml: one job per task.
    ///
    /// FILE is task-graph.json or full-task-graph.json (a decision task's artifacts), or the
    /// output of `taskgraph full --json`; `-` reads standard input. What lwr cannot express
    /// (scopes, routes, caches, features, ...) is listed in a comment above each job and
    /// summed up at the end; see docs/migrating.md.
    #[command(after_help = "Examples:\n  \
        taskgraph full --json | lwr import taskgraph - --out lwr.yml\n  \
        lwr import taskgraph full-task-graph.json --dry-run-commands --out lwr.yml")]
    Taskgraph(TaskgraphImportArgs),
}

#[derive(Debug, Args)]
pub struct TaskgraphImportArgs {
    /// The task graph's JSON file, or - for standard input.
    pub file: PathBuf,
    /// Write the lwr.yml here (refusing to replace a file unless --force); default: standard
    /// output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Make every command `true` and drop node requirements and artifacts: the graph's shape,
    /// to try on `lwr dev`.
    #[arg(long)]
    pub dry_run_commands: bool,
    /// Leave out tasks whose payload lwr does not understand, and every task depending on
    /// them, instead of failing.
    #[arg(long)]
    pub skip_unsupported: bool,
    /// Also write the report as JSON: per job what was not imported, clashes, tasks left out.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Repository whose HEAD to push.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Push this revision (a branch, tag or commit) instead of HEAD.
    #[arg(long, value_name = "REF")]
    pub rev: Option<String>,
    /// Wait for the graph to finish, showing its jobs as they go (as `lwr watch` does);
    /// exit 0 only if every job succeeded.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub watch: WatchOpts,
}

/// How `lwr watch` and `lwr push --wait` watch.
#[derive(Debug, Clone, Args)]
pub struct WatchOpts {
    /// Give up watching after this long (e.g. 90s, 20m) with exit code 124; the graph
    /// goes on.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Cancel the rest of the graph as soon as a job fails.
    #[arg(long)]
    pub fail_fast: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 every job succeeded, 1 a job did not, 2 a usage or \
    server error, 124 --timeout ran out, 130 interrupted (the graph goes on).\n\n\
    Examples:\n  \
    lwr watch latest                   the newest graph\n  \
    lwr watch 12 --timeout 30m         give up after 30 minutes\n  \
    lwr watch 12 --fail-fast           cancel the rest on the first failure"
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Graph id, or `latest`.
    pub graph: GraphRef,
    #[command(flatten)]
    pub watch: WatchOpts,
}

/// A graph named on the command line: its id, or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphRef {
    Id(GraphId),
    Latest,
}

impl std::str::FromStr for GraphRef {
    type Err = String;
    fn from_str(s: &str) -> Result<GraphRef, String> {
        if s == "latest" {
            return Ok(GraphRef::Latest);
        }
        s.parse()
            .map(GraphRef::Id)
            .map_err(|_| format!("'{s}' is not a graph: use a graph id (12) or latest"))
    }
}

#[derive(Debug, Args)]
pub struct GraphsArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Show at most this many graphs.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: u32,
    /// Print JSON (`{"graphs": [...]}`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    lwr jobs --graph latest              the newest graph's jobs\n  \
    lwr jobs --state failed --limit 10   the last ten failures\n  \
    lwr jobs --name 'build-*' --json     matrix jobs, as JSON")]
pub struct JobsArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Only jobs of this graph: its id, or `latest`.
    #[arg(long, value_name = "ID|latest")]
    pub graph: Option<GraphRef>,
    /// Only jobs in this state (pending, running, succeeded, failed, exception, blocked,
    /// cancelled); repeatable, or comma-separated.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_job_state)]
    pub state: Vec<lwr_model::JobState>,
    /// Only jobs whose name matches this glob (`build-*`).
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only the newest N jobs that match (default without --graph: the recent graphs, whole:
    /// about the newest 1000 jobs).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub limit: Option<u32>,
    /// Every job that matches, oldest first, read from the server a page at a time.
    #[arg(long)]
    pub all: bool,
    /// Print JSON (`{"jobs": [...]}`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME (e.g. 3/build).
    pub job: String,
    /// Lines of the log to show.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub tail: usize,
    /// Print the job as JSON (spec, needs and runs).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME (e.g. 3/build).
    pub job: String,
    /// Run number; default the latest run.
    #[arg(long)]
    pub run: Option<u32>,
    /// Follow: print the log so far, then new output as the job writes it, until the run
    /// ends (a retried job's next run follows). Exits 1 when the run failed, else 0.
    #[arg(short, long)]
    pub follow: bool,
    /// Stream the running job's log to the server even with nobody watching (on), or only
    /// while someone follows it (off, the default). With -f, set first, then follow.
    #[arg(long, value_name = "on|off")]
    pub live: Option<Toggle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

/// What `lwr nodes` does to one node; nothing lists them all.
#[derive(Debug, Subcommand)]
pub enum NodesAction {
    /// Let the node finish its running jobs and claim no more.
    Disable(NodeStateArgs),
    /// Put the node back in the pool (and forget its infrastructure errors).
    Enable(NodeStateArgs),
    /// Take the node out of the pool as unhealthy, like automatic quarantine does.
    Quarantine(NodeStateArgs),
    /// Set operator labels (tags) on the node: speed=10, instance=spot; key= removes one.
    Label(NodeLabelArgs),
    /// Drain the node (finish running jobs, claim no more), then have it run its
    /// --reboot-command or exit for its supervisor to restart it.
    Reboot(NodeStateArgs),
    /// Drain the node (finish running jobs, claim no more), then have it run its
    /// --reimage-command or exit for its supervisor to restart it.
    Reimage(NodeStateArgs),
}

#[derive(Debug, Args)]
pub struct NodeStateArgs {
    /// Node name (or id).
    pub name: String,
    /// Why, shown in listings.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeLabelArgs {
    /// Node name (or id).
    pub name: String,
    /// KEY=VALUE labels; KEY alone means KEY=true (as `lwr node --tag`); KEY= removes the label.
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// NEED/ARTIFACT inside a job; JOB/ARTIFACT outside one.
    pub artifact: String,
    /// Where to write it (replacing what is there); default the last part of the
    /// artifact's name in the current directory, which must not exist yet.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME (e.g. 3/build).
    pub job: String,
    /// Run number; default the latest run.
    #[arg(long)]
    pub run: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    #[command(flatten)]
    pub conn: ServerConn,
    /// Job id, or GRAPH/NAME (e.g. 3/build).
    pub job: String,
    /// Run number; default the latest run.
    #[arg(long)]
    pub run: Option<u32>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `123`, `10K`, `5M`, `2G` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.trim().split_at(i),
        None => (s.trim(), ""),
    };
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KB" | "KiB" => 10,
        "M" | "m" | "MB" | "MiB" => 20,
        "G" | "g" | "GB" | "GiB" => 30,
        _ => return Err(format!("bad size '{s}': use e.g. 500M or 10G")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size '{s}': use e.g. 500M or 10G"))?;
    n.checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("bad size '{s}': must be more than 0 and fit in 64 bits"))
}

fn parse_job_state(s: &str) -> Result<lwr_model::JobState, String> {
    lwr_model::JobState::parse(s.trim()).ok_or_else(|| {
        let known: Vec<&str> = lwr_model::JobState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!("unknown state '{s}': one of {}", known.join(", "))
    })
}

fn parse_scope(s: &str) -> Result<lwr_model::Scope, String> {
    s.parse()
}

/// `--keep`: an age (below), or `off` (as 0: never remove).
fn parse_keep(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "off" => Ok(Duration::ZERO),
        other => parse_age(other),
    }
}

/// `--older-than`: a duration, zero allowed (`0s`: everything ended so far).
fn parse_age(s: &str) -> Result<Duration, String> {
    let digits = s.trim().trim_end_matches(['s', 'm', 'h', 'd']);
    match !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        true => Ok(Duration::ZERO),
        false => parse_duration(s),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    lwr_model::graph::parse_duration(s).map(Duration::from_secs)
}

/// `--public-url`: a server URL as clients take it, without trailing slashes.
fn parse_public_url(s: &str) -> Result<String, String> {
    lwr_client::server_url(s).map_err(|e| e.to_string())
}

/// `--listen`: an IP address and port, or a host name and port resolved once, to its first
/// IPv4 address if it has one (clients default to 127.0.0.1, not ::1).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("'{s}' is not HOST:PORT or IP:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_ip_or_a_host_name() {
        assert_eq!(
            parse_listen("127.0.0.1:7370"),
            Ok("127.0.0.1:7370".parse().unwrap())
        );
        let local = parse_listen("localhost:7371").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7371, "{local}");
        for bad in ["7370", "localhost", "127.0.0.1:port"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_defaults_are_the_timing_constants() {
        use lwr_model::timing;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        // clap needs its defaults as text; this keeps the text and the constants one.
        let args = Serve::try_parse_from(["lwr"]).unwrap().args;
        assert_eq!(args.lease, timing::DEFAULT_LEASE);
        assert_eq!(args.node_lost_after, timing::DEFAULT_NODE_LOST_AFTER);
        assert_eq!(args.artifact_sweep, timing::DEFAULT_ARTIFACT_SWEEP);
        assert_eq!(args.keep, timing::DEFAULT_KEEP);
        for (text, secs) in [("off", 0), ("0", 0), ("0s", 0), ("00d", 0), ("2d", 172_800)] {
            assert_eq!(parse_keep(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert!(parse_age("s").is_err() && parse_age("-1d").is_err());
    }
}
