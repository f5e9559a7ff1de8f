//! The node's journal: an append-only file recording each run's start (with its process
//! group), its result, and the server's acknowledgement of that result.
//!
//! One file instead of a file per run: thousands of short jobs would otherwise create and
//! delete thousands of files, and some filesystems (ext4) slow down badly under that churn.
//! A line torn by a crash is skipped when the journal is read back. The file is emptied
//! whenever nothing is running or waiting to be reported.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lwr_model::RunId;
use lwr_model::api::{Outcome, RunResult};
use lwr_model::sync::lock;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry {
    Started { run: RunId, pgid: i32 },
    Ended { result: RunResult },
    Reported { run: RunId },
}

/// What a previous life of the node left behind.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Runs that were going when the node stopped, with their process groups.
    pub leftovers: Vec<(RunId, i32)>,
    /// Results the server has not acknowledged.
    pub unreported: Vec<RunResult>,
}

pub(crate) struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// Runs started and not ended.
    live: HashSet<RunId>,
    /// Runs ended and not acknowledged.
    unreported: HashSet<RunId>,
}

impl Journal {
    /// Opens the journal in `work_dir`, reading back what it holds.
    pub(crate) fn open(work_dir: &Path) -> std::io::Result<(Journal, Recovered)> {
        let path = work_dir.join("journal.jsonl");
        let recovered = match File::open(&path) {
            Ok(f) => read_back(f)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recovered::default(),
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let state = State {
            file,
            live: recovered.leftovers.iter().map(|(run, _)| *run).collect(),
            unreported: recovered.unreported.iter().map(|r| r.run_id).collect(),
        };
        Ok((
            Journal {
                path,
                state: Mutex::new(state),
            },
            recovered,
        ))
    }

    pub(crate) fn started(&self, run: RunId, pgid: i32) {
        self.append(&Entry::Started { run, pgid }, |s| {
            s.live.insert(run);
        });
    }

    pub(crate) fn ended(&self, result: &RunResult) {
        let run = result.run_id;
        self.append(
            &Entry::Ended {
                result: result.clone(),
            },
            |s| {
                s.live.remove(&run);
                s.unreported.insert(run);
            },
        );
    }

    pub(crate) fn reported(&self, runs: &[RunId]) {
        let mut state = lock(&self.state);
        for &run in runs {
            state.unreported.remove(&run);
        }
        if state.live.is_empty() && state.unreported.is_empty() {
            // Nothing in the file matters any more: start it afresh.
            if let Err(e) = state.file.set_len(0) {
                tracing::warn!("cannot empty {}: {e}", self.path.display());
            }
            return;
        }
        for &run in runs {
            write_entry(&mut state.file, &Entry::Reported { run }, &self.path);
        }
    }

    fn append(&self, entry: &Entry, update: impl FnOnce(&mut State)) {
        let mut state = lock(&self.state);
        write_entry(&mut state.file, entry, &self.path);
        update(&mut state);
    }
}

fn write_entry(file: &mut File, entry: &Entry, path: &Path) {
    let mut line = match serde_json::to_vec(entry) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!("cannot encode a journal entry: {e}");
            return;
        }
    };
    line.push(b'\n');
    // One write of the whole line, so a crash tears at most the last line.
    if let Err(e) = file.write_all(&line) {
        tracing::error!(
            "cannot write {}: {e}; a restart may not know about this run",
            path.display()
        );
    }
}

fn read_back(file: File) -> std::io::Result<Recovered> {
    let mut started: BTreeMap<RunId, i32> = BTreeMap::new();
    let mut ended: BTreeMap<RunId, RunResult> = BTreeMap::new();
    for line in BufReader::new(file).split(b'\n') {
        let Ok(entry) = serde_json::from_slice::<Entry>(&line?) else {
            continue; // a line torn by a crash
        };
        match entry {
            Entry::Started { run, pgid } => {
                started.insert(run, pgid);
            }
            Entry::Ended { result } => {
                started.remove(&result.run_id);
                ended.insert(result.run_id, result);
            }
            Entry::Reported { run } => {
                ended.remove(&run);
            }
        }
    }
    Ok(Recovered {
        leftovers: started.into_iter().collect(),
        unreported: ended.into_values().collect(),
    })
}

/// The result recorded for a run its node's previous life left going.
pub(crate) fn restarted(run_id: RunId) -> RunResult {
    RunResult {
        run_id,
        outcome: Outcome::Exception,
        exit_code: None,
        reason: Some("the node restarted while the job ran".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(run: RunId) -> RunResult {
        RunResult {
            run_id: run,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
        }
    }

    #[test]
    fn a_restart_finds_leftovers_and_unreported_results() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, rec) = Journal::open(dir.path()).unwrap();
            assert!(rec.leftovers.is_empty() && rec.unreported.is_empty());
            j.started(RunId(1), 100);
            j.started(RunId(2), 200);
            j.started(RunId(3), 300);
            j.ended(&ok(RunId(1)));
            j.ended(&ok(RunId(2)));
            j.reported(&[RunId(2)]);
        }
        // A crash tears the last line.
        let path = dir.path().join("journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ended\": {\"resu").unwrap();
        let (_, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.leftovers, vec![(RunId(3), 300)]);
        assert_eq!(
            rec.unreported.iter().map(|r| r.run_id).collect::<Vec<_>>(),
            vec![RunId(1)]
        );
    }

    #[test]
    fn the_journal_empties_when_nothing_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.started(RunId(1), 100);
        j.ended(&ok(RunId(1)));
        j.reported(&[RunId(1)]);
        assert_eq!(
            std::fs::metadata(dir.path().join("journal.jsonl"))
                .unwrap()
                .len(),
            0
        );
        j.started(RunId(2), 100);
        drop(j);
        let (_, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.leftovers, vec![(RunId(2), 100)]);
    }
}
