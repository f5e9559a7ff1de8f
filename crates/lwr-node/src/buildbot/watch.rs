//! How a bridge follows its builds: the master's event stream, with a REST poll as the
//! safety net.
//!
//! The master tells the bridge of every change to every build and build request as it
//! happens (`/sse`, [`follow_events`]): a build that starts, ends or is retried, and a
//! request that completes. So a run hears of its build's end at once, not at the next tick
//! of a poll (a 100 ms poll alone cost ~50 ms per build, and a REST request per tick).
//! Events can be missed (the stream was down, or connected after the build began), so a
//! request is followed by its events alone only when the stream was up before its build was
//! forced and stayed up since ("trusted"); any other request hears of its end from a REST
//! look at its builds and request, done at once when an event says it completed.
//!
//! One poller ([`poll`]) still asks the master about the followed requests, in one request
//! whatever their number: while the stream is up, every [`POLL_STREAMING`] about those it
//! does not trust and every [`TRUSTED_EVERY`] ticks about all of them (a master that stopped
//! answering with its stream open); every [`POLL`] about all of them while it is down. Every
//! request costs the master CPU that builds forced directly do not spend, so trusted builds
//! are not looked at every second.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lwr_model::sync::lock;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::rest::{Build, BuildRequest, BuildbotError, Event, Log, Rest, Step};

/// How often the master is asked about the followed builds while its event stream is down:
/// short builds end soon, and the bridge's latency is then this plus the requests after a
/// build ends. One request a tick whatever the number of builds (two when one ended).
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// How often while the event stream is up: requests it does not trust (forced before it came
/// up, resumed).
pub(crate) const POLL_STREAMING: Duration = Duration::from_secs(1);
/// Every how many ticks while the stream is up the trusted requests are looked at too: the
/// safety net for a master that hangs with its stream open (noticed within this plus
/// `MASTER_GRACE`).
const TRUSTED_EVERY: u32 = 10;
/// Every how many looks the requests are read although none of their builds ended (a
/// request cancelled before a build started has no build to say so).
const ASK_EVERY: u32 = 10;
/// The event paths followed: every change of every build request, build, step and log
/// (the steps and logs of a build ended are then known without asking).
const EVENT_PATHS: [&str; 4] = ["buildrequests/*/*", "builds/*/*", "steps/*/*", "logs/*/*"];
/// Pauses before opening the event stream again: after it broke, and at most (a master
/// without one, say behind a proxy that buffers answers, is asked again this rarely).
const STREAM_RETRY: Duration = Duration::from_secs(1);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(60);
/// Requests nobody follows yet whose events are kept: a build may start between the
/// force's answer and the run's [`Watched::follow`].
const EARLY_KEPT: usize = 256;
/// Builds and steps whose request is remembered, to place the events of their steps and
/// logs (the newest ones: ids only grow).
const OWNERS_KEPT: usize = 4096;

/// What the poller last saw of one build request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Its builds, oldest first (more than one after a retry).
    pub builds: Vec<Build>,
    /// `Some(results)` once the request is complete.
    pub complete: Option<i64>,
    /// The last look failed: why (the run decides how long it tolerates that).
    pub error: Option<Failure>,
    /// Looks so far, so that a failing look after a failing look is news too.
    pub looks: u64,
    /// Every event of the request since it was forced came on the stream: its builds'
    /// `steps` and `logs` are all known.
    pub trusted: bool,
    /// The steps and logs of its builds, as the stream told of them.
    pub steps: Vec<Step>,
    pub logs: Vec<Log>,
}

impl Seen {
    fn merge_step(&mut self, step: Step) {
        match self.steps.iter_mut().find(|s| s.stepid == step.stepid) {
            Some(known) => known.complete |= step.complete,
            None => self.steps.push(step),
        }
    }

    fn merge_log(&mut self, log: Log) {
        match self.logs.iter_mut().find(|l| l.logid == log.logid) {
            Some(known) => known.num_lines = known.num_lines.max(log.num_lines),
            None => self.logs.push(log),
        }
    }

