//! `lwr import taskgraph`: a task graph made by TaskCluster's `taskcluster-taskgraph` (the
//! JSON of `taskgraph full --json`, `full-task-graph.json` or `task-graph.json`) → lwr.yml.
//!
//! The input is an object keyed by task label (by task id in `task-graph.json`, each task then
//! carrying its `label`): `{kind, label, dependencies: {edge: key}, task: {payload, ...}}`.
//! Each task becomes one job; each dependency one need. What lwr cannot express is noted per
//! job, never silently dropped.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::payload::{self, Refs, Worker, kind_of};
use super::{Clash, Imported, JobNotes, Options, Skipped, one_line, yaml};
use crate::graph::{
    Checkout, Graph, GraphError, JobSpec, MAX_EXPIRES_SECS, MAX_FILE_BYTES, MAX_TIMEOUT_SECS,
    MAX_TITLE_CHARS, Requires, find_cycle, normalize_name, title_problem,
};
use crate::node::Requirements;

/// Why a task graph could not be imported. Each names the task (by label) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not JSON: {message} (line {line}, column {column})")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// The JSON is not an object of tasks at all.
    #[error("not a task graph: {0}")]
    NotAGraph(String),
    /// One task is not of the shape taskgraph writes.
    #[error("task '{label}': {message}")]
    BadTask { label: String, message: String },
    #[error("tasks '{first}' and '{second}' both have the label '{label}'")]
    DuplicateLabel {
        label: String,
        first: String,
        second: String,
    },
    #[error(
        "task '{label}': dependency '{edge}' is '{dependency}', which is not a task in this graph"
    )]
    MissingDependency {
        label: String,
        edge: String,
        dependency: String,
    },
    #[error("task '{label}': depends on itself")]
    SelfDependency { label: String },
    #[error("cycle in dependencies: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },
    #[error(
        "task '{label}': {why} (--skip-unsupported leaves such tasks and their dependents out)"
    )]
    Unsupported { label: String, why: String },
    #[error("every task was left out as unsupported; nothing to import")]
    NothingLeft,
    #[error(
        "the lwr.yml would be {bytes} bytes, more than the {limit} lwr reads; import part of \
         the graph (taskgraph's --target-kind or --tasks-regex)"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// The graph made does not validate: a bug of the importer, reported rather than written.
    #[error("the imported graph does not validate ({0}); please report this as a bug")]
    Invalid(GraphError),
}

/// One task of the input, as read.
struct Task<'a> {
    label: String,
    def: &'a Map<String, Value>,
    /// (edge name, index of the task it names)
    deps: Vec<(String, usize)>,
    soft: usize,
    optimization: Option<String>,
    notes: JobNotes,
}

