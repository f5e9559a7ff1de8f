//! The node's journal: an append-only file recording each run's start (with its process
//! group), its result, and the server's acknowledgement of that result; and the runs the
//! node claimed ahead and holds on its deck unstarted, which a restart gives back.
//!
//! One file instead of a file per run: thousands of short jobs would otherwise create and
//! delete thousands of files, and some filesystems (ext4) slow down badly under that churn.
//! A line torn by a crash is skipped when the journal is read back. The file is emptied
//! whenever nothing is running or waiting to be reported, and rewritten with only what
//! still matters once it grows past [`COMPACT_AT`], so a node that is never idle keeps it
//! small too.
//!
//! Durability: an entry is written (`write`) before anything else learns of it, so it
//! survives the node's process being killed (`kill -9`) at any point; it reaches the disk
//! itself within [`SYNC_WITHIN`], one `fdatasync` in the background for every result written
//! meanwhile ([`Journal::ended`]). Nothing waits for that sync: the server's
//! acknowledgement makes the result the server's, and a result that only a power cut took
//! before the server had it costs its job one more run (its lease runs out; see
//! docs/architecture.md). A sync per result, waited for before the acknowledgement was taken,
//! was an eighth of the node's CPU with thousands of short jobs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwr_model::RunId;
use lwr_model::api::RunResult;
use lwr_model::sync::lock;
use serde::{Deserialize, Serialize};

/// Size past which the journal is rewritten with only its live entries.
const COMPACT_AT: u64 = 256 * 1024;

/// The longest a result written stays in the page cache only: the results written within
/// it share one `fdatasync`.
const SYNC_WITHIN: Duration = Duration::from_millis(50);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry {
    Started {
        run: RunId,
        pgid: i32,
    },
    Ended {
        result: RunResult,
    },
    /// Also: a run on the deck that the node dropped (the server gave it up).
    Reported {
        run: RunId,
    },
    /// Claimed ahead, on the deck, not started. (A node from before this entry skips it,
    /// as it skips a torn line: the run then waits out its lease, as it did then.)
    Decked {
        run: RunId,
    },
}

/// What a previous life of the node left behind.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Runs that were going when the node stopped, with their process groups.
    pub leftovers: Vec<(RunId, i32)>,
    /// Results the server has not acknowledged.
    pub unreported: Vec<RunResult>,
    /// Runs that were on the deck, never started.
    pub decked: Vec<RunId>,
}

