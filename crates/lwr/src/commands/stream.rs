//! Reading a committed lwr.yml as `git show` writes it, without holding its text: a
//! 100,000-job file is 30 MiB, which a push would otherwise hold beside the graph it
//! becomes.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use lwr_model::Graph;

/// Bytes read from the pipe at a time.
const READ_CHUNK: usize = 64 << 10;

/// `read_to_string`'s words for a file that is not UTF-8.
const NOT_UTF8: &str = "stream did not contain valid UTF-8";

/// The characters of a byte stream, invalid UTF-8 replaced as `String::from_utf8_lossy`
/// replaces it in the whole text (or, when `strict`, a failure as `read_to_string`'s); a read
/// error ends them and is kept in `failure`.
struct LossyChars<R> {
    reader: R,
    strict: bool,
    bytes: Vec<u8>,
    /// Bytes at the end of `bytes` that may begin a character the next read completes.
    tail: usize,
    text: String,
    at: usize,
    done: bool,
    failure: Arc<Mutex<Option<String>>>,
}

impl<R: Read> LossyChars<R> {
    fn new(reader: R, failure: Arc<Mutex<Option<String>>>) -> Self {
        LossyChars {
            reader,
            strict: false,
            bytes: vec![0; READ_CHUNK],
            tail: 0,
            text: String::with_capacity(READ_CHUNK),
            at: 0,
            done: false,
            failure,
        }
    }

    /// Decodes the next chunk into `text`; false at the end.
    fn fill(&mut self) -> bool {
        self.text.clear();
        self.at = 0;
        while self.text.is_empty() && !self.done {
            let n = loop {
                match self.reader.read(&mut self.bytes[self.tail..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        fail(&self.failure, e.to_string());
                        break 0;
                    }
                    Ok(n) => break n,
                }
            };
            let mut end = self.tail + n;
            if n == 0 {
                // The end: an unfinished character at it is replaced, as a whole text's is.
                self.done = true;
                if self.tail > 0 && self.strict {
                    fail(&self.failure, NOT_UTF8.into());
                    break;
                }
                self.text
                    .push_str(&String::from_utf8_lossy(&self.bytes[..self.tail]));
                self.tail = 0;
                break;
            }
            let mut start = 0;
            loop {
                match std::str::from_utf8(&self.bytes[start..end]) {
                    Ok(s) => {
                        self.text.push_str(s);
                        start = end;
                        break;
                    }
                    Err(e) => {
                        let valid = start + e.valid_up_to();
                        // UTF-8 up to `valid_up_to`, so never the default.
                        self.text.push_str(
                            std::str::from_utf8(&self.bytes[start..valid]).unwrap_or_default(),
                        );
                        match e.error_len() {
                            Some(_) if self.strict => {
                                fail(&self.failure, NOT_UTF8.into());
                                self.done = true;
                                start = end;
                                break;
                            }
                            Some(bad) => {
                                self.text.push(char::REPLACEMENT_CHARACTER);
                                start = valid + bad;
                            }
                            // A character cut by the chunk's end: kept for the next read.
                            None => {
                                start = valid;
                                break;
                            }
                        }
                    }
                }
            }
            self.bytes.copy_within(start..end, 0);
            end -= start;
            self.tail = end;
        }
        !self.text.is_empty()
    }
}

impl<R: Read> Iterator for LossyChars<R> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        if self.at == self.text.len() && !self.fill() {
            return None;
        }
        let c = self.text[self.at..].chars().next()?;
        self.at += c.len_utf8();
        Some(c)
    }
}

fn fail(failure: &Mutex<Option<String>>, message: String) {
    lwr_model::sync::lock(failure).get_or_insert(message);
}

/// A running `git show`'s output as characters; at its end, a git that failed is a failure.
struct GitShow {
    child: Option<Child>,
    chars: Option<LossyChars<std::process::ChildStdout>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl GitShow {
    fn start(repo: &Path, spec: &str, failure: Arc<Mutex<Option<String>>>) -> GitShow {
        let started = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["show", spec])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match started {
            Ok(mut child) => {
                let chars = child
                    .stdout
                    .take()
                    .map(|out| LossyChars::new(out, failure.clone()));
                GitShow {
                    child: Some(child),
                    chars,
                    failure,
                }
            }
            Err(e) => {
                fail(&failure, format!("cannot run git: {e}"));
                GitShow {
                    child: None,
                    chars: None,
                    failure,
                }
            }
        }
    }

    /// Waits for git once its output is read; a failure is kept with what git said.
    fn end(&mut self) {
        self.chars = None;
        let Some(child) = self.child.take() else {
            return;
        };
        match child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.lines().next().unwrap_or_default();
                fail(
                    &self.failure,
                    format!("git show failed ({}): {said}", out.status),
                );
            }
            Err(e) => fail(&self.failure, format!("git show: {e}")),
        }
    }
}

