//! Access control through the real binary: tokens, scopes, node identity, revocation and
//! expiry, `lwr dev --auth`, and the listen-address guard.

mod common;

use common::*;
use lwr_model::JobState;
use serde_json::{Value, json};

fn pending_graph() -> Value {
    json!({"graph": {"jobs": [{"name": "a", "run": "true"}, {"name": "b", "run": "true", "needs": ["a"]}]}})
}

/// The state a refused request must not change.
fn snapshot(http: &Http, admin: &str) -> Value {
    let get = |path: &str| {
        let a = http.call("GET", path, Some(admin), None);
        assert_eq!(a.status, 200, "GET {path}: {a:?}");
        a.body
    };
    json!({"jobs": get("/v1/jobs"), "nodes": get("/v1/nodes"), "tokens": get("/v1/tokens"),
           "job": get("/v1/jobs/1")})
}

#[test]
fn protected_endpoints_refuse_missing_bad_and_unscoped_tokens_and_change_nothing() {
    let tmp = tempdir();
    let server = Server::start_auth(tmp.path());
    let admin = server.admin_token.clone().expect("an admin token");
    let http = Http::new(&server.url);

    // Public: health and the shapes of the API and of manifests.
    assert_eq!(http.call("GET", "/v1/health", None, None).status, 200);
    assert_eq!(http.call("GET", "/v1/openapi.json", None, None).status, 200);
    let schema = http.call("GET", "/v1/schemas/manifest-v1.json", None, None);
    assert_eq!(schema.status, 200, "{schema:?}");

    // Tokens made online by the admin.
    let make = |scopes: &[&str]| {
        let a = http.call(
            "POST",
            "/v1/tokens",
            Some(&admin),
            Some(json!({"scopes": scopes})),
        );
        assert_eq!(a.status, 201, "{a:?}");
        a.body["token"].as_str().expect("a secret").to_string()
    };
    let read = make(&["read"]);
    let node = make(&["node:register"]);
    let submit = make(&["graph:submit"]);
    let a = http.call("POST", "/v1/graphs", Some(&submit), Some(pending_graph()));
    assert_eq!(a.status, 201, "{a:?}");
    let before = snapshot(&http, &admin);

    // Every protected endpoint, with a body it would accept and a token without its scope.
    let node_body =
        json!({"name": "intruder", "properties": {"os": "linux", "arch": "x86_64"}, "slots": 1});
    let cases: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("POST", "/v1/graphs", Some(pending_graph()), &read),
        ("GET", "/v1/graphs/1", None, &node),
        ("GET", "/v1/graphs/1/jobs/a", None, &node),
        ("POST", "/v1/graphs/1/cancel", None, &read),
        ("GET", "/v1/jobs", None, &node),
        ("GET", "/v1/jobs/1", None, &node),
        ("GET", "/v1/jobs/1/log", None, &node),
        ("POST", "/v1/jobs/1/cancel", None, &node),
        ("POST", "/v1/jobs/1/retrigger", Some(json!({})), &node),
        ("POST", "/v1/nodes", Some(node_body.clone()), &read),
        ("GET", "/v1/nodes", None, &node),
        ("POST", "/v1/nodes/1/claim", Some(json!({"max": 1})), &read),
        (
            "POST",
            "/v1/nodes/1/heartbeat",
            Some(json!({"runs": []})),
            &read,
        ),
        (
            "POST",
            "/v1/nodes/1/results",
            Some(json!({"results": []})),
            &read,
        ),
        (
            "POST",
            "/v1/tokens",
            Some(json!({"scopes": ["admin"]})),
            &read,
        ),
        ("GET", "/v1/tokens", None, &read),
        ("POST", "/v1/tokens/1/revoke", None, &node),
    ];
    for (method, path, body, unscoped) in &cases {
        let what = format!("{method} {path}");
        let a = http.call(method, path, None, body.clone());
        assert_error(&a, 401, &format!("{what} without a token"));
        let a = http.call(method, path, Some("lwr_bogus"), body.clone());
        assert_error(&a, 401, &format!("{what} with a bogus token"));
        let a = http.call(method, path, Some(unscoped), body.clone());
        assert_error(&a, 403, &format!("{what} with a token lacking the scope"));
    }
    // The log upload is streamed, not JSON; it is guarded all the same.
    for token in [None, Some("lwr_bogus")] {
        let a = http.call("PUT", "/v1/runs/1/log?node=1", token, None);
        assert_error(&a, 401, "log upload");
    }
    assert_error(
        &http.call("PUT", "/v1/runs/1/log?node=1", Some(&read), None),
        403,
        "log upload with a read token",
    );
    assert_eq!(
        snapshot(&http, &admin),
        before,
        "refused requests changed nothing"
    );
    assert!(
        std::fs::read_dir(server.data_dir.join("logs"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "no log was stored"
    );
    assert!(
        std::fs::read_dir(server.data_dir.join("artifacts"))
            .map(|d| d
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != ".tmp"))
                .count()
                == 0)
            .unwrap_or(true),
        "no log was stored in the artifact store"
    );

    // The CLI says so in one line, and exits non-zero.
    let repo = git_repo(
        &tmp.path().join("repo"),
        "version: 1\njobs:\n  a:\n    run: true\n",
    );
    let repo = repo.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["authentication required", "Bearer"]);
    let out = server.lwr(&["push", "--repo", &repo, "--token", &read]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["graph:submit"]);
    let out = lwr_at(Some(&server.url), &["jobs", "--token", &node]);
    out.assert_clear_error(1)
        .assert_stderr_has(&["lacks the 'read' scope"]);
    // With the scope, it works; LWR_TOKEN is read like --token.
    server.lwr(&["jobs", "--token", &read]).assert_success();
    server
        .lwr(&["push", "--repo", &repo, "--token", &submit])
        .assert_success();
}

