//! Live log streaming: the wire types between node, server and viewer, and the offset
//! arithmetic all three rely on.
//!
//! A run's log is a byte sequence on its node's disk. Every piece that travels carries the
//! byte offset it starts at, so a node that lost its connection resends from the last offset
//! the server acknowledged, a server keeps each byte once whatever is sent twice, and a
//! viewer that reconnects asks for the offset it has reached. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{JobId, RunId};

/// Largest piece of log a node sends in one request.
pub const MAX_CHUNK: usize = 1 << 20;

/// The line that ends a log cut at the server's `--max-log-size` of `limit` bytes, on the
/// node and on the server alike; `dropped` bytes beyond it were not kept, when known.
pub fn truncation_marker(limit: u64, dropped: Option<u64>) -> String {
    let dropped = match dropped {
        Some(n) => format!("; {n} more bytes were dropped"),
        None => String::new(),
    };
    format!("\n[lwr: log truncated at {limit} bytes, the server's --max-log-size{dropped}]\n")
}

/// `GET /v1/nodes/{id}/streams`: the runs of this node whose log the server wants now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogStreams {
    /// Changes whenever the set changes; the node passes it back to wait for the next change.
    pub version: u64,
    pub streams: Vec<StreamRequest>,
}

/// Stream the log of `run_id`, starting at byte `offset` (what the server already holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamRequest {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    pub offset: u64,
}

/// The server's answer to a piece of log: how many bytes of the log it now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChunkAck {
    /// Bytes held; the node's next piece starts here.
    pub offset: u64,
    /// False once nobody wants this log any more: the node may stop sending.
    pub wanted: bool,
}

/// `PUT /v1/jobs/{id}/log/live`: stream the running log to the server even with no viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveToggle {
    pub live: bool,
}

/// The answer to a toggle: which run it applies to and whether it is streaming now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveState {
    #[schema(value_type = i64)]
    pub job_id: JobId,
    #[schema(value_type = i64)]
    pub run_id: RunId,
    pub live: bool,
    /// Viewers following the run now.
    pub viewers: u32,
}

/// Counters of the server's log traffic since it started (`GET /v1/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogStats {
    /// Log bytes nodes streamed to this server (stored logs uploaded at a run's end are
    /// not counted here).
    pub streamed_bytes: u64,
    /// Pieces of log received.
    pub streamed_chunks: u64,
    /// Bytes received twice (a node resending after a lost answer) and dropped.
    pub duplicate_bytes: u64,
    /// Log bytes sent to viewers, stored or live.
    pub viewer_bytes: u64,
    /// Runs whose log the server wants from their node now.
    pub streams: u64,
    /// Viewers following a log now.
    pub viewers: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub logs: LogStats,
}

/// The data of a `log` event of a followed log: text of the log from byte `offset` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    /// Byte offset in the log of the first byte of `text`.
    pub offset: u64,
    /// Byte offset just after it: where to resume (`text` may differ in length from the
    /// bytes it stands for when they were not valid UTF-8).
    pub end: u64,
    /// The bytes as UTF-8 text; invalid sequences become U+FFFD, never split across events.
    pub text: String,
}

/// The data of the `run` event that starts each run's part of a followed log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunEvent {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    pub number: u32,
    pub node: String,
}

/// The data of the `end` event: the run's log is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndEvent {
    #[schema(value_type = i64)]
    pub run_id: RunId,
    /// Size of the whole log.
    pub size: u64,
    /// The run's state when the log ended (`running` when its result is not in yet).
    pub state: crate::RunState,
}

/// What to do with a piece of log that starts at `offset` and is `len` bytes long when the
/// server holds `held` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Append the piece from byte `skip` of it on (the rest was held already).
    From { skip: usize },
    /// The piece starts beyond what is held: a gap. The sender must resend from `held`.
    Gap { held: u64 },
}

/// Decides how a piece of log joins what is held, so each byte is kept exactly once.
pub fn append(held: u64, offset: u64, len: usize) -> Append {
    if offset > held {
        return Append::Gap { held };
    }
    let skip = usize::try_from(held - offset)
        .unwrap_or(usize::MAX)
        .min(len);
    Append::From { skip }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence, so text events
/// never split a character; the whole of `bytes` when the log ends there.
pub fn text_boundary(bytes: &[u8], at_end: bool) -> usize {
    if at_end {
        return bytes.len();
    }
    // A sequence is at most 4 bytes: look back at most 3 for an unfinished lead byte.
    let n = bytes.len();
    for back in 1..=3.min(n) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for its lead
        }
        let width = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1, // invalid lead: cannot be completed by later bytes
        };
        return if width > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_exactly_once() {
        assert_eq!(append(0, 0, 10), Append::From { skip: 0 });
        assert_eq!(append(10, 10, 5), Append::From { skip: 0 });
        // Resent after a lost answer: only the new tail is kept.
        assert_eq!(append(12, 10, 5), Append::From { skip: 2 });
        // Entirely held already.
        assert_eq!(append(20, 10, 5), Append::From { skip: 5 });
        assert_eq!(append(10, 12, 5), Append::Gap { held: 10 });
    }

    #[test]
    fn text_never_splits_a_character() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(text_boundary(s, false), s.len());
        for cut in 0..s.len() {
            let b = text_boundary(&s[..cut], false);
            assert!(std::str::from_utf8(&s[..b]).is_ok(), "cut {cut} -> {b}");
            assert!(cut - b < 4);
        }
        assert_eq!(text_boundary(&s[..2], false), 1);
        assert_eq!(text_boundary(&s[..2], true), 2);
        // Invalid bytes are not held back forever.
        assert_eq!(text_boundary(&[b'a', 0xFF], false), 2);
        assert_eq!(text_boundary(&[0x80, 0x80, 0x80, 0x80], false), 4);
    }
}
