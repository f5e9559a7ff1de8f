use serde_json::{Value, json};

use super::*;
use crate::graph::{Requires, parse};

fn docker(label: &str, deps: Value, command: Value) -> Value {
    json!({
        "kind": "build", "label": label, "attributes": {}, "dependencies": deps,
        "optimization": null, "soft_dependencies": [], "if_dependencies": [],
        "task": {
            "taskQueueId": "proj-x/b-linux", "retries": 5, "requires": "all-completed",
            "scopes": ["secrets:get:x"], "routes": [],
            "expires": {"relative-datestamp": "1 year"},
            "payload": {
                "command": command, "env": {"K": "v", "N": 3}, "maxRunTime": 1800,
                "image": "ubuntu:24.04", "features": {"chainOfTrust": true},
                "artifacts": {"public/build": {"type": "directory", "path": "/builds/worker/artifacts"}}
            },
            "metadata": {"name": label, "description": "", "owner": "a@b.c", "source": "x"}
        }
    })
}

fn generic(label: &str, deps: Value, requires: &str) -> Value {
    json!({
        "kind": "test", "label": label, "attributes": {}, "dependencies": deps,
        "task": {
            "provisionerId": "proj-x", "workerType": "b-win", "requires": requires,
            "payload": {"command": [["echo", "one two"], ["echo", "it's"]], "maxRunTime": 90}
        }
    })
}

fn run(graph: &Value) -> Imported {
    let imported = import(&graph.to_string(), &Options::default())
        .unwrap_or_else(|e| panic!("import failed: {e}"));
    round_trip(&imported);
    imported
}

/// The written lwr.yml reads back as exactly the graph the import made.
fn round_trip(imported: &Imported) {
    let parsed = parse(&imported.yaml, "lwr.yml")
        .unwrap_or_else(|e| panic!("{e}\n--- lwr.yml:\n{}", imported.yaml));
    assert_eq!(parsed, imported.graph, "--- lwr.yml:\n{}", imported.yaml);
}

fn err(graph: &str) -> String {
    match import(graph, &Options::default()) {
        Ok(i) => panic!("expected an error, got\n{}", i.yaml),
        Err(e) => {
            let text = e.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            text
        }
    }
}

