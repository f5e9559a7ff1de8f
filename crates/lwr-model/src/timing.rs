//! Every interval that two parts of lwr must agree on, in one place, with the compile-time
//! assertions that tie them together. A change here that breaks one of those contracts does
//! not compile.

use std::time::Duration;

use crate::backoff::Backoff;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

// ---- leases and heartbeats ----

/// A run whose node stops renewing it for this long ends as `exception` and is retried
/// (`lwr server --lease`): long enough to ride out a few lost heartbeats, short enough that
/// a dead node's job is retried within a minute.
pub const DEFAULT_LEASE: Duration = secs(30);
/// A node renews its leases this many times per lease, so one or two lost heartbeats cost
/// no job.
pub const RENEWALS_PER_LEASE: u32 = 3;
/// Most time between two heartbeats, whatever the lease: a cancelled job is stopped, and a
/// node's silence noticed, within this. Affinity and the upload grace rely on it.
pub const HEARTBEAT_MAX: Duration = secs(5);
/// Least time between two heartbeats, for a very short lease (and before a node has heard
/// the lease at all).
pub const HEARTBEAT_MIN: Duration = secs(1);

/// How often a node heartbeats under a lease of `lease`: a [`RENEWALS_PER_LEASE`]th of it,
/// within [`HEARTBEAT_MIN`] and [`HEARTBEAT_MAX`].
pub const fn heartbeat_every(lease: Duration) -> Duration {
    let every = lease.as_secs() / RENEWALS_PER_LEASE as u64;
    if every < HEARTBEAT_MIN.as_secs() {
        HEARTBEAT_MIN
    } else if every > HEARTBEAT_MAX.as_secs() {
        HEARTBEAT_MAX
    } else {
        secs(every)
    }
}

/// How often each server looks for runs whose lease ran out.
pub const LEASE_SWEEP: Duration = secs(1);

// ---- node silence ----

/// How long a job's affinity node may have been silent and still be waited for: three
/// missed heartbeats (asserted below), so a node that merely lost one is still waited for
/// and a killed node's job runs elsewhere within seconds.
pub const AFFINITY_SILENCE: Duration = secs(15);
/// A node not heard from for this long is `lost`: it gets no work and no job waits for it
/// (`lwr server --node-lost-after`).
pub const DEFAULT_NODE_LOST_AFTER: Duration = secs(60);

// ---- stopping jobs and late logs ----

/// Between asking a job's process group to stop (SIGTERM) and killing it (SIGKILL).
pub const KILL_GRACE: Duration = secs(3);
/// How long a run that ended without a result of its own (cancelled, lost) may take to get
/// its log to the server: its node hears of it within a heartbeat, stops the job within
/// the kill grace, then uploads; the rest is room for the upload itself.
pub const UPLOAD_GRACE: Duration = secs(15);

// ---- long polls ----

/// Longest a server holds a claim or a graph wait open.
pub const MAX_WAIT: Duration = secs(60);
/// How long one node claim waits on the server for a job before asking again.
pub const CLAIM_WAIT: Duration = secs(20);
/// Longest a stopping node waits for the answer to its claim in flight, once it told the
/// server that it stops (which ends the claim's wait at once on the server it told).
pub const STOP_CLAIM_WAIT: Duration = secs(5);
/// How long a node's question "which logs do you want?" waits for an answer.
pub const STREAMS_WAIT: Duration = secs(20);
/// How long `lwr push --wait` waits for a change of the graph per request.
pub const PUSH_WAIT: Duration = secs(25);

// ---- retries ----

/// A node retrying a server that does not answer (register, claim, report, logs).
pub const NODE_RETRY: Backoff = Backoff {
    floor: millis(100),
    cap: secs(5),
};
/// `lwr push --wait` and `lwr watch` asking again for a server that does not answer.
pub const WATCH_RETRY: Backoff = Backoff {
    floor: millis(250),
    cap: secs(10),
};
/// A node uploading a finished run's artifacts or log that the server answers with an
/// error (507: its storage is full; 500) tries this many times in all, then ends the run
/// as an infrastructure error with the server's words (its artifacts) or reports it
/// without its log. A server that does not answer at all is retried without end.
pub const UPLOAD_TRIES: u32 = 5;
/// The pauses between those tries; meanwhile the node heartbeats and claims as usual.
pub const UPLOAD_RETRY: Backoff = Backoff {
    floor: secs(1),
    cap: secs(10),
};
/// Longest pause between polls of a failing repository; the floor is its poll interval.
pub const POLL_RETRY_CAP: Duration = secs(15 * 60);
/// Default time between two polls of a repository.
pub const DEFAULT_POLL_EVERY: Duration = secs(30);
/// How often a server's lost `LISTEN` connection (PostgreSQL) is tried again.
pub const LISTEN_RETRY: Duration = secs(1);

// ---- event and log streams ----

/// A Server-Sent Events stream sends a comment at least this often while nothing happens, so
/// proxies and the client's idle timeout see a live connection.
pub const SSE_KEEPALIVE: Duration = secs(15);
/// A client following a stream gives up on a server that sent nothing for this long, and
/// reconnects (to the next server, if it was given several).
pub const STREAM_IDLE_TIMEOUT: Duration = secs(45);

