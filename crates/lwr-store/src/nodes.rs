//! Node registration and listing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwr_model::api::{NodeInfo, RegisterNode};
use lwr_model::pool::NodeState;
use lwr_model::{DurationMs, Millis, NodeId, NodeProperties};

use crate::error::Op;
use crate::rows::{col, json, to_json, typed, u32_of};
use crate::{Result, Store, StoreError, rfc3339};

/// How long a cached view of a node is trusted. Properties change only when a node
/// registers again, which may go through another server sharing the database.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// A node's name and properties, as a claim needs them.
#[derive(Debug)]
pub struct KnownNode {
    pub name: String,
    pub properties: NodeProperties,
}

/// A cached node and when it was read.
type Cached = (Instant, Arc<KnownNode>);

/// Cached nodes by id, so a claim need not read them each time.
#[derive(Clone, Default)]
pub(crate) struct NodeCache(Arc<Mutex<HashMap<NodeId, Cached>>>);

impl NodeCache {
    fn get(&self, id: NodeId) -> Option<Arc<KnownNode>> {
        let map = self.0.lock().ok()?;
        map.get(&id)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, node)| node.clone())
    }

    pub(crate) fn forget(&self, id: NodeId) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&id);
        }
    }

    fn put(&self, id: NodeId, node: Arc<KnownNode>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, (Instant::now(), node));
        }
    }
}

/// A node that has not been heard from for this long is shown as `lost`
/// ([`lwr_model::timing::DEFAULT_NODE_LOST_AFTER`]).
pub const LOST_AFTER_MS: DurationMs =
    DurationMs(lwr_model::timing::DEFAULT_NODE_LOST_AFTER.as_millis() as i64);

impl Store {
    /// Registers a node, or updates the one with the same name (a node restarting keeps its
    /// identity, so its history stays with it; a node that drained to reboot is enabled
    /// again). Returns the node id.
    pub async fn register_node(&self, reg: &RegisterNode, now: Millis) -> Result<NodeId> {
        self.register_node_for(reg, now, None).await
    }

    /// Registers a node bound to the token it registered with: from then on only that token
    /// (or an admin token) may claim, renew, report and upload for it.
    pub async fn register_node_for(
        &self,
        reg: &RegisterNode,
        now: Millis,
        token_id: Option<i64>,
    ) -> Result<NodeId> {
        let row = sqlx::query(
            "INSERT INTO nodes (name, properties, slots, registered_at, last_seen, token_id) \
             VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET properties = excluded.properties, \
             slots = excluded.slots, last_seen = excluded.last_seen, \
             registered_at = excluded.registered_at, \
             state = CASE WHEN nodes.state = 'draining' THEN 'enabled' ELSE nodes.state END, \
             state_reason = CASE WHEN nodes.state = 'draining' THEN NULL \
                 ELSE nodes.state_reason END, \
             reimage = 0, \
             token_id = excluded.token_id \
             RETURNING id",
        )
        .bind(reg.name.clone())
        .bind(to_json(&reg.properties, "node properties")?)
        .bind(i64::from(reg.slots))
        .bind(now.get())
        .bind(token_id)
        .fetch_one(&mut *self.writer().await?)
        .await
        .op("registering node")?;
        let id = typed(&row, "id")?;
        self.notify_node(id).await?;
        // Read back: operators' labels are merged into what the node said.
        self.nodes.forget(id);
        self.pool_stale();
        Ok(id)
    }

    /// The token a node named `name` registered with: `None` when no such node, `Some(None)`
    /// when it registered without one.
    pub async fn node_owner_by_name(&self, name: &str) -> Result<Option<Option<i64>>> {
        let row = sqlx::query("SELECT token_id FROM nodes WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.node)
            .await
            .op("reading node")?;
        row.map(|r| col(&r, "token_id")).transpose()
    }

    /// The token node `node_id` registered with (`None` without one); `NotFound` when the
    /// node is unknown. Read on every node request with authentication on, never cached, so
    /// a node registered again under another token loses the old one at once.
    pub async fn node_owner(&self, node_id: NodeId) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT token_id FROM nodes WHERE id = $1")
            .bind(node_id.get())
            .fetch_optional(&self.node)
            .await
            .op("reading node")?
            .ok_or_else(|| StoreError::NotFound {
                what: "node",
                id: node_id.to_string(),
            })?;
        col(&row, "token_id")
    }

