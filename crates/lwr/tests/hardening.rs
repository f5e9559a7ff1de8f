//! What a hostile node, job or neighbour could do, closed one by one (docs/security.md, the
//! threat model these checks follow). One `--auth` server serves most checks; the checks
//! that need a second Unix user run only as root and say "skipped" otherwise.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lwr_model::JobState;
use serde_json::json;
use sha2::{Digest, Sha256};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn register_body(name: &str, hostname: &str, tags: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "slots": 1, "properties": {"os": "linux", "arch": "x86_64",
        "hostname": hostname, "cores": 1, "memory_mb": 1, "tags": tags}})
}

/// Items 1 (ended runs are final), 2 (one node per node token, pinned properties from the
/// operator), 3 (a private data dir) and the log limit, against one `--auth` server.
#[test]
fn a_node_token_cannot_rewrite_ended_runs_nor_pose_as_another_node() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start_auth_with(dir, &["--max-log-size", "64K"]);
    let admin = server.admin_token.clone().expect("an admin token");
    let http = Http::new(&server.url);

    // 3. The data dir is its owner's only, and so is the database `lwr tokens create`
    // made before the server started (the server tightened it, saying so).
    assert_eq!(mode(&server.data_dir), 0o700, "the data dir");
    assert_eq!(
        mode(&server.data_dir.join("lwr.db")) & 0o077,
        0,
        "lwr.db has group or other bits: {:o}",
        mode(&server.data_dir.join("lwr.db"))
    );

    let n1_token = create_token_offline(&server.data_dir, &["node:register"], &["--label", "n1"]);
    // Its token in a file: in no environment or command line a job could read.
    let token_file = dir.join("n1.token");
    std::fs::write(&token_file, format!("{n1_token}\n")).expect("writing the token file");
    let token_arg = token_file.display().to_string();
    let _n1 = Node::start_with_args(dir, &server.url, "n1", 2, &["--token-file", &token_arg]);
    server.wait_node("n1");
    let n1 = server.api.nodes().expect("nodes").nodes[0].id;
    let repo = git_repo(
        &dir.join("repo"),
        r#"version: 1
jobs:
  honest:
    run: mkdir -p out && echo built > out/a.txt && echo the honest log
    artifacts: [{name: a, path: out/a.txt}]
  loud:
    run: head -c 1000000 /dev/zero | tr '\0' 'y' | fold -w 99
  slow:
    run: sleep 60
  slow2:
    run: sleep 60
"#,
    );
    let graph = server
        .lwr(&[
            "push",
            "--repo",
            &repo.display().to_string(),
            "--token",
            &admin,
        ])
        .assert_success()
        .pushed_graph();
    server.wait_job(graph, "honest", JobState::Succeeded, Some("n1"));
    let honest = server.job(graph, "honest");
    let run = honest.run_history.last().expect("a run").id;
    let manifest_before = http.call(
        "GET",
        &format!("/v1/runs/{run}/manifest"),
        Some(&admin),
        None,
    );
    assert_eq!(manifest_before.status, 200, "{manifest_before:?}");

    // 1. The run has its result and manifest: its node's token changes nothing of it.
    let forged = http.send_raw(
        "PUT",
        &format!("/v1/runs/{run}/log?node={n1}"),
        Some(&n1_token),
        Some("application/octet-stream"),
        b"forged log".to_vec(),
    );
    assert_error(&forged, 409, "rewriting an ended run's log");
    let body = b"forged artifact".to_vec();
    let sha = hex::encode(Sha256::digest(&body));
    let forged = http.send_raw(
        "PUT",
        &format!("/v1/runs/{run}/artifacts?node={n1}&name=b&sha256={sha}"),
        Some(&n1_token),
        Some("application/octet-stream"),
        body,
    );
    assert_error(&forged, 409, "adding an artifact to an ended run");
    let forged = http.call(
        "PUT",
        &format!("/v1/runs/{run}/manifest?node={n1}"),
        Some(&n1_token),
        Some(json!({"artifacts": [], "missing": [], "extra": {"signed": true}})),
    );
    assert_error(&forged, 409, "a second manifest");
    let log = server.api.log(honest.info.id).expect("the log");
    assert_eq!(log.trim(), "the honest log", "the stored log changed");
    let manifest_after = http.call(
        "GET",
        &format!("/v1/runs/{run}/manifest"),
        Some(&admin),
        None,
    );
    assert_eq!(
        manifest_after.body, manifest_before.body,
        "the manifest changed"
    );

    // 2. n1's token is n1's: no second name, and not another hostname or tags for n1.
    let impostor = register_body("impostor", "secure-signer", json!({"hsm": "true"}));
    let a = http.call("POST", "/v1/nodes", Some(&n1_token), Some(impostor));
    assert_error(&a, 403, "a second node name on n1's token");
    let host = lwr_node::props::hostname();
    let posing = register_body("n1", "secure-signer", json!({}));
    let a = http.call("POST", "/v1/nodes", Some(&n1_token), Some(posing));
    assert_error(&a, 403, "n1 claiming another hostname");
    let posing = register_body("n1", &host, json!({"hsm": "true"}));
    let a = http.call("POST", "/v1/nodes", Some(&n1_token), Some(posing));
    assert_error(&a, 403, "n1 claiming a tag it did not have");
    // A token made for one node name registers that name only.
    let n2_token = create_token_offline(&server.data_dir, &["node:register"], &["--node", "n2"]);
    let a = http.call(
        "POST",
        "/v1/nodes",
        Some(&n2_token),
        Some(register_body("n3", &host, json!({}))),
    );
    assert_error(&a, 403, "a token made for n2 registering n3");
    let a = http.call(
        "POST",
        "/v1/nodes",
        Some(&n2_token),
        Some(register_body("n2", &host, json!({}))),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let names: Vec<String> = server
        .api
        .nodes()
        .expect("nodes")
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["n1", "n2"], "only the nodes the tokens were for");

    // 8. Names and labels that would change how a terminal shows the text around them.
    let a = http.call(
        "POST",
        "/v1/tokens",
        Some(&admin),
        Some(json!({"scopes": ["read"], "label": "invoice\u{202E}fdp.exe"})),
    );
    assert_error(&a, 422, "a token label with a direction override");
    let a = http.call(
        "POST",
        "/v1/nodes",
        Some(&admin),
        Some(register_body("n\u{2066}4", &host, json!({}))),
    );
    assert_error(&a, 400, "a node name with a direction isolate");
    // A server URL with user-info names another host: refused before any token is sent.
    let fake = format!("{}@evil.invalid/", server.url);
    lwr_at(Some(&fake), &["jobs", "--token", &admin])
        .assert_clear_error(2)
        .assert_stderr_has(&["user-info"]);
    // `lwr fetch` saves under the artifact's name and never over a file it was not told to.
    let work = dir.join("fetch");
    std::fs::create_dir_all(&work).expect("mkdir");
    let fetch = || {
        Command::new(bin())
            .current_dir(&work)
            .args([
                "fetch",
                &format!("{graph}/honest/a"),
                "--server",
                &server.url,
            ])
            .args(["--token", &admin])
            .env_remove("LWR_MANIFESTS")
            .output()
            .expect("running lwr fetch")
    };
    let out = fetch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(work.join("a")).expect("fetched a"),
        "built\n"
    );
    std::fs::write(work.join("a"), "mine").expect("writing a");
    let out = fetch();
    assert!(!out.status.success(), "fetch overwrote ./a");
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    assert_eq!(std::fs::read_to_string(work.join("a")).expect("a"), "mine");

    // The log limit: the node stops a job whose log outgrows it and cuts the log, with a
    // line saying so; the server cuts what a node sends beyond it the same way.
    let loud = server.wait_finished_job(graph, "loud");
    let log = server.api.log(loud.info.id).expect("the loud log");
    assert!(
        (60_000..=65_536).contains(&log.len()),
        "a 1 MB log under a 64 KiB limit kept {} bytes",
        log.len()
    );
    assert!(
        log.trim_end().ends_with(']') && log.contains("log truncated at 65536 bytes"),
        "{}",
        &log[log.len() - 300..]
    );
    let slow = server.wait_job(graph, "slow", JobState::Running, Some("n1"));
    let slow_run = server
        .job(graph, "slow")
        .run_history
        .last()
        .expect("a run")
        .id;
    let big = vec![b'z'; 200_000];
    let sha = hex::encode(Sha256::digest(&big));
    let status = put_bytes(
        &format!(
            "{}/v1/runs/{slow_run}/log?node={n1}&sha256={sha}",
            server.url
        ),
        &n1_token,
        big,
    );
    assert_eq!(
        status, 204,
        "a log over the limit is stored (cut), not refused"
    );

    // 7. Staged uploads (sent without a hash, waiting for their commit) are limited per run
    // and per node, so one node cannot take the server's slots from every other.
    let slow2 = server.wait_job(graph, "slow2", JobState::Running, Some("n1"));
    let slow2_run = server
        .job(graph, "slow2")
        .run_history
        .last()
        .expect("a run")
        .id;
    let stage = |run: lwr_model::RunId, i: usize| {
        http.send_raw(
            "PUT",
            &format!("/v1/runs/{run}/artifacts?node={n1}&name=s{i}"),
            Some(&n1_token),
            Some("application/octet-stream"),
            b"x".to_vec(),
        )
    };
    for i in 0..16 {
        let a = stage(slow_run, i);
        assert_eq!(a.status, 202, "staged upload {i}: {a:?}");
    }
    let a = stage(slow_run, 16);
    assert_error(&a, 503, "a 17th staged upload of one run");
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("run {slow_run}")),
        "{a:?}"
    );
    for i in 0..8 {
        let a = stage(slow2_run, i);
        assert_eq!(a.status, 202, "another run's staged upload {i}: {a:?}");
    }
    let a = stage(slow2_run, 8);
    assert_error(&a, 503, "a 25th staged upload of one node");
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("node {n1}")),
        "{a:?}"
    );
    for job in [&slow, &slow2] {
        server
            .lwr(&["cancel", &job.id.to_string(), "--token", &admin])
            .assert_success();
    }
    let log = server.api.log(slow.id).expect("the slow log");
    assert!(
        log.starts_with("zzzz") && log.len() <= 65_536 + 200,
        "{} bytes",
        log.len()
    );
    assert!(
        log.contains("log truncated at 65536 bytes, the server's --max-log-size; 134464 more bytes were dropped"),
        "{}",
        &log[log.len() - 200..]
    );
}

