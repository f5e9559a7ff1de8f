//! Polling repositories for new heads. Runs beside the dispatch path, never in it.
//!
//! Each due repository's branch heads are listed: local repositories (a path or `file://`)
//! by reading their refs directly, which costs no process; others with `git ls-remote` under
//! a timeout. When the wanted heads differ from the last poll, the store records one push per
//! head it has not seen (deduplicated in the database, so a restart never pushes twice). A
//! repository that fails is retried with exponential backoff and shown as failing; nothing
//! about one repository stops the others or the poller.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_model::backoff::Backoff;
use lwr_model::push::branch_wanted;
use lwr_model::timing;
use lwr_model::{DurationMs, Millis};
use lwr_store::{PollTarget, now_ms};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::AppState;

/// Longest one `git ls-remote` may take.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Polls in flight at once.
const MAX_IN_FLIGHT: usize = 8;
/// The repository list is read again this often even when nobody changed it here (another
/// server may share the database).
const RELOAD: Duration = Duration::from_secs(30);

/// What the API and the poller share: when each repository was last polled, and a way to
/// tell the poller that the list changed.
#[derive(Default)]
pub struct PollStatus {
    polled_at: Mutex<HashMap<i64, Millis>>,
    changed: Notify,
}

impl PollStatus {
    /// When this server last polled repository `id`.
    pub fn polled_at(&self, id: i64) -> Option<Millis> {
        self.polled_at.lock().ok()?.get(&id).copied()
    }

    /// The repository list changed: look at it now.
    pub fn repos_changed(&self) {
        self.changed.notify_one();
    }

    fn set_polled(&self, id: i64, at: Millis) {
        if let Ok(mut m) = self.polled_at.lock() {
            m.insert(id, at);
        }
    }
}

/// A repository's branch heads: `(branch, revision)` sorted by branch, and the branch its
/// HEAD names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heads {
    pub default_branch: Option<String>,
    pub branches: Vec<(String, String)>,
}

/// One repository as the poller tracks it.
struct Entry {
    target: PollTarget,
    due: Instant,
    in_flight: bool,
    /// Wanted heads recorded by the last successful poll (None: none yet in this life).
    recorded: Option<Vec<(String, String)>>,
}