    /// Adds what is now known of one build; a build's end and properties are never unseen
    /// (a REST answer may be older than an event published before it).
    fn merge(&mut self, build: Build) {
        match self.builds.iter_mut().find(|b| b.buildid == build.buildid) {
            Some(known) => {
                let mut build = build;
                if known.complete && !build.complete {
                    build.complete = true;
                    build.results = known.results;
                }
                if build.properties.is_empty() {
                    build.properties = std::mem::take(&mut known.properties);
                }
                *known = build;
            }
            None => {
                self.builds.push(build);
                self.builds.sort_by_key(|b| b.buildid);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub transient: bool,
    pub message: String,
}

impl From<&BuildbotError> for Failure {
    fn from(e: &BuildbotError) -> Failure {
        Failure {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

/// The followed build requests, what the event stream said, and the poller's wake-ups.
#[derive(Default)]
pub(crate) struct Watched {
    requests: Mutex<HashMap<i64, watch::Sender<Seen>>>,
    added: Notify,
    /// When the event stream last came up, while it is up.
    stream_up: Mutex<Option<Instant>>,
    /// What the stream said of requests nobody follows yet.
    early: Mutex<BTreeMap<i64, Seen>>,
    /// The request of each recent build, and the build of each recent step.
    build_request: Mutex<BTreeMap<i64, i64>>,
    step_build: Mutex<BTreeMap<i64, i64>>,
    /// Requests to look at now (an event said one completed); `poke_all`: every one.
    poked: Mutex<BTreeSet<i64>>,
    poke_all: std::sync::atomic::AtomicBool,
    poke: Notify,
}

impl Watched {
    /// Follows build request `brid` until the receiver is dropped. `forced`: when its
    /// build was forced (`None`: by a previous life of the bridge); its events are trusted
    /// when the stream has been up since.
    pub(crate) fn follow(&self, brid: i64, forced: Option<Instant>) -> watch::Receiver<Seen> {
        let trusted = match (*lock(&self.stream_up), forced) {
            (Some(up), Some(forced)) => up <= forced,
            _ => false,
        };
        let mut seen = lock(&self.early).remove(&brid).unwrap_or_default();
        seen.trusted = trusted;
        let untrusted_end = !trusted && seen.complete.is_some();
        let (tx, rx) = watch::channel(seen);
        lock(&self.requests).insert(brid, tx);
        self.added.notify_one();
        if untrusted_end {
            self.poke(brid);
        }
        rx
    }

    /// The requests someone still follows (forgetting the others).
    fn followed(&self) -> Vec<i64> {
        let mut requests = lock(&self.requests);
        requests.retain(|_, tx| !tx.is_closed());
        let mut ids: Vec<i64> = requests.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Of `brids`, those whose events are not all known to have come on the stream.
    fn untrusted(&self, brids: Vec<i64>) -> Vec<i64> {
        let requests = lock(&self.requests);
        brids
            .into_iter()
            .filter(|b| requests.get(b).is_some_and(|tx| !tx.borrow().trusted))
            .collect()
    }

    fn streaming(&self) -> bool {
        lock(&self.stream_up).is_some()
    }

    fn publish(&self, brid: i64, update: impl FnOnce(&mut Seen)) {
        if let Some(tx) = lock(&self.requests).get(&brid) {
            tx.send_modify(|seen| {
                seen.looks += 1;
                update(seen);
            });
        }
    }

    /// Applies `update` to what is known of request `brid`, followed or not yet.
    fn tell(&self, brid: i64, update: impl FnOnce(&mut Seen)) {
        if let Some(tx) = lock(&self.requests).get(&brid) {
            // Not a look: the run wakes only for what it acts on (builds, the end).
            tx.send_if_modified(|seen| {
                update(seen);
                false
            });
            return;
        }
        let mut early = lock(&self.early);
        update(early.entry(brid).or_default());
        while early.len() > EARLY_KEPT {
            early.pop_first();
        }
    }

    fn poke(&self, brid: i64) {
        lock(&self.poked).insert(brid);
        self.poke.notify_one();
    }

    fn poke_all(&self) {
        self.poke_all
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.poke.notify_one();
    }

    /// The requests to look at now: `None` for all of them.
    fn take_poked(&self) -> Option<Vec<i64>> {
        let poked = std::mem::take(&mut *lock(&self.poked));
        if self
            .poke_all
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        Some(poked.into_iter().collect())
    }

    fn stream_changed(&self, up: bool) {
        *lock(&self.stream_up) = up.then(Instant::now);
        if !up {
            // What happens while it is down is not told: nothing followed is trusted.
            for tx in lock(&self.requests).values() {
                tx.send_modify(|seen| seen.trusted = false);
            }
            lock(&self.early).clear();
        }
        // Down: the poller's tick shortens now. Up: what happened meanwhile is looked at.
        self.poke_all();
    }

    /// Takes in one event of the master's stream.
    fn event(&self, key: &[String], message: Value) {
        match key {
            [kind, _, _] if kind == "builds" => {
                let Ok(build) = serde_json::from_value::<Build>(message) else {
                    return;
                };
                let Some(brid) = build.buildrequestid else {
                    return;
                };
                remember(&self.build_request, build.buildid, brid);
                if lock(&self.requests).contains_key(&brid) {
                    self.publish(brid, |seen| seen.merge(build));
                } else {
                    self.tell(brid, |seen| seen.merge(build));
                }
            }
            [kind, _, _] if kind == "steps" => {
                let Ok(step) = serde_json::from_value::<Step>(message) else {
                    return;
                };
                let Some(brid) = lock(&self.build_request).get(&step.buildid).copied() else {
                    return;
                };
                remember(&self.step_build, step.stepid, step.buildid);
                self.tell(brid, |seen| seen.merge_step(step));
            }
            [kind, _, _] if kind == "logs" => {
                let Ok(log) = serde_json::from_value::<Log>(message) else {
                    return;
                };
                let brid = lock(&self.step_build)
                    .get(&log.stepid)
                    .and_then(|b| lock(&self.build_request).get(b).copied());
                if let Some(brid) = brid {
                    self.tell(brid, |seen| seen.merge_log(log));
                }
            }
            [kind, brid, what] if kind == "buildrequests" && what == "complete" => {
                let (Ok(brid), Ok(request)) = (
                    brid.parse::<i64>(),
                    serde_json::from_value::<BuildRequest>(message),
                ) else {
                    return;
                };
                let results = request.results.unwrap_or(-1);
                let trusted = lock(&self.requests)
                    .get(&brid)
                    .map(|tx| tx.borrow().trusted);
                match trusted {
                    // Its builds came on the stream too: it ended with what is known.
                    Some(true) => self.publish(brid, |seen| {
                        seen.complete = Some(results);
                        seen.error = None;
                    }),
                    // Its builds may not all have: a look says which they are.
                    Some(false) => self.poke(brid),
                    None => self.tell(brid, |seen| seen.complete = Some(results)),
                }
            }
            _ => {}
        }
    }
}

/// Keeps `owner` as the owner of `id`, forgetting the oldest beyond [`OWNERS_KEPT`].
fn remember(map: &Mutex<BTreeMap<i64, i64>>, id: i64, owner: i64) {
    let mut map = lock(map);
    map.insert(id, owner);
    while map.len() > OWNERS_KEPT {
        map.pop_first();
    }
}

/// Follows the master's event stream while the bridge lives, opening it again when it
/// breaks; tells [`Watched`] whether it is up.
pub(crate) async fn follow_events(rest: Rest, watched: std::sync::Arc<Watched>) {
    let mut pause = STREAM_RETRY;
    loop {
        match rest.events(&EVENT_PATHS).await {
            Ok(mut events) => {
                tracing::debug!("following the event stream of Buildbot at {}", rest.base());
                watched.stream_changed(true);
                pause = STREAM_RETRY;
                let why = loop {
                    match events.next().await {
                        Ok(Some(Event::Message { key, message })) => watched.event(&key, message),
                        Ok(Some(Event::Handshake(_))) => {}
                        Ok(None) => break "the master closed it".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                watched.stream_changed(false);
                tracing::info!(
                    "lost the event stream of Buildbot at {} ({why}); polling every {} ms meanwhile",
                    rest.base(),
                    POLL.as_millis()
                );
            }
            Err(e) => {
                tracing::debug!("no event stream from Buildbot: {e}");
                pause = (pause * 2).min(STREAM_RETRY_MAX);
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// The poller: runs while the bridge lives.
pub(crate) async fn poll(rest: Rest, watched: std::sync::Arc<Watched>) {
    let mut looks = 0u32;
    loop {
        let followed = watched.followed();
        if followed.is_empty() {
            watched.added.notified().await;
            continue;
        }
        let streaming = watched.streaming();
        let tick = if streaming { POLL_STREAMING } else { POLL };
        let (brids, ask_all) = tokio::select! {
            _ = tokio::time::sleep(tick) => {
                looks = looks.wrapping_add(1);
                let brids = if streaming && !looks.is_multiple_of(TRUSTED_EVERY) {
                    watched.untrusted(followed)
                } else {
                    followed
                };
                (brids, looks.is_multiple_of(ASK_EVERY))
            }
            _ = watched.poke.notified() => match watched.take_poked() {
                None => (followed, true),
                Some(poked) => (
                    poked.into_iter().filter(|b| followed.contains(b)).collect(),
                    true,
                ),
            },
        };
        if !brids.is_empty() {
            look(&rest, &watched, &brids, ask_all).await;
        }
    }
}

/// Asks the master about the requests `brids` (their builds in one request, and the
/// requests themselves in a second one, all of them when `ask_all`) and publishes the
/// answers.
async fn look(rest: &Rest, watched: &Watched, brids: &[i64], ask_all: bool) {
    let builds = match rest.builds_of_requests(brids).await {
        Ok(builds) => builds,
        Err(e) => {
            let failure = Failure::from(&e);
            for &brid in brids {
                watched.publish(brid, |seen| seen.error = Some(failure.clone()));
            }
            return;
        }
    };
    let mut by_request: BTreeMap<i64, Vec<Build>> = BTreeMap::new();
    for build in builds {
        if let Some(brid) = build.buildrequestid {
            by_request.entry(brid).or_default().push(build);
        }
    }
    // A request is read when its newest build ended (the request then has, unless Buildbot
    // retries it) or when asked to for all of them.
    let ask: Vec<i64> = brids
        .iter()
        .copied()
        .filter(|brid| {
            ask_all
                || by_request
                    .get(brid)
                    .and_then(|b| b.iter().max_by_key(|b| b.buildid))
                    .is_some_and(|b| b.complete)
        })
        .collect();
    let requests: Result<BTreeMap<i64, BuildRequest>, BuildbotError> = if ask.is_empty() {
        Ok(BTreeMap::new())
    } else {
        rest.requests(&ask)
            .await
            .map(|rs| rs.into_iter().map(|r| (r.buildrequestid, r)).collect())
    };
    for &brid in brids {
        let builds = by_request.remove(&brid).unwrap_or_default();
        // Ok(None): the request was not asked about this time.
        let request = match &requests {
            Ok(_) if !ask.contains(&brid) => Ok(None),
            Ok(found) => match found.get(&brid) {
                Some(r) => Ok(Some(r.complete.then(|| r.results.unwrap_or(-1)))),
                None => Err(Failure {
                    transient: false,
                    message: format!(
                        "unexpected answer from Buildbot at {}: build request {brid} is gone",
                        rest.base()
                    ),
                }),
            },
            Err(e) => Err(Failure::from(e)),
        };
        watched.publish(brid, |seen| {
            for build in builds {
                seen.merge(build);
            }
            match request {
                Ok(asked) => {
                    if let Some(complete) = asked {
                        seen.complete = complete;
                    }
                    seen.error = None;
                }
                Err(failure) => seen.error = Some(failure),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Vec<String> {
        k.split('/').map(str::to_string).collect()
    }

    fn build(buildid: i64, brid: i64, complete: bool) -> Value {
        json!({"buildid": buildid, "number": buildid, "builderid": 1, "buildrequestid": brid,
               "workerid": 1, "complete": complete, "results": if complete { json!(0) } else { Value::Null },
               "properties": {}})
    }

    fn up(w: &Watched) {
        w.stream_changed(true);
        let _ = w.take_poked();
    }

    #[test]
    fn a_trusted_request_ends_with_its_events_alone() {
        let w = Watched::default();
        up(&w);
        let rx = w.follow(7, Some(Instant::now()));
        w.event(&key("builds/3/new"), build(3, 7, false));
        w.event(&key("builds/9/new"), build(9, 8, false));
        w.event(&key("builds/3/finished"), build(3, 7, true));
        assert_eq!(rx.borrow().builds.len(), 1);
        assert!(rx.borrow().builds[0].complete);
        assert_eq!(rx.borrow().complete, None);
        w.event(
            &key("buildrequests/7/complete"),
            json!({"buildrequestid": 7, "complete": true, "results": 2}),
        );
        assert_eq!(rx.borrow().complete, Some(2));
        assert_eq!(w.take_poked(), Some(vec![]), "no look needed");
    }

    #[test]
    fn events_before_the_run_follows_are_kept_for_it() {
        let w = Watched::default();
        up(&w);
        let forced = Instant::now();
        w.event(&key("builds/3/new"), build(3, 7, false));
        w.event(&key("builds/3/finished"), build(3, 7, true));
        w.event(
            &key("buildrequests/7/complete"),
            json!({"buildrequestid": 7, "complete": true, "results": 0}),
        );
        let rx = w.follow(7, Some(forced));
        assert_eq!(rx.borrow().complete, Some(0));
        assert_eq!(rx.borrow().builds[0].buildid, 3);
    }

    #[test]
    fn a_request_forced_before_the_stream_came_up_is_looked_at_when_it_ends() {
        let w = Watched::default();
        let forced = Instant::now() - Duration::from_millis(1);
        up(&w);
        let rx = w.follow(7, Some(forced));
        w.event(
            &key("buildrequests/7/complete"),
            json!({"buildrequestid": 7, "complete": true, "results": 0}),
        );
        assert_eq!(rx.borrow().complete, None, "not from the event alone");
        assert_eq!(w.take_poked(), Some(vec![7]));
        // A resumed run's request is never trusted either.
        let rx = w.follow(8, None);
        w.event(
            &key("buildrequests/8/complete"),
            json!({"buildrequestid": 8, "complete": true, "results": 0}),
        );
        assert_eq!(rx.borrow().complete, None);
        assert_eq!(w.take_poked(), Some(vec![8]));
    }

    #[test]
    fn a_stream_that_broke_trusts_nothing_it_followed() {
        let w = Watched::default();
        up(&w);
        let rx = w.follow(7, Some(Instant::now()));
        w.stream_changed(false);
        assert_eq!(w.take_poked(), None, "the poller looks at every request");
        up(&w);
        w.event(
            &key("buildrequests/7/complete"),
            json!({"buildrequestid": 7, "complete": true, "results": 0}),
        );
        assert_eq!(rx.borrow().complete, None);
        assert_eq!(w.take_poked(), Some(vec![7]));
    }

    #[test]
    fn the_steps_and_logs_of_a_followed_build_are_known_from_its_events() {
        let w = Watched::default();
        up(&w);
        let forced = Instant::now();
        // The build starts before the run follows its request.
        w.event(&key("builds/3/new"), build(3, 7, false));
        w.event(
            &key("steps/20/new"),
            json!({"stepid": 20, "buildid": 3, "number": 0, "name": "worker_preparation", "complete": false}),
        );
        let rx = w.follow(7, Some(forced));
        w.event(
            &key("steps/21/new"),
            json!({"stepid": 21, "buildid": 3, "number": 1, "name": "run", "complete": false}),
        );
        w.event(
            &key("steps/99/new"),
            json!({"stepid": 99, "buildid": 4, "number": 0, "name": "other", "complete": false}),
        );
        let log = |lines| json!({"logid": 5, "stepid": 21, "name": "stdio", "num_lines": lines, "type": "s"});
        w.event(&key("logs/5/new"), log(0));
        w.event(&key("logs/5/append"), log(12));
        w.event(&key("logs/5/finished"), log(12));
        w.event(
            &key("steps/21/finished"),
            json!({"stepid": 21, "buildid": 3, "number": 1, "name": "run", "complete": true}),
        );
        let seen = rx.borrow().clone();
        assert!(seen.trusted);
        let steps: Vec<(i64, bool)> = seen.steps.iter().map(|s| (s.stepid, s.complete)).collect();
        assert_eq!(steps, [(20, false), (21, true)]);
        assert_eq!(seen.logs.len(), 1);
        assert_eq!((seen.logs[0].stepid, seen.logs[0].num_lines), (21, 12));
        w.stream_changed(false);
        assert!(!rx.borrow().trusted);
    }

    #[test]
    fn an_older_answer_does_not_unsee_an_end_or_properties() {
        let mut seen = Seen::default();
        let mut with_worker: Build = serde_json::from_value(build(3, 7, false)).unwrap();
        with_worker
            .properties
            .insert("workername".into(), (json!("w1"), "Worker".into()));
        seen.merge(with_worker);
        seen.merge(serde_json::from_value(build(3, 7, true)).unwrap());
        seen.merge(serde_json::from_value(build(3, 7, false)).unwrap());
        assert!(seen.builds[0].complete);
        assert_eq!(seen.builds[0].results, Some(0));
        assert!(seen.builds[0].properties.contains_key("workername"));
        seen.merge(serde_json::from_value(build(2, 7, true)).unwrap());
        let ids: Vec<i64> = seen.builds.iter().map(|b| b.buildid).collect();
        assert_eq!(ids, [2, 3]);
    }
}
