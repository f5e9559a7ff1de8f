//! A Buildbot build's step logs as the lwr run's log: each poll appends the lines Buildbot
//! added since the last one to the run's log file, which the node streams to followers
//! (`lwr logs -f`) and uploads when the run ends, as it does a process's output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use futures_util::{StreamExt, stream};

use super::rest::{Build, BuildbotError, Log, Rest, Step};

/// Requests to the master at once while reading one build's logs.
const AT_ONCE: usize = 4;

/// What of a build's logs is in the file already.
#[derive(Default)]
pub struct LogFollower {
    /// Lines taken per Buildbot log id.
    taken: BTreeMap<i64, i64>,
    /// Steps whose heading is written.
    headed: BTreeSet<i64>,
    /// Steps complete and read to their end: not asked about again.
    done: BTreeSet<i64>,
}

impl LogFollower {
    /// Appends what `build`'s logs gained to `out`; returns the bytes written. The logs of
    /// its steps, then their new lines, are asked side by side ([`AT_ONCE`] at a time): a
    /// build's end waits on these reads.
    pub async fn poll(
        &mut self,
        rest: &Rest,
        build: &Build,
        out: &mut impl Write,
    ) -> Result<u64, BuildbotError> {
        let steps: Vec<Step> = rest
            .steps(build.buildid)
            .await?
            .into_iter()
            .filter(|s| !self.done.contains(&s.stepid))
            .collect();
        // The futures gathered first: a stream over a borrowing closure is not Send enough
        // for the task that runs this.
        let asks: Vec<_> = steps.iter().map(|s| rest.logs(s.stepid)).collect();
        let logs: Vec<Result<Vec<Log>, BuildbotError>> =
            stream::iter(asks).buffered(AT_ONCE).collect().await;
        let mut known = Vec::new();
        for (step, logs) in steps.iter().zip(logs) {
            known.extend(logs?.into_iter().map(|log| Log {
                stepid: step.stepid,
                ..log
            }));
        }
        self.read(rest, &steps, &known, out).await
    }

    /// Like [`LogFollower::poll`] for a build whose `steps` and `logs` are all known
    /// already (the master's event stream told of each): only their lines are asked.
    pub async fn poll_known(
        &mut self,
        rest: &Rest,
        build: &Build,
        steps: &[Step],
        logs: &[Log],
        out: &mut impl Write,
    ) -> Result<u64, BuildbotError> {
        let mut steps: Vec<Step> = steps
            .iter()
            .filter(|s| s.buildid == build.buildid && !self.done.contains(&s.stepid))
            .cloned()
            .collect();
        steps.sort_by_key(|s| s.number);
        self.read(rest, &steps, logs, out).await
    }

    /// Appends the lines of `logs` (of any step; those of `steps` are read) not taken yet,
    /// step by step, log by log.
    async fn read(
        &mut self,
        rest: &Rest,
        steps: &[Step],
        logs: &[Log],
        out: &mut impl Write,
    ) -> Result<u64, BuildbotError> {
        // Each step's logs with lines not taken yet, in the order of the steps and logs.
        let mut steps_logs = Vec::with_capacity(steps.len());
        for step in steps {
            let mut new: Vec<(&Log, i64)> = logs
                .iter()
                .filter(|log| log.stepid == step.stepid)
                .filter_map(|log| {
                    let taken = self.taken.get(&log.logid).copied().unwrap_or(0);
                    (log.num_lines > taken).then_some((log, taken))
                })
                .collect();
            new.sort_by_key(|(log, _)| log.logid);
            steps_logs.push((step, new));
        }
        let asks: Vec<_> = steps_logs
            .iter()
            .flat_map(|(_, logs)| logs)
            .map(|(log, taken)| rest.log_lines(log.logid, *taken, log.num_lines - taken))
            .collect();
        let texts: Vec<Result<String, BuildbotError>> =
            stream::iter(asks).buffered(AT_ONCE).collect().await;
        let mut texts = texts.into_iter();
        let mut written = 0u64;
        for (step, logs) in steps_logs {
            for (log, _) in logs {
                let Some(text) = texts.next() else { break };
                let text = match text {
                    Ok(text) => text,
                    Err(e) => {
                        let _ = out.flush();
                        return Err(e);
                    }
                };
                if self.headed.insert(step.stepid) {
                    written += emit(
                        out,
                        format!("=== step {} {} ===\n", step.number + 1, step.name).as_bytes(),
                    );
                }
                let shown = if log.kind == "s" {
                    strip_streams(&text)
                } else {
                    text
                };
                written += emit(out, shown.as_bytes());
                // Buildbot answered for the whole range asked: those lines are taken.
                self.taken.insert(log.logid, log.num_lines);
            }
            // Read after the step completed, so nothing more will come.
            if step.complete {
                self.done.insert(step.stepid);
            }
        }
        let _ = out.flush();
        Ok(written)
    }
}

fn emit(out: &mut impl Write, bytes: &[u8]) -> u64 {
    match out.write_all(bytes) {
        Ok(()) => bytes.len() as u64,
        Err(e) => {
            tracing::warn!("cannot write a Buildbot log line: {e}");
            0
        }
    }
}

/// A stdio log's lines start with their stream (`o` stdout, `e` stderr, `h` header): the
/// run's log shows the text without it.
fn strip_streams(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut chars = line.chars();
        match chars.next() {
            Some('o' | 'e' | 'h') => out.push_str(chars.as_str()),
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_markers_are_dropped() {
        assert_eq!(
            strip_streams("hecho hi\nohi\neoops\n"),
            "echo hi\nhi\noops\n"
        );
    }
}
