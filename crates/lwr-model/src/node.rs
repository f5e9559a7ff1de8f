//! Nodes: the properties a node reports and the requirements a job places on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a node says about itself when it registers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeProperties {
    /// `std::env::consts::OS`, e.g. `linux`, `macos`.
    pub os: String,
    /// `std::env::consts::ARCH`, e.g. `x86_64`, `aarch64`.
    pub arch: String,
    pub hostname: String,
    pub cores: u32,
    pub memory_mb: u64,
    /// Operator-given labels: `--tag gpu=yes` gives `gpu: "yes"`, a bare `--tag build-tools`
    /// gives `build-tools: "true"`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl NodeProperties {
    /// The value of a property by name: built-in properties first, then tags.
    pub fn get(&self, key: &str) -> Option<String> {
        match key {
            "os" => Some(self.os.clone()),
            "arch" => Some(self.arch.clone()),
            "hostname" => Some(self.hostname.clone()),
            "cores" => Some(self.cores.to_string()),
            "memory_mb" => Some(self.memory_mb.to_string()),
            _ => self.tags.get(key).cloned(),
        }
    }
}

/// Properties every node reports itself; they cannot be tags or labels.
pub fn is_builtin(key: &str) -> bool {
    matches!(key, "os" | "arch" | "hostname" | "cores" | "memory_mb")
}

/// Parses `key=value` (or a bare `key`, meaning `key=true`) as given to `--tag`.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => (s.trim(), "true"),
    };
    if k.is_empty() {
        return Err(format!("tag '{s}' has an empty key; use key=value or key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// What a job requires of its node (`node:` in lwr.yml). Every listed property must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Requirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Tags the node must carry, whatever their value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Any other `key: value`, matched against the node's tags (and built-in properties).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.os.is_none()
            && self.arch.is_none()
            && self.hostname.is_none()
            && self.tags.is_empty()
            && self.properties.is_empty()
    }

    /// `None` when the node meets every requirement, otherwise the first one it does not
    /// meet, worded for a person (`os=plan9 (node has linux)`).
    pub fn unmet_by(&self, node: &NodeProperties) -> Option<String> {
        let fixed = [
            ("os", &self.os, &node.os),
            ("arch", &self.arch, &node.arch),
            ("hostname", &self.hostname, &node.hostname),
        ];
        for (key, want, have) in fixed {
            if let Some(want) = want
                && !want.eq_ignore_ascii_case(have)
            {
                return Some(format!("{key}={want} (node has {have})"));
            }
        }
        for tag in &self.tags {
            if !node.tags.contains_key(tag) {
                return Some(format!("tag {tag} (node lacks it)"));
            }
        }
        for (key, want) in &self.properties {
            match node.get(key) {
                Some(have) if &have == want => {}
                Some(have) => return Some(format!("{key}={want} (node has {have})")),
                None => return Some(format!("{key}={want} (node lacks {key})")),
            }
        }
        None
    }

    pub fn matches(&self, node: &NodeProperties) -> bool {
        self.unmet_by(node).is_none()
    }

    /// The requirements as one line, for listings and reasons: `os=linux, tags=[gpu]`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("os", &self.os),
            ("arch", &self.arch),
            ("hostname", &self.hostname),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags=[{}]", self.tags.join(", ")));
        }
        for (k, v) in &self.properties {
            parts.push(format!("{k}={v}"));
        }
        if parts.is_empty() {
            "any node".to_string()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_node() -> NodeProperties {
        NodeProperties {
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: "box1".into(),
            cores: 8,
            memory_mb: 16000,
            tags: [
                ("gpu".to_string(), "yes".to_string()),
                ("speed".into(), "10".into()),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn empty_requirements_match_any_node() {
        assert!(Requirements::default().matches(&linux_node()));
        assert_eq!(Requirements::default().describe(), "any node");
    }

    #[test]
    fn each_kind_of_requirement_is_checked() {
        let node = linux_node();
        let os = Requirements {
            os: Some("plan9".into()),
            ..Default::default()
        };
        assert_eq!(os.unmet_by(&node).unwrap(), "os=plan9 (node has linux)");
        let tag = Requirements {
            tags: vec!["build-tools".into()],
            ..Default::default()
        };
        assert!(tag.unmet_by(&node).unwrap().contains("build-tools"));
        let gpu = Requirements {
            properties: [("gpu".to_string(), "yes".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert!(gpu.matches(&node));
        let slow = Requirements {
            properties: [("speed".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert_eq!(slow.unmet_by(&node).unwrap(), "speed=1 (node has 10)");
        let host = Requirements {
            hostname: Some("BOX1".into()),
            ..Default::default()
        };
        assert!(host.matches(&node));
    }

    #[test]
    fn tags_parse_with_and_without_values() {
        assert_eq!(parse_tag("gpu=yes").unwrap(), ("gpu".into(), "yes".into()));
        assert_eq!(
            parse_tag("build-tools").unwrap(),
            ("build-tools".into(), "true".into())
        );
        assert!(parse_tag("=x").is_err());
    }
}
