//! `lwr checkout`: a revision of a repository into a directory, through the node's clone
//! cache. Decision jobs run it before `lwr graph --submit`.
//!
//! The cache holds one bare mirror per repository URL. A mirror is cloned once and then
//! only fetched when it lacks the revision; the job's directory is a `--shared` clone of it
//! (no object copies). A file lock per mirror serializes the decision jobs of one node that
//! use it, so concurrent jobs never fetch into the same mirror at once. Automatic gc is off
//! in mirrors: it could prune objects a shared clone still uses.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

use crate::cli::CheckoutArgs;

pub fn run(args: CheckoutArgs) -> anyhow::Result<ExitCode> {
    if args.url.is_empty() || args.revision.is_empty() {
        bail!("give the repository URL and the revision");
    }
    let how = match &args.cache {
        Some(cache) => cached_clone(cache, &args.url, &args.revision, &args.dir)?,
        None => {
            git(
                None,
                &[
                    "clone",
                    "--quiet",
                    "--no-checkout",
                    "--",
                    &args.url,
                    &path(&args.dir),
                ],
            )?;
            "plain clone, no cache"
        }
    };
    git(
        Some(&args.dir),
        &["checkout", "--quiet", "--detach", &args.revision],
    )?;
    outln!(
        "checked out {} of {} into {} ({how})",
        crate::output::short(&args.revision),
        args.url,
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes `dir` a shared clone of the cache's mirror of `url`, which has `revision`.
fn cached_clone(
    cache: &Path,
    url: &str,
    revision: &str,
    dir: &Path,
) -> anyhow::Result<&'static str> {
    let mirrors = cache.join("git");
    std::fs::create_dir_all(&mirrors)
        .with_context(|| format!("cannot create the clone cache {}", mirrors.display()))?;
    let name = mirror_name(url);
    let mirror = mirrors.join(format!("{name}.git"));
    let lock_path = mirrors.join(format!("{name}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let how = if !mirror.join("HEAD").is_file() {
        let tmp = mirrors.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove the stale {}", tmp.display()))?;
        }
        git(
            None,
            &["clone", "--quiet", "--mirror", "--", url, &path(&tmp)],
        )?;
        git(Some(&tmp), &["config", "gc.auto", "0"])?;
        std::fs::rename(&tmp, &mirror)
            .with_context(|| format!("cannot move the new mirror to {}", mirror.display()))?;
        "cloned into the cache"
    } else if has_commit(&mirror, revision) {
        "from the cache"
    } else {
        git(Some(&mirror), &["fetch", "--quiet", "--prune", "origin"])?;
        "fetched into the cache"
    };
    if !has_commit(&mirror, revision) {
        // Not on any branch any more (force-pushed away): ask for it by name.
        let _ = git(Some(&mirror), &["fetch", "--quiet", "origin", revision]);
        if !has_commit(&mirror, revision) {
            bail!("{url} has no commit {revision}");
        }
    }
    git(
        None,
        &[
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            &path(&mirror),
            &path(dir),
        ],
    )?;
    drop(lock);
    Ok(how)
}

fn has_commit(repo: &Path, revision: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["cat-file", "-e", &format!("{revision}^{{commit}}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A readable, unique directory name for a URL: its last parts and a hash of all of it.
fn mirror_name(url: &str) -> String {
    let tail: String = url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{tail}-{hash:016x}")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs git (in `dir`, when given), failing with its stderr.
fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn mirror_names_are_readable_and_distinct() {
        let a = mirror_name("https://example.com/org/app.git");
        assert!(a.starts_with("app-"), "{a}");
        assert_ne!(a, mirror_name("https://example.com/other/app.git"));
        let _: PathBuf = PathBuf::from(mirror_name("file:///tmp/x y"));
    }
}
