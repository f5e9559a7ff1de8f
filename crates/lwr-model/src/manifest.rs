//! Artifact manifests: the versioned JSON document every finished run publishes.
//!
//! A manifest says how a run ended and what it produced, with sizes, hashes and locations,
//! so that dependent jobs act on it instead of guessing URLs. The JSON Schema in
//! `schemas/manifest-v1.json` is generated from these types ([`schema_json`]).
//!
//! Versioning rule: readers reject an unknown major version ([`read`]) and ignore fields
//! they do not know, so fields may be added within v1; renaming or removing one is v2.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::{GraphId, JobId, RunId};
use crate::job::RunState;

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// The artifact name of a run's log in its manifest. Reserved: a job cannot declare it.
pub const LOG_ARTIFACT: &str = "log";

/// Artifact kinds with an agreed meaning; any other non-empty word is a custom kind.
pub const KNOWN_KINDS: [&str; 6] = ["installer", "symbols", "tests", "log", "report", "other"];

/// A run's manifest, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(title = "lwr artifact manifest, version 1")]
pub struct Manifest {
    /// Always 1 for this format; readers reject any other value.
    #[schemars(range(min = 1, max = 1))]
    pub manifest_version: u32,
    pub job: ManifestJob,
    /// What the run produced, its log included (kind `log`).
    pub artifacts: Vec<Artifact>,
    /// Declared artifacts the run did not produce. A missing one that is not optional
    /// failed the run.
    #[serde(default)]
    pub missing: Vec<MissingArtifact>,
    /// Free-form data the job wrote to the file named by `$LWR_EXTRA` (a JSON object).
    /// What proves generally useful here moves into the structured part in the next
    /// version of the format.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The job and the run the manifest describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ManifestJob {
    /// Job id on the server.
    pub id: JobId,
    /// Normalized job name, unique in its graph.
    pub name: String,
    pub graph_id: GraphId,
    /// The repository the graph came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The commit the graph came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Run (attempt) number, 1 for the first.
    pub run_number: u32,
    /// Run id on the server.
    pub run_id: RunId,
    /// A UUID for the run, unique across servers.
    pub uid: String,
    /// How the run stands: `running` until its node reports the result.
    pub status: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the run ended as it did, when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Name of the node that ran it.
    pub node: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; absent while the run is going.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Artifact {
    /// Unique in the run. A declaration whose path matches several files gives
    /// `NAME/PATH` per file.
    pub name: String,
    /// `installer`, `symbols`, `tests`, `log`, `report`, `other`, or a custom word.
    pub kind: String,
    /// Path of the file in the job dir (empty for the log).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    pub content_type: String,
    /// URL on the server to download it from.
    pub location: String,
    /// RFC 3339 time after which the server may delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A declared artifact the run did not produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MissingArtifact {
    pub name: String,
    pub kind: String,
    /// The declared path (a glob in the job dir).
    pub path: String,
    pub optional: bool,
}

impl Manifest {
    /// The artifact named `name`.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("not a manifest: {0}")]
    Malformed(String),
    #[error(
        "manifest version {found} is not supported (this lwr reads version {MANIFEST_VERSION}); \
         upgrade lwr to read it"
    )]
    UnsupportedVersion { found: u64 },
}

/// Reads a manifest: rejects an unknown major version with a clear error, ignores unknown
/// fields (a later v1 server may add some).
pub fn read(text: &[u8]) -> Result<Manifest, ManifestError> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    let version = value
        .get("manifest_version")
        .ok_or_else(|| ManifestError::Malformed("no manifest_version".into()))?;
    let found = version
        .as_u64()
        .ok_or_else(|| ManifestError::Malformed(format!("manifest_version is {version}")))?;
    if found != u64::from(MANIFEST_VERSION) {
        return Err(ManifestError::UnsupportedVersion { found });
    }
    serde_json::from_value(value).map_err(|e| ManifestError::Malformed(e.to_string()))
}

/// The JSON Schema of manifest v1, as the repository keeps it and the server serves it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Manifest);
    let mut text =
        serde_json::to_string_pretty(&schema).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// A well-formed artifact kind: a known kind or a custom word of `a-z0-9-_.`.
