//! Keeping a slot's checkout between jobs of the same revision.
//!
//! A job dir filled with a copy of a kept tree ([`crate::checkout::copy_template`]) is
//! recorded as git's index records a work tree: every entry's path, type and mode, device and
//! inode, link count, owner, size, and modification and change times. The next job of the same
//! revision on that slot gets the dir as it is when a check finds it the same: no entry new,
//! missing or different. Emptying and refilling it would create every inode again, and ext4's
//! inode allocator makes each new inode dearer the more were deleted lately.
//!
//! A change within one tick of the file system's clock can leave every field the same (same
//! inode, size and times). As git does with "racily clean" entries, an entry whose change or
//! modification time is not older than the moment its record was taken (`since`) is compared
//! by content with the kept tree it was copied from. `since` is the change time the kernel
//! gives a marker file just before the check, so it is on the file system's own clock and
//! granularity: anything changed after the check gets a change time at or past it, and no one
//! can set a change time back.
//!
//! Checking a record needs no directory listing: creating, removing or renaming an entry
//! changes its directory's modification and change times, as git's untracked cache relies
//! on, so a directory whose `stat` is as recorded (and not racy) holds the same names. Only a
//! racy directory is listed and its names compared with the record's. Each recorded entry is
//! then one `fstatat` from the job dir's handle, where a walk opened, listed and closed every
//! directory too; a slot's dir is checked twice a job. Entries are checked in the record's
//! order, a directory before what is in it, so every directory a path goes through was
//! found the same directory (not a link) before the path is looked up. Directory times are
//! trusted only on the local file systems known to keep them (and with the marker on the
//! same one, for the clock); elsewhere every directory is listed, as a walk did.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A time as a file system stamps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    sec: i64,
    nsec: i64,
}

/// What a check compares of an entry: everything `stat` tells but the access time.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Stamp,
    ctime: Stamp,
}

impl Stat {
    // The raw fields' widths differ between targets (`nlink_t` is 32 bits on aarch64 and
    // riscv64, times are 32 bits on 32-bit ones): widened alike everywhere.
    #[allow(clippy::useless_conversion)]
    fn from_raw(m: &nix::sys::stat::FileStat) -> Stat {
        Stat {
            dev: u64::from(m.st_dev),
            ino: u64::from(m.st_ino),
            mode: u32::from(m.st_mode),
            nlink: u64::from(m.st_nlink),
            uid: m.st_uid,
            gid: m.st_gid,
            // A size the kernel gives is never negative.
            size: u64::try_from(m.st_size).unwrap_or_default(),
            mtime: Stamp {
                sec: i64::from(m.st_mtime),
                nsec: i64::from(m.st_mtime_nsec),
            },
            ctime: Stamp {
                sec: i64::from(m.st_ctime),
                nsec: i64::from(m.st_ctime_nsec),
            },
        }
    }

    fn kind(&self) -> Kind {
        use nix::sys::stat::SFlag;
        match SFlag::from_bits_truncate(self.mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Link,
            SFlag::S_IFREG => Kind::File,
            _ => Kind::Other,
        }
    }

