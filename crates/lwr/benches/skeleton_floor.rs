//! The floor of `bench/skeleton` (issue 18) for a scheduler that records every step: the
//! least any design keeping the queue's contract could cost on this machine, next to
//! `make -j2`, for the same two shapes (N independent `true` jobs, a chain of M).
//!
//! One process, like `lwr dev`: a server (axum on loopback) and in-process nodes that claim
//! over real HTTP, one request per step carrying the job that just ended and asking for the
//! next one, and spawn `true` in a process group of its own. What is left out is everything
//! but the contract: the graph, its dependencies and the choice of job live in memory (no
//! search, no statement per job state), no logs, no files, no auth, no metrics. What is kept
//! (with `--durable`, the default) is the one thing a scheduler that survives `kill -9`
//! cannot skip: before a claim is answered, the result it carries and the job it hands out
//! are written to SQLite (WAL, `synchronous = NORMAL`, as `lwr server`) in one committed
//! statement, so a claim is never given twice and an acknowledged result is never lost.
//! `--memory` drops that too, leaving HTTP and process creation. `--direct` commits through
//! rusqlite on the claim's own thread instead of through sqlx's SQLite connection thread
//! (a round trip there and back, and sqlx's test of the connection when it returns to its
//! pool): the difference is what those hand-offs cost a step.
//!
//! ```text
//! cargo bench -p lwr --bench skeleton_floor -- [--wide 2000] [--chain 200] [--nodes 2]
//!     [--slots 2] [--memory | --direct]
//! LWR_BENCH_FLOOR=1 bench/skeleton [WIDE] [CHAIN]
//! ```
//! Prints the same table as `bench/skeleton`: wall time, `make -j2`'s, and their ratio.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use axum::extract::{Json, State};
use axum::routing::post;
use axum::{Router, http::StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use tokio::sync::Notify;

struct Args {
    wide: usize,
    chain: usize,
    nodes: usize,
    slots: usize,
    durable: bool,
    direct: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        wide: 2000,
        chain: 200,
        nodes: 2,
        slots: 2,
        durable: true,
        direct: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            // `cargo bench` adds `--bench`.
            "--bench" => continue,
            "--memory" => {
                a.durable = false;
                continue;
            }
            "--direct" => {
                a.direct = true;
                continue;
            }
            _ => {}
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n = value
            .parse::<usize>()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--wide" => a.wide = n,
            "--chain" => a.chain = n,
            "--nodes" => a.nodes = n,
            "--slots" => a.slots = n,
            _ => bail!(
                "unknown flag {flag} ([--wide N] [--chain M] [--nodes N] [--slots S] [--memory | --direct])"
            ),
        }
    }
    if a.nodes == 0 || a.slots == 0 {
        bail!("--nodes and --slots must be at least 1");
    }
    Ok(a)
}

/// The graph in memory: job `i` of a chain needs job `i - 1`; a wide graph needs nothing.
struct Graph {
    chain: bool,
    jobs: usize,
    ready: VecDeque<usize>,
    ended: usize,
}

struct Floor {
    graph: Mutex<Graph>,
    wake: Notify,
    db: Option<SqlitePool>,
    direct: Option<Mutex<rusqlite::Connection>>,
}

impl Floor {
    fn lock(&self) -> MutexGuard<'_, Graph> {
        // A panic while holding the lock ends the benchmark anyway.
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Serialize, Deserialize)]
struct Claim {
    node: usize,
    ended: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    job: Option<usize>,
    over: bool,
}

/// Records the ended job (releasing its dependent) and hands out the next ready one,
/// durably before answering; with nothing ready, waits for something to be.
async fn claim(
    State(floor): State<Arc<Floor>>,
    Json(c): Json<Claim>,
) -> Result<Json<Answer>, StatusCode> {
    let mut ended = c.ended;
    // Written once, with the first answer's record (a claim may wait for a job after it).
    let mut unrecorded = c.ended;
    loop {
        let wake = floor.wake.notified();
        let (job, over) = {
            let mut g = floor.lock();
            if let Some(done) = ended.take() {
                g.ended += 1;
                if g.chain && done + 1 < g.jobs {
                    g.ready.push_back(done + 1);
                    floor.wake.notify_one();
                }
            }
            (g.ready.pop_front(), g.ended == g.jobs)
        };
        if let Some(db) = &floor.db
            && (job.is_some() || unrecorded.is_some())
        {
            sqlx::query("INSERT INTO steps (node, ended, taken) VALUES ($1, $2, $3)")
                .bind(c.node as i64)
                .bind(unrecorded.take().map(|j| j as i64))
                .bind(job.map(|j| j as i64))
                .execute(db)
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        }
        if let Some(db) = &floor.direct
            && (job.is_some() || unrecorded.is_some())
        {
            let db = db.lock().unwrap_or_else(|e| e.into_inner());
            db.prepare_cached("INSERT INTO steps (node, ended, taken) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| {
                    s.execute((
                        c.node as i64,
                        unrecorded.take().map(|j| j as i64),
                        job.map(|j| j as i64),
                    ))
                })
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        }
        if over {
            floor.wake.notify_waiters();
        }
        if job.is_some() || over {
            return Ok(Json(Answer { job, over }));
        }
        wake.await;
    }
}