impl Iterator for GitShow {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let c = self.chars.as_mut().and_then(Iterator::next);
        if c.is_none() {
            self.end();
        }
        c
    }
}

impl Drop for GitShow {
    fn drop(&mut self) {
        // Read only in part: git is not needed any more.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The graph of `repo`'s `spec` (`REV:./lwr.yml`, which must exist), read from `git show`
/// as it writes it; `bytes` is the file's size (`git cat-file -s`). `label` names the file
/// in errors.
pub(super) fn parse_committed(
    repo: &Path,
    spec: &str,
    bytes: usize,
    label: &str,
) -> anyhow::Result<Graph> {
    let failure = Arc::new(Mutex::new(None));
    let open = || GitShow::start(repo, spec, failure.clone());
    let parsed = lwr_model::graph::parse_stream(Some(bytes), open, label);
    // What the parser saw is not the file when git could not deliver it: that comes first.
    let failed = lwr_model::sync::lock(&failure).take();
    if let Some(failed) = failed {
        return Err(anyhow::anyhow!(failed)).with_context(|| format!("cannot read {label}"));
    }
    Ok(parsed?)
}

/// The graph of the file at `path` (an lwr.yml in a working tree), read as it streams:
/// errors as `std::fs::read_to_string` then [`lwr_model::graph::parse`] would give them.
pub(super) fn parse_file(path: &Path) -> anyhow::Result<Graph> {
    let cannot_read = || format!("cannot read {}", path.display());
    let file = std::fs::File::open(path).with_context(cannot_read)?;
    let bytes = file.metadata().with_context(cannot_read)?.len();
    let failure = Arc::new(Mutex::new(None));
    let mut first = Some(file);
    // The first reading uses the file opened above, a second one (for the lines of an error)
    // opens it again.
    let open = || {
        let file = first
            .take()
            .map_or_else(|| std::fs::File::open(path), Ok)
            .map_err(|e| fail(&failure, e.to_string()))
            .ok();
        let mut chars = file.map(|f| LossyChars::new(f, failure.clone()));
        if let Some(chars) = &mut chars {
            chars.strict = true;
        }
        chars.into_iter().flatten()
    };
    let label = path.display().to_string();
    let parsed = lwr_model::graph::parse_stream(
        Some(usize::try_from(bytes).unwrap_or(usize::MAX)),
        open,
        &label,
    );
    let failed = lwr_model::sync::lock(&failure).take();
    if let Some(failed) = failed {
        return Err(anyhow::anyhow!(failed)).with_context(cannot_read);
    }
    Ok(parsed?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out at most `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn characters_are_those_of_the_lossy_whole_text_however_the_reads_cut_it() {
        let mut bytes = "version: 1\njobs:\n  é: {run: 'ü ∑ 😀'}\n"
            .as_bytes()
            .to_vec();
        // Invalid sequences: a lone continuation byte, a cut 3-byte character, a bad lead.
        bytes.extend_from_slice(b"  x: \x80 \xe2\x88 \xff ok\n");
        bytes.extend(std::iter::repeat_n(b'a', READ_CHUNK + 3));
        bytes.extend_from_slice("😀".as_bytes());
        // Ends in the middle of a character.
        bytes.extend_from_slice(&"😀".as_bytes()[..2]);
        let want = String::from_utf8_lossy(&bytes).into_owned();
        for step in [1, 2, 3, 5, 7, 4096, READ_CHUNK, usize::MAX] {
            let failure = Arc::new(Mutex::new(None));
            let got: String = LossyChars::new(Trickle(&bytes, step), failure.clone()).collect();
            assert_eq!(got, want, "reads of {step} bytes");
            assert!(failure.lock().unwrap().is_none());
        }
    }

    #[test]
    fn strict_characters_stop_at_invalid_utf8_as_read_to_string_refuses_it() {
        for bytes in [&b"ok \x80 no"[..], b"ok \xe2\x88", "ok ∑".as_bytes()] {
            let failure = Arc::new(Mutex::new(None));
            let mut chars = LossyChars::new(Trickle(bytes, 2), failure.clone());
            chars.strict = true;
            let _: String = chars.collect();
            let want = std::str::from_utf8(bytes).err().map(|_| NOT_UTF8);
            assert_eq!(failure.lock().unwrap().as_deref(), want, "{bytes:?}");
        }
    }

    #[test]
    fn a_read_error_ends_the_characters_and_is_kept() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let failure = Arc::new(Mutex::new(None));
        assert_eq!(LossyChars::new(Broken, failure.clone()).count(), 0);
        assert_eq!(failure.lock().unwrap().as_deref(), Some("disk on fire"));
    }
}