/// `PUT` of raw bytes; the status (a 204 has no JSON body for `Http`).
fn put_bytes(url: &str, token: &str, body: Vec<u8>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        reqwest::Client::new()
            .put(url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the server answers")
            .status()
            .as_u16()
    })
}

trait FinishedJob {
    fn wait_finished_job(&self, graph: lwr_model::GraphId, name: &str)
    -> lwr_model::api::JobDetail;
}

impl FinishedJob for Server {
    fn wait_finished_job(
        &self,
        graph: lwr_model::GraphId,
        name: &str,
    ) -> lwr_model::api::JobDetail {
        wait_until(
            &format!("job {name} to end with its log"),
            Duration::from_secs(60),
            || {
                let job = self.job(graph, name);
                match job.run_history.last() {
                    Some(r) if job.info.state.is_terminal() && r.log_size > 0 => Ok(job),
                    _ => Err(format!("{job:?}")),
                }
            },
        )
    }
}

/// Item 4: a provided node's jobs run as `--provider-user`, outside the data dir, cannot
/// read the database, and the node stops with the server.
#[test]
fn provided_nodes_work_as_their_own_user_outside_the_data_dir() {
    if !is_root() {
        println!("skipped: starting nodes as another user needs root");
        return;
    }
    let tmp = tempdir();
    let dir = tmp.path();
    // Others may pass through the test dir, as through a server's parent dir: only the data
    // dir's own mode keeps them out.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut server = Server::start_with(
        dir,
        &[
            "--provider",
            "local",
            "--provider-user",
            "nobody",
            "--provider-max",
            "1",
        ],
        &[],
    );
    let data = server.data_dir.display().to_string();
    let repo = git_repo(
        &dir.join("repo"),
        &format!(
            "version: 1\njobs:\n  snoop:\n    run: >-\n      if cat {data}/lwr.db > /dev/null 2>&1; \
             then echo LEAK; else echo SAFE; fi; echo \"cwd=$(pwd) uid=$(id -u)\"\n"
        ),
    );
    let graph = server.push(&repo, false).assert_success().pushed_graph();
    server.wait_finished(graph);
    let job = server.job(graph, "snoop");
    let log = server.api.log(job.info.id).expect("the log");
    assert!(
        log.contains("SAFE"),
        "a provided node's job read the database: {log}"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("reading users")
        .expect("a user nobody")
        .uid;
    assert!(
        log.contains(&format!("uid={nobody}")),
        "not run as nobody: {log}"
    );
    let cwd = log
        .split("cwd=")
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(
        !cwd.is_empty() && !cwd.starts_with(&data),
        "the job worked in {cwd}, inside {data}"
    );

    // Stopping the server stops its node.
    let url = server.url.clone();
    server.daemon.terminate(Duration::from_secs(30));
    wait_until(
        "the provided node to stop with its server",
        Duration::from_secs(30),
        || {
            let left = nodes_of(&url);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        },
    );
}

