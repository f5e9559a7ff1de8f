//! `lwr fetch`, `lwr manifest`, `lwr artifacts`: reading what runs produced, through their
//! manifests only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use lwr_client::Client;
use lwr_model::manifest::Manifest;

use crate::cli::{ArtifactsArgs, FetchArgs, ManifestArgs};
use crate::commands::query::resolve_job;

pub async fn fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let (manifest, name) = match std::env::var_os("LWR_MANIFESTS") {
        Some(file) => from_needs(&client, PathBuf::from(file), &args.artifact).await?,
        None => from_job(&client, &args.artifact).await?,
    };
    let Some(artifact) = manifest.artifact(&name) else {
        let names: Vec<&str> = manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
        let missing = match manifest.missing.iter().find(|m| m.name == name) {
            Some(m) => format!(" (declared with path '{}' but not produced)", m.path),
            // The sweep deletes an expired artifact's row with its bytes: no trace is left.
            None => " (never declared, or expired: see `expires` in lwr.yml)".to_string(),
        };
        bail!(
            "job '{}' (run {}) has no artifact '{name}'{missing}; it has: {}",
            manifest.job.name,
            manifest.job.run_number,
            names.join(", ")
        );
    };
    let dest = match args.output {
        Some(p) => p,
        None => {
            let dest = default_dest(&artifact.name)?;
            // Never over a file the caller did not name: a server chose this name.
            if std::fs::symlink_metadata(&dest).is_ok() {
                bail!(
                    "{} exists already: pass -o {} to overwrite it, or -o another path",
                    dest.display(),
                    dest.display()
                );
            }
            dest
        }
    };
    let size = client
        .download_verified(&artifact.location, &artifact.sha256, &dest)
        .await
        .with_context(|| format!("fetching '{name}' of job '{}'", manifest.job.name))?;
    eprintln!(
        "fetched {}/{name} ({size} bytes, sha256 {}) to {}",
        manifest.job.name,
        crate::output::short(&artifact.sha256),
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where `lwr fetch` without `-o` saves artifact `name`: its last component, in the current
/// directory, checked as the server checks names (never the path a node reported, which
/// names any file, nor `..`).
fn default_dest(name: &str) -> anyhow::Result<PathBuf> {
    lwr_model::manifest::check_artifact_name(name)
        .map_err(|e| anyhow::anyhow!("the manifest names artifact '{name}': {e}"))?;
    match name.rsplit('/').next() {
        Some(last) if !last.is_empty() && last != "." && last != ".." => Ok(PathBuf::from(last)),
        _ => bail!("artifact '{name}' has no file name to save it under: pass -o PATH"),
    }
}

/// Inside a job: `NEED/ARTIFACT`, the need's manifest found in `$LWR_MANIFESTS`.
async fn from_needs(
    client: &Client,
    file: PathBuf,
    target: &str,
) -> anyhow::Result<(Manifest, String)> {
    let Some((need, name)) = target.split_once('/') else {
        bail!("'{target}' is not NEED/ARTIFACT (e.g. build/installer)");
    };
    let text = std::fs::read(&file)
        .with_context(|| format!("reading $LWR_MANIFESTS ({})", file.display()))?;
    let manifests: BTreeMap<String, String> = serde_json::from_slice(&text)
        .with_context(|| format!("$LWR_MANIFESTS ({}) is not a JSON map", file.display()))?;
    let need = lwr_model::normalize_name(need);
    let Some(location) = manifests.get(&need) else {
        let needs: Vec<&str> = manifests.keys().map(String::as_str).collect();
        bail!(
            "this job does not need '{need}', so it has no manifest of it (it needs: {})",
            if needs.is_empty() {
                "nothing".to_string()
            } else {
                needs.join(", ")
            }
        );
    };
    Ok((client.manifest_at(location).await?, name.to_string()))
}

/// Outside a job: `JOB/ARTIFACT`, JOB an id or GRAPH/NAME.
async fn from_job(client: &Client, target: &str) -> anyhow::Result<(Manifest, String)> {
    let parts: Vec<&str> = target.splitn(3, '/').collect();
    let (job, name) = match parts.as_slice() {
        [graph, job, name] if graph.parse::<i64>().is_ok() && job.parse::<i64>().is_err() => {
            (format!("{graph}/{job}"), name.to_string())
        }
        [id, rest @ ..] if id.parse::<i64>().is_ok() && !rest.is_empty() => {
            (id.to_string(), rest.join("/"))
        }
        _ => bail!(
            "'{target}' is not JOB/ARTIFACT (42/installer or 3/build/installer); \
             inside a job, NEED/ARTIFACT works through $LWR_MANIFESTS"
        ),
    };
    let id = resolve_job(client, &job).await?;
    Ok((client.job_manifest(id, None).await?, name))
}

pub async fn manifest(args: ManifestArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let id = resolve_job(&client, &args.job).await?;
    let manifest = client.job_manifest(id, args.run).await?;
    outln!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn list(args: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let id = resolve_job(&client, &args.job).await?;
    let manifest = client.job_manifest(id, args.run).await?;
    if args.json {
        let out = serde_json::json!({
            "artifacts": manifest.artifacts,
            "missing": manifest.missing,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "{:<30} {:<10} {:>12}  {:<16}  LOCATION\n",
        "NAME", "KIND", "SIZE", "SHA256"
    );
    for a in &manifest.artifacts {
        out.push_str(&format!(
            "{:<30} {:<10} {:>12}  {:<16}  {}\n",
            a.name,
            a.kind,
            a.size,
            &a.sha256[..a.sha256.len().min(16)],
            a.location
        ));
    }
    for m in &manifest.missing {
        let what = if m.optional { "optional" } else { "required" };
        out.push_str(&format!(
            "{:<30} {:<10} {:>12}  missing ({what}, path {})\n",
            m.name, m.kind, "-", m.path
        ));
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}
