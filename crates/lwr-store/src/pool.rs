//! The pool as the store keeps it: node state and health, the cached snapshot the claim
//! decides with, and the infrastructure-error counts (affinity is read from the jobs
//! themselves by the claim).
//!
//! The policy itself is `lwr_model::pool`; this module only feeds it. The snapshot is kept
//! in memory so a claim reads no node rows: this server's own claims, reports and state
//! changes update it at once, and it is read again from the database when it is older than
//! [`POOL_TTL`] (other servers sharing the database) or after anything it cannot follow
//! (lease expiry, cancellation).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lwr_model::pool::{NodeState, Pool, PoolNode};
use lwr_model::{DurationMs, Millis, NodeId, NodeProperties, Prefer};
use serde::{Deserialize, Serialize};

use crate::error::Op;
use crate::queue::Tx;
use crate::rows::{col, json, to_json, typed, u32_of};
use crate::{Result, Store, StoreError};

/// How long the snapshot is trusted before it is read again.
const POOL_TTL: Duration = Duration::from_secs(2);

/// How the pool is run; set by the server from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// A node not heard from for this long is lost.
    pub lost_after_ms: DurationMs,
    /// A node whose last this many runs ended in infrastructure errors is quarantined;
    /// 0 turns automatic quarantine off.
    pub quarantine_after: u32,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            lost_after_ms: crate::nodes::LOST_AFTER_MS,
            quarantine_after: 3,
        }
    }
}

/// The snapshot and when it was read.
struct Cached {
    pool: Pool,
    read_at: Option<Instant>,
    config: PoolConfig,
    /// Nodes whose last runs may have ended in infrastructure errors: only for these does
    /// a run that ends otherwise cost a statement to clear the count (read again with the
    /// snapshot, so another server's errors are seen within [`POOL_TTL`]).
    erring: HashSet<NodeId>,
    /// Moves with every change this server makes to the snapshot, so a read from the
    /// database that raced with one is not installed over it.
    generation: u64,
}

/// The shared, cached pool.
#[derive(Clone)]
pub(crate) struct PoolCache(Arc<Mutex<Cached>>);

impl Default for PoolCache {
    fn default() -> PoolCache {
        let config = PoolConfig::default();
        PoolCache(Arc::new(Mutex::new(Cached {
            pool: Pool::new(Vec::new(), config.lost_after_ms),
            read_at: None,
            config,
            erring: HashSet::new(),
            generation: 0,
        })))
    }
}

impl PoolCache {
    fn lock(&self) -> MutexGuard<'_, Cached> {
        lwr_model::sync::lock(&self.0)
    }

    /// Reads the pool again at the next claim.
    pub(crate) fn stale(&self) {
        self.lock().read_at = None;
    }

    /// Whether `node`'s count of infrastructure errors in a row may be above zero.
    pub(crate) fn erring(&self, node: NodeId) -> bool {
        self.lock().erring.contains(&node)
    }

    pub(crate) fn set_erring(&self, node: NodeId, erring: bool) {
        let mut cached = self.lock();
        cached.generation += 1;
        if erring {
            cached.erring.insert(node);
        } else {
            cached.erring.remove(&node);
        }
    }

    /// Changes the snapshot after a committed change. Never held across an await.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Pool)) {
        let mut cached = self.lock();
        cached.generation += 1;
        f(&mut cached.pool);
    }

    /// Runs `f` on the snapshot. Never held across an await.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Pool) -> T) -> T {
        f(&mut self.lock().pool)
    }

    fn config(&self) -> PoolConfig {
        self.lock().config
    }

    fn fresh(&self) -> bool {
        self.lock()
            .read_at
            .is_some_and(|at| at.elapsed() < POOL_TTL)
    }
}

/// A job's `prefer` and `affinity_wait`, stored beside it when not the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer: Vec<Prefer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_wait_secs: Option<u64>,
}