pub fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Why `name` cannot name an artifact, if it cannot: it is stored and fetched by name, so
/// it must be a relative path of plain components.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an artifact name must not be empty".into());
    }
    if name.len() > 512 {
        return Err("an artifact name must be at most 512 bytes".into());
    }
    if name.contains('\0') {
        return Err("an artifact name must not contain NUL".into());
    }
    if name.chars().any(|c| crate::text::is_unsafe(c) || c == '\\') {
        return Err("an artifact name must not contain control characters or '\\'".into());
    }
    if name.starts_with('/') {
        return Err(format!("artifact name '{name}' is an absolute path"));
    }
    for part in name.split('/') {
        match part {
            "" => {
                return Err(format!(
                    "artifact name '{name}' has an empty path component"
                ));
            }
            "." | ".." => {
                return Err(format!(
                    "artifact name '{name}' contains '{part}': names stay inside their run"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a declared artifact path cannot be used, if it cannot: it must stay in the job dir.
pub fn check_artifact_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path must not be empty".into());
    }
    if path.contains('\0') {
        return Err("the path must not contain NUL".into());
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(format!(
            "'{path}' is absolute; paths are relative to the job dir"
        ));
    }
    if path.split(['/', '\\']).any(|p| p == "..") {
        return Err(format!("'{path}' contains '..'; paths stay in the job dir"));
    }
    Ok(())
}

/// True for 64 lowercase hex digits.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The content type of a file, from its name; `application/octet-stream` when unknown.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    const TYPES: &[(&str, &str)] = &[
        (".tar.gz", "application/gzip"),
        (".tgz", "application/gzip"),
        (".gz", "application/gzip"),
        (".tar.bz2", "application/x-bzip2"),
        (".tar.xz", "application/x-xz"),
        (".xz", "application/x-xz"),
        (".zst", "application/zstd"),
        (".tar", "application/x-tar"),
        (".zip", "application/zip"),
        (".apk", "application/vnd.android.package-archive"),
        (".dmg", "application/x-apple-diskimage"),
        (".exe", "application/vnd.microsoft.portable-executable"),
        (".msi", "application/x-msi"),
        (".deb", "application/vnd.debian.binary-package"),
        (".rpm", "application/x-rpm"),
        (".json", "application/json"),
        (".xml", "application/xml"),
        (".html", "text/html"),
        (".htm", "text/html"),
        (".txt", "text/plain"),
        (".log", "text/plain"),
        (".md", "text/markdown"),
        (".csv", "text/csv"),
    ];
    TYPES
        .iter()
        .find(|(ext, _)| name.ends_with(ext))
        .map(|(_, t)| *t)
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            manifest_version: 1,
            job: ManifestJob {
                id: JobId(2),
                name: "build".into(),
                graph_id: GraphId(1),
                repository: None,
                revision: Some("abc".into()),
                run_number: 1,
                run_id: RunId(7),
                uid: "u".into(),
                status: RunState::Succeeded,
                exit_code: Some(0),
                reason: None,
                node: "n1".into(),
                started_at: "2026-01-01T00:00:00.000Z".into(),
                finished_at: None,
            },
            artifacts: vec![Artifact {
                name: "installer".into(),
                kind: "installer".into(),
                path: "dist/app-1.2.3.tar.gz".into(),
                size: 3,
                sha256: "0".repeat(64),
                content_type: "application/gzip".into(),
                location: "http://h/v1/runs/7/artifacts/installer".into(),
                expires_at: None,
            }],
            missing: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn a_manifest_round_trips_and_unknown_fields_are_ignored() {
        let m = sample();
        let mut v = serde_json::to_value(&m).unwrap();
        v["future_field"] = serde_json::json!({"x": 1});
        v["job"]["another"] = serde_json::json!(3);
        let back = read(v.to_string().as_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.artifact("installer").unwrap().size, 3);
    }

    #[test]
    fn unknown_versions_are_rejected_clearly() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["manifest_version"] = serde_json::json!(2);
        let e = read(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(e, ManifestError::UnsupportedVersion { found: 2 }));
        assert!(e.to_string().contains("version 2 is not supported"), "{e}");
        v["manifest_version"] = serde_json::json!("1");
        assert!(matches!(
            read(v.to_string().as_bytes()),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(read(b"{}"), Err(ManifestError::Malformed(_))));
        assert!(matches!(read(b"nope"), Err(ManifestError::Malformed(_))));
    }

    #[test]
    fn artifact_names_stay_inside_their_run() {
        for ok in ["installer", "symbols/dist/a.sym", "app-1.2.3.tar.gz", "a b"] {
            assert!(check_artifact_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "nul\0x",
            "a\\b",
            "tab\t",
        ] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_artifact_name(&"x".repeat(513)).is_err());
    }

    #[test]
    fn artifact_paths_stay_in_the_job_dir() {
        assert!(check_artifact_path("dist/*.tar.gz").is_ok());
        assert!(check_artifact_path("**/report.xml").is_ok());
        for bad in ["", "/abs", "../up", "a/../../b", "a\\..\\b"] {
            assert!(check_artifact_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_hex_and_content_types() {
        assert!(KNOWN_KINDS.iter().all(|k| valid_kind(k)));
        assert!(valid_kind("robocop-apk"));
        assert!(!valid_kind("Bad Kind") && !valid_kind(""));
        assert!(valid_sha256(&"a1".repeat(32)));
        assert!(!valid_sha256("A1") && !valid_sha256(&"g".repeat(64)));
        assert_eq!(content_type("dist/app-1.2.3.tar.gz"), "application/gzip");
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }

    #[test]
    fn the_schema_names_every_field() {
        let s = schema_json();
        for field in [
            "manifest_version",
            "sha256",
            "location",
            "extra",
            "missing",
            "uid",
        ] {
            assert!(s.contains(field), "{field}");
        }
    }
}
