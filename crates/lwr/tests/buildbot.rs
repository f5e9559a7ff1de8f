//! Phase one against a real Buildbot 4.3 (master and worker from PyPI in a venv, made by
//! `.ci/run`; `LWR_BUILDBOT_VENV`, default /tmp/lwr-buildbot-venv): one master and worker
//! serve every check, because starting them is slow. Without the venv the test says
//! "skipped".
//!
//! The master.cfg is a plain one plus `packaging/buildbot/lwr.cfg`, exactly as an operator
//! adds it. The graph mixes plain jobs and Buildbot jobs; the checks: the needs' artifact URLs
//! reach the build as properties; a failing builder fails its job and blocks its dependent;
//! `lwr logs -f` follows a build's step output; a bridge killed mid-build and restarted
//! finds its build instead of forcing it again; `lwr cancel` stops a build (Buildbot says
//! cancelled); `lwr graph diff --buildbot` names a builder the graph lacks.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use lwr_model::JobState;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// Buildbot starts slowly on a loaded machine.
const BUILDBOT_DEADLINE: Duration = Duration::from_secs(90);

fn venv() -> PathBuf {
    std::env::var_os("LWR_BUILDBOT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/lwr-buildbot-venv"))
}

fn have_buildbot(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import buildbot, buildbot_worker, buildbot_www"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process in its own group, killed with the group when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("creating a log");
    let err = out.try_clone().expect("cloning a log handle");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    Proc(child)
}

/// A Buildbot master and one worker, `w1`, that runs up to 4 builds at once.
struct Buildbot {
    url: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    _master: Proc,
    _worker: Proc,
}

impl Buildbot {
    fn start(venv: &Path, dir: &Path, gate: &Path) -> Buildbot {
        let bin = |name: &str| venv.join("bin").join(name);
        let master_dir = dir.join("master");
        let ok = Command::new(bin("buildbot"))
            .args(["create-master", "-q"])
            .arg(&master_dir)
            .stdout(Stdio::null())
            .status()
            .expect("buildbot create-master");
        assert!(ok.success(), "buildbot create-master failed");
        let (pb, www) = (free_port(), free_port());
        let snippet =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/buildbot/lwr.cfg");
        let gate = gate.display();
        let cfg = format!(
            r#"from buildbot.plugins import schedulers, steps, util, worker
c = BuildmasterConfig = {{}}
c['workers'] = [worker.Worker("w1", "pass", max_builds=4)]
c['protocols'] = {{'pb': {{'port': "tcp:{pb}:interface=127.0.0.1"}}}}
c['change_source'] = []
def shell(cmd):
    f = util.BuildFactory(); f.addStep(steps.ShellCommand(name="run", command=cmd)); return f
c['builders'] = [
    util.BuilderConfig(name="linux64-test", workernames=["w1"],
        factory=shell(util.Interpolate("echo bb-test-marker installer=%(prop:build_installer_url)s suite=%(prop:suite)s"))),
    util.BuilderConfig(name="broken", workernames=["w1"], factory=shell("echo going wrong; exit 1")),
    util.BuilderConfig(name="slow", workernames=["w1"], factory=shell("sleep 300")),
    util.BuilderConfig(name="gate", workernames=["w1"],
        factory=shell("echo gate-waiting; while [ ! -e {gate} ]; do sleep 0.1; done; echo gate-done")),
    util.BuilderConfig(name="extra-builder", workernames=["w1"], factory=shell("echo extra")),
]
c['schedulers'] = [schedulers.ForceScheduler(name="direct", builderNames=["extra-builder"])]
c['buildbotURL'] = "http://127.0.0.1:{www}/"
c['www'] = {{'port': "tcp:{www}:interface=127.0.0.1", 'plugins': {{}}}}
c['db'] = {{'db_url': "sqlite:///state.sqlite"}}
c['buildbotNetUsageData'] = None
LWR_BUILDERS = ["linux64-test", "broken", "slow", "gate"]
exec(open("{snippet}").read())
"#,
            snippet = snippet.display()
        );
        std::fs::write(master_dir.join("master.cfg"), cfg).expect("writing master.cfg");
        let master = spawn(
            Command::new(bin("buildbot"))
                .args(["start", "--nodaemon"])
                .arg(&master_dir),
            &dir.join("master.log"),
        );
        let worker_dir = dir.join("w1");
        let ok = Command::new(bin("buildbot-worker"))
            .args(["create-worker", "-q"])
            .arg(&worker_dir)
            .args([&format!("127.0.0.1:{pb}"), "w1", "pass"])
            .stdout(Stdio::null())
            .status()
            .expect("buildbot-worker create-worker");
        assert!(ok.success(), "buildbot-worker create-worker failed");
        let worker = spawn(
            Command::new(bin("buildbot-worker"))
                .env_clear()
                .env("HOME", dir)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("LANG", "C.UTF-8")
                .args(["start", "--nodaemon"])
                .arg(&worker_dir),
            &dir.join("worker.log"),
        );
        let bb = Buildbot {
            url: format!("http://127.0.0.1:{www}"),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            http: reqwest::Client::new(),
            _master: master,
            _worker: worker,
        };
        wait_until("the Buildbot worker to connect", BUILDBOT_DEADLINE, || {
            let workers = bb
                .get("workers")
                .map_err(|e| format!("{e}\nmaster log:\n{}", tail(&dir.join("master.log"), 10)))?;
            let connected = workers["workers"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w["connected_to"].as_array().is_some_and(|c| !c.is_empty()))
            });
            connected
                .then_some(())
                .ok_or_else(|| "worker not connected".to_string())
        });
        bb
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}/api/v2/{path}", self.url);
        self.rt.block_on(async {
            let resp = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            resp.json::<Value>().await.map_err(|e| e.to_string())
        })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/api/v2/{path}", self.url);
        self.rt.block_on(async {
            let resp = self
                .http
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("POST to Buildbot");
            resp.json::<Value>().await.expect("a JSON answer")
        })
    }

    /// The builds of a builder, with the properties named.
    fn builds(&self, builder: &str, props: &[&str]) -> Vec<Value> {
        let query: String = props.iter().map(|p| format!("&property={p}")).collect();
        let answer = self
            .get(&format!("builders/{builder}/builds?order=buildid{query}"))
            .unwrap_or_else(|e| panic!("listing builds of {builder}: {e}"));
        answer["builds"].as_array().cloned().unwrap_or_default()
    }

    fn fetch(&self, url: &str) -> String {
        self.rt.block_on(async {
            let resp = self.http.get(url).send().await.expect("GET");
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            resp.text().await.expect("a body")
        })
    }
}

