//! The queue: claims, leases, results and what follows from them.
//!
//! Each public function is one transaction. Readiness of dependents, blocking after a failure
//! and retries after an infrastructure error are decided in the same transaction as the
//! result that causes them, so no crash can leave a graph half-updated.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lwr_model::api::{Assignment, JobSource, Outcome, ResultAck, RunResult};
use lwr_model::pool::{
    DEFAULT_AFFINITY_WAIT_MS, Decision, Memo, NodeState, PoolNode, ReadyJob, decide_with,
};
use lwr_model::{DurationMs, GraphId, JobId, JobSpec, Millis, NodeId, PushId, Requirements, RunId};
use sqlx::Any;

use crate::error::Op;
use crate::nodes::KnownNode;
use crate::pool::{Placement, count_end};
use crate::rows::{col, json, typed, typed_opt, u32_of};
use crate::{Dialect, Result, Store, StoreError};

/// Jobs looked at per step at most while searching for ones a node can run. The first
/// step is as many as the claimers can take (most nodes can run most jobs, so the first few
/// usually do) and each next one [`PAGE_GROWTH`] times the last, up to this: a job held
/// for another node (affinity) is passed over by reading a few more rows, not a full page.
const SCAN_PAGE: i64 = 256;

/// How much each page of the claim's search grows over the one before.
const PAGE_GROWTH: i64 = 4;

/// What a transaction changed, so the server knows whom to wake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// Jobs became ready, how many is not counted (a submission, a retry, a block ending
    /// at an all-finished job): wake every waiting claim.
    pub ready: bool,
    /// Jobs that became ready because their last need succeeded, counted, less those a
    /// claim of the same transaction took: wake this many waiting claims, one each, not
    /// all of them (each woken claim runs the search again, and only one can take a job).
    pub released: u32,
    /// Some job changed state: wake those watching graphs.
    pub changed: bool,
}

impl Effects {
    /// Jobs became ready (and so changed state): a submission, a push, a retrigger.
    pub const NEW_WORK: Effects = Effects {
        ready: true,
        released: 0,
        changed: true,
    };

    /// A job changed state, and `ready` says whether jobs became ready (uncounted).
    pub fn changed(ready: bool) -> Effects {
        Effects {
            ready,
            released: 0,
            changed: true,
        }
    }

    pub fn merge(&mut self, other: Effects) {
        self.ready |= other.ready;
        self.released = self.released.saturating_add(other.released);
        self.changed |= other.changed;
    }

    /// Whether waiting claims have anything new to look at.
    pub fn wakes_claims(&self) -> bool {
        self.ready || self.released > 0
    }
}

pub(crate) use crate::tx::Tx;

/// What a claim did: the jobs handed out, the answers to the results sent along, and whom
/// to wake.
#[derive(Debug, Default)]
pub struct Claimed {
    pub assignments: Vec<Assignment>,
    pub acks: Vec<ResultAck>,
    pub effects: Effects,
    /// The node left ready jobs to better nodes (see `lwr_model::pool`): it should look
    /// again after this long at the latest, when the first hold runs out.
    pub retry_in_ms: Option<DurationMs>,
    /// How long each job handed out had been ready (for the ready-to-claimed metric).
    pub waited: Vec<DurationMs>,
}

/// What recording a batch of results did.
struct Reported {
    acks: Vec<ResultAck>,
    effects: Effects,
    /// Jobs that became ready through these results (counted in `effects.released`).
    released: Vec<JobId>,
    /// Live runs of the node that ended.
    ended: usize,
    /// The node was quarantined by these results.
    quarantined: bool,
    /// Whether the node's count of infrastructure errors in a row is zero afterwards.
    clean: bool,
}

/// A ready job as the claim's search reads it.
struct Candidate {
    id: JobId,
    graph_id: GraphId,
    name: String,
    requirements: Option<Requirements>,
    placement: Placement,
    avoid_spot: bool,
    ready_since: Millis,
    branch: Option<String>,
    affinity: Option<NodeId>,
    /// Whether it has needs, whose manifests its assignment carries (on PostgreSQL: may
    /// have; the take reads the manifests of every job it takes, none for a job without).
    has_needs: bool,
}

impl Store {
    /// Records `results` the node sends along, then hands it up to `max` ready jobs it can
    /// run, each as a new run with a lease until `now + lease`; one transaction. A job is
    /// handed to one node only: SQLite has a single writer, and PostgreSQL locks the rows it
    /// takes (`FOR UPDATE SKIP LOCKED`).
    ///
    /// Claims whose results are all plain successes go through the store's combiner
    /// ([`crate::combine`]): those that arrive while another transaction runs share the next
    /// one, each still answered as if it had been alone.
    pub async fn claim(
        &self,
        node_id: NodeId,
        max: u32,
        results: &[RunResult],
        now: Millis,
        lease: DurationMs,
    ) -> Result<Claimed> {
        if combinable(results) {
            let request = crate::combine::Request {
                node_id,
                max,
                results: results.to_vec(),
                now,
                lease,
            };
            if let Some(answered) = self.combiner.submit(self, request) {
                return crate::combine::answer(answered).await;
            }
        }
        self.claim_alone(node_id, max, results, now, lease).await
    }

    /// [`Store::claim`] in a transaction of its own.
    pub(crate) async fn claim_alone(
        &self,
        node_id: NodeId,
        max: u32,
        results: &[RunResult],
        now: Millis,
        lease: DurationMs,
    ) -> Result<Claimed> {
        let node = self.node_properties(node_id).await?;
        self.refresh_pool().await?;
        let mut tx = self.begin_claim(false).await.op("starting claim")?;
        let reported = self.report_in(&mut tx, node_id, results, now).await?;
        let mut effects = reported.effects;
        let (assignments, retry_in_ms, waited) = if reported.quarantined {
            (Vec::new(), None, Vec::new())
        } else {
            let mut claimers = [self.claimer(node_id, node, max, lease, now)];
            self.take_for(&mut tx, &mut claimers, now, None).await?;
            let [claimer] = claimers;
            (claimer.assignments, claimer.retry_in, claimer.waited)
        };
        effects.changed |= !assignments.is_empty();
        // Jobs this claim released and took itself need nobody woken for them.
        let took = assignments
            .iter()
            .filter(|a| reported.released.contains(&a.job_id))
            .count();
        effects.released = effects.released.saturating_sub(took as u32);
        self.commit_notifying(tx, effects, "committing claim")
            .await?;
        self.pool.set_erring(node_id, !reported.clean);
        self.note_claim(node_id, assignments.len(), reported.ended, now);
        if reported.quarantined {
            self.pool_stale();
        }
        Ok(Claimed {
            assignments,
            acks: reported.acks,
            effects,
            retry_in_ms,
            waited,
        })
    }

    /// One node's share of a claim transaction, before the search.
    pub(crate) fn claimer(
        &self,
        node_id: NodeId,
        node: Arc<KnownNode>,
        max: u32,
        lease: DurationMs,
        now: Millis,
    ) -> Claimer {
        let pool_node = if max == 0 {
            None
        } else {
            let pool_node = self
                .pool
                .with(|p| p.get(node_id).cloned())
                .unwrap_or_else(|| {
                    // Registered through another server since the snapshot was read.
                    PoolNode::new(
                        node_id,
                        node.name.clone(),
                        node.properties.clone(),
                        NodeState::Enabled,
                        1,
                        0,
                        now,
                    )
                });
            (pool_node.state == NodeState::Enabled && pool_node.health.is_none())
                .then_some(pool_node)
        };
        Claimer {
            node_id,
            node,
            max,
            lease,
            pool_node,
            picked: Vec::new(),
            waited: Vec::new(),
            retry_in: None,
            assignments: Vec::new(),
        }
    }

    /// Records a node's `results` in `tx` ([`report_in`]), with the pool's quarantine
    /// setting and what this server knows of the node's errors in a row.
    async fn report_in(
        &self,
        tx: &mut Tx,
        node_id: NodeId,
        results: &[RunResult],
        now: Millis,
    ) -> Result<Reported> {
        let quarantine_after = self.pool_config().quarantine_after;
        let clean = !self.pool.erring(node_id);
        report_in(
            tx,
            self.dialect,
            node_id,
            results,
            now,
            quarantine_after,
            clean,
        )
        .await
    }

    /// A claim's transaction on the writer, which a waiting claim gets before a graph's
    /// submission (see `WriterTurns`). With `along` (SQLite) its BEGIN goes with its first
    /// statement.
    pub(crate) async fn begin_claim(&self, along: bool) -> sqlx::Result<Tx> {
        let _waiting = self.turns.claim();
        match self.dialect {
            // No hand-off per statement (`direct`): only the combined claim's path, whose
            // statements all go through `Tx::rows` and `Tx::fetch_optional`.
            Dialect::Sqlite if along => Tx::begin_along(&self.write, true).await,
            _ => Tx::begin(&self.write).await,
        }
    }