/// Imports the JSON text of a task graph.
pub fn import(text: &str, options: &Options) -> Result<Imported, ImportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ImportError::Json {
        line: e.line(),
        column: e.column(),
        message: one_line(&e.to_string()),
    })?;
    let Value::Object(top) = &value else {
        return Err(ImportError::NotAGraph(format!(
            "expected an object keyed by task label, found {}",
            kind_of(&value)
        )));
    };
    if top.is_empty() {
        return Err(ImportError::NotAGraph("it holds no tasks".into()));
    }
    let (mut tasks, dependencies) = read_tasks(top)?;
    let adjacency: Vec<Vec<usize>> = tasks
        .iter()
        .map(|t| t.deps.iter().map(|d| d.1).collect())
        .collect();
    if let Some(cycle) = find_cycle(&adjacency) {
        let path = cycle
            .into_iter()
            .map(|i| one_line(&tasks[i].label))
            .collect();
        return Err(ImportError::Cycle { path });
    }
    let (names, clashes) = job_names(&tasks);
    for clash in &clashes {
        let (first, _) = &clash.labels[0];
        for (label, name) in &clash.labels[1..] {
            // Tasks are in label order.
            if let Ok(i) = tasks.binary_search_by(|t| t.label.as_str().cmp(label)) {
                let task = &mut tasks[i];
                task.notes.notes.push(format!(
                    "the label normalizes like '{}', so this job is {name}",
                    one_line(first)
                ));
            }
        }
    }
    let mut converted = Vec::with_capacity(tasks.len());
    let mut unsupported: Vec<(usize, String)> = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let edges: BTreeMap<String, String> = task
            .deps
            .iter()
            .map(|(edge, d)| (edge.clone(), names[*d].clone()))
            .collect();
        let refs = Refs { edges: &edges };
        let result = payload::worker(task.def).and_then(|worker| {
            let empty = Map::new();
            let payload = task.def.get("payload").and_then(Value::as_object);
            payload::convert(payload.unwrap_or(&empty), worker, &refs).map(|c| (worker, c))
        });
        match result {
            Ok(c) => converted.push(Some(c)),
            Err(why) if options.skip_unsupported => {
                unsupported.push((i, why));
                converted.push(None);
            }
            Err(why) => {
                let label = one_line(&task.label);
                return Err(ImportError::Unsupported { label, why });
            }
        }
    }
    let (kept, skipped) = leave_out(&tasks, &adjacency, unsupported);
    let mut graph = Graph {
        jobs: Vec::with_capacity(tasks.len()),
    };
    let mut per_job = Vec::with_capacity(tasks.len());
    let mut notes = BTreeMap::new();
    for (i, task) in tasks.iter_mut().enumerate() {
        let Some((worker, c)) = converted[i].take().filter(|_| kept[i]) else {
            continue;
        };
        let job = job(task, &names, i, worker, c, options);
        if !task.notes.is_empty() {
            notes.insert(job.name.clone(), task.notes.clone());
        }
        per_job.push(std::mem::take(&mut task.notes));
        graph.jobs.push(job);
    }
    if graph.jobs.is_empty() {
        return Err(ImportError::NothingLeft);
    }
    graph.validate().map_err(ImportError::Invalid)?;
    let (common, comments) = comments(&per_job);
    let mut header = header(tasks.len(), dependencies, &graph, options, &skipped);
    header.extend(common);
    let yaml = yaml::write(&graph, &header, &comments);
    if yaml.len() > MAX_FILE_BYTES {
        let (bytes, limit) = (yaml.len(), MAX_FILE_BYTES);
        return Err(ImportError::TooLarge { bytes, limit });
    }
    Ok(Imported {
        graph,
        yaml,
        tasks: tasks.len(),
        dependencies,
        notes,
        clashes,
        skipped,
    })
}

/// The comment lines above each job, and those for the header: what is said of every job is
/// said once, at the top (a graph of thousands of tasks repeats the same few things).
fn comments(per_job: &[JobNotes]) -> (Vec<String>, Vec<Vec<String>>) {
    let everywhere = |items: fn(&JobNotes) -> &Vec<String>| -> HashSet<&str> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for job in per_job {
            let mut seen: Vec<&str> = items(job).iter().map(String::as_str).collect();
            seen.sort_unstable();
            seen.dedup();
            for item in seen {
                *counts.entry(item).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| per_job.len() > 1 && *n == per_job.len())
            .map(|(item, _)| item)
            .collect()
    };
    let common_dropped = everywhere(|j| &j.not_imported);
    let common_notes = everywhere(|j| &j.notes);
    let mut header = Vec::new();
    // In the order the first job lists them.
    if let Some(first) = per_job.first() {
        let dropped: Vec<&str> = first
            .not_imported
            .iter()
            .map(String::as_str)
            .filter(|d| common_dropped.contains(d))
            .collect();
        if !dropped.is_empty() {
            header.push(format!("Every job: not imported: {}", dropped.join(", ")));
        }
        for note in first
            .notes
            .iter()
            .filter(|n| common_notes.contains(n.as_str()))
        {
            header.push(format!("Every job: note: {note}"));
        }
    }
    let comments = per_job
        .iter()
        .map(|job| {
            let dropped: Vec<&str> = job
                .not_imported
                .iter()
                .map(String::as_str)
                .filter(|d| !common_dropped.contains(d))
                .collect();
            let mut lines = Vec::new();
            if !dropped.is_empty() {
                lines.push(format!("not imported: {}", dropped.join(", ")));
            }
            for note in job
                .notes
                .iter()
                .filter(|n| !common_notes.contains(n.as_str()))
            {
                lines.push(format!("note: {note}"));
            }
            lines
        })
        .collect();
    (header, comments)
}

