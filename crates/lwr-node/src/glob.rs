//! Finding the files an artifact path matches, in the one glob dialect of lwr
//! ([`lwr_model::glob`]). Only files match; `**` does not enter symlinked directories (no
//! loops), while a literal directory or one matched by `*` may be a symlink.

use std::path::Path;

use globset::GlobMatcher;
use lwr_model::glob;

/// Most files one declaration may match.
pub(crate) const MAX_MATCHES: usize = 10_000;

/// The files under `base` matching `pattern`, as relative paths with `/`, sorted. Only the
/// directories the pattern can reach are listed: from its literal leading directories, as
/// deep as its components go (any depth with `**` or `{...}`).
pub(crate) fn find(base: &Path, pattern: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let literal = parts.iter().take_while(|p| !glob::is_pattern(p)).count();
    let prefix = parts[..literal].join("/");
    let mut out = Vec::new();
    if literal == parts.len() {
        if !prefix.is_empty() && std::fs::metadata(base.join(&prefix)).is_ok_and(|m| m.is_file()) {
            out.push(prefix);
        }
        return Ok(out);
    }
    let rest = &parts[literal..];
    let depth = match rest.iter().any(|p| p.contains("**") || p.contains('{')) {
        true => None,
        false => Some(rest.len()),
    };
    let walk = Walk {
        base,
        matcher: glob::compile(&parts.join("/"))?,
        depth,
    };
    walk.dir(&prefix, 1, &mut out).map_err(|e| e.to_string())?;
    out.sort();
    Ok(out)
}

struct Walk<'a> {
    base: &'a Path,
    matcher: GlobMatcher,
    /// How many levels below the literal prefix to list; `None`: all (no symlinks followed).
    depth: Option<usize>,
}

impl Walk<'_> {
    fn dir(&self, rel: &str, level: usize, out: &mut Vec<String>) -> std::io::Result<()> {
        for (name, real_dir) in entries(&self.base.join(rel))? {
            if out.len() >= MAX_MATCHES {
                return Ok(());
            }
            let path = match rel.is_empty() {
                true => name,
                false => format!("{rel}/{name}"),
            };
            let meta = std::fs::metadata(self.base.join(&path));
            if meta.as_ref().is_ok_and(|m| m.is_file()) && self.matcher.is_match(&path) {
                out.push(path);
                continue;
            }
            let deeper = match self.depth {
                None => real_dir,
                Some(depth) => level < depth && meta.is_ok_and(|m| m.is_dir()),
            };
            if deeper {
                self.dir(&path, level + 1, out)?;
            }
        }
        Ok(())
    }
}

/// Entries of a directory with whether each is a real (not symlinked) directory; nothing
/// when `dir` is not a directory.
fn entries(dir: &Path) -> std::io::Result<Vec<(String, bool)>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: cannot be named in a manifest
        };
        out.push((name, entry.file_type()?.is_dir()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_walks_only_what_the_pattern_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in [
            "dist/app-1.2.3.tar.gz",
            "dist/app-1.2.3.zip",
            "dist/sub/deep/r.xml",
            "r.xml",
            "x/r.xml",
        ] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), "x").unwrap();
        }
        assert_eq!(
            find(d, "dist/app-*.tar.gz").unwrap(),
            ["dist/app-1.2.3.tar.gz"]
        );
        assert_eq!(
            find(d, "**/r.xml").unwrap(),
            ["dist/sub/deep/r.xml", "r.xml", "x/r.xml"]
        );
        assert_eq!(find(d, "./r.xml").unwrap(), ["r.xml"]);
        assert!(
            find(d, "dist").unwrap().is_empty(),
            "directories do not match"
        );
        assert!(find(d, "nope/*").unwrap().is_empty());
        assert_eq!(find(d, "*/r.xml").unwrap(), ["x/r.xml"]);
        assert_eq!(find(d, "dist/**/r.xml").unwrap(), ["dist/sub/deep/r.xml"]);
        assert_eq!(
            find(d, "dist/*.*").unwrap(),
            ["dist/app-1.2.3.tar.gz", "dist/app-1.2.3.zip"]
        );
        assert_eq!(
            find(d, "dist//./app-1.2.3.zip").unwrap(),
            ["dist/app-1.2.3.zip"]
        );
        assert_eq!(find(d, "?/r.xml").unwrap(), ["x/r.xml"]);
        // Before the one dialect, a trailing `**` matched no file at all.
        assert_eq!(
            find(d, "dist/**").unwrap(),
            [
                "dist/app-1.2.3.tar.gz",
                "dist/app-1.2.3.zip",
                "dist/sub/deep/r.xml"
            ]
        );
        assert_eq!(
            find(d, "{dist/sub/deep,x}/*.xml").unwrap(),
            ["dist/sub/deep/r.xml", "x/r.xml"]
        );
        assert_eq!(
            find(d, "dist/*.{zip,tar.gz}").unwrap(),
            ["dist/app-1.2.3.tar.gz", "dist/app-1.2.3.zip"]
        );
        assert!(find(d, "dist/{a").unwrap_err().contains("[{]"));
    }

    #[test]
    fn classes_and_a_literal_unclosed_bracket() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in ["v1.txt", "vx.txt", "a.txt", "b.txt", "[x"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        assert_eq!(find(d, "v[0-9].txt").unwrap(), ["v1.txt"]);
        assert_eq!(find(d, "[ab].txt").unwrap(), ["a.txt", "b.txt"]);
        assert_eq!(find(d, "[!a].txt").unwrap(), ["b.txt"]);
        assert_eq!(find(d, "[^a].txt").unwrap(), ["b.txt"]);
        assert_eq!(find(d, "[x").unwrap(), ["[x"]);
    }

    #[test]
    fn double_star_does_not_enter_symlinked_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("x")).unwrap();
        std::fs::write(d.join("x/r.xml"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("x"), d.join("link")).unwrap();
        assert_eq!(find(d, "**/r.xml").unwrap(), ["x/r.xml"]);
        assert_eq!(find(d, "link/r.xml").unwrap(), ["link/r.xml"]);
        assert_eq!(find(d, "*/r.xml").unwrap(), ["link/r.xml", "x/r.xml"]);
    }
}
