//! The one glob dialect of lwr, for lwr.yml `when: {changed: ...}` filters, branch patterns
//! and artifact paths alike (globset underneath):
//!
//! - `*` is any run of characters within one path component, `?` one character (byte
//!   outside ASCII) but `/`;
//! - `**` as a whole component is any number of directories, none included (`a/**/b`
//!   matches `a/b`); elsewhere it is two `*`;
//! - `[abc]`, `[a-z]`, `[!x]` and `[^x]` are classes; an unclosed `[` is a literal;
//! - `{a,b}` is either alternative;
//! - a backslash is a plain character, not an escape (write `[*]` for a literal `*`).

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Compiles `pattern` in the lwr dialect; the error says what is wrong with it.
pub fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    build(pattern).map(|g| g.compile_matcher())
}

/// Checks `pattern` without keeping it: for validating lwr.yml and branch patterns.
pub fn check(pattern: &str) -> Result<(), String> {
    build(pattern).map(drop)
}

fn build(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(false)
        .allow_unclosed_class(true)
        .build()
        .map_err(|e| e.to_string())
}

/// True when `text` matches `pattern`; a pattern that does not compile matches nothing
/// (validation refuses such patterns before they are stored).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    compile(pattern).is_ok_and(|m| m.is_match(text))
}

/// True when `pattern` is more than a literal path: it needs a directory listing.
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_in_the_dialect() {
        assert!(glob_match("*.{md,txt}", "a.txt") && !glob_match("*.{md,txt}", "a.rs"));
        assert!(glob_match("v[0-9]", "v7") && !glob_match("v[0-9]", "vx"));
        assert!(glob_match("[!a]", "b") && !glob_match("[!a]", "a"));
        assert!(glob_match("[x", "[x"));
        assert!(
            glob_match("a\\b", "a\\b"),
            "a backslash is a plain character"
        );
        assert!(glob_match("a**b", "axyb") && !glob_match("a**b", "a/b"));
    }

    #[test]
    fn bad_patterns_say_why() {
        let e = check("a{b").unwrap_err();
        assert!(e.contains("a{b") && e.contains("[{]"), "{e}");
        assert!(check("a}b").is_err());
        assert!(check("[z-a]").is_err());
        assert!(!glob_match("a{b", "a{b"));
    }
}