    /// The claim's search and take for every claimer of one transaction: reads ready jobs
    /// page by page, offers each to the claimers in turn (the first that takes it gets it),
    /// marks the jobs taken running and gives each a run, and fills each claimer's
    /// assignments. A job goes to one claimer only.
    ///
    /// `first_page`: the search's first page when it was read already (with the results,
    /// see [`succeed_runs`]), for [`first_page`] rows.
    ///
    /// On SQLite the last take carries the transaction's COMMIT ([`Tx::commit_along`]): one
    /// round trip less for every claim that takes a job. The take then checks in SQL that
    /// it marked every job it decided on, so that a claim that would hand out less than it
    /// decided stops before its COMMIT and rolls back, as it does when the check after the
    /// take fails. Nothing may write in `tx` afterwards.
    pub(crate) async fn take_for(
        &self,
        tx: &mut Tx,
        claimers: &mut [Claimer],
        now: Millis,
        mut first_page: Option<Vec<sqlx::any::AnyRow>>,
    ) -> Result<()> {
        let open = |c: &Claimer| c.pool_node.is_some() && c.picked.len() < c.max as usize;
        let wanted: u32 = claimers
            .iter()
            .filter(|c| c.pool_node.is_some())
            .map(|c| c.max)
            .sum();
        if wanted == 0 {
            return Ok(());
        }
        let select = claim_select(self.dialect);
        let mut after = JobId(0);
        let mut page = first_page_len(claimers);
        let mut seen = 0usize;
        // One per claimer, for the whole search: what its earlier jobs decided.
        let mut memos: Vec<Memo> = claimers.iter().map(|_| Memo::default()).collect();
        // Jobs of one graph share its origin, kept in memory once read: those in memory are
        // held from the moment their job is picked, so that nothing is read after a take
        // that carried the COMMIT; the jobs of the others read them along.
        let mut origins: HashMap<GraphId, Arc<GraphOrigin>> = HashMap::new();
        let mut uncached: HashSet<JobId> = HashSet::new();
        // The jobs taken that have needs.
        let mut with_needs: HashSet<JobId> = HashSet::new();
        loop {
            let rows = match first_page.take() {
                Some(rows) => rows,
                None => search_page(tx, select, after, page).await?,
            };
            let page_len = rows.len();
            seen += page_len;
            let mut candidates = Vec::with_capacity(page_len);
            for row in rows {
                let candidate = candidate(&row)?;
                after = candidate.id;
                candidates.push(candidate);
            }
            let full = self.pool.with(|pool| {
                // The snapshot stays the same while it is locked here, and another claim may
                // refresh it between pages.
                memos.iter_mut().for_each(Memo::new_snapshot);
                for c in &candidates {
                    let job = ReadyJob {
                        name: &c.name,
                        branch: c.branch.as_deref(),
                        requirements: c.requirements.as_ref(),
                        prefer: &c.placement.prefer,
                        affinity: c.affinity,
                        affinity_wait_ms: c
                            .placement
                            .affinity_wait_secs
                            .map_or(DEFAULT_AFFINITY_WAIT_MS, |s| {
                                DurationMs::from_secs(s as i64)
                            }),
                        ready_for_ms: now.since(c.ready_since),
                        avoid_spot: c.avoid_spot,
                    };
                    for (claimer, memo) in claimers.iter_mut().zip(memos.iter_mut()) {
                        if !open(claimer) {
                            continue;
                        }
                        let Some(node) = &claimer.pool_node else {
                            continue;
                        };
                        match decide_with(&job, node, pool, now, memo) {
                            Decision::Take(reason) => {
                                claimer.picked.push((c.id, reason));
                                if let Entry::Vacant(held) = origins.entry(c.graph_id) {
                                    match self.origins.get(c.graph_id) {
                                        Some(origin) => {
                                            held.insert(origin);
                                        }
                                        None => {
                                            uncached.insert(c.id);
                                        }
                                    }
                                }
                                if c.has_needs {
                                    with_needs.insert(c.id);
                                }
                                claimer.waited.push(now.since(c.ready_since));
                                break;
                            }
                            Decision::Hold { retry_in_ms, .. } => {
                                claimer.retry_in = Some(
                                    claimer.retry_in.map_or(retry_in_ms, |r| r.min(retry_in_ms)),
                                );
                            }
                            Decision::Unmet(_) => {}
                        }
                    }
                    if !claimers.iter().any(open) {
                        return true;
                    }
                }
                false
            });
            if full || page_len < page as usize {
                break;
            }
            page = (page * PAGE_GROWTH).min(SCAN_PAGE);
        }
        let empty = |c: &Claimer| c.pool_node.is_some() && c.picked.is_empty();
        if self.dialect == Dialect::Postgres && claimers.iter().any(empty) {
            // SKIP LOCKED passed over rows another claim had locked, and that claim may be
            // holding them for this very node (affinity): nobody would wake us for them.
            // Look again shortly when there are more ready rows than we saw.
            // Counted only as far as it matters: one more than we saw.
            let ready: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM jobs \
                 WHERE state = 'pending' AND unmet = 0 LIMIT $1) ready",
            )
            .bind(seen as i64 + 1)
            .fetch_one(&mut **tx)
            .await
            .op("counting ready jobs")
            .and_then(|row| col(&row, "n"))?;
            if ready > seen as i64 {
                for c in claimers.iter_mut().filter(|c| empty(c)) {
                    c.retry_in = Some(
                        c.retry_in
                            .map_or(SKIPPED_RETRY_MS, |r| r.min(SKIPPED_RETRY_MS)),
                    );
                }
            }
        }
        let picked: Vec<Pick> = claimers
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.picked.iter().map(move |(job, reason)| Pick {
                    job: *job,
                    reason: reason.clone(),
                    claimer: i,
                })
            })
            .collect();
        let chunks = picked.len().div_ceil(CLAIM_BATCH);
        let commit = self.dialect == Dialect::Sqlite;
        for (c, chunk) in picked.chunks(CLAIM_BATCH).enumerate() {
            let needs = chunk.iter().any(|p| with_needs.contains(&p.job));
            let read = Reads {
                origins: chunk.iter().any(|p| uncached.contains(&p.job)),
                needs,
                commit: commit && c + 1 == chunks,
            };
            let (taken, read) = take_jobs(tx, self.dialect, chunk, claimers, now, read).await?;
            for (graph_id, origin) in read {
                let origin = Arc::new(origin);
                self.origins.put(graph_id, origin.clone());
                origins.insert(graph_id, origin);
            }
            for TakenJob {
                job_id,
                run_id,
                number,
                graph_id,
                spec,
                manifests,
                claimer,
            } in taken
            {
                let origin = match origins.get(&graph_id) {
                    Some(origin) => origin,
                    // PostgreSQL, where origins are not read along.
                    None => {
                        let origin = match self.origins.get(graph_id) {
                            Some(origin) => origin,
                            None => {
                                let origin = Arc::new(GraphOrigin::read(tx, graph_id).await?);
                                self.origins.put(graph_id, origin.clone());
                                origin
                            }
                        };
                        origins.entry(graph_id).or_insert(origin)
                    }
                };
                let kept_dir = spec.keep_workdir.then(|| kept_dir(origin, &spec.name));
                let source = origin.source(&spec.checkout);
                let claimer = &mut claimers[claimer];
                claimer.assignments.push(Assignment {
                    run_id,
                    run_number: u32_of(number),
                    job_id,
                    job_name: spec.name,
                    graph_id,
                    command: spec.run,
                    env: spec.env,
                    timeout_secs: spec.timeout_secs,
                    lease_secs: (claimer.lease.get() / 1000).max(1) as u64,
                    artifacts: spec.artifacts,
                    // Dependents learn where their needs' manifests are, never guessing a URL.
                    manifests,
                    kept_dir,
                    // The server adds it when it checks tokens.
                    token: None,
                    timestamps: spec.timestamps,
                    source,
                    buildbot: spec.buildbot,
                    // The server adds its limit.
                    max_log_bytes: None,
                });
            }
        }
        for c in claimers.iter_mut() {
            // Holds matter only when the node got nothing: otherwise it claims again soon.
            if !c.assignments.is_empty() {
                c.retry_in = None;
            }
        }
        Ok(())
    }

    /// Renews the leases of the runs a node still holds. Returns the runs in `runs` that are
    /// no longer the node's (expired, cancelled, unknown): the node must drop them.
    pub async fn heartbeat(
        &self,
        node_id: NodeId,
        runs: &[RunId],
        now: Millis,
        lease: DurationMs,
    ) -> Result<Vec<RunId>> {
        self.heartbeat_health(node_id, runs, now, lease, None).await
    }

    /// [`Store::heartbeat`] that also records the node's health: `unhealthy` says why its
    /// health check fails, `None` that it passes (or the node has none).
    pub async fn heartbeat_health(
        &self,
        node_id: NodeId,
        runs: &[RunId],
        now: Millis,
        lease: DurationMs,
        unhealthy: Option<&str>,
    ) -> Result<Vec<RunId>> {
        let mut tx = Tx::begin(&self.write).await.op("starting heartbeat")?;
        let known = sqlx::query("UPDATE nodes SET last_seen = $1, health = $3 WHERE id = $2")
            .bind(now.get())
            .bind(node_id.get())
            .bind(unhealthy.map(str::to_string))
            .execute(&mut *tx)
            .await
            .op("touching node")?
            .rows_affected();
        if known == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                id: node_id.to_string(),
            });
        }
        let mut abandon = Vec::new();
        for &run_id in runs {
            let renewed = sqlx::query(
                "UPDATE runs SET lease_expires = $1 \
                 WHERE id = $2 AND node_id = $3 AND state = 'running'",
            )
            .bind(now.plus(lease).get())
            .bind(run_id.get())
            .bind(node_id.get())
            .execute(&mut *tx)
            .await
            .op("renewing lease")?
            .rows_affected();
            if renewed == 0 {
                abandon.push(run_id);
            }
        }
        tx.commit().await.op("committing heartbeat")?;
        self.note_seen(node_id, now, unhealthy);
        Ok(abandon)
    }

    /// Records the results a node reports. Reporting the same result twice is harmless (the
    /// node retries until it hears back), and a result for a run the node no longer holds is
    /// refused so that each run's result is recorded exactly once.
    pub async fn report(
        &self,
        node_id: NodeId,
        results: &[RunResult],
        now: Millis,
    ) -> Result<(Vec<ResultAck>, Effects)> {
        let mut tx = Tx::begin(&self.write).await.op("starting report")?;
        let reported = self.report_in(&mut tx, node_id, results, now).await?;
        self.commit_notifying(tx, reported.effects, "committing report")
            .await?;
        self.pool.set_erring(node_id, !reported.clean);
        self.note_claim(node_id, 0, reported.ended, now);
        if reported.quarantined {
            self.pool_stale();
        }
        Ok((reported.acks, reported.effects))
    }

    /// Ends every run whose lease ran out before `now` as `exception` (claim-expired) and
    /// puts its job back in the queue while it has retries left.
    pub async fn expire_leases(&self, now: Millis) -> Result<Effects> {
        let mut tx = Tx::begin(&self.write).await.op("starting lease expiry")?;
        let quarantine_after = self.pool_config().quarantine_after;
        let expired = sqlx::query(
            "SELECT id, job_id, node_id, started_at FROM runs \
             WHERE state = 'running' AND lease_expires < $1",
        )
        .bind(now.get())
        .fetch_all(&mut *tx)
        .await
        .op("finding expired leases")?;
        let mut effects = Effects::default();
        let mut erring = Vec::new();
        for row in expired {
            let run_id: RunId = typed(&row, "id")?;
            let job_id: JobId = typed(&row, "job_id")?;
            let node_id: NodeId = typed(&row, "node_id")?;
            let started_at: Millis = typed(&row, "started_at")?;
            // Another server's sweeper (or the node's report) may have ended it meanwhile.
            let expired = sqlx::query(
                "UPDATE runs SET state = 'exception', reason = 'claim-expired', \
                 finished_at = $2, lease_expires = NULL WHERE id = $1 AND state = 'running'",
            )
            .bind(run_id.get())
            .bind(now.get())
            .execute(&mut *tx)
            .await
            .op("expiring run")?
            .rows_affected();
            if expired == 0 {
                continue;
            }
            let (_, spot) = count_end(&mut tx, node_id, started_at, true, quarantine_after).await?;
            erring.push(node_id);
            effects.merge(retry_or_end(&mut tx, job_id, "claim-expired", spot, now).await?);
        }
        self.commit_notifying(tx, effects, "committing lease expiry")
            .await?;
        for node in erring {
            self.pool.set_erring(node, true);
        }
        if effects.changed {
            self.pool_stale();
        }
        Ok(effects)
    }

    /// Gives every live lease at least `lease` from `now`. Called when a server starts:
    /// nodes could not renew while it was down, and that is not their fault.
    pub async fn extend_leases(&self, now: Millis, lease: DurationMs) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE runs SET lease_expires = $1 WHERE state = 'running' AND lease_expires < $1",
        )
        .bind(now.plus(lease).get())
        .execute(&mut *self.writer().await?)
        .await
        .op("extending leases")?
        .rows_affected();
        Ok(n)
    }

    /// Records the size and hash of a run's stored log.
    pub async fn set_log_size(&self, run_id: RunId, size: u64, sha256: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET log_size = $2, log_sha256 = $3 WHERE id = $1")
            .bind(run_id.get())
            .bind(size as i64)
            .bind(sha256.to_string())
            .execute(&mut *self.writer().await?)
            .await
            .op("recording log size")?;
        Ok(())
    }

    /// The node that holds a run and whether the run is still live: `(node_id, running)`.
    pub async fn run_owner(&self, run_id: RunId) -> Result<Option<(NodeId, bool)>> {
        let row = sqlx::query("SELECT node_id, state FROM runs WHERE id = $1")
            .bind(run_id.get())
            .fetch_optional(&self.node)
            .await
            .op("reading run")?;
        row.map(|r| {
            Ok((
                typed(&r, "node_id")?,
                col::<String>(&r, "state")? == "running",
            ))
        })
        .transpose()
    }

    /// The revision of the graph a run's job belongs to; `None` for no such run or a graph
    /// without one.
    pub async fn run_revision(&self, run_id: RunId) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT g.revision FROM runs r JOIN jobs j ON j.id = r.job_id \
             JOIN graphs g ON g.id = j.graph_id WHERE r.id = $1",
        )
        .bind(run_id.get())
        .fetch_optional(&self.node)
        .await
        .op("reading the run's revision")?;
        Ok(row
            .map(|r| col::<Option<String>>(&r, "revision"))
            .transpose()?
            .flatten())
    }
}

