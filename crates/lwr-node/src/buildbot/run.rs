//! One run of a Buildbot job: force the build with lwr's properties, follow it (what the
//! bridge's event stream and poller see of its request, its logs into the run's log, the
//! lease kept by the node's heartbeats since the run is in `Node::running`), and map how it
//! ended to the run's result.
//!
//! Reading a build's logs costs the master a few requests (its steps, their logs, their
//! lines), so they are read while the build runs only when the server wants the run's log
//! (someone follows it), and once when the build ends: as soon as its build is seen
//! finished, which comes a moment before its request completes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lwr_client::Client;
use lwr_model::api::{Assignment, Outcome, RunResult};
use lwr_model::buildbot::{BuildResult, BuildbotJob, property_name};
use tokio::sync::oneshot;

use super::Bridge;
use super::logs::LogFollower;
use super::rest::{Build, BuildbotError};
use super::watch::Failure;
use crate::exec::Stop;
use std::io::Write as _;

/// How long the master may stay unreachable during a build before the run ends as an
/// infrastructure error.
const MASTER_GRACE: Duration = Duration::from_secs(60);
/// A running build's logs are read at most this often while someone follows them (and
/// once more when it ends).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The buildset reason that names a run, exact, so a restarted bridge finds its build.
pub fn reason(a: &Assignment) -> String {
    format!(
        "lwr run {} ({} of graph {})",
        a.run_id, a.job_name, a.graph_id
    )
}

fn result(a: &Assignment, outcome: Outcome, reason: String) -> RunResult {
    RunResult {
        node_bad: None,
        server_fault: false,
        unstarted: false,
        run_id: a.run_id,
        outcome,
        exit_code: None,
        reason: Some(reason),
    }
}

/// What the node tells a run while it goes.
pub(crate) struct Signals {
    /// Stop the build, and why.
    pub stop: oneshot::Receiver<Stop>,
    /// Whether the server wants the run's log now (see `RunLogs::started`).
    pub wanted: tokio::sync::watch::Receiver<bool>,
}