#[test]
fn tasks_become_jobs_with_their_fields() {
    let graph = json!({
        "docker-image-linux": docker("docker-image-linux", json!({}), json!(["/bin/bash", "-c", "echo build"])),
        "test-linux/opt-1": generic("test-linux/opt-1", json!({"build": "docker-image-linux"}), "all-resolved"),
    });
    let i = run(&graph);
    assert_eq!((i.tasks, i.dependencies), (2, 1));
    let build = i.graph.job("docker-image-linux").expect("build job");
    assert_eq!(build.title, None, "the label is the name already");
    assert_eq!(build.run, "/bin/bash -c 'echo build'");
    assert_eq!(build.node.properties["queue"], "proj-x/b-linux");
    assert_eq!(build.node.properties["image"], "ubuntu:24.04");
    assert_eq!((build.retries, build.timeout_secs), (5, 1800));
    assert_eq!(&build.env["N"], "3");
    assert_eq!(build.artifacts[0].path, "artifacts/**");
    assert_eq!(build.expires_secs, Some(365 * 86_400));
    assert_eq!(build.requires, Requires::AllSucceeded);
    let dropped = &i.notes["docker-image-linux"].not_imported;
    assert_eq!(dropped, &["scopes", "payload.features"], "{dropped:?}");
    let test = i.graph.job("test-linux-opt-1").expect("test job");
    assert_eq!(test.title.as_deref(), Some("test-linux/opt-1"));
    assert_eq!(test.needs, vec!["docker-image-linux".to_string()]);
    assert_eq!(test.requires, Requires::AllFinished);
    assert_eq!(test.run, "echo 'one two' &&\necho 'it'\\''s'");
    assert_eq!(test.node.properties["queue"], "proj-x/b-win");
    assert_eq!(test.timeout_secs, 90);
    assert!(
        i.yaml
            .contains("  # not imported: scopes, payload.features\n"),
        "{}",
        i.yaml
    );
    // Said of every job: said once, at the top.
    let two = json!({"a": docker("a", json!({}), json!(["make"])), "b": docker("b", json!({}), json!(["true"]))});
    let yaml = run(&two).yaml;
    assert!(
        yaml.contains("\n# Every job: not imported: scopes, payload.features\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("  # not imported"), "{yaml}");
}

#[test]
fn awkward_labels_and_strings_survive() {
    let labels = [
        "lint: flake8.py",
        "build \"quoted\" #1",
        "Ünïcødé/タスク",
        "a b",
        "a-b",
        "a.b",
        "a-b-2",
        "  ",
        "yes",
        "- x: [y]",
    ];
    let mut graph = serde_json::Map::new();
    for (n, label) in labels.iter().enumerate() {
        let deps = if n == 0 {
            json!({})
        } else {
            json!({"prev": labels[n - 1]})
        };
        let command = json!([
            "sh",
            "-c",
            format!("echo '{label}' \"$HOME\" # x\nprintf 'é\\t%s' {n}")
        ]);
        let mut task = docker(label, deps, command);
        task["task"]["payload"]["env"] =
            json!({"LABEL": label, "WEIRD": "a: b\n- c #d\u{2028}\u{85}"});
        graph.insert(label.to_string(), task);
    }
    let i = run(&Value::Object(graph));
    assert_eq!(i.graph.jobs.len(), labels.len());
    let edges: usize = i.graph.jobs.iter().map(|j| j.needs.len()).sum();
    assert_eq!(edges, labels.len() - 1);
    let names: Vec<&str> = i.graph.jobs.iter().map(|j| j.name.as_str()).collect();
    for want in [
        "lint-flake8-py",
        "build-quoted-1",
        "ünïcødé-タスク",
        "task",
        "yes",
        "x-y",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    // "a b", "a-b" and "a.b" clash: none is merged; "a-b-2" keeps its own name.
    assert_eq!(i.clashes.len(), 1, "{:?}", i.clashes);
    let clash = &i.clashes[0];
    assert_eq!(clash.normalized, "a-b");
    let got: Vec<(&str, &str)> = clash
        .labels
        .iter()
        .map(|(l, n)| (l.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![("a b", "a-b"), ("a-b", "a-b-3"), ("a.b", "a-b-4")]
    );
    assert!(names.contains(&"a-b-2"));
    let note = &i.notes["a-b-4"].notes;
    assert!(
        note.contains(&"the label normalizes like 'a b', so this job is a-b-4".to_string()),
        "{note:?}"
    );
    let job = |label: &str| {
        i.graph
            .jobs
            .iter()
            .find(|j| &j.env["LABEL"] == label)
            .unwrap_or_else(|| panic!("no job for {label}"))
    };
    assert_eq!(job("a-b").title.as_deref(), Some("a-b"));
    assert_eq!(job("  ").title, None, "a blank label makes no title");
    assert_eq!(&job("yes").env["WEIRD"], "a: b\n- c #d\u{2028}\u{85}");
    assert!(job("lint: flake8.py").run.contains("# x\nprintf"));
}

#[test]
fn bad_input_names_the_task() {
    assert!(err("{\"a\": ").starts_with("not JSON"));
    assert!(err("[1, 2]").contains("expected an object keyed by task label, found a list"));
    assert!(err("{}").contains("holds no tasks"));
    assert!(err(r#"{"not": "a task graph"}"#).starts_with("task 'not': expected a task"));
    assert!(err(r#"{"x y": {"label": "x y"}}"#).contains("task 'x y': has no 'task'"));
    let missing = json!({"a/b": docker("a/b", json!({"d0": "no-such-task"}), json!(["true"]))});
    let e = err(&missing.to_string());
    assert!(e.contains("'a/b'") && e.contains("no-such-task"), "{e}");
    let itself = json!({"a": docker("a", json!({"me": "a"}), json!(["true"]))});
    assert_eq!(err(&itself.to_string()), "task 'a': depends on itself");
    let cycle = json!({
        "x: 1": docker("x: 1", json!({"d": "y.2"}), json!(["true"])),
        "y.2": docker("y.2", json!({"d": "z 3"}), json!(["true"])),
        "z 3": docker("z 3", json!({"d": "x: 1"}), json!(["true"])),
    });
    let e = err(&cycle.to_string());
    assert_eq!(e, "cycle in dependencies: x: 1 -> y.2 -> z 3 -> x: 1");
    let mut odd = docker("odd-task", json!({}), json!(["true"]));
    odd["task"]["payload"] = json!({"mystery": {"steps": 3}});
    let e = err(&json!({"odd-task": odd}).to_string());
    assert!(
        e.starts_with("task 'odd-task': unsupported payload (keys: mystery)"),
        "{e}"
    );
    let mut bad_command = docker("c", json!({}), json!({"not": "argv"}));
    bad_command["task"]["payload"]["command"] = json!(7);
    assert!(err(&json!({"c": bad_command}).to_string()).contains("payload.command is a number"));
    let dup = json!({"k1": docker("same", json!({}), json!(["true"])), "k2": docker("same", json!({}), json!(["true"]))});
    assert!(err(&dup.to_string()).contains("both have the label 'same'"));
}

#[test]
fn skip_unsupported_leaves_out_dependents_and_says_so() {
    let mut odd = docker("sign", json!({"build": "build"}), json!(["true"]));
    odd["task"]["tags"] = json!({"worker-implementation": "scriptworker-signing"});
    let graph = json!({
        "build": docker("build", json!({}), json!(["make"])),
        "sign": odd,
        "upload": docker("upload", json!({"sign": "sign"}), json!(["true"])),
        "test": docker("test", json!({"build": "build"}), json!(["true"])),
    });
    let options = Options {
        skip_unsupported: true,
        ..Options::default()
    };
    let i = import(&graph.to_string(), &options).expect("import");
    round_trip(&i);
    let names: Vec<&str> = i.graph.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, vec!["build", "test"]);
    let skipped: Vec<(&str, &str)> = i
        .skipped
        .iter()
        .map(|s| (s.label.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped[0].0, "sign");
    assert!(skipped[0].1.contains("scriptworker-signing"), "{skipped:?}");
    assert_eq!(
        skipped[1],
        ("upload", "depends on 'sign', which is left out")
    );
    let mut lone = graph["sign"].clone();
    lone["dependencies"] = json!({});
    let only_odd = json!({"sign": lone});
    let e = import(&only_odd.to_string(), &options).unwrap_err();
    assert_eq!(e, ImportError::NothingLeft);
}

#[test]
fn dry_run_commands_keep_the_shape_only() {
    let graph = json!({
        "a": docker("a", json!({}), json!(["make"])),
        "b": generic("b", json!({"a": "a"}), "all-resolved"),
    });
    let options = Options {
        dry_run_commands: true,
        ..Options::default()
    };
    let i = import(&graph.to_string(), &options).expect("import");
    round_trip(&i);
    for job in &i.graph.jobs {
        assert_eq!(job.run, "true");
        assert!(job.node.is_empty() && job.artifacts.is_empty() && job.expires_secs.is_none());
        assert!(!job.checkout.enabled);
    }
    assert_eq!(i.graph.jobs[1].requires, Requires::AllFinished);
}

#[test]
fn a_graph_keyed_by_task_id_uses_labels_and_drops_optimized_dependencies() {
    let mut a = docker("build-linux", json!({}), json!(["make"]));
    a["task_id"] = json!("Tid1");
    let mut b = docker(
        "test-linux",
        json!({"build": "Tid1", "docker-image": "GoneTid"}),
        json!(["sh", "-c", "fetch"]),
    );
    b["task_id"] = json!("Tid2");
    b["task"]["payload"]["env"] = json!({
        "MOZ_FETCHES": {"task-reference": "[{\"task\": \"<build>\"}]"},
        "PARENT": {"task-reference": "<decision>"},
        "WHEN": {"relative-datestamp": "1 day"},
    });
    let i = run(&json!({"Tid1": a, "Tid2": b}));
    let test = i.graph.job("test-linux").expect("test job");
    assert_eq!(test.needs, vec!["build-linux".to_string()]);
    assert_eq!(&test.env["MOZ_FETCHES"], "[{\"task\": \"build-linux\"}]");
    assert_eq!(&test.env["PARENT"], "<decision>");
    assert!(!test.env.contains_key("WHEN"));
    let notes = i.notes["test-linux"].notes.join("\n");
    assert!(
        notes.contains("dependency 'docker-image' (task GoneTid) is not in this graph"),
        "{notes}"
    );
    assert!(notes.contains("env WHEN"), "{notes}");
    assert!(notes.contains("<decision>"), "{notes}");
}

#[test]
fn a_docker_task_without_a_command_fails_until_given_one() {
    let mut image = docker("docker-image-linux", json!({}), json!(null));
    image["task"]["payload"]
        .as_object_mut()
        .map(|p| p.remove("command"));
    let i = run(&json!({"docker-image-linux": image}));
    assert!(i.graph.jobs[0].run.contains("exit 1"));
    let notes = &i.notes["docker-image-linux"].notes;
    assert!(
        notes.iter().any(|n| n.starts_with("no command")),
        "{notes:?}"
    );
}