/// Jobs marked running and given a run per statement of a claim: each statement is a
/// round trip to the database (on SQLite, to its connection's thread), and a claim's cost
/// is mostly those round trips, so a node taking several jobs pays for one round trip, not
/// one per job. Bounded to keep each statement's parameters few.
const CLAIM_BATCH: usize = 64;

/// A job a claim took: its new run, and what the assignment is made of.
struct TakenJob {
    job_id: JobId,
    run_id: RunId,
    number: i64,
    graph_id: GraphId,
    spec: JobSpec,
    /// Where its needs' manifests are, by need name (empty for a job without needs).
    manifests: BTreeMap<String, String>,
    /// Index of the claimer that took it.
    claimer: usize,
}

impl Claimer {
    /// Whether the node takes jobs in this claim at all.
    pub(crate) fn takes(&self) -> bool {
        self.pool_node.is_some() && self.max > 0
    }
}

/// A job the search decided a claimer takes, and why (recorded with the run).
struct Pick {
    job: JobId,
    reason: String,
    claimer: usize,
}

/// One node's share of a claim transaction: what it asked for, then what it got.
pub(crate) struct Claimer {
    pub(crate) node_id: NodeId,
    node: Arc<KnownNode>,
    max: u32,
    lease: DurationMs,
    /// The node as the pool snapshot has it; `None` when it takes nothing (it asked for
    /// none, or it is not enabled or not healthy).
    pool_node: Option<PoolNode>,
    picked: Vec<(JobId, String)>,
    /// How long each job picked had been ready.
    pub(crate) waited: Vec<DurationMs>,
    /// When to look again at jobs held for better nodes, if the node got nothing.
    pub(crate) retry_in: Option<DurationMs>,
    pub(crate) assignments: Vec<Assignment>,
}

