//! What a node finds out about its machine.

use std::collections::BTreeMap;

use lwr_model::NodeProperties;

pub fn discover(tags: BTreeMap<String, String>) -> NodeProperties {
    NodeProperties {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        hostname: hostname(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_mb: memory_mb().unwrap_or(0),
        tags,
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Total memory from /proc/meminfo (Linux); `None` elsewhere.
fn memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn discovers_this_machine() {
        let p = super::discover(Default::default());
        assert_eq!(p.os, std::env::consts::OS);
        assert!(p.cores >= 1);
        assert!(!p.hostname.is_empty());
    }
}
