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
    fn short_cuts_on_a_character_boundary() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("abcdefghijküberlang"), "abcdefghijkü");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
    }
}