/// Processes whose command line names `url`: the nodes of that server.
fn nodes_of(url: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(" node ") && text.contains(url) {
            pids.push(pid);
        }
    }
    pids
}

/// Item 5: more idle connections than the server has descriptors (no token needed) do not
/// keep `/v1/health` from answering; the oldest idle ones are closed to make room.
#[test]
fn idle_connections_cannot_exhaust_the_server() {
    let tmp = tempdir();
    let dir = tmp.path();
    let port = free_port();
    let log = std::fs::File::create(dir.join("server.log")).expect("a log");
    let mut child = Command::new(bin());
    child
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env_remove("LWR_DB")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0);
    // What `ulimit -n 256` does: soft and hard limit alike.
    unsafe {
        child.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                .map_err(std::io::Error::from)
        });
    }
    let child = child.spawn().expect("starting the server");
    // Killed however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.wait();
        }
    }
    let _child = Killed(child);
    let url = format!("http://127.0.0.1:{port}");
    let api = Api::new(&url);
    wait_until("the server to answer", Duration::from_secs(30), || {
        api.health().map_err(|e| e.to_string())
    });
    let mut idle = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 300, "only {} connections", idle.len());
    let started = Instant::now();
    let health = wait_until(
        "health with 400 idle connections open",
        Duration::from_secs(10),
        || api.health().map_err(|e| e.to_string()),
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{health:?}");
    // The first ones were closed to make room: reading them ends at once.
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = first
        .read(&mut buf)
        .expect("the server closed the oldest idle connection");
    assert_eq!(n, 0, "the oldest idle connection got {n} bytes");
    drop(idle);
}

