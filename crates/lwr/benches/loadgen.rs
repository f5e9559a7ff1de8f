//! The scheduler's own speed, apart from process creation: simulated nodes claim and report
//! over the real HTTP API of a real `lwr server` (this build, release profile) and run
//! nothing. Two phases in one run:
//!
//! 1. **throughput**: one graph of `--jobs` independent jobs; the nodes claim and report as
//!    fast as the server answers. Prints jobs/s and the server's CPU per job.
//! 2. **latency**: graphs of `--batch` jobs submitted open-loop at `--rate` jobs/s for
//!    `--seconds`; prints the achieved rate and the time from each graph's submit request
//!    to each of its jobs' claim answer (percentiles). A submit request starts before its
//!    jobs are ready, so the figures are an upper bound on ready-to-claimed.
//!
//! ```text
//! cargo bench -p lwr --bench loadgen -- [--nodes 8] [--slots 4] [--jobs 20000]
//!     [--rate 10000] [--batch 100] [--seconds 5] [--db postgres://...] [--servers 2]
//!     [--shape independent|fan-out|fan-in]
//! ```
//! `--shape fan-out` makes every graph a build and its tests: every job but the first needs
//! the first, so each job handed out carries its need's manifest. `--shape fan-in` makes it
//! tests and their report: the last job needs every other.
//! `LWR_BENCH_BIN` runs another build's `lwr server` (to compare two builds under the same
//! load). `--db` (or `LWR_BENCH_DB`) runs on PostgreSQL (give it an empty database); `--servers 2`
//! runs two servers on it, the nodes spread over them.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwr_client::Client;
use lwr_model::api::{ClaimRequest, RegisterNode, RunResult, SubmitGraph};
use lwr_model::{GraphId, NodeId, NodeProperties};