#[test]
fn a_node_token_acts_only_for_its_own_node() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start_auth(dir);
    let admin = server.admin_token.clone().expect("an admin token");
    let http = Http::new(&server.url);
    let n1_token = create_token_offline(&server.data_dir, &["node:register"], &["--label", "n1"]);
    let n2_token = create_token_offline(&server.data_dir, &["node:register"], &["--label", "n2"]);

    let _n1 = Node::start_with_token(dir, &server.url, "n1", 1, &[], Some(&n1_token));
    server.wait_node("n1");
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  slow:\n    run: sleep 60\n",
    );
    let repo_arg = repo.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo_arg, "--token", &admin]);
    let graph = out.assert_success().pushed_graph();
    let running = server.wait_job(graph, "slow", JobState::Running, Some("n1"));
    let detail = server.job(graph, "slow");
    let run = detail.run_history.last().expect("a run").id;
    let n1_id = server.api.nodes().expect("nodes").nodes[0].id;

    // A node token cannot submit graphs or cancel jobs.
    server
        .lwr(&["push", "--repo", &repo_arg, "--token", &n1_token])
        .assert_clear_error(1)
        .assert_stderr_has(&["lacks the"]);
    server
        .lwr(&["cancel", &running.id.to_string(), "--token", &n1_token])
        .assert_clear_error(1)
        .assert_stderr_has(&["lacks the"]);

    // Another node's token cannot act for n1, nor take its name.
    let reg = json!({"name": "n2", "properties": {"os": "linux", "arch": "x86_64", "hostname": "h", "cores": 1, "memory_mb": 1024}, "slots": 1});
    let a = http.call("POST", "/v1/nodes", Some(&n2_token), Some(reg));
    assert_eq!(a.status, 200, "{a:?}");
    let n2_id = a.body["id"].as_i64().expect("an id");
    let steal = json!({"name": "n1", "properties": {"os": "linux", "arch": "x86_64", "hostname": "h", "cores": 1, "memory_mb": 1024}, "slots": 1});
    assert_error(
        &http.call("POST", "/v1/nodes", Some(&n2_token), Some(steal)),
        403,
        "taking n1's name",
    );
    let fail = json!({"results": [{"run_id": run, "outcome": "failed", "exit_code": 1}]});
    for (method, path, body) in [
        (
            "POST",
            format!("/v1/nodes/{n1_id}/results"),
            Some(fail.clone()),
        ),
        (
            "POST",
            format!("/v1/nodes/{n1_id}/heartbeat"),
            Some(json!({"runs": [run]})),
        ),
        (
            "POST",
            format!("/v1/nodes/{n1_id}/claim"),
            Some(json!({"max": 1, "results": fail["results"]})),
        ),
        ("PUT", format!("/v1/runs/{run}/log?node={n1_id}"), None),
        ("PUT", format!("/v1/runs/{run}/log?node={n2_id}"), None),
    ] {
        let a = http.call(method, &path, Some(&n2_token), body);
        assert_error(&a, 403, &format!("{method} {path} with n2's token"));
    }
    // Through its own node id, n2 may report only runs it claimed: refused, not recorded.
    let a = http.call(
        "POST",
        &format!("/v1/nodes/{n2_id}/results"),
        Some(&n2_token),
        Some(fail),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["acks"][0]["recorded"], json!(false), "{a:?}");
    let after = server.job(graph, "slow");
    assert_eq!(after.info.state, JobState::Running, "{after:?}");
    assert_eq!(after.run_history.len(), 1);
    assert_eq!(
        after.run_history[0].log_size, 0,
        "no log was stored: {after:?}"
    );
    assert!(
        !server
            .data_dir
            .join("logs")
            .join(format!("{run}.log"))
            .exists()
    );
    assert!(
        !server
            .data_dir
            .join("artifacts")
            .join(run.to_string())
            .join("log")
            .exists()
    );

    // The admin may cancel; n1 stops the job.
    server
        .lwr(&["cancel", &running.id.to_string(), "--token", &admin])
        .assert_success();
    server.wait_job(graph, "slow", JobState::Cancelled, None);
}

