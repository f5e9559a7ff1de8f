//! The data dir is the server's alone: it holds the database, whose `settings` hold the key
//! job tokens are signed with, and every log and artifact. A local user who could read it
//! could forge a job token, so it is 0700 and the database files 0600, checked (and made
//! so, with a warning) at every start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Files in the data dir only its owner may read: the SQLite database and its journals,
/// and the admin token `lwr dev --auth` writes.
const PRIVATE_FILES: &[&str] = &["lwr.db", "lwr.db-wal", "lwr.db-shm", "admin.token"];

/// Makes `dir` 0700 and its private files 0600, warning about each that was looser.
pub(crate) fn secure_data_dir(dir: &Path) -> std::io::Result<()> {
    tighten(dir, 0o700)?;
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        match tighten(&path, 0o600) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Takes group and other bits off `path` (never adds any): `mode` is what it warns to.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let was = meta.permissions().mode() & 0o7777;
    if was & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(
        "{} was mode {was:04o}, readable by other local users: now {mode:04o}",
        path.display()
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(was & !0o077))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_modes_are_tightened_and_tight_ones_kept() {
        let tmp = std::env::temp_dir().join(format!("lwr-private-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(tmp.join("lwr.db"), "").unwrap();
        std::fs::set_permissions(tmp.join("lwr.db"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(tmp.join("admin.token"), "").unwrap();
        std::fs::set_permissions(
            tmp.join("admin.token"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        secure_data_dir(&tmp).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&tmp), 0o700);
        assert_eq!(mode(&tmp.join("lwr.db")), 0o600);
        assert_eq!(mode(&tmp.join("admin.token")), 0o400);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
