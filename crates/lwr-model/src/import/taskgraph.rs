//! `lwr import taskgraph`: a task graph made by TaskCluster's `taskcluster-taskgraph` (the
//! JSON of `taskgraph full --json`, `full-task-graph.json` or `task-graph.json`) → lwr.yml.
//!
//! The input is an object keyed by task label (by task id in `task-graph.json`, each task then
//! carrying its `label`): `{kind, label, dependencies: {edge: key}, task: {payload, ...}}`.
//! Each task becomes one job; each dependency one need. What lwr cannot express is noted per
//! job, never silently dropped.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::fields::job;
use super::payload::{self, Refs, kind_of};
use super::yaml::comments;
use super::{Clash, Imported, JobNotes, Options, Skipped, one_line, yaml};
use crate::graph::{Graph, GraphError, MAX_FILE_BYTES, find_cycle, normalize_name};

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
pub(super) struct Task<'a> {
    pub label: String,
    pub def: &'a Map<String, Value>,
    /// (edge name, index of the task it names)
    pub deps: Vec<(String, usize)>,
    /// How many soft and if-dependencies it has (not edges in lwr).
    pub soft: usize,
    /// The optimization strategy's name, if any.
    pub optimization: Option<String>,
    pub notes: JobNotes,
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
