//! Running one job: a fresh directory, its own process group, output to a log file on disk.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lwr_model::RunId;
use lwr_model::api::{Outcome, RunResult};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::oneshot;

/// Everything needed to start a job's process.
pub struct Launch {
    pub run_id: RunId,
    pub command: String,
    pub env: BTreeMap<String, String>,
    /// Made ready (emptied or kept, and checked out into) before.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub timeout: Duration,
    /// Run the job under `LWR stamp`, which starts each line of its output with the time.
    pub stamp_with: Option<PathBuf>,
    /// Stop the job once its log is longer (the server's `--max-log-size`).
    pub log_limit: Option<u64>,
}

/// Why a job must stop before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The server says the run is no longer ours.
    Abandoned,
    /// The node is going away (a spot instance being reclaimed): the run ends as an
    /// infrastructure error, to run again elsewhere.
    Interrupted,
}

/// Runs the job to its end and says how it ended. The process runs in its own process
/// group, so a timeout or a stop kills everything it started; `started` learns the group
/// as soon as it exists.
pub async fn run(
    launch: Launch,
    stop: oneshot::Receiver<Stop>,
    started: impl FnOnce(i32),
) -> RunResult {
    let run_id = launch.run_id;
    crate::step("launch", run_id);
    let exception = |reason: String| RunResult::exception(run_id, reason);
    let log = match std::fs::File::create(&launch.log) {
        Ok(f) => f,
        Err(e) => return exception(format!("cannot create log {}: {e}", launch.log.display())),
    };
    let log_err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return exception(format!("cannot share log file: {e}")),
    };
    let mut cmd = command(&launch.command, &launch.env, launch.stamp_with.as_deref());
    // A node started with LWR_TOKEN in its environment must not hand its own token (which
    // can claim and report for it) to every job; a job gets its own in `launch.env`.
    cmd.current_dir(&launch.dir)
        .env_remove("LWR_TOKEN")
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    crate::step("spawn", run_id);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(&launch, run_id, e),
    };
    crate::step("spawned", run_id);
    let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
    if let Some(pgid) = pgid {
        started(pgid.as_raw());
    }
    wait(&launch, child, pgid, stop).await
}

async fn wait(
    launch: &Launch,
    mut child: tokio::process::Child,
    pgid: Option<Pid>,
    stop: oneshot::Receiver<Stop>,
) -> RunResult {
    let run_id = launch.run_id;
    let exception = |reason: String| RunResult::exception(run_id, reason);
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        _ = tokio::time::sleep(launch.timeout) => Ended::TimedOut,
        Ok(why) = stop => Ended::Stopped(why),
        limit = log_outgrows(&launch.log, launch.log_limit) => Ended::LogTooLong(limit),
    };
    match ended {
        Ended::Exited(Ok(status)) => {
            crate::step("exited", run_id);
            // The job's own process is gone; anything it left running in its group goes too.
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            match status.code() {
                Some(0) => RunResult::succeeded(run_id),
                Some(code) => RunResult {
                    node_bad: None,
                    server_fault: false,
                    unstarted: false,
                    run_id,
                    outcome: Outcome::Failed,
                    exit_code: Some(code),
                    reason: Some(format!("exit code {code}")),
                },
                None => RunResult {
                    node_bad: None,
                    server_fault: false,
                    unstarted: false,
                    run_id,
                    outcome: Outcome::Failed,
                    exit_code: None,
                    reason: Some(format!("killed by a signal ({status})")),
                },
            }
        }
        Ended::Exited(Err(e)) => exception(format!("lost track of the job's process: {e}")),
        Ended::TimedOut => {
            terminate(&mut child, pgid).await;
            RunResult {
                node_bad: None,
                server_fault: false,
                unstarted: false,
                run_id,
                outcome: Outcome::Failed,
                exit_code: None,
                reason: Some(format!("timed out after {}", human(launch.timeout))),
            }
        }
        Ended::LogTooLong(limit) => {
            terminate(&mut child, pgid).await;
            RunResult {
                node_bad: None,
                server_fault: false,
                unstarted: false,
                run_id,
                outcome: Outcome::Failed,
                exit_code: None,
                reason: Some(format!(
                    "stopped: its log grew beyond the server's limit of {limit} bytes"
                )),
            }
        }
        Ended::Stopped(Stop::Abandoned) => {
            terminate(&mut child, pgid).await;
            exception("abandoned: the server no longer holds this run for the node".into())
        }
        Ended::Stopped(Stop::Interrupted) => {
            terminate(&mut child, pgid).await;
            exception("spot interruption: the node was shut down while the job ran".into())
        }
    }
}

