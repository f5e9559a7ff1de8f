//! `lwr import taskgraph`: hand-made task graphs with awkward labels (run on `lwr dev`), bad
//! input, and graphs made by the real `taskcluster-taskgraph` from PyPI (in a venv under
//! target/venvs; without python, venv or network that test says "skipped").

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The taskgraph the tests install; .ci/run installs the same.
const TASKGRAPH: &str = "taskcluster-taskgraph==24.*";

/// A task in taskgraph's JSON shape: docker-worker (odd `i`) or generic-worker (even `i`).
fn task(label: &str, kind: &str, deps: &[&str], i: usize, requires: &str) -> Value {
    let payload = if i % 2 == 1 {
        json!({"command": ["/bin/bash", "-c", format!("echo '{kind}' {i} # \"{label}\"")],
               "env": {"K": i.to_string()}, "maxRunTime": 600, "image": "ubuntu:24.04"})
    } else {
        json!({"command": [["echo", kind], ["echo", format!("{i}: ok")]], "maxRunTime": 900})
    };
    let dependencies: serde_json::Map<String, Value> = deps
        .iter()
        .enumerate()
        .map(|(k, d)| (format!("d{k}"), json!(d)))
        .collect();
    json!({
        "label": label, "kind": kind, "attributes": {}, "dependencies": dependencies,
        "task": {"taskQueueId": format!("proj-{kind}/b-linux"), "requires": requires, "retries": 2,
                 "routes": ["checks"], "payload": payload,
                 "metadata": {"name": label, "description": "", "owner": "a@b.c", "source": "x"}}
    })
}

/// 200 tasks: a chain of images, toolchains and builds, then tests and lints with labels
/// holding spaces, '/', ':', '.', quotes and non-ASCII; some pairs normalize alike.
fn hand_made() -> (Value, usize, usize) {
    let mut tasks = serde_json::Map::new();
    let add = |tasks: &mut serde_json::Map<String, Value>, label: &str, t: Value| {
        tasks.insert(label.to_string(), t);
    };
    let base = [
        "docker-image-ubuntu",
        "toolchain-linux64-rust",
        "build-linux64/opt",
        "build-linux64/debug",
    ];
    add(
        &mut tasks,
        base[0],
        task(base[0], "docker-image", &[], 0, "all-completed"),
    );
    add(
        &mut tasks,
        base[1],
        task(base[1], "toolchain", &[base[0]], 1, "all-completed"),
    );
    add(
        &mut tasks,
        base[2],
        task(base[2], "build", &[base[0], base[1]], 2, "all-completed"),
    );
    add(
        &mut tasks,
        base[3],
        task(base[3], "build", &[base[0], base[1]], 3, "all-completed"),
    );
    let mut labels: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let mut i = 4;
    while tasks.len() < 199 {
        let build = base[2 + i % 2];
        let label = match i % 6 {
            0 => format!("lint: flake8.{i}"),
            1 => format!("test-linux64/{}-mochitest \"bc\" {i}", &build[14..]),
            2 => format!("Tëst ünïcode/{i}"),
            3 => format!("test linux64.{i}"),
            4 => format!("test-linux64-{i}"), // normalizes like "test linux64.{i-1}"'s neighbour
            _ => format!("test/linux64/{}", i - 2),
        };
        let mut deps = vec![build.to_string()];
        if i > 40 && i % 5 == 0 {
            deps.push(labels[4 + (i * 7) % (labels.len() - 4)].clone());
        }
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let requires = if i % 7 == 0 {
            "all-resolved"
        } else {
            "all-completed"
        };
        add(&mut tasks, &label, task(&label, "test", &deps, i, requires));
        labels.push(label);
        i += 1;
    }
    let summary_deps: Vec<&str> = labels[4..20].iter().map(String::as_str).collect();
    add(
        &mut tasks,
        "summary: all",
        task("summary: all", "summary", &summary_deps, i, "all-resolved"),
    );
    let edges = tasks
        .values()
        .map(|t| t["dependencies"].as_object().map_or(0, |d| d.len()))
        .sum();
    let resolved = tasks
        .values()
        .filter(|t| t["task"]["requires"] == "all-resolved")
        .count();
    (Value::Object(tasks), edges, resolved)
}