impl Placement {
    /// The column's text: `None` for the defaults.
    pub(crate) fn column(spec: &lwr_model::JobSpec) -> Result<Option<String>> {
        if spec.prefer.is_empty() && spec.affinity_wait_secs.is_none() {
            return Ok(None);
        }
        let placement = Placement {
            prefer: spec.prefer.clone(),
            affinity_wait_secs: spec.affinity_wait_secs,
        };
        to_json(&placement, "job placement").map(Some)
    }
}

/// Nodes with the number of runs each holds.
const POOL_SELECT: &str = "SELECT n.id, n.name, n.properties, n.labels, n.slots, n.last_seen, \
     n.state, n.health, n.infra_errors, \
     COALESCE(r.running, 0) AS running FROM nodes n LEFT JOIN (SELECT node_id, COUNT(*) AS \
     running FROM runs WHERE state = 'running' GROUP BY node_id) r ON r.node_id = n.id";

fn pool_node(row: &sqlx::any::AnyRow) -> Result<PoolNode> {
    let state: String = col(row, "state")?;
    let mut node = PoolNode::new(
        typed(row, "id")?,
        col(row, "name")?,
        crate::nodes::properties(row)?,
        parse_state(&state)?,
        u32_of(col(row, "slots")?),
        u32_of(col(row, "running")?),
        typed(row, "last_seen")?,
    );
    node.health = col(row, "health")?;
    Ok(node)
}

pub(crate) fn parse_state(s: &str) -> Result<NodeState> {
    NodeState::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: "node state",
        detail: s.to_string(),
    })
}

impl Store {
    /// Sets how nodes are judged lost and quarantined.
    pub fn set_pool_config(&self, config: PoolConfig) {
        let mut cached = self.pool.lock();
        cached.config = config;
        cached.pool.lost_after_ms = config.lost_after_ms;
    }

    pub fn pool_config(&self) -> PoolConfig {
        self.pool.config()
    }

    /// Reads the pool snapshot again when it is stale.
    pub(crate) async fn refresh_pool(&self) -> Result<()> {
        if self.pool.fresh() {
            return Ok(());
        }
        let generation = self.pool.lock().generation;
        let rows = sqlx::query(POOL_SELECT)
            .fetch_all(&self.node)
            .await
            .op("reading the pool")?;
        let mut nodes = rows.iter().map(pool_node).collect::<Result<Vec<_>>>()?;
        let mut erring = HashSet::new();
        for row in &rows {
            if col::<i64>(row, "infra_errors")? > 0 {
                erring.insert(typed(row, "id")?);
            }
        }
        let mut cached = self.pool.lock();
        if cached.generation != generation {
            // A claim or report of this server committed while we read, and updated the
            // snapshot in memory; the read may predate that commit. Its counts of running
            // jobs would undo the update (a node freed a moment ago would look busy until
            // the next read), so those, and what the node was last seen doing, stay as this
            // server knows them; states, labels and new nodes come from the read.
            for node in &mut nodes {
                if let Some(known) = cached.pool.get(node.id) {
                    node.running = known.running;
                    node.last_seen = node.last_seen.max(known.last_seen);
                }
            }
            erring.extend(cached.erring.iter().copied());
        }
        cached.pool = Pool::new(nodes, cached.config.lost_after_ms);
        cached.erring = erring;
        cached.read_at = Some(Instant::now());
        Ok(())
    }

    /// A snapshot of the pool as the claim sees it (fresh within [`POOL_TTL`]).
    pub async fn pool(&self) -> Result<Pool> {
        self.refresh_pool().await?;
        Ok(self.pool.with(|p| p.clone()))
    }