/// `$first, $first+1, ...`: `n` numbered placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Marks the `picked` jobs (all pending: the claim's search just read them in this
/// transaction, locked on PostgreSQL) running on their claimers' nodes, creates a run with
/// a lease for each and, with `read.needs`, reads their needs' manifests; returns them in
/// `picked`'s order. One round trip: on SQLite the statements go together to the
/// connection's thread, and with `read.origins` (a job's graph origin is not in memory)
/// one more reads the jobs' graphs' origins, which the claim would read next; those are
/// returned too (none on PostgreSQL). On PostgreSQL they are one statement.
/// With `read.commit` (SQLite) the transaction's COMMIT goes last, after an SQL check that
/// the update marked every job picked (see [`Store::take_for`]).
async fn take_jobs(
    tx: &mut Tx,
    dialect: Dialect,
    picked: &[Pick],
    claimers: &[Claimer],
    now: Millis,
    read: Reads,
) -> Result<(Vec<TakenJob>, Vec<(GraphId, GraphOrigin)>)> {
    let Some(first) = picked.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let n = picked.len();
    // $1 the time; $2 the node's name when one node takes them all; then the jobs' ids;
    // with several nodes (a combined claim), each job's node name by its id, the ids' own
    // placeholders reused in the CASE.
    let one = picked.iter().all(|p| p.claimer == first.claimer);
    let ids_from = if one { 3 } else { 2 };
    let names_from = ids_from + n;
    let node = if one {
        "$2".to_string()
    } else {
        let whens: String = (0..n)
            .map(|i| format!(" WHEN ${} THEN ${}", ids_from + i, names_from + i))
            .collect();
        format!("CASE id{whens} END")
    };
    let update = format!(
        "UPDATE jobs SET state = 'running', runs = runs + 1, node = {node}, reason = NULL, \
         updated_at = $1 WHERE state = 'pending' AND id IN ({}) \
         RETURNING id, runs, graph_id, spec",
        placeholders(ids_from, n)
    );
    // Then four per run: uid, node id, lease end, placement. A run's number is its job's
    // count of runs as the update left it.
    let runs_from = if one { names_from } else { names_from + n };
    let together = dialect == Dialect::Sqlite;
    let bind_shared = |mut q: AnyQuery| {
        q = q.bind(now.get());
        if one {
            q = q.bind(claimers[first.claimer].node.name.clone());
        }
        for p in picked {
            q = q.bind(p.job.get());
        }
        if !one {
            for p in picked {
                q = q.bind(claimers[p.claimer].node.name.clone());
            }
        }
        q
    };
    let bind_runs = |mut q: AnyQuery| {
        for p in picked {
            let claimer = &claimers[p.claimer];
            q = q
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(claimer.node_id.get())
                .bind(now.plus(claimer.lease).get())
                .bind(p.reason.clone());
        }
        q
    };
    let mut origins = Vec::new();
    // The needs' manifests of the jobs taken, by the picked jobs' ids (a job without needs
    // has no rows; one picked but not marked rolls the claim back below).
    let needs = read.needs.then(|| {
        format!(
            "{NEEDS_MANIFESTS_SELECT} WHERE jn.job_id IN ({})",
            placeholders(ids_from, n)
        )
    });
    let (marked_rows, run_rows, manifest_rows) = if together {
        // The insert goes with the update: a run's number is NULL, which runs.number
        // refuses, unless the update just marked every job (the statements after it, the
        // COMMIT too, then do not run).
        let rows = (0..n)
            .map(|i| {
                let (job, p) = (ids_from + i, runs_from + i * 4);
                let number = format!(
                    "CASE WHEN changes() = {n} THEN (SELECT runs FROM jobs WHERE id = ${job}) END"
                );
                format!(
                    "(${job}, {number}, ${}, ${p}, 'running', $1, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO runs (job_id, number, node_id, uid, state, started_at, lease_expires, \
             placement) VALUES {rows} RETURNING id, job_id"
        );
        // One round trip: the take, then as needed the needs' manifests of the jobs taken
        // (a job without needs has no rows) and the origins not in memory yet.
        let mut all = format!("{update}; {insert}");
        if let Some(needs) = &needs {
            all.push_str(&format!("; {needs}"));
        }
        if read.origins {
            all.push_str(&format!(
                "; {ORIGIN_SELECT} WHERE g.id IN (SELECT graph_id FROM jobs WHERE id IN ({}))",
                placeholders(ids_from, n)
            ));
        }
        if read.commit {
            all.push_str(tx.commit_along());
        }
        let query = bind_runs(bind_shared(sqlx::query(sqlx::AssertSqlSafe(all))));
        let mut each = tx.rows(query).await.op("taking jobs")?;
        if read.commit {
            // The COMMIT's (no rows). It ran: an error found in the rows now comes after it.
            each.pop();
            tx.commit_ran();
        }
        if read.origins {
            for row in each.pop().unwrap_or_default() {
                origins.push((typed(&row, "id")?, GraphOrigin::of_row(&row)?));
            }
        }
        let manifests = match read.needs {
            true => each.pop().unwrap_or_default(),
            false => Vec::new(),
        };
        let runs = each.pop().unwrap_or_default();
        (each.pop().unwrap_or_default(), runs, manifests)
    } else {
        // One statement, one round trip: the jobs are marked, and each gets its run, numbered
        // by its count of runs as the update left it (a remote database costs a round trip
        // more per statement; see `succeed_runs`). A job the update did not mark gets no
        // run, and the check below rolls the claim back.
        let values = (0..n)
            .map(|i| {
                let (job, p) = (ids_from + i, runs_from + i * 4);
                format!(
                    "(CAST(${job} AS BIGINT), CAST(${p} AS TEXT), CAST(${} AS BIGINT), \
                     CAST(${} AS BIGINT), CAST(${} AS TEXT))",
                    p + 1,
                    p + 2,
                    p + 3
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // And as needed the needs' manifests (their rows: a need's run as `id`, the
        // dependent as `job_id`, the need's `name`), by the picked ids as the separate read
        // had them: `IN (SELECT id FROM marked)` would leave the plan to the estimate of
        // `marked`, and a generic plan made while `job_needs` was small could scan every
        // edge (see `claim_select!`).
        let (needs, needs_rows) = match &needs {
            Some(needs) => (
                format!(", needs AS ({needs})"),
                " UNION ALL SELECT 'need', id, 0, 0, NULL, job_id, name FROM needs",
            ),
            None => (String::new(), ""),
        };
        let text = format!(
            "WITH marked AS ({update}), made AS (INSERT INTO runs (job_id, number, node_id, uid, \
             state, started_at, lease_expires, placement) SELECT v.job_id, m.runs, v.node_id, \
             v.uid, 'running', $1, v.lease, v.placement FROM (VALUES {values}) \
             AS v (job_id, uid, node_id, lease, placement) JOIN marked m ON m.id = v.job_id \
             RETURNING id, job_id){needs} \
             SELECT 'marked' AS kind, id, runs, graph_id, spec, 0 AS job_id, NULL AS name \
             FROM marked UNION ALL SELECT 'run', id, 0, 0, NULL, job_id, NULL FROM made\
             {needs_rows}"
        );
        let rows = bind_runs(bind_shared(sqlx::query(sqlx::AssertSqlSafe(text))))
            .fetch_all(&mut **tx)
            .await
            .op("taking jobs")?;
        let (mut marked, mut runs, mut manifests) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            match col::<String>(&row, "kind")?.as_str() {
                "marked" => marked.push(row),
                "run" => runs.push(row),
                _ => manifests.push(row),
            }
        }
        (marked, runs, manifests)
    };
    let mut marked: HashMap<JobId, (i64, GraphId, JobSpec)> = HashMap::new();
    for row in marked_rows {
        let spec: JobSpec = json(&col::<String>(&row, "spec")?, "job spec")?;
        marked.insert(
            typed(&row, "id")?,
            (col(&row, "runs")?, typed(&row, "graph_id")?, spec),
        );
    }
    if let Some(missing) = picked.iter().find(|p| !marked.contains_key(&p.job)) {
        // Cannot happen while the search's rows are this transaction's to take; if it does,
        // the whole claim rolls back rather than hand out less than it decided (with the
        // COMMIT along, the take's own check stopped it before the COMMIT).
        return Err(StoreError::Conflict(format!(
            "job {} was no longer pending when claimed",
            missing.job
        )));
    }
    let mut manifests: HashMap<JobId, BTreeMap<String, String>> = HashMap::new();
    for row in manifest_rows {
        // A need that succeeded has a run; none would leave its manifest out, as a join did.
        let Some(run) = typed_opt::<RunId>(&row, "id")? else {
            continue;
        };
        manifests
            .entry(typed(&row, "job_id")?)
            .or_default()
            .insert(col(&row, "name")?, format!("/v1/runs/{run}/manifest"));
    }
    // RETURNING's order is not the VALUES' order on every database: matched by job.
    let mut runs: HashMap<JobId, RunId> = HashMap::new();
    for row in run_rows {
        runs.insert(typed(&row, "job_id")?, typed(&row, "id")?);
    }
    let taken = picked
        .iter()
        .map(|p| {
            let job_id = p.job;
            let (number, graph_id, spec) = marked.remove(&job_id).ok_or_else(|| {
                StoreError::Conflict(format!("job {job_id} was claimed twice in one claim"))
            })?;
            let run_id = *runs.get(&job_id).ok_or_else(|| {
                StoreError::Conflict(format!("no run was created for job {job_id}"))
            })?;
            Ok(TakenJob {
                job_id,
                run_id,
                number,
                graph_id,
                manifests: manifests.remove(&job_id).unwrap_or_default(),
                spec,
                claimer: p.claimer,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((taken, origins))
}

/// What a take reads besides the jobs it marks and the runs it creates.
#[derive(Clone, Copy)]
struct Reads {
    /// The origins of the jobs' graphs (some are not in memory).
    origins: bool,
    /// The needs' manifests (some of the jobs have needs).
    needs: bool,
    /// The transaction's COMMIT goes along (SQLite; see [`Store::take_for`]).
    commit: bool,
}

/// A query of the `Any` driver with its arguments.
pub(crate) type AnyQuery = sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>;

/// Rows of the claim's first page for these claimers: as many as they can take (most nodes
/// can run most jobs and most jobs are not held, and every row read costs its graph and
/// affinity lookups), at most [`SCAN_PAGE`].
pub(crate) fn first_page_len(claimers: &[Claimer]) -> i64 {
    let wanted: u32 = claimers
        .iter()
        .filter(|c| c.pool_node.is_some())
        .map(|c| c.max)
        .sum();
    i64::from(wanted).clamp(1, SCAN_PAGE)
}

/// How soon a claim that passed over rows locked by another claim looks again.
const SKIPPED_RETRY_MS: DurationMs = DurationMs(25);

// One text for both dialects; PostgreSQL adds the row locks. `LIMIT $2 + 0`, not `LIMIT $2`:
// SQLite (3.46 and later) plans a bare bound LIMIT as a constant and so prepares the
// statement again after every new binding; this statement runs on every claim, and its
// preparation was 8% of the server's time.
//
// `has_needs` tells the take whether to read the needs' manifests (SQLite: one probe of
// `job_needs` by key). PostgreSQL says 1 and the take reads them for every job it takes
// (none for a job without needs), in its one statement: there the probe's generic plan,
// made while `job_needs` was small, scanned every edge for each row (13 ms a search once a
// graph of 10,000 edges was stored).
macro_rules! claim_select {
    ($lead:literal, sqlite) => {
        claim_select!(
            @ $lead,
            "CASE WHEN EXISTS (SELECT 1 FROM job_needs jn WHERE jn.job_id = j.id) THEN 1 ELSE 0 END",
            ""
        )
    };
    (postgres) => {
        claim_select!(@ "", "1", " FOR UPDATE OF j SKIP LOCKED")
    };
    (@ $lead:literal, $has_needs:literal, $lock:literal) => {
        concat!(
            $lead,
            "SELECT j.id, j.graph_id, j.name, j.requirements, j.placement, j.avoid_spot, j.updated_at, ",
            "(SELECT g.branch FROM graphs g WHERE g.id = j.graph_id) AS branch, ",
            "(SELECT n.id FROM graphs g JOIN job_affinity a ON a.repository = g.repository ",
            "AND a.branch = g.branch AND a.name = j.name JOIN nodes n ON n.name = a.node ",
            "WHERE g.id = j.graph_id) AS affinity, ",
            $has_needs,
            " AS has_needs ",
            "FROM jobs j WHERE j.state = 'pending' AND j.unmet = 0 ",
            "AND j.id > $1 AND j.graph_id NOT IN ",
            "(SELECT s.id FROM graphs s WHERE s.staging <> 0) ORDER BY j.id LIMIT $2 + 0",
            $lock
        )
    };
}

/// The claim's search for ready jobs, after job `$1`, at most `$2`: the partial index
/// `jobs_ready` holds exactly these rows, so the search never reads finished jobs. On
/// PostgreSQL the rows are locked and rows another claim holds are skipped, so two servers
/// never hand out the same job and never wait for each other. Requirements are matched on
/// the rows read, in Rust: nothing a graph says is pasted into SQL.
///
/// For the pool's policy each row also carries the branch of its graph and the node that
/// last ran the job successfully there (affinity): the node of the newest succeeded job of
/// the same name in a graph of the same repository and branch, one row of `job_affinity`
/// (kept by triggers) read by key, only for the rows read.
fn claim_select(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => claim_select!("", sqlite),
        Dialect::Postgres => claim_select!(postgres),
    }
}

/// The claim's search as a SQLite transaction's first statement (see [`Tx::lead`]).
const LED_CLAIM_SELECT: &str = claim_select!("BEGIN; ", sqlite);

/// One page of the claim's search (`select`, after job `after`, at most `page` rows). A
/// combined claim's transaction on SQLite begins with it (see [`Tx::lead`]).
async fn search_page(
    tx: &mut Tx,
    select: &'static str,
    after: JobId,
    page: i64,
) -> Result<Vec<sqlx::any::AnyRow>> {
    let text = if tx.lead().is_empty() {
        select
    } else {
        LED_CLAIM_SELECT
    };
    let query = sqlx::query(text).bind(after.get()).bind(page);
    // The search's rows are the last statement's, with or without the BEGIN.
    let mut each = tx.rows(query).await.op("finding ready jobs")?;
    Ok(each.pop().unwrap_or_default())
}

/// One row of the claim's search.
fn candidate(row: &sqlx::any::AnyRow) -> Result<Candidate> {
    Ok(Candidate {
        id: typed(row, "id")?,
        graph_id: typed(row, "graph_id")?,
        name: col(row, "name")?,
        requirements: col::<Option<String>>(row, "requirements")?
            .map(|text| json::<Requirements>(&text, "requirements"))
            .transpose()?,
        placement: col::<Option<String>>(row, "placement")?
            .map(|text| json::<Placement>(&text, "job placement"))
            .transpose()?
            .unwrap_or_default(),
        avoid_spot: col::<i64>(row, "avoid_spot")? != 0,
        ready_since: typed(row, "updated_at")?,
        branch: col(row, "branch")?,
        affinity: typed_opt(row, "affinity")?,
        has_needs: col::<i64>(row, "has_needs")? != 0,
    })
}

impl Store {
    /// The database's plan for the claim's search (`EXPLAIN`), one line per row, so tests
    /// and operators can check that it uses the `jobs_ready` index.
    pub async fn explain_claim(&self) -> Result<Vec<String>> {
        let sql = match self.dialect {
            Dialect::Sqlite => format!("EXPLAIN QUERY PLAN {}", claim_select(self.dialect)),
            Dialect::Postgres => format!("EXPLAIN {}", claim_select(self.dialect)),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(0i64)
            .bind(16i64)
            .fetch_all(&self.read)
            .await
            .op("explaining the claim")?;
        rows.iter()
            .map(|row| match self.dialect {
                Dialect::Sqlite => col::<String>(row, "detail"),
                Dialect::Postgres => col::<String>(row, "QUERY PLAN"),
            })
            .collect()
    }

    /// Updates the planner's statistics (PostgreSQL `ANALYZE`, SQLite `ANALYZE`).
    pub async fn analyze(&self) -> Result<()> {
        sqlx::raw_sql("ANALYZE")
            .execute(&mut *self.writer().await?)
            .await
            .op("analyzing tables")?;
        Ok(())
    }
}

/// The name of the directory a node keeps for job `name` of graph `graph_id` between runs
/// (`keep_workdir: true`): one per repository, branch and job, safe as a file name.
fn kept_dir(origin: &GraphOrigin, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let key = format!(
        "{}\n{}\n{name}",
        origin.repository.as_deref().unwrap_or_default(),
        origin.branch.as_deref().unwrap_or_default()
    );
    let hash = hex::encode(&Sha256::digest(key.as_bytes())[..8]);
    let readable: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{hash}")
}

/// Graphs' origins by id, kept for the claims of their jobs: a graph's repository, branch,
/// revisions and push are written with it and never change, so a kept one is never stale
/// (a graph removed by retention has no jobs left to claim). Bounded: emptied when full.
#[derive(Clone, Default)]
pub(crate) struct OriginCache(Arc<Mutex<HashMap<GraphId, Arc<GraphOrigin>>>>);

/// Graphs kept in [`OriginCache`]; jobs are claimed from a few graphs at a time.
const ORIGINS_KEPT: usize = 1024;

impl OriginCache {
    fn get(&self, id: GraphId) -> Option<Arc<GraphOrigin>> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    fn put(&self, id: GraphId, origin: Arc<GraphOrigin>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= ORIGINS_KEPT {
                map.clear();
            }
            map.insert(id, origin);
        }
    }
}

/// Where a graph came from: what its jobs' sources are made of.
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphOrigin {
    repository: Option<String>,
    branch: Option<String>,
    revision: Option<String>,
    base: Option<String>,
    push_id: Option<PushId>,
}

/// A graph's origin, by `g.id`.
const ORIGIN_SELECT: &str = "SELECT g.id, g.repository, g.branch, g.revision, g.base, \
     (SELECT p.id FROM pushes p WHERE p.graph_id = g.id) AS push_id FROM graphs g";

impl GraphOrigin {
    async fn read(tx: &mut Tx, graph_id: GraphId) -> Result<GraphOrigin> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ORIGIN_SELECT} WHERE g.id = $1"
        )))
        .bind(graph_id.get())
        .fetch_one(&mut **tx)
        .await
        .op("reading graph")?;
        GraphOrigin::of_row(&row)
    }

    /// A row of [`ORIGIN_SELECT`].
    fn of_row(row: &sqlx::any::AnyRow) -> Result<GraphOrigin> {
        Ok(GraphOrigin {
            repository: col(row, "repository")?,
            branch: col(row, "branch")?,
            revision: col(row, "revision")?,
            base: col(row, "base")?,
            push_id: typed_opt(row, "push_id")?,
        })
    }

    /// A job's source: `None` when the graph came from no repository.
    fn source(&self, checkout: &lwr_model::Checkout) -> Option<JobSource> {
        let repository = self.repository.clone()?;
        let mut checkout = checkout.clone();
        // A repository named by a label only (a graph from the API) is nowhere to fetch.
        checkout.enabled &= lwr_model::push::is_repository_location(&repository);
        Some(JobSource {
            repository,
            branch: self.branch.clone(),
            revision: self.revision.clone(),
            base_revision: self.base.clone(),
            push_id: self.push_id,
            checkout,
        })
    }
}

/// Where the needs of jobs are: each need's name and its latest run (whose manifest the
/// dependent reads), by the dependent's id; a `WHERE jn.job_id IN (...)` follows. The run
/// is a subquery, not a join: joined, PostgreSQL's generic plan read every job and hashed
/// them with every run before it looked at the few edges asked for (4 ms a claim with
/// 5,000 jobs stored, growing with them).
const NEEDS_MANIFESTS_SELECT: &str = "SELECT jn.job_id, j.name, \
     (SELECT r.id FROM runs r WHERE r.job_id = j.id AND r.number = j.runs) AS id \
     FROM job_needs jn JOIN jobs j ON j.id = jn.need_id";

/// The answer for a result that did not end a live run of the node: a repeat of the
/// recorded result is acknowledged; anything else is refused, saying why.
async fn refusal(tx: &mut Tx, node_id: NodeId, result: &RunResult) -> Result<ResultAck> {
    let query = sqlx::query("SELECT node_id, state, reason FROM runs WHERE id = $1")
        .bind(result.run_id.get());
    let row = tx.fetch_optional(query).await.op("reading run")?;
    let (recorded, note) = match row {
        None => (false, "no such run".to_string()),
        Some(row) if typed::<NodeId>(&row, "node_id")? != node_id => {
            (false, "the run belongs to another node".to_string())
        }
        Some(row) => {
            let state: String = col(&row, "state")?;
            let reason: Option<String> = col(&row, "reason")?;
            let note = format!(
                "the run already ended as {state}{}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
            (state == outcome_state(result.outcome), note)
        }
    };
    Ok(ResultAck {
        run_id: result.run_id,
        recorded,
        note: Some(note),
    })
}

/// Records results inside a transaction; see [`Store::report`].
async fn report_in(
    tx: &mut Tx,
    dialect: Dialect,
    node_id: NodeId,
    results: &[RunResult],
    now: Millis,
    quarantine_after: u32,
    // The node's count of infrastructure errors in a row is known to be zero.
    mut clean: bool,
) -> Result<Reported> {
    if let Some(reported) = report_successes(tx, dialect, node_id, results, now, clean).await? {
        return Ok(reported);
    }
    let mut effects = Effects::default();
    let mut released = Vec::new();
    let mut acks = Vec::with_capacity(results.len());
    let (mut ended, mut quarantined) = (0, false);
    for result in results {
        // The common case in one statement: the node's own live run ends.
        let finished = sqlx::query(
            "UPDATE runs SET state = $3, exit_code = $4, reason = $5, finished_at = $6, \
                 lease_expires = NULL WHERE id = $1 AND node_id = $2 AND state = 'running' \
                 RETURNING job_id, started_at",
        )
        .bind(result.run_id.get())
        .bind(node_id.get())
        .bind(outcome_state(result.outcome))
        .bind(result.exit_code.map(i64::from))
        .bind(result.reason.clone())
        .bind(now.get())
        .fetch_optional(&mut **tx)
        .await
        .op("finishing run")?;
        let Some(finished) = finished else {
            acks.push(refusal(tx, node_id, result).await?);
            continue;
        };
        let job_id: JobId = typed(&finished, "job_id")?;
        ended += 1;
        // A run given back unstarted never ran, and the server's own storage failing is
        // not the node's fault: neither counts against it.
        let unstarted = result.outcome == Outcome::Exception && result.unstarted;
        let infra_error =
            result.outcome == Outcome::Exception && !result.server_fault && !unstarted;
        let started_at: Millis = typed(&finished, "started_at")?;
        // Clearing a count known to be zero would cost a statement per run for nothing. A
        // run given back neither adds to the node's errors in a row nor ends them.
        let (now_quarantined, spot) = if unstarted || (clean && !infra_error) {
            (false, false)
        } else {
            count_end(tx, node_id, started_at, infra_error, quarantine_after).await?
        };
        if !unstarted {
            clean = !infra_error;
        }
        quarantined |= now_quarantined;
        if let Some(why) = &result.node_bad {
            mark_bad(tx, node_id, job_id, result.run_id, why).await?;
            quarantined = true;
        }
        let job_effects = match result.outcome {
            Outcome::Succeeded => succeed_jobs(tx, &[job_id], now, &mut released).await?,
            Outcome::Failed => {
                let reason = result
                    .reason
                    .clone()
                    .unwrap_or_else(|| match result.exit_code {
                        Some(code) => format!("exit code {code}"),
                        None => "failed".to_string(),
                    });
                end_job(tx, job_id, "failed", &reason, now).await?
            }
            Outcome::Exception if unstarted => {
                requeue_unstarted(tx, job_id, started_at, now).await?
            }
            Outcome::Exception => {
                let reason = result.reason.clone().unwrap_or_else(|| "exception".into());
                retry_or_end(tx, job_id, &reason, spot, now).await?
            }
        };
        effects.merge(job_effects);
        acks.push(ResultAck {
            run_id: result.run_id,
            recorded: true,
            note: None,
        });
    }
    Ok(Reported {
        acks,
        effects,
        released,
        ended,
        quarantined,
        clean,
    })
}

/// The common report, in three statements whatever its size: every result a success with
/// one exit code, none marking the node bad, from a node with no infrastructure errors to
/// count. Anything else
/// (`None`) goes result by result, where the order of failures and successes matters to
/// the node's count of errors in a row.
async fn report_successes(
    tx: &mut Tx,
    dialect: Dialect,
    node_id: NodeId,
    results: &[RunResult],
    now: Millis,
    clean: bool,
) -> Result<Option<Reported>> {
    let Some(first) = results.first() else {
        return Ok(None);
    };
    let uniform = results.iter().all(|r| {
        r.outcome == Outcome::Succeeded && r.exit_code == first.exit_code && r.node_bad.is_none()
    });
    if !clean || !uniform || results.len() > CLAIM_BATCH {
        return Ok(None);
    }
    let finish = format!(
        "UPDATE runs SET state = 'succeeded', exit_code = $2, reason = NULL, finished_at = $3, \
         lease_expires = NULL WHERE node_id = $1 AND state = 'running' AND id IN ({}) \
         RETURNING id, job_id, node_id",
        placeholders(4, results.len())
    );
    let postgres = dialect == Dialect::Postgres;
    let text = match postgres {
        true => finish_succeed_release(&finish),
        false => finish,
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text))
        .bind(node_id.get())
        .bind(first.exit_code.map(i64::from))
        .bind(now.get());
    for r in results {
        query = query.bind(r.run_id.get());
    }
    let mut released = Vec::new();
    let (mut finished, effects) = match postgres {
        true => finished_and_released(tx, query, &mut released).await?,
        false => {
            let mut finished = HashMap::new();
            for row in query.fetch_all(&mut **tx).await.op("finishing runs")? {
                finished.insert(typed(&row, "id")?, (typed(&row, "job_id")?, node_id));
            }
            let jobs: Vec<JobId> = finished.values().map(|(job, _)| *job).collect();
            let effects = match jobs.is_empty() {
                true => Effects::default(),
                false => succeed_jobs(tx, &jobs, now, &mut released).await?,
            };
            (finished, effects)
        }
    };
    let ended = finished.len();
    let mut acks = Vec::with_capacity(results.len());
    for result in results {
        // A run reported twice in one batch ended once; the repeat is answered as a repeat.
        if finished.remove(&result.run_id).is_some() {
            acks.push(ResultAck {
                run_id: result.run_id,
                recorded: true,
                note: None,
            });
        } else {
            acks.push(refusal(tx, node_id, result).await?);
        }
    }
    Ok(Some(Reported {
        acks,
        effects,
        released,
        ended,
        quarantined: false,
        clean: true,
    }))
}

/// The `jobs` succeeded, in two statements: each dependent loses one unmet need per job of
/// `jobs` it needs; those at zero become ready and are added to `released`.
async fn succeed_jobs(
    tx: &mut Tx,
    jobs: &[JobId],
    now: Millis,
    released: &mut Vec<JobId>,
) -> Result<Effects> {
    let ids = placeholders(2, jobs.len());
    let mut succeed = sqlx::query(sqlx::AssertSqlSafe(succeed_sql(&ids))).bind(now.get());
    for job in jobs {
        succeed = succeed.bind(job.get());
    }
    succeed
        .execute(&mut **tx)
        .await
        .op("marking jobs succeeded")?;
    let mut release = sqlx::query(sqlx::AssertSqlSafe(release_sql(&ids))).bind(now.get());
    for job in jobs {
        release = release.bind(job.get());
    }
    let before = released.len();
    for row in release
        .fetch_all(&mut **tx)
        .await
        .op("releasing dependents")?
    {
        if col::<i64>(&row, "unmet")? == 0 {
            released.push(typed(&row, "id")?);
        }
    }
    Ok(Effects {
        ready: false,
        released: (released.len() - before) as u32,
        changed: true,
    })
}

/// Marks the jobs `ids` (a list of placeholders, or a subquery) succeeded if they still
/// run; `$1` is the time.
fn succeed_sql(ids: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'succeeded', reason = NULL, updated_at = $1 \
         WHERE state = 'running' AND id IN ({ids})"
    )
}

/// Each pending dependent of the jobs `needs` (placeholders or a subquery) loses one unmet
/// need per job of them it needs, `RETURNING id, unmet`; `$1` is the time. The dependents'
/// counts first, from the edges of the jobs that succeeded, then joined to their rows by
/// key: a plan that starts from the edges whatever the statistics know of a new graph (no
/// subquery per row).
fn release_sql(needs: &str) -> String {
    format!(
        "UPDATE jobs SET unmet = unmet - d.n, updated_at = $1 \
         FROM (SELECT job_id, COUNT(*) AS n FROM job_needs WHERE need_id IN ({needs}) \
         GROUP BY job_id) d WHERE jobs.id = d.job_id AND jobs.state = 'pending' \
         RETURNING id, unmet"
    )
}

/// PostgreSQL: `finish` (an update ending runs as succeeded, `RETURNING id, job_id,
/// node_id`), their jobs' success and their dependents' release as one statement: one
/// round trip instead of three (each a millisecond or more to a database across a
/// network), and the statement trigger that keeps the graphs' counts runs once for both
/// changes of `jobs` (PostgreSQL merges them into one transition table); apart, the
/// release that finds no dependent (every job of a wide graph) paid a round trip and the
/// trigger for nothing. The two updates of `jobs` touch different rows (running jobs,
/// their pending dependents), as one statement must. Its rows: [`finished_and_released`].
fn finish_succeed_release(finish: &str) -> String {
    format!(
        "WITH finished AS ({finish}), succeeded AS ({} RETURNING id), released AS ({}) \
         SELECT 'finished' AS kind, id, job_id, node_id, 0 AS unmet FROM finished \
         UNION ALL SELECT 'released', id, 0, 0, unmet FROM released",
        succeed_sql("SELECT job_id FROM finished"),
        release_sql("SELECT id FROM succeeded")
    )
}

/// Runs a [`finish_succeed_release`] statement: the runs it ended, with their job and
/// node, and its effects; the jobs it made ready are added to `released`.
async fn finished_and_released(
    tx: &mut Tx,
    query: AnyQuery,
    released: &mut Vec<JobId>,
) -> Result<(HashMap<RunId, (JobId, NodeId)>, Effects)> {
    let mut finished = HashMap::new();
    let before = released.len();
    for row in query.fetch_all(&mut **tx).await.op("finishing runs")? {
        match col::<String>(&row, "kind")?.as_str() {
            "finished" => {
                finished.insert(
                    typed(&row, "id")?,
                    (typed(&row, "job_id")?, typed(&row, "node_id")?),
                );
            }
            _ if col::<i64>(&row, "unmet")? == 0 => released.push(typed(&row, "id")?),
            _ => {}
        }
    }
    let effects = Effects {
        ready: false,
        released: (released.len() - before) as u32,
        changed: !finished.is_empty(),
    };
    Ok((finished, effects))
}

/// Quarantines the node a job marked bad (`lwr node-bad`), naming the job and its reason.
async fn mark_bad(
    tx: &mut Tx,
    node_id: NodeId,
    job_id: JobId,
    run: RunId,
    why: &str,
) -> Result<()> {
    let job: Option<String> = sqlx::query_scalar("SELECT name FROM jobs WHERE id = $1")
        .bind(job_id.get())
        .fetch_optional(&mut **tx)
        .await
        .op("reading job name")?;
    let reason = format!(
        "job {} (run {run}) marked it bad: {why}",
        job.as_deref().unwrap_or("?")
    );
    sqlx::query("UPDATE nodes SET state = 'quarantined', state_reason = $2 WHERE id = $1")
        .bind(node_id.get())
        .bind(reason)
        .execute(&mut **tx)
        .await
        .op("quarantining node")?;
    Ok(())
}

fn outcome_state(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Exception => "exception",
    }
}

