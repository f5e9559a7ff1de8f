//! The harness for the integration tests: the real `lwr` binary as processes.
//!
//! A [`Server`] and its [`Node`]s run as child processes, each in its own process group, with
//! SQLite and work dirs in the test's temp dir and the server on a free port. Everything a
//! test starts is killed (SIGKILL to the process group) when it is dropped, together with
//! any job process group a node left running; when a test panics, the drop first prints the
//! tail of each process's log so that a failure explains itself.
//!
//! Waits poll a condition with a deadline ([`wait_until`]) and never stand in for it with a
//! bare sleep.
//!
//! To look into a failure: `LWR_TEST_LOG=debug` sets the processes' log filter (`info`
//! otherwise; a test that gives a process its own `LWR_LOG` keeps it), and `LWR_TEST_KEEP=1` keeps each test's temp dir (`/tmp/lwr-it-*`: the
//! processes' logs, data and work dirs) instead of removing it.

#![allow(dead_code)]

pub mod browser;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lwr_client::{Client, ClientError};
use lwr_model::api::{
    GraphInfo, GraphSpec, Health, JobDetail, JobInfo, JobList, NodeList, PushInfo, PushList,
    RepoList, SubmitGraph,
};
use lwr_model::{GraphId, JobId, JobState, PushId};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The deadline of every wait: generous, because the normal path returns long before.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Longest a single CLI command may take before the test gives up on it.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(50);
/// The lease the tests give the server: how fast a silent node's run expires.
pub const LEASE: &str = "2s";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lwr")
}

/// A port nobody listens on right now (bind port 0, read it, let it go).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A fresh temp dir for one test, removed afterwards unless `LWR_TEST_KEEP` is set.
pub fn tempdir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("lwr-it-")
        .tempdir()
        .expect("creating a temp dir");
    dir.disable_cleanup(std::env::var_os("LWR_TEST_KEEP").is_some());
    dir
}

/// Polls `probe` every 50 ms until it returns `Ok` or `timeout` passes; then panics naming
/// `what` and the last state the probe described in its `Err`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(state) => {
                if start.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{state}");
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------
// Repositories

/// Makes `dir` a git repository on branch `main` whose one commit holds `lwr_yml` as
/// `lwr.yml`. Returns `dir`.
pub fn git_repo(dir: &Path, lwr_yml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("creating the repository dir");
    std::fs::write(dir.join("lwr.yml"), lwr_yml).expect("writing lwr.yml");
    git_init_commit(dir);
    dir.to_path_buf()
}

/// `git init -b main` in `dir` and commit everything in it.
pub fn git_init_commit(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "-m",
            "test graph",
        ],
    );
}

/// Commits everything in repository `dir`; returns the new HEAD.
pub fn git_commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
    );
    git_out(dir, &["rev-parse", "HEAD"])
}

/// Runs git in `dir` and returns its trimmed stdout.
pub fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Quotes a path for a shell command in lwr.yml.
pub fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

// ---------------------------------------------------------------------------------------
// Running the CLI

/// What one run of the CLI did.
pub struct Out {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing everything, unless the command exited 0.
    pub fn assert_success(&self) -> &Out {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics, showing everything, unless the command exited non-zero.
    pub fn assert_failure(&self) -> &Out {
        assert!(!self.success(), "expected a failure from {self}");
        self
    }

    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}) in {self}"))
    }

    /// The graph id from `lwr push`'s first line, `pushed graph N (...)`.
    pub fn pushed_graph(&self) -> GraphId {
        parse_pushed_graph(&self.stdout).unwrap_or_else(|| panic!("no 'pushed graph N' in {self}"))
    }

    /// Checks that stderr is a short error for a person: at most `max_lines` lines, no
    /// panic, no backtrace.
    pub fn assert_clear_error(&self, max_lines: usize) -> &Out {
        self.assert_failure();
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            !lines.is_empty(),
            "expected an error message on stderr in {self}"
        );
        assert!(
            lines.len() <= max_lines,
            "expected at most {max_lines} lines on stderr, got {} in {self}",
            lines.len()
        );
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "Caused by"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr contains '{bad}' in {self}"
            );
        }
        self
    }

    /// Panics unless stderr contains every one of `needles`.
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Out {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "expected '{n}' on stderr in {self}"
            );
        }
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`lwr {}` ({}, {:?})",
            self.args.join(" "),
            self.status,
            self.elapsed
        )?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

