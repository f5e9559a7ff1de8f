//! `lwr watch GRAPH` and `lwr push --wait`: a graph followed until it ends, in the manner
//! of `gh run watch`. The server's graph long-poll says when something changed; the graph's
//! jobs are then read once and compared with the last look ([`changes`]), so changes that
//! came close together are shown together and none is lost. [`view`] shows them.
//!
//! Exit codes: 0 every job succeeded, 1 some did not, 2 a server error, 124 `--timeout`
//! ran out, 130 Ctrl-C. Neither of the last two stops the graph; the message says how.

mod changes;
mod view;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use lwr_client::{Client, ClientError};
use lwr_model::api::{GraphInfo, JobInfo, StateCounts};
use lwr_model::{GraphId, JobState, timing};
use tokio::time::Instant;

use self::changes::Tracker;
use self::view::View;
use crate::cli::{WatchArgs, WatchOpts};
use crate::output::{duration, span};

/// Exit code of a watch that `--timeout` ended (as `timeout(1)`'s).
pub const TIMED_OUT: u8 = 124;
/// Exit code of a watch that Ctrl-C ended (128 + SIGINT, as a shell reports it).
pub const INTERRUPTED: u8 = 130;
/// Exit code of a usage or server error.
pub const SERVER_ERROR: u8 = 2;
/// How long one long poll waits: also how often jobs that cannot start are looked at again.
const POLL_WAIT: Duration = Duration::from_secs(5);
/// Least time between two reads of the jobs; a slow read (a big graph) spaces them more.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Most time between two reads of the jobs while something changes.
const MAX_GAP: Duration = Duration::from_secs(2);
/// A read of the jobs is followed by at least this many times its own length without one
/// (its length as the watch sees it: the network's share too).
const GAP_PER_READ: u32 = 10;
/// ... and by at least this much a job read. A listing costs the server about 4 us a job:
/// with ten times the read's length alone, a watch of 4,000 jobs through `lwr dev` read
/// them 16 times in 3.4 s, 15 ms each, about 4% of the two cores' time (and every person
/// watching adds as much). A graph of 4,000 jobs is now read every 400 ms.
const GAP_PER_JOB: Duration = Duration::from_micros(100);
/// Lines of each failed job's log shown at the end.
const TAIL_LINES: usize = 10;
/// Failed jobs whose log tails are shown; more are only listed.
const MAX_TAILS: usize = 5;
/// How long the server may stay away before the watch gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// Without a terminal, a line saying what still runs when nothing changed for this long.
const QUIET_LINE: Duration = Duration::from_secs(60);

/// `lwr watch GRAPH`.
pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let looked = async {
        let id = super::query::resolve_graph(&client, args.graph).await?;
        Ok::<_, anyhow::Error>(client.graph(id, None, Duration::ZERO).await?)
    };
    let info = match looked.await {
        Ok(info) => info,
        Err(e) => {
            eprintln!("error: {}", crate::one_line(&e));
            return Ok(ExitCode::from(SERVER_ERROR));
        }
    };
    let what = [info.repository.as_deref(), info.branch.as_deref()]
        .into_iter()
        .flatten()
        .chain(info.revision.as_deref().map(crate::output::short))
        .collect::<Vec<_>>()
        .join(" ");
    outln!(
        "watching graph {} ({}{}{})",
        info.id,
        lwr_model::words::count(info.counts.total(), "job", "jobs"),
        if what.is_empty() { "" } else { ", " },
        what
    );
    Ok(watch(&client, info, &args.watch).await)
}

/// Why watching stopped before the graph finished.
enum Stop {
    Interrupted,
    TimedOut,
}

/// Follows graph `info` until it finishes (or the watch stops); returns the exit code.
pub async fn watch(client: &Client, info: GraphInfo, opts: &WatchOpts) -> ExitCode {
    let mut w = Watch {
        client,
        id: info.id,
        view: View::new(),
        ctrl_c: Box::pin(tokio::signal::ctrl_c()),
        deadline: opts.timeout.map(|t| Instant::now() + t),
        tick: tokio::time::interval(Duration::from_secs(1)),
        outage: None,
    };
    w.view.note(&format!(
        "graph {}: {}/graphs/{}",
        info.id,
        client.server(),
        info.id
    ));
    match w.follow(info, opts.fail_fast).await {
        Ok((info, jobs)) => {
            w.view.finish();
            w.summary(&info, &jobs).await;
            if info.counts.succeeded == info.counts.total() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(Ended::Stopped(Stop::Interrupted, _)) => {
            w.view.finish();
            eprintln!(
                "stopped watching; graph {id} goes on. To cancel it: {cancel}; to watch it \
                 again: lwr watch {id}",
                id = w.id,
                cancel = w.command(&format!("lwr cancel --graph {}", w.id)),
            );
            ExitCode::from(INTERRUPTED)
        }
        Err(Ended::Stopped(Stop::TimedOut, jobs)) => {
            w.view.finish();
            let after = opts.timeout.map(duration).unwrap_or_default();
            outln!(
                "timed out after {after} watching graph {id}, which goes on (to cancel it: \
                 {cancel})",
                id = w.id,
                cancel = w.command(&format!("lwr cancel --graph {}", w.id)),
            );
            w.unfinished(&jobs);
            w.tails(&jobs).await;
            ExitCode::from(TIMED_OUT)
        }
        Err(Ended::Failed(e)) => {
            w.view.finish();
            eprintln!("error: watching graph {}: {e}", w.id);
            ExitCode::from(SERVER_ERROR)
        }
    }
}

enum Ended {
    /// Stopped watching, with the jobs as last seen.
    Stopped(Stop, Vec<JobInfo>),
    Failed(String),
}

struct Watch<'c> {
    client: &'c Client,
    id: GraphId,
    view: View,
    ctrl_c: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
    deadline: Option<Instant>,
    tick: tokio::time::Interval,
    /// Since when the server has not answered.
    outage: Option<(std::time::Instant, u32)>,
}

