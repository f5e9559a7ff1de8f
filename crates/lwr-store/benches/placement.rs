//! Placement benchmark: 1,000 registered nodes, 10,000 pending jobs.
//!
//! 1. The policy alone (`lwr_model::pool::decide`) for one claim: walk the ready jobs in
//!    order until the claiming node takes one, as the claim does. The pool is as it is under
//!    a backlog: nearly every node busy, jobs waiting for a while, a mix of requirements and
//!    affinity.
//! 2. The whole claim through the store (SQLite in a temp dir): read the ready jobs, decide,
//!    mark one running, commit.
//!
//! `cargo bench -p lwr-store --bench placement`. Prints medians; no harness, no criterion.

use std::time::{Duration, Instant};

use lwr_model::api::{RegisterNode, SubmitGraph};
use lwr_model::pool::{
    DEFAULT_AFFINITY_WAIT_MS, Decision, Memo, NodeState, Pool, PoolNode, ReadyJob, decide_with,
};
use lwr_model::{DurationMs, Graph, JobSpec, Millis, NodeId, NodeProperties, Requirements};
use lwr_store::Store;

const NODES: usize = 1000;
const JOBS: usize = 10_000;
const NOW: i64 = 10_000_000;

/// A small deterministic generator, so runs compare.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn properties(i: usize) -> NodeProperties {
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("speed".to_string(), (1 + i % 10).to_string());
    if i.is_multiple_of(20) {
        tags.insert("gpu".to_string(), "yes".to_string());
    }
    if i.is_multiple_of(3) {
        tags.insert("instance".to_string(), "spot".to_string());
    }
    NodeProperties {
        os: if i % 10 == 9 { "macos" } else { "linux" }.into(),
        arch: "x86_64".into(),
        hostname: format!("host-{i}"),
        cores: 8,
        memory_mb: 16_000,
        tags,
    }
}

fn requirements(j: usize) -> Option<Requirements> {
    match j % 10 {
        0..=3 => None,
        4..=6 => Some(Requirements {
            os: Some("linux".into()),
            ..Default::default()
        }),
        7 | 8 => Some(Requirements {
            properties: [("gpu".to_string(), "yes".to_string())].into(),
            ..Default::default()
        }),
        _ => Some(Requirements {
            os: Some("macos".into()),
            ..Default::default()
        }),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The policy for one claim. `busy_pct` of the nodes hold a run; jobs have been ready for up
/// to `ready_ms`.
fn policy_alone(label: &str, busy_pct: u64, ready_ms: u64) -> Duration {
    let mut rng = Lcg(42);
    let nodes: Vec<PoolNode> = (0..NODES)
        .map(|i| {
            let running = u32::from(rng.below(100) < busy_pct);
            PoolNode::new(
                NodeId(i as i64),
                format!("node-{i}"),
                properties(i),
                NodeState::Enabled,
                1,
                running,
                Millis(NOW - rng.below(5_000) as i64),
            )
        })
        .collect();
    let pool = Pool::new(nodes, DurationMs(60_000));
    let reqs: Vec<Option<Requirements>> = (0..JOBS).map(requirements).collect();
    let names: Vec<String> = (0..JOBS).map(|j| format!("job-{}", j % 500)).collect();
    let affinity: Vec<Option<NodeId>> = (0..JOBS)
        .map(|_| (rng.below(2) == 0).then(|| NodeId(rng.below(NODES as u64) as i64)))
        .collect();
    let ready_for: Vec<i64> = (0..JOBS).map(|_| rng.below(ready_ms) as i64).collect();
    let mut times = Vec::new();
    let mut taken_after = Vec::new();
    for _ in 0..2000 {
        let claimer = pool
            .get(NodeId(rng.below(NODES as u64) as i64))
            .expect("a node");
        let start = Instant::now();
        let mut looked = JOBS;
        let mut memo = Memo::default();
        for j in 0..JOBS {
            let job = ReadyJob {
                name: &names[j],
                branch: Some("main"),
                requirements: reqs[j].as_ref(),
                prefer: &[],
                affinity: affinity[j],
                affinity_wait_ms: DEFAULT_AFFINITY_WAIT_MS,
                ready_for_ms: DurationMs(ready_for[j]),
                avoid_spot: j.is_multiple_of(50),
            };
            if let Decision::Take(_) = decide_with(&job, claimer, &pool, Millis(NOW), &mut memo) {
                looked = j + 1;
                break;
            }
        }
        times.push(start.elapsed());
        taken_after.push(looked);
    }
    taken_after.sort();
    println!(
        "policy alone, {label}: {NODES} nodes, {JOBS} ready jobs: median {:?} per claim, \
         p99 {:?} (jobs looked at: median {}, max {})",
        median(times.clone()),
        {
            times.sort();
            times[times.len() * 99 / 100]
        },
        taken_after[taken_after.len() / 2],
        taken_after[taken_after.len() - 1]
    );
    median(times)
}

async fn through_the_store() -> Duration {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
    let store = Store::open(&url).await.expect("opening the store");
    let mut ids = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let reg = RegisterNode {
            name: format!("node-{i}"),
            properties: properties(i),
            slots: 4,
        };
        ids.push(
            store
                .register_node(&reg, Millis(NOW))
                .await
                .expect("registering"),
        );
    }
    let jobs: Vec<JobSpec> = (0..JOBS)
        .map(|j| {
            let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
                "name": format!("job-{j}"), "run": "true"
            }))
            .expect("a job spec");
            spec.node = requirements(j).unwrap_or_default();
            spec
        })
        .collect();
    let mut sub = SubmitGraph::new(Graph { jobs });
    sub.repository = Some("/repo".into());
    sub.branch = Some("main".into());
    // Ready for a minute: past the bounded holds, as under a backlog.
    store
        .submit_graph(&sub, Millis(NOW - 60_000))
        .await
        .expect("submitting");
    let mut rng = Lcg(7);
    let mut times = Vec::new();
    for _ in 0..300 {
        let node = ids[rng.below(NODES as u64) as usize];
        let start = Instant::now();
        let claimed = store
            .claim(node, 1, &[], Millis(NOW), DurationMs(30_000))
            .await
            .expect("claiming");
        times.push(start.elapsed());
        assert!(claimed.assignments.len() <= 1);
    }
    let m = median(times);
    println!(
        "whole claim (SQLite, one transaction): {NODES} nodes, {JOBS} pending jobs: median {m:?}"
    );
    m
}

fn main() {
    // A backlog: nearly every node busy, jobs waiting for up to two minutes.
    let policy = policy_alone("backlog", 95, 120_000);
    // A burst: half the nodes free and every job ready for under 2 s, so slower nodes hold
    // jobs for faster free ones and walk far down the list (the worst case).
    policy_alone("burst", 50, 2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = runtime.block_on(through_the_store());
    let ok = policy < Duration::from_millis(1);
    println!(
        "placement decision median {policy:?} ({}: under 1 ms); whole claim median {store:?}",
        if ok { "ok" } else { "TOO SLOW" }
    );
    if !ok {
        std::process::exit(1);
    }
}