pub fn parse_pushed_graph(stdout: &str) -> Option<GraphId> {
    let rest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pushed graph "))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `lwr ARGS` with `LWR_SERVER` set to `server` (when given) and waits for it, at most
/// [`CLI_DEADLINE`].
pub fn lwr_at(server: Option<&str>, args: &[&str]) -> Out {
    program_at(Path::new(bin()), server, args)
}

/// [`lwr_at`] with another `lwr` binary (an earlier release).
pub fn program_at(program: &Path, server: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("LWR_SERVER")
        .env_remove("LWR_TOKEN")
        .env_remove("LWR_DB")
        .env_remove("LWR_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(server) = server {
        cmd.env("LWR_SERVER", server);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning lwr");
    let mut stdout = child.stdout.take().expect("stdout pipe");
    let mut stderr = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for lwr") {
            break status;
        }
        if start.elapsed() > CLI_DEADLINE {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "`lwr {}` did not finish within {CLI_DEADLINE:?}; stdout so far:\n{}\nstderr:\n{}",
                args.join(" "),
                out_reader.join().unwrap_or_default(),
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// `PATH` with the binary under test first, so that jobs can run `lwr fetch`.
pub fn path_with_bin() -> String {
    let dir = Path::new(bin())
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    match std::env::var("PATH") {
        Ok(path) => format!("{dir}:{path}"),
        Err(_) => dir,
    }
}

/// Runs `lwr ARGS` with no `LWR_SERVER` (commands that need no server).
pub fn lwr(args: &[&str]) -> Out {
    lwr_at(None, args)
}

// ---------------------------------------------------------------------------------------
// Processes

/// A long-running `lwr` process (server, node, dev) in its own process group, with its
/// output appended to a log file. Dropping it kills the group, and the job process groups
/// recorded under `node_work_dirs`; when the test is panicking, it prints its log tail first.
pub struct Daemon {
    pub label: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// Work dirs of the nodes this process runs; their journals name running jobs.
    pub node_work_dirs: Vec<PathBuf>,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    /// Another `lwr` binary than the one under test (an earlier release).
    pub program: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    pub fn new(
        label: &str,
        args: Vec<String>,
        log: PathBuf,
        node_work_dirs: Vec<PathBuf>,
    ) -> Daemon {
        Daemon {
            label: label.to_string(),
            args,
            log,
            node_work_dirs,
            env: Vec::new(),
            program: None,
            child: None,
            starts: 0,
        }
    }

    /// Starts the process (again); its output goes to the end of the log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.label);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "=== test harness: start {} of `lwr {}`",
            self.starts,
            self.args.join(" ")
        );
        let err = log.try_clone().expect("cloning the log file handle");
        let program = self.program.clone().unwrap_or_else(|| PathBuf::from(bin()));
        let child = Command::new(program)
            .args(&self.args)
            .env_remove("LWR_SERVER")
            .env_remove("LWR_TOKEN")
            .env_remove("LWR_DB")
            .env_remove("LWR_ARTIFACT_STORE")
            .env("PATH", path_with_bin())
            .env(
                "LWR_LOG",
                std::env::var("LWR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // After the defaults: a test's own LWR_LOG wins.
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.label));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// SIGKILL to the whole process group, and reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM to the process; waits for it to exit within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid().expect("terminate: not running");
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("sending SIGTERM");
        let label = self.label.clone();
        let status = wait_until(&format!("{label} to exit after SIGTERM"), timeout, || {
            self.exited()
                .ok_or_else(|| format!("{label} still running"))
        });
        self.child = None;
        status
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Kills the job process groups recorded in the pid dirs (jobs are detached from their
    /// node, so killing a node leaves them running).
    /// Kills the process groups of jobs a node left running: its journal records each
    /// job's group when it starts and the result when it ends.
    fn kill_jobs(&self) {
        for work_dir in &self.node_work_dirs {
            let mut live = std::collections::BTreeMap::new();
            for entry in journal(work_dir) {
                if let (Some(run), Some(pgid)) = (
                    entry.pointer("/started/run").and_then(|v| v.as_i64()),
                    entry.pointer("/started/pgid").and_then(|v| v.as_i64()),
                ) {
                    live.insert(run, pgid);
                }
                if let Some(run) = entry
                    .pointer("/ended/result/run_id")
                    .and_then(|v| v.as_i64())
                {
                    live.remove(&run);
                }
            }
            for pgid in live.into_values().filter(|p| *p > 1) {
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} log tail ({}) =====\n{}\n===== end of {} log =====",
                self.label,
                self.log.display(),
                self.log_tail(60),
                self.label
            );
        }
        self.kill();
        self.kill_jobs();
    }
}

/// The entries of a node's journal (`WORK/journal.jsonl`), skipping a torn last line; none
/// when the node has not written one.
pub fn journal(work_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(work_dir.join("journal.jsonl"))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The last `lines` lines of a file, or why it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// True while some live (non-zombie) process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
        {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// The typed client, made synchronous

/// `lwr_client::Client` on a private runtime, for reading the server's state.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Api {
    pub fn new(url: &str) -> Api {
        Api::with_token(url, None)
    }

    /// A client that sends `token` as `Authorization: Bearer`.
    pub fn with_token(url: &str, token: Option<&str>) -> Api {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        Api {
            rt,
            client: Client::new(url)
                .expect("a client for the test server")
                .with_token(token.map(str::to_string)),
        }
    }

    pub fn health(&self) -> Result<Health, ClientError> {
        self.rt.block_on(self.client.health())
    }

    /// Runs any client call to completion.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn jobs(&self, graph: Option<GraphId>) -> Result<JobList, ClientError> {
        self.rt.block_on(self.client.jobs(graph))
    }

    pub fn job(&self, id: JobId) -> Result<JobDetail, ClientError> {
        self.rt.block_on(self.client.job(id))
    }

    pub fn job_by_name(&self, graph: GraphId, name: &str) -> Result<JobDetail, ClientError> {
        self.rt.block_on(self.client.job_by_name(graph, name))
    }

    pub fn graph(&self, id: GraphId) -> Result<GraphInfo, ClientError> {
        self.rt
            .block_on(self.client.graph(id, None, Duration::ZERO))
    }

    pub fn nodes(&self) -> Result<NodeList, ClientError> {
        self.rt.block_on(self.client.nodes())
    }

    pub fn log(&self, job: JobId) -> Result<String, ClientError> {
        self.rt
            .block_on(self.client.log(job, None))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn repos(&self) -> Result<RepoList, ClientError> {
        self.rt.block_on(self.client.repos())
    }

    /// Pushes, newest first.
    pub fn pushes(&self) -> Result<PushList, ClientError> {
        self.rt.block_on(self.client.pushes(None))
    }

    pub fn push(&self, id: PushId) -> Result<PushInfo, ClientError> {
        self.rt.block_on(self.client.push(id))
    }

    pub fn graph_spec(&self, graph: GraphId) -> Result<GraphSpec, ClientError> {
        self.rt.block_on(self.client.graph_spec(graph))
    }

    pub fn submit(&self, sub: &SubmitGraph) -> Result<GraphInfo, ClientError> {
        self.rt.block_on(self.client.submit_graph(sub))
    }
}

/// Jobs as a table, for failure messages.
pub fn describe_jobs(jobs: &[JobInfo]) -> String {
    let mut out = String::new();
    for j in jobs {
        out.push_str(&format!(
            "  job {:>3} graph {} {:<14} {:<10} node={:<6} runs={} reason={}\n",
            j.id,
            j.graph_id,
            j.name,
            j.state.as_str(),
            j.node.as_deref().unwrap_or("-"),
            j.runs,
            j.reason.as_deref().unwrap_or("-")
        ));
    }
    if out.is_empty() {
        "  (no jobs)\n".into()
    } else {
        out
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// `lwr server` on a free port with its data dir in the test's temp dir.
pub struct Server {
    pub port: u16,
    pub url: String,
    pub data_dir: PathBuf,
    pub daemon: Daemon,
    /// A client with the admin token when the server checks tokens.
    pub api: Api,
    /// The admin token of a server started with `--auth`.
    pub admin_token: Option<String>,
}

impl Server {
    /// Starts a server with the tests' short lease and waits until it answers.
    pub fn start(dir: &Path) -> Server {
        Server::start_with_lease(dir, LEASE)
    }

    pub fn start_with_lease(dir: &Path, lease: &str) -> Server {
        let data_dir = dir.join("data");
        let data = data_dir.display().to_string();
        let lease = lease.to_string();
        Server::spawn(dir, "server", data_dir, Vec::new(), None, move |listen| {
            vec![
                "server".into(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                data.clone(),
                "--lease".into(),
                lease.clone(),
            ]
        })
    }

    /// `lwr server --db DB` named `label` (its log and data dir are named after it), with
    /// lease `lease`: one of several servers sharing a PostgreSQL database.
    pub fn start_on_db(dir: &Path, label: &str, db: &str, lease: &str) -> Server {
        let data_dir = dir.join(label);
        let data = data_dir.display().to_string();
        let (db, lease) = (db.to_string(), lease.to_string());
        Server::spawn(dir, label, data_dir, Vec::new(), None, move |listen| {
            vec![
                "server".into(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                data.clone(),
                "--db".into(),
                db.clone(),
                "--lease".into(),
                lease.clone(),
            ]
        })
    }

    /// [`Server::start_on_db`] with extra arguments (after the usual ones) and environment:
    /// one server of a fleet (`--artifact-store s3://...` and the S3 variables).
    pub fn start_on_db_with(
        dir: &Path,
        label: &str,
        db: &str,
        lease: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let data_dir = dir.join(label);
        let data = data_dir.display().to_string();
        let (db, lease) = (db.to_string(), lease.to_string());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::spawn_env(dir, label, data_dir, Vec::new(), None, env, move |listen| {
            let mut args: Vec<String> = vec![
                "server".into(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                data.clone(),
                "--db".into(),
                db.clone(),
                "--lease".into(),
                lease.clone(),
            ];
            args.extend(extra.iter().cloned());
            args
        })
    }

    /// A server with extra arguments (after the usual ones) and environment.
    pub fn start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let data_dir = dir.join("data");
        let data = data_dir.display().to_string();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::spawn_env(
            dir,
            "server",
            data_dir,
            Vec::new(),
            None,
            env,
            move |listen| {
                let mut args = vec![
                    "server".into(),
                    "--listen".into(),
                    listen,
                    "--data-dir".into(),
                    data.clone(),
                    "--lease".into(),
                    LEASE.into(),
                ];
                args.extend(extra.iter().cloned());
                args
            },
        )
    }

    /// `lwr dev --nodes N --slots S`: the server and its nodes in one process; nodes are
    /// named dev-1, dev-2, ... with work dirs under DIR/dev/nodes.
    pub fn dev(dir: &Path, nodes: u32, slots: u32) -> Server {
        let data = dir.join("dev").display().to_string();
        Server::dev_at(dir, &data, nodes, slots)
    }

    /// `lwr dev` with `--data-dir DATA` as given (e.g. relative to the test's working dir),
    /// which must name DIR/dev.
    pub fn dev_at(dir: &Path, data: &str, nodes: u32, slots: u32) -> Server {
        let data_dir = dir.join("dev");
        let data = data.to_string();
        let pid_dirs = (1..=nodes)
            .map(|i| data_dir.join("nodes").join(format!("dev-{i}")))
            .collect();
        Server::spawn(dir, "lwr dev", data_dir, pid_dirs, None, move |listen| {
            vec![
                "dev".into(),
                "--nodes".into(),
                nodes.to_string(),
                "--slots".into(),
                slots.to_string(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                data.clone(),
            ]
        })
    }

    /// `lwr server --auth` with a first admin token made offline, as an operator would:
    /// `lwr tokens create --data-dir DIR --scope admin`. `api` sends that token.
    pub fn start_auth(dir: &Path) -> Server {
        Server::start_auth_with(dir, &[])
    }

    /// `lwr server --auth` with extra arguments after the usual ones.
    pub fn start_auth_with(dir: &Path, extra: &[&str]) -> Server {
        let data_dir = dir.join("data");
        let data = data_dir.display().to_string();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let admin = create_token_offline(&data_dir, &["admin"], &[]);
        Server::spawn(
            dir,
            "server",
            data_dir,
            Vec::new(),
            Some(admin),
            move |listen| {
                let mut args = vec![
                    "server".into(),
                    "--auth".into(),
                    "--listen".into(),
                    listen,
                    "--data-dir".into(),
                    data.clone(),
                    "--lease".into(),
                    LEASE.into(),
                ];
                args.extend(extra.iter().cloned());
                args
            },
        )
    }

    /// `lwr dev --auth --nodes N --slots S`: it makes its own tokens and leaves an admin
    /// token in DIR/dev/admin.token, which `api` sends.
    pub fn dev_auth(dir: &Path, nodes: u32, slots: u32) -> Server {
        let data_dir = dir.join("dev");
        let data = data_dir.display().to_string();
        let pid_dirs = (1..=nodes)
            .map(|i| data_dir.join("nodes").join(format!("dev-{i}")).join("pids"))
            .collect();
        let mut server = Server::spawn(
            dir,
            "lwr dev",
            data_dir.clone(),
            pid_dirs,
            None,
            move |listen| {
                vec![
                    "dev".into(),
                    "--auth".into(),
                    "--nodes".into(),
                    nodes.to_string(),
                    "--slots".into(),
                    slots.to_string(),
                    "--listen".into(),
                    listen,
                    "--data-dir".into(),
                    data.clone(),
                ]
            },
        );
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("lwr dev --auth writes admin.token")
            .trim()
            .to_string();
        server.api = Api::with_token(&server.url, Some(&token));
        server.admin_token = Some(token);
        server
    }

    /// Starts `lwr ARGS(127.0.0.1:PORT)` on a free port and waits until it answers.
    fn spawn(
        dir: &Path,
        label: &str,
        data_dir: PathBuf,
        node_work_dirs: Vec<PathBuf>,
        admin_token: Option<String>,
        args: impl Fn(String) -> Vec<String>,
    ) -> Server {
        Server::spawn_env(
            dir,
            label,
            data_dir,
            node_work_dirs,
            admin_token,
            Vec::new(),
            args,
        )
    }

    fn spawn_env(
        dir: &Path,
        label: &str,
        data_dir: PathBuf,
        node_work_dirs: Vec<PathBuf>,
        admin_token: Option<String>,
        env: Vec<(String, String)>,
        args: impl Fn(String) -> Vec<String>,
    ) -> Server {
        let log = dir.join(format!("{}.log", label.replace(' ', "-")));
        // A free port can be taken by someone else before the server binds it: try again.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let mut server = Server {
                port,
                api: Api::with_token(&url, admin_token.as_deref()),
                admin_token: admin_token.clone(),
                url,
                data_dir: data_dir.clone(),
                daemon: Daemon::new(
                    label,
                    args(format!("127.0.0.1:{port}")),
                    log.clone(),
                    node_work_dirs.clone(),
                ),
            };
            server.daemon.env = env.clone();
            server.daemon.start();
            match server.try_wait_ready() {
                Ok(()) => return server,
                Err(e) if e.contains("ddress already in use") || e.contains("cannot listen") => {
                    last = e;
                    server.daemon.kill();
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("could not start {label} on a free port: {last}");
    }

    /// Waits until `GET /v1/health` answers, failing fast if the process exits.
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready() {
            panic!("{e}");
        }
    }

    fn try_wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.daemon.exited() {
                return Err(format!(
                    "{} exited ({status}) before answering; log:\n{}",
                    self.daemon.label,
                    self.daemon.log_tail(30)
                ));
            }
            match self.api.health() {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > DEADLINE => {
                    return Err(format!(
                        "{} did not answer /v1/health within {DEADLINE:?} ({e}); log:\n{}",
                        self.daemon.label,
                        self.daemon.log_tail(30)
                    ));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts again on the same port and data dir, and waits until it answers.
    pub fn restart(&mut self) {
        self.daemon.start();
        self.wait_ready();
    }

    /// Runs the CLI against this server.
    pub fn lwr(&self, args: &[&str]) -> Out {
        lwr_at(Some(&self.url), args)
    }

    /// `lwr push --repo REPO [--wait]`.
    pub fn push(&self, repo: &Path, wait: bool) -> Out {
        let repo = repo.display().to_string();
        let mut args = vec!["push", "--repo", repo.as_str()];
        if wait {
            args.push("--wait");
        }
        self.lwr(&args)
    }

    /// Starts a node of this server named `name` with `slots` slots and `--tag`s.
    pub fn node(&self, dir: &Path, name: &str, slots: u32, tags: &[&str]) -> Node {
        Node::start(dir, &self.url, name, slots, tags)
    }

    /// Starts node `name` of `slots` slots (as [`Server::node`]) and has it run one short
    /// job: after a short run a node claims ahead (crates/lwr-node/src/deck.rs).
    pub fn node_claiming_ahead(&self, dir: &Path, name: &str, slots: u32) -> Node {
        let node = self.node(dir, name, slots, &[]);
        self.wait_node(name);
        let warm = git_repo(
            &dir.join(format!("warm-{name}")),
            "version: 1\ncheckout: false\njobs:\n  warm:\n    run: \"true\"\n",
        );
        self.push(&warm, true).assert_success();
        node
    }

    /// The jobs of a graph (or all), as a table for messages.
    pub fn describe(&self, graph: Option<GraphId>) -> String {
        match self.api.jobs(graph) {
            Ok(list) => describe_jobs(&list.jobs),
            Err(e) => format!("  (cannot list jobs: {e})\n"),
        }
    }

    /// The jobs of a graph by name.
    pub fn jobs(&self, graph: GraphId) -> BTreeMap<String, JobInfo> {
        let list = self
            .api
            .jobs(Some(graph))
            .unwrap_or_else(|e| panic!("listing jobs: {e}"));
        list.jobs.into_iter().map(|j| (j.name.clone(), j)).collect()
    }

    /// A job of a graph with its runs.
    pub fn job(&self, graph: GraphId, name: &str) -> JobDetail {
        self.api.job_by_name(graph, name).unwrap_or_else(|e| {
            panic!(
                "reading job {graph}/{name}: {e}\n{}",
                self.describe(Some(graph))
            )
        })
    }

    /// Waits until no job of the graph is pending or running.
    pub fn wait_finished(&self, graph: GraphId) -> GraphInfo {
        wait_until(
            &format!("graph {graph} to finish"),
            DEADLINE,
            || match self.api.graph(graph) {
                Ok(info) if info.finished => Ok(info),
                Ok(info) => Err(format!("{:?}\n{}", info.counts, self.describe(Some(graph)))),
                Err(e) => Err(format!("cannot read graph {graph}: {e}")),
            },
        )
    }

    /// Waits until job `name` of `graph` is in `state` (on `node`, when given).
    pub fn wait_job(
        &self,
        graph: GraphId,
        name: &str,
        state: JobState,
        node: Option<&str>,
    ) -> JobInfo {
        let what = format!(
            "job {graph}/{name} to be {state}{}",
            node.map(|n| format!(" on {n}")).unwrap_or_default()
        );
        wait_until(&what, DEADLINE, || {
            let list = self
                .api
                .jobs(Some(graph))
                .map_err(|e| format!("cannot list jobs: {e}"))?;
            let found = list
                .jobs
                .iter()
                .find(|j| j.name == name && j.state == state);
            match found {
                Some(j) if node.is_none() || j.node.as_deref() == node => Ok(j.clone()),
                _ => Err(describe_jobs(&list.jobs)),
            }
        })
    }

    /// Waits until `path`, which a job's process writes, exists: the job runs on its node,
    /// not only in the server's eyes (it counts a job running from its claim's commit,
    /// before the node has the answer). Shows `graph`'s jobs while it does not.
    pub fn wait_file(&self, what: &str, path: &Path, graph: GraphId) {
        wait_until(what, DEADLINE, || match path.exists() {
            true => Ok(()),
            false => Err(self.describe(Some(graph))),
        });
    }

    /// Waits until the server knows a node named `name`.
    pub fn wait_node(&self, name: &str) {
        wait_until(&format!("node {name} to register"), DEADLINE, || {
            let nodes = self
                .api
                .nodes()
                .map_err(|e| format!("cannot list nodes: {e}"))?;
            if nodes.nodes.iter().any(|n| n.name == name) {
                Ok(())
            } else {
                Err(format!(
                    "nodes: {:?}",
                    nodes.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
                ))
            }
        })
    }

    /// `lwr jobs --json` (all graphs), parsed.
    pub fn jobs_json(&self) -> serde_json::Value {
        let out = self.lwr(&["jobs", "--json"]);
        out.assert_success();
        out.json()
    }
}

// ---------------------------------------------------------------------------------------
// Node

/// `lwr node` with its work dir at `DIR/NAME`.
pub struct Node {
    pub name: String,
    pub work_dir: PathBuf,
    pub daemon: Daemon,
}

/// `lwr tokens create --data-dir DIR --scope S... EXTRA...` (straight in the database);
/// returns the secret, the last word of the output.
pub fn create_token_offline(data_dir: &Path, scopes: &[&str], extra: &[&str]) -> String {
    let data = data_dir.display().to_string();
    let mut args = vec!["tokens", "create", "--data-dir", data.as_str(), "--scope"];
    args.extend_from_slice(scopes);
    args.extend_from_slice(extra);
    let out = lwr(&args);
    out.assert_success();
    out.stdout
        .split_whitespace()
        .last()
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string()
}

impl Node {
    pub fn start(dir: &Path, server: &str, name: &str, slots: u32, tags: &[&str]) -> Node {
        Node::start_with_token(dir, server, name, slots, tags, None)
    }

    /// A node that sends `token` (scope `node:register`) to a server that checks tokens.
    pub fn start_with_token(
        dir: &Path,
        server: &str,
        name: &str,
        slots: u32,
        tags: &[&str],
        token: Option<&str>,
    ) -> Node {
        let mut extra = Vec::new();
        for t in tags {
            extra.extend(["--tag", t]);
        }
        if let Some(token) = token {
            extra.extend(["--token", token]);
        }
        Node::start_with_args(dir, server, name, slots, &extra)
    }

    /// A node with extra arguments after the usual ones (`--health-check CMD`).
    pub fn start_with_args(
        dir: &Path,
        server: &str,
        name: &str,
        slots: u32,
        extra: &[&str],
    ) -> Node {
        Node::start_with_env(dir, server, name, slots, extra, &[])
    }

    /// A node with extra arguments and extra environment (`LWR_LOG`, which wins over the
    /// harness's own).
    pub fn start_with_env(
        dir: &Path,
        server: &str,
        name: &str,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let work_dir = dir.join(name);
        let mut args = vec![
            "node".to_string(),
            "--server".into(),
            server.into(),
            "--name".into(),
            name.into(),
            "--slots".into(),
            slots.to_string(),
            "--work-dir".into(),
            work_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Node::spawn(dir, name, work_dir, args, env)
    }

    fn spawn(
        dir: &Path,
        name: &str,
        work_dir: PathBuf,
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Node {
        let log = dir.join(format!("node-{name}.log"));
        let mut daemon = Daemon::new(&format!("node {name}"), args, log, vec![work_dir.clone()]);
        daemon.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        daemon.start();
        Node {
            name: name.to_string(),
            work_dir,
            daemon,
        }
    }

    /// SIGKILL to the node's process group (its jobs run in groups of their own).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Result files the node keeps on disk until the server takes them.
    /// Runs whose result the node holds in its journal, not yet acknowledged by the server.
    pub fn unreported_results(&self) -> Vec<i64> {
        let mut pending = std::collections::BTreeSet::new();
        for entry in journal(&self.work_dir) {
            if let Some(run) = entry
                .pointer("/ended/result/run_id")
                .and_then(|v| v.as_i64())
            {
                pending.insert(run);
            }
            if let Some(run) = entry.pointer("/reported/run").and_then(|v| v.as_i64()) {
                pending.remove(&run);
            }
        }
        pending.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// A fresh database of its own on the PostgreSQL server named by `LWR_TEST_POSTGRES_URL`,
/// dropped (with whoever is still connected) when the test ends, passed or failed.
pub struct PgDb {
    pub url: String,
    scratch: lwr_store::scratch::ScratchDb,
}

impl PgDb {
    /// Panics with how to set it up when `LWR_TEST_POSTGRES_URL` is not set: these tests
    /// are `#[ignore]`d, so they only run when asked for.
    pub fn create() -> PgDb {
        let var = lwr_store::scratch::POSTGRES_URL_VAR;
        let admin = std::env::var(var).unwrap_or_else(|_| {
            panic!("set {var} (e.g. postgres://postgres@127.0.0.1:5432/test) to run the PostgreSQL tests")
        });
        let scratch = pg_runtime()
            .block_on(lwr_store::scratch::ScratchDb::create(&admin))
            .unwrap_or_else(|e| panic!("creating a database on {admin}: {e}"));
        PgDb {
            url: scratch.url.clone(),
            scratch,
        }
    }

    /// The database's name on its server.
    pub fn name(&self) -> &str {
        &self.scratch.name
    }

    /// Runs SQL on the database (for what a test does behind the server's back).
    pub fn execute(&self, sql: &str) {
        use sqlx::Connection;
        let url = self.url.clone();
        let sql = sql.to_string();
        pg_runtime().block_on(async move {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }
}

impl PgDb {
    /// The first column of the first row of `sql`, an integer.
    pub fn query_i64(&self, sql: &str) -> i64 {
        use sqlx::{Connection, Row};
        let url = self.url.clone();
        let sql = sql.to_string();
        pg_runtime().block_on(async move {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            row.try_get::<i64, _>(0)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Err(e) = pg_runtime().block_on(self.scratch.drop_db()) {
            eprintln!("could not drop test database {}: {e}", self.scratch.name);
        }
    }
}

fn pg_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}
// A real S3-compatible server

#[path = "../../../lwr-server/tests/support/moto.rs"]
mod moto;
#[allow(unused_imports)] // only the S3 tests use it
pub use moto::Moto;

// ---------------------------------------------------------------------------------------
// Raw HTTP

/// Raw HTTP against a test server, to send what the typed client never would.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

/// An answer: status and JSON body (`serde_json::Value::Null` when there was no body).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            // A fresh connection per request: the server closes one whose body it refused
            // unread, and a reused one would fail the next request.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client"),
            base: base.to_string(),
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("the server answers");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("a body");
            let body = if text.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("{method} {path}: {status} answer is not JSON ({e}): {text}")
                })
            };
            Answer { status, body }
        })
    }
}

/// Asserts a JSON error answer with `status`.
pub fn assert_error(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert!(
        a.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: an error answer has a JSON body with `error`: {a:?}"
    );
}

impl Http {
    /// Sends raw bytes with a content type (or none), to test what a client should not send.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        self.try_send_raw(method, path, token, content_type, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// As [`Http::send_raw`], but a connection the server closed early is an `Err`: a server
    /// may answer 413 and close before a too-large body is all sent.
    pub fn try_send_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| format!("{e:?}"))?;
            let body = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{method} {path}: {status} answer is not JSON ({e}): {text:.200}")
            });
            Ok(Answer { status, body })
        })
    }
}
