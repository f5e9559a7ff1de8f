//! The deck: jobs a node claimed ahead of a free slot, each started by the next slot that
//! frees.
//!
//! Between two short jobs a slot waits for a round trip to the server (the result goes out
//! with a claim, the next job comes back), a millisecond or two that a `true` job does not
//! fill: with all slots waiting at once the machine idles. A node whose last run was short
//! therefore asks for up to one job per slot more than it has free, keeps them here, and
//! starts one the moment a slot frees while the claim that refills the deck is on its way.
//!
//! A job on the deck is the node's on the server (running, under the node's lease) though
//! no process runs it yet. So that it does not wait behind long jobs while other nodes are
//! free, one that waited [`DECK_WAIT`] goes back unstarted ([`given_back`]): the server
//! queues it again without spending a retry. A stopping node gives back its whole deck.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lwr_model::RunId;
use lwr_model::api::{Assignment, RunResult};
use lwr_model::sync::lock;
use tokio::sync::Notify;

/// A node claims ahead only after a run shorter than this: for longer jobs the round trip
/// between two of them is a small share of their time, and a job on the deck would wait
/// long for a slot.
pub(crate) const AHEAD_IF_UNDER: Duration = Duration::from_millis(250);

/// How long a job may wait on the deck before it goes back to the server.
pub(crate) const DECK_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct Deck {
    jobs: Mutex<VecDeque<(Assignment, Instant)>>,
    /// At most this many jobs (the node's slots; none for a Buildbot bridge).
    cap: usize,
    /// The last run to end here was short (under [`AHEAD_IF_UNDER`]); not before the first.
    short: AtomicBool,
    closed: AtomicBool,
    /// Wakes the watch ([`Deck::wait_filled`]) when a job is put on an empty deck.
    filled: Notify,
}

impl Deck {
    pub(crate) fn new(cap: usize) -> Deck {
        Deck {
            jobs: Mutex::default(),
            cap,
            short: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            filled: Notify::new(),
        }
    }

    /// How many jobs to claim now beyond the free slots: room on the deck, if the last run
    /// was short and the deck is open.
    pub(crate) fn room(&self) -> usize {
        if !self.short.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) {
            return 0;
        }
        self.cap.saturating_sub(lock(&self.jobs).len())
    }

    /// A run here took `took`.
    pub(crate) fn ran(&self, took: Duration) {
        self.short.store(took < AHEAD_IF_UNDER, Ordering::Relaxed);
    }

    /// Puts `a` on the deck; hands it back (`Some`) when the deck is closed (the node
    /// stops), to give back to the server.
    #[must_use]
    pub(crate) fn push(&self, a: Assignment, now: Instant) -> Option<Assignment> {
        let mut jobs = lock(&self.jobs);
        // Under the lock, as `close` sets it: nothing goes on a deck already emptied.
        if self.closed.load(Ordering::Relaxed) {
            return Some(a);
        }
        if jobs.is_empty() {
            self.filled.notify_one();
        }
        jobs.push_back((a, now));
        None
    }

    /// The job to start next (a closed deck is empty: see [`Deck::close`]).
    pub(crate) fn pop(&self) -> Option<Assignment> {
        lock(&self.jobs).pop_front().map(|(a, _)| a)
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.jobs).is_empty()
    }

    /// The runs on the deck: their leases are the node's to renew.
    pub(crate) fn runs(&self) -> Vec<RunId> {
        lock(&self.jobs).iter().map(|(a, _)| a.run_id).collect()
    }

    /// Takes `run` off the deck (the server no longer holds it for the node); whether it
    /// was there.
    pub(crate) fn remove(&self, run: RunId) -> bool {
        let mut jobs = lock(&self.jobs);
        let before = jobs.len();
        jobs.retain(|(a, _)| a.run_id != run);
        jobs.len() != before
    }

    /// Takes the jobs that have waited `wait` or longer at `now`. Then the node claims
    /// nothing ahead until a run ends: its slots are held by long runs, and a claim ahead
    /// would take back the very jobs it gives back.
    pub(crate) fn stale(&self, now: Instant, wait: Duration) -> Vec<Assignment> {
        let mut jobs = lock(&self.jobs);
        let mut stale = Vec::new();
        while jobs
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= wait)
        {
            if let Some((a, _)) = jobs.pop_front() {
                stale.push(a);
            }
        }
        if !stale.is_empty() {
            self.short.store(false, Ordering::Relaxed);
        }
        stale
    }

    /// Takes every job on the deck, to give back (the node turned unhealthy); as with
    /// [`Deck::stale`], nothing is claimed ahead until a run ends.
    pub(crate) fn take_all(&self) -> Vec<Assignment> {
        self.stale(Instant::now(), Duration::ZERO)
    }

    /// When the job that has waited longest was put on the deck.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        lock(&self.jobs).front().map(|(_, at)| *at)
    }

    /// Resolves once a job is put on the deck (at once if one was since the last time).
    pub(crate) async fn wait_filled(&self) {
        self.filled.notified().await;
    }

    /// Closes the deck (the node stops taking jobs) and takes every job on it.
    pub(crate) fn close(&self) -> Vec<Assignment> {
        let mut jobs = lock(&self.jobs);
        self.closed.store(true, Ordering::Relaxed);
        jobs.drain(..).map(|(a, _)| a).collect()
    }
}