pub(crate) struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Shared with a sync running on a blocking thread.
    file: Arc<File>,
    /// Bytes in the file.
    size: u64,
    /// Results written so far, and how many of them a finished sync made durable.
    written: u64,
    synced: u64,
    /// A sync is due (see [`Journal::sync_soon`]) and has not started yet.
    sync_due: bool,
    /// Runs started and not ended, with their process groups.
    live: HashMap<RunId, i32>,
    /// Runs ended and not acknowledged, with their results.
    unreported: HashMap<RunId, RunResult>,
    /// Runs on the deck.
    decked: HashSet<RunId>,
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
            size: file.metadata()?.len(),
            file: Arc::new(file),
            written: 0,
            synced: 0,
            sync_due: false,
            live: recovered.leftovers.iter().copied().collect(),
            unreported: recovered
                .unreported
                .iter()
                .map(|r| (r.run_id, r.clone()))
                .collect(),
            decked: recovered.decked.iter().copied().collect(),
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
            s.decked.remove(&run);
            s.live.insert(run, pgid);
        });
    }

    /// Records a run put on the deck, claimed ahead: a restart gives it back.
    pub(crate) fn decked(&self, run: RunId) {
        self.append(&Entry::Decked { run }, |s| {
            s.decked.insert(run);
        });
    }

    /// Records that a run on the deck was dropped (the server no longer holds it for the
    /// node): nothing to give back.
    pub(crate) fn dropped(&self, run: RunId) {
        let mut state = lock(&self.state);
        if state.decked.remove(&run) {
            state.size += write_entry(&state.file, &Entry::Reported { run }, &self.path);
        }
    }

    /// Records a run's result; it reaches the disk within [`SYNC_WITHIN`].
    pub(crate) fn ended(self: &Arc<Self>, result: &RunResult) {
        let run = result.run_id;
        self.append(
            &Entry::Ended {
                result: result.clone(),
            },
            |s| {
                s.live.remove(&run);
                s.decked.remove(&run);
                s.unreported.insert(run, result.clone());
                s.written += 1;
            },
        );
        self.sync_soon();
    }

    pub(crate) fn reported(&self, runs: &[RunId]) {
        let mut state = lock(&self.state);
        for &run in runs {
            state.unreported.remove(&run);
        }
        if state.live.is_empty() && state.unreported.is_empty() && state.decked.is_empty() {
            // Nothing in the file matters any more: start it afresh.
            match state.file.set_len(0) {
                Ok(()) => state.size = 0,
                Err(e) => tracing::warn!("cannot empty {}: {e}", self.path.display()),
            }
            return;
        }
        for &run in runs {
            let n = write_entry(&state.file, &Entry::Reported { run }, &self.path);
            state.size += n;
        }
        if state.size > COMPACT_AT {
            self.compact(&mut state);
        }
    }

    /// Runs ended and not yet acknowledged by the server.
    pub(crate) fn unreported(&self) -> Vec<RunId> {
        lock(&self.state).unreported.keys().copied().collect()
    }

    /// Makes the results written so far durable after [`SYNC_WITHIN`], on a blocking thread,
    /// together with every result written until then; nothing when a sync is due already
    /// or nothing new was written. Outside a runtime (a test, a tool) it syncs at once.
    fn sync_soon(self: &Arc<Self>) {
        {
            let mut state = lock(&self.state);
            if state.sync_due || state.synced >= state.written {
                return;
            }
            state.sync_due = true;
        }
        let journal = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(SYNC_WITHIN).await;
                    if let Err(e) = tokio::task::spawn_blocking(move || journal.sync()).await {
                        tracing::error!("the journal's sync failed: {e}");
                    }
                });
            }
            Err(_) => journal.sync(),
        }
    }

    /// Syncs what was written so far (blocking).
    fn sync(&self) {
        let (file, target) = {
            let mut state = lock(&self.state);
            // Written from now on needs a sync of its own.
            state.sync_due = false;
            (state.file.clone(), state.written)
        };
        match file.sync_data() {
            Ok(()) => {
                let mut state = lock(&self.state);
                state.synced = state.synced.max(target);
            }
            Err(e) => tracing::error!("cannot sync {}: {e}", self.path.display()),
        }
    }

    /// Every result written so far is on disk.
    #[cfg(test)]
    fn all_synced(&self) -> bool {
        let state = lock(&self.state);
        state.synced >= state.written
    }

    /// Rewrites the file with only the runs still going and the results not acknowledged:
    /// written beside it, synced, then renamed over it, so a crash leaves one or the other.
    fn compact(&self, state: &mut State) {
        let tmp = self.path.with_extension("jsonl.new");
        let written = (|| -> std::io::Result<(File, u64)> {
            let file = File::create(&tmp)?;
            let mut size = 0;
            let entries = state
                .live
                .iter()
                .map(|(&run, &pgid)| Entry::Started { run, pgid })
                .chain(
                    state
                        .unreported
                        .values()
                        .map(|r| Entry::Ended { result: r.clone() }),
                )
                .chain(state.decked.iter().map(|&run| Entry::Decked { run }));
            for entry in entries {
                size += write_entry(&file, &entry, &tmp);
            }
            file.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            let file = OpenOptions::new().append(true).open(&self.path)?;
            Ok((file, size))
        })();
        match written {
            Ok((file, size)) => {
                tracing::debug!("journal compacted from {} to {size} bytes", state.size);
                state.file = Arc::new(file);
                state.size = size;
                // Everything written so far is in the synced copy (or was reported).
                state.synced = state.written;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!("cannot compact {}: {e}", self.path.display());
            }
        }
    }

    fn append(&self, entry: &Entry, update: impl FnOnce(&mut State)) {
        let mut state = lock(&self.state);
        let n = write_entry(&state.file, entry, &self.path);
        state.size += n;
        update(&mut state);
    }
}

/// Appends one entry as a line; returns the bytes written.
fn write_entry(mut file: &File, entry: &Entry, path: &Path) -> u64 {
    let mut line = match serde_json::to_vec(entry) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!("cannot encode a journal entry: {e}");
            return 0;
        }
    };
    line.push(b'\n');
    // One write of the whole line, so a crash tears at most the last line.
    match file.write_all(&line) {
        Ok(()) => line.len() as u64,
        Err(e) => {
            tracing::error!(
                "cannot write {}: {e}; a restart may not know about this run",
                path.display()
            );
            0
        }
    }
}

