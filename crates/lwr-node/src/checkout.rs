//! Checking a job's commit out of the node's clone cache.
//!
//! The cache (`WORK/cache/git`) holds one bare mirror per repository, shared by every job of
//! that repository on the node. A mirror is only fetched into when it lacks the revision a
//! job needs, under a file lock per mirror, so concurrent jobs never fetch into it at once;
//! automatic gc is off in mirrors, since it could prune objects a job's tree still uses.
//! A job's tree borrows the mirror's objects (git alternates, as `git clone --shared` does),
//! so it costs one checkout and no object copies; with `depth` it is a shallow fetch of its
//! own instead. A kept tree (`keep_workdir`) is updated in place: the new revision is checked
//! out over the old one, and untracked files (build outputs) stay.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lwr_model::Checkout;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run git: {0}")]
    NoGit(#[source] std::io::Error),
    #[error("git {args} failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("{repository} has no commit {revision}")]
    NoCommit {
        repository: String,
        revision: String,
    },
}

type Result<T> = std::result::Result<T, CheckoutError>;

/// A repository's mirror in the cache, locked for as long as this lives.
pub struct Mirror {
    path: PathBuf,
    url: String,
    _lock: File,
}

impl Mirror {
    /// Locks the mirror of `url` under `cache` (waiting for another job that holds it), and
    /// creates it, empty, the first time.
    pub fn lock(cache: &Path, url: &str) -> Result<Mirror> {
        let mirrors = cache.join("git");
        std::fs::create_dir_all(&mirrors).map_err(io(&mirrors))?;
        let name = mirror_name(url);
        let path = mirrors.join(format!("{name}.git"));
        let lock_path = mirrors.join(format!("{name}.lock"));
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        if !path.join("HEAD").is_file() {
            // Made aside and renamed: a node stopped half way leaves no broken mirror.
            let tmp = mirrors.join(format!("{name}.tmp"));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            }
            git(None, &["init", "--quiet", "--bare", &show(&tmp)])?;
            for (key, value) in [
                ("remote.origin.url", url),
                ("remote.origin.fetch", "+refs/*:refs/*"),
                ("remote.origin.mirror", "true"),
                ("gc.auto", "0"),
                // A shallow tree (`depth`) fetches its revision by hash.
                ("uploadpack.allowAnySHA1InWant", "true"),
            ] {
                git(Some(&tmp), &["config", key, value])?;
            }
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(Mirror {
            path,
            url: url.to_string(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has(&self, revision: &str) -> bool {
        has_commit(&self.path, revision)
    }

    /// Fetches from the repository until the mirror has `revision`: every ref first (the
    /// next jobs likely need them), then the revision by name (a commit force-pushed away).
    pub fn fetch(&self, revision: &str) -> Result<()> {
        git(Some(&self.path), &["fetch", "--quiet", "--prune", "origin"])?;
        if !self.has(revision) {
            let _ = git(Some(&self.path), &["fetch", "--quiet", "origin", revision]);
        }
        self.check(revision)
    }

    /// Fetches `revision` from a git bundle (as `lwr push` uploads one).
    pub fn fetch_bundle(&self, bundle: &Path, revision: &str) -> Result<()> {
        git(
            Some(&self.path),
            &["fetch", "--quiet", &show(bundle), revision],
        )?;
        self.check(revision)
    }

    fn check(&self, revision: &str) -> Result<()> {
        match self.has(revision) {
            true => Ok(()),
            false => Err(CheckoutError::NoCommit {
                repository: self.url.clone(),
                revision: revision.to_string(),
            }),
        }
    }
}

/// Makes the mirror of `url` have `revision`, fetching only when it lacks it; returns the
/// mirror's path and how the revision was found. The lock is held only meanwhile: making
/// trees from the mirror needs none.
pub fn update_mirror(cache: &Path, url: &str, revision: &str) -> Result<(PathBuf, &'static str)> {
    let mirror = Mirror::lock(cache, url)?;
    if mirror.has(revision) {
        return Ok((mirror.path, "from the cache"));
    }
    mirror.fetch(revision)?;
    Ok((mirror.path, "fetched into the cache"))
}

/// Checks `revision` out of `mirror` into `tree`, which may be missing, empty, or a tree
/// made by an earlier call (a kept job dir): then tracked files follow the new revision
/// and untracked ones stay.
pub fn check_out(mirror: &Path, revision: &str, tree: &Path, how: &Checkout) -> Result<()> {
    if !tree.join(".git").exists() {
        std::fs::create_dir_all(tree).map_err(io(tree))?;
        git(Some(tree), &["init", "--quiet"])?;
        git(Some(tree), &["remote", "add", "origin", &show(mirror)])?;
        if how.depth.is_none() {
            let alternates = tree.join(".git/objects/info/alternates");
            let objects = format!("{}\n", mirror.join("objects").display());
            std::fs::write(&alternates, objects).map_err(io(&alternates))?;
        }
    }
    match how.depth {
        // With the mirror's objects at hand this only writes refs: branches and tags, so
        // `git describe` and `git log origin/main` work in the job.
        None => git(
            Some(tree),
            &[
                "fetch",
                "--quiet",
                "--prune",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )?,
        Some(depth) => git(
            Some(tree),
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                &format!("--depth={depth}"),
                "origin",
                revision,
            ],
        )?,
    }
    git(
        Some(tree),
        &["checkout", "--quiet", "--force", "--detach", revision],
    )?;
    if how.submodules {
        let depth = how.depth.map(|d| format!("--depth={d}"));
        let mut args = vec!["submodule", "update", "--quiet", "--init", "--recursive"];
        args.extend(depth.as_deref());
        git(Some(tree), &args)?;
    }
    if how.lfs {
        git(Some(tree), &["lfs", "pull"])?;
    }
    Ok(())
}

/// Pristine trees kept for copying, at most this many: one per repository, revision and
/// checkout options, the least recently used removed first.
const TEMPLATES_KEPT: usize = 8;

/// Where the pristine tree of `revision` of `url`, checked out as `how` says, is kept
/// (`cache/trees/NAME`): a job dir emptied for a new job gets a copy of it instead of a
/// checkout of its own. The many short jobs of one push each paid five git processes (init,
/// remote, fetch, checkout) and a look into the mirror, tens of milliseconds: a copy of a
/// small tree is a few hundred microseconds, and of a large one no slower than the checkout
/// that writes the same files. `how.path` is not part of it: the same tree goes anywhere.
pub fn template_path(cache: &Path, url: &str, revision: &str, how: &Checkout) -> PathBuf {
    let key = format!(
        "{url}\n{revision}\n{:?}\n{}\n{}",
        how.depth, how.submodules, how.lfs
    );
    cache
        .join("trees")
        .join(format!("{}-{:016x}", mirror_name(url), fnv1a(&key)))
}

/// Copies the kept tree `template` into `tree` (which is empty or missing) and marks the
/// template used; `Ok(false)` when there is no such template (yet).
pub fn copy_template(template: &Path, tree: &Path) -> Result<bool> {
    if !template.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(tree).map_err(io(tree))?;
    copy_tree(template, tree)?;
    // Its modification time orders templates for removal: the least recently used first.
    let _ = File::open(template).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    Ok(true)
}

/// Keeps a copy of `tree`, just checked out, as the template at `template` (written beside
/// it, then renamed, so a template is whole or absent), and removes the least recently used
/// templates past [`TEMPLATES_KEPT`]. A template another job made meanwhile wins.
pub fn keep_template(tree: &Path, template: &Path) -> Result<()> {
    let Some(dir) = template.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".new-{}-{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let made = std::fs::create_dir(&tmp)
        .map_err(io(&tmp))
        .and_then(|()| copy_tree(tree, &tmp))
        .map(|()| trim_git_dir(&tmp.join(".git")))
        .and_then(|()| match std::fs::rename(&tmp, template) {
            Ok(()) => Ok(()),
            // Another job's copy is already there (a directory that is not empty).
            Err(_) if template.is_dir() => Ok(()),
            Err(e) => Err(io(template)(e)),
        });
    let _ = std::fs::remove_dir_all(&tmp);
    made?;
    prune_templates(dir);
    Ok(())
}

/// Removes from a template's `.git` what a job's git never needs: sample hooks, the
/// description, reflogs, FETCH_HEAD. Every file of a template is created (and deleted) again
/// for every job, and ext4 makes each new inode dearer the more were deleted lately: a fresh
/// `.git` is some 35 inodes, this leaves about 12.
fn trim_git_dir(git: &Path) {
    for dir in ["logs", "branches"] {
        let _ = std::fs::remove_dir_all(git.join(dir));
    }
    for file in ["description", "FETCH_HEAD", "ORIG_HEAD"] {
        let _ = std::fs::remove_file(git.join(file));
    }
    // Hooks something installed (git lfs) stay; git's samples go.
    if let Ok(hooks) = std::fs::read_dir(git.join("hooks")) {
        for hook in hooks.flatten() {
            if hook.file_name().to_string_lossy().ends_with(".sample") {
                let _ = std::fs::remove_file(hook.path());
            }
        }
    }
    // `info/exclude` as `git init` writes it says nothing but comments.
    let exclude = git.join("info").join("exclude");
    if std::fs::read_to_string(&exclude).is_ok_and(|text| {
        text.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#'))
    }) {
        let _ = std::fs::remove_file(&exclude);
        let _ = std::fs::remove_dir(git.join("info"));
    }
}

static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn prune_templates(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if kept.len() <= TEMPLATES_KEPT {
        return;
    }
    kept.sort();
    for (_, path) in &kept[..kept.len() - TEMPLATES_KEPT] {
        // A job copying from it now fails its copy and checks out instead.
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Copies the files, directories and symbolic links under `from` into `to` (a directory
/// that exists), keeping modes.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io(&src))?;
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(io(&dst))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io(&dst))?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&dst))?;
        }
    }
    Ok(())
}

/// Prepares a git bundle of `revision` (its whole history) of the repository at `repo`, as
/// `lwr push` uploads it; [`write_bundle`] writes it. `scratch` is an empty directory for a
/// throwaway repository that borrows `repo`'s objects: a bundle needs a ref to name its
/// head, and the user's repository is not the place for one. A few quick git commands; the
/// packing is [`write_bundle`]'s.
pub fn prepare_bundle(repo: &Path, revision: &str, scratch: &Path) -> Result<()> {
    let objects = git_output(
        Some(repo),
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
        ],
    )?;
    // No templates: their sample hooks are a dozen files nobody runs here.
    git(
        None,
        &["init", "--quiet", "--bare", "--template=", &show(scratch)],
    )?;
    let alternates = scratch.join("objects/info/alternates");
    std::fs::write(&alternates, format!("{objects}\n")).map_err(io(&alternates))?;
    git(Some(scratch), &["update-ref", BUNDLE_REF, revision])
}