/// What a failed run's log should end with: why it failed, when the log does not say it
/// already. `ran` is the result as the process ended, `result` the final one (a missing
/// declared artifact fails a run that exited 0). A plain non-zero exit is left out: the
/// job's own output is its explanation.
pub(crate) fn failure_note(ran: &RunResult, result: &RunResult) -> Option<String> {
    if result.outcome != Outcome::Failed {
        return None;
    }
    let mut parts = Vec::new();
    // Timed out or killed by a signal: the job could not say so itself.
    if ran.outcome == Outcome::Failed
        && ran.exit_code.is_none()
        && let Some(why) = &ran.reason
    {
        parts.push(why.clone());
    }
    if result.reason != ran.reason
        && let Some(after) = &result.reason
    {
        let added = match (&ran.reason, ran.outcome) {
            (Some(before), Outcome::Failed | Outcome::Exception) => after
                .strip_prefix(before.as_str())
                .map(|rest| rest.trim_start_matches("; "))
                .unwrap_or(after),
            _ => after,
        };
        if !added.is_empty() {
            parts.push(added.to_string());
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Appends `lwr: NOTE` as the log's last line.
pub(crate) fn append_note(log: &Path, note: &str) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(log)?;
    let len = file.metadata()?.len();
    let mut newline = "";
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            newline = "\n";
        }
    }
    writeln!(file, "{newline}lwr: {note}")
}

/// A command that cannot start is the job's fault, as in a shell: 127 when the program is
/// missing, 126 when it may not run; anything else is the node's problem.
fn not_started(launch: &Launch, run_id: RunId, e: std::io::Error) -> RunResult {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        std::io::ErrorKind::PermissionDenied => 126,
        _ => {
            return RunResult::exception(run_id, format!("cannot start `{}`: {e}", launch.command));
        }
    };
    let _ = std::fs::write(
        &launch.log,
        format!("lwr: cannot start `{}`: {e}\n", launch.command),
    );
    RunResult {
        node_bad: None,
        server_fault: false,
        unstarted: false,
        run_id,
        outcome: Outcome::Failed,
        exit_code: Some(code),
        reason: Some(format!(
            "exit code {code}: cannot start `{}`: {e}",
            launch.command
        )),
    }
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Stopped(Stop),
    /// The log outgrew this many bytes.
    LogTooLong(u64),
}

/// Resolves with `limit` once the log at `path` is longer; never without a limit. A job
/// writes its log itself (it is the job's stdout), so the node looks at its size.
async fn log_outgrows(path: &Path, limit: Option<u64>) -> u64 {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(LOG_SIZE_EVERY);
    loop {
        every.tick().await;
        if std::fs::metadata(path).is_ok_and(|m| m.len() > limit) {
            return limit;
        }
    }
}

/// How often a running job's log size is looked at.
const LOG_SIZE_EVERY: Duration = Duration::from_millis(200);

/// Room kept at the end of a cut log for the line saying so.
const MARKER_ROOM: u64 = 256;

/// Cuts a log longer than `limit` so that it ends, within `limit`, with a line saying so
/// (the server keeps no more anyway, and the node's disk is not the job's to fill).
pub fn cap_log(path: &Path, limit: u64) -> std::io::Result<bool> {
    use std::io::Write;
    let size = std::fs::metadata(path)?.len();
    if size <= limit {
        return Ok(false);
    }
    let cut = limit.saturating_sub(MARKER_ROOM);
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(cut)?;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let marker = lwr_model::logstream::truncation_marker(limit, Some(size - cut));
    file.write_all(&marker.as_bytes()[..marker.len().min(MARKER_ROOM as usize)])?;
    Ok(true)
}