fn read_back(file: File) -> std::io::Result<Recovered> {
    let mut started: BTreeMap<RunId, i32> = BTreeMap::new();
    let mut ended: BTreeMap<RunId, RunResult> = BTreeMap::new();
    let mut decked: BTreeSet<RunId> = BTreeSet::new();
    for line in BufReader::new(file).split(b'\n') {
        let Ok(entry) = serde_json::from_slice::<Entry>(&line?) else {
            continue; // a line torn by a crash
        };
        match entry {
            Entry::Started { run, pgid } => {
                decked.remove(&run);
                started.insert(run, pgid);
            }
            Entry::Ended { result } => {
                decked.remove(&result.run_id);
                started.remove(&result.run_id);
                ended.insert(result.run_id, result);
            }
            Entry::Reported { run } => {
                decked.remove(&run);
                ended.remove(&run);
            }
            Entry::Decked { run } => {
                decked.insert(run);
            }
        }
    }
    Ok(Recovered {
        leftovers: started.into_iter().collect(),
        unreported: ended.into_values().collect(),
        decked: decked.into_iter().collect(),
    })
}

/// The result recorded for a run its node's previous life left going.
pub(crate) fn restarted(run_id: RunId) -> RunResult {
    RunResult::exception(run_id, "the node restarted while the job ran")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deck;

    #[test]
    fn a_restart_finds_leftovers_and_unreported_results() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, rec) = Journal::open(dir.path()).unwrap();
            let j = Arc::new(j);
            assert!(rec.leftovers.is_empty() && rec.unreported.is_empty());
            j.started(RunId(1), 100);
            j.started(RunId(2), 200);
            j.started(RunId(3), 300);
            j.ended(&RunResult::succeeded(RunId(1)));
            j.ended(&RunResult::succeeded(RunId(2)));
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

    #[tokio::test]
    async fn results_reach_the_disk_within_the_sync_delay_one_sync_for_all() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = Arc::new(j);
        j.started(RunId(1), 100);
        assert!(j.all_synced(), "a start alone needs no sync");
        j.ended(&RunResult::succeeded(RunId(1)));
        j.ended(&RunResult::succeeded(RunId(2)));
        assert!(!j.all_synced(), "not synced at once");
        assert!(lock(&j.state).sync_due, "one sync due for both");
        tokio::time::sleep(SYNC_WITHIN).await;
        for _ in 0..500 {
            if j.all_synced() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(j.all_synced(), "both synced after the delay");
        assert!(!lock(&j.state).sync_due);
        // Written later: a sync of its own.
        j.ended(&RunResult::succeeded(RunId(3)));
        assert!(lock(&j.state).sync_due && !j.all_synced());
    }

    #[test]
    fn without_a_runtime_a_result_is_synced_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = Arc::new(j);
        j.ended(&RunResult::succeeded(RunId(1)));
        assert!(j.all_synced());
    }

    // In a runtime, as on a node: outside one every result would be synced on its own.
    #[tokio::test]
    async fn a_busy_journal_compacts_and_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = Arc::new(j);
        // One run stays going and one result stays unreported the whole time: the node is
        // never idle, so the file is never simply emptied.
        j.started(RunId(1), 111);
        j.started(RunId(2), 222);
        j.ended(&RunResult::succeeded(RunId(2)));
        let mut largest = 0;
        for run in 10..5_000 {
            j.started(RunId(run), 1);
            j.ended(&RunResult::succeeded(RunId(run)));
            j.reported(&[RunId(run)]);
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
        assert!(
            largest <= COMPACT_AT + 1024,
            "journal grew to {largest} bytes"
        );
        drop(j);
        let (_, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.leftovers, vec![(RunId(1), 111)]);
        let unreported: Vec<RunId> = rec.unreported.iter().map(|r| r.run_id).collect();
        assert_eq!(unreported, vec![RunId(2)]);
    }

    #[test]
    fn a_restart_finds_the_runs_left_on_the_deck() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            let j = Arc::new(j);
            for run in 1..=4 {
                j.decked(RunId(run));
            }
            j.started(RunId(1), 100); // left the deck for a slot
            j.ended(&deck::given_back(RunId(2), "no slot freed")); // given back
            j.dropped(RunId(3)); // the server gave it up
            // A busy journal compacts: what is on the deck stays.
            j.started(RunId(9), 900);
            j.ended(&RunResult::succeeded(RunId(9)));
            for run in 10..5_000 {
                j.started(RunId(run), 1);
                j.ended(&RunResult::succeeded(RunId(run)));
                j.reported(&[RunId(run)]);
            }
        }
        let (_, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.decked, vec![RunId(4)]);
        assert_eq!(rec.leftovers, vec![(RunId(1), 100)]);
        // Nothing else pending but a run on the deck: the file is not emptied.
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = Arc::new(j);
        j.decked(RunId(7));
        j.started(RunId(1), 100);
        j.ended(&RunResult::succeeded(RunId(1)));
        j.reported(&[RunId(1)]);
        drop(j);
        let (_, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.decked, vec![RunId(7)]);
    }

    #[test]
    fn the_journal_empties_when_nothing_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = Arc::new(j);
        j.started(RunId(1), 100);
        j.ended(&RunResult::succeeded(RunId(1)));
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