/// One slot of a node: claims, runs `true`, reports it with the next claim, until the
/// graph is over.
async fn slot(http: reqwest::Client, url: String, node: usize) -> Result<()> {
    let mut ended = None;
    loop {
        let a: Answer = http
            .post(&url)
            .json(&Claim { node, ended })
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let Some(job) = a.job else { return Ok(()) };
        let status = tokio::process::Command::new("true")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("job {job} failed: {status}");
        }
        ended = Some(job);
    }
}

/// Runs one graph through the floor and says how long it took.
async fn run(args: &Args, dir: &Path, chain: bool, jobs: usize) -> Result<f64> {
    let direct = if args.durable && args.direct {
        let c = rusqlite::Connection::open(dir.join(if chain { "chain.db" } else { "wide.db" }))?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
            CREATE TABLE steps (id INTEGER PRIMARY KEY, node INTEGER, ended INTEGER, taken INTEGER)")?;
        Some(Mutex::new(c))
    } else {
        None
    };
    let db = if args.durable && !args.direct {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(if chain { "chain.db" } else { "wide.db" }))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        // One connection: one writer, as SQLite has.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query("CREATE TABLE steps (id INTEGER PRIMARY KEY, node INTEGER, ended INTEGER, taken INTEGER)")
            .execute(&pool)
            .await?;
        Some(pool)
    } else {
        None
    };
    let ready = if chain {
        (0..jobs.min(1)).collect()
    } else {
        (0..jobs).collect()
    };
    let floor = Arc::new(Floor {
        graph: Mutex::new(Graph {
            chain,
            jobs,
            ready,
            ended: 0,
        }),
        wake: Notify::new(),
        db,
        direct,
    });
    let app = Router::new()
        .route("/claim", post(claim))
        .with_state(floor.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/claim", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let start = Instant::now();
    let mut slots = Vec::new();
    for node in 0..args.nodes {
        let http = reqwest::Client::new();
        for _ in 0..args.slots {
            slots.push(tokio::spawn(slot(http.clone(), url.clone(), node)));
        }
    }
    for s in slots {
        s.await??;
    }
    let took = start.elapsed().as_secs_f64();
    server.abort();
    let ended = floor.lock().ended;
    if ended != jobs {
        bail!("only {ended} of {jobs} jobs ended");
    }
    Ok(took)
}

/// `make -j2` over the same shape, as `bench/skeleton` runs it.
fn make(dir: &Path, chain: bool, jobs: usize) -> Result<f64> {
    let names: Vec<String> = (0..jobs).map(|i| format!("j{i}")).collect();
    let mut text = format!("all: {}\n", names.join(" "));
    for (i, name) in names.iter().enumerate() {
        let dep = if chain && i > 0 {
            format!(" j{}", i - 1)
        } else {
            String::new()
        };
        text.push_str(&format!("{name}:{dep}\n\t@true\n"));
    }
    text.push_str(&format!(".PHONY: all {}\n", names.join(" ")));
    let mk = dir.join(if chain { "chain.mk" } else { "wide.mk" });
    std::fs::write(&mk, text)?;
    let start = Instant::now();
    let status = std::process::Command::new("make")
        .args(["-s", "-j2", "-f"])
        .arg(&mk)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run make")?;
    if !status.success() {
        bail!("make failed: {status}");
    }
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "floor: {} ({} nodes of {} slots)",
        if args.durable && args.direct {
            "every step committed to SQLite before its answer, on the claim's thread"
        } else if args.durable {
            "every step committed to SQLite before its answer"
        } else {
            "in memory"
        },
        args.nodes,
        args.slots
    );
    println!(
        "{:<6} {:>6} {:>10} {:>10} {:>7}",
        "shape", "jobs", "floor_s", "make_s", "ratio"
    );
    for (shape, chain, jobs) in [("wide", false, args.wide), ("chain", true, args.chain)] {
        if jobs == 0 {
            continue;
        }
        let took = runtime.block_on(run(&args, dir.path(), chain, jobs))?;
        let mk = make(dir.path(), chain, jobs)?;
        println!(
            "{shape:<6} {jobs:>6} {took:>10.3} {mk:>10.3} {:>7.2}",
            took / mk
        );
    }
    Ok(())
}
