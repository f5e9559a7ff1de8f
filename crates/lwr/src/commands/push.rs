//! `lwr push`: submit the graph of a repository's HEAD (or `--rev`), and optionally wait
//! for it. The commit goes to the server too, as a git bundle, for nodes that cannot read
//! the repository's directory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::Context;
use lwr_client::Client;
use lwr_model::Graph;
use lwr_model::api::SubmitGraph;

use super::graph::{GRAPH_FILE, read_working_tree};
use crate::cli::PushArgs;
use crate::output::short;

pub async fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let (repo, rev) = (args.repo.clone(), args.rev.clone());
    let (for_bundle, runtime) = (client.clone(), tokio::runtime::Handle::current());
    // The commit's bundle is made while its lwr.yml is read: both are git's work (a few
    // processes each, some milliseconds apiece), which a push would otherwise wait for in turn.
    // Only its quick first part: the packing waits until the graph was read without error
    // (`go`), so that a push refused for its lwr.yml does not wait for it.
    let (go, packing) = tokio::sync::oneshot::channel();
    let read = tokio::task::spawn_blocking(move || {
        let mut bundle = None;
        let sub = read_head(&repo, rev.as_deref(), |revision| {
            let (repo, revision) = (repo.clone(), revision.to_string());
            bundle = Some(runtime.spawn(make_bundle(for_bundle, repo, revision, packing)));
        });
        (sub, bundle)
    });
    let (sub, bundle) = read.await.context("reading the graph failed")?;
    let sub = sub?;
    // Before the graph: a node on another machine may claim its first job at once.
    if let (Some(bundle), Some(revision)) = (bundle, &sub.revision) {
        let _ = go.send(());
        upload_commit(&client, &args.repo, revision, bundle).await;
    }
    release_freed_memory();
    let revision = sub.revision.clone();
    // Sent as it is written: a 100,000-job graph's JSON (~35 MB) never exists whole.
    let info = client.submit_graph_streamed(Arc::new(sub)).await?;
    outln!(
        "pushed graph {} ({}{})",
        info.id,
        lwr_model::words::count(info.counts.total(), "job", "jobs"),
        revision
            .as_deref()
            .map(|r| format!(" at {}", short(r)))
            .unwrap_or_default()
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(super::watch::watch(&client, info, &args.watch).await)
}

/// Hands the memory freed by reading lwr.yml back to the system before the request's JSON is
/// made: glibc keeps what the parse thread freed (its own arena) otherwise, ~25 MB of a
/// 100,000-job push's peak.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the system.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The graph in `repo`'s lwr.yml as committed at `rev` (HEAD when `None`), with the push's
/// revision and branch. A directory that is not a git repository is pushed from its
/// working tree. `resolved` learns the revision as soon as it is known.
fn read_head(
    repo: &Path,
    rev: Option<&str>,
    resolved: impl FnOnce(&str),
) -> anyhow::Result<SubmitGraph> {
    let repository = std::fs::canonicalize(repo)
        .with_context(|| format!("cannot find repository {}", repo.display()))?
        .display()
        .to_string();
    let head = git(repo, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]);
    if let Some(rev) = rev {
        return read_revision(repo, repository, rev, head.as_deref(), resolved);
    }
    let Some(revision) = head else {
        eprintln!(
            "note: {} is not a git repository with commits; pushing its working tree",
            repo.display()
        );
        let graph = read_working_tree(repo)?;
        return Ok(SubmitGraph {
            repository: Some(repository),
            branch: None,
            revision: None,
            author: None,
            subject: None,
            graph,
            push: None,
            left_out: Vec::new(),
        });
    };
    resolved(&revision);
    let at = Revision {
        repository,
        revision,
        rev: "HEAD",
        is_head: true,
    };
    at_revision(repo, at, || head_branch(repo))
}

/// The graph of `rev` (a branch, tag or commit): its branch is `rev` when that is a branch,
/// else the one HEAD is on.
fn read_revision(
    repo: &Path,
    repository: String,
    rev: &str,
    head: Option<&str>,
    resolved: impl FnOnce(&str),
) -> anyhow::Result<SubmitGraph> {
    let revision = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .with_context(|| format!("{} has no commit '{rev}'", repo.display()))?;
    resolved(&revision);
    let name = rev.strip_prefix("refs/heads/").unwrap_or(rev);
    let branch = || {
        let is_branch = git(
            repo,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{name}"),
            ],
        )
        .is_some();
        match is_branch {
            true => Some(name.to_string()),
            false => head_branch(repo),
        }
    };
    let at = Revision {
        repository,
        is_head: head == Some(revision.as_str()),
        revision,
        rev,
    };
    at_revision(repo, at, branch)
}

/// The branch HEAD is on; `None` when it is detached.
fn head_branch(repo: &Path) -> Option<String> {
    git(repo, &["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD")
}

/// `lwr graph` reads the working tree's lwr.yml and a push the committed one: say so when
/// they differ, before a user wonders why the pushed graph is not the one they see.
fn warn_uncommitted(repo: &Path) {
    let status = git(
        repo,
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            GRAPH_FILE,
        ],
    );
    if status.is_some_and(|s| !s.trim().is_empty()) {
        eprintln!(
            "warning: {GRAPH_FILE} in {} has uncommitted changes; pushing the committed \
             version (commit them to push them)",
            repo.display()
        );
    }
}