impl Bridge {
    /// Runs `a` (a Buildbot job) to its end: starts its build, or, when `resumed` (a
    /// previous life of the bridge claimed it), first looks for the build that life started.
    pub(crate) async fn run(
        &self,
        client: &Client,
        a: &Assignment,
        log: &Path,
        extra_file: &Path,
        signals: Signals,
        resumed: bool,
    ) -> RunResult {
        let Signals {
            mut stop,
            mut wanted,
        } = signals;
        let exception = |reason: String| result(a, Outcome::Exception, reason);
        // For the debug line that says where a run's time went.
        let begun = Instant::now();
        let Some(job) = a.buildbot.as_ref() else {
            return exception("not a Buildbot job (it has no buildbot:)".into());
        };
        let mut out = match std::fs::File::create(log) {
            Ok(f) => std::io::BufWriter::new(f),
            Err(e) => return exception(format!("cannot create log {}: {e}", log.display())),
        };
        let reason = reason(a);
        let found = if resumed {
            match self.rest.find_buildset(&reason).await {
                Ok(found) => found,
                Err(e) => return exception(e.to_string()),
            }
        } else {
            None
        };
        // When its build was forced: the event stream tells of it if it was up by then.
        let mut forced_at = None;
        let brid = match found {
            Some(bsid) => match self.rest.requests_of(bsid).await {
                Ok(reqs) if !reqs.is_empty() => {
                    tracing::info!("run {}: found its buildset {bsid} again", a.run_id);
                    reqs[0].buildrequestid
                }
                Ok(_) => return exception(format!("Buildbot buildset {bsid} has no request")),
                Err(e) => return exception(e.to_string()),
            },
            None => {
                let properties = match self.properties(client, a, job).await {
                    Ok(p) => p,
                    Err(e) => return exception(e),
                };
                let revision = a.source.as_ref().and_then(|s| s.revision.as_deref());
                forced_at = Some(Instant::now());
                match self
                    .rest
                    .force(&job.builder, &reason, revision, &properties)
                    .await
                {
                    Ok(forced) if !forced.requests.is_empty() => forced.requests[0],
                    Ok(forced) => {
                        return exception(format!(
                            "Buildbot made buildset {} without a build request for {}",
                            forced.bsid, job.builder
                        ));
                    }
                    Err(e) => {
                        return exception(format!("cannot start builder {}: {e}", job.builder));
                    }
                }
            }
        };
        let forced_ms = begun.elapsed().as_millis();
        let mut read_ms = None;
        let header = format!(
            "lwr: build request {brid} of builder {} on Buildbot {}\n",
            job.builder,
            self.rest.base()
        );
        let _ = std::io::Write::write_all(&mut out, header.as_bytes());
        let started = Instant::now();
        let timeout = Duration::from_secs(a.timeout_secs.max(1));
        // The bridge's one poller tells this run what became of its request.
        let mut seen_rx = self.watched.follow(brid, forced_at);
        let mut follower = LogFollower::default();
        let mut current: Option<Build> = None;
        let mut failing_since: Option<(Instant, String)> = None;
        // When the logs were last read, and the build whose logs were read whole.
        let mut logs_read: Option<Instant> = None;
        let mut whole: Option<i64> = None;
        // The name of the newest build's worker, asked when its build ends if unknown.
        let mut worker: Option<String> = None;
        let mut stop_open = true;
        let mut wanted_open = true;
        loop {
            tokio::select! {
                why = &mut stop, if stop_open => match why {
                    Ok(why) => {
                        let said = match why {
                            Stop::Abandoned => "abandoned: the server no longer holds this run for the node (cancelled or expired)",
                            Stop::Interrupted => "interrupted: the bridge was shut down while the build ran",
                        };
                        self.stop(brid, current.as_ref(), said).await;
                        return exception(format!("{said}; Buildbot build stopped"));
                    }
                    // The node dropped the handle without a word: nothing to stop for.
                    Err(_) => stop_open = false,
                },
                changed = seen_rx.changed() => if changed.is_err() {
                    return exception("the bridge stopped following Buildbot".into());
                },
                // Someone started following the log: read it now, not at the build's end.
                changed = wanted.changed(), if wanted_open => if changed.is_err() {
                    wanted_open = false;
                },
                // Followed, the running build's logs are read every LOG_EVERY.
                _ = tokio::time::sleep(LOG_EVERY), if *wanted.borrow() => {}
                _ = tokio::time::sleep_until((started + timeout).into()) => {}
            }
            if started.elapsed() > timeout {
                self.stop(brid, current.as_ref(), "lwr: the job timed out")
                    .await;
                let _ = follow_once(self, &mut follower, current.as_ref(), &mut out).await;
                return result(
                    a,
                    Outcome::Failed,
                    format!(
                        "timed out after {} s; Buildbot build stopped",
                        timeout.as_secs()
                    ),
                );
            }
            let seen = seen_rx.borrow_and_update().clone();
            let followed = *wanted.borrow_and_update();
            let mut failure = seen.error.clone();
            if failure.is_none()
                && let Some(newest) = seen.builds.last()
            {
                if current
                    .as_ref()
                    .is_some_and(|c| c.buildid != newest.buildid)
                {
                    // Buildbot retried the build: its logs follow the first one's.
                    follower = LogFollower::default();
                    let _ = writeln!(out, "lwr: Buildbot retried the build");
                }
                if current.as_ref().is_none_or(|c| c.buildid != newest.buildid) {
                    worker = None;
                }
                current = Some(newest.clone());
                // Read once the build was seen complete, the logs are whole; while it runs,
                // they are read every LOG_EVERY while someone follows them (the master
                // answers every bridge's reads).
                let due = match newest.complete {
                    true => whole != Some(newest.buildid),
                    false => followed && logs_read.is_none_or(|t| t.elapsed() >= LOG_EVERY),
                };
                if due {
                    logs_read = Some(Instant::now());
                    // The worker's name is asked beside the last read, not after it.
                    let name = async {
                        match worker {
                            None if newest.complete => self.worker_of(newest).await,
                            _ => None,
                        }
                    };
                    // A trusted request's finished build has all its steps and logs known
                    // from the event stream: only their lines are asked.
                    let read = async {
                        if newest.complete && seen.trusted {
                            let (steps, logs) = (&seen.steps, &seen.logs);
                            follower
                                .poll_known(&self.rest, newest, steps, logs, &mut out)
                                .await
                        } else {
                            follower.poll(&self.rest, newest, &mut out).await
                        }
                    };
                    let (read, name) = tokio::join!(read, name);
                    if name.is_some() {
                        worker = name;
                    }
                    match read {
                        Ok(_) if newest.complete => {
                            whole = Some(newest.buildid);
                            read_ms = Some(begun.elapsed().as_millis());
                        }
                        Ok(_) => {}
                        Err(e) => failure = Some(Failure::from(&e)),
                    }
                }
            }
            match failure {
                None => failing_since = None,
                Some(f) if f.transient => {
                    let since = failing_since.get_or_insert((Instant::now(), f.message));
                    if since.0.elapsed() > MASTER_GRACE {
                        return exception(format!(
                            "{} (for {} s during the build; its state is unknown)",
                            since.1,
                            MASTER_GRACE.as_secs()
                        ));
                    }
                    continue;
                }
                Some(f) => return exception(f.message),
            }
            if let Some(code) = seen.complete {
                if current.as_ref().is_some_and(|b| whole != Some(b.buildid)) {
                    // Complete before its build was seen complete: a last read.
                    let _ = follow_once(self, &mut follower, current.as_ref(), &mut out).await;
                }
                if let (None, Some(b)) = (&worker, &current) {
                    worker = self.worker_of(b).await;
                }
                let _ = std::io::Write::flush(&mut out);
                tracing::debug!(
                    "run {}: build request {brid} forced after {forced_ms} ms, the finished \
                     build's logs read after {read_ms:?} ms, the request complete after {} ms",
                    a.run_id,
                    begun.elapsed().as_millis()
                );
                return self.ended(a, job, code, current.as_ref(), worker, extra_file);
            }
        }
    }