/// Runs the poller while this server holds the polling duty, starting it again should it
/// ever panic: one bad repository must not end polling for all.
pub(crate) async fn supervise(state: Arc<AppState>) {
    /// Stops the poller when the supervisor is stopped.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut held = state.duties.watch(crate::duty::Duty::Poll);
    loop {
        let held_now = held.wait_for(|held| *held).await.is_ok();
        if !held_now {
            return;
        }
        let mut task = tokio::spawn(poll_repos(state.clone()));
        let _stop = AbortOnDrop(task.abort_handle());
        tokio::select! {
            done = &mut task => match done {
                Ok(()) => return,
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    tracing::error!("the poller failed ({e}); starting it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            // Another server polls now: a poll in flight here is dropped (pushes are
            // deduplicated in the database should it have recorded heads meanwhile).
            _ = async { held.wait_for(|held| !*held).await.is_ok() } => {}
        }
    }
}

/// The poller task: runs until the server stops.
async fn poll_repos(state: Arc<AppState>) {
    let status = state.poll.clone();
    let mut repos: BTreeMap<i64, Entry> = BTreeMap::new();
    let mut polls: JoinSet<Result<Heads, String>> = JoinSet::new();
    // Which repository each poll task is for, so that even a task that panicked frees its
    // repository for the next poll.
    let mut tasks: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut reload_at = Instant::now();
    loop {
        let now = Instant::now();
        if now >= reload_at {
            reload_at = now + RELOAD;
            match state.queue.store().poll_targets().await {
                Ok(targets) => merge(&mut repos, targets),
                Err(e) => tracing::warn!("poller: cannot read repositories: {e}"),
            }
        }
        let mut in_flight = repos.values().filter(|e| e.in_flight).count();
        for (id, entry) in repos.iter_mut() {
            if in_flight >= MAX_IN_FLIGHT {
                break;
            }
            if entry.in_flight || entry.due > now {
                continue;
            }
            entry.in_flight = true;
            in_flight += 1;
            let url = entry.target.url.clone();
            let task = polls.spawn(async move { list_heads(&url).await });
            tasks.insert(task.id(), *id);
        }
        // With every poll slot taken, only a finished poll (or a reload) can start another:
        // waking for a due repository would spin.
        let next = if in_flight >= MAX_IN_FLIGHT {
            reload_at
        } else {
            repos
                .values()
                .filter(|e| !e.in_flight)
                .map(|e| e.due)
                .min()
                .unwrap_or(reload_at)
                .min(reload_at)
        };
        tokio::select! {
            Some(done) = polls.join_next_with_id() => {
                let (task, result) = match done {
                    Ok((task, result)) => (task, result),
                    Err(e) => (e.id(), Err(format!("the poll failed: {e}"))),
                };
                if let Some(id) = tasks.remove(&task) {
                    finish(&state, &mut repos, id, result).await;
                }
            }
            _ = tokio::time::sleep_until(next) => {}
            _ = status.changed.notified() => reload_at = Instant::now(),
        }
    }
}

/// Brings the tracked repositories in line with the database.
fn merge(repos: &mut BTreeMap<i64, Entry>, targets: Vec<PollTarget>) {
    let now = Instant::now();
    let wall = now_ms();
    repos.retain(|id, _| targets.iter().any(|t| t.id == *id));
    for target in targets {
        match repos.get_mut(&target.id) {
            Some(entry) => {
                if entry.target.branches != target.branches {
                    entry.recorded = None;
                }
                // A shorter interval (`lwr repos edit --every`) applies from now.
                if target.every_ms < entry.target.every_ms {
                    entry.due = entry.due.min(now + target.every_ms.to_std());
                }
                entry.target = target;
            }
            None => {
                // A new repository is polled at once; a failing one when its retry is due.
                let due = match target.retry_at {
                    Some(at) if at > wall => now + at.since(wall).to_std(),
                    _ => now,
                };
                repos.insert(
                    target.id,
                    Entry {
                        target,
                        due,
                        in_flight: false,
                        recorded: None,
                    },
                );
            }
        }
    }
}

/// Records the outcome of one poll and schedules the next.
async fn finish(
    state: &AppState,
    repos: &mut BTreeMap<i64, Entry>,
    id: i64,
    result: Result<Heads, String>,
) {
    let Some(entry) = repos.get_mut(&id) else {
        return; // removed while it was polled
    };
    entry.in_flight = false;
    let every = entry.target.every_ms.max(DurationMs(1000)).to_std();
    state.poll.set_polled(id, now_ms());
    let error = match result {
        Ok(heads) => {
            let wanted: Vec<(String, String)> = heads
                .branches
                .into_iter()
                .filter(|(b, _)| {
                    branch_wanted(&entry.target.branches, heads.default_branch.as_deref(), b)
                })
                .collect();
            let healthy = entry.target.polled && entry.target.failures == 0;
            if healthy && entry.recorded.as_ref() == Some(&wanted) {
                entry.due = Instant::now() + every;
                return;
            }
            match state.queue.record_heads(id, &wanted).await {
                Ok(pushes) => {
                    if !pushes.is_empty() {
                        tracing::info!(
                            "{}: {} {pushes:?}",
                            entry.target.url,
                            lwr_model::words::count(pushes.len() as u64, "new push", "new pushes")
                        );
                    }
                    if entry.target.failures > 0 {
                        tracing::info!("{}: polling works again", entry.target.url);
                    }
                    entry.target.polled = true;
                    entry.target.failures = 0;
                    entry.target.retry_at = None;
                    entry.recorded = Some(wanted);
                    entry.due = Instant::now() + every;
                    return;
                }
                Err(e) => format!("recording heads: {e}"),
            }
        }
        Err(e) => e,
    };
    let failures = entry.target.failures.saturating_add(1);
    let delay = backoff(every).pause(failures);
    let retry_at = now_ms().plus(DurationMs::from_std(delay));
    if entry.target.failures == 0 {
        tracing::warn!(
            "{}: poll failed, retrying with backoff: {error}",
            entry.target.url
        );
    }
    entry.target.failures = failures;
    entry.target.retry_at = Some(retry_at);
    entry.due = Instant::now() + delay;
    if let Err(e) = state
        .queue
        .store()
        .record_poll_failure(id, failures, &error, retry_at)
        .await
    {
        tracing::warn!("poller: cannot record the failure of repository {id}: {e}");
    }
}

/// Pauses after failed polls in a row: from the interval up to doubling it per failure,
/// jittered so that repositories failing together (a git host down) are not polled together
/// again; at most [`timing::POLL_RETRY_CAP`], even for a longer interval.
fn backoff(every: Duration) -> Backoff {
    Backoff {
        floor: every.min(timing::POLL_RETRY_CAP),
        cap: timing::POLL_RETRY_CAP,
    }
}

/// The branch heads of the repository at `url`.
pub async fn list_heads(url: &str) -> Result<Heads, String> {
    if let Some(path) = local_path(url) {
        let read = tokio::task::spawn_blocking(move || read_local_heads(&path)).await;
        match read {
            Ok(Ok(Some(heads))) => return Ok(heads),
            // A layout we do not read (reftable): let git answer.
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("reading refs: {e}")),
        }
    }
    ls_remote(url).await
}

/// Whether the repository at `url` can be polled now and has every branch that `branches`
/// names literally (a pattern like `release/*` may match none yet). The error names the
/// field at fault (`url` or `branches`) and what is wrong.
pub(crate) async fn check_repo(
    url: &str,
    branches: &[String],
) -> Result<(), (&'static str, String)> {
    let heads = list_heads(url)
        .await
        .map_err(|e| ("url", format!("cannot read repository {url}: {e}")))?;
    for wanted in branches
        .iter()
        .filter(|b| lwr_model::push::is_literal_branch(b))
    {
        if !heads.branches.iter().any(|(name, _)| name == wanted) {
            let known: Vec<&str> = heads.branches.iter().map(|(n, _)| n.as_str()).collect();
            let known = match known.is_empty() {
                true => "none yet".to_string(),
                false => known.join(", "),
            };
            return Err((
                "branches",
                format!("{url} has no branch '{wanted}' (its branches: {known})"),
            ));
        }
    }
    Ok(())
}

/// The directory of a local repository URL: `file:///path` or an absolute path.
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return rest.starts_with('/').then(|| PathBuf::from(rest));
    }
    url.starts_with('/').then(|| PathBuf::from(url))
}

