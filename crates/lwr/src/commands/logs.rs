//! `lwr logs`: a job's stored log, or its live output followed as it is written.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use lwr_client::{Client, FollowEvent};
use lwr_model::{JobId, RunId, RunState};

use crate::cli::{LogsArgs, Toggle};
use crate::commands::query::resolve_job;

/// How long a follower keeps trying to reach a server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let job = resolve_job(&client, &args.job).await?;
    if let Some(toggle) = args.live {
        let state = client.set_live(job, toggle == Toggle::On).await?;
        eprintln!(
            "job {job}, run {}: streaming to the server {} ({} now)",
            state.run_id,
            if state.live {
                "on"
            } else {
                "off unless someone follows"
            },
            lwr_model::words::count(state.viewers, "viewer", "viewers")
        );
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if args.follow {
        return follow(&client, job, args.run).await;
    }
    let bytes = client.log(job, args.run).await?;
    crate::output::write_bytes(&bytes);
    Ok(ExitCode::SUCCESS)
}

/// Prints the log as the server streams it; reconnects where it stopped when the
/// connection breaks, and goes on with the next run of a job that is retried.
async fn follow(client: &Client, job: JobId, run: Option<u32>) -> anyhow::Result<ExitCode> {
    // Where to resume: the run being followed and the offset reached in it.
    let mut at: Option<(RunId, u64)> = None;
    let mut pick = run;
    let mut broken_since: Option<Instant> = None;
    loop {
        let stream = client.follow_log(job, pick, 0, at).await;
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) if e.is_unreachable() && at.is_some() => {
                reconnect_wait(&mut broken_since, &e.to_string()).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        loop {
            let event = match stream.next().await {
                Ok(Some(event)) => event,
                // The connection broke: resume where we are.
                Ok(None) => {
                    reconnect_wait(&mut broken_since, "the server closed the stream").await?;
                    break;
                }
                Err(e) => {
                    reconnect_wait(&mut broken_since, &e.to_string()).await?;
                    break;
                }
            };
            broken_since = None;
            match event {
                FollowEvent::Run(r) => {
                    if pick.is_some_and(|n| n > 1) && at.is_none() {
                        eprintln!("--- run {} on {} ---", r.number, r.node);
                    }
                    if at.is_none_or(|(run, _)| run != r.run_id) {
                        at = Some((r.run_id, 0));
                    }
                }
                FollowEvent::Log(l) => {
                    crate::output::write_bytes(l.text.as_bytes());
                    at = Some((l.run_id, l.end));
                }
                FollowEvent::End(end) => {
                    if matches!(end.state, RunState::Failed | RunState::Cancelled) {
                        // The log alone may not show it (a cancelled job says nothing).
                        eprintln!("--- run ended: {} ---", end.state.as_str());
                    }
                    match end.state {
                        // Like the job: a script can tell a failed run from the output.
                        RunState::Failed => return Ok(ExitCode::FAILURE),
                        // Stopped on purpose: nothing went wrong with what was followed.
                        RunState::Succeeded | RunState::Cancelled | RunState::Running => {
                            return Ok(ExitCode::SUCCESS);
                        }
                        RunState::Exception => {}
                    }
                    // An infrastructure error: the job may run again; follow its next run.
                    match next_run(client, job, end.run_id).await? {
                        Some(number) => {
                            eprintln!("--- run ended (exception); the job runs again ---");
                            pick = Some(number);
                            at = None;
                            break;
                        }
                        // No retry left: the job ended in an exception.
                        None => return Ok(ExitCode::FAILURE),
                    }
                }
                FollowEvent::Error(msg) => bail!("following the log of job {job}: {msg}"),
            }
        }
    }
}

/// The number of the run that follows run `run_id` of a retried job, once it exists;
/// `None` when the job ended instead.
async fn next_run(client: &Client, job: JobId, run_id: RunId) -> anyhow::Result<Option<u32>> {
    loop {
        let detail = client.job(job).await?;
        if let Some(next) = detail.run_history.iter().find(|r| r.id > run_id) {
            return Ok(Some(next.number));
        }
        if detail.info.state.is_terminal() {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn reconnect_wait(since: &mut Option<Instant>, why: &str) -> anyhow::Result<()> {
    let start = *since.get_or_insert_with(Instant::now);
    if start.elapsed() > RECONNECT_FOR {
        bail!("lost the log stream and could not resume for {RECONNECT_FOR:?}: {why}");
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

/// Bytes read from the end of a log for its tail: lines longer than this come cut.
const TAIL_BYTES: u64 = 16 << 10;

/// The last `lines` lines of the stored log of `job`'s latest run, which is `size` bytes:
/// only its end is read.
pub async fn tail(
    client: &Client,
    job: JobId,
    size: u64,
    lines: usize,
) -> Result<Vec<String>, lwr_client::ClientError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let offset = size.saturating_sub(TAIL_BYTES);
    let bytes = client.log_from(job, None, offset).await?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if offset > 0 && !all.is_empty() {
        // Cut mid-line: that first piece is not a whole line.
        all.remove(0);
    }
    let from = all.len().saturating_sub(lines);
    Ok(all[from..].iter().map(|l| l.to_string()).collect())
}