#[test]
fn revoked_and_expired_tokens_stop_working_at_once() {
    let tmp = tempdir();
    let server = Server::start_auth(tmp.path());
    let admin = server.admin_token.clone().expect("an admin token");
    let http = Http::new(&server.url);

    // Revoked online: the very next request is refused.
    let out = server.lwr(&[
        "tokens", "create", "--scope", "read", "--label", "ci", "--token", &admin,
    ]);
    out.assert_success();
    let read = out
        .stdout
        .split_whitespace()
        .last()
        .expect("a token")
        .to_string();
    let id = out
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("an id")
        .to_string();
    assert_eq!(http.call("GET", "/v1/jobs", Some(&read), None).status, 200);
    server
        .lwr(&["tokens", "revoke", &id, "--token", &admin])
        .assert_success();
    let a = http.call("GET", "/v1/jobs", Some(&read), None);
    assert_error(&a, 401, "a revoked token");
    assert!(
        a.body["error"].as_str().unwrap_or("").contains("revoked"),
        "{a:?}"
    );

    // Revoked offline, in the database, while the server runs: refused at once too.
    let other = create_token_offline(&server.data_dir, &["read"], &[]);
    assert_eq!(http.call("GET", "/v1/jobs", Some(&other), None).status, 200);
    let list = lwr(&[
        "tokens",
        "list",
        "--json",
        "--data-dir",
        &server.data_dir.display().to_string(),
    ]);
    let tokens = list.assert_success().json();
    let other_id = tokens["tokens"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|t| t["id"].as_i64())
        .expect("the last token");
    lwr(&[
        "tokens",
        "revoke",
        &other_id.to_string(),
        "--data-dir",
        &server.data_dir.display().to_string(),
    ])
    .assert_success();
    assert_error(
        &http.call("GET", "/v1/jobs", Some(&other), None),
        401,
        "revoked offline",
    );

    // Expired: works until its time, then refused.
    let short = create_token_offline(&server.data_dir, &["read"], &["--expires", "2s"]);
    let a = http.call("GET", "/v1/jobs", Some(&short), None);
    assert_eq!(a.status, 200, "a fresh token works: {a:?}");
    let a = wait_until("the token to expire", DEADLINE, || {
        let a = http.call("GET", "/v1/jobs", Some(&short), None);
        if a.status == 401 {
            Ok(a)
        } else {
            Err(format!("{a:?}"))
        }
    });
    assert!(
        a.body["error"].as_str().unwrap_or("").contains("expired"),
        "{a:?}"
    );
    let list = server.lwr(&["tokens", "list", "--token", &admin]);
    list.assert_success();
    assert!(
        list.stdout.contains("revoked") && list.stdout.contains("expired"),
        "{list}"
    );
    assert!(
        !list.stdout.contains(&short) && !list.stdout.contains(&read),
        "no secrets in {list}"
    );
}

#[test]
fn dev_with_auth_makes_its_own_tokens() {
    let tmp = tempdir();
    let server = Server::dev_auth(tmp.path(), 1, 2);
    let repo = git_repo(
        &tmp.path().join("repo"),
        "version: 1\njobs:\n  a:\n    run: echo hello\n  b:\n    needs: [a]\n    run: true\n",
    );
    let repo = repo.display().to_string();
    server
        .lwr(&["push", "--repo", &repo])
        .assert_clear_error(1)
        .assert_stderr_has(&["authentication required"]);
    // --data-dir finds the admin token lwr dev left there.
    let data = server.data_dir.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo, "--wait", "--data-dir", &data]);
    out.assert_success();
    let graph = out.pushed_graph();
    let info = server.wait_finished(graph);
    assert_eq!(info.counts.succeeded, 2, "{}", server.describe(Some(graph)));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data_dir.join("admin.token"))
            .expect("admin.token")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "admin.token is private to its owner");
}