/// `git ls-remote --symref URL HEAD refs/heads/*`, under a timeout, never prompting.
async fn ls_remote(url: &str) -> Result<Heads, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["ls-remote", "--symref", "--", url, "HEAD", "refs/heads/*"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(LS_REMOTE_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run git ls-remote: {e}")),
        Err(_) => {
            return Err(format!(
                "git ls-remote did not answer within {}s",
                LS_REMOTE_TIMEOUT.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!("git ls-remote failed ({}): {line}", out.status));
    }
    Ok(parse_ls_remote(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ls_remote(text: &str) -> Heads {
    let mut heads = Heads::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once('\t') else {
            continue;
        };
        if let Some(target) = left.strip_prefix("ref: ") {
            if right == "HEAD" {
                heads.default_branch = target.strip_prefix("refs/heads/").map(str::to_string);
            }
        } else if let Some(branch) = right.strip_prefix("refs/heads/") {
            heads.branches.push((branch.to_string(), left.to_string()));
        }
    }
    heads.branches.sort();
    heads
}

/// Reads a local repository's branch heads without running git: `HEAD`, loose refs under
/// `refs/heads` and `packed-refs` (a loose ref wins), also of a linked worktree. `Ok(None)`
/// for a layout this does not read.
fn read_local_heads(path: &Path) -> Result<Option<Heads>, String> {
    let head_dir = git_dir(path)?;
    // A linked worktree (`git worktree add`) has its own HEAD; its branches are in the
    // repository's git dir, which `commondir` names.
    let git_dir = match std::fs::read_to_string(head_dir.join("commondir")) {
        Ok(common) => head_dir.join(common.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => head_dir.clone(),
        Err(e) => {
            return Err(format!(
                "reading {}: {e}",
                head_dir.join("commondir").display()
            ));
        }
    };
    if git_dir.join("reftable").is_dir() {
        return Ok(None);
    }
    let mut branches: BTreeMap<String, String> = BTreeMap::new();
    match std::fs::read_to_string(git_dir.join("packed-refs")) {
        Ok(text) => {
            for line in text.lines() {
                if line.starts_with('#') || line.starts_with('^') {
                    continue;
                }
                if let Some((sha, name)) = line.split_once(' ')
                    && let Some(branch) = name.strip_prefix("refs/heads/")
                    && is_object_id(sha)
                {
                    branches.insert(branch.to_string(), sha.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "reading {}: {e}",
                git_dir.join("packed-refs").display()
            ));
        }
    }
    read_loose(&git_dir.join("refs/heads"), "", &mut branches)?;
    let head = std::fs::read_to_string(head_dir.join("HEAD"))
        .map_err(|e| format!("{} is not a git repository: {e}", path.display()))?;
    let default_branch = head
        .trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_string);
    Ok(Some(Heads {
        default_branch,
        branches: branches.into_iter().collect(),
    }))
}

/// The git directory of a repository at `path`: `path/.git` (a directory, or a file naming
/// one), or `path` itself when it is bare.
fn git_dir(path: &Path) -> Result<PathBuf, String> {
    let dot_git = path.join(".git");
    if dot_git.is_dir() {
        return Ok(dot_git);
    }
    if dot_git.is_file() {
        let text = std::fs::read_to_string(&dot_git)
            .map_err(|e| format!("reading {}: {e}", dot_git.display()))?;
        if let Some(dir) = text.trim().strip_prefix("gitdir: ") {
            return Ok(path.join(dir));
        }
    }
    if path.join("HEAD").is_file() && path.join("refs").is_dir() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    Err(format!("{} is not a git repository", path.display()))
}

fn read_loose(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue; // being written by git: the old value is still the ref
        }
        let full = format!("{prefix}{name}");
        let path = entry.path();
        if path.is_dir() {
            read_loose(&path, &format!("{full}/"), out)?;
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) if is_object_id(text.trim()) => {
                out.insert(full, text.trim().to_string());
            }
            // A symbolic branch or a file removed meanwhile: not a head of its own.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
    }
    Ok(())
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output_is_parsed() {
        let heads = parse_ls_remote(
            "ref: refs/heads/main\tHEAD\nabc\tHEAD\nabc\trefs/heads/main\ndef\trefs/heads/release/1\n",
        );
        assert_eq!(heads.default_branch.as_deref(), Some("main"));
        assert_eq!(
            heads.branches,
            [
                ("main".to_string(), "abc".to_string()),
                ("release/1".to_string(), "def".to_string())
            ]
        );
    }

    #[test]
    fn backoff_grows_from_the_interval_up_to_a_limit() {
        let every = Duration::from_secs(10);
        assert_eq!(backoff(every).delay(1, 0.0), every);
        assert_eq!(backoff(every).delay(1, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(every).delay(3, 1.0), Duration::from_secs(80));
        assert_eq!(backoff(every).delay(40, 1.0), timing::POLL_RETRY_CAP);
        let hourly = backoff(Duration::from_secs(3600));
        assert_eq!(hourly.delay(1, 0.0), timing::POLL_RETRY_CAP);
    }

    #[test]
    fn local_urls() {
        assert_eq!(local_path("file:///r"), Some(PathBuf::from("/r")));
        assert_eq!(local_path("/r"), Some(PathBuf::from("/r")));
        assert_eq!(local_path("https://h/r"), None);
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(dir: &Path, message: &str) {
        let id = ["-c", "user.email=t@t", "-c", "user.name=t"];
        git(
            dir,
            &[&id[..], &["commit", "-q", "--allow-empty", "-m", message]].concat(),
        );
    }

    /// `DIR/r`, a repository on branch main with one commit.
    fn new_repo(dir: &Path) -> PathBuf {
        let repo = dir.join("r");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        commit(&repo, "a");
        repo
    }

    #[tokio::test]
    async fn local_refs_match_what_git_ls_remote_says() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path());
        git(&repo, &["branch", "release/1"]);
        git(&repo, &["pack-refs", "--all"]);
        commit(&repo, "b");
        let url = repo.display().to_string();
        let direct = read_local_heads(&repo).unwrap().unwrap();
        let by_git = ls_remote(&url).await.unwrap();
        assert_eq!(direct, by_git);
        assert_eq!(direct.branches.len(), 2);
        assert_eq!(direct.branches[0].1, git(&repo, &["rev-parse", "main"]));
        // A bare clone reads the same.
        let bare = tmp.path().join("bare.git");
        git(
            tmp.path(),
            &["clone", "-q", "--bare", &url, &bare.display().to_string()],
        );
        assert_eq!(read_local_heads(&bare).unwrap().unwrap(), direct);
        assert!(
            list_heads(&tmp.path().join("nope").display().to_string())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_linked_worktree_reads_the_branches_of_its_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path());
        let wt = tmp.path().join("wt");
        let wt_arg = wt.display().to_string();
        git(&repo, &["worktree", "add", "-q", "-b", "feature", &wt_arg]);
        commit(&wt, "b");
        // One branch loose, one packed: both live in the main repository's git dir.
        git(&repo, &["pack-refs", "--all"]);
        commit(&wt, "c");
        let direct = read_local_heads(&wt).unwrap().unwrap();
        assert_eq!(direct, ls_remote(&wt_arg).await.unwrap());
        assert_eq!(direct.default_branch.as_deref(), Some("feature"));
        assert_eq!(
            direct.branches,
            [
                ("feature".to_string(), git(&wt, &["rev-parse", "HEAD"])),
                ("main".to_string(), git(&repo, &["rev-parse", "HEAD"])),
            ]
        );
    }
}
