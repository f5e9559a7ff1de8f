//! A TaskCluster task definition's payload → what an lwr job runs: the command, its
//! environment, timeout, artifacts and the image it ran in. docker-worker and generic-worker
//! payloads are understood; anything else is unsupported.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::graph::{ArtifactDecl, is_env_name};
use crate::{glob, manifest};

/// Payload keys turned into job fields; every other key is reported as not imported.
const UNDERSTOOD: &[&str] = &["command", "env", "image", "maxRunTime", "artifacts"];

/// Where docker-worker tasks made by taskgraph start (their home and working directory):
/// artifact paths below it are taken relative to the job dir.
const DOCKER_WORKDIR: &str = "/builds/worker/";

/// What a payload becomes.
#[derive(Debug, Default)]
pub(crate) struct Converted {
    /// `None` when the payload names no command (docker-worker then runs the image's own).
    pub run: Option<String>,
    pub env: crate::graph::Env,
    pub timeout_secs: Option<u64>,
    pub artifacts: Vec<ArtifactDecl>,
    /// The image, as a node requirement value.
    pub image: Option<String>,
    /// Payload keys lwr has no place for.
    pub dropped: Vec<String>,
    pub notes: Vec<String>,
}

/// Resolves taskgraph's `<edge>` references (to a dependency by its edge name) in strings.
pub(crate) struct Refs<'a> {
    /// edge name → the lwr job name of that dependency
    pub edges: &'a BTreeMap<String, String>,
}

