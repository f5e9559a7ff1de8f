//! `lwr push`: submit the graph of a repository's HEAD (or `--rev`), and optionally wait
//! for it. The commit goes to the server too, as a git bundle, for nodes that cannot read
//! the repository's directory.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::Context;
use lwr_client::Client;
use lwr_model::api::SubmitGraph;

use super::graph::{GRAPH_FILE, read_working_tree};
use crate::cli::PushArgs;
use crate::output::short;

pub async fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let sub = read_head(&args.repo, args.rev.as_deref())?;
    let client = args.conn.client()?;
    if let Some(revision) = &sub.revision {
        upload_commit(&client, &args.repo, revision).await;
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
/// working tree.
fn read_head(repo: &Path, rev: Option<&str>) -> anyhow::Result<SubmitGraph> {
    let repository = std::fs::canonicalize(repo)
        .with_context(|| format!("cannot find repository {}", repo.display()))?
        .display()
        .to_string();
    let head = git(repo, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]);
    if let Some(rev) = rev {
        return read_revision(repo, repository, rev, head.as_deref());
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
    warn_uncommitted(repo);
    let branch = head_branch(repo);
    at_revision(repo, repository, revision, "HEAD", branch)
}

/// The graph of `rev` (a branch, tag or commit): its branch is `rev` when that is a branch,
/// else the one HEAD is on.
fn read_revision(
    repo: &Path,
    repository: String,
    rev: &str,
    head: Option<&str>,
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
    if head == Some(revision.as_str()) {
        warn_uncommitted(repo);
    }
    let name = rev.strip_prefix("refs/heads/").unwrap_or(rev);
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
    let branch = match is_branch {
        true => Some(name.to_string()),
        false => head_branch(repo),
    };
    at_revision(repo, repository, revision, rev, branch)
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

/// The push of `revision` (named `rev` in messages) with its committed lwr.yml.
fn at_revision(
    repo: &Path,
    repository: String,
    revision: String,
    rev: &str,
    branch: Option<String>,
) -> anyhow::Result<SubmitGraph> {
    let spec = format!("{revision}:./{GRAPH_FILE}");
    // Its size says it is there (and whether it is too big) before it is read.
    let bytes = git(repo, &["cat-file", "-s", &spec])
        .and_then(|size| size.trim().parse::<usize>().ok())
        .with_context(|| {
            format!(
                "{rev} ({}) of {} has no {GRAPH_FILE}; commit one first",
                short(&revision),
                repo.display()
            )
        })?;
    let label = format!("{GRAPH_FILE}@{}", short(&revision));
    let graph = super::stream::parse_committed(repo, &spec, bytes, &label)?;
    let (author, subject) = commit_author(repo, &revision);
    Ok(SubmitGraph {
        repository: Some(repository),
        branch,
        revision: Some(revision),
        author,
        subject,
        graph,
        push: None,
        left_out: Vec::new(),
    })
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

/// Uploads a bundle of `revision` unless the server has one: nodes that cannot read the
/// repository's directory (on another machine) fetch the commit from it. A failure is only
/// a warning, since nodes that can read the directory do not need it.
async fn upload_commit(client: &Client, repo: &Path, revision: &str) {
    // A server that cannot be asked (down, or the token is refused) refuses the push just
    // after, with the error that matters.
    if client.has_bundle(revision).await.unwrap_or(true) {
        return;
    }
    let made = tempfile::tempdir()
        .map_err(anyhow::Error::from)
        .and_then(|tmp| {
            let bundle = tmp.path().join("push.bundle");
            lwr_node::checkout::make_bundle(repo, revision, &tmp.path().join("scratch"), &bundle)?;
            Ok((tmp, bundle))
        });
    let uploaded = match made {
        Ok((_tmp, bundle)) => client
            .upload_bundle(revision, &bundle)
            .await
            .map(drop)
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = uploaded {
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
