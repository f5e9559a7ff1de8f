//! The pool's policy: which node a ready job goes to, and why.
//!
//! Pure functions over a snapshot of the pool (no I/O, no clock): the claim hands in the
//! job, the node asking for work and the other nodes, and gets back [`Decision::Take`],
//! [`Decision::Hold`] (leave the job for a better node) or [`Decision::Unmet`]. Every hold
//! is bounded in time, so a preferred node that never claims cannot starve a job.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DurationMs, Millis, NodeId};
use crate::node::{NodeProperties, Requirements};

/// How long a job waits for the node that last built it, unless lwr.yml says
/// (`affinity_wait`).
pub const DEFAULT_AFFINITY_WAIT_MS: DurationMs = DurationMs(30_000);
/// How long a slower (or spot) node leaves a ready job to a faster (or reserved) one that
/// has a free slot. The better node is woken when the job becomes ready and claims within
/// milliseconds; the bound only matters when it does not.
pub const PREFERENCE_GRACE_MS: DurationMs = DurationMs(3_000);

/// A job's `prefer:` entries, in order of importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The node that last ran the same job on the same repository and branch successfully.
    Affinity,
    /// The node with the highest `speed` tag.
    Fastest,
    /// A node whose `instance` is not `spot`.
    Reserved,
}

