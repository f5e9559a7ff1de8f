//! Live logs from the client's side: the node's streams long-poll and log pieces, and a
//! viewer following a log as Server-Sent Events.

use std::time::Duration;

use lwr_model::logstream::{
    ChunkAck, EndEvent, LiveState, LiveToggle, LogEvent, LogStreams, RunEvent, Stats,
};
use lwr_model::{JobId, NodeId, RunId};
use reqwest::Method;

use crate::{Client, ClientError, REQUEST_TIMEOUT, Result, paths};

/// Longest a followed log may stay open: a long build's log, live.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest silence on a followed log before it counts as broken (the server sends a
/// keep-alive comment every 15 s).
const IDLE_TIMEOUT: Duration = lwr_model::timing::STREAM_IDLE_TIMEOUT;

/// One event of a followed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// The log of this run starts (or resumes).
    Run(RunEvent),
    /// Text of the log; `id` is `RUN:OFFSET` just after it, for resuming.
    Log(LogEvent),
    /// The run's log is complete.
    End(EndEvent),
    /// The server gave up on this viewer, saying why.
    Error(String),
}

/// A followed log: the events as they arrive.
pub struct LogFollow {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no blank line: big events arrive in many chunks.
    scanned: usize,
    path: String,
}

impl LogFollow {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<FollowEvent>> {
        loop {
            if let Some(block) = take_block(&mut self.buf, &mut self.scanned) {
                if let Some(event) = parse_block(&block, &self.path)? {
                    return Ok(Some(event));
                }
                continue;
            }
            // The server sends a comment every 15 s: silence means a dead connection.
            match tokio::time::timeout(IDLE_TIMEOUT, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        server: self.path.clone(),
                        detail: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(ClientError::Unreachable {
                        server: self.path.clone(),
                        detail: format!("nothing received for {IDLE_TIMEOUT:?}"),
                    });
                }
            }
        }
    }
}

/// Takes one event block (up to a blank line) off the front of `buf`; `scanned` bytes of
/// it are known to hold none.
fn take_block(buf: &mut Vec<u8>, scanned: &mut usize) -> Option<Vec<u8>> {
    let from = scanned.saturating_sub(1);
    let Some(end) = buf[from..].windows(2).position(|w| w == b"\n\n") else {
        *scanned = buf.len();
        return None;
    };
    let end = from + end;
    let block = buf[..end].to_vec();
    buf.drain(..end + 2);
    *scanned = 0;
    Some(block)
}

/// Parses one SSE block; `None` for a comment (keep-alive) or an event of a kind this
/// client does not know (a later server may add some).
fn parse_block(block: &[u8], path: &str) -> Result<Option<FollowEvent>> {
    let text = String::from_utf8_lossy(block);
    let mut event = "message";
    let mut data = String::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim_start();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let decode = |detail: serde_json::Error| ClientError::Decode {
        method: Method::GET,
        path: path.to_string(),
        detail: format!("{event} event: {detail}"),
    };
    Ok(Some(match event {
        "run" => FollowEvent::Run(serde_json::from_str(&data).map_err(decode)?),
        "log" => FollowEvent::Log(serde_json::from_str(&data).map_err(decode)?),
        "end" => FollowEvent::End(serde_json::from_str(&data).map_err(decode)?),
        "error" => FollowEvent::Error(data),
        _ => return Ok(None),
    }))
}

impl Client {
    /// Follows a job's log: run `run` (default the latest) from byte `offset`, or exactly
    /// where an earlier follow stopped (`resume`: run id and offset).
    pub async fn follow_log(
        &self,
        job: JobId,
        run: Option<u32>,
        offset: u64,
        resume: Option<(RunId, u64)>,
    ) -> Result<LogFollow> {
        let ep = paths::job_log(job)
            .query("follow", true)
            .query("offset", offset)
            .query_opt("run", run);
        let mut req = self
            .request(&ep, FOLLOW_TIMEOUT)?
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some((run, offset)) = resume {
            req = req.header("Last-Event-ID", format!("{run}:{offset}"));
        }
        let resp = self.send_ep(&ep, req).await?;
        Ok(LogFollow {
            resp,
            buf: Vec::new(),
            scanned: 0,
            path: ep.path,
        })
    }

    /// Turns streaming of a running job's log to the server on or off.
    pub async fn set_live(&self, job: JobId, live: bool) -> Result<LiveState> {
        self.json(
            &paths::job_live(job),
            Some(&LiveToggle { live }),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.get(paths::stats()).await
    }

    /// Long-polls for the runs whose log the server wants from this node: answers at once
    /// without a `version`, else when the set differs from that version or after `wait`.
    pub async fn log_streams(
        &self,
        node: NodeId,
        version: Option<u64>,
        wait: Duration,
    ) -> Result<LogStreams> {
        let ep = paths::log_streams(node)
            .query("wait_ms", wait.as_millis())
            .query_opt("version", version);
        self.json(&ep, None::<&()>, REQUEST_TIMEOUT + wait).await
    }

    /// Sends a piece of a run's log that starts at byte `offset`.
    pub async fn send_log_piece(
        &self,
        run: RunId,
        node: NodeId,
        offset: u64,
        end: bool,
        bytes: Vec<u8>,
    ) -> Result<ChunkAck> {
        let ep = paths::log_piece(run)
            .query("node", node)
            .query("offset", offset)
            .query("end", end);
        let req = self
            .request(&ep, REQUEST_TIMEOUT)?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        let resp = self.send_ep(&ep, req).await?;
        self.decode(&ep.method, &ep.path, resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_blocks() {
        let mut buf = b": keep-alive\n\nevent: log\nid: 3:5\ndata: {\"run_id\":3,\"offset\":0,\"end\":4,\"text\":\"a\\nb\\n\"}\n\nevent: en".to_vec();
        let mut scanned = 0;
        let first = take_block(&mut buf, &mut scanned).expect("block");
        assert_eq!(parse_block(&first, "p").expect("parse"), None);
        let second = take_block(&mut buf, &mut scanned).expect("block");
        assert_eq!(
            parse_block(&second, "p").expect("parse"),
            Some(FollowEvent::Log(LogEvent {
                run_id: RunId(3),
                offset: 0,
                end: 4,
                text: "a\nb\n".into()
            }))
        );
        assert!(take_block(&mut buf, &mut scanned).is_none());
        assert_eq!(buf, b"event: en");
        // The rest of the block arrives later, its blank line split across chunks.
        buf.extend_from_slice(b"d\ndata: x\n");
        assert!(take_block(&mut buf, &mut scanned).is_none());
        buf.extend_from_slice(b"\n");
        assert_eq!(
            take_block(&mut buf, &mut scanned).expect("block"),
            b"event: end\ndata: x"
        );
        assert!(parse_block(b"event: log\ndata: {", "p").is_err());
        assert_eq!(
            parse_block(b"event: error\ndata: gone", "p").expect("parse"),
            Some(FollowEvent::Error("gone".into()))
        );
    }
}