/// SIGTERM to the group, then SIGKILL after a grace period.
async fn terminate(child: &mut tokio::process::Child, pgid: Option<Pid>) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(lwr_model::timing::KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// Builds the process for a job's command. A command made only of plain words runs
/// directly, as make does; anything a shell would interpret goes through `sh -c`.
fn command(line: &str, env: &BTreeMap<String, String>, stamp_with: Option<&Path>) -> Command {
    let (program, args): (PathBuf, Vec<&str>) = match plain_words(line) {
        Some(words) => {
            // A PATH of the job's own is searched by the exec; the node's is searched once.
            let program = match env.get("PATH") {
                Some(path) if Some(path.as_str()) != job_path() => PathBuf::from(words[0]),
                _ => resolve(words[0]),
            };
            (program, words[1..].to_vec())
        }
        None => (PathBuf::from("sh"), vec!["-c", line]),
    };
    match stamp_with {
        Some(lwr) => {
            let mut cmd = Command::new(lwr);
            cmd.arg("stamp").arg("--").arg(program).args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// The PATH a job gets when its env sets none: the node's own, with the directory of the
/// node's binary first, so that `lwr` in a job is the node's lwr even when it is not on
/// the node's PATH (`$LWR_BIN` names the same binary). `None` when neither is known.
pub fn job_path() -> Option<&'static str> {
    static PATH: OnceLock<Option<String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let own = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = own
            .into_iter()
            .chain(std::env::split_paths(&inherited))
            .collect();
        std::env::join_paths(dirs)
            .ok()
            .and_then(|p| p.into_string().ok())
            .filter(|p| !p.is_empty())
    })
    .as_deref()
}

/// Finds a program on the jobs' PATH ([`job_path`]) once and remembers it: a search tries
/// every PATH entry with a failing exec, which adds up over thousands of short jobs.
fn resolve(program: &str) -> PathBuf {
    static FOUND: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let found = FOUND.get_or_init(Default::default);
    if let Some(path) = found.lock().ok().and_then(|m| m.get(program).cloned()) {
        return path;
    }
    let search = job_path()
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let hit = search.and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    match hit {
        Some(path) => {
            if let Ok(mut m) = found.lock() {
                m.insert(program.to_string(), path.clone());
            }
            path
        }
        // Not found: let the spawn fail with the usual error.
        None => PathBuf::from(program),
    }
}

/// The words of a command line with nothing for a shell to interpret: no quotes,
/// variables, globs, redirections, separators, or shell keywords and builtins that differ
/// from a program of the same name.
fn plain_words(line: &str) -> Option<Vec<&str>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !line.chars().all(|c| plain(c) || c == ' ') {
        return None;
    }
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    let first = *words.first()?;
    // An assignment (`A=1 cmd`) and shell builtins need a shell.
    const SHELL_ONLY: &[&str] = &[
        "cd", "exit", "export", "set", "unset", "source", ".", "exec", "eval", "alias", "read",
        "wait", "trap", "ulimit", "umask", "shift", "return", "if", "for", "while", "case",
        "until", "function", "type", "command", "hash", "times", "readonly", "local",
    ];
    if first.contains('=') || SHELL_ONLY.contains(&first) {
        return None;
    }
    Some(words)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Kills a process group a previous life of the node left running.
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Makes `dir` an empty directory, reusing it when it exists: a slot's directory serves
/// job after job, so short jobs do not create and delete a directory each.
pub fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(entry.path())?;
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        Err(e) => Err(e),
    }
}