    /// The id of the node named `key`, or else with id `key`.
    pub async fn find_node(&self, key: &str) -> Result<NodeId> {
        let row = sqlx::query("SELECT id FROM nodes WHERE name = $1")
            .bind(key.to_string())
            .fetch_optional(&self.read)
            .await
            .op("finding node")?;
        if let Some(row) = row {
            return typed(&row, "id");
        }
        let by_id = match key.parse::<i64>() {
            Ok(id) => sqlx::query("SELECT id FROM nodes WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await
                .op("finding node")?,
            Err(_) => None,
        };
        match by_id {
            Some(row) => typed(&row, "id"),
            None => Err(StoreError::NotFound {
                what: "node",
                id: key.to_string(),
            }),
        }
    }

    /// Sets a node's state (`lwr nodes disable|enable|quarantine`); enabling also forgets its
    /// infrastructure errors. A disabled node finishes what it runs and claims no more.
    /// `reimage` (with `draining`) has the node run its reimage command once drained.
    pub async fn set_node_state(
        &self,
        id: NodeId,
        state: NodeState,
        reason: Option<&str>,
        reimage: bool,
    ) -> Result<()> {
        let enable = i64::from(state == NodeState::Enabled);
        let reimage = i64::from(reimage && state == NodeState::Draining);
        sqlx::query(
            "UPDATE nodes SET state = $2, state_reason = $3, \
             infra_errors = CASE WHEN $4 = 1 THEN 0 ELSE infra_errors END, reimage = $5 \
             WHERE id = $1 RETURNING id",
        )
        .bind(id.get())
        .bind(state.as_str())
        .bind(reason.map(str::to_string))
        .bind(enable)
        .bind(reimage)
        .fetch_optional(&mut *self.writer().await?)
        .await
        .op("setting node state")?
        .ok_or_else(|| StoreError::NotFound {
            what: "node",
            id: id.to_string(),
        })?;
        self.node_changed(id).await
    }

    /// Adds, changes (`key=value`) or removes (`key=`) tags of a node, as an operator's
    /// labels: `lwr nodes label NAME speed=10`. Labels survive the node registering again.
    pub async fn label_node(&self, id: NodeId, labels: &[(String, String)]) -> Result<()> {
        let mut tx = Tx::begin(&self.write).await.op("starting label")?;
        let row = sqlx::query("SELECT id, labels FROM nodes WHERE id = $1")
            .bind(id.get())
            .fetch_optional(&mut *tx)
            .await
            .op("reading node")?
            .ok_or_else(|| StoreError::NotFound {
                what: "node",
                id: id.to_string(),
            })?;
        let mut current: BTreeMap<String, String> = match col::<Option<String>>(&row, "labels")? {
            Some(text) => json(&text, "node labels")?,
            None => BTreeMap::new(),
        };
        for (k, v) in labels {
            if v.is_empty() {
                current.remove(k);
            } else {
                current.insert(k.clone(), v.clone());
            }
        }
        let text = if current.is_empty() {
            None
        } else {
            Some(to_json(&current, "node labels")?)
        };
        sqlx::query("UPDATE nodes SET labels = $2 WHERE id = $1")
            .bind(id.get())
            .bind(text)
            .execute(&mut *tx)
            .await
            .op("labelling node")?;
        tx.commit().await.op("committing label")?;
        self.node_changed(id).await
    }

    /// A node's row changed: forget cached views of it here and on other servers.
    async fn node_changed(&self, id: NodeId) -> Result<()> {
        self.nodes.forget(id);
        self.pool.stale();
        self.notify_node(id).await
    }

    /// Jobs ready to claim (read from the `jobs_ready` index).
    pub async fn ready_jobs(&self) -> Result<u64> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'pending' AND unmet = 0")
                .fetch_one(&self.read)
                .await
                .op("counting ready jobs")?;
        Ok(col::<i64>(&row, "n")?.max(0) as u64)
    }

    /// Whether an operator asked node `node_id` to drain for a reimage (not a reboot).
    pub async fn node_reimage(&self, node_id: NodeId) -> Result<bool> {
        let reimage: Option<i64> = sqlx::query_scalar("SELECT reimage FROM nodes WHERE id = $1")
            .bind(node_id.get())
            .fetch_optional(&self.read)
            .await
            .op("reading node")?;
        Ok(reimage.unwrap_or(0) != 0)
    }

