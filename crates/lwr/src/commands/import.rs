//! `lwr import taskgraph`: reads a task graph, writes an lwr.yml and says what did not carry
//! over. The conversion itself is `lwr_model::import` (no I/O); this is files and words.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use lwr_model::import::{Imported, Options, taskgraph};
use lwr_model::words::count;

use crate::cli::{ImportArgs, ImportSource, TaskgraphImportArgs};

/// How many kinds of note the summary lists before "and N more".
const SUMMARY_ITEMS: usize = 12;

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    match args.source {
        ImportSource::Taskgraph(args) => run_taskgraph(args),
    }
}

fn run_taskgraph(args: TaskgraphImportArgs) -> anyhow::Result<ExitCode> {
    let from_stdin = args.file == Path::new("-");
    let source = if from_stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    if let Some(out) = &args.out
        && out.exists()
        && !args.force
    {
        bail!(
            "{} exists; give --force to replace it, or another --out",
            out.display()
        );
    }
    let text = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the task graph from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {source}"))?
    };
    let options = Options {
        dry_run_commands: args.dry_run_commands,
        skip_unsupported: args.skip_unsupported,
    };
    let imported =
        taskgraph::import(&text, &options).with_context(|| format!("cannot import {source}"))?;
    drop(text);
    // The file must mean what the import made: reading it back is the proof (a few
    // milliseconds per thousand jobs).
    let reread = lwr_model::graph::parse(&imported.yaml, "lwr.yml")
        .context("the written lwr.yml does not read back; please report this as a bug")?;
    if reread != imported.graph {
        bail!("the written lwr.yml reads back as another graph; please report this as a bug");
    }
    if let Some(path) = &args.report {
        write_file(path, report_json(&imported).as_bytes(), true)?;
    }
    let summary = summary(&imported, args.out.as_deref(), &options);
    match &args.out {
        Some(path) => {
            write_file(path, imported.yaml.as_bytes(), args.force)?;
            out!("{summary}");
        }
        None => {
            out!("{}", imported.yaml);
            eprint!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file beside it, so a reader never sees half
/// a file; `replace` allows an existing one to go.
fn write_file(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    // A temporary file is private; the result is an ordinary file (or keeps the mode of the
    // one it replaces).
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o644));
    tmp.as_file()
        .set_permissions(mode)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let done = if replace {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    done.with_context(|| format!("cannot write {}", path.display()))
}

/// What the import did, for people: counts, clashes, tasks left out, and how often each
/// kind of thing was not imported.
fn summary(imported: &Imported, out: Option<&Path>, options: &Options) -> String {
    let graph = &imported.graph;
    let needs: usize = graph.jobs.iter().map(|j| j.needs.len()).sum();
    let target = out.map_or("standard output".into(), |p| p.display().to_string());
    let mut s = format!(
        "imported {} and {} as {} and {} into {target}\n",
        count(imported.tasks as u64, "task", "tasks"),
        count(imported.dependencies as u64, "dependency", "dependencies"),
        count(graph.jobs.len() as u64, "job", "jobs"),
        count(needs as u64, "need", "needs"),
    );
    if options.dry_run_commands {
        s.push_str("dry run: every command is `true`; no node requirements, no artifacts\n");
    }
    for clash in &imported.clashes {
        let labels: Vec<String> = clash
            .labels
            .iter()
            .map(|(label, name)| format!("'{}' -> {name}", show(label)))
            .collect();
        s.push_str(&format!(
            "clash: labels normalize alike to '{}', kept apart: {}\n",
            clash.normalized,
            labels.join(", ")
        ));
    }
    for skipped in &imported.skipped {
        s.push_str(&format!(
            "left out '{}': {}\n",
            show(&skipped.label),
            skipped.reason
        ));
    }
    // How many jobs lost each kind of field (`routes (3)` counts as `routes`).
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for job in imported.notes.values() {
        let mut seen: Vec<&str> = job
            .not_imported
            .iter()
            .map(|n| n.split(" (").next().unwrap_or(n))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for kind in seen {
            *kinds.entry(kind).or_default() += 1;
        }
    }
    if !kinds.is_empty() {
        let mut by_count: Vec<(&str, usize)> = kinds.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = by_count
            .iter()
            .take(SUMMARY_ITEMS)
            .map(|(kind, n)| format!("{kind} ({})", count(*n as u64, "job", "jobs")))
            .collect();
        let more = by_count.len().saturating_sub(SUMMARY_ITEMS);
        s.push_str(&format!(
            "not imported: {}{}\n",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let noted = imported
        .notes
        .values()
        .filter(|n| !n.notes.is_empty())
        .count();
    if noted > 0 {
        s.push_str(&format!(
            "notes on {} (commands, artifacts, references, ...)\n",
            count(noted as u64, "job", "jobs")
        ));
    }
    if !imported.notes.is_empty() {
        s.push_str("each job's comment in the lwr.yml says what (and --report FILE, as JSON)\n");
    }
    s
}

fn report_json(imported: &Imported) -> String {
    let needs: usize = imported.graph.jobs.iter().map(|j| j.needs.len()).sum();
    let value = serde_json::json!({
        "tasks": imported.tasks,
        "dependencies": imported.dependencies,
        "jobs": imported.graph.jobs.len(),
        "needs": needs,
        "notes": imported.notes,
        "clashes": imported.clashes.iter().map(|c| serde_json::json!({
            "normalized": c.normalized,
            "labels": c.labels.iter().map(|(label, job)| serde_json::json!({"label": label, "job": job})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "left_out": imported.skipped.iter().map(|s| serde_json::json!({"label": s.label, "reason": s.reason})).collect::<Vec<_>>(),
    });
    format!("{value:#}\n")
}

/// A label on one line: control characters escaped.
fn show(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