/// `lwr graph --repo DIR --json` → (jobs, edges, jobs requiring all-finished).
fn graph_counts(repo: &Path) -> (usize, usize, usize) {
    let out = lwr(&["graph", "--repo", &repo.display().to_string(), "--json"]);
    out.assert_success();
    let json = out.json();
    let jobs = json["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {out}"));
    let edges = jobs
        .iter()
        .map(|j| j["needs"].as_array().map_or(0, Vec::len))
        .sum();
    let finished = jobs
        .iter()
        .filter(|j| j["requires"] == "all-finished")
        .count();
    (jobs.len(), edges, finished)
}

fn write_json(path: &Path, value: &Value) -> String {
    std::fs::write(path, value.to_string()).expect("writing the task graph");
    path.display().to_string()
}

/// `lwr import taskgraph -` with `input` on standard input.
fn import_stdin(input: &str, out: &Path) -> (bool, String) {
    let mut child = Command::new(bin())
        .args([
            "import",
            "taskgraph",
            "-",
            "--out",
            &out.display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning lwr import");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("writing stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for lwr import");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn hand_made_graphs_import_keep_their_shape_and_run_on_lwr_dev() {
    let tmp = tempdir();
    let dir = tmp.path();
    let (graph, edges, resolved) = hand_made();
    let file = write_json(&dir.join("task-graph.json"), &graph);

    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    let yml = repo.join("lwr.yml").display().to_string();
    let out = lwr(&["import", "taskgraph", &file, "--out", &yml]);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!(
            "imported 200 tasks and {edges} dependencies as 200 jobs"
        )),
        "{out}"
    );
    assert!(
        out.stdout.contains("clash: labels normalize alike"),
        "{out}"
    );
    assert!(out.stdout.contains("routes (200 jobs)"), "{out}");
    assert_eq!(graph_counts(&repo), (200, edges, resolved));
    let text = std::fs::read_to_string(&yml).expect("lwr.yml");
    assert!(
        text.contains("title: \"test-linux64/debug-mochitest \\\"bc\\\" 7\""),
        "{text}"
    );
    assert!(
        text.contains("\n# Every job: not imported: routes\n"),
        "{text}"
    );
    // `lwr graph` shows the label beside the name.
    let shown = lwr(&["graph", "--repo", &repo.display().to_string()]);
    assert!(
        shown
            .assert_success()
            .stdout
            .contains("  title: Tëst ünïcode/8"),
        "{shown}"
    );

    // The same from standard input; an existing --out is not replaced without --force.
    let (ok, said) = import_stdin(&graph.to_string(), &repo.join("again.yml"));
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read_to_string(repo.join("again.yml")).expect("again.yml"),
        text
    );
    let out = lwr(&["import", "taskgraph", &file, "--out", &yml]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["exists", "--force"]);
    lwr(&["import", "taskgraph", &file, "--out", &yml, "--force"]).assert_success();

    // Bad input: one line on stderr naming what is wrong, and the task.
    let bad = |name: &str, content: &str, needles: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("writing bad input");
        let out = lwr(&[
            "import",
            "taskgraph",
            &path.display().to_string(),
            "--out",
            &dir.join("x.yml").display().to_string(),
        ]);
        out.assert_clear_error(1).assert_stderr_has(needles);
        assert!(!dir.join("x.yml").exists(), "{out}");
    };
    bad("truncated.json", "{\"a\": {", &["not JSON", "line 1"]);
    bad("list.json", "[]", &["not a task graph"]);
    bad(
        "shape.json",
        r#"{"not": "a task graph"}"#,
        &["task 'not'", "expected a task"],
    );
    let missing =
        json!({"build x": task("build x", "build", &["no-such-task"], 1, "all-completed")});
    bad(
        "missing.json",
        &missing.to_string(),
        &["task 'build x'", "no-such-task"],
    );
    let cycle = json!({
        "a: 1": task("a: 1", "t", &["b/2"], 1, "all-completed"),
        "b/2": task("b/2", "t", &["a: 1"], 2, "all-completed"),
    });
    bad(
        "cycle.json",
        &cycle.to_string(),
        &["cycle in dependencies: a: 1 -> b/2 -> a: 1"],
    );
    let mut odd = task("odd-task", "x", &[], 1, "all-completed");
    odd["task"]["payload"] = json!({"mystery": {"steps": 3}});
    bad(
        "unknown.json",
        &json!({"odd-task": odd}).to_string(),
        &[
            "task 'odd-task'",
            "unsupported payload",
            "--skip-unsupported",
        ],
    );

    // With --skip-unsupported the odd task and its dependents are left out, and said so.
    let mut with_odd = graph.clone();
    with_odd["odd-task"] = odd;
    with_odd["after odd"] = task("after odd", "t", &["odd-task"], 3, "all-completed");
    let path = write_json(&dir.join("odd.json"), &with_odd);
    let out = lwr(&["import", "taskgraph", &path, "--skip-unsupported"]);
    out.assert_success();
    assert!(
        out.stderr
            .contains("left out 'odd-task': unsupported payload"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("left out 'after odd': depends on 'odd-task'"),
        "{out}"
    );
    assert!(
        out.stdout
            .starts_with("# Imported by `lwr import taskgraph`"),
        "{out}"
    );

    // --dry-run-commands: every job `true`, on any node; the whole graph runs on `lwr dev`.
    let dry = dir.join("dry");
    std::fs::create_dir_all(&dry).expect("dry dir");
    let dry_yml = dry.join("lwr.yml").display().to_string();
    lwr(&[
        "import",
        "taskgraph",
        &file,
        "--dry-run-commands",
        "--out",
        &dry_yml,
    ])
    .assert_success();
    git_init_commit(&dry);
    let dev = Server::dev(dir, 2, 4);
    let graph_id = dev.push(&dry, false).assert_success().pushed_graph();
    let info = wait_until(
        "the imported graph to finish",
        Duration::from_secs(240),
        || match dev.api.graph(graph_id) {
            Ok(info) if info.finished => Ok(info),
            Ok(info) => Err(format!("{:?}", info.counts)),
            Err(e) => Err(e.to_string()),
        },
    );
    let jobs = dev.jobs(graph_id);
    assert_eq!(jobs.len(), 200, "{info:?}");
    let failed: Vec<&String> = jobs
        .iter()
        .filter(|(_, j)| j.state != lwr_model::JobState::Succeeded)
        .map(|(n, _)| n)
        .collect();
    assert!(
        failed.is_empty(),
        "not succeeded: {failed:?}\n{}",
        dev.describe(Some(graph_id))
    );
}