    /// A node's state as the pool snapshot has it (fresh within [`POOL_TTL`]).
    pub async fn node_state(&self, node_id: NodeId) -> Result<Option<NodeState>> {
        self.refresh_pool().await?;
        Ok(self.pool.with(|p| p.get(node_id).map(|n| n.state)))
    }

    /// The claim changed what node `node_id` holds: `taken` new runs, `ended` finished.
    pub(crate) fn note_claim(&self, node_id: NodeId, taken: usize, ended: usize, now: Millis) {
        self.pool.update(|p| {
            if let Some(n) = p.get_mut(node_id) {
                n.running = (n.running as usize + taken).saturating_sub(ended) as u32;
                n.last_seen = n.last_seen.max(now);
            }
        });
    }

    pub(crate) fn note_seen(&self, node_id: NodeId, now: Millis, unhealthy: Option<&str>) {
        // Not a change a read could undo (the read keeps the latest `last_seen`).
        self.pool.with(|p| {
            if let Some(n) = p.get_mut(node_id) {
                n.last_seen = n.last_seen.max(now);
                n.health = unhealthy.map(str::to_string);
            }
        });
    }

    pub(crate) fn pool_stale(&self) {
        self.pool.stale();
    }
}

/// Counts a run of `node_id` (started at `started_at`) that ended: an infrastructure error
/// adds to the node's errors in a row and quarantines it at `quarantine_after`; anything else
/// clears them. Runs a previous life of the node started (the ones it reports as lost after
/// a restart) do not count: the restart is not the node's ill health. Returns whether the
/// node was quarantined now, and whether it is a spot instance (for the retry).
pub(crate) async fn count_end(
    tx: &mut Tx,
    node_id: NodeId,
    started_at: Millis,
    infra_error: bool,
    quarantine_after: u32,
) -> Result<(bool, bool)> {
    if !infra_error {
        sqlx::query("UPDATE nodes SET infra_errors = 0 WHERE id = $1 AND infra_errors <> 0")
            .bind(node_id.get())
            .execute(&mut **tx)
            .await
            .op("clearing infrastructure errors")?;
        return Ok((false, false));
    }
    let limit = if quarantine_after == 0 {
        i64::MAX
    } else {
        i64::from(quarantine_after)
    };
    let row = sqlx::query(
        "UPDATE nodes SET infra_errors = infra_errors + 1, \
         state = CASE WHEN state = 'enabled' AND infra_errors + 1 >= $2 \
             THEN 'quarantined' ELSE state END, \
         state_reason = CASE WHEN state = 'enabled' AND infra_errors + 1 >= $2 \
             THEN $3 ELSE state_reason END \
         WHERE id = $1 AND registered_at <= $4 RETURNING state, infra_errors, properties",
    )
    .bind(node_id.get())
    .bind(limit)
    .bind(format!(
        "its last {quarantine_after} runs ended in infrastructure errors"
    ))
    .bind(started_at.get())
    .fetch_optional(&mut **tx)
    .await
    .op("counting infrastructure errors")?;
    let Some(row) = row else {
        // A run of a previous life: not counted, but the retry still avoids a spot node.
        let row = sqlx::query("SELECT properties FROM nodes WHERE id = $1")
            .bind(node_id.get())
            .fetch_optional(&mut **tx)
            .await
            .op("reading node")?;
        let spot = match row {
            Some(row) => {
                let props: NodeProperties =
                    json(&col::<String>(&row, "properties")?, "node properties")?;
                lwr_model::pool::is_spot(&props)
            }
            None => false,
        };
        return Ok((false, spot));
    };
    let state: String = col(&row, "state")?;
    let errors: i64 = col(&row, "infra_errors")?;
    let props: NodeProperties = json(&col::<String>(&row, "properties")?, "node properties")?;
    let quarantined = state == "quarantined" && errors == limit;
    Ok((quarantined, lwr_model::pool::is_spot(&props)))
}