/// The result that gives `run` back to the server unstarted.
pub(crate) fn given_back(run: RunId, why: &str) -> RunResult {
    RunResult {
        unstarted: true,
        ..RunResult::exception(run, format!("given back unstarted: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(run: i64) -> Assignment {
        serde_json::from_value(serde_json::json!({
            "run_id": run, "job_id": run, "graph_id": 1, "job_name": format!("j{run}"),
            "run_number": 1, "command": "true", "env": {}, "timeout_secs": 60, "lease_secs": 30
        }))
        .unwrap()
    }

    #[test]
    fn a_node_claims_ahead_only_after_a_short_run() {
        let deck = Deck::new(2);
        assert_eq!(deck.room(), 0, "nothing ran yet");
        deck.ran(Duration::from_secs(3));
        assert_eq!(deck.room(), 0, "a long run");
        deck.ran(Duration::from_millis(1));
        assert_eq!(deck.room(), 2);
        assert!(deck.push(job(1), Instant::now()).is_none());
        assert_eq!(deck.room(), 1);
        let bridge = Deck::new(0);
        bridge.ran(Duration::from_millis(1));
        assert_eq!(bridge.room(), 0, "a bridge has no deck");
    }

    #[test]
    fn jobs_leave_the_deck_in_order_and_not_after_it_closed() {
        let deck = Deck::new(3);
        let now = Instant::now();
        for run in 1..=3 {
            assert!(deck.push(job(run), now).is_none());
        }
        assert_eq!(deck.runs().len(), 3);
        assert!(deck.remove(RunId(2)));
        assert!(!deck.remove(RunId(2)));
        assert_eq!(deck.pop().map(|a| a.run_id.get()), Some(1));
        deck.ran(Duration::from_millis(1));
        let left: Vec<i64> = deck.close().iter().map(|a| a.run_id.get()).collect();
        assert_eq!(left, [3]);
        assert!(
            deck.push(job(4), now).is_some(),
            "a closed deck takes nothing"
        );
        assert_eq!(deck.room(), 0, "and claims nothing ahead");
    }

    #[test]
    fn jobs_that_waited_too_long_are_taken_oldest_first() {
        let deck = Deck::new(3);
        deck.ran(Duration::from_millis(1));
        let start = Instant::now();
        assert!(deck.push(job(1), start).is_none());
        assert!(deck.push(job(2), start + Duration::from_secs(1)).is_none());
        assert_eq!(deck.oldest(), Some(start));
        assert!(
            deck.stale(start + Duration::from_millis(1999), DECK_WAIT)
                .is_empty()
        );
        assert_eq!(deck.room(), 1);
        let stale = deck.stale(start + DECK_WAIT, DECK_WAIT);
        assert_eq!(
            stale.iter().map(|a| a.run_id.get()).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(deck.oldest(), Some(start + Duration::from_secs(1)));
        assert_eq!(deck.room(), 0, "no claim ahead takes it back");
        deck.ran(Duration::from_millis(1));
        assert_eq!(deck.room(), 2, "until a short run ends");
        let given = given_back(RunId(2), "its slots stayed busy");
        assert!(given.unstarted && given.outcome == lwr_model::api::Outcome::Exception);
    }
}
