//! Live logs with real server, node and viewer processes: replay then follow, fan-out to
//! several viewers, a node connection cut mid-stream, and no log bytes on the network while
//! nobody asks.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lwr_model::logstream::Stats;
use lwr_model::{GraphId, JobId, JobState, RunId};

const LINES: u64 = 100_000;

/// `lwr logs JOB -f` with its output going to a file.
struct Viewer {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Viewer {
    fn start(server: &str, job: JobId, dir: &Path, name: &str) -> Viewer {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(bin())
            .args(["logs", &job.to_string(), "-f"])
            .env("LWR_SERVER", server)
            .env_remove("LWR_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("viewer stdout"))
            .stderr(std::fs::File::create(&err).expect("viewer stderr"))
            .spawn()
            .expect("spawning lwr logs -f");
        Viewer { child, out, err }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for the viewer to exit by itself (the run ended); asserts it exited 0.
    fn finish(mut self) -> String {
        let status = wait_until("the viewer to exit", DEADLINE, || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("still running; {} bytes so far", self.text().len()))
        });
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        assert!(status.success(), "lwr logs -f exited {status}: {err}");
        self.text()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts `text` is `line-1` .. `line-N`, each once, in order.
fn assert_every_line_once(who: &str, text: &str, n: u64) {
    let mut expect = 1;
    for line in text.lines() {
        let Some(num) = line.strip_prefix("line-") else {
            panic!("{who}: unexpected line {line:?} after line-{}", expect - 1);
        };
        assert_eq!(
            num.parse::<u64>().ok(),
            Some(expect),
            "{who}: line-{expect} expected, got {line:?}"
        );
        expect += 1;
    }
    assert_eq!(expect - 1, n, "{who}: saw {} of {n} lines", expect - 1);
}

fn stats(server: &Server) -> Stats {
    server
        .api
        .block_on(server.api.client().stats())
        .unwrap_or_else(|e| panic!("reading /v1/stats: {e}"))
}

fn pushed_job(server: &Server, repo: &Path, name: &str) -> (GraphId, JobId) {
    let out = server.push(repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    (graph, server.job(graph, name).info.id)
}

fn sh(path: &Path) -> String {
    sh_quote(path)
}

#[test]
fn viewers_before_during_and_after_the_run_each_see_every_line_once() {
    let dir = tempdir();
    let (start_gate, mid_gate) = (dir.path().join("start"), dir.path().join("mid"));
    let repo = git_repo(
        &dir.path().join("repo"),
        &format!(
            "version: 1\njobs:\n  wait:\n    run: while [ ! -e {start} ]; do sleep 0.05; done\n  \
             talk:\n    needs: [wait]\n    run: seq 1 50000 | sed 's/^/line-/'; \
             while [ ! -e {mid} ]; do sleep 0.05; done; seq 50001 {LINES} | sed 's/^/line-/'\n",
            start = sh(&start_gate),
            mid = sh(&mid_gate),
        ),
    );
    let server = Server::start(dir.path());
    let _node = server.node(dir.path(), "n1", 2, &[]);
    let (graph, job) = pushed_job(&server, &repo, "talk");

    // Attached before the job starts: waits for its run.
    let early = Viewer::start(&server.url, job, dir.path(), "early");
    std::fs::write(&start_gate, "").expect("opening the start gate");
    wait_until("the early viewer to see line-50000", DEADLINE, || {
        let text = early.text();
        text.contains("line-50000\n")
            .then_some(())
            .ok_or(format!("{} bytes", text.len()))
    });
    // Attached midway: replays what was written, then follows.
    let midway = Viewer::start(&server.url, job, dir.path(), "midway");
    wait_until("the midway viewer to replay line-50000", DEADLINE, || {
        midway
            .text()
            .contains("line-50000\n")
            .then_some(())
            .ok_or(String::new())
    });
    assert_eq!(
        stats(&server).logs.streams,
        1,
        "two viewers share one stream"
    );
    std::fs::write(&mid_gate, "").expect("opening the mid gate");
    server.wait_finished(graph);
    assert_every_line_once("early viewer", &early.finish(), LINES);
    assert_every_line_once("midway viewer", &midway.finish(), LINES);
    // Attached after the end: the stored log, then exit 0.
    let late = Viewer::start(&server.url, job, dir.path(), "late");
    assert_every_line_once("late viewer", &late.finish(), LINES);
    assert_every_line_once(
        "lwr logs",
        &server.lwr(&["logs", &job.to_string()]).stdout,
        LINES,
    );

    let s = stats(&server).logs;
    assert_eq!((s.streams, s.viewers), (0, 0), "{s:?}");
    assert!(s.streamed_bytes > 0, "{s:?}");
    // The stored log is uploaded once at the end, not streamed: the streamed bytes are at
    // most the log once.
    let log_size = server.job(graph, "talk").run_history[0].log_size;
    assert!(s.streamed_bytes <= log_size, "{s:?} log {log_size}");
}

/// A TCP proxy the test controls: forwards every connection to `target` until told to cut
/// the connections it holds (new ones are accepted as before), and can lose the server's
/// answers: the request arrives and is acted on, the answer never comes back.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    cuts: AtomicUsize,
    lose_answers: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let lose_answers = Arc::new(AtomicBool::new(false));
        let (held, stopped, lose) = (conns.clone(), stop.clone(), lose_answers.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                if let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) {
                    held.lock().expect("conns").extend([c3, u3]);
                }
                let no_lose = Arc::new(AtomicBool::new(false));
                std::thread::spawn(move || pump(client, upstream, no_lose));
                let lose = lose.clone();
                std::thread::spawn(move || pump(u2, c2, lose));
            }
        });
        Proxy {
            port,
            conns,
            cuts: AtomicUsize::new(0),
            lose_answers,
            stop,
        }
    }

    /// Breaks every connection open now, in both directions.
    fn cut(&self) {
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies `from` to `to` until either side closes; while `lose` is set, whatever arrives
/// is dropped and the connection broken instead.
fn pump(mut from: TcpStream, mut to: TcpStream, lose: Arc<AtomicBool>) {
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if lose.load(Ordering::Relaxed) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn a_node_connection_cut_mid_stream_loses_and_repeats_nothing() {
    let dir = tempdir();
    let (gate, end_gate) = (dir.path().join("go"), dir.path().join("end"));
    // 20 bursts of 5,000 lines with pauses between: the stream is busy for seconds. The job
    // then waits, so every line must reach the viewer live, not from the stored log.
    let repo = git_repo(
        &dir.path().join("repo"),
        &format!(
            "version: 1\njobs:\n  talk:\n    run: while [ ! -e {gate} ]; do sleep 0.05; done; \
             for k in $(seq 0 19); do seq $((k*5000+1)) $((k*5000+5000)) | sed 's/^/line-/'; \
             sleep 0.1; done; while [ ! -e {end} ]; do sleep 0.05; done\n",
            gate = sh(&gate),
            end = sh(&end_gate),
        ),
    );
    let server = Server::start(dir.path());
    let proxy = Proxy::start(server.port);
    // The node talks to the server only through the proxy; the viewer directly.
    let _node = Node::start(
        dir.path(),
        &format!("http://127.0.0.1:{}", proxy.port),
        "n1",
        1,
        &[],
    );
    let (graph, job) = pushed_job(&server, &repo, "talk");
    server.wait_job(graph, "talk", JobState::Running, None);
    let viewer = Viewer::start(&server.url, job, dir.path(), "viewer");
    std::fs::write(&gate, "").expect("opening the gate");
    wait_until("the viewer to see the first lines", DEADLINE, || {
        (!viewer.text().is_empty())
            .then_some(())
            .ok_or(String::new())
    });
    // Again and again while it streams: lose the server's answers for a while (pieces the
    // server took are sent again), then cut every connection of the node.
    let last = format!("line-{LINES}\n");
    while !viewer.text().ends_with(&last) {
        proxy.lose_answers.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(120));
        proxy.cut();
        proxy.lose_answers.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(150));
        if proxy.cuts.load(Ordering::Relaxed) > 200 {
            break;
        }
    }
    assert!(
        proxy.cuts.load(Ordering::Relaxed) >= 3,
        "the log was streamed before the connection was cut a few times"
    );
    // Everything arrived live, across the cuts, while the job still runs.
    assert_eq!(server.job(graph, "talk").info.state, JobState::Running);
    assert_every_line_once("viewer across cuts, live", &viewer.text(), LINES);
    std::fs::write(&end_gate, "").expect("opening the end gate");
    server.wait_finished(graph);
    assert_eq!(server.job(graph, "talk").info.state, JobState::Succeeded);
    assert_every_line_once("viewer across cuts", &viewer.finish(), LINES);
    let s = stats(&server).logs;
    assert!(
        s.duplicate_bytes > 0,
        "no piece was sent twice, so the cuts tested nothing: {s:?}"
    );
    assert_every_line_once(
        "stored log",
        &server.lwr(&["logs", &job.to_string()]).stdout,
        LINES,
    );
}

