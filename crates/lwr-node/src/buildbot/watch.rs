//! One poller for all the builds a bridge follows. Each run used to poll the master on its
//! own (its builds, then its request), so forty builds made forty pollers and the master
//! spent its time answering them: the bridge halved Buildbot's throughput. Now one task
//! asks the master, every [`POLL`], for the builds of every followed build request in one
//! request (and for the requests themselves in a second one, when one of their builds has
//! ended or every [`ASK_EVERY`] looks), and hands each run what concerns it. Runs still read
//! their own build's logs (`logs.rs`), but only as often as [`super::run`] says.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use lwr_model::sync::lock;
use tokio::sync::{Notify, watch};

use super::rest::{Build, BuildRequest, BuildbotError, Rest};

/// How often the master is asked about the followed builds: short builds end soon, and the
/// bridge's latency is this plus the requests after a build ends. One request a tick
/// whatever the number of builds (two when one ended).
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// Every how many looks the requests are read although none of their builds ended (a
/// request cancelled before a build started has no build to say so).
const ASK_EVERY: u32 = 10;

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

/// The followed build requests and the poller's wake-up.
#[derive(Default)]
pub(crate) struct Watched {
    requests: Mutex<HashMap<i64, watch::Sender<Seen>>>,
    added: Notify,
}

impl Watched {
    /// Follows build request `brid` until the receiver is dropped.
    pub(crate) fn follow(&self, brid: i64) -> watch::Receiver<Seen> {
        let (tx, rx) = watch::channel(Seen::default());
        lock(&self.requests).insert(brid, tx);
        self.added.notify_one();
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

    fn publish(&self, brid: i64, update: impl FnOnce(&mut Seen)) {
        if let Some(tx) = lock(&self.requests).get(&brid) {
            tx.send_modify(|seen| {
                seen.looks += 1;
                update(seen);
            });
        }
    }
}

/// The poller: runs while the bridge lives.
pub(crate) async fn poll(rest: Rest, watched: std::sync::Arc<Watched>) {
    let mut looks = 0u32;
    loop {
        let brids = watched.followed();
        if brids.is_empty() {
            watched.added.notified().await;
            continue;
        }
        tokio::time::sleep(POLL).await;
        looks = looks.wrapping_add(1);
        let builds = match rest.builds_of_requests(&brids).await {
            Ok(builds) => builds,
            Err(e) => {
                let failure = Failure::from(&e);
                for brid in brids {
                    watched.publish(brid, |seen| seen.error = Some(failure.clone()));
                }
                continue;
            }
        };
        let mut by_request: BTreeMap<i64, Vec<Build>> = BTreeMap::new();
        for build in builds {
            if let Some(brid) = build.buildrequestid {
                by_request.entry(brid).or_default().push(build);
            }
        }
        // A request is read when its newest build ended (the request then has, unless
        // Buildbot retries it) or, for all of them, every ASK_EVERY looks.
        let ask: Vec<i64> = brids
            .iter()
            .copied()
            .filter(|brid| {
                looks.is_multiple_of(ASK_EVERY)
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
        for brid in brids {
            let mut builds = by_request.remove(&brid).unwrap_or_default();
            builds.sort_by_key(|b| b.buildid);
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
                seen.builds = builds;
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
}