impl Prefer {
    /// What a job prefers when lwr.yml says nothing.
    pub const DEFAULT: [Prefer; 2] = [Prefer::Affinity, Prefer::Fastest];
    pub const ALL: [Prefer; 3] = [Prefer::Affinity, Prefer::Fastest, Prefer::Reserved];

    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::Affinity => "affinity",
            Prefer::Fastest => "fastest",
            Prefer::Reserved => "reserved",
        }
    }

    pub fn parse(s: &str) -> Option<Prefer> {
        Prefer::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What an operator made of a node. `lost` is not a state but an observation (no heartbeat
/// for too long), so it is computed, never stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Claims jobs.
    #[default]
    Enabled,
    /// Finishes its running jobs, claims no more (`lwr nodes disable`).
    Disabled,
    /// Taken out of the pool after repeated infrastructure errors, or by an operator.
    Quarantined,
    /// Finishing its running jobs before it reboots (`lwr nodes reboot`).
    Draining,
}

impl NodeState {
    pub const ALL: [NodeState; 4] = [
        NodeState::Enabled,
        NodeState::Disabled,
        NodeState::Quarantined,
        NodeState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Enabled => "enabled",
            NodeState::Disabled => "disabled",
            NodeState::Quarantined => "quarantined",
            NodeState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A node's `speed` tag as a number (higher is faster); 0 when absent or not a number.
pub fn speed_of(props: &NodeProperties) -> f64 {
    props
        .tags
        .get("speed")
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .unwrap_or(0.0)
}

/// True for a node tagged `instance=spot`: it may be taken away at any moment.
pub fn is_spot(props: &NodeProperties) -> bool {
    props
        .tags
        .get("instance")
        .is_some_and(|v| v.eq_ignore_ascii_case("spot"))
}

/// One node as the policy sees it.
#[derive(Debug, Clone)]
pub struct PoolNode {
    pub id: NodeId,
    pub name: String,
    pub properties: NodeProperties,
    pub state: NodeState,
    pub slots: u32,
    /// Runs it holds.
    pub running: u32,
    /// Its last heartbeat or claim.
    pub last_seen: Millis,
    /// Why its own health check fails (`lwr node --health-check`); `None`: healthy.
    pub health: Option<String>,
    speed: f64,
    spot: bool,
}

impl PoolNode {
    pub fn new(
        id: NodeId,
        name: String,
        properties: NodeProperties,
        state: NodeState,
        slots: u32,
        running: u32,
        last_seen: Millis,
    ) -> PoolNode {
        let (speed, spot) = (speed_of(&properties), is_spot(&properties));
        PoolNode {
            id,
            name,
            properties,
            state,
            slots,
            running,
            last_seen,
            health: None,
            speed,
            spot,
        }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn spot(&self) -> bool {
        self.spot
    }

    pub fn has_free_slot(&self) -> bool {
        self.running < self.slots
    }
}

/// A snapshot of the pool: the nodes, fastest first.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    nodes: Vec<PoolNode>,
    index: HashMap<NodeId, usize>,
    /// A node not heard from for longer than this is lost.
    pub lost_after_ms: DurationMs,
}

impl Pool {
    pub fn new(mut nodes: Vec<PoolNode>, lost_after_ms: DurationMs) -> Pool {
        nodes.sort_by(|a, b| b.speed.total_cmp(&a.speed).then(a.id.cmp(&b.id)));
        let index = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        Pool {
            nodes,
            index,
            lost_after_ms,
        }
    }

    /// Every node, fastest first.
    pub fn nodes(&self) -> &[PoolNode] {
        &self.nodes
    }

    pub fn get(&self, id: NodeId) -> Option<&PoolNode> {
        self.index.get(&id).map(|&i| &self.nodes[i])
    }

    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut PoolNode> {
        self.index.get(&id).map(|&i| &mut self.nodes[i])
    }

    /// Adds or replaces a node (it registered, was labelled or changed state).
    pub fn upsert(&mut self, node: PoolNode) {
        let mut nodes = std::mem::take(&mut self.nodes);
        nodes.retain(|n| n.id != node.id);
        nodes.push(node);
        *self = Pool::new(nodes, self.lost_after_ms);
    }

    /// Heard from within the bound.
    pub fn alive(&self, node: &PoolNode, now: Millis) -> bool {
        now.since(node.last_seen) <= self.lost_after_ms
    }

    /// Alive, enabled and healthy: it may be given work.
    pub fn usable(&self, node: &PoolNode, now: Millis) -> bool {
        node.state == NodeState::Enabled && node.health.is_none() && self.alive(node, now)
    }

    /// Why no usable node can run a job with `req`; `None` when one can. For a pending job's
    /// reason: `no node matches: os=plan9 (node has linux)`.
    pub fn unmet(&self, req: &Requirements, now: Millis) -> Option<String> {
        let mut first = None;
        let mut usable = 0;
        for node in self.nodes.iter().filter(|n| self.usable(n, now)) {
            usable += 1;
            match unmet_on(Some(req), &node.properties) {
                None => return None,
                Some(why) if first.is_none() => {
                    first = Some(why.replacen("(node ", &format!("({} ", node.name), 1))
                }
                Some(_) => {}
            }
        }
        Some(match first {
            Some(why) if usable == 1 => format!("no node matches: {why}"),
            Some(why) => format!(
                "no node matches: {why}, and {}",
                crate::words::count((usable - 1) as u64, "other", "others")
            ),
            None => format!(
                "no enabled node is alive to run it (it needs {})",
                req.describe()
            ),
        })
    }
}

/// A ready job, as the policy needs it.
#[derive(Debug, Clone, Copy)]
pub struct ReadyJob<'a> {
    pub name: &'a str,
    /// The push's branch, for reasons (`affinity: last success of build on main`).
    pub branch: Option<&'a str>,
    pub requirements: Option<&'a Requirements>,
    /// Empty: [`Prefer::DEFAULT`].
    pub prefer: &'a [Prefer],
    /// The node that last ran the job on the same repository and branch successfully.
    pub affinity: Option<NodeId>,
    pub affinity_wait_ms: DurationMs,
    /// How long the job has been ready to claim.
    pub ready_for_ms: DurationMs,
    /// Its last run ended by an infrastructure error on a spot node.
    pub avoid_spot: bool,
}

/// What the claiming node does with a ready job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it; the reason is recorded with the run.
    Take(String),
    /// Leave it for a better node; the claiming node looks again after `retry_in_ms` at
    /// the latest (when the hold runs out).
    Hold {
        reason: String,
        retry_in_ms: DurationMs,
    },
    /// The claiming node does not meet a requirement.
    Unmet(String),
}

/// What [`decide_with`] found out that holds for every job of one claim: the first faster
/// free node able to run jobs with given requirements (valid for one snapshot of the pool:
/// see [`Memo::new_snapshot`]), and how many jobs it left waiting for each node they have
/// affinity to. Valid for one claimer and one `now`: make a new one per claim.
#[derive(Debug, Default)]
pub struct Memo {
    /// For jobs without requirements: index of the faster node, if any.
    faster_any: Option<Option<usize>>,
    faster: HashMap<Requirements, Option<usize>>,
    /// Jobs this claim left waiting for each node they have affinity to.
    affinity_holds: HashMap<NodeId, u32>,
}

impl Memo {
    /// Forgets what depends on the pool's snapshot (it may be read again between two pages
    /// of one claim's search); the jobs already left waiting stay counted.
    pub fn new_snapshot(&mut self) {
        self.faster_any = None;
        self.faster.clear();
    }
}

/// Decides whether `claimer` takes `job`, given the rest of the `pool` at time `now`.
pub fn decide(job: &ReadyJob, claimer: &PoolNode, pool: &Pool, now: Millis) -> Decision {
    decide_with(job, claimer, pool, now, &mut Memo::default())
}

/// Why a node with `props` cannot run a job with `req`: a requirement it does not meet, or
/// it is a Buildbot bridge and the job is a plain one; `None` when it can.
pub fn unmet_on(req: Option<&Requirements>, props: &NodeProperties) -> Option<String> {
    req.and_then(|r| r.unmet_by(props))
        .or_else(|| crate::buildbot::bridge_refuses(req, props))
}

/// [`crate::timing::AFFINITY_SILENCE`] on the pool's clock (milliseconds).
pub const AFFINITY_SILENCE_MS: DurationMs =
    DurationMs(crate::timing::AFFINITY_SILENCE.as_millis() as i64);

/// [`decide`] for one of many jobs of the same claim: `memo` carries what the earlier ones
/// found, so a slow node that holds thousands of jobs for faster ones in a burst does not
/// search the pool for each.
pub fn decide_with(
    job: &ReadyJob,
    claimer: &PoolNode,
    pool: &Pool,
    now: Millis,
    memo: &mut Memo,
) -> Decision {
    if let Some(why) = unmet_on(job.requirements, &claimer.properties) {
        return Decision::Unmet(why);
    }
    // Another node that could run the job now.
    let fits = |n: &PoolNode| {
        n.id != claimer.id
            && pool.usable(n, now)
            && unmet_on(job.requirements, &n.properties).is_none()
    };
    let hold = |reason: String, bound: DurationMs| Decision::Hold {
        reason,
        retry_in_ms: DurationMs((bound.get() - job.ready_for_ms.get()).max(1)),
    };
    if job.avoid_spot {
        if !claimer.spot {
            return Decision::Take("reserved after spot interruption".into());
        }
        // Not bounded in time: the job must not lose a second run to a spot node while a
        // non-spot one can take it.
        if let Some(n) = pool.nodes.iter().find(|n| !n.spot && fits(n)) {
            return Decision::Hold {
                reason: format!("reserved after spot interruption: waiting for {}", n.name),
                retry_in_ms: PREFERENCE_GRACE_MS,
            };
        }
    }
    let prefer = if job.prefer.is_empty() {
        &Prefer::DEFAULT[..]
    } else {
        job.prefer
    };
    let mut affinity_expired = false;
    // The node this job has affinity to, when earlier jobs wait for it already.
    let mut crowded: Option<&str> = None;
    for pref in prefer {
        match pref {
            Prefer::Affinity => match job.affinity {
                Some(id) if id == claimer.id => {
                    return Decision::Take(format!(
                        "affinity: last success of {}{}",
                        job.name,
                        job.branch.map(|b| format!(" on {b}")).unwrap_or_default()
                    ));
                }
                Some(id) => {
                    // A node silent for three heartbeats is most likely gone (killed, cut
                    // off): it is not waited for, long before it counts as lost.
                    let heard_of = |n: &PoolNode| now.since(n.last_seen) <= AFFINITY_SILENCE_MS;
                    if let Some(n) = pool.get(id).filter(|n| fits(n) && heard_of(n)) {
                        if job.ready_for_ms >= job.affinity_wait_ms {
                            affinity_expired = true;
                        } else if holds_more(memo, n) {
                            let how = if n.has_free_slot() { "" } else { ", busy" };
                            return hold(
                                format!("waiting for {} (affinity{how})", n.name),
                                job.affinity_wait_ms,
                            );
                        } else {
                            crowded = Some(&n.name);
                        }
                    }
                }
                None => {}
            },
            Prefer::Fastest => {
                let search = || {
                    pool.nodes
                        .iter()
                        .take_while(|n| n.speed > claimer.speed)
                        .position(|n| fits(n) && n.has_free_slot())
                };
                let at = match job.requirements {
                    None => *memo.faster_any.get_or_insert_with(search),
                    Some(req) => match memo.faster.get(req) {
                        Some(at) => *at,
                        None => {
                            let at = search();
                            memo.faster.insert(req.clone(), at);
                            at
                        }
                    },
                };
                let faster = at.map(|i| &pool.nodes[i]);
                match faster {
                    Some(n) if job.ready_for_ms < PREFERENCE_GRACE_MS => {
                        return hold(
                            format!("waiting for faster node {}", n.name),
                            PREFERENCE_GRACE_MS,
                        );
                    }
                    Some(_) if affinity_expired => break,
                    Some(n) => {
                        return Decision::Take(format!(
                            "faster node {} did not take it within {}",
                            n.name,
                            secs(PREFERENCE_GRACE_MS)
                        ));
                    }
                    None if affinity_expired => break,
                    None if claimer.speed > 0.0 || pool.nodes.iter().any(|n| n.speed > 0.0) => {
                        let busy = pool
                            .nodes
                            .iter()
                            .take_while(|n| n.speed > claimer.speed)
                            .any(&fits);
                        // Only worked out for a job taken, so the scan costs no claim much.
                        let reason = if busy {
                            "fastest free matching node"
                        } else if !pool.nodes.iter().any(&fits) {
                            "only matching node"
                        } else {
                            "fastest matching"
                        };
                        return Decision::Take(reason.into());
                    }
                    // No node says how fast it is: nothing to prefer.
                    None => {}
                }
            }
            Prefer::Reserved => {
                if claimer.spot {
                    if let Some(n) = pool
                        .nodes
                        .iter()
                        .find(|n| !n.spot && fits(n) && n.has_free_slot())
                        && job.ready_for_ms < PREFERENCE_GRACE_MS
                    {
                        return hold(
                            format!("waiting for non-spot node {}", n.name),
                            PREFERENCE_GRACE_MS,
                        );
                    }
                } else if !affinity_expired {
                    return Decision::Take("reserved node".into());
                }
            }
        }
    }
    if affinity_expired {
        return Decision::Take(format!(
            "affinity wait expired after {}",
            secs(job.affinity_wait_ms)
        ));
    }
    if let Some(name) = crowded {
        return Decision::Take(format!(
            "{name}, which last ran it, has as many jobs waiting as it can take"
        ));
    }
    if pool.nodes.iter().any(fits) {
        Decision::Take("first free matching node".into())
    } else {
        Decision::Take("only matching node".into())
    }
}

/// Whether one more job of this claim's search may wait for node `n` (its affinity): as
/// many as `n` can take when it next claims, its free slots or one when it is busy. The
/// jobs after those are decided as if they had no affinity: a queue of jobs that one node
/// ran last (the same job in many pushes) would otherwise leave every other node idle for
/// the whole wait, while that node takes them one at a time.
fn holds_more(memo: &mut Memo, n: &PoolNode) -> bool {
    let room = n.slots.saturating_sub(n.running).max(1);
    let held = memo.affinity_holds.entry(n.id).or_default();
    if *held >= room {
        return false;
    }
    *held += 1;
    true
}

/// `30 s`, `1.5 s`.
fn secs(d: DurationMs) -> String {
    let ms = d.get();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_000_000);

    fn node(id: i64, name: &str, tags: &[(&str, &str)]) -> PoolNode {
        let properties = NodeProperties {
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: name.into(),
            cores: 4,
            memory_mb: 8000,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        PoolNode::new(
            NodeId(id),
            name.into(),
            properties,
            NodeState::Enabled,
            1,
            0,
            NOW,
        )
    }

    fn pool(nodes: &[PoolNode]) -> Pool {
        Pool::new(nodes.to_vec(), DurationMs(60_000))
    }

    fn job() -> ReadyJob<'static> {
        ReadyJob {
            name: "build",
            branch: Some("main"),
            requirements: None,
            prefer: &[],
            affinity: None,
            affinity_wait_ms: DEFAULT_AFFINITY_WAIT_MS,
            ready_for_ms: DurationMs(0),
            avoid_spot: false,
        }
    }

    fn taken(d: Decision) -> String {
        match d {
            Decision::Take(r) => r,
            other => panic!("expected take, got {other:?}"),
        }
    }

    fn held(d: Decision) -> String {
        match d {
            Decision::Hold { reason, .. } => reason,
            other => panic!("expected hold, got {other:?}"),
        }
    }

    #[test]
    fn a_node_that_does_not_match_cannot_take_the_job() {
        let slow = node(1, "slow", &[]);
        let req = Requirements {
            os: Some("plan9".into()),
            ..Default::default()
        };
        let j = ReadyJob {
            requirements: Some(&req),
            ..job()
        };
        let p = pool(std::slice::from_ref(&slow));
        assert!(matches!(decide(&j, &slow, &p, NOW), Decision::Unmet(r) if r.contains("plan9")));
        assert_eq!(
            p.unmet(&req, NOW).unwrap(),
            "no node matches: os=plan9 (slow has linux)"
        );
        let linux = Requirements {
            os: Some("linux".into()),
            ..Default::default()
        };
        assert_eq!(p.unmet(&linux, NOW), None);
        let gone = Pool::new(vec![node(1, "slow", &[])], DurationMs(10));
        assert!(
            gone.unmet(&linux, NOW.plus(DurationMs(1000)))
                .unwrap()
                .contains("no enabled node is alive")
        );
    }

    #[test]
    fn a_slower_node_leaves_the_job_to_a_free_faster_one_for_a_while() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10")]);
        let p = pool(&[slow.clone(), fast.clone()]);
        assert_eq!(taken(decide(&job(), &fast, &p, NOW)), "fastest matching");
        assert_eq!(
            held(decide(&job(), &slow, &p, NOW)),
            "waiting for faster node fast"
        );
        // The faster node never claimed: the slow one takes it rather than starve it.
        let late = ReadyJob {
            ready_for_ms: PREFERENCE_GRACE_MS,
            ..job()
        };
        assert_eq!(
            taken(decide(&late, &slow, &p, NOW)),
            "faster node fast did not take it within 3 s"
        );
        // Busy, disabled or lost faster nodes are not waited for.
        let mut busy = fast.clone();
        busy.running = 1;
        let p = pool(&[slow.clone(), busy]);
        assert_eq!(
            taken(decide(&job(), &slow, &p, NOW)),
            "fastest free matching node"
        );
        let mut off = fast.clone();
        off.state = NodeState::Disabled;
        assert_eq!(
            taken(decide(&job(), &slow, &pool(&[slow.clone(), off]), NOW)),
            "only matching node"
        );
        let mut sick = fast.clone();
        sick.health = Some("disk full".into());
        assert_eq!(
            taken(decide(&job(), &slow, &pool(&[slow.clone(), sick]), NOW)),
            "only matching node"
        );
        let mut lost = fast.clone();
        lost.last_seen = NOW.minus(DurationMs(61_000));
        assert_eq!(
            taken(decide(&job(), &slow, &pool(&[slow.clone(), lost]), NOW)),
            "only matching node"
        );
    }

    #[test]
    fn a_job_only_one_node_can_run_says_so() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10"), ("gpu", "yes")]);
        let req = Requirements {
            properties: [("gpu".to_string(), "yes".to_string())].into(),
            ..Default::default()
        };
        let j = ReadyJob {
            requirements: Some(&req),
            ..job()
        };
        let p = pool(&[slow, fast.clone()]);
        assert_eq!(taken(decide(&j, &fast, &p, NOW)), "only matching node");
    }

    #[test]
    fn a_faster_node_that_cannot_run_the_job_is_not_waited_for() {
        let slow = node(1, "slow", &[("speed", "1"), ("gpu", "yes")]);
        let fast = node(2, "fast", &[("speed", "10")]);
        let req = Requirements {
            properties: [("gpu".to_string(), "yes".to_string())].into(),
            ..Default::default()
        };
        let j = ReadyJob {
            requirements: Some(&req),
            ..job()
        };
        let p = pool(&[slow.clone(), fast.clone()]);
        assert_eq!(taken(decide(&j, &slow, &p, NOW)), "only matching node");
        assert!(matches!(decide(&j, &fast, &p, NOW), Decision::Unmet(_)));
    }

    #[test]
    fn affinity_holds_the_job_for_its_node_until_the_wait_expires() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10")]);
        let p = pool(&[slow.clone(), fast.clone()]);
        let j = ReadyJob {
            affinity: Some(NodeId(1)),
            ..job()
        };
        assert_eq!(
            taken(decide(&j, &slow, &p, NOW)),
            "affinity: last success of build on main"
        );
        assert_eq!(
            held(decide(&j, &fast, &p, NOW)),
            "waiting for slow (affinity)"
        );
        let mut busy = slow.clone();
        busy.running = 1;
        let p_busy = pool(&[busy, fast.clone()]);
        match decide(&j, &fast, &p_busy, NOW.plus(DurationMs(10))) {
            Decision::Hold {
                reason,
                retry_in_ms,
            } => {
                assert_eq!(reason, "waiting for slow (affinity, busy)");
                assert_eq!(retry_in_ms, DEFAULT_AFFINITY_WAIT_MS);
            }
            other => panic!("{other:?}"),
        }
        let expired = ReadyJob {
            ready_for_ms: DEFAULT_AFFINITY_WAIT_MS,
            ..j
        };
        assert_eq!(
            taken(decide(&expired, &fast, &p_busy, NOW)),
            "affinity wait expired after 30 s"
        );
        // A short window from lwr.yml.
        let short = ReadyJob {
            affinity_wait_ms: DurationMs(2000),
            ready_for_ms: DurationMs(2500),
            ..j
        };
        assert_eq!(
            taken(decide(&short, &fast, &p_busy, NOW)),
            "affinity wait expired after 2 s"
        );
    }

    #[test]
    fn a_node_is_waited_for_by_as_many_jobs_as_it_can_take_and_the_rest_go_elsewhere() {
        // The same job of many pushes, all last run on `a`: one claim's search by `b`.
        let j = ReadyJob {
            affinity: Some(NodeId(1)),
            ..job()
        };
        let decide_all = |a: &PoolNode, b: &PoolNode| {
            let p = pool(&[a.clone(), b.clone()]);
            let mut memo = Memo::default();
            (0..4)
                .map(|_| decide_with(&j, b, &p, NOW, &mut memo))
                .collect::<Vec<_>>()
        };
        let b = node(2, "b", &[]);
        // Busy with its one slot: the next job waits for it, the others are b's.
        let mut busy = node(1, "a", &[]);
        busy.running = 1;
        let d = decide_all(&busy, &b);
        assert_eq!(held(d[0].clone()), "waiting for a (affinity, busy)");
        for d in &d[1..] {
            assert_eq!(
                taken(d.clone()),
                "a, which last ran it, has as many jobs waiting as it can take"
            );
        }
        // Two free slots of three: two wait for it.
        let mut free = node(1, "a", &[]);
        free.slots = 3;
        free.running = 1;
        let d = decide_all(&free, &b);
        assert!(matches!(d[0], Decision::Hold { .. }) && matches!(d[1], Decision::Hold { .. }));
        assert!(matches!(d[2], Decision::Take(_)) && matches!(d[3], Decision::Take(_)));
        // A new snapshot of the pool between pages keeps the count.
        let p = pool(&[busy.clone(), b.clone()]);
        let mut memo = Memo::default();
        assert!(matches!(
            decide_with(&j, &b, &p, NOW, &mut memo),
            Decision::Hold { .. }
        ));
        memo.new_snapshot();
        assert!(matches!(
            decide_with(&j, &b, &p, NOW, &mut memo),
            Decision::Take(_)
        ));
    }

    #[test]
    fn affinity_to_a_node_that_is_gone_or_no_longer_matches_is_ignored() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10")]);
        let j = ReadyJob {
            affinity: Some(NodeId(1)),
            ..job()
        };
        let mut off = slow.clone();
        off.state = NodeState::Quarantined;
        let p = pool(&[off, fast.clone()]);
        assert_eq!(taken(decide(&j, &fast, &p, NOW)), "only matching node");
        let unknown = ReadyJob {
            affinity: Some(NodeId(99)),
            ..j
        };
        assert_eq!(
            taken(decide(
                &unknown,
                &fast,
                &pool(&[fast.clone(), slow.clone()]),
                NOW
            )),
            "fastest matching"
        );
        // Silent for longer than three heartbeats: most likely killed; not waited for,
        // although it does not count as lost yet.
        let mut silent = slow.clone();
        silent.last_seen = NOW.minus(AFFINITY_SILENCE_MS).minus(DurationMs(1));
        let p = pool(&[silent.clone(), fast.clone()]);
        assert!(p.alive(&silent, NOW));
        assert_eq!(taken(decide(&j, &fast, &p, NOW)), "fastest matching");
        silent.last_seen = NOW.minus(AFFINITY_SILENCE_MS);
        let p = pool(&[silent, fast.clone()]);
        assert!(matches!(decide(&j, &fast, &p, NOW), Decision::Hold { .. }));
    }

    #[test]
    fn prefer_order_decides_which_preference_wins() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10")]);
        let p = pool(&[slow.clone(), fast.clone()]);
        // fastest first: the affinity node (slow) does not get the job while fast is free.
        let j = ReadyJob {
            affinity: Some(NodeId(1)),
            prefer: &[Prefer::Fastest, Prefer::Affinity],
            ..job()
        };
        assert_eq!(taken(decide(&j, &fast, &p, NOW)), "fastest matching");
        assert_eq!(
            held(decide(&j, &slow, &p, NOW)),
            "waiting for faster node fast"
        );
    }

    #[test]
    fn reserved_prefers_non_spot_nodes() {
        let spot = node(1, "spot", &[("instance", "spot"), ("speed", "10")]);
        let reserved = node(2, "res", &[("instance", "reserved")]);
        let p = pool(&[spot.clone(), reserved.clone()]);
        let j = ReadyJob {
            prefer: &[Prefer::Reserved],
            ..job()
        };
        assert_eq!(taken(decide(&j, &reserved, &p, NOW)), "reserved node");
        assert_eq!(
            held(decide(&j, &spot, &p, NOW)),
            "waiting for non-spot node res"
        );
    }

    #[test]
    fn a_job_interrupted_on_a_spot_node_goes_to_a_non_spot_one() {
        let spot = node(1, "spot", &[("instance", "spot"), ("speed", "10")]);
        let reserved = node(2, "res", &[("instance", "reserved")]);
        let p = pool(&[spot.clone(), reserved.clone()]);
        let j = ReadyJob {
            avoid_spot: true,
            ready_for_ms: DurationMs(3_600_000),
            ..job()
        };
        assert_eq!(
            taken(decide(&j, &reserved, &p, NOW)),
            "reserved after spot interruption"
        );
        assert!(held(decide(&j, &spot, &p, NOW)).starts_with("reserved after spot interruption"));
        // With no non-spot node alive, a spot node runs it after all.
        let mut lost = reserved.clone();
        lost.last_seen = Millis(0);
        assert_eq!(
            taken(decide(&j, &spot, &pool(&[spot.clone(), lost]), NOW)),
            "only matching node"
        );
    }

    #[test]
    fn without_speeds_any_matching_node_takes_the_job() {
        let a = node(1, "a", &[]);
        let b = node(2, "b", &[]);
        assert_eq!(
            taken(decide(&job(), &a, &pool(&[a.clone(), b.clone()]), NOW)),
            "first free matching node"
        );
        assert_eq!(
            taken(decide(&job(), &a, &pool(std::slice::from_ref(&a)), NOW)),
            "only matching node"
        );
    }

    #[test]
    fn nodes_are_kept_fastest_first_and_updated_in_place() {
        let mut p = pool(&[node(1, "a", &[("speed", "1")]), node(2, "b", &[])]);
        p.upsert(node(3, "c", &[("speed", "5")]));
        let names: Vec<&str> = p.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        p.get_mut(NodeId(1)).unwrap().running = 1;
        assert!(!p.get(NodeId(1)).unwrap().has_free_slot());
        p.upsert(node(1, "a", &[("speed", "9")]));
        assert_eq!(p.nodes()[0].name, "a");
    }

    #[test]
    fn a_memo_shared_by_the_jobs_of_a_claim_gives_the_same_answers() {
        let slow = node(1, "slow", &[("speed", "1")]);
        let fast = node(2, "fast", &[("speed", "10"), ("gpu", "yes")]);
        let p = pool(&[slow.clone(), fast.clone()]);
        let gpu = Requirements {
            properties: [("gpu".to_string(), "yes".to_string())].into(),
            ..Default::default()
        };
        let linux = Requirements {
            os: Some("linux".into()),
            ..Default::default()
        };
        let jobs = [
            job(),
            ReadyJob {
                requirements: Some(&linux),
                ..job()
            },
            ReadyJob {
                requirements: Some(&gpu),
                ..job()
            },
            ReadyJob {
                ready_for_ms: PREFERENCE_GRACE_MS,
                ..job()
            },
            job(),
        ];
        for claimer in [&slow, &fast] {
            let mut memo = Memo::default();
            for j in &jobs {
                assert_eq!(
                    decide_with(j, claimer, &p, NOW, &mut memo),
                    decide(j, claimer, &p, NOW)
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Prefer::ALL {
            assert_eq!(Prefer::parse(p.as_str()), Some(p));
        }
        for s in NodeState::ALL {
            assert_eq!(NodeState::parse(s.as_str()), Some(s));
        }
    }
}