/// A run its node gave back without starting it (it was claimed ahead of a free slot):
/// the job goes back to the queue as it was, its retries untouched. Its `updated_at`, from
/// which placement counts how long a ready job has waited for a preferred node, is the
/// claim's time (`claimed`): the wait on the node's deck counts as waited.
async fn requeue_unstarted(
    tx: &mut Tx,
    job_id: JobId,
    claimed: Millis,
    now: Millis,
) -> Result<Effects> {
    sqlx::query(
        "UPDATE jobs SET state = 'pending', reason = $2, updated_at = $3 \
         WHERE id = $1 AND state = 'running'",
    )
    .bind(job_id.get())
    .bind("given back unstarted by the node that claimed it ahead; waiting for a node")
    .bind(claimed.get())
    .execute(&mut **tx)
    .await
    .op("requeueing an unstarted job")?;
    requeued(tx, job_id, now).await
}

/// What a job put back in the queue (pending again, by a retry or a give-back) does. A need
/// run again on its own while the job ran (retrigger without dependents) left the count it
/// was claimed with stale: it waits for the need's new run, and is blocked if that ended
/// without success.
async fn requeued(tx: &mut Tx, job_id: JobId, now: Millis) -> Result<Effects> {
    crate::control::count_unmet(tx, job_id).await?;
    let (blocked, ready) = crate::control::block_if_stuck(tx, job_id, now).await?;
    Ok(if blocked {
        Effects::changed(ready)
    } else {
        Effects::NEW_WORK
    })
}

