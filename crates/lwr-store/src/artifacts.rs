//! Artifact rows, manifests and expiry. The bytes live in the server's artifact store; the
//! database says which run owns what, with its hash, and when it expires.

use lwr_model::manifest::{
    Artifact, LOG_ARTIFACT, MANIFEST_VERSION, Manifest, ManifestJob, MissingArtifact,
};
use lwr_model::{JobId, Millis, NodeId, RunId, RunState};

use crate::error::Op;
use crate::rows::{col, json, to_json, typed, typed_opt, u32_of};
use crate::{Result, Store, StoreError, rfc3339};

/// SHA-256 of nothing: the hash of a log a job never wrote to.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The one field of a stored job spec an upload needs.
#[derive(serde::Deserialize)]
struct JobSpecExpiry {
    #[serde(default)]
    expires_secs: Option<u64>,
}

/// What the server needs to accept an upload for a run.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    pub node_id: NodeId,
    pub job_id: JobId,
    /// The job's own `expires`, if it set one.
    pub expires_secs: Option<u64>,
    /// The run's state now.
    pub state: RunState,
    /// True when the server ended the run without its node (cancelled, or its lease ran
    /// out): the node may still send what the run left, once.
    pub ended_by_server: bool,
    /// The SHA-256 of its stored log, once one is stored.
    pub log_sha256: Option<String>,
    /// The run's manifest is recorded.
    pub has_manifest: bool,
}

/// An artifact to record, already stored under `storage_key`.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub run_id: RunId,
    pub name: String,
    pub kind: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub storage_key: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// A stored artifact as the server serves it.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub id: i64,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub storage_key: String,
}

impl Store {
    /// The owner and expiry policy of run `run_id`, or `None` if there is no such run.
    pub async fn upload_target(&self, run_id: RunId) -> Result<Option<UploadTarget>> {
        let row = sqlx::query(
            "SELECT r.node_id, r.job_id, j.spec, r.state, r.reason, r.log_sha256, \
             (SELECT COUNT(*) FROM manifests m WHERE m.run_id = r.id) AS manifests \
             FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id = $1",
        )
        .bind(run_id.get())
        .fetch_optional(&self.node)
        .await
        .op("reading run for upload")?;
        let Some(row) = row else { return Ok(None) };
        let spec: JobSpecExpiry = json(&col::<String>(&row, "spec")?, "job spec")?;
        let state_text: String = col(&row, "state")?;
        let state = RunState::ALL
            .into_iter()
            .find(|s| s.as_str() == state_text)
            .ok_or_else(|| StoreError::Corrupt {
                what: "run state",
                detail: format!("run {run_id}: '{state_text}'"),
            })?;
        let reason: Option<String> = col(&row, "reason")?;
        Ok(Some(UploadTarget {
            node_id: typed(&row, "node_id")?,
            job_id: typed(&row, "job_id")?,
            expires_secs: spec.expires_secs,
            state,
            ended_by_server: state == RunState::Cancelled
                || (state == RunState::Exception && reason.as_deref() == Some("claim-expired")),
            log_sha256: col(&row, "log_sha256")?,
            has_manifest: col::<i64>(&row, "manifests")? > 0,
        }))
    }

    /// True when run `run_id` already has an artifact called `name`.
    pub async fn has_artifact(&self, run_id: RunId, name: &str) -> Result<bool> {
        Ok(self.artifact(run_id, name).await?.is_some())
    }

