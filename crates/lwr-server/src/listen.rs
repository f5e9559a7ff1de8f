//! Accepting connections: what keeps anyone who can reach the port (no token needed) from
//! taking every connection or file descriptor the server has.
//!
//! - A new connection must send its first request's header within
//!   [`timing::FIRST_HEADER_TIMEOUT`]; a kept-alive one idle, or slow with a header, for
//!   [`timing::KEEPALIVE_IDLE`] is closed: slow or silent clients let go.
//! - At most [`Limits::max_connections`] are open, below the descriptor limit so that the
//!   database, logs and artifacts always find one. A connection beyond that closes the
//!   oldest one that never sent a request (what an idle flood is made of); when every one
//!   is busy, the newcomer gets a one-line 503 and is closed.
//! - At start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_nofile`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use lwr_model::sync::lock;
use lwr_model::timing;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceExt;

/// Descriptors kept for everything but client connections: the database pool, stored and
/// spooled logs, artifact uploads, git and provider processes.
const RESERVED_FDS: u64 = 128;

/// Most connections whatever the descriptor limit.
const MAX_CONNECTIONS: u64 = 16_384;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For the first request's header.
    pub first_header: Duration,
    /// For any later header, idle time included.
    pub keepalive_idle: Duration,
}

impl Limits {
    /// Limits fitting a descriptor limit of `nofile`.
    pub fn for_nofile(nofile: u64) -> Limits {
        let reserve = RESERVED_FDS.max(nofile / 8);
        Limits {
            max_connections: nofile.saturating_sub(reserve).clamp(16, MAX_CONNECTIONS) as usize,
            first_header: timing::FIRST_HEADER_TIMEOUT,
            keepalive_idle: timing::KEEPALIVE_IDLE,
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one and returns the limit now in
/// force. A default of 1,024 is what an idle-connection flood exhausts first.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            1024
        }
    }
}

/// An open connection, as the accept loop sees it.
struct Open {
    /// It has sent (the start of) a request: not idle, never closed to make room.
    used: Arc<AtomicBool>,
    /// Closes it.
    close: oneshot::Sender<()>,
}

#[derive(Default)]
struct Connections {
    next: u64,
    /// By id, so oldest first.
    open: BTreeMap<u64, Open>,
}

/// Serves `app` on `listener` until an accept fails for good.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let connections = Arc::new(Mutex::new(Connections::default()));
    tracing::info!(
        "at most {} connections; a first request's header within {:?}, idle ones closed after {:?}",
        limits.max_connections,
        limits.first_header,
        limits.keepalive_idle
    );
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait for some to come back, as axum does.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = {
            let mut conns = lock(&connections);
            if conns.open.len() >= limits.max_connections {
                let idle = conns
                    .open
                    .iter()
                    .find(|(_, c)| !c.used.load(Ordering::Relaxed))
                    .map(|(id, _)| *id);
                if let Some(oldest) = idle.and_then(|id| conns.open.remove(&id)) {
                    let _ = oldest.close.send(());
                }
            }
            if conns.open.len() >= limits.max_connections {
                None
            } else {
                let id = conns.next;
                conns.next += 1;
                let used = Arc::new(AtomicBool::new(false));
                let (close, closed) = oneshot::channel();
                conns.open.insert(
                    id,
                    Open {
                        used: used.clone(),
                        close,
                    },
                );
                Some((id, used, closed))
            }
        };
        match admitted {
            None => {
                tokio::spawn(refuse(stream, limits.max_connections));
            }
            Some((id, used, closed)) => {
                let app = app.clone();
                let connections = connections.clone();
                tokio::spawn(async move {
                    connection(stream, app, limits, used, closed).await;
                    lock(&connections).open.remove(&id);
                });
            }
        }
    }
}

/// Serves one connection until it ends, times out or is closed to make room.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    used: Arc<AtomicBool>,
    closed: oneshot::Receiver<()>,
) {
    let first = used.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        used.store(true, Ordering::Relaxed);
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.keepalive_idle);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes its socket.
    let silent = async {
        tokio::time::sleep(limits.first_header).await;
        if first.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!("connection: {e}");
            }
        }
        _ = closed => {}
        _ = silent => {}
    }
}

/// The answer of a server with every connection busy: one line saying so, then close.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"the server has {max} connections open, all busy: try again shortly\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accept errors that concern one connection only (it went away before we took it).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_the_rest() {
        assert_eq!(Limits::for_nofile(1024).max_connections, 896);
        assert_eq!(Limits::for_nofile(65_536).max_connections, 16_384);
        assert_eq!(Limits::for_nofile(100).max_connections, 16);
        let l = Limits::for_nofile(4096);
        assert_eq!(l.max_connections, 4096 - 512);
    }
}