const GRAPH: &str = r#"version: 1
jobs:
  build:
    run: mkdir -p dist && echo the-installer > dist/app.bin
    artifacts:
      - {name: installer, path: dist/app.bin, kind: installer}
  test:
    needs: [build]
    buildbot: {builder: linux64-test, properties: {suite: mochitest}}
  lint:
    run: echo lint ok
  broken:
    buildbot: {builder: broken}
  after-broken:
    needs: [broken]
    run: echo never
  slow:
    buildbot: {builder: slow}
  gate:
    buildbot: {builder: gate}
"#;

fn bridge(dir: &Path, server: &str, bb: &str) -> Daemon {
    let work = dir.join("bridge");
    let args = [
        "node",
        "--server",
        server,
        "--name",
        "bb-bridge",
        "--work-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([work.display().to_string(), "--buildbot".into(), bb.into()])
    .collect();
    let mut d = Daemon::new("bridge", args, dir.join("bridge.log"), Vec::new());
    d.start();
    d
}

/// Moving a job off Buildbot is one change to lwr.yml, and `lwr graph diff` names it.
#[test]
fn moving_a_job_off_buildbot_shows_in_graph_diff() {
    let dir = tempdir();
    let repo = git_repo(&dir.path().join("repo"), GRAPH);
    std::fs::write(
        repo.join("lwr.yml"),
        GRAPH.replace(
            "buildbot: {builder: linux64-test, properties: {suite: mochitest}}",
            "run: ./run-tests mochitest",
        ),
    )
    .expect("writing lwr.yml");
    git_commit_all(&repo, "test moves off Buildbot");
    let repo_arg = repo.display().to_string();
    let out = lwr(&["graph", "diff", "HEAD~1", "HEAD", "--repo", &repo_arg]);
    out.assert_success();
    assert!(
        out.stdout
            .contains("~ test moved off Buildbot (was builder linux64-test; run, buildbot)"),
        "{out}"
    );
    let json = lwr(&[
        "graph", "diff", "HEAD~1", "HEAD", "--repo", &repo_arg, "--json",
    ]);
    assert_eq!(
        json.assert_success().json()["moved_off_buildbot"][0]["name"],
        "test"
    );
}

#[test]
fn graphs_run_on_buildbot_through_the_bridge() {
    let venv = venv();
    if !have_buildbot(&venv) {
        println!(
            "skipped: no Buildbot 4.3 venv at {} (.ci/run makes it; LWR_BUILDBOT_VENV names another)",
            venv.display()
        );
        return;
    }
    let dir = tempdir();
    let gate = dir.path().join("gate-open");
    let bb = Buildbot::start(&venv, dir.path(), &gate);
    // A lease the bridge's restart fits in easily on a loaded machine.
    let server = Server::start_with_lease(dir.path(), "30s");
    let _plain = server.node(dir.path(), "plain", 2, &[]);
    let mut bridge_node = bridge(dir.path(), &server.url, &bb.url);
    let repo = git_repo(&dir.path().join("repo"), GRAPH);
    let rev = git_out(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let g = server.push(&repo, false).assert_success().pushed_graph();

    // A failing builder fails its job and blocks the dependent; plain jobs run on the plain node.
    server.wait_job(g, "test", JobState::Succeeded, Some("bb-bridge"));
    server.wait_job(g, "lint", JobState::Succeeded, Some("plain"));
    server.wait_job(g, "broken", JobState::Failed, Some("bb-bridge"));
    server.wait_job(g, "after-broken", JobState::Blocked, None);

    // The need's artifact URL reached the build as a property and serves the installer.
    let builds = bb.builds(
        "linux64-test",
        &["build_installer_url", "lwr_run_id", "suite"],
    );
    assert_eq!(builds.len(), 1, "{builds:#?}");
    let url = builds[0]["properties"]["build_installer_url"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no build_installer_url in {:#}", builds[0]))
        .to_string();
    assert!(bb.fetch(&url).contains("the-installer"), "{url}");
    assert_eq!(builds[0]["properties"]["suite"][0], "mochitest");
    // Its step output is the job's log; the build is in the manifest's extra.
    let log = server.lwr(&["logs", &format!("{g}/test")]);
    log.assert_success();
    assert!(
        log.stdout
            .contains(&format!("bb-test-marker installer={url} suite=mochitest")),
        "{log}"
    );
    let m = server.lwr(&["manifest", &format!("{g}/test")]);
    let m = m.assert_success().json();
    assert_eq!(m["extra"]["buildbot"]["number"], 1, "{m:#}");
    assert_eq!(m["extra"]["buildbot"]["worker"], "w1", "{m:#}");
    assert!(
        m["extra"]["buildbot"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&bb.url)),
        "{m:#}"
    );

    // `lwr logs -f` follows a running build's output.
    server.wait_job(g, "gate", JobState::Running, Some("bb-bridge"));
    let follow_log = dir.path().join("follow.out");
    let _follow = spawn(
        Command::new(bin()).env("LWR_SERVER", &server.url).args([
            "logs",
            "-f",
            &format!("{g}/gate"),
        ]),
        &follow_log,
    );
    wait_until(
        "lwr logs -f to show the running build's output",
        DEADLINE,
        || {
            let text = std::fs::read_to_string(&follow_log).unwrap_or_default();
            text.contains("gate-waiting").then_some(()).ok_or(text)
        },
    );

    // Killed mid-build and started again, the bridge finds the build: one build, not two.
    bridge_node.kill();
    bridge_node.start();
    std::fs::write(&gate, "").expect("opening the gate");
    server.wait_job(g, "gate", JobState::Succeeded, Some("bb-bridge"));
    let gates = bb.builds("gate", &[]);
    assert_eq!(
        gates.len(),
        1,
        "the restarted bridge forced the build again: {gates:#?}"
    );
    wait_until(
        "lwr logs -f to end with the build's last line",
        DEADLINE,
        || {
            let text = std::fs::read_to_string(&follow_log).unwrap_or_default();
            text.contains("gate-done").then_some(()).ok_or(text)
        },
    );

    // `lwr cancel` stops the build; Buildbot reports it cancelled (6).
    server.wait_job(g, "slow", JobState::Running, Some("bb-bridge"));
    wait_until("the slow build to start", BUILDBOT_DEADLINE, || {
        let b = bb.builds("slow", &[]);
        (b.len() == 1).then_some(()).ok_or(format!("{b:#?}"))
    });
    server
        .lwr(&["cancel", &format!("{g}/slow")])
        .assert_success();
    wait_until(
        "Buildbot to report the slow build cancelled",
        DEADLINE,
        || {
            let b = bb.builds("slow", &[]);
            let results: Vec<&Value> = b.iter().map(|b| &b["results"]).collect();
            (results == [&Value::from(6)])
                .then_some(())
                .ok_or(format!("{results:?}"))
        },
    );

    // A builder that built the revision and is not in the graph is a difference (exit 1).
    let forced = bb.post(
        "forceschedulers/direct",
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "force",
            "params": {"builderNames": ["extra-builder"], "revision": rev, "reason": "test"}}),
    );
    assert!(forced.get("result").is_some(), "{forced}");
    wait_until("extra-builder's build to finish", BUILDBOT_DEADLINE, || {
        let b = bb.builds("extra-builder", &[]);
        b.iter()
            .any(|b| b["complete"] == true)
            .then_some(())
            .ok_or(format!("{b:#?}"))
    });
    let repo_arg = repo.display().to_string();
    let diff = lwr(&[
        "graph",
        "diff",
        "--buildbot",
        &bb.url,
        "--revision",
        &rev,
        "--repo",
        &repo_arg,
    ]);
    assert_eq!(diff.status.code(), Some(1), "{diff}");
    assert!(diff.stdout.contains("+ extra-builder"), "{diff}");
    // Every Buildbot job of the graph matched a build; the plain ones did not.
    assert!(
        diff.stdout.contains("- build ") && !diff.stdout.contains("- test "),
        "{diff}"
    );
}
