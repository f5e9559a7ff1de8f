//! A small glob matcher for artifact paths: `*` and `?` within one path component,
//! `[abc]`, `[a-z]` and `[!x]` classes, and `**` for any number of directories.
//! Only files match; symlinked directories are not entered by `**` (no loops).

use std::path::Path;

/// Most files one declaration may match.
pub(crate) const MAX_MATCHES: usize = 10_000;

/// The files under `base` matching `pattern`, as relative paths with `/`, sorted.
pub(crate) fn find(base: &Path, pattern: &str) -> std::io::Result<Vec<String>> {
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut out = Vec::new();
    walk(base, "", &parts, &mut out)?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn join(rel: &str, name: &str) -> String {
    match rel.is_empty() {
        true => name.to_string(),
        false => format!("{rel}/{name}"),
    }
}

fn walk(base: &Path, rel: &str, parts: &[&str], out: &mut Vec<String>) -> std::io::Result<()> {
    if out.len() >= MAX_MATCHES {
        return Ok(());
    }
    let here = base.join(rel);
    let Some((first, rest)) = parts.split_first() else {
        if !rel.is_empty() && std::fs::metadata(&here).is_ok_and(|m| m.is_file()) {
            out.push(rel.to_string());
        }
        return Ok(());
    };
    if *first == "**" {
        walk(base, rel, rest, out)?;
        for (name, is_dir) in entries(&here)? {
            if is_dir {
                walk(base, &join(rel, &name), parts, out)?;
            }
        }
        return Ok(());
    }
    if !is_pattern(first) {
        return walk(base, &join(rel, first), rest, out);
    }
    for (name, _) in entries(&here)? {
        if matches(first.as_bytes(), name.as_bytes()) {
            walk(base, &join(rel, &name), rest, out)?;
        }
    }
    Ok(())
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

fn is_pattern(part: &str) -> bool {
    part.contains(['*', '?', '['])
}

/// Matches one path component against one pattern component.
fn matches(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((b'[', rest)) => match (class(rest, name.first().copied()), name.len()) {
            (Some((true, after)), n) if n > 0 => matches(after, &name[1..]),
            (Some(_), _) => false,
            // An unclosed `[` is a literal.
            (None, _) => name.first() == Some(&b'[') && matches(rest, &name[1..]),
        },
        Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

/// Reads a `[...]` class (after the `[`): whether `c` is in it, and the pattern after it.
fn class(pat: &[u8], c: Option<u8>) -> Option<(bool, &[u8])> {
    let (negate, mut i) = match pat.first() {
        Some(b'!') | Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let start = i;
    let mut hit = false;
    while i < pat.len() {
        if pat[i] == b']' && i > start {
            let hit = c.is_some() && hit != negate;
            return Some((hit, &pat[i + 1..]));
        }
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            if let Some(c) = c {
                hit |= (pat[i]..=pat[i + 2]).contains(&c);
            }
            i += 3;
        } else {
            hit |= c == Some(pat[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        matches(p.as_bytes(), n.as_bytes())
    }

    #[test]
    fn components_match_like_a_shell() {
        assert!(m("app-*.tar.gz", "app-1.2.3.tar.gz"));
        assert!(!m("app-*.tar.gz", "app-1.2.3.zip"));
        assert!(m("*", "anything"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("[ab]x", "bx") && !m("[ab]x", "cx"));
        assert!(m("v[0-9]", "v7") && !m("v[0-9]", "vx"));
        assert!(m("[!a]", "b") && !m("[!a]", "a"));
        assert!(m("[x", "[x"));
        assert!(m("*.*", "a.b"));
    }

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