// ---- connections ----

/// A new connection must send its first request's header within this, or the server
/// closes it: what a silent or slow-header flood holds a connection for.
pub const FIRST_HEADER_TIMEOUT: Duration = secs(20);
/// A kept-alive connection idle (or sending a header) for this long is closed by the server.
pub const KEEPALIVE_IDLE: Duration = secs(75);
/// A client drops a pooled connection idle for this long, before the server does: it never
/// sends a request on a connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = secs(50);

// ---- sweeps ----

/// How often expired artifacts (and stale staged uploads) are deleted (`--artifact-sweep`).
pub const DEFAULT_ARTIFACT_SWEEP: Duration = secs(60);
/// How long a graph is kept after its last activity (`lwr server --keep`).
pub const DEFAULT_KEEP: Duration = secs(90 * 24 * 3600);
/// How often the retention pass runs.
pub const RETENTION_SWEEP: Duration = secs(3600);

// ---- duties (one server of several at a time) ----

/// How long a server holds a duty (provider, sweeps, polling) without renewing it: after a
/// server dies without letting go, another takes its duties over within this long.
pub const DUTY_LEASE: Duration = secs(10);
/// How often the holder renews a duty, and how often the others try to take it.
pub const DUTY_RENEW: Duration = secs(2);
/// Longest a renewal may take before the holder counts it as failed.
pub const DUTY_RENEW_TIMEOUT: Duration = secs(1);
/// The holder stops doing a duty this long before its lease runs out in the database, so
/// that a slow renewal and clocks a little apart never leave two servers doing it.
pub const DUTY_MARGIN: Duration = secs(3);

// The contracts. Each is an assumption some code makes about another part's timing.
const _: () = assert!(
    AFFINITY_SILENCE.as_millis() >= 3 * heartbeat_every(secs(u64::MAX)).as_millis(),
    "affinity must outlast three missed heartbeats of any lease"
);
const _: () = assert!(
    heartbeat_every(DEFAULT_LEASE).as_millis() * 2 < DEFAULT_LEASE.as_millis(),
    "a node must renew the default lease at least twice before it runs out"
);
const _: () = assert!(
    UPLOAD_GRACE.as_millis() >= HEARTBEAT_MAX.as_millis() + KILL_GRACE.as_millis(),
    "a cancelled job's node needs a heartbeat and the kill grace before it can upload"
);
const _: () = assert!(
    DEFAULT_NODE_LOST_AFTER.as_millis() > AFFINITY_SILENCE.as_millis(),
    "a node is silent to affinity before it is lost"
);
const _: () = assert!(
    LEASE_SWEEP.as_millis() < HEARTBEAT_MIN.as_millis() * 2,
    "an expired lease is noticed within about a heartbeat"
);
const _: () = assert!(
    CLAIM_WAIT.as_millis() <= MAX_WAIT.as_millis()
        && STREAMS_WAIT.as_millis() <= MAX_WAIT.as_millis()
        && PUSH_WAIT.as_millis() <= MAX_WAIT.as_millis(),
    "a long poll asks for no more than the server holds"
);
const _: () = assert!(
    CLIENT_POOL_IDLE.as_millis() + 10_000 <= KEEPALIVE_IDLE.as_millis(),
    "a client lets go of an idle connection well before the server closes it"
);
const _: () = assert!(
    FIRST_HEADER_TIMEOUT.as_millis() <= KEEPALIVE_IDLE.as_millis(),
    "a new connection gets no longer than an idle one"
);
const _: () = assert!(
    STREAM_IDLE_TIMEOUT.as_millis() >= 2 * SSE_KEEPALIVE.as_millis(),
    "a following client must not give up on a quiet stream before two keep-alives were missed"
);
const _: () = assert!(
    NODE_RETRY.cap.as_millis() <= HEARTBEAT_MAX.as_millis(),
    "a node back from an outage claims and reports within a heartbeat"
);

const _: () = assert!(
    DUTY_RENEW.as_millis() * 3 <= DUTY_LEASE.as_millis() - DUTY_MARGIN.as_millis(),
    "a duty's holder renews it at least three times before it stops counting on it"
);
const _: () = assert!(
    DUTY_MARGIN.as_millis() >= DUTY_RENEW_TIMEOUT.as_millis() + 1000,
    "a holder notices a lost duty before its lease runs out: a renewal's timeout and 1 s of \
     clock difference fit in the margin"
);
const _: () = assert!(
    UPLOAD_RETRY.cap.as_millis() * (UPLOAD_TRIES as u128) < 2 * DEFAULT_NODE_LOST_AFTER.as_millis(),
    "a run whose uploads keep failing ends within a couple of minutes"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_a_third_of_the_lease_within_bounds() {
        assert_eq!(heartbeat_every(secs(30)), secs(5));
        assert_eq!(heartbeat_every(secs(12)), secs(4));
        assert_eq!(heartbeat_every(secs(1)), secs(1));
        assert_eq!(heartbeat_every(secs(3600)), HEARTBEAT_MAX);
    }
}