// ---------------------------------------------------------------------------------------
// The real taskcluster-taskgraph

/// The venv's python with taskcluster-taskgraph installed, made once under target/venvs;
/// `None` (and why) when python, venv or the package index is not to be had.
fn taskgraph_python() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("venvs/taskgraph");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import taskgraph.main"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ))
        }
    };
    run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/pip")).args(["install", "-q", TASKGRAPH]),
        "pip install taskcluster-taskgraph",
    )?;
    if ready(&python) {
        Ok(python)
    } else {
        Err("taskgraph does not import".into())
    }
}

/// Runs taskgraph (through tests/data/taskgraph/offline.py, which answers its index look-ups
/// itself) in `repo` and returns the JSON it printed.
fn taskgraph(python: &Path, repo: &Path, args: &[&str]) -> Value {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/taskgraph/offline.py");
    let out = Command::new(python)
        .arg(driver)
        .args(args)
        .current_dir(repo)
        // Never contacted: taskgraph only wants to know which instance it would be.
        .env("TASKCLUSTER_ROOT_URL", "https://tc.invalid")
        .output()
        .expect("running taskgraph");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "taskgraph {args:?} failed:\n{stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("taskgraph {args:?} printed no JSON ({e}):\n{stderr}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a dir");
    for entry in std::fs::read_dir(from).expect("reading a fixture dir") {
        let entry = entry.expect("a fixture entry");
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copying a fixture file");
        }
    }
}

