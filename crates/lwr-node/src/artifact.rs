//! A finished job's artifacts: found by their declared globs, moved out of the slot dir
//! into the run's outbox (`WORK/outbox/RUN/`) before the slot is emptied, and uploaded from
//! there with the manifest until the server takes them. Each file is read once: hashed
//! while it is sent, then committed with that hash (the server checks it against what it
//! received).
//!
//! A job that declares no artifacts and writes no `$LWR_EXTRA` has no outbox: nothing here
//! costs it a file or a request.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use lwr_client::{ArtifactMeta, Client, ClientError, StatusCode};
use lwr_model::api::{ManifestUpload, Outcome, RunResult};
use lwr_model::manifest::{self, MissingArtifact};
use lwr_model::{ArtifactDecl, NodeId, RunId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::glob;

/// Largest `$LWR_EXTRA` file read.
const MAX_EXTRA_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub(crate) enum ArtifactError {
    #[error("artifact '{name}': path '{path}': {reason}")]
    BadPath {
        name: String,
        path: String,
        reason: String,
    },
    #[error("artifact '{name}': {file}: {source}")]
    File {
        name: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("$LWR_EXTRA ({file}): {reason}")]
    Extra { file: String, reason: String },
    #[error("cannot keep the artifacts of run {run} in {dir}: {source}")]
    Outbox {
        run: RunId,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a run's outbox holds: its artifacts and the node's part of its manifest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub artifacts: Vec<Planned>,
    pub missing: Vec<MissingArtifact>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Planned {
    pub name: String,
    pub kind: String,
    pub path: String,
    /// Set by nodes that hashed on collecting (outboxes older than hash-while-sending):
    /// such an artifact is uploaded with its hash up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub size: u64,
    pub content_type: String,
    /// File name in the outbox.
    pub file: String,
}

pub(crate) fn outbox(work_dir: &Path, run: RunId) -> PathBuf {
    work_dir.join("outbox").join(run.to_string())
}

/// SHA-256 and size of a file, read in chunks (never whole in memory).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Reads and removes the job's `$LWR_EXTRA` file: `None` when the job wrote none.
pub(crate) fn take_extra(
    path: &Path,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ArtifactError> {
    let bad = |reason: String| ArtifactError::Extra {
        file: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let text = if meta.len() > MAX_EXTRA_BYTES {
        Err(format!("larger than {MAX_EXTRA_BYTES} bytes"))
    } else {
        std::fs::read(path).map_err(|e| e.to_string())
    };
    let _ = std::fs::remove_file(path);
    match serde_json::from_slice::<serde_json::Value>(&text.map_err(bad)?) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(bad("must hold a JSON object".into())),
        Err(e) => Err(bad(format!("not JSON: {e}"))),
    }
}

/// Writes the `$LWR_MANIFESTS` file: each need with the URL of its manifest.
pub(crate) fn write_manifests_file(
    path: &Path,
    server: &str,
    manifests: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let absolute: BTreeMap<&str, String> = manifests
        .iter()
        .map(|(need, loc)| (need.as_str(), format!("{server}{loc}")))
        .collect();
    let text = serde_json::to_vec_pretty(&absolute).map_err(std::io::Error::other)?;
    // Rewritten in place, never truncated to zero first: ext4 flushes a file on close after
    // a truncate-to-zero and rewrite (auto_da_alloc), which costs chained jobs a lot.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(&text)?;
    file.set_len(text.len() as u64)
}

/// Collects a finished run's artifacts into its outbox and says how that changes the
/// result: a missing declared artifact (not optional) or a bad path fails the run.
/// Returns true when the run has an outbox to upload.
pub(crate) fn collect(
    work_dir: &Path,
    job_dir: &Path,
    decls: &[ArtifactDecl],
    extra: serde_json::Map<String, serde_json::Value>,
    result: &mut RunResult,
) -> Result<bool, ArtifactError> {
    let run = result.run_id;
    let dir = outbox(work_dir, run);
    let outbox_err = |source| ArtifactError::Outbox {
        run,
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(outbox_err)?;
    let mut plan = Plan {
        extra,
        ..Plan::default()
    };
    let mut failures = Vec::new();
    for decl in decls {
        match find_files(job_dir, decl) {
            Ok(files) if files.is_empty() => {
                if !decl.optional {
                    failures.push(format!(
                        "declared artifact '{}' ({}) is missing",
                        decl.name, decl.path
                    ));
                }
                plan.missing.push(MissingArtifact {
                    name: decl.name.clone(),
                    kind: decl.kind.clone(),
                    path: decl.path.clone(),
                    optional: decl.optional,
                });
            }
            Ok(files) => {
                let many = files.len() > 1;
                for rel in files {
                    let name = match many {
                        true => format!("{}/{rel}", decl.name),
                        false => decl.name.clone(),
                    };
                    let file = plan.artifacts.len().to_string();
                    let size = keep(job_dir, &rel, &dir.join(&file), decl)?;
                    plan.artifacts.push(Planned {
                        content_type: manifest::content_type(&rel).to_string(),
                        name,
                        kind: decl.kind.clone(),
                        path: rel,
                        sha256: None,
                        size,
                        file,
                    });
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let text = serde_json::to_vec(&plan).map_err(|e| outbox_err(std::io::Error::other(e)))?;
    let tmp = dir.join("plan.json.tmp");
    std::fs::write(&tmp, text).map_err(outbox_err)?;
    std::fs::rename(&tmp, dir.join("plan.json")).map_err(outbox_err)?;
    if !failures.is_empty() {
        fail(result, &failures.join("; "));
    }
    Ok(true)
}

/// Marks a run failed for `why`; a run that already failed keeps its own reason first.
pub(crate) fn fail(result: &mut RunResult, why: &str) {
    match result.outcome {
        Outcome::Succeeded => {
            result.outcome = Outcome::Failed;
            result.reason = Some(why.to_string());
        }
        Outcome::Failed | Outcome::Exception => {
            let reason = match result.reason.take() {
                Some(r) => format!("{r}; {why}"),
                None => why.to_string(),
            };
            result.reason = Some(reason);
        }
    }
}

/// The files a declaration matches, each checked to stay inside the job dir.
fn find_files(job_dir: &Path, decl: &ArtifactDecl) -> Result<Vec<String>, ArtifactError> {
    let bad = |reason: String| ArtifactError::BadPath {
        name: decl.name.clone(),
        path: decl.path.clone(),
        reason,
    };
    manifest::check_artifact_path(&decl.path).map_err(bad)?;
    let files = glob::find(job_dir, &decl.path).map_err(bad)?;
    let root = job_dir.canonicalize().map_err(|e| bad(e.to_string()))?;
    for rel in &files {
        // A symlink may point anywhere: what it resolves to must be in the job dir too.
        let real = job_dir
            .join(rel)
            .canonicalize()
            .map_err(|e| bad(e.to_string()))?;
        if !real.starts_with(&root) {
            return Err(bad(format!("'{rel}' leads outside the job dir")));
        }
    }
    Ok(files)
}

/// Moves (or, for a symlink, copies) a matched file into the outbox; returns its size.
/// It is hashed later, while it is uploaded.
fn keep(job_dir: &Path, rel: &str, dest: &Path, decl: &ArtifactDecl) -> Result<u64, ArtifactError> {
    let src = job_dir.join(rel);
    let file_err = |source| ArtifactError::File {
        name: decl.name.clone(),
        file: rel.to_string(),
        source,
    };
    let is_link = std::fs::symlink_metadata(&src)
        .map_err(file_err)?
        .file_type()
        .is_symlink();
    // The slot dir is emptied next: renaming takes the file out of its way at no cost.
    if is_link || std::fs::rename(&src, dest).is_err() {
        std::fs::copy(&src, dest).map_err(file_err)?;
    }
    Ok(std::fs::metadata(dest).map_err(file_err)?.len())
}

/// Uploads what a run's outbox holds: artifacts, then the manifest; then removes the
/// outbox. A refusal by the server (4xx) of an artifact fails the run, naming it; a
/// duplicate means an earlier attempt got through. Network errors are returned, to retry.
pub(crate) async fn upload(
    client: &Client,
    work_dir: &Path,
    node: NodeId,
    result: &mut RunResult,
) -> Result<(), ClientError> {
    let run = result.run_id;
    let dir = outbox(work_dir, run);
    let plan: Plan = match std::fs::read(dir.join("plan.json")) {
        Ok(text) => match serde_json::from_slice(&text) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!("run {run}: unreadable artifact plan, artifacts dropped: {e}");
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(());
            }
        },
        Err(_) => return Ok(()), // already uploaded
    };
    let mut sent = Vec::new();
    for a in &plan.artifacts {
        let meta = ArtifactMeta {
            name: a.name.clone(),
            sha256: a.sha256.clone().unwrap_or_default(),
            kind: a.kind.clone(),
            path: a.path.clone(),
            content_type: a.content_type.clone(),
        };
        let file = dir.join(&a.file);
        let started = std::time::Instant::now();
        let uploaded = match &a.sha256 {
            Some(_) => client.upload_artifact(run, node, &meta, &file).await,
            None => client
                .upload_artifact_hashing(run, node, &meta, &file)
                .await
                .map(|_| ()),
        };
        match uploaded {
            Ok(()) => {
                tracing::info!(
                    "run {run}: artifact '{}' uploaded ({} bytes) in {:.3} s",
                    a.name,
                    a.size,
                    started.elapsed().as_secs_f64()
                );
                sent.push(a.name.clone());
            }
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => sent.push(a.name.clone()),
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                tracing::warn!("run {run}: artifact '{}' refused: {e}", a.name);
                fail(
                    result,
                    &format!("artifact '{}' refused by the server: {e}", a.name),
                );
            }
            Err(e) => return Err(e),
        }
    }
    let upload = ManifestUpload {
        artifacts: sent,
        missing: plan.missing,
        extra: plan.extra,
    };
    match client.put_manifest(run, node, &upload).await {
        Ok(()) => {}
        Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
            if e.status() != Some(StatusCode::CONFLICT) {
                tracing::warn!("run {run}: manifest refused: {e}");
            }
        }
        Err(e) => return Err(e),
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!("run {run}: cannot remove {}: {e}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, path: &str, optional: bool) -> ArtifactDecl {
        ArtifactDecl {
            name: name.into(),
            path: path.into(),
            kind: "other".into(),
            optional,
        }
    }

    #[test]
    fn hashes_stream_through_a_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, "installer-bytes").unwrap();
        let (sha, size) = sha256_file(&f).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(b"installer-bytes")));
        assert_eq!(size, 15);
        // 1 MiB + 1 crosses chunk boundaries; compare with a one-shot hash.
        let big = vec![7u8; (1 << 20) + 1];
        std::fs::write(&f, &big).unwrap();
        let (sha, size) = sha256_file(&f).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&big)));
        assert_eq!(size, big.len() as u64);
    }

    #[test]
    fn artifacts_move_to_the_outbox_and_missing_ones_fail_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, job) = (tmp.path().join("work"), tmp.path().join("job"));
        std::fs::create_dir_all(job.join("dist")).unwrap();
        std::fs::write(job.join("dist/app-1.2.3.tar.gz"), "installer-bytes").unwrap();
        std::fs::write(job.join("dist/a.sym"), "a").unwrap();
        std::fs::write(job.join("dist/b.sym"), "b").unwrap();
        let decls = [
            decl("installer", "dist/app-*.tar.gz", false),
            decl("symbols", "dist/*.sym", false),
            decl("notes", "NOTES.txt", true),
        ];
        let mut result = RunResult::succeeded(RunId(5));
        assert!(collect(&work, &job, &decls, Default::default(), &mut result).unwrap());
        assert_eq!(result.outcome, Outcome::Succeeded);
        assert!(!job.join("dist/app-1.2.3.tar.gz").exists(), "moved out");
        let plan: Plan = serde_json::from_slice(
            &std::fs::read(outbox(&work, RunId(5)).join("plan.json")).unwrap(),
        )
        .unwrap();
        let names: Vec<&str> = plan.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["installer", "symbols/dist/a.sym", "symbols/dist/b.sym"]
        );
        assert_eq!(plan.artifacts[0].sha256, None, "hashed while uploading");
        assert_eq!(plan.artifacts[0].size, 15);
        assert_eq!(plan.missing.len(), 1);
        assert!(plan.missing[0].optional);

        let mut result = RunResult::succeeded(RunId(6));
        collect(
            &work,
            &job,
            &[decl("report", "out/*.xml", false)],
            Default::default(),
            &mut result,
        )
        .unwrap();
        assert_eq!(result.outcome, Outcome::Failed);
        assert!(
            result
                .reason
                .unwrap()
                .contains("'report' (out/*.xml) is missing")
        );
    }

    #[test]
    fn paths_that_escape_the_job_dir_fail_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, job) = (tmp.path().join("work"), tmp.path().join("job"));
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(tmp.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), job.join("link")).unwrap();
        for path in ["../secret", "/etc/passwd", "link"] {
            let mut result = RunResult::succeeded(RunId(7));
            collect(
                &work,
                &job,
                &[decl("x", path, false)],
                Default::default(),
                &mut result,
            )
            .unwrap();
            assert_eq!(result.outcome, Outcome::Failed, "{path}");
            let reason = result.reason.unwrap();
            assert!(reason.contains("artifact 'x'"), "{path}: {reason}");
        }
        assert!(tmp.path().join("secret").exists());
    }

    #[test]
    fn extra_must_be_a_json_object() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("extra.json");
        assert!(take_extra(&f).unwrap().is_none());
        std::fs::write(&f, r#"{"version": "1.2.3"}"#).unwrap();
        assert_eq!(take_extra(&f).unwrap().unwrap()["version"], "1.2.3");
        assert!(!f.exists(), "read once, then removed");
        std::fs::write(&f, "[1]").unwrap();
        assert!(
            take_extra(&f)
                .unwrap_err()
                .to_string()
                .contains("JSON object")
        );
    }
}