    /// The run's result for a finished build request, with the build in the manifest's
    /// `extra`.
    fn ended(
        &self,
        a: &Assignment,
        job: &BuildbotJob,
        code: i64,
        build: Option<&Build>,
        worker: Option<String>,
        extra_file: &Path,
    ) -> RunResult {
        let name = BuildResult::name(code);
        let mut extra = serde_json::Map::new();
        extra.insert("builder".into(), job.builder.clone().into());
        extra.insert("results".into(), name.into());
        if let Some(b) = build {
            extra.insert("url".into(), self.rest.build_url(b).into());
            extra.insert("number".into(), b.number.into());
            extra.insert("buildid".into(), b.buildid.into());
            if let Some(worker) = worker {
                extra.insert("worker".into(), worker.into());
            }
        }
        let doc = serde_json::json!({ "buildbot": extra });
        if let Err(e) = std::fs::write(extra_file, doc.to_string()) {
            tracing::warn!(
                "run {}: cannot write {}: {e}",
                a.run_id,
                extra_file.display()
            );
        }
        let what = match build {
            Some(b) => format!("Buildbot build {} of {}", b.number, job.builder),
            None => format!("Buildbot request for {}", job.builder),
        };
        match BuildResult::of(code) {
            BuildResult::Succeeded => RunResult {
                node_bad: None,
                server_fault: false,
                unstarted: false,
                run_id: a.run_id,
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                reason: (code != 0).then(|| format!("{what}: {name}")),
            },
            BuildResult::Failed => result(a, Outcome::Failed, format!("{what}: {name}")),
            BuildResult::Infrastructure => result(a, Outcome::Exception, format!("{what}: {name}")),
        }
    }

    /// The name of the worker of `build`: its `workername` property when the poller read
    /// it, otherwise asked (once per worker) by the worker's id; `None` when unknown.
    async fn worker_of(&self, build: &Build) -> Option<String> {
        if let Some((name, _)) = build.properties.get("workername") {
            return name.as_str().map(str::to_string);
        }
        match self.rest.worker_name(build.workerid?).await {
            Ok(name) => name,
            Err(e) => {
                tracing::warn!("cannot read the name of worker {:?}: {e}", build.workerid);
                None
            }
        }
    }

    /// Stops the build, or cancels the request when no build has started; best effort.
    async fn stop(&self, brid: i64, build: Option<&Build>, why: &str) {
        let stopped = match build.filter(|b| !b.complete) {
            Some(b) => self.rest.stop_build(b.buildid, why).await,
            None => match self.rest.builds_of(brid).await {
                Ok(builds) => match builds.iter().rev().find(|b| !b.complete) {
                    Some(b) => self.rest.stop_build(b.buildid, why).await,
                    None => self.rest.cancel_request(brid, why).await,
                },
                Err(e) => Err(e),
            },
        };
        if let Err(e) = stopped {
            tracing::warn!("cannot stop Buildbot build request {brid}: {e}");
        }
    }

    /// The build's properties: the job's own, then lwr's: the job, graph, run and revision,
    /// each need's manifest URL and, for each artifact of each need, `NEED_ARTIFACT_url`.
    async fn properties(
        &self,
        client: &Client,
        a: &Assignment,
        job: &BuildbotJob,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut props = job.properties.clone();
        props.insert("lwr_job".into(), a.job_name.clone());
        props.insert("lwr_job_id".into(), a.job_id.to_string());
        props.insert("lwr_graph".into(), a.graph_id.to_string());
        props.insert("lwr_run".into(), a.run_number.to_string());
        props.insert("lwr_run_id".into(), a.run_id.to_string());
        if let Some(rev) = a.source.as_ref().and_then(|s| s.revision.clone()) {
            props.insert("lwr_revision".into(), rev);
        }
        // The job's own token reads its needs' manifests (a node token may not).
        let reader = client.clone().with_token(a.token.clone());
        let mut manifests = BTreeMap::new();
        for (need, location) in &a.manifests {
            let url = format!("{}{location}", client.server());
            let manifest = reader
                .manifest_at(&url)
                .await
                .map_err(|e| format!("cannot read the manifest of need {need}: {e}"))?;
            props.insert(property_name(&[need, "manifest", "url"]), url.clone());
            for artifact in &manifest.artifacts {
                props.insert(
                    property_name(&[need, &artifact.name, "url"]),
                    artifact.location.clone(),
                );
            }
            manifests.insert(need.clone(), url);
        }
        props.insert(
            "lwr_manifests".into(),
            serde_json::to_string(&manifests).unwrap_or_default(),
        );
        Ok(props)
    }
}

/// A last read of the logs (after a stop), ignoring errors.
async fn follow_once(
    bridge: &Bridge,
    follower: &mut LogFollower,
    build: Option<&Build>,
    out: &mut impl std::io::Write,
) -> Result<(), BuildbotError> {
    if let Some(b) = build {
        follower.poll(&bridge.rest, b, out).await?;
    }
    Ok(())
}
