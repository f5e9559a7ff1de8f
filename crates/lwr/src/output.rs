//! Standard output of the commands. Their output is often piped (`lwr jobs --json | head`):
//! when the reader goes away, the command ends quietly with status 141, as a Unix tool killed
//! by SIGPIPE does (so `set -o pipefail` still sees that it did not finish), instead of the
//! panic `println!` gives on a closed pipe.

use std::io::{self, Write};

/// Writes formatted text to stdout (the `out!` and `outln!` macros).
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        gone(e);
    }
}

/// Writes bytes to stdout as they come (a log), flushing them at once.
pub fn write_bytes(bytes: &[u8]) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        gone(e);
    }
}

fn gone(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        // 128 + SIGPIPE, what a shell reports for a tool the signal ended.
        std::process::exit(141);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// A table for a listing: column widths come from the content (a long matrix job name
/// widens its column instead of breaking the line), numbers align right, and the last
/// column is not padded.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named `headers`; a header starting with `>` is right-aligned (the `>` is
    /// not shown).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < n {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A time as RFC 3339 text, parsed.
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A time for a table: `2026-12-06 06:20:53` (UTC), or `-`.
pub fn when(text: Option<&str>) -> String {
    text.and_then(parse_time)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// From `start` to `end`, or to now while it goes on; `None` before it starts.
pub fn span(start: Option<&str>, end: Option<&str>) -> Option<std::time::Duration> {
    let start = parse_time(start?)?;
    let end = match end {
        Some(end) => parse_time(end)?,
        None => chrono::Utc::now(),
    };
    // Clocks of two machines: never a negative time.
    Some((end - start).to_std().unwrap_or_default())
}

/// A duration as people read it: `0.4s`, `12s`, `3m04s`, `2h05m`.
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// The first 12 characters of a revision or a hash, as people read them. Characters, not
/// bytes: a branch or tag used as a revision may be any text.
pub fn short(text: &str) -> &str {
    match text.char_indices().nth(12) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_content() {
        let mut t = Table::new(&[">ID", "NAME", "STATE"]);
        t.row(vec![
            "7".into(),
            "build-linux-x86_64-release".into(),
            "failed".into(),
        ]);
        t.row(vec!["12".into(), "a".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "ID  NAME                        STATE\n 7  build-linux-x86_64-release  failed\n\
             12  a                           -\n"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        use std::time::Duration as D;
        assert_eq!(duration(D::from_millis(1234)), "1.2s");
        assert_eq!(duration(D::from_secs(42)), "42s");
        assert_eq!(duration(D::from_secs(184)), "3m04s");
        assert_eq!(duration(D::from_secs(7500)), "2h05m");
        let start = "2026-12-06T06:00:00.000Z";
        assert_eq!(
            span(Some(start), Some("2026-12-06T06:00:01.500Z")),
            Some(D::from_millis(1500))
        );
        assert_eq!(
            span(Some(start), Some("2026-12-06T05:59:00.000Z")),
            Some(D::ZERO)
        );
        assert_eq!(span(None, None), None);
        assert_eq!(when(Some(start)), "2026-12-06 06:00:00");
    }

    #[test]
    fn short_cuts_on_a_character_boundary() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("abcdefghijküberlang"), "abcdefghijkü");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
    }
}