impl Refs<'_> {
    /// `{"task-reference": "...<edge>..."}` → the text with each known `<edge>` replaced by
    /// the dependency's job name; `{"artifact-reference": "<edge/public/x>"}` → `job/public/x`
    /// (what `lwr fetch NEED/ARTIFACT` takes). Unknown references (`<decision>`) stay as
    /// written and are returned in `unresolved`. A plain string is returned as is; any other
    /// value is `None`.
    fn text(&self, value: &Value, unresolved: &mut Vec<String>) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Object(map) if map.len() == 1 => {
                let (kind, text) = map.iter().next()?;
                let text = text.as_str()?;
                match kind.as_str() {
                    "task-reference" | "artifact-reference" => Some(self.resolve(text, unresolved)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn resolve(&self, text: &str, unresolved: &mut Vec<String>) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('>') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let inner = &after[..end];
            // `<edge>` or, in an artifact reference, `<edge/path/of/artifact>`.
            let (edge, path) = match inner.split_once('/') {
                Some((edge, path)) => (edge, Some(path)),
                None => (inner, None),
            };
            match self.edges.get(edge) {
                Some(job) => {
                    out.push_str(job);
                    if let Some(path) = path {
                        out.push('/');
                        out.push_str(path);
                    }
                }
                None => {
                    unresolved.push(format!("<{inner}>"));
                    out.push('<');
                    out.push_str(inner);
                    out.push('>');
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// The worker implementation a task's payload is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Worker {
    Docker,
    Generic,
}

/// Which worker runs `task`: its `worker-implementation` tag (taskgraph sets it), else the
/// payload's shape (docker-worker payloads name an image). `Err` says why it is unsupported.
pub(crate) fn worker(task: &serde_json::Map<String, Value>) -> Result<Worker, String> {
    let payload = task.get("payload").and_then(Value::as_object);
    let tagged = task
        .get("tags")
        .and_then(|t| t.get("worker-implementation"))
        .and_then(Value::as_str);
    match tagged {
        Some("docker-worker") => return Ok(Worker::Docker),
        Some("generic-worker") => return Ok(Worker::Generic),
        Some(other) => {
            return Err(format!(
                "worker implementation '{}' (lwr imports docker-worker and generic-worker \
                 payloads)",
                super::one_line(other)
            ));
        }
        None => {}
    }
    let Some(payload) = payload else {
        return Err("the task has no payload object".into());
    };
    if payload.contains_key("image") {
        Ok(Worker::Docker)
    } else if payload.contains_key("command") {
        Ok(Worker::Generic)
    } else {
        let keys: Vec<&str> = payload.keys().map(String::as_str).collect();
        let keys = if keys.is_empty() {
            "none".to_string()
        } else {
            super::one_line(&keys.join(", "))
        };
        Err(format!(
            "unsupported payload (keys: {keys}): lwr imports docker-worker and generic-worker \
             payloads, which have a command or an image"
        ))
    }
}

/// Converts the payload of a task whose worker is `worker`.
pub(crate) fn convert(
    payload: &serde_json::Map<String, Value>,
    worker: Worker,
    refs: &Refs,
) -> Result<Converted, String> {
    let mut out = Converted::default();
    let mut unresolved = Vec::new();
    out.run = match payload.get("command") {
        None | Some(Value::Null) => None,
        Some(command) => command_line(command, worker, refs, &mut out.notes, &mut unresolved)?,
    };
    if let Some(env) = payload.get("env") {
        let Some(env) = env.as_object() else {
            return Err("payload.env is not an object".into());
        };
        for (key, value) in env {
            if !is_env_name(key) {
                out.notes.push(format!(
                    "env '{}': not a variable name lwr accepts; left out",
                    super::one_line(key)
                ));
                continue;
            }
            match refs.text(value, &mut unresolved) {
                Some(text) => {
                    out.env.insert(key.clone(), text);
                }
                None => out.notes.push(format!(
                    "env {key}: a value lwr cannot express ({}); left out",
                    kind_of(value)
                )),
            }
        }
    }
    match payload.get("maxRunTime") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64().filter(|s| *s > 0) {
            Some(secs) => out.timeout_secs = Some(secs),
            None => out.notes.push(format!(
                "maxRunTime {}: not a positive number of seconds; the default timeout applies",
                super::one_line(&v.to_string())
            )),
        },
    }
    out.image = payload
        .get("image")
        .and_then(|image| image_name(image, refs, &mut out.notes));
    if let Some(artifacts) = payload.get("artifacts") {
        out.artifacts = artifacts_of(artifacts, &mut out.notes)?;
    }
    for key in payload.keys() {
        if !UNDERSTOOD.contains(&key.as_str()) {
            out.dropped
                .push(format!("payload.{}", super::one_line(key)));
        }
    }
    unresolved.sort();
    unresolved.dedup();
    if !unresolved.is_empty() {
        out.notes.push(format!(
            "references to tasks outside the graph kept as written: {}",
            super::one_line(&unresolved.join(", "))
        ));
    }
    Ok(out)
}

/// The shell command for a payload's `command`: one argument list (docker-worker), or a
/// list of commands run in order until one fails (generic-worker), each an argument list
/// (Linux, macOS) or a command line (Windows).
fn command_line(
    command: &Value,
    worker: Worker,
    refs: &Refs,
    notes: &mut Vec<String>,
    unresolved: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let words = |items: &[Value], unresolved: &mut Vec<String>| -> Result<Vec<String>, String> {
        items
            .iter()
            .map(|w| {
                refs.text(w, unresolved)
                    .ok_or_else(|| format!("payload.command holds {}", kind_of(w)))
            })
            .collect()
    };
    let items = match command {
        Value::String(s) => return Ok(Some(s.clone()).filter(|s| !s.trim().is_empty())),
        Value::Array(items) => items,
        other => return Err(format!("payload.command is {}", kind_of(other))),
    };
    if items.is_empty() {
        return Ok(None);
    }
    let argv_list = items.iter().all(|i| !i.is_array());
    let lines: Vec<String> = if worker == Worker::Docker && argv_list {
        vec![shell_words(&unwrap_run_task(
            words(items, unresolved)?,
            notes,
        ))]
    } else {
        let mut lines = Vec::with_capacity(items.len());
        let mut windows = false;
        for item in items {
            match item {
                Value::Array(argv) => lines.push(shell_words(&unwrap_run_task(
                    words(argv, unresolved)?,
                    notes,
                ))),
                other => {
                    windows = true;
                    let line = refs
                        .text(other, unresolved)
                        .ok_or_else(|| format!("payload.command holds {}", kind_of(other)))?;
                    lines.push(line);
                }
            }
        }
        if windows {
            notes.push(
                "command lines kept as written; generic-worker ran them with cmd.exe, an lwr \
                 node runs them with sh"
                    .into(),
            );
        }
        lines
    };
    let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    Ok(match lines.len() {
        0 => None,
        // In order, stopping at the first failure, as generic-worker runs them.
        _ => Some(lines.join(" &&\n")),
    })
}

/// taskgraph wraps commands in `run-task [options] -- COMMAND...`, which checks the
/// repository out and fetches dependencies' artifacts first. An lwr job starts in a checkout
/// already, so the wrapper goes and the command stays.
fn unwrap_run_task(argv: Vec<String>, notes: &mut Vec<String>) -> Vec<String> {
    let is_run_task = argv
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("run-task"));
    match argv.iter().position(|a| a == "--") {
        Some(dash) if is_run_task && dash + 1 < argv.len() => {
            let note = "run-task wrapper dropped: jobs start in a checkout (docs/migrating.md)";
            if !notes.iter().any(|n| n == note) {
                notes.push(note.into());
            }
            argv[dash + 1..].to_vec()
        }
        _ => argv,
    }
}

/// Words as one shell command line: each word that is not plain is single-quoted, so the
/// shell passes it on unchanged (spaces, quotes, `$`, `#`, newlines and all).
pub(crate) fn shell_words(words: &[String]) -> String {
    let mut out = String::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // `=` in the first word would make it an assignment.
        let plain = !word.is_empty()
            && word.chars().all(|c| {
                c.is_ascii_alphanumeric() || "-_./:,+@%".contains(c) || (c == '=' && i > 0)
            });
        if plain {
            out.push_str(word);
        } else {
            out.push('\'');
            out.push_str(&word.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    out
}

/// The image a docker-worker payload names, as a node requirement value: a registry name
/// as is, `task:JOB` for an image built by a dependency, `indexed:NAMESPACE` for one found
/// in the TaskCluster index.
fn image_name(image: &Value, refs: &Refs, notes: &mut Vec<String>) -> Option<String> {
    let mut unresolved = Vec::new();
    let found = match image {
        Value::String(name) => Some(name.clone()),
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some("docker-image") => map.get("name").and_then(Value::as_str).map(str::to_string),
            Some("indexed-image") => map
                .get("namespace")
                .and_then(Value::as_str)
                .map(|ns| format!("indexed:{ns}")),
            Some("task-image") => map
                .get("taskId")
                .and_then(|id| refs.text(id, &mut unresolved))
                .map(|id| format!("task:{id}")),
            _ => None,
        },
        _ => None,
    };
    if found.is_none() {
        notes.push(format!("payload.image {}: not understood", kind_of(image)));
    }
    found
}

/// docker-worker artifacts (`{name: {type, path}}`) or generic-worker ones
/// (`[{type, path, name}]`) as lwr artifact declarations. Those lwr cannot collect are left
/// out with a note.
fn artifacts_of(value: &Value, notes: &mut Vec<String>) -> Result<Vec<ArtifactDecl>, String> {
    let entries: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let name = item
                    .get("name")
                    .or_else(|| item.get("path"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                (name.to_string(), item)
            })
            .collect(),
        other => return Err(format!("payload.artifacts is {}", kind_of(other))),
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for (name, spec) in entries {
        let shown = super::one_line(&name);
        let path = spec.get("path").and_then(Value::as_str).unwrap_or_default();
        let directory = spec.get("type").and_then(Value::as_str) == Some("directory");
        let optional = spec.get("optional").and_then(Value::as_bool) == Some(true);
        let left_out = |why: String| format!("artifact '{shown}': {why}; left out");
        let rel = match path.strip_prefix(DOCKER_WORKDIR) {
            Some(rel) => rel,
            None if path.starts_with('/') => {
                notes.push(left_out(format!(
                    "path {} is outside the job dir",
                    super::one_line(path)
                )));
                continue;
            }
            None => path.trim_start_matches("./"),
        };
        let rel = rel.trim_end_matches('/');
        let pattern = if directory {
            format!("{}/**", glob_literal(rel))
        } else {
            glob_literal(rel)
        };
        let checked = manifest::check_artifact_name(&name)
            .and_then(|()| manifest::check_artifact_path(&pattern))
            .and_then(|()| glob::check(&pattern));
        if let Err(why) = checked {
            notes.push(left_out(super::one_line(&why)));
            continue;
        }
        if name == manifest::LOG_ARTIFACT || rel.is_empty() || !seen.insert(name.clone()) {
            notes.push(left_out("its name or path is taken or empty".into()));
            continue;
        }
        out.push(ArtifactDecl {
            name,
            path: pattern,
            kind: "other".into(),
            optional,
        });
    }
    Ok(out)
}

/// A path as a glob that matches only itself: `*`, `?`, `[` and `{` in brackets.
fn glob_literal(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '{') {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// What a JSON value is, for messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refs(edges: &BTreeMap<String, String>) -> Refs<'_> {
        Refs { edges }
    }

    #[test]
    fn words_that_are_not_plain_are_single_quoted() {
        let w = |v: &[&str]| shell_words(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(w(&["make", "-j2", "A=b"]), "make -j2 A=b");
        assert_eq!(w(&["A=b", "x"]), "'A=b' x");
        assert_eq!(
            w(&["bash", "-c", "echo 'it' # $HOME\nls"]),
            "bash -c 'echo '\\''it'\\'' # $HOME\nls'"
        );
        assert_eq!(w(&["", "é"]), "'' 'é'");
    }

    #[test]
    fn references_resolve_to_job_names() {
        let edges = BTreeMap::from([("build".to_string(), "build-linux64".to_string())]);
        let mut unresolved = Vec::new();
        let r = refs(&edges);
        let v = json!({"task-reference": "[{\"task\":\"<build>\"}] <decision> <x"});
        assert_eq!(
            r.text(&v, &mut unresolved).as_deref(),
            Some("[{\"task\":\"build-linux64\"}] <decision> <x")
        );
        let v = json!({"artifact-reference": "<build/public/a.zip>"});
        assert_eq!(
            r.text(&v, &mut unresolved).as_deref(),
            Some("build-linux64/public/a.zip")
        );
        assert_eq!(unresolved, vec!["<decision>".to_string()]);
        assert_eq!(
            r.text(&json!({"relative-datestamp": "1 day"}), &mut unresolved),
            None
        );
    }

    #[test]
    fn commands_by_worker() {
        let edges = BTreeMap::new();
        let r = refs(&edges);
        let mut notes = Vec::new();
        let mut un = Vec::new();
        let docker = json!([
            "/usr/local/bin/run-task",
            "--x=1",
            "--",
            "bash",
            "-cx",
            "echo hi"
        ]);
        assert_eq!(
            command_line(&docker, Worker::Docker, &r, &mut notes, &mut un).unwrap(),
            Some("bash -cx 'echo hi'".into())
        );
        assert!(notes[0].contains("run-task"), "{notes:?}");
        let generic = json!([["echo", "a b"], ["false"], ["echo", "c"]]);
        assert_eq!(
            command_line(&generic, Worker::Generic, &r, &mut notes, &mut un).unwrap(),
            Some("echo 'a b' &&\nfalse &&\necho c".into())
        );
        let windows = json!(["dir C:\\", "echo done"]);
        assert_eq!(
            command_line(&windows, Worker::Generic, &r, &mut notes, &mut un).unwrap(),
            Some("dir C:\\ &&\necho done".into())
        );
        assert!(command_line(&json!(5), Worker::Docker, &r, &mut notes, &mut un).is_err());
        assert_eq!(
            command_line(&json!([]), Worker::Docker, &r, &mut notes, &mut un).unwrap(),
            None
        );
    }

    #[test]
    fn artifacts_of_both_workers() {
        let mut notes = Vec::new();
        let docker = json!({
            "public/build": {"type": "directory", "path": "/builds/worker/artifacts/"},
            "public/image.tar.zst": {"type": "file", "path": "/workspace/out/image.tar.zst"},
            "public/odd": {"type": "file", "path": "/builds/worker/a*b?.txt"},
        });
        let got = artifacts_of(&docker, &mut notes).unwrap();
        let paths: Vec<(&str, &str)> = got
            .iter()
            .map(|a| (a.name.as_str(), a.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("public/build", "artifacts/**"),
                ("public/odd", "a[*]b[?].txt")
            ]
        );
        assert!(notes[0].contains("outside the job dir"), "{notes:?}");
        let generic = json!([
            {"type": "file", "path": "out/x.zip", "name": "public/x.zip", "optional": true},
            {"type": "file", "path": "../up"},
            {"type": "file", "path": "log", "name": "log"},
        ]);
        let got = artifacts_of(&generic, &mut notes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].path.as_str(), got[0].optional), ("out/x.zip", true));
        assert_eq!(notes.len(), 3, "{notes:?}");
    }

    #[test]
    fn the_worker_comes_from_the_tag_or_the_payload() {
        let task = |v: Value| v.as_object().cloned().unwrap();
        let t = task(json!({"payload": {"image": "x"}}));
        assert_eq!(worker(&t), Ok(Worker::Docker));
        let t = task(json!({"payload": {"command": [["x"]]}}));
        assert_eq!(worker(&t), Ok(Worker::Generic));
        let t = task(json!({"payload": {"mystery": 1}}));
        assert!(worker(&t).unwrap_err().contains("mystery"));
        let t =
            task(json!({"tags": {"worker-implementation": "scriptworker-signing"}, "payload": {}}));
        assert!(worker(&t).unwrap_err().contains("scriptworker-signing"));
    }
}
