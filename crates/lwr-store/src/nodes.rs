//! Node registration and listing.

use lwr_model::NodeProperties;
use lwr_model::api::{NodeInfo, RegisterNode};

use crate::error::Op;
use crate::rows::{col, json, to_json, u32_of};
use crate::{Result, Store, StoreError, rfc3339};

/// A node that has not been heard from for this long is shown as `lost`.
pub const LOST_AFTER_MS: i64 = 60_000;

impl Store {
    /// Registers a node, or updates the one with the same name (a node restarting keeps its
    /// identity, so its history stays with it). Returns the node id.
    pub async fn register_node(&self, reg: &RegisterNode, now: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO nodes (name, properties, slots, registered_at, last_seen) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (name) DO UPDATE SET properties = excluded.properties, \
             slots = excluded.slots, last_seen = excluded.last_seen \
             RETURNING id",
        )
        .bind(reg.name.clone())
        .bind(to_json(&reg.properties, "node properties")?)
        .bind(i64::from(reg.slots))
        .bind(now)
        .fetch_one(&self.write)
        .await
        .op("registering node")?;
        col(&row, "id")
    }

    /// A node's properties, or `NotFound` when the server forgot it (the node re-registers).
    pub async fn node_properties(&self, node_id: i64) -> Result<(String, NodeProperties)> {
        let row = sqlx::query("SELECT name, properties FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(&self.read)
            .await
            .op("reading node")?
            .ok_or_else(|| StoreError::NotFound { what: "node", id: node_id.to_string() })?;
        let props = json(&col::<String>(&row, "properties")?, "node properties")?;
        Ok((col(&row, "name")?, props))
    }

    pub async fn nodes(&self, now: i64) -> Result<Vec<NodeInfo>> {
        let rows = sqlx::query(
            "SELECT n.id, n.name, n.properties, n.slots, n.last_seen, \
             (SELECT COUNT(*) FROM runs r WHERE r.node_id = n.id AND r.state = 'running') AS running \
             FROM nodes n ORDER BY n.name",
        )
        .fetch_all(&self.read)
        .await
        .op("listing nodes")?;
        rows.iter()
            .map(|row| {
                let last_seen: i64 = col(row, "last_seen")?;
                let running = u32_of(col(row, "running")?);
                let state = if now - last_seen > LOST_AFTER_MS {
                    "lost"
                } else if running > 0 {
                    "busy"
                } else {
                    "idle"
                };
                Ok(NodeInfo {
                    id: col(row, "id")?,
                    name: col(row, "name")?,
                    properties: json(&col::<String>(row, "properties")?, "node properties")?,
                    slots: u32_of(col(row, "slots")?),
                    state: state.to_string(),
                    running,
                    last_seen: rfc3339(last_seen),
                })
            })
            .collect()
    }
}
