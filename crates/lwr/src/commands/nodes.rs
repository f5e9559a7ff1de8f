//! `lwr nodes disable|enable|quarantine|reboot|reimage|label`: an operator's changes to one node.

use std::process::ExitCode;

use anyhow::Context;
use lwr_client::Client;
use lwr_model::NodeState;
use lwr_model::api::{LabelNode, NodeInfo, SetNodeState};

use crate::cli::NodesAction;

pub async fn act(client: &Client, action: NodesAction, json: bool) -> anyhow::Result<ExitCode> {
    let (name, info) = match action {
        NodesAction::Disable(a) => (
            a.name.clone(),
            state(client, &a.name, NodeState::Disabled, a.reason).await?,
        ),
        NodesAction::Enable(a) => (
            a.name.clone(),
            state(client, &a.name, NodeState::Enabled, a.reason).await?,
        ),
        NodesAction::Reboot(a) => (
            a.name.clone(),
            state(
                client,
                &a.name,
                NodeState::Draining,
                a.reason.or(Some("reboot requested".into())),
            )
            .await?,
        ),
        NodesAction::Reimage(a) => (
            a.name.clone(),
            set(
                client,
                &a.name,
                SetNodeState {
                    state: NodeState::Draining,
                    reason: a.reason.or(Some("reimage requested".into())),
                    reimage: true,
                },
            )
            .await?,
        ),
        NodesAction::Quarantine(a) => (
            a.name.clone(),
            state(client, &a.name, NodeState::Quarantined, a.reason).await?,
        ),
        NodesAction::Label(a) => {
            let mut labels = std::collections::BTreeMap::new();
            for label in &a.labels {
                // The same forms as `lwr node --tag`; an empty value removes the label.
                let (k, v) = lwr_model::node::parse_tag(label).map_err(anyhow::Error::msg)?;
                labels.insert(k, v);
            }
            let info = client
                .label_node(&a.name, &LabelNode { labels })
                .await
                .with_context(|| format!("labelling node {}", a.name))?;
            (a.name, info)
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let tags: Vec<String> = info
            .properties
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        match tags.is_empty() {
            true => outln!("node {name}: {}", info.state),
            false => outln!("node {name}: {} (tags {})", info.state, tags.join(",")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn state(
    client: &Client,
    name: &str,
    state: NodeState,
    reason: Option<String>,
) -> anyhow::Result<NodeInfo> {
    let req = SetNodeState {
        state,
        reason,
        reimage: false,
    };
    set(client, name, req).await
}

async fn set(client: &Client, name: &str, req: SetNodeState) -> anyhow::Result<NodeInfo> {
    client
        .set_node_state(name, &req)
        .await
        .with_context(|| format!("setting node {name} {}", req.state.as_str()))
}

/// `lwr node-bad REASON`, inside a job: tells the job's node, through the file its node
/// named in `$LWR_NODE_BAD`, to have itself quarantined when the job ends.
pub fn node_bad(reason: &str) -> anyhow::Result<ExitCode> {
    let Some(file) = std::env::var_os(lwr_node::NODE_BAD_ENV) else {
        anyhow::bail!(
            "${} is not set: lwr node-bad marks the node of the job it runs in; run it inside a job",
            lwr_node::NODE_BAD_ENV
        );
    };
    let reason = match reason.trim() {
        "" => "no reason given",
        r => r,
    };
    std::fs::write(&file, reason).with_context(|| {
        format!(
            "cannot write {} (${})",
            std::path::Path::new(&file).display(),
            lwr_node::NODE_BAD_ENV
        )
    })?;
    eprintln!("lwr: this node will be quarantined when the job ends: {reason}");
    Ok(ExitCode::SUCCESS)
}