/// An infrastructure error: run the job again while it has retries, else end it. After an
/// error on a spot node (`spot`), the retry goes to a non-spot node when one matches.
async fn retry_or_end(
    tx: &mut Tx,
    job_id: JobId,
    reason: &str,
    spot: bool,
    now: Millis,
) -> Result<Effects> {
    let retried = sqlx::query(
        "UPDATE jobs SET state = 'pending', retries_left = retries_left - 1, reason = $2, \
         updated_at = $3, avoid_spot = CASE WHEN $4 = 1 THEN 1 ELSE avoid_spot END \
         WHERE id = $1 AND state = 'running' AND retries_left > 0",
    )
    .bind(job_id.get())
    .bind(if spot {
        format!("retrying after {reason} on a spot node")
    } else {
        format!("retrying after {reason}")
    })
    .bind(now.get())
    .bind(i64::from(spot))
    .execute(&mut **tx)
    .await
    .op("requeueing job")?
    .rows_affected();
    if retried > 0 {
        return requeued(tx, job_id, now).await;
    }
    end_job(
        tx,
        job_id,
        "exception",
        &format!("{reason}; no retries left"),
        now,
    )
    .await
}

/// Ends a running job without success and blocks everything that depends on it.
async fn end_job(
    tx: &mut Tx,
    job_id: JobId,
    state: &str,
    reason: &str,
    now: Millis,
) -> Result<Effects> {
    let row = sqlx::query(
        "UPDATE jobs SET state = $2, reason = $3, updated_at = $4 \
         WHERE id = $1 AND state = 'running' RETURNING name",
    )
    .bind(job_id.get())
    .bind(state.to_string())
    .bind(reason.to_string())
    .bind(now.get())
    .fetch_optional(&mut **tx)
    .await
    .op("ending job")?;
    let mut ready = false;
    if let Some(row) = row {
        let name: String = col(&row, "name")?;
        ready = block_dependents(
            tx,
            job_id,
            &format!("needs {name}, which ended {state}"),
            now,
        )
        .await?;
    }
    Ok(Effects::changed(ready))
}