#[test]
fn graphs_made_by_taskcluster_taskgraph_import_whole() {
    let python = match taskgraph_python() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: no taskcluster-taskgraph ({why})");
            return;
        }
    };
    let tmp = tempdir();
    let repo = tmp.path().join("project");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/taskgraph/taskcluster");
    copy_dir(&fixture, &repo.join("taskcluster"));
    git_init_commit(&repo);
    // taskgraph names each task's source by the repository's URL; nothing fetches it.
    git_out(
        &repo,
        &[
            "remote",
            "add",
            "origin",
            "https://github.com/lwr-example/demo",
        ],
    );

    for (name, args) in [
        ("full", &["full", "--json"][..]),
        ("target-graph", &["target-graph", "--json"]),
        ("task-graph", &["morphed", "--json"]),
    ] {
        let graph = taskgraph(&python, &repo, args);
        let tasks = graph.as_object().expect("an object of tasks");
        // Dependencies inside the graph: in task-graph.json, the docker images were replaced
        // by earlier tasks (offline.py) that are not in it.
        let edges: usize = tasks
            .values()
            .flat_map(|t| {
                t["dependencies"]
                    .as_object()
                    .into_iter()
                    .flat_map(|d| d.values())
            })
            .filter(|d| d.as_str().is_some_and(|d| tasks.contains_key(d)))
            .count();
        let resolved = tasks
            .values()
            .filter(|t| t["task"]["requires"] == "all-resolved")
            .count();
        assert!(
            tasks.len() >= 15 && edges >= 20 && resolved == 1,
            "{name}: {} tasks, {edges} edges",
            tasks.len()
        );
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("import dir");
        let file = write_json(&tmp.path().join(format!("{name}.json")), &graph);
        let report = tmp.path().join(format!("{name}-report.json"));
        let out = lwr(&[
            "import",
            "taskgraph",
            &file,
            "--out",
            &dir.join("lwr.yml").display().to_string(),
            "--report",
            &report.display().to_string(),
        ]);
        out.assert_success();
        assert_eq!(
            graph_counts(&dir),
            (tasks.len(), edges, resolved),
            "{name}: {out}"
        );
        let text = std::fs::read_to_string(dir.join("lwr.yml")).expect("lwr.yml");
        for want in [
            "title: \"lint-posix: flake8.py\"",
            "title: \"test-linux64-linux32-opt/2\"",
            "title: \"fetch-rust-1.80\"",
            "\"queue\": \"lwr-demo-3/b-linux\"",
        ] {
            assert!(text.contains(want), "{name}: no {want} in\n{text}");
        }
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
                .expect("the report is JSON");
        assert_eq!(report["jobs"], tasks.len(), "{report:#}");
        let notes = report["notes"].to_string();
        assert!(
            notes.contains("routes") && notes.contains("payload.onExitStatus"),
            "{name}: {notes}"
        );
        if name == "task-graph" {
            assert!(notes.contains("optimized away"), "{notes}");
        }
        // Commands: the run-task wrapper goes, words are quoted for sh, a generic-worker
        // task's commands run in order.
        let graph_json = lwr(&["graph", "--repo", &dir.display().to_string(), "--json"]).json();
        let run_of = |label: &str| {
            graph_json["jobs"]
                .as_array()
                .and_then(|jobs| {
                    jobs.iter()
                        .find(|j| j["title"] == label || j["name"] == label)
                })
                .map(|j| j["run"].clone())
                .unwrap_or_else(|| panic!("{name}: no job titled {label}"))
        };
        assert_eq!(
            run_of("lint-posix: flake8.py"),
            "chmod +x run-task &&\nbash -cx 'echo lint: one && echo two'",
            "{name}"
        );
        let script = tasks
            .values()
            .find(|t| t["label"] == "build-web")
            .and_then(|t| t["task"]["payload"]["command"][4].as_str())
            .expect("build-web's script");
        assert!(
            script.contains("'web: it''s \"bundled\"' # not"),
            "{script}"
        );
        let quoted = format!("bash -cx '{}'", script.replace('\'', "'\\''"));
        assert_eq!(run_of("build-web"), quoted.as_str(), "{name}");
    }
}