#[test]
fn a_server_with_auth_may_listen_on_any_address() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    create_token_offline(&data, &["admin"], &[]);
    let port = free_port();
    let mut daemon = Daemon::new(
        "server",
        vec![
            "server".into(),
            "--auth".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        tmp.path().join("server.log"),
        Vec::new(),
    );
    daemon.start();
    let http = Http::new(&format!("http://127.0.0.1:{port}"));
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    wait_until("the server to answer", DEADLINE, || {
        api.health().map_err(|e| e.to_string())
    });
    assert_error(&http.call("GET", "/v1/jobs", None, None), 401, "no token");
    assert!(
        daemon.log_tail(5).contains("authentication on"),
        "{}",
        daemon.log_tail(5)
    );
}

/// Tokens of a job's log line `job token: SECRET`.
fn token_in_log(log: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix("job token: "))
        .unwrap_or_else(|| panic!("no job token in the log: {log}"))
        .trim()
        .to_string()
}

#[test]
fn a_job_reads_its_needs_with_a_token_of_its_own_good_while_it_runs() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start_auth(dir);
    let admin = server.admin_token.clone().expect("an admin token");
    let node_token = create_token_offline(&server.data_dir, &["node:register"], &[]);
    // The node gets its token from its environment, as `--token` allows: a job must not
    // inherit it (it could claim and report for the node).
    let mut node = Daemon::new(
        "node n1",
        [
            "node",
            "--server",
            &server.url,
            "--name",
            "n1",
            "--work-dir",
            &dir.join("n1").display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        dir.join("node-n1.log"),
        vec![dir.join("n1")],
    );
    node.env.push(("LWR_TOKEN".into(), node_token.clone()));
    node.start();
    server.wait_node("n1");
    let repo = git_repo(
        &dir.join("repo"),
        r#"version: 1
jobs:
  build:
    run: mkdir -p dist && echo "app 2.4.1" > dist/app-2.4.1.bin
    artifacts: [{name: installer, path: "dist/app-*.bin", kind: installer}]
  test:
    needs: [build]
    run: >-
      lwr fetch build/installer -o app.bin && grep -q "app 2.4.1" app.bin &&
      echo "job token: $LWR_TOKEN" && lwr jobs --json > /dev/null &&
      if lwr cancel "$LWR_JOB_ID" 2> refused.txt; then exit 9; fi && grep -q "lacks the" refused.txt &&
      echo "cancel refused: the job token only reads"
"#,
    );
    let repo = repo.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo, "--wait", "--token", &admin]);
    let graph = out.pushed_graph();
    let info = server.wait_finished(graph);
    assert_eq!(info.counts.succeeded, 2, "{}", server.describe(Some(graph)));
    let log = server
        .api
        .log(server.job(graph, "test").info.id)
        .expect("the test job's log");
    assert!(log.contains("cancel refused"), "{log}");
    let job_token = token_in_log(&log);
    assert!(job_token.starts_with("lwrjob_"), "{job_token}");
    assert_ne!(job_token, node_token, "the job got the node's token");

    // The run has ended: its token reads nothing any more, and a forged one never did.
    let http = Http::new(&server.url);
    assert_error(
        &http.call("GET", "/v1/jobs", Some(&job_token), None),
        401,
        "a job token after its run",
    );
    let (head, last) = job_token.split_at(job_token.len() - 1);
    let forged = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let a = http.call("GET", "/v1/jobs", Some(&forged), None);
    assert_error(&a, 401, "a forged job token");
    assert!(
        a.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown")),
        "{a:?}"
    );
}

#[test]
fn provided_nodes_get_a_token_from_a_server_with_auth() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start_auth_with(dir, &["--provider", "local", "--provider-max", "2"]);
    let admin = server.admin_token.clone().expect("an admin token");
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  a:\n    run: sleep 1\n  b:\n    run: sleep 1\n",
    );
    let repo = repo.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo, "--wait", "--token", &admin]);
    let graph = out.pushed_graph();
    let info = server.wait_finished(graph);
    assert_eq!(info.counts.succeeded, 2, "{}", server.describe(Some(graph)));
    // One token per node: a node's token acts for that node only.
    let tokens = server.lwr(&["tokens", "list", "--json", "--token", &admin]);
    tokens.assert_success();
    for node in ["local-1", "local-2"] {
        let label = format!(": node {node}\"");
        assert_eq!(tokens.stdout.matches(&label).count(), 1, "{node}: {tokens}");
        assert!(tokens.stdout.contains("\"lwr provider of "), "{tokens}");
    }
}