/// The tasks in label order with their dependencies resolved, and how many dependencies the
/// input declared.
fn read_tasks(top: &Map<String, Value>) -> Result<(Vec<Task<'_>>, usize), ImportError> {
    // `task-graph.json` is keyed by task id; there a dependency outside the graph is a task
    // the decision task optimized away (replaced by an earlier run), not a mistake.
    let by_task_id = top
        .iter()
        .all(|(key, v)| v.get("task_id").and_then(Value::as_str) == Some(key.as_str()));
    let mut tasks = Vec::with_capacity(top.len());
    for (key, value) in top {
        let bad = |message: String| ImportError::BadTask {
            label: one_line(key),
            message,
        };
        let Value::Object(entry) = value else {
            return Err(bad(format!(
                "expected a task (an object with 'task' and 'dependencies'), found {}",
                kind_of(value)
            )));
        };
        let label = match entry.get("label") {
            None => key.clone(),
            Some(Value::String(l)) => l.clone(),
            Some(other) => return Err(bad(format!("'label' is {}", kind_of(other)))),
        };
        let def = match entry.get("task") {
            Some(Value::Object(def)) => def,
            Some(other) => return Err(bad(format!("'task' is {}", kind_of(other)))),
            None => return Err(bad("has no 'task' (the task definition)".into())),
        };
        let count = |field: &str| {
            entry
                .get(field)
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        };
        tasks.push((
            key.as_str(),
            Task {
                label,
                def,
                deps: Vec::new(),
                soft: count("soft_dependencies") + count("if_dependencies"),
                optimization: match entry.get("optimization") {
                    Some(Value::Object(o)) => o.keys().next().cloned(),
                    _ => None,
                },
                notes: JobNotes::default(),
            },
            entry.get("dependencies"),
        ));
    }
    tasks.sort_by(|a, b| a.1.label.cmp(&b.1.label));
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    for (i, (key, _, _)) in tasks.iter().enumerate() {
        index.insert(key, i);
    }
    for pair in tasks.windows(2) {
        if pair[0].1.label == pair[1].1.label {
            return Err(ImportError::DuplicateLabel {
                label: one_line(&pair[0].1.label),
                first: one_line(pair[0].0),
                second: one_line(pair[1].0),
            });
        }
    }
    let mut total = 0;
    let mut out = Vec::with_capacity(tasks.len());
    for (i, (_, mut task, deps)) in tasks.into_iter().enumerate() {
        let label = one_line(&task.label);
        let deps: Vec<(String, &str)> = match deps {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => {
                let mut list = Vec::with_capacity(map.len());
                for (edge, target) in map {
                    let Some(target) = target.as_str() else {
                        return Err(ImportError::BadTask {
                            label,
                            message: format!(
                                "dependency '{}' is {}, not a label",
                                one_line(edge),
                                kind_of(target)
                            ),
                        });
                    };
                    list.push((edge.clone(), target));
                }
                list
            }
            Some(other) => {
                let message = format!(
                    "'dependencies' is {}; expected an object of edge name to label",
                    kind_of(other)
                );
                return Err(ImportError::BadTask { label, message });
            }
        };
        total += deps.len();
        let mut seen = HashSet::with_capacity(deps.len());
        for (edge, target) in deps {
            match index.get(target) {
                Some(&t) if t == i => {
                    return Err(ImportError::SelfDependency { label });
                }
                Some(&t) if !seen.insert(t) => task.notes.notes.push(format!(
                    "dependency '{}' names a task another edge already needs; one need kept",
                    one_line(&edge)
                )),
                Some(&t) => task.deps.push((edge, t)),
                None if by_task_id => task.notes.notes.push(format!(
                    "dependency '{}' (task {}) is not in this graph (optimized away); left out",
                    one_line(&edge),
                    one_line(target)
                )),
                None => {
                    return Err(ImportError::MissingDependency {
                        label,
                        edge: one_line(&edge),
                        dependency: one_line(target),
                    });
                }
            }
        }
        out.push(task);
    }
    Ok((out, total))
}

