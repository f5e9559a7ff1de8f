//! A task definition's own fields (queue, requires, retries, expires, scopes, ...) and its
//! converted payload → one lwr job, noting what does not carry over.

use serde_json::Value;

use super::payload::{self, Worker};
use super::taskgraph::Task;
use super::{Options, one_line};
use crate::graph::{
    Checkout, JobSpec, MAX_EXPIRES_SECS, MAX_TIMEOUT_SECS, MAX_TITLE_CHARS, Requires, title_problem,
};
use crate::node::Requirements;

/// The job for task `i`; its notes gain what the task-level fields could not carry.
pub(super) fn job(
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
        buildbot: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_datestamps() {
        let secs = |s: &str| relative_secs(&json!({"relative-datestamp": s}));
        assert_eq!(secs("1 year"), Some(365 * 86_400));
        assert_eq!(secs("2 days 3 hours"), Some(2 * 86_400 + 3 * 3600));
        assert_eq!(secs("90 minutes"), Some(5400));
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("1 fortnight"), None);
        assert_eq!(relative_secs(&json!("2026-01-01T00:00:00Z")), None);
    }
}