/// `job_id` ended without success: marks every pending job that transitively needs it as
/// blocked, except that blocking stops at jobs with `requires: all-finished`. For those, the
/// ended job and each job blocked now count as finished needs, so they may become ready.
/// Returns whether one did.
pub(crate) async fn block_dependents(
    tx: &mut Tx,
    job_id: JobId,
    reason: &str,
    now: Millis,
) -> Result<bool> {
    // The jobs ending now: this one and the pending, ordinary jobs that depend on it.
    const ENDING: &str = "WITH RECURSIVE ending (id) AS ( \
             SELECT CAST($1 AS BIGINT) \
             UNION SELECT jn.job_id FROM job_needs jn JOIN ending e ON jn.need_id = e.id \
             JOIN jobs j ON j.id = jn.job_id WHERE j.state = 'pending' AND j.all_finished = 0) ";
    // First the all-finished dependents, while the blocked-to-be are still pending.
    let released = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{ENDING} UPDATE jobs SET unmet = unmet - (SELECT COUNT(*) FROM job_needs jn \
             WHERE jn.job_id = jobs.id AND jn.need_id IN (SELECT id FROM ending)), \
             updated_at = $2 \
         WHERE state = 'pending' AND all_finished = 1 AND id IN \
             (SELECT jn.job_id FROM job_needs jn JOIN ending e ON jn.need_id = e.id) \
         RETURNING unmet"
    )))
    .bind(job_id.get())
    .bind(now.get())
    .fetch_all(&mut **tx)
    .await
    .op("releasing all-finished dependents")?;
    let mut ready = false;
    for row in released {
        ready |= col::<i64>(&row, "unmet")? == 0;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{ENDING} UPDATE jobs SET state = 'blocked', reason = $2, updated_at = $3 \
         WHERE state = 'pending' AND all_finished = 0 AND id <> $1 \
         AND id IN (SELECT id FROM ending)"
    )))
    .bind(job_id.get())
    .bind(reason.to_string())
    .bind(now.get())
    .execute(&mut **tx)
    .await
    .op("blocking dependents")?;
    Ok(ready)
}

/// Whether a claim's results can share a transaction with other claims': plain successes
/// only (a failure or an exception blocks, retries and counts against the node, result by
/// result), few enough for one statement.
fn combinable(results: &[RunResult]) -> bool {
    results.len() <= CLAIM_BATCH
        && results
            .iter()
            .all(|r| r.outcome == Outcome::Succeeded && r.node_bad.is_none())
}