    /// A node's properties, or `NotFound` when the server forgot it (the node re-registers).
    pub async fn node_properties(&self, node_id: NodeId) -> Result<Arc<KnownNode>> {
        if let Some(node) = self.nodes.get(node_id) {
            return Ok(node);
        }
        let row = sqlx::query("SELECT name, properties, labels FROM nodes WHERE id = $1")
            .bind(node_id.get())
            .fetch_optional(&self.node)
            .await
            .op("reading node")?
            .ok_or_else(|| StoreError::NotFound {
                what: "node",
                id: node_id.to_string(),
            })?;
        let props = properties(&row)?;
        let node = Arc::new(KnownNode {
            name: col(&row, "name")?,
            properties: props,
        });
        self.nodes.put(node_id, node.clone());
        Ok(node)
    }

    pub async fn nodes(&self, now: Millis) -> Result<Vec<NodeInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} ORDER BY n.name"
        )))
        .fetch_all(&self.read)
        .await
        .op("listing nodes")?;
        let lost_after = self.pool_config().lost_after_ms;
        rows.iter()
            .map(|row| node_info(row, now, lost_after))
            .collect()
    }

    /// One node as listings show it.
    pub async fn node(&self, id: NodeId, now: Millis) -> Result<NodeInfo> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} WHERE n.id = $1"
        )))
        .bind(id.get())
        .fetch_optional(&self.read)
        .await
        .op("reading node")?
        .ok_or_else(|| StoreError::NotFound {
            what: "node",
            id: id.to_string(),
        })?;
        node_info(&row, now, self.pool_config().lost_after_ms)
    }
}

/// Nodes with the number of runs each holds.
const NODE_SELECT: &str = "SELECT n.id, n.name, n.properties, n.labels, n.slots, n.last_seen, \
     n.state AS admin_state, n.state_reason, n.infra_errors, n.health, \
     COALESCE(r.running, 0) AS running FROM nodes n LEFT JOIN (SELECT node_id, COUNT(*) AS \
     running FROM runs WHERE state = 'running' GROUP BY node_id) r ON r.node_id = n.id";

fn node_info(row: &sqlx::any::AnyRow, now: Millis, lost_after: DurationMs) -> Result<NodeInfo> {
    let last_seen: Millis = typed(row, "last_seen")?;
    let running = u32_of(col(row, "running")?);
    let admin = crate::pool::parse_state(&col::<String>(row, "admin_state")?)?;
    let health: Option<String> = col(row, "health")?;
    let mut state_reason: Option<String> = col(row, "state_reason")?;
    let state = if admin != NodeState::Enabled {
        admin.as_str()
    } else if now.since(last_seen) > lost_after {
        "lost"
    } else if health.is_some() {
        state_reason = health;
        "unhealthy"
    } else if running > 0 {
        "busy"
    } else {
        "idle"
    };
    Ok(NodeInfo {
        id: typed(row, "id")?,
        name: col(row, "name")?,
        properties: properties(row)?,
        slots: u32_of(col(row, "slots")?),
        state: state.to_string(),
        running,
        last_seen: rfc3339(last_seen),
        state_reason,
        infra_errors: u32_of(col(row, "infra_errors")?),
    })
}

/// A node's properties with the labels operators gave it merged into its tags.
pub(crate) fn properties(row: &sqlx::any::AnyRow) -> Result<NodeProperties> {
    let mut props: NodeProperties = json(&col::<String>(row, "properties")?, "node properties")?;
    if let Some(labels) = col::<Option<String>>(row, "labels")? {
        let labels: std::collections::BTreeMap<String, String> = json(&labels, "node labels")?;
        props.tags.extend(labels);
    }
    Ok(props)
}