impl Watch<'_> {
    /// Watches until the graph finishes; returns it and its jobs as they ended.
    async fn follow(
        &mut self,
        mut info: GraphInfo,
        fail_fast: bool,
    ) -> Result<(GraphInfo, Vec<JobInfo>), Ended> {
        let mut tracker = Tracker::default();
        let mut jobs: Vec<JobInfo> = Vec::new();
        let mut looked: Option<(StateCounts, Instant, Duration)> = None;
        let mut cancelled = false;
        let mut last_line = Instant::now();
        loop {
            let stale = looked.is_none_or(|(counts, at, _)| {
                counts != info.counts || at.elapsed() >= POLL_WAIT || info.finished
            });
            if stale {
                let asked = Instant::now();
                let (client, id) = (self.client, self.id);
                let list = self.ask(|| client.jobs(Some(id)), &jobs).await?;
                looked = Some((info.counts, asked, asked.elapsed()));
                jobs = list.jobs;
                let changes = tracker.update(&jobs);
                if !changes.is_empty() {
                    last_line = Instant::now();
                }
                self.view.update(&info, &jobs, &changes);
                if fail_fast
                    && !cancelled
                    && let Some(failed) = changes.iter().find(|c| c.is_failure())
                {
                    cancelled = true;
                    self.fail_fast(failed.name()).await;
                }
            }
            if info.finished {
                return Ok((info, jobs));
            }
            if !self.view.is_live() && last_line.elapsed() >= QUIET_LINE {
                self.view.note(&still_going(&jobs));
                last_line = Instant::now();
            }
            // Changes that come close together are read together.
            if let Some((_, at, took)) = looked {
                // A big graph's read costs the server more: read it less often.
                let per_jobs = GAP_PER_JOB * u32::try_from(jobs.len()).unwrap_or(u32::MAX);
                let gap = MIN_GAP.max(took * GAP_PER_READ).max(per_jobs).min(MAX_GAP);
                let until = at + gap;
                let now = Instant::now();
                if until > now {
                    // Until the next read, only the graph's end is waited for: heard at
                    // once, not up to a gap late.
                    let (client, id, seq) = (self.client, self.id, info.seq);
                    info = self
                        .ask(|| client.graph_finished(id, seq, until - now), &jobs)
                        .await?;
                    continue;
                }
            }
            let (client, id, seq) = (self.client, self.id, info.seq);
            info = self
                .ask(|| client.graph(id, Some(seq), POLL_WAIT), &jobs)
                .await?;
        }
    }

    /// Asks the server, riding out its absence with backoff (one line when it goes away,
    /// one when it is back), while the view ticks and Ctrl-C and the timeout are heard.
    async fn ask<T, F, Fut>(&mut self, call: F, jobs: &[JobInfo]) -> Result<T, Ended>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        loop {
            match self.guard(call(), jobs).await? {
                Ok(answer) => {
                    if let Some((since, _)) = self.outage.take() {
                        self.view.note(&format!(
                            "the server answers again (it was away for {})",
                            duration(since.elapsed())
                        ));
                    }
                    return Ok(answer);
                }
                Err(e) if e.is_unreachable() => {
                    let (since, tries) = self.outage.get_or_insert((std::time::Instant::now(), 0));
                    if *tries == 0 {
                        let line = format!("{e}; still waiting, retrying with backoff");
                        match self.view.is_live() {
                            // Above the block: a line on stderr would break its redraw.
                            true => self.view.note(&line),
                            false => eprintln!("{line}"),
                        }
                    }
                    *tries += 1;
                    if since.elapsed() > GIVE_UP_AFTER {
                        return Err(Ended::Failed(format!(
                            "gave up after the server was away for {}: {e}",
                            duration(since.elapsed())
                        )));
                    }
                    let pause = timing::WATCH_RETRY.pause(*tries);
                    self.guard(tokio::time::sleep(pause), jobs).await?;
                }
                Err(e) => return Err(Ended::Failed(e.to_string())),
            }
        }
    }

    /// Runs `fut` while redrawing the view every second; Ctrl-C or the deadline end it.
    async fn guard<T>(
        &mut self,
        fut: impl Future<Output = T>,
        jobs: &[JobInfo],
    ) -> Result<T, Ended> {
        tokio::pin!(fut);
        let deadline = self.deadline;
        loop {
            tokio::select! {
                v = &mut fut => return Ok(v),
                _ = self.tick.tick(), if self.view.is_live() => self.view.tick(),
                _ = &mut self.ctrl_c => return Err(Ended::Stopped(Stop::Interrupted, jobs.to_vec())),
                _ = sleep_until_opt(deadline) => {
                    return Err(Ended::Stopped(Stop::TimedOut, jobs.to_vec()));
                }
            }
        }
    }

    /// `--fail-fast`: cancels what is left of the graph.
    async fn fail_fast(&mut self, failed: &str) {
        match self.client.cancel_graph(self.id).await {
            Ok(c) => self.view.note(&format!(
                "--fail-fast: {failed} failed; cancelled {} of graph {}",
                lwr_model::words::count(c.jobs, "unfinished job", "unfinished jobs"),
                self.id
            )),
            Err(e) => self.view.note(&format!(
                "--fail-fast: {failed} failed, but cancelling graph {} failed: {e}",
                self.id
            )),
        }
    }

    /// `command` with the `--server` this watch used, unless it is the default.
    fn command(&self, command: &str) -> String {
        match self.client.server() {
            lwr_client::DEFAULT_SERVER => command.to_string(),
            server => format!("{command} --server {server}"),
        }
    }

    /// How the graph ended, each job that did not succeed, and the end of failed logs.
    async fn summary(&self, info: &GraphInfo, jobs: &[JobInfo]) {
        let c = &info.counts;
        let took = span(
            info.started_at.as_deref().or(Some(&info.created_at)),
            info.finished_at.as_deref(),
        )
        .map(|d| format!(" in {}", duration(d)))
        .unwrap_or_default();
        if c.succeeded == c.total() {
            outln!(
                "graph {} succeeded: {}{took}",
                info.id,
                lwr_model::words::count(c.total(), "job", "jobs")
            );
            return;
        }
        outln!(
            "graph {} failed: {} of {}{took}",
            info.id,
            counts_text(c),
            c.total()
        );
        self.unfinished(jobs);
        self.tails(jobs).await;
    }

    /// A line per job that did not succeed: state, name, id and why.
    fn unfinished(&self, jobs: &[JobInfo]) {
        for job in jobs.iter().filter(|j| j.state != JobState::Succeeded) {
            let why = job
                .cannot_start
                .as_ref()
                .map(|w| format!("cannot start: {w}"));
            let why = why.or_else(|| job.reason.clone());
            outln!(
                "  {:<10} {} (job {}){}",
                job.state.as_str(),
                job.name,
                job.id,
                why.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
    }

    /// The last lines of the log of each job that failed.
    async fn tails(&self, jobs: &[JobInfo]) {
        let failed: Vec<&JobInfo> = jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Failed | JobState::Exception))
            .collect();
        for job in failed.iter().take(MAX_TAILS) {
            outln!(
                "--- {}: the end of its log (all of it: lwr logs {}/{}) ---",
                job.name,
                self.id,
                job.name
            );
            let tail = match self.client.job(job.id).await {
                Ok(detail) => {
                    let size = detail.run_history.last().map_or(0, |r| r.log_size);
                    super::logs::tail(self.client, job.id, size, TAIL_LINES).await
                }
                Err(e) => Err(e),
            };
            match tail {
                Ok(lines) if lines.is_empty() => outln!("(its log is empty)"),
                Ok(lines) => {
                    for line in lines {
                        outln!("{line}");
                    }
                }
                Err(e) => outln!("(cannot read its log: {e})"),
            }
        }
        if failed.len() > MAX_TAILS {
            outln!(
                "--- and {} more failed jobs: lwr jobs --graph {} --state failed ---",
                failed.len() - MAX_TAILS,
                self.id
            );
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `2 succeeded, 1 failed, 1 pending`: the states some job is in.
fn counts_text(c: &StateCounts) -> String {
    let parts: Vec<String> = [
        (c.succeeded, "succeeded"),
        (c.failed, "failed"),
        (c.exception, "exception"),
        (c.blocked, "blocked"),
        (c.cancelled, "cancelled"),
        (c.running, "running"),
        (c.pending, "pending"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, s)| format!("{n} {s}"))
    .collect();
    parts.join(", ")
}

/// `still running: build (3m04s), test (12s); 4 pending`.
fn still_going(jobs: &[JobInfo]) -> String {
    let running: Vec<String> = jobs
        .iter()
        .filter(|j| j.state == JobState::Running)
        .map(|j| {
            let t = span(j.started_at.as_deref(), None).unwrap_or_default();
            format!("{} ({})", j.name, duration(t))
        })
        .collect();
    let pending = jobs.iter().filter(|j| j.state == JobState::Pending).count();
    format!(
        "still running: {}; {pending} pending",
        if running.is_empty() {
            "nothing".to_string()
        } else {
            running.join(", ")
        }
    )
}