/// What [`succeed_runs`] did.
pub(crate) struct Succeeded {
    /// The runs ended, with their job and node.
    pub finished: HashMap<RunId, (JobId, NodeId)>,
    /// Jobs that became ready (their last need succeeded).
    pub released: Vec<JobId>,
    pub effects: Effects,
    /// The claim's first page of ready jobs, when asked for.
    pub first_page: Option<Vec<sqlx::any::AnyRow>>,
}

/// Ends the live runs that `results` name as succeeded, each only if it is the live run of
/// the node that sent it (`results` pairs a node with each result), marks their jobs
/// succeeded and releases their dependents: per [`CLAIM_BATCH`] results, three statements
/// sent together on SQLite (one round trip to the connection's thread), one on PostgreSQL.
///
/// With `search` (SQLite), the claim's search for its first page of `search` rows goes
/// with the last of them, after the releases; its rows come back in `first_page`.
pub(crate) async fn succeed_runs(
    tx: &mut Tx,
    dialect: Dialect,
    results: &[(NodeId, &RunResult)],
    now: Millis,
    search: Option<i64>,
) -> Result<Succeeded> {
    let mut done = Succeeded {
        finished: HashMap::with_capacity(results.len()),
        released: Vec::new(),
        effects: Effects::default(),
        first_page: None,
    };
    let chunks = results.len().div_ceil(CLAIM_BATCH);
    for (c, chunk) in results.chunks(CLAIM_BATCH).enumerate() {
        let search = search.filter(|_| c + 1 == chunks && dialect == Dialect::Sqlite);
        // $1 the time, then the runs' ids; each run's exit code and node by its id (a run
        // named twice takes its first).
        let n = chunk.len();
        let runs = placeholders(2, n);
        let by_id = |offset: usize| -> String {
            (0..n)
                .map(|i| format!(" WHEN ${} THEN ${}", 2 + i, 2 + offset * n + i))
                .collect()
        };
        let finish = format!(
            "UPDATE runs SET state = 'succeeded', exit_code = CASE id{} END, reason = NULL, \
             finished_at = $1, lease_expires = NULL WHERE state = 'running' AND id IN ({runs}) \
             AND node_id = CASE id{} END RETURNING id, job_id, node_id",
            by_id(1),
            by_id(2)
        );
        let bind = |mut q: AnyQuery| {
            q = q.bind(now.get());
            for (_, r) in chunk {
                q = q.bind(r.run_id.get());
            }
            for (_, r) in chunk {
                q = q.bind(r.exit_code.map(i64::from));
            }
            for (node, _) in chunk {
                q = q.bind(node.get());
            }
            q
        };
        if dialect == Dialect::Sqlite {
            // The jobs whose runs the first statement just ended: a running job's latest
            // run was live before it, and only it ends a live run here. Dependents are
            // released while these are still running, then they succeed.
            let ended = format!(
                "SELECT j.id FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id IN ({runs}) \
                 AND r.state = 'succeeded' AND r.number = j.runs AND j.state = 'running'"
            );
            // A combined claim's transaction on SQLite begins with these.
            let lead = tx.lead();
            let all = format!(
                "{lead}{finish}; \
                 UPDATE jobs SET unmet = unmet - (SELECT COUNT(*) FROM job_needs jn \
                 WHERE jn.job_id = jobs.id AND jn.need_id IN ({ended})), updated_at = $1 \
                 WHERE state = 'pending' AND id IN \
                 (SELECT job_id FROM job_needs WHERE need_id IN ({ended})) RETURNING id, unmet; \
                 UPDATE jobs SET state = 'succeeded', reason = NULL, updated_at = $1 \
                 WHERE state = 'running' AND id IN ({ended})"
            );
            // The search's after-job and page size follow the results' arguments.
            let (after, page) = (2 + 3 * n, 3 + 3 * n);
            let all = match search {
                Some(_) => format!(
                    "{all}; {}",
                    claim_select(dialect)
                        .replace("$2", "{page}")
                        .replace("$1", &format!("${after}"))
                        .replace("{page}", &format!("${page}"))
                ),
                None => all,
            };
            let mut query = bind(sqlx::query(sqlx::AssertSqlSafe(all)));
            if let Some(rows) = search {
                query = query.bind(0i64).bind(rows);
            }
            let mut each = tx.rows(query).await.op("finishing runs")?.into_iter();
            if !lead.is_empty() {
                // BEGIN's (no rows).
                each.next();
            }
            for row in each.next().unwrap_or_default() {
                done.finished.insert(
                    typed(&row, "id")?,
                    (typed(&row, "job_id")?, typed(&row, "node_id")?),
                );
            }
            let before = done.released.len();
            for row in each.next().unwrap_or_default() {
                if col::<i64>(&row, "unmet")? == 0 {
                    done.released.push(typed(&row, "id")?);
                }
            }
            done.effects.released = done
                .effects
                .released
                .saturating_add((done.released.len() - before) as u32);
            // The succeed statement returns nothing; then the search's rows.
            if search.is_some() {
                done.first_page = Some(each.nth(1).unwrap_or_default());
            }
        } else {
            let query = bind(sqlx::query(sqlx::AssertSqlSafe(finish_succeed_release(
                &finish,
            ))));
            let (finished, effects) = finished_and_released(tx, query, &mut done.released).await?;
            done.finished.extend(finished);
            done.effects.merge(effects);
        }
    }
    done.effects.changed = !done.finished.is_empty();
    Ok(done)
}

/// The answer for a result [`succeed_runs`] did not end for `node_id`.
pub(crate) async fn refused(tx: &mut Tx, node_id: NodeId, result: &RunResult) -> Result<ResultAck> {
    refusal(tx, node_id, result).await
}

#[cfg(test)]
mod tests {
    use lwr_model::api::{RegisterNode, SubmitGraph};
    use lwr_model::{Graph, NodeProperties};

    use super::*;

    /// A take that marks fewer jobs than were picked must not commit, even when its COMMIT
    /// goes along with it (SQLite): the claim rolls back whole. A claim's search and take
    /// share one transaction on the one writer, so nothing can take a picked job in between;
    /// the job marked running here inside the transaction stands in for a bug that would.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_take_that_misses_a_picked_job_commits_nothing() {
        a_take_that_misses_a_picked_job_commits_nothing_on(false).await;
    }

    /// The same on the writer's direct connection (a combined claim's), whose rollback of
    /// the dropped transaction runs at once, and whose writer serves sqlx's path after it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_direct_take_that_misses_a_picked_job_commits_nothing() {
        a_take_that_misses_a_picked_job_commits_nothing_on(true).await;
    }

    async fn a_take_that_misses_a_picked_job_commits_nothing_on(direct: bool) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
        let store = Store::open(&url).await.expect("opening the store");
        let register = RegisterNode {
            name: "n1".into(),
            properties: NodeProperties::default(),
            slots: 2,
        };
        let node = store.register_node(&register, Millis(0)).await.unwrap();
        let jobs = ["a", "b"]
            .map(|name| {
                serde_json::from_value(serde_json::json!({ "name": name, "run": "true" }))
                    .expect("a job spec")
            })
            .to_vec();
        let sub = SubmitGraph::new(Graph { jobs });
        store.submit_graph(&sub, Millis(1)).await.unwrap();
        let known = store.node_properties(node).await.unwrap();
        let lease = DurationMs(30_000);

        let mut tx = store.begin_claim(direct).await.unwrap();
        let lead = tx.lead();
        let select = format!("{lead}SELECT id FROM jobs ORDER BY id");
        let ids: Vec<JobId> = tx
            .rows(sqlx::query(sqlx::AssertSqlSafe(select)))
            .await
            .unwrap()
            .pop()
            .unwrap_or_default()
            .iter()
            .map(|row| typed(row, "id").unwrap())
            .collect();
        let mark =
            sqlx::query("UPDATE jobs SET state = 'running' WHERE id = $1").bind(ids[0].get());
        tx.rows(mark).await.unwrap();
        let claimers = [store.claimer(node, known, 2, lease, Millis(2))];
        let picked: Vec<Pick> = ids
            .iter()
            .map(|&job| Pick {
                job,
                reason: "any node".into(),
                claimer: 0,
            })
            .collect();
        let read = Reads {
            origins: true,
            needs: false,
            commit: true,
        };
        let taken = take_jobs(
            &mut tx,
            Dialect::Sqlite,
            &picked,
            &claimers,
            Millis(2),
            read,
        )
        .await;
        assert!(
            taken.is_err(),
            "a take that missed a job it picked succeeded"
        );
        drop(tx);

        // Nothing of it stayed: both jobs are there to take, each for its first run, and the
        // writer is free for sqlx's path too (a claim alone).
        let claimed = store
            .claim_alone(node, 2, &[], Millis(3), lease)
            .await
            .unwrap();
        let mut got: Vec<(&str, u32)> = claimed
            .assignments
            .iter()
            .map(|a| (a.job_name.as_str(), a.run_number))
            .collect();
        got.sort_unstable();
        assert_eq!(got, [("a", 1), ("b", 1)]);
        store.close().await;
    }
}