/// A job name per task, and the labels whose names came out alike. The name is the label
/// with every character but letters, digits and `-` made `-`, then normalized as lwr.yml
/// names are; a clash gives the later labels (in label order) `-2`, `-3`, ...
fn job_names(tasks: &[Task]) -> (Vec<String>, Vec<Clash>) {
    let bases: Vec<String> = tasks.iter().map(|t| base_name(&t.label)).collect();
    let mut taken: HashSet<String> = bases.iter().cloned().collect();
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    let mut clashes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut names = Vec::with_capacity(tasks.len());
    for (i, base) in bases.iter().enumerate() {
        match first.get(base.as_str()) {
            None => {
                first.insert(base, i);
                names.push(base.clone());
            }
            Some(&f) => {
                let name = (2..)
                    .map(|n| format!("{base}-{n}"))
                    .find(|n| !taken.contains(n))
                    .unwrap_or_default();
                taken.insert(name.clone());
                names.push(name);
                clashes.entry(base).or_insert_with(|| vec![f]).push(i);
            }
        }
    }
    let clashes = clashes
        .into_iter()
        .map(|(base, members)| Clash {
            normalized: base.to_string(),
            labels: members
                .into_iter()
                .map(|i| (tasks[i].label.clone(), names[i].clone()))
                .collect(),
        })
        .collect();
    (names, clashes)
}

fn base_name(label: &str) -> String {
    let mapped: String = label
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    let name = normalize_name(&mapped);
    // Lowercasing a few letters yields characters that lowercase differently again; such a
    // name would not be in normalized form, so fall back to its ASCII letters and digits.
    let name = if normalize_name(&name) == name {
        name
    } else {
        let ascii: String = mapped
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        normalize_name(&ascii)
    };
    if name.is_empty() {
        "task".to_string()
    } else {
        name
    }
}

/// Which tasks stay: not unsupported, needing no task that is left out.
fn leave_out(
    tasks: &[Task],
    adjacency: &[Vec<usize>],
    unsupported: Vec<(usize, String)>,
) -> (Vec<bool>, Vec<Skipped>) {
    let mut kept = vec![true; tasks.len()];
    let mut skipped = Vec::new();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, deps) in adjacency.iter().enumerate() {
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut stack = Vec::new();
    for (i, why) in unsupported {
        kept[i] = false;
        skipped.push(Skipped {
            label: tasks[i].label.clone(),
            reason: why,
        });
        stack.push(i);
    }
    while let Some(i) = stack.pop() {
        for &d in &dependents[i] {
            if kept[d] {
                kept[d] = false;
                skipped.push(Skipped {
                    label: tasks[d].label.clone(),
                    reason: format!(
                        "depends on '{}', which is left out",
                        one_line(&tasks[i].label)
                    ),
                });
                stack.push(d);
            }
        }
    }
    (kept, skipped)
}