/// Provided nodes leave nothing in the temp dir: a node the provider stops when idle takes
/// its work dir with it, and the server's stop takes the provider's dir.
#[test]
fn provided_nodes_work_dirs_are_removed_when_they_stop() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut server = Server::start_with(
        dir,
        &[
            "--provider",
            "local",
            "--provider-max",
            "1",
            "--provider-idle",
            "1s",
        ],
        &[],
    );
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  where:\n    run: echo \"cwd=$(pwd)\"\n",
    );
    let graph = server.push(&repo, false).assert_success().pushed_graph();
    server.wait_finished(graph);
    let job = server.job(graph, "where");
    let log = server.api.log(job.info.id).expect("the log");
    let cwd = log
        .split("cwd=")
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no cwd in {log}"));
    // TMP/lwr-provided-X/NODE/jobs/SLOT
    let node_dir = cwd
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("{} is too short", cwd.display()))
        .to_path_buf();
    let provider_dir = node_dir.parent().expect("a parent").to_path_buf();
    assert!(
        provider_dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("lwr-provided-")),
        "the job worked in {}",
        cwd.display()
    );
    // Idle for a second: the provider stops the node, and its dir goes with it.
    wait_until(
        "the idle provided node's work dir to be removed",
        Duration::from_secs(30),
        || match node_dir.exists() {
            true => Err(format!("{} still exists", node_dir.display())),
            false => Ok(()),
        },
    );
    // A second job gets a new node; stopping the server removes everything.
    let graph = server.push(&repo, false);
    let graph = graph.assert_success().pushed_graph();
    server.wait_finished(graph);
    let left: Vec<_> = std::fs::read_dir(&provider_dir)
        .expect("the provider's dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "one node's dir while it runs: {left:?}");
    server.daemon.terminate(Duration::from_secs(30));
    let logs: Vec<String> = std::fs::read_dir(server.data_dir.join("provided-nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        !provider_dir.exists(),
        "{} was left behind by the stopped server; the nodes said {logs:#?}",
        provider_dir.display()
    );
}