#[test]
fn no_bytes_travel_until_asked_and_the_last_viewer_leaving_stops_the_stream() {
    let dir = tempdir();
    let (g1, g2, g3) = (
        dir.path().join("g1"),
        dir.path().join("g2"),
        dir.path().join("g3"),
    );
    // Each phase prints lines, then waits for the test to open the next gate.
    let phase = |from: u64, to: u64, gate: &Path| {
        format!(
            "seq {from} {to} | sed 's/^/line-/'; while [ ! -e {} ]; do sleep 0.05; done; ",
            sh(gate)
        )
    };
    let repo = git_repo(
        &dir.path().join("repo"),
        &format!(
            "version: 1\njobs:\n  talk:\n    run: {}{}{}seq 30001 40000 | sed 's/^/line-/'\n",
            phase(1, 10000, &g1),
            phase(10001, 20000, &g2),
            phase(20001, 30000, &g3),
        ),
    );
    let server = Server::start(dir.path());
    let _node = server.node(dir.path(), "n1", 1, &[]);
    let (graph, job) = pushed_job(&server, &repo, "talk");
    server.wait_job(graph, "talk", JobState::Running, None);

    // Phase 1: nobody watches, live is off: nothing is streamed.
    std::thread::sleep(Duration::from_millis(800));
    let s = stats(&server).logs;
    assert_eq!((s.streamed_bytes, s.streams), (0, 0), "{s:?}");

    // A viewer: the node streams; the viewer leaves: the node stops.
    let mut viewer = Viewer::start(&server.url, job, dir.path(), "viewer");
    wait_until("the viewer to see line-10000", DEADLINE, || {
        viewer
            .text()
            .contains("line-10000\n")
            .then_some(())
            .ok_or(format!("{:?}", stats(&server).logs))
    });
    assert_eq!(stats(&server).logs.streams, 1);
    viewer.kill();
    wait_until("the stream to stop", DEADLINE, || {
        let s = stats(&server).logs;
        (s.streams == 0 && s.viewers == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    let after_viewer = stats(&server).logs.streamed_bytes;
    std::fs::write(&g1, "").expect("gate 1");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        stats(&server).logs.streamed_bytes,
        after_viewer,
        "the node went on streaming after the last viewer left"
    );

    // --live on: streamed with nobody watching; --live off: stops again.
    server
        .lwr(&["logs", &job.to_string(), "--live", "on"])
        .assert_success();
    wait_until("live streaming to catch up", DEADLINE, || {
        let s = stats(&server).logs;
        (s.streamed_bytes >= 20000 * 6 && s.streams == 1)
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    server
        .lwr(&["logs", &job.to_string(), "--live", "off"])
        .assert_success();
    wait_until("the live stream to stop", DEADLINE, || {
        let s = stats(&server).logs;
        (s.streams == 0).then_some(()).ok_or(format!("{s:?}"))
    });
    let after_live = stats(&server).logs.streamed_bytes;
    std::fs::write(&g2, "").expect("gate 2");
    std::fs::write(&g3, "").expect("gate 3");
    server.wait_finished(graph);
    assert_eq!(
        stats(&server).logs.streamed_bytes,
        after_live,
        "log bytes streamed with the toggle off and nobody watching"
    );
    // The whole log is stored at the end all the same.
    assert_every_line_once(
        "stored log",
        &server.lwr(&["logs", &job.to_string()]).stdout,
        40000,
    );
    // Toggling a finished job says why not.
    server
        .lwr(&["logs", &job.to_string(), "--live", "on"])
        .assert_failure()
        .assert_stderr_has(&["no running run"]);
}

#[test]
fn a_node_with_timestamps_starts_every_line_with_the_time() {
    let dir = tempdir();
    let repo = git_repo(
        &dir.path().join("repo"),
        "version: 1\njobs:\n  talk:\n    run: echo out; echo err >&2; printf partial; exit 3\n  \
         missing:\n    run: no-such-program-lwr\n",
    );
    let server = Server::start(dir.path());
    let work_dir = dir.path().join("ts");
    let args = [
        "node",
        "--server",
        &server.url,
        "--name",
        "ts",
        "--timestamps",
        "--work-dir",
        &work_dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut node = Daemon::new(
        "node ts",
        args,
        dir.path().join("node-ts.log"),
        vec![work_dir],
    );
    node.start();
    let out = server.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    server.wait_finished(graph);
    let talk = server.job(graph, "talk");
    assert_eq!(talk.info.state, JobState::Failed);
    assert_eq!(
        talk.run_history[0].exit_code,
        Some(3),
        "the job's own exit code"
    );
    let log = server.lwr(&["logs", &talk.info.id.to_string()]).stdout;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log:?}");
    for (line, text) in lines.iter().zip(["out", "err", "partial"]) {
        let (stamp, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(rest, text, "{log:?}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
            "not a UTC timestamp: {stamp:?}"
        );
    }
    let missing = server.job(graph, "missing");
    assert_eq!(missing.run_history[0].exit_code, Some(127));
    assert!(
        server
            .lwr(&["logs", &missing.info.id.to_string()])
            .stdout
            .contains("no-such-program-lwr"),
    );
}

/// `timestamps: true` in lwr.yml stamps that job's lines on any node; its neighbour without
/// the key is left as it printed.
#[test]
fn a_job_asks_for_timestamps_in_lwr_yml() {
    let dir = tempdir();
    let repo = git_repo(
        &dir.path().join("repo"),
        "version: 1\njobs:\n  stamped:\n    run: echo one; echo two\n    timestamps: true\n  \
         plain:\n    run: echo one\n",
    );
    let server = Server::start(dir.path());
    let _node = Node::start(dir.path(), &server.url, "n1", 2, &[]);
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let log_of = |name: &str| {
        let id = server.job(graph, name).info.id.to_string();
        server.lwr(&["logs", &id]).stdout
    };
    let stamped = log_of("stamped");
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped:?}");
    for (line, text) in lines.iter().zip(["one", "two"]) {
        let (stamp, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(rest, text, "{stamped:?}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "not a timestamp: {stamp:?}"
        );
    }
    assert_eq!(log_of("plain"), "one\n");
}

#[test]
fn a_cancelled_job_s_viewer_gets_its_last_words_and_characters_stay_whole() {
    let dir = tempdir();
    let gate = dir.path().join("never");
    // Many multi-byte characters: pieces and events split the bytes anywhere.
    let repo = git_repo(
        &dir.path().join("repo"),
        &format!(
            "version: 1\njobs:\n  talk:\n    run: for i in $(seq 1 3000); do echo \"é€😀 $i\"; done; \
             trap 'echo bye; exit 1' TERM; while [ ! -e {gate} ]; do sleep 0.05; done\n",
            gate = sh(&gate),
        ),
    );
    let server = Server::start(dir.path());
    let _node = server.node(dir.path(), "n1", 1, &[]);
    let (graph, job) = pushed_job(&server, &repo, "talk");
    server.wait_job(graph, "talk", JobState::Running, None);
    let viewer = Viewer::start(&server.url, job, dir.path(), "viewer");
    wait_until("the viewer to see the 3000th line", DEADLINE, || {
        viewer
            .text()
            .contains("é€😀 3000\n")
            .then_some(())
            .ok_or(String::new())
    });
    server.lwr(&["cancel", &job.to_string()]).assert_success();
    let seen = viewer.finish();
    let expected: String = (1..=3000).map(|i| format!("é€😀 {i}\n")).collect();
    assert!(
        seen.starts_with(&expected),
        "characters were split or lines lost"
    );
    // What the job said while it was stopped comes too.
    assert!(
        seen[expected.len()..].ends_with("bye\n"),
        "the end of the log: {:?}",
        &seen[expected.len()..]
    );
    assert_eq!(server.lwr(&["logs", &job.to_string()]).stdout, seen);
    assert_eq!(server.job(graph, "talk").info.state, JobState::Cancelled);
}

#[test]
fn a_viewer_resumes_from_its_last_event_id() {
    let dir = tempdir();
    let repo = git_repo(
        &dir.path().join("repo"),
        "version: 1\njobs:\n  talk:\n    run: seq 1 20000 | sed 's/^/line-/'\n",
    );
    let server = Server::start(dir.path());
    let _node = server.node(dir.path(), "n1", 1, &[]);
    let (graph, job) = pushed_job(&server, &repo, "talk");
    server.wait_finished(graph);
    let whole = server.lwr(&["logs", &job.to_string()]).stdout;
    let run = server.job(graph, "talk").run_history[0].id;
    // As a browser's EventSource reconnects: `Last-Event-ID: RUN:OFFSET`.
    let offset = 12_345;
    let text = server.api.block_on(async {
        let client = server.api.client();
        let mut follow = client
            .follow_log(job, None, 0, Some((run, offset)))
            .await
            .expect("following");
        let mut text = String::new();
        while let Some(event) = follow.next().await.expect("an event") {
            match event {
                lwr_client::FollowEvent::Log(l) => {
                    assert_eq!(l.offset, offset + text.len() as u64);
                    text.push_str(&l.text);
                }
                lwr_client::FollowEvent::End(end) => {
                    assert_eq!(end.size, whole.len() as u64);
                    break;
                }
                _ => {}
            }
        }
        text
    });
    assert_eq!(text, whole[offset as usize..]);
    // Another job's run in Last-Event-ID is refused, not followed for ever.
    let other = server.api.block_on(server.api.client().follow_log(
        job,
        None,
        0,
        Some((RunId(run.get() + 1000), 0)),
    ));
    assert!(other.is_err_and(|e| e.status().is_some_and(|s| s.as_u16() == 400)));
}