    fn of(m: &Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: Stamp {
                sec: m.mtime(),
                nsec: m.mtime_nsec(),
            },
            ctime: Stamp {
                sec: m.ctime(),
                nsec: m.ctime_nsec(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Link,
    File,
    Other,
}

#[derive(Debug)]
struct Entry {
    /// Relative to the job dir; empty for the job dir itself.
    path: PathBuf,
    stat: Stat,
}

/// What a job dir looked like right after a kept tree was copied into it (or when a check
/// last found it unchanged).
#[derive(Debug)]
pub struct Snapshot {
    /// The kept tree the checkout was copied from.
    template: PathBuf,
    /// Where in the job dir the tree is (`checkout.path`); empty for the job dir itself.
    tree: PathBuf,
    /// In walk order: a directory, then its entries sorted by name.
    entries: Vec<Entry>,
    /// Stamped before each check, for its change time.
    marker: File,
    /// Entries changed at or after this may have changed again unseen, within the tick.
    since: Stamp,
    /// Whether a directory's times tell its names (see the module's comment); if not,
    /// every directory is listed.
    dir_times: bool,
}

impl Snapshot {
    /// Records `dir`, into which `template` was just copied at `tree` (relative).
    /// `marker` is the slot's marker file, stamped to learn the file system's time.
    pub fn take(dir: &Path, tree: &Path, template: &Path, marker: File) -> std::io::Result<Self> {
        let since = stamp_now(&marker)?;
        Snapshot::take_since(dir, tree, template, marker, since)
    }

    fn take_since(
        dir: &Path,
        tree: &Path,
        template: &Path,
        marker: File,
        since: Stamp,
    ) -> std::io::Result<Snapshot> {
        let dir_times = dir_times_tell_names(dir, &marker);
        let mut entries = Vec::new();
        walk(dir, &mut |path, meta| {
            entries.push(Entry {
                path: path.to_path_buf(),
                stat: Stat::of(meta),
            });
            Ok(true)
        })?;
        Ok(Snapshot {
            template: template.to_path_buf(),
            tree: tree.to_path_buf(),
            entries,
            marker,
            since,
            dir_times,
        })
    }

    /// Whether this is a copy of `template` at `tree`.
    pub fn is_of(&self, template: &Path, tree: &Path) -> bool {
        self.template == template && self.tree == tree
    }

    /// Whether `dir` is still exactly as recorded: the same entries, none changed. When it
    /// is, the record is renewed, so that entries older than this check need no more than a
    /// `stat` the next time.
    pub fn still_holds(&mut self, dir: &Path) -> bool {
        // Stamped before the check: whatever it finds equal was so at this time or later.
        let Ok(now) = stamp_now(&self.marker) else {
            return false;
        };
        let holds = self.matches(dir);
        if holds {
            self.since = now;
        }
        holds
    }

    fn matches(&self, dir: &Path) -> bool {
        use nix::fcntl::{AtFlags, OFlag, open};
        use nix::sys::stat::{Mode, fstatat};
        // The job dir's own entry is first; the dir itself must not be a link.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(root) = open(dir, flags, Mode::empty()) else {
            return false;
        };
        self.entries.iter().enumerate().all(|(i, entry)| {
            let path: &Path = match entry.path.as_os_str().is_empty() {
                true => Path::new("."),
                false => &entry.path,
            };
            let Ok(raw) = fstatat(&root, path, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                return false;
            };
            let stat = Stat::from_raw(&raw);
            if stat != entry.stat {
                return false;
            }
            let racy = stat.ctime >= self.since || stat.mtime >= self.since;
            match stat.kind() {
                Kind::Dir if racy || !self.dir_times => self.holds_names(dir, i),
                kind => !racy || self.racy_entry_holds(dir, &entry.path, kind),
            }
        })
    }

    /// Whether a file or link changed too recently for its `stat` to tell still has its
    /// original's content.
    fn racy_entry_holds(&self, dir: &Path, rel: &Path, kind: Kind) -> bool {
        // Only the tree's own entries are files; the dirs leading to it are made here.
        let Ok(inside) = rel.strip_prefix(&self.tree) else {
            return false;
        };
        let (path, original) = (dir.join(rel), self.template.join(inside));
        match kind {
            Kind::Link => match (std::fs::read_link(&path), std::fs::read_link(&original)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
            Kind::File => same_content(&path, &original).unwrap_or(false),
            Kind::Dir | Kind::Other => false,
        }
    }

    /// Whether the directory of the record's entry `at` holds exactly the names recorded in
    /// it.
    fn holds_names(&self, dir: &Path, at: usize) -> bool {
        let rel = &self.entries[at].path;
        let Ok(listed) = std::fs::read_dir(dir.join(rel)) else {
            return false;
        };
        let Ok(mut found) = listed
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<Vec<_>>>()
        else {
            return false;
        };
        // What is in it follows it in the record, up to the first entry outside it.
        let mut recorded: Vec<_> = self.entries[at + 1..]
            .iter()
            .take_while(|e| e.path.starts_with(rel))
            .filter(|e| e.path.parent() == Some(rel.as_path()))
            .filter_map(|e| e.path.file_name().map(ToOwned::to_owned))
            .collect();
        found.sort();
        recorded.sort();
        found == recorded
    }
}

/// How [`fill_in_place`] or [`refill`] left a slot's dir.
#[derive(Debug)]
pub enum Filled {
    /// Ready for the job: it holds the same checkout as before, a new copy of the kept tree
    /// (recorded, when it could be), or nothing for a job without a checkout.
    Ready(Option<Snapshot>),
    /// Empty, and there is no kept tree to copy: the revision must be checked out.
    Empty,
}

/// Makes a slot's dir ready for a job whose checkout is a copy of `template` at `tree`
/// (`None`: a job without a checkout) when [`fill_in_place`] could not: the dir is emptied
/// and the kept tree copied in. `marker`: the slot's marker file.
pub fn refill(
    dir: &Path,
    marker: &Path,
    template: Option<&Path>,
    tree: &Path,
) -> std::io::Result<Filled> {
    crate::exec::fresh_dir(dir)?;
    let Some(template) = template else {
        return Ok(Filled::Ready(None));
    };
    let at = match tree.as_os_str().is_empty() {
        true => dir.to_path_buf(),
        false => dir.join(tree),
    };
    match crate::checkout::copy_template(template, &at) {
        Ok(true) => {}
        Ok(false) => return Ok(Filled::Empty),
        // Removed while copied (only the least recently used go): start afresh.
        Err(e) => {
            tracing::debug!("copying the kept tree failed ({e}); checking out");
            crate::exec::fresh_dir(dir)?;
            return Ok(Filled::Empty);
        }
    }
    // Without a record the next job gets a copy of its own: slower, not wrong.
    let snapshot = open_marker(marker)
        .and_then(|m| Snapshot::take(dir, tree, template, m))
        .inspect_err(|e| tracing::debug!("cannot record the job dir {}: {e}", dir.display()))
        .ok();
    Ok(Filled::Ready(snapshot))
}

/// Makes a slot's dir ready for a job whose checkout is a copy of `template` at `tree`
/// (`None`: a job without a checkout) where that copies nothing, cheap enough for the
/// caller's own thread (as [`clean_up`]'s check is): the dir is used as it is when `held`, its
/// record, says it holds just that copy, unchanged; a job without a checkout gets the slot's
/// dir, which the last job's clean-up left empty. `None`: the dir must be emptied of another
/// tree or filled by a copy, by [`refill`] on a blocking thread.
pub fn fill_in_place(
    dir: &Path,
    mut held: Option<Snapshot>,
    template: Option<&Path>,
    tree: &Path,
) -> std::io::Result<Option<Filled>> {
    if let (Some(snapshot), Some(template)) = (held.as_mut(), template)
        && snapshot.is_of(template, tree)
        && snapshot.still_holds(dir)
    {
        return Ok(Some(Filled::Ready(held)));
    }
    match (held, template) {
        (None, None) => {
            crate::exec::fresh_dir(dir)?;
            Ok(Some(Filled::Ready(None)))
        }
        _ => Ok(None),
    }
}

/// After a job: keeps the slot's dir when it still holds the checkout `held` records, for
/// the next job of the same revision; empties it otherwise, so a job's files go when it ends.
pub fn clean_up(dir: &Path, held: Option<Snapshot>) -> std::io::Result<Option<Snapshot>> {
    if let Some(mut snapshot) = held
        && snapshot.still_holds(dir)
    {
        return Ok(Some(snapshot));
    }
    crate::exec::fresh_dir(dir)?;
    Ok(None)
}

/// Whether directories under `dir` change their times whenever a name in them is added,
/// removed or renamed, on the clock `marker`'s change time is read from: a local file
/// system known to (attribute caching on a network or FUSE one could show old times), and
/// the marker on the same one.
fn dir_times_tell_names(dir: &Path, marker: &File) -> bool {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
        statfs,
    };
    // ext2 and ext3 report ext4's magic number too.
    let local = [
        EXT4_SUPER_MAGIC,
        XFS_SUPER_MAGIC,
        BTRFS_SUPER_MAGIC,
        TMPFS_MAGIC,
        OVERLAYFS_SUPER_MAGIC,
    ];
    let same_device = match (std::fs::symlink_metadata(dir), marker.metadata()) {
        (Ok(d), Ok(m)) => d.dev() == m.dev(),
        _ => false,
    };
    same_device && statfs(dir).is_ok_and(|fs| local.contains(&fs.filesystem_type()))
}

/// Stamps `marker` and returns the change time the kernel gave it.
fn stamp_now(marker: &File) -> std::io::Result<Stamp> {
    marker.set_modified(std::time::SystemTime::now())?;
    let m = marker.metadata()?;
    Ok(Stamp {
        sec: m.ctime(),
        nsec: m.ctime_nsec(),
    })
}

/// Opens (or creates) a slot's marker file.
pub fn open_marker(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        if n != read_full(&mut b, &mut y)? || x[..n] != y[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

type Visit<'a> = dyn FnMut(&Path, &Metadata) -> std::io::Result<bool> + 'a;

/// Calls `visit` with `dir` itself (as the empty path), then every entry below it, without
/// following symbolic links: a directory's entries sorted by name, each directory's entries
/// right after it. Stops early when `visit` says `false`; returns whether it went through.
fn walk(dir: &Path, visit: &mut Visit) -> std::io::Result<bool> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !visit(Path::new(""), &meta)? {
        return Ok(false);
    }
    walk_below(dir, &mut PathBuf::new(), visit)
}

fn walk_below(root: &Path, rel: &mut PathBuf, visit: &mut Visit) -> std::io::Result<bool> {
    let mut entries = std::fs::read_dir(root.join(&*rel))?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        // Through the directory's handle (statx at the dir fd): no path lookup from the root.
        let meta = entry.metadata()?;
        rel.push(entry.file_name());
        let on = visit(rel, &meta)? && (!meta.is_dir() || walk_below(root, rel, visit)?);
        rel.pop();
        if !on {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        _tmp: tempfile::TempDir,
        template: PathBuf,
        dir: PathBuf,
    }

    impl Fixture {
        fn marker(&self) -> File {
            open_marker(&self.dir.with_extension("stamp")).unwrap()
        }
    }

    /// A kept tree with a nested `.git`, a script and a link, copied into a slot dir at
    /// `tree`.
    fn fixture(tree: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let template = tmp.path().join("template");
        std::fs::create_dir_all(template.join(".git/refs/heads")).unwrap();
        std::fs::write(template.join(".git/HEAD"), "0123abcd\n").unwrap();
        std::fs::write(template.join(".git/config"), "[core]\n").unwrap();
        std::fs::create_dir_all(template.join("src")).unwrap();
        std::fs::write(template.join("src/main.c"), "int main() {}\n").unwrap();
        std::fs::write(template.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("run.sh", template.join("link")).unwrap();
        let dir = tmp.path().join("jobs/1");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(crate::checkout::copy_template(&template, &dir.join(tree)).unwrap());
        Fixture {
            _tmp: tmp,
            template,
            dir,
        }
    }

    fn snapshot(f: &Fixture, tree: &str) -> Snapshot {
        Snapshot::take(&f.dir, Path::new(tree), &f.template, f.marker()).unwrap()
    }

    /// Every entry changed since the start of 1970: all racy.
    const RACY: Stamp = Stamp { sec: 0, nsec: 0 };

    /// A record of the fixture's dir taken as if at `since`.
    fn snapshot_since(f: &Fixture, since: Stamp) -> Snapshot {
        Snapshot::take_since(&f.dir, Path::new(""), &f.template, f.marker(), since).unwrap()
    }

    /// Long enough for the file system's clock to tick (jiffies: 10 ms at HZ=100), so the
    /// next change has a later change time than the record.
    fn tick() {
        std::thread::sleep(std::time::Duration::from_millis(30));
    }

    /// Takes a record, lets `change` act on the dir, and says whether the record held.
    fn holds_after(tree: &str, change: impl FnOnce(&Path)) -> bool {
        let f = fixture(tree);
        let mut snap = snapshot(&f, tree);
        assert!(snap.still_holds(&f.dir), "unchanged at first");
        change(&f.dir);
        snap.still_holds(&f.dir)
    }

    #[test]
    fn an_unchanged_copy_holds_again_and_again() {
        let f = fixture("");
        let mut snap = snapshot(&f, "");
        assert!(snap.is_of(&f.template, Path::new("")));
        assert!(!snap.is_of(&f.template, Path::new("src")));
        for _ in 0..3 {
            assert!(snap.still_holds(&f.dir));
        }
        // Reading files changes nothing a check looks at.
        assert_eq!(
            std::fs::read_to_string(f.dir.join("run.sh")).unwrap(),
            "#!/bin/sh\n"
        );
        tick();
        assert!(snap.still_holds(&f.dir));
    }

    #[test]
    fn a_new_file_or_directory_is_seen() {
        assert!(!holds_after("", |d| std::fs::write(d.join("out.o"), "").unwrap()));
        assert!(!holds_after("", |d| std::fs::write(d.join("src/x.o"), "").unwrap()));
        assert!(!holds_after("", |d| std::fs::create_dir(d.join("target")).unwrap()));
        assert!(!holds_after("", |d| std::fs::write(
            d.join(".git/refs/heads/main"),
            "0123abcd\n"
        )
        .unwrap()));
    }

    /// Long after the record, no directory is listed: a name added or removed shows in its
    /// directory's times.
    #[test]
    fn a_new_or_missing_entry_after_a_tick_is_seen_by_its_directory() {
        for change in [
            |d: &Path| std::fs::write(d.join("src/x.o"), "").unwrap(),
            |d: &Path| std::fs::create_dir(d.join(".git/refs/tags")).unwrap(),
            |d: &Path| std::fs::remove_file(d.join("src/main.c")).unwrap(),
            |d: &Path| std::fs::rename(d.join("run.sh"), d.join("run2.sh")).unwrap(),
        ] {
            let f = fixture("");
            let mut snap = snapshot(&f, "");
            tick();
            assert!(snap.still_holds(&f.dir), "renewed after the tick");
            tick();
            change(&f.dir);
            assert!(!snap.still_holds(&f.dir));
        }
    }

    /// A directory changed within the record's tick keeps its times: it is listed, and a
    /// name the record lacks is seen. Not racy, the same directory is trusted unlisted.
    #[test]
    fn a_racy_directory_is_listed() {
        let f = fixture("");
        std::fs::write(f.dir.join("src/unseen.o"), "").unwrap();
        // Recorded after the new file, then the file taken out of the record: only a
        // listing of `src` can tell.
        let mut snap = snapshot_since(&f, RACY);
        snap.entries.retain(|e| e.path != Path::new("src/unseen.o"));
        assert!(!snap.still_holds(&f.dir));
        let far_future = Stamp {
            sec: i64::MAX,
            nsec: 0,
        };
        let mut trusted = snapshot_since(&f, far_future);
        trusted
            .entries
            .retain(|e| e.path != Path::new("src/unseen.o"));
        // Every entry older than the record: nothing is listed (nor compared by content)...
        trusted.dir_times = true;
        assert!(trusted.still_holds(&f.dir));
        // ...unless the file system's directory times are not trusted: then every
        // directory is listed, as a walk did.
        trusted.dir_times = false;
        assert!(!trusted.still_holds(&f.dir));
    }

    /// A directory on the way to recorded entries, replaced by a link to a copy of it, is
    /// seen at its own entry, before any path is looked up through it.
    #[test]
    fn a_directory_swapped_for_a_link_to_its_copy_is_seen() {
        assert!(!holds_after("", |d| {
            let moved = d.parent().unwrap().join("moved");
            std::fs::rename(d.join("src"), &moved).unwrap();
            std::os::unix::fs::symlink(&moved, d.join("src")).unwrap();
        }));
        assert!(!holds_after("sub/app", |d| {
            let moved = d.parent().unwrap().join("moved");
            std::fs::rename(d.join("sub"), &moved).unwrap();
            std::os::unix::fs::symlink(&moved, d.join("sub")).unwrap();
        }));
    }

    #[test]
    fn a_missing_entry_is_seen() {
        assert!(!holds_after("", |d| std::fs::remove_file(d.join("run.sh")).unwrap()));
        assert!(!holds_after("", |d| std::fs::remove_file(d.join("link")).unwrap()));
        assert!(!holds_after("", |d| std::fs::remove_dir_all(
            d.join(".git")
        )
        .unwrap()));
        assert!(!holds_after("", |d| std::fs::remove_dir(
            d.join(".git/refs/heads")
        )
        .unwrap()));
    }

    #[test]
    fn a_changed_file_is_seen() {
        // Another size.
        assert!(!holds_after("", |d| std::fs::write(
            d.join("run.sh"),
            "exit 1\n"
        )
        .unwrap()));
        // The same size, in the same tick as the record most likely.
        assert!(!holds_after("", |d| std::fs::write(
            d.join(".git/HEAD"),
            "3210dcba\n"
        )
        .unwrap()));
        // Replaced by another file (a new inode) of the same content.
        assert!(!holds_after("", |d| {
            std::fs::write(d.join("new"), "#!/bin/sh\n").unwrap();
            std::fs::rename(d.join("new"), d.join("run.sh")).unwrap();
        }));
        // A link pointing elsewhere.
        assert!(!holds_after("", |d| {
            std::fs::remove_file(d.join("link")).unwrap();
            std::os::unix::fs::symlink("src", d.join("link")).unwrap();
        }));
        // A hard link from outside, through which a job could change the file later.
        assert!(!holds_after("", |d| std::fs::hard_link(
            d.join("run.sh"),
            d.parent().unwrap().join("elsewhere")
        )
        .unwrap()));
    }

    #[test]
    fn a_change_with_its_modification_time_set_back_is_seen() {
        assert!(!holds_after("", |d| {
            // Long after the record: only the change time can tell.
            tick();
            let path = d.join("src/main.c");
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            std::fs::write(&path, "int main(){;}\n").unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }));
    }

    #[test]
    fn a_changed_mode_is_seen() {
        let chmod = |p: PathBuf, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        assert!(!holds_after("", |d| chmod(d.join("run.sh"), 0o755)));
        assert!(!holds_after("", |d| chmod(d.join("src"), 0o700)));
        assert!(!holds_after("", |d| chmod(d.to_path_buf(), 0o700)));
        assert!(!holds_after("", |d| chmod(d.join(".git/config"), 0o600)));
    }

    #[test]
    fn entries_beside_a_tree_at_a_path_are_seen() {
        assert!(holds_after("sub/app", |_| {}));
        assert!(!holds_after("sub/app", |d| std::fs::write(d.join("x"), "").unwrap()));
        assert!(!holds_after("sub/app", |d| std::fs::write(
            d.join("sub/x"),
            ""
        )
        .unwrap()));
        assert!(!holds_after("sub/app", |d| std::fs::write(
            d.join("sub/app/.git/HEAD"),
            "3210dcba\n"
        )
        .unwrap()));
    }

    /// A change within the clock's tick keeps every stat field. Recorded after the change
    /// with a `since` that makes every entry racy, the check must compare contents.
    #[test]
    fn a_racily_clean_entry_is_compared_by_content() {
        let f = fixture("");
        std::fs::write(f.dir.join(".git/HEAD"), "3210dcba\n").unwrap();
        let mut snap = snapshot_since(&f, RACY);
        assert!(!snap.still_holds(&f.dir));

        // A link replaced within the tick.
        let f = fixture("");
        std::fs::remove_file(f.dir.join("link")).unwrap();
        std::os::unix::fs::symlink("src", f.dir.join("link")).unwrap();
        let mut snap = snapshot_since(&f, RACY);
        assert!(!snap.still_holds(&f.dir));

        // Unchanged and racy: the contents are the same.
        let f = fixture("");
        let mut snap = snapshot_since(&f, RACY);
        assert!(snap.still_holds(&f.dir));
    }

    #[test]
    fn a_racy_entry_without_its_kept_tree_does_not_hold_and_an_old_one_needs_none() {
        let f = fixture("");
        let mut all_racy = snapshot_since(&f, RACY);
        let mut snap = snapshot(&f, "");
        tick();
        // Renewed after a tick: every entry is older than the record now.
        assert!(snap.still_holds(&f.dir));
        std::fs::remove_dir_all(&f.template).unwrap();
        assert!(!all_racy.still_holds(&f.dir));
        assert!(snap.still_holds(&f.dir));
    }
}