/// Packs the bundle [`prepare_bundle`] prepared in `scratch` (the whole history) into `dest`.
pub fn write_bundle(scratch: &Path, dest: &Path) -> Result<()> {
    git(
        Some(scratch),
        &["bundle", "create", "--quiet", &show(dest), BUNDLE_REF],
    )
}

/// The ref that names the head of a bundle `lwr push` makes.
const BUNDLE_REF: &str = "refs/lwr/push";

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
    format!("{tail}-{:016x}", fnv1a(url))
}

/// FNV-1a: stable across builds, unlike std's hasher.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckoutError {
    let path = path.to_path_buf();
    move |source| CheckoutError::Io { path, source }
}

/// Runs git (in `dir`, when given), failing with its stderr.
pub fn git(dir: Option<&Path>, args: &[&str]) -> Result<()> {
    git_output(dir, args).map(drop)
}

/// Runs git (in `dir`, when given) and returns what it printed, trimmed. Never prompts: a
/// job waiting for a password nobody types would only time out.
fn git_output(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(CheckoutError::NoGit)?;
    if !out.status.success() {
        return Err(CheckoutError::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_are_readable_and_distinct() {
        let a = mirror_name("https://example.com/org/app.git");
        assert!(a.starts_with("app-"), "{a}");
        assert_ne!(a, mirror_name("https://example.com/other/app.git"));
        assert!(!mirror_name("file:///tmp/x y").contains(' '));
    }

    fn commit(repo: &Path, file: &str, text: &str) -> String {
        std::fs::write(repo.join(file), text).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(repo)
                .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", text]);
        run(&["rev-parse", "HEAD"])
    }

    #[test]
    fn a_kept_tree_follows_the_revision_and_keeps_untracked_files() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(Some(&repo), &["init", "--quiet"]).unwrap();
        let one = commit(&repo, "f", "one");
        let url = repo.display().to_string();
        let cache = tmp.path().join("cache");
        let (mirror, how) = update_mirror(&cache, &url, &one).unwrap();
        assert_eq!(how, "fetched into the cache");
        let tree = tmp.path().join("tree");
        check_out(&mirror, &one, &tree, &Checkout::default()).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("f")).unwrap(), "one");
        std::fs::write(tree.join("built.o"), "x").unwrap();
        std::fs::write(tree.join("f"), "changed by the job").unwrap();

        let two = commit(&repo, "f", "two");
        assert_eq!(
            update_mirror(&cache, &url, &one).unwrap().1,
            "from the cache"
        );
        update_mirror(&cache, &url, &two).unwrap();
        check_out(&mirror, &two, &tree, &Checkout::default()).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("f")).unwrap(), "two");
        assert!(tree.join("built.o").exists(), "untracked files stay");

        let shallow = tmp.path().join("shallow");
        let depth = Checkout {
            depth: Some(1),
            ..Checkout::default()
        };
        check_out(&mirror, &two, &shallow, &depth).unwrap();
        assert_eq!(std::fs::read_to_string(shallow.join("f")).unwrap(), "two");
        assert!(shallow.join(".git/shallow").exists());
    }

    #[test]
    fn a_missing_revision_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(Some(&repo), &["init", "--quiet"]).unwrap();
        commit(&repo, "f", "one");
        let missing = "0123456789012345678901234567890123456789";
        let e = update_mirror(
            &tmp.path().join("cache"),
            &repo.display().to_string(),
            missing,
        )
        .unwrap_err();
        assert!(matches!(e, CheckoutError::NoCommit { .. }), "{e}");
        assert!(e.to_string().contains(missing), "{e}");
    }

    #[test]
    fn a_kept_tree_is_copied_whole_with_modes_and_links_and_the_oldest_go() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("job");
        std::fs::create_dir_all(tree.join(".git/refs")).unwrap();
        std::fs::write(tree.join(".git/HEAD"), "abc\n").unwrap();
        std::fs::create_dir_all(tree.join(".git/hooks")).unwrap();
        std::fs::write(tree.join(".git/hooks/pre-push.sample"), "#!/bin/sh\n").unwrap();
        std::fs::write(tree.join(".git/hooks/pre-push"), "git lfs pre-push\n").unwrap();
        std::fs::create_dir_all(tree.join(".git/info")).unwrap();
        std::fs::write(tree.join(".git/info/exclude"), "# git ls-files\n\n").unwrap();
        std::fs::write(tree.join(".git/description"), "Unnamed\n").unwrap();
        std::fs::write(tree.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("run.sh", tree.join("link")).unwrap();
        let how = Checkout::default();
        let cache = tmp.path().join("cache");
        let template = template_path(&cache, "https://x/r.git", "abc", &how);
        let other = Checkout {
            depth: Some(1),
            ..Checkout::default()
        };
        assert_ne!(
            template,
            template_path(&cache, "https://x/r.git", "abc", &other)
        );
        assert_ne!(
            template,
            template_path(&cache, "https://x/r.git", "abd", &how)
        );
        let copy = tmp.path().join("copy");
        assert!(!copy_template(&template, &copy).unwrap(), "no template yet");
        keep_template(&tree, &template).unwrap();
        // A job changes its tree: the template keeps what was checked out.
        std::fs::write(tree.join("run.sh"), "changed").unwrap();
        assert!(copy_template(&template, &copy).unwrap());
        assert_eq!(
            std::fs::read_to_string(copy.join("run.sh")).unwrap(),
            "#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::metadata(copy.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_link(copy.join("link")).unwrap(),
            Path::new("run.sh")
        );
        assert_eq!(
            std::fs::read_to_string(copy.join(".git/HEAD")).unwrap(),
            "abc\n"
        );
        // What git never needs is left out; an installed hook is not.
        assert!(copy.join(".git/hooks/pre-push").exists());
        assert!(!copy.join(".git/hooks/pre-push.sample").exists());
        assert!(!copy.join(".git/info").exists());
        assert!(!copy.join(".git/description").exists());
        // Keeping it again (another job raced) leaves one whole template.
        keep_template(&tree, &template).unwrap();
        assert_eq!(
            std::fs::read_to_string(template.join("run.sh")).unwrap(),
            "#!/bin/sh\n"
        );
        // Past TEMPLATES_KEPT, the least recently used go; nothing half-made is left.
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::open(&template).unwrap().set_modified(past).unwrap();
        for rev in 0..TEMPLATES_KEPT {
            let t = template_path(&cache, "https://x/r.git", &format!("r{rev}"), &how);
            keep_template(&tree, &t).unwrap();
        }
        assert!(
            !template.exists(),
            "the least recently used template was removed"
        );
        let left: Vec<_> = std::fs::read_dir(template.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), TEMPLATES_KEPT);
    }
}