    /// Records an artifact. Returns false, changing nothing, when the run already has one of
    /// that name or has its manifest, which lists its artifacts for good (the caller then
    /// deletes what it stored).
    pub async fn add_artifact(&self, a: &NewArtifact) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO artifacts (run_id, name, kind, path, size, sha256, content_type, \
             storage_key, created_at, expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE NOT EXISTS (SELECT 1 FROM manifests WHERE run_id = $1) \
             ON CONFLICT (run_id, name) DO NOTHING",
        )
        .bind(a.run_id.get())
        .bind(a.name.clone())
        .bind(a.kind.clone())
        .bind(a.path.clone())
        .bind(a.size as i64)
        .bind(a.sha256.clone())
        .bind(a.content_type.clone())
        .bind(a.storage_key.clone())
        .bind(a.created_at.get())
        .bind(a.expires_at.get())
        .execute(&mut *self.writer().await?)
        .await
        .op("recording artifact")?
        .rows_affected();
        Ok(n == 1)
    }

    /// The stored artifact `name` of run `run_id`.
    pub async fn artifact(&self, run_id: RunId, name: &str) -> Result<Option<StoredArtifact>> {
        let row = sqlx::query(
            "SELECT id, size, sha256, content_type, storage_key FROM artifacts \
             WHERE run_id = $1 AND name = $2",
        )
        .bind(run_id.get())
        .bind(name.to_string())
        .fetch_optional(&self.node)
        .await
        .op("reading artifact")?;
        row.map(|r| {
            Ok(StoredArtifact {
                id: col(&r, "id")?,
                size: col::<i64>(&r, "size")?.max(0) as u64,
                sha256: col(&r, "sha256")?,
                content_type: col(&r, "content_type")?,
                storage_key: col(&r, "storage_key")?,
            })
        })
        .transpose()
    }

    /// Records the node's part of a run's manifest. Returns false, changing nothing, when
    /// the run already has one.
    pub async fn set_manifest(
        &self,
        run_id: RunId,
        missing: &[MissingArtifact],
        extra: &serde_json::Map<String, serde_json::Value>,
        now: Millis,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO manifests (run_id, missing, extra, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(run_id.get())
        .bind(to_json(&missing, "missing artifacts")?)
        .bind(to_json(extra, "manifest extra")?)
        .bind(now.get())
        .execute(&mut *self.writer().await?)
        .await
        .op("recording manifest")?
        .rows_affected();
        Ok(n == 1)
    }

    /// The run of job `job_id` numbered `number`, or its latest run.
    pub async fn run_of_job(&self, job_id: JobId, number: Option<u32>) -> Result<RunId> {
        let row = match number {
            Some(n) => {
                sqlx::query("SELECT id FROM runs WHERE job_id = $1 AND number = $2")
                    .bind(job_id.get())
                    .bind(i64::from(n))
                    .fetch_optional(&self.read)
                    .await
            }
            None => {
                sqlx::query("SELECT id FROM runs WHERE job_id = $1 ORDER BY number DESC LIMIT 1")
                    .bind(job_id.get())
                    .fetch_optional(&self.read)
                    .await
            }
        }
        .op("finding run")?;
        if let Some(row) = row {
            return typed(&row, "id");
        }
        // Say why: no such job, or a job that has not run (blocked, pending), or no such run.
        let job = sqlx::query("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id.get())
            .fetch_optional(&self.read)
            .await
            .op("finding job")?;
        let Some(job) = job else {
            return Err(StoreError::NotFound {
                what: "job",
                id: job_id.to_string(),
            });
        };
        let why = match number {
            Some(n) => format!("has no run {n}"),
            None => format!("has not run yet (state {})", col::<String>(&job, "state")?),
        };
        Err(StoreError::NoRun { job: job_id, why })
    }

    /// The manifest of run `run_id`, with locations relative to the server (`/v1/...`).
    pub async fn manifest(&self, run_id: RunId) -> Result<Manifest> {
        let row = sqlx::query(
            "SELECT r.number, r.uid, r.state, r.exit_code, r.reason, r.started_at, \
             r.finished_at, r.log_size, r.log_sha256, n.name AS node, j.id AS job_id, \
             j.name AS job_name, j.graph_id, g.repository, g.revision, m.missing, m.extra \
             FROM runs r JOIN jobs j ON j.id = r.job_id JOIN graphs g ON g.id = j.graph_id \
             JOIN nodes n ON n.id = r.node_id LEFT JOIN manifests m ON m.run_id = r.id \
             WHERE r.id = $1",
        )
        .bind(run_id.get())
        .fetch_optional(&self.read)
        .await
        .op("reading run for manifest")?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_string(),
        })?;
        let state: String = col(&row, "state")?;
        let status = RunState::parse(&state).ok_or(StoreError::Corrupt {
            what: "run state",
            detail: state.clone(),
        })?;
        let job = ManifestJob {
            id: typed(&row, "job_id")?,
            name: col(&row, "job_name")?,
            graph_id: typed(&row, "graph_id")?,
            repository: col(&row, "repository")?,
            revision: col(&row, "revision")?,
            run_number: u32_of(col(&row, "number")?),
            run_id,
            uid: col(&row, "uid")?,
            status,
            exit_code: col::<Option<i64>>(&row, "exit_code")?.map(|c| c as i32),
            reason: col(&row, "reason")?,
            node: col(&row, "node")?,
            started_at: rfc3339(typed(&row, "started_at")?),
            finished_at: typed_opt(&row, "finished_at")?.map(rfc3339),
        };
        let mut artifacts = Vec::new();
        // The log is an artifact like the others, kept beside the database so it can be read
        // while the run goes; a job that printed nothing has an empty one.
        let log_sha: Option<String> = col(&row, "log_sha256")?;
        if status != RunState::Running || log_sha.is_some() {
            artifacts.push(Artifact {
                name: LOG_ARTIFACT.into(),
                kind: "log".into(),
                path: String::new(),
                size: col::<i64>(&row, "log_size")?.max(0) as u64,
                sha256: log_sha.unwrap_or_else(|| EMPTY_SHA256.into()),
                content_type: "text/plain; charset=utf-8".into(),
                location: location(run_id, LOG_ARTIFACT),
                expires_at: None,
            });
        }
        let rows = sqlx::query(
            "SELECT name, kind, path, size, sha256, content_type, expires_at FROM artifacts \
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id.get())
        .fetch_all(&self.read)
        .await
        .op("reading artifacts")?;
        for r in rows {
            let name: String = col(&r, "name")?;
            artifacts.push(Artifact {
                location: location(run_id, &name),
                name,
                kind: col(&r, "kind")?,
                path: col(&r, "path")?,
                size: col::<i64>(&r, "size")?.max(0) as u64,
                sha256: col(&r, "sha256")?,
                content_type: col(&r, "content_type")?,
                expires_at: Some(rfc3339(typed(&r, "expires_at")?)),
            });
        }
        let missing = match col::<Option<String>>(&row, "missing")? {
            Some(text) => json(&text, "missing artifacts")?,
            None => Vec::new(),
        };
        let extra = match col::<Option<String>>(&row, "extra")? {
            Some(text) => json(&text, "manifest extra")?,
            None => Default::default(),
        };
        Ok(Manifest {
            manifest_version: MANIFEST_VERSION,
            job,
            artifacts,
            missing,
            extra,
        })
    }

    /// Up to `limit` artifacts that expired before `now`: `(id, storage_key)`.
    pub async fn expired_artifacts(&self, now: Millis, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT id, storage_key FROM artifacts WHERE expires_at < $1 ORDER BY expires_at \
             LIMIT $2",
        )
        .bind(now.get())
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .op("finding expired artifacts")?;
        rows.iter()
            .map(|r| Ok((col(r, "id")?, col(r, "storage_key")?)))
            .collect()
    }

    /// Forgets an artifact whose bytes are gone.
    pub async fn delete_artifact(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM artifacts WHERE id = $1")
            .bind(id)
            .execute(&mut *self.writer().await?)
            .await
            .op("deleting artifact")?;
        Ok(())
    }
}

/// Where the server serves artifact `name` of run `run_id`, relative to its base URL.
pub fn location(run_id: RunId, name: &str) -> String {
    format!(
        "/v1/runs/{run_id}/artifacts/{}",
        lwr_model::urlpath::path(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_encoded() {
        assert_eq!(
            location(RunId(3), "sym/a b#1.sym"),
            "/v1/runs/3/artifacts/sym/a%20b%231.sym"
        );
    }
}