struct Args {
    nodes: usize,
    slots: u32,
    jobs: usize,
    rate: u64,
    batch: usize,
    seconds: u64,
    db: Option<String>,
    servers: usize,
    /// How a graph's jobs need each other.
    shape: Shape,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 8,
        slots: 4,
        jobs: 20_000,
        rate: 10_000,
        batch: 100,
        seconds: 5,
        db: std::env::var("LWR_BENCH_DB").ok().filter(|s| !s.is_empty()),
        servers: 1,
        shape: Shape::Independent,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` adds `--bench`.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--nodes" => a.nodes = num(&value)? as usize,
            "--slots" => a.slots = num(&value)? as u32,
            "--jobs" => a.jobs = num(&value)? as usize,
            "--rate" => a.rate = num(&value)?,
            "--batch" => a.batch = num(&value)? as usize,
            "--seconds" => a.seconds = num(&value)?,
            "--db" => a.db = Some(value),
            "--servers" => a.servers = num(&value)? as usize,
            "--shape" => {
                a.shape = match value.as_str() {
                    "independent" => Shape::Independent,
                    "fan-out" => Shape::FanOut,
                    "fan-in" => Shape::FanIn,
                    _ => {
                        return Err(format!("--shape {value}: independent, fan-out or fan-in"));
                    }
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.servers > 1 && a.db.is_none() {
        return Err(
            "--servers above 1 needs --db postgres://... (servers share a database)".into(),
        );
    }
    if a.nodes == 0 || a.slots == 0 || a.batch == 0 || a.servers == 0 {
        return Err("--nodes, --slots, --batch and --servers must be at least 1".into());
    }
    Ok(a)
}

/// A `lwr server` child process, killed on drop.
struct Server {
    url: String,
    child: Child,
}

impl Server {
    fn start(dir: &Path, db: Option<&str>) -> Result<Server, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("server.log"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // Another build's binary to compare with (A/B runs of one load generator).
        let bin =
            std::env::var("LWR_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lwr").into());
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(db) = db {
            cmd.arg("--db").arg(db);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting lwr server: {e}"))?;
        Ok(Server {
            url: format!("http://127.0.0.1:{port}"),
            child,
        })
    }

    /// User plus system CPU time of the server process so far (Linux), in seconds.
    fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(client: &Client) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match client.health().await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                return Err(format!("server not ready after 30 s: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How a graph's jobs need each other.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// No needs.
    Independent,
    /// Every job but the first needs the first (a build and its tests).
    FanOut,
    /// The last job needs every other (tests and their report).
    FanIn,
}

fn graph(prefix: &str, jobs: usize, shape: Shape) -> Result<SubmitGraph, String> {
    let mut yml = String::from("version: 1\ncheckout: false\njobs:\n");
    for i in 0..jobs {
        yml.push_str(&format!("  {prefix}{i}:\n    run: \"true\"\n"));
        match shape {
            Shape::FanOut if i > 0 => yml.push_str(&format!("    needs: [{prefix}0]\n")),
            Shape::FanIn if i > 0 && i + 1 == jobs => {
                let all: Vec<String> = (0..i).map(|k| format!("{prefix}{k}")).collect();
                yml.push_str(&format!("    needs: [{}]\n", all.join(", ")));
            }
            _ => {}
        }
    }
    let graph = lwr_model::graph::parse(&yml, "loadgen.yml").map_err(|e| e.to_string())?;
    Ok(SubmitGraph {
        repository: None,
        branch: None,
        revision: None,
        author: None,
        subject: None,
        graph,
        push: None,
        left_out: Vec::new(),
    })
}

/// What the simulated nodes saw: the time of each claim answer, by the graph of the job.
#[derive(Default)]
struct Seen {
    claimed: Mutex<HashMap<GraphId, Vec<Instant>>>,
    reported: AtomicU64,
}

/// One simulated node: claims up to its slots, "runs" each job in no time, reports the
/// results on its next claim, until `stop` and nothing is left to report.
async fn node(client: Client, id: NodeId, slots: u32, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut results: Vec<RunResult> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) && results.is_empty() {
            return;
        }
        let req = ClaimRequest {
            max: slots,
            wait_ms: 200,
            results: std::mem::take(&mut results),
            ahead: 0,
        };
        let sent = req.results.len() as u64;
        let answer = match client.claim(id, &req).await {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("node {id}: claim failed: {e}");
                results = req.results;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let recorded = answer.acks.iter().filter(|a| a.recorded).count() as u64;
        if recorded != sent {
            eprintln!(
                "node {id}: {} of {sent} results not recorded",
                sent - recorded
            );
        }
        seen.reported.fetch_add(recorded, Ordering::Relaxed);
        if !answer.assignments.is_empty() {
            let mut claimed = seen.claimed.lock().unwrap_or_else(|p| p.into_inner());
            for a in &answer.assignments {
                claimed.entry(a.graph_id).or_default().push(now);
            }
        }
        results.extend(
            answer
                .assignments
                .iter()
                .map(|a| RunResult::succeeded(a.run_id)),
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(a: Args) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let servers = (0..a.servers)
        .map(|i| Server::start(&tmp.path().join(format!("server-{i}")), a.db.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let clients = servers
        .iter()
        .map(|s| Client::new(&s.url).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &clients {
        wait_ready(c).await?;
    }
    println!(
        "loadgen: {} server(s) on {}, {} nodes x {} slots",
        a.servers,
        if a.db.is_some() { "postgres" } else { "sqlite" },
        a.nodes,
        a.slots
    );

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..a.nodes {
        let client = clients[i % clients.len()].clone();
        let info = client
            .register_node(&RegisterNode {
                name: format!("sim-{i}"),
                properties: NodeProperties {
                    os: std::env::consts::OS.into(),
                    arch: std::env::consts::ARCH.into(),
                    hostname: format!("sim-{i}"),
                    cores: 1,
                    memory_mb: 1024,
                    tags: Default::default(),
                },
                slots: a.slots,
            })
            .await
            .map_err(|e| format!("registering sim-{i}: {e}"))?;
        tasks.push(tokio::spawn(node(
            client,
            info.id,
            a.slots,
            seen.clone(),
            stop.clone(),
        )));
    }

    // Phase 1: throughput.
    let big = graph("t", a.jobs, a.shape)?;
    let cpu0: f64 = servers.iter().filter_map(Server::cpu_secs).sum();
    let start = Instant::now();
    clients[0]
        .submit_graph(&big)
        .await
        .map_err(|e| format!("submitting {} jobs: {e}", a.jobs))?;
    let submitted = start.elapsed();
    while seen.reported.load(Ordering::Relaxed) < a.jobs as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = start.elapsed();
    let cpu = servers.iter().filter_map(Server::cpu_secs).sum::<f64>() - cpu0;
    println!(
        "throughput: {} jobs claimed and reported in {:.2} s ({:.0} jobs/s; submit {:.2} s); \
         server CPU {:.2} s, {:.3} ms per job",
        a.jobs,
        wall.as_secs_f64(),
        a.jobs as f64 / wall.as_secs_f64(),
        submitted.as_secs_f64(),
        cpu,
        cpu * 1000.0 / a.jobs as f64
    );

    // Phase 2: latency at a fixed offered rate.
    seen.claimed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let base = seen.reported.load(Ordering::Relaxed);
    let graphs_per_sec = (a.rate as f64 / a.batch as f64).max(0.1);
    let interval = Duration::from_secs_f64(1.0 / graphs_per_sec);
    let count = (graphs_per_sec * a.seconds as f64).ceil() as usize;
    let template = graph("l", a.batch, a.shape)?;
    let submits: Arc<Mutex<Vec<(GraphId, Instant)>>> = Arc::default();
    let cpu0: f64 = servers.iter().filter_map(Server::cpu_secs).sum();
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..count {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = clients[i % clients.len()].clone();
        let (sub, submits) = (template.clone(), submits.clone());
        pending.push(tokio::spawn(async move {
            let sent = Instant::now();
            let info = client.submit_graph(&sub).await.map_err(|e| e.to_string())?;
            submits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((info.id, sent));
            Ok::<(), String>(())
        }));
    }
    for p in pending {
        p.await.map_err(|e| e.to_string())??;
    }
    let offered = start.elapsed();
    let total = (count * a.batch) as u64;
    while seen.reported.load(Ordering::Relaxed) < base + total {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = start.elapsed();
    let cpu = servers.iter().filter_map(Server::cpu_secs).sum::<f64>() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(total as usize);
    {
        let claimed = seen.claimed.lock().unwrap_or_else(|p| p.into_inner());
        for (graph, sent) in submits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for at in claimed.get(graph).into_iter().flatten() {
                latencies.push(at.saturating_duration_since(*sent));
            }
        }
    }
    latencies.sort();
    println!(
        "latency: {} graphs of {} jobs offered at {} jobs/s over {:.2} s, all done in {:.2} s \
         ({:.0} jobs/s); submit-to-claimed ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ({} jobs); \
         server CPU {:.2} s, {:.3} ms per job",
        count,
        a.batch,
        a.rate,
        offered.as_secs_f64(),
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
        cpu,
        cpu * 1000.0 / total as f64
    );
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn main() {
    let result = args().and_then(|a| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?
            .block_on(run(a))
    });
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