/// The commit a push reads its graph from.
struct Revision<'a> {
    /// The repository's directory, canonical.
    repository: String,
    revision: String,
    /// What the user named it, for messages.
    rev: &'a str,
    /// Whether it is the commit checked out (whose lwr.yml may differ from the file's).
    is_head: bool,
}

/// The push of `at` with its committed lwr.yml, on the branch `branch` finds. What else git
/// is asked (the branch, the author, whether lwr.yml has uncommitted changes) is asked beside
/// the read, each a process of its own: one after another they were most of a small push's
/// wait.
fn at_revision(
    repo: &Path,
    at: Revision<'_>,
    branch: impl FnOnce() -> Option<String> + Send,
) -> anyhow::Result<SubmitGraph> {
    let Revision {
        repository,
        revision,
        rev,
        is_head,
    } = at;
    let (branch, (author, subject), graph) = std::thread::scope(|s| {
        let warned = is_head.then(|| s.spawn(|| warn_uncommitted(repo)));
        let branch = s.spawn(branch);
        let author = s.spawn(|| commit_author(repo, &revision));
        let graph = committed_graph(repo, &revision, rev);
        if let Some(warned) = warned {
            joined(warned);
        }
        (joined(branch), joined(author), graph)
    });
    Ok(SubmitGraph {
        repository: Some(repository),
        branch,
        revision: Some(revision),
        author,
        subject,
        graph: graph?,
        push: None,
        left_out: Vec::new(),
    })
}

/// A scoped thread's answer; its panic goes on in the caller.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The graph of lwr.yml as committed at `revision` (named `rev` in messages).
fn committed_graph(repo: &Path, revision: &str, rev: &str) -> anyhow::Result<Graph> {
    let spec = format!("{revision}:./{GRAPH_FILE}");
    // Its size says it is there (and whether it is too big) before it is read.
    let bytes = git(repo, &["cat-file", "-s", &spec])
        .and_then(|size| size.trim().parse::<usize>().ok())
        .with_context(|| {
            format!(
                "{rev} ({}) of {} has no {GRAPH_FILE}; commit one first",
                short(revision),
                repo.display()
            )
        })?;
    let label = format!("{GRAPH_FILE}@{}", short(revision));
    super::stream::parse_committed(repo, &spec, bytes, &label)
}

/// A commit's author (`Name <email>`) and message subject, for the pushes page.
pub(super) fn commit_author(repo: &Path, revision: &str) -> (Option<String>, Option<String>) {
    let Some(out) = git(repo, &["log", "-1", "--format=%an <%ae>%n%s", revision]) else {
        return (None, None);
    };
    let mut lines = out
        .lines()
        .map(|l| Some(l.to_string()).filter(|l| !l.is_empty()));
    (lines.next().flatten(), lines.next().flatten())
}

/// A bundle of the pushed commit in its temp dir (which goes when it is dropped).
type Bundle = (tempfile::TempDir, PathBuf);

/// Makes a bundle of `revision` unless the server has one: nodes that cannot read the
/// repository's directory (on another machine) fetch the commit from it. `None` when the
/// server has one or cannot be asked (a server that is down, or refuses the token, refuses
/// the push just after, with the error that matters). The packing of its history waits
/// for `go`; without it (the push failed) there is no bundle.
async fn make_bundle(
    client: Client,
    repo: PathBuf,
    revision: String,
    go: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<Bundle>> {
    use lwr_node::checkout::{prepare_bundle, write_bundle};
    if client.has_bundle(&revision).await.unwrap_or(true) {
        return Ok(None);
    }
    let tmp = tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir()?;
        prepare_bundle(&repo, &revision, &tmp.path().join("scratch"))?;
        anyhow::Ok(tmp)
    })
    .await??;
    if go.await.is_err() {
        return Ok(None);
    }
    let made = tokio::task::spawn_blocking(move || {
        let bundle = tmp.path().join("push.bundle");
        write_bundle(&tmp.path().join("scratch"), &bundle)?;
        anyhow::Ok((tmp, bundle))
    })
    .await??;
    Ok(Some(made))
}

/// Uploads the bundle `making` makes. A failure is only a warning, since nodes that can read
/// the directory do not need it.
async fn upload_commit(
    client: &Client,
    repo: &Path,
    revision: &str,
    making: tokio::task::JoinHandle<anyhow::Result<Option<Bundle>>>,
) {
    let uploaded = async {
        let Some((_tmp, bundle)) = making.await?? else {
            return Ok(());
        };
        client.upload_bundle(revision, &bundle).await?;
        anyhow::Ok(())
    };
    if let Err(e) = uploaded.await {
        eprintln!(
            "warning: cannot upload the commit for nodes on other machines ({e}); nodes \
             must be able to read {}",
            repo.display()
        );
    }
}

/// Runs git in `repo`; `None` when git fails.
pub(super) fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // In place: the output may be a 30 MiB lwr.yml, not to be held twice.
    let mut text = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    text.truncate(text.trim_end_matches('\n').len());
    Some(text)
}
