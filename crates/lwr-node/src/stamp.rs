//! Per-line timestamps (`lwr node --timestamps`): the job runs under `lwr stamp`, which sits in
//! the job's own process group between the job and its log file and starts every line with
//! the time it was written. The node itself stays out of the job's output path, so a node
//! restart never cuts a job's stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus};

use nix::sys::signal::{SigHandler, Signal, signal};

/// Starts each line of a stream with a timestamp, passing partial lines on at once (a job's
/// prompt or progress output shows up before its newline).
pub struct Stamper {
    at_line_start: bool,
}

impl Default for Stamper {
    fn default() -> Stamper {
        Stamper {
            at_line_start: true,
        }
    }
}

impl Stamper {
    /// Appends `chunk` to `out`, with `stamp` (and a space) before each line it starts.
    pub fn feed(&mut self, chunk: &[u8], stamp: &str, out: &mut Vec<u8>) {
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(stamp.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(piece);
            self.at_line_start = piece.ends_with(b"\n");
        }
    }
}

/// UTC now as `2026-11-28T12:00:00.123Z`.
fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Runs `argv` with stdout and stderr through one pipe (so their lines keep their order) and
/// copies its output, stamped, to this process's stdout; returns the exit code to exit with.
pub fn run(argv: &[OsString]) -> std::io::Result<i32> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "lwr stamp: no command given",
        ));
    };
    let (mut reader, writer) = std::io::pipe()?;
    let child = Command::new(program)
        .args(args)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        // As a shell says it: the job's log shows why, the exit code is the shell's.
        Err(e) => {
            eprintln!("lwr stamp: cannot start {}: {e}", program.to_string_lossy());
            return Ok(match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            });
        }
    };
    // A cancel or a timeout sends SIGTERM to the whole group: the job gets it, and this
    // process stays to copy what the job says while it shuts down (SIGKILL still ends it).
    // Set after the spawn, so the job does not inherit it.
    // SAFETY: SIG_IGN installs no handler code; nothing else here handles SIGTERM.
    let _ = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(copy_stamped(&mut reader));
    });
    let status = child.wait()?;
    // Output the job wrote before it exited is in the pipe: copy it. Something the job left
    // running may hold the pipe open for ever; the node kills it with the job's group.
    if let Ok(Err(e)) = done_rx.recv_timeout(DRAIN) {
        eprintln!("lwr stamp: {e}");
    }
    Ok(exit_code(status))
}

/// How long output still in the pipe may take to arrive after the job exits.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies `reader` to stdout, stamped, until every writer closed it.
fn copy_stamped(reader: &mut impl Read) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut stamper = Stamper::default();
    let mut buf = vec![0; 64 << 10];
    let mut stamped = Vec::with_capacity(buf.len() + 256);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stamped.clear();
        stamper.feed(&buf[..n], &now(), &mut stamped);
        out.write_all(&stamped)?;
        out.flush()?;
    }
}

/// The code a shell would report: the job's exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_stamped_once_even_across_chunks() {
        let mut s = Stamper::default();
        let mut out = Vec::new();
        s.feed(b"a\nb", "T1", &mut out);
        s.feed(b"c\n\nd", "T2", &mut out);
        s.feed(b"\n", "T3", &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "T1 a\nT1 bc\nT2 \nT2 d\n");
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let t = now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