/// The job for task `i`; its notes gain what the task-level fields could not carry.
fn job(
    task: &mut Task,
    names: &[String],
    i: usize,
    worker: Worker,
    c: payload::Converted,
    options: &Options,
) -> JobSpec {
    let def = task.def;
    let mut notes = Vec::new();
    let mut dropped = Vec::new();
    let mut node = Requirements::default();
    let queue = match def.get("taskQueueId").and_then(Value::as_str) {
        Some(q) => Some(q.to_string()),
        None => match (
            def.get("provisionerId").and_then(Value::as_str),
            def.get("workerType").and_then(Value::as_str),
        ) {
            (Some(p), Some(w)) => Some(format!("{p}/{w}")),
            _ => None,
        },
    };
    match queue {
        Some(q) => {
            node.properties.insert("queue".into(), q);
        }
        None => notes.push("no task queue (taskQueueId, or provisionerId and workerType)".into()),
    }
    if let Some(image) = c.image {
        node.properties.insert("image".into(), image);
    }
    let requires = match def.get("requires").and_then(Value::as_str) {
        None | Some("all-completed") => Requires::AllSucceeded,
        Some("all-resolved") => Requires::AllFinished,
        Some(other) => {
            notes.push(format!(
                "requires '{}': unknown; all-succeeded applies",
                one_line(other)
            ));
            Requires::AllSucceeded
        }
    };
    let retries = match def.get("retries") {
        None => crate::graph::DEFAULT_RETRIES,
        Some(v) => match v.as_u64().and_then(|r| u32::try_from(r).ok()) {
            Some(r) => r,
            None => {
                notes.push(format!(
                    "retries {}: not a count; the default applies",
                    one_line(&v.to_string())
                ));
                crate::graph::DEFAULT_RETRIES
            }
        },
    };
    let timeout_secs = match c.timeout_secs {
        Some(secs) if secs > MAX_TIMEOUT_SECS => {
            notes.push(format!(
                "maxRunTime {secs}: longer than lwr allows; the longest applies"
            ));
            MAX_TIMEOUT_SECS
        }
        Some(secs) => secs,
        None => crate::graph::DEFAULT_TIMEOUT_SECS,
    };
    let expires_secs = match def.get("expires") {
        Some(e) if !c.artifacts.is_empty() => match relative_secs(e) {
            Some(secs) if (1..=MAX_EXPIRES_SECS).contains(&secs) => Some(secs),
            _ => {
                notes.push(format!(
                    "expires {}: not within lwr's 1 second to 3660 days; the server's default applies",
                    one_line(&e.to_string())
                ));
                None
            }
        },
        _ => None,
    };
    for what in ["scopes", "routes"] {
        if def
            .get(what)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            dropped.push(what.to_string());
        }
    }
    if let Some(o) = &task.optimization {
        dropped.push(format!("optimization {}", one_line(o)));
    }
    if task.soft > 0 {
        dropped.push("soft and if-dependencies".into());
    }
    if c.run.is_none() {
        notes.push(match worker {
            Worker::Docker => {
                "no command: docker-worker ran the image's own; the job fails until given one"
                    .into()
            }
            Worker::Generic => "no command; the job fails until given one".into(),
        });
    }
    notes.extend(c.notes);
    let name = names[i].clone();
    let title = Some(one_line(&task.label))
        .filter(|t| *t != name)
        .map(|t| match t.chars().count() > MAX_TITLE_CHARS {
            true => {
                notes.push(format!("title cut to {MAX_TITLE_CHARS} characters"));
                t.chars().take(MAX_TITLE_CHARS).collect()
            }
            false => t,
        })
        .filter(|t| title_problem(t).is_none());
    // The notes of reading the task (dependencies) come first, then those of its fields.
    task.notes.notes.extend(notes);
    dropped.extend(c.dropped);
    task.notes.not_imported = dropped;
    let missing_command =
        "echo 'lwr import: this job has no command; give it one in lwr.yml' >&2; exit 1";
    let dry = options.dry_run_commands;
    JobSpec {
        name,
        title,
        run: if dry {
            "true".into()
        } else {
            c.run.unwrap_or_else(|| missing_command.into())
        },
        needs: task.deps.iter().map(|(_, d)| names[*d].clone()).collect(),
        node: if dry { Requirements::default() } else { node },
        artifacts: if dry { Vec::new() } else { c.artifacts },
        retries,
        timeout_secs,
        expires_secs: expires_secs.filter(|_| !dry),
        env: c.env,
        requires,
        when: None,
        prefer: Vec::new(),
        affinity_wait_secs: None,
        keep_workdir: false,
        timestamps: false,
        // Trying the shape needs no checkout, and skipping it makes every job cheap.
        checkout: if dry {
            Checkout::off()
        } else {
            Checkout::default()
        },
    }
}

/// Seconds in a json-e `{"relative-datestamp": "1 year 2 days"}`; `None` for anything else.
fn relative_secs(value: &Value) -> Option<u64> {
    let text = value.get("relative-datestamp")?.as_str()?;
    let mut words = text.split_whitespace();
    let mut total = 0u64;
    let mut any = false;
    while let Some(n) = words.next() {
        let n: u64 = n.parse().ok()?;
        let unit = match words.next()?.trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3600,
            "day" => 86_400,
            "week" => 7 * 86_400,
            "month" => 30 * 86_400,
            "year" => 365 * 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    any.then_some(total)
}

fn header(
    tasks: usize,
    dependencies: usize,
    graph: &Graph,
    options: &Options,
    skipped: &[Skipped],
) -> Vec<String> {
    let edges: usize = graph.jobs.iter().map(|j| j.needs.len()).sum();
    let mut lines = vec![
        "Imported by `lwr import taskgraph` from a taskgraph task graph:".to_string(),
        format!(
            "{tasks} tasks and {dependencies} dependencies became {} jobs and {edges} needs.",
            graph.jobs.len()
        ),
        "A job's title is its task's label; the comments above it say what lwr could not express"
            .into(),
        "(not imported) and what changed on the way (note).".into(),
    ];
    if options.dry_run_commands {
        lines.push(
            "--dry-run-commands: every command is `true`; node requirements and artifacts are \
             left out."
                .into(),
        );
    }
    if !skipped.is_empty() {
        lines.push(format!(
            "{} tasks left out (--skip-unsupported): unsupported payloads and their dependents.",
            skipped.len()
        ));
    }
    lines
}

#[cfg(test)]
#[path = "taskgraph_tests.rs"]
mod tests;