/// The log file of a run; outside the job dir so it never mixes with the job's files.
pub fn log_path(work_dir: &Path, run_id: RunId) -> PathBuf {
    work_dir.join("logs").join(format!("{run_id}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_the_log_cannot_show_is_noted() {
        let r = |outcome, exit_code, reason: Option<&str>| RunResult {
            node_bad: None,
            server_fault: false,
            unstarted: false,
            run_id: RunId(1),
            outcome,
            exit_code,
            reason: reason.map(String::from),
        };
        let exited = r(Outcome::Failed, Some(4), Some("exit code 4"));
        assert_eq!(
            failure_note(&exited, &exited),
            None,
            "the job explains its exit"
        );
        let ok = r(Outcome::Succeeded, Some(0), None);
        assert_eq!(failure_note(&ok, &ok), None);
        let missing = r(Outcome::Failed, Some(0), Some("artifact 'x' is missing"));
        assert_eq!(
            failure_note(&ok, &missing).as_deref(),
            Some("artifact 'x' is missing")
        );
        let both = r(
            Outcome::Failed,
            Some(4),
            Some("exit code 4; artifact 'x' is missing"),
        );
        assert_eq!(
            failure_note(&exited, &both).as_deref(),
            Some("artifact 'x' is missing")
        );
        let timeout = r(Outcome::Failed, None, Some("timed out after 1s"));
        assert_eq!(
            failure_note(&timeout, &timeout).as_deref(),
            Some("timed out after 1s")
        );
        let retried = r(Outcome::Exception, None, Some("node lost"));
        assert_eq!(failure_note(&retried, &retried), None);
    }

    #[test]
    fn a_note_is_the_last_line_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "partial").unwrap();
        append_note(&log, "timed out after 1s").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "partial\nlwr: timed out after 1s\n"
        );
        let empty = dir.path().join("empty");
        append_note(&empty, "why").unwrap();
        assert_eq!(std::fs::read_to_string(&empty).unwrap(), "lwr: why\n");
    }

    #[test]
    fn plain_commands_skip_the_shell() {
        assert_eq!(plain_words("true"), Some(vec!["true"]));
        assert_eq!(
            plain_words("make -j2 all"),
            Some(vec!["make", "-j2", "all"])
        );
        for shell in [
            "echo $HOME",
            "a && b",
            "exit 3",
            "x > f",
            "echo 'a b'",
            "A=1 env",
            "ls *",
            "cd /",
        ] {
            assert_eq!(plain_words(shell), None, "{shell}");
        }
    }

    async fn run_line(line: &str, timeout: Duration) -> (RunResult, String) {
        let tmp = tempfile::tempdir().unwrap();
        let launch = Launch {
            run_id: RunId(1),
            command: line.to_string(),
            env: [("GREETING".to_string(), "hi".to_string())]
                .into_iter()
                .collect(),
            dir: tmp.path().join("job"),
            log: tmp.path().join("log"),
            timeout,
            stamp_with: None,
            log_limit: None,
        };
        let log = launch.log.clone();
        fresh_dir(&launch.dir).unwrap();
        let (_tx, rx) = oneshot::channel();
        let result = run(launch, rx, |_| {}).await;
        (result, std::fs::read_to_string(log).unwrap_or_default())
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_kept() {
        let (ok, log) = run_line("echo $GREETING; echo err >&2", Duration::from_secs(10)).await;
        assert_eq!(ok.outcome, Outcome::Succeeded);
        assert_eq!(log, "hi\nerr\n");
        let (bad, _) = run_line("exit 3", Duration::from_secs(10)).await;
        assert_eq!((bad.outcome, bad.exit_code), (Outcome::Failed, Some(3)));
        let (missing, log) = run_line("no-such-program-lwr", Duration::from_secs(10)).await;
        assert_eq!(
            (missing.outcome, missing.exit_code),
            (Outcome::Failed, Some(127))
        );
        assert!(log.contains("no-such-program-lwr"));
    }

    #[test]
    fn a_long_log_is_cut_within_the_limit_with_a_line_saying_so() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::write(&log, vec![b'y'; 10_000]).unwrap();
        assert!(!cap_log(&log, 10_000).unwrap(), "a log at the limit stays");
        assert!(cap_log(&log, 4096).unwrap());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.len() <= 4096, "{}", text.len());
        assert!(text.starts_with("yyyy"));
        assert!(
            text.ends_with("log truncated at 4096 bytes, the server's --max-log-size; 6160 more bytes were dropped]\n"),
            "{}",
            &text[3800..]
        );
    }

    #[test]
    fn a_fresh_dir_is_empty_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("slot");
        fresh_dir(&dir).unwrap();
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(dir.join("sub/f"), "x").unwrap();
        std::fs::write(dir.join("g"), "y").unwrap();
        fresh_dir(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let start = std::time::Instant::now();
        let (r, _) = run_line("sleep 30 & sleep 30", Duration::from_millis(300)).await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.reason.unwrap().contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
