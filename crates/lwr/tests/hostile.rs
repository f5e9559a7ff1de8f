//! Hostile input through the real binary: every bad body, path and query gets a 4xx with a
//! JSON body (naming the field where there is one), the server stays up, and nothing is
//! written: no graph, half or whole.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn node_json(name: &str, slots: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "slots": slots, "properties":
        {"os": "linux", "arch": "x86_64", "hostname": "h", "cores": 1, "memory_mb": 1}})
}

#[test]
fn bad_bodies_paths_and_queries_get_json_4xx_and_change_nothing() {
    let tmp = tempdir();
    let server = Server::start_auth(tmp.path());
    let admin = server.admin_token.clone().expect("an admin token");
    let t = Some(admin.as_str());
    let http = Http::new(&server.url);
    let json_ct = Some("application/json");

    // Bodies that are not what they claim to be.
    // (what, content type, body, status, field)
    type Raw<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, Option<&'a str>);
    let raw: Vec<Raw> = vec![
        (
            "truncated JSON",
            json_ct,
            b"{\"graph\":".to_vec(),
            400,
            None,
        ),
        (
            "not JSON at all",
            json_ct,
            b"\xff\xfe garbage".to_vec(),
            400,
            None,
        ),
        (
            "text/plain",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            Some("Content-Type"),
        ),
        (
            "no content type",
            None,
            b"{}".to_vec(),
            415,
            Some("Content-Type"),
        ),
        ("an array", json_ct, b"[]".to_vec(), 422, Some("body")),
        (
            "trailing garbage",
            json_ct,
            b"{\"graph\":{\"jobs\":[]}} x".to_vec(),
            400,
            None,
        ),
        (
            "nesting 100000 deep",
            json_ct,
            format!(
                "{{\"graph\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            422,
            None,
        ),
        (
            "objects nested 100000 deep around a NUL",
            json_ct,
            format!(
                "{{\"graph\":{}\"\\u0000\"{}}}",
                "{\"a\":".repeat(100_000),
                "}".repeat(100_000)
            )
            .into_bytes(),
            422,
            None,
        ),
    ];
    for (what, ct, body, status, field) in raw {
        let a = http.send_raw("POST", "/v1/graphs", t, ct, body);
        assert_error(&a, status, what);
        if let Some(field) = field {
            assert_eq!(a.body["field"], json!(field), "{what}: {a:?}");
        }
    }

    // Too large: 413, unless the server closed the connection after answering, before the
    // client had sent it all; either way nothing is read past the limit.
    match http.try_send_raw("POST", "/v1/graphs", t, json_ct, vec![b' '; 129 << 20]) {
        Ok(a) => {
            assert_error(&a, 413, "129 MiB");
            let message = a.body["error"].as_str().unwrap_or_default();
            assert!(message.contains("limit of 128 MiB"), "{a:?}");
        }
        Err(e) => assert!(
            e.contains("IncompleteMessage") || e.contains("reset"),
            "{e}"
        ),
    }

    // Well-formed JSON with bad fields: 422 naming the field.
    let job = |extra: serde_json::Value| {
        let mut j = json!({"name": "a", "run": "true"});
        for (k, v) in extra.as_object().expect("an object") {
            j[k] = v.clone();
        }
        json!({"graph": {"jobs": [j]}})
    };
    let cases = vec![
        (
            "NUL in run",
            job(json!({"run": "tr\u{0}ue"})),
            "graph.jobs[0].run",
        ),
        (
            "NUL in an env key",
            job(json!({"env": {"A\u{0}": "1"}})),
            "graph.jobs[0].env.A\u{0}",
        ),
        (
            "negative retries",
            job(json!({"retries": -1})),
            "graph.jobs[0].retries",
        ),
        (
            "huge retries",
            job(json!({"retries": 1e30})),
            "graph.jobs[0].retries",
        ),
        (
            "huge timeout",
            job(json!({"timeout_secs": 18446744073709551616u128 as f64})),
            "graph.jobs[0].timeout_secs",
        ),
        ("zero timeout", job(json!({"timeout_secs": 0})), "graph"),
        (
            "a need that is no job",
            job(json!({"needs": ["nope"]})),
            "graph",
        ),
        ("needs itself", job(json!({"needs": ["a"]})), "graph"),
        ("empty name", job(json!({"name": ""})), "graph"),
        (
            "a name with a newline",
            job(json!({"name": "a\nb"})),
            "graph",
        ),
        ("no jobs key", json!({"graph": {}}), "graph"),
        (
            "jobs is a string",
            json!({"graph": {"jobs": "a"}}),
            "graph.jobs",
        ),
        (
            "a 5000-byte branch",
            json!({"branch": "b".repeat(5000), "graph": {"jobs": [{"name": "a", "run": "true"}]}}),
            "branch",
        ),
    ];
    for (what, body, field) in cases {
        let a = http.call("POST", "/v1/graphs", t, Some(body));
        assert_error(&a, 422, what);
        assert_eq!(a.body["field"], json!(field), "{what}: {a:?}");
    }
    // Over the job limit: refused whole.
    let many: Vec<_> = (0..100_001)
        .map(|i| json!({"name": format!("j{i}"), "run": "true"}))
        .collect();
    let a = http.call(
        "POST",
        "/v1/graphs",
        t,
        Some(json!({"graph": {"jobs": many}})),
    );
    assert_error(&a, 422, "100,001 jobs");

    // Paths and queries.
    let gets = [
        ("/v1/jobs/99999999999999999999", 400),
        ("/v1/jobs/abc", 400),
        ("/v1/jobs/-1", 404),
        ("/v1/jobs/0/log", 404),
        ("/v1/jobs/1/log?run=-1", 400),
        ("/v1/jobs?graph=x", 400),
        ("/v1/jobs?graph=1&graph=2", 400),
        ("/v1/graphs/1?after=1&wait_ms=99999999999999999999", 400),
        ("/v1/graphs/1/jobs/%00", 404),
        ("/v1/graphs/1/jobs/%E2%98%83%F0%9F%92%A9", 404),
        ("/v1/graphs/1/jobs/..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/no/such/endpoint", 404),
    ];
    for (path, status) in gets {
        assert_error(&http.call("GET", path, t, None), status, path);
    }
    // A long poll on a graph that does not exist answers at once.
    let start = Instant::now();
    let a = http.call("GET", "/v1/graphs/424242?after=0&wait_ms=60000", t, None);
    assert_error(&a, 404, "long poll on an unknown graph");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // A method the route does not have.
    assert_error(
        &http.call("DELETE", "/v1/jobs", t, None),
        405,
        "DELETE /v1/jobs",
    );

    // Nodes: names, slots and batches.
    for (what, body, status) in [
        ("slots 0", node_json("n", json!(0)), 400),
        ("slots 1e6", node_json("n", json!(1_000_000)), 400),
        ("slots -1", node_json("n", json!(-1)), 422),
        ("a NUL name", node_json("n\u{0}x", json!(1)), 422),
        ("a control name", node_json("n\u{1b}[31m", json!(1)), 400),
        (
            "a 10,000-char name",
            node_json(&"n".repeat(10_000), json!(1)),
            400,
        ),
    ] {
        assert_error(&http.call("POST", "/v1/nodes", t, Some(body)), status, what);
    }
    let a = http.call("POST", "/v1/nodes", t, Some(node_json("ok", json!(2))));
    assert_eq!(a.status, 200, "{a:?}");
    let node = a.body["id"].as_i64().expect("an id");
    for (what, path, body, status) in [
        (
            "max over u32",
            format!("/v1/nodes/{node}/claim"),
            json!({"max": 4_294_967_296u64}),
            422,
        ),
        (
            "negative wait",
            format!("/v1/nodes/{node}/claim"),
            json!({"max": 1, "wait_ms": -1}),
            422,
        ),
        (
            "5000 results",
            format!("/v1/nodes/{node}/results"),
            json!({"results": vec![json!({"run_id": 1, "outcome": "failed"}); 5000]}),
            422,
        ),
        (
            "unknown outcome",
            format!("/v1/nodes/{node}/results"),
            json!({"results": [{"run_id": 1, "outcome": "meh"}]}),
            422,
        ),
        (
            "10,000 runs",
            format!("/v1/nodes/{node}/heartbeat"),
            json!({"runs": vec![1; 10_000]}),
            422,
        ),
        (
            "unknown node",
            "/v1/nodes/-5/heartbeat".to_string(),
            json!({"runs": []}),
            404,
        ),
    ] {
        assert_error(&http.call("POST", &path, t, Some(body)), status, what);
    }
    for (path, status) in [
        ("/v1/runs/..%2F..%2Fescape/log?node=1", 400),
        ("/v1/runs/1/log?node=abc", 400),
        ("/v1/runs/1/log", 400),
        ("/v1/runs/1/log?node=1", 404),
    ] {
        let a = http.send_raw(
            "PUT",
            path,
            t,
            Some("application/octet-stream"),
            b"x".to_vec(),
        );
        assert_error(&a, status, path);
    }
    // Tokens: bad scopes, lifetimes and labels.
    for (what, body, field) in [
        ("no scopes", json!({"scopes": []}), "scopes"),
        ("unknown scope", json!({"scopes": ["root"]}), "scopes[0]"),
        (
            "lifetime 0",
            json!({"scopes": ["read"], "expires_secs": 0}),
            "expires_secs",
        ),
        (
            "lifetime 1e12 s",
            json!({"scopes": ["read"], "expires_secs": 1_000_000_000_000u64}),
            "expires_secs",
        ),
        (
            "label with a newline",
            json!({"scopes": ["read"], "label": "a\nb"}),
            "label",
        ),
    ] {
        let a = http.call("POST", "/v1/tokens", t, Some(body));
        assert_error(&a, 422, what);
        assert_eq!(a.body["field"], json!(field), "{what}: {a:?}");
    }

    // The server is up, and nothing of the above was stored.
    server.api.health().expect("the server still answers");
    assert!(
        server.api.jobs(None).expect("jobs").jobs.is_empty(),
        "no job stored"
    );
    assert_error(
        &http.call("GET", "/v1/graphs/1", t, None),
        404,
        "no graph stored",
    );
    let nodes = server.api.nodes().expect("nodes").nodes;
    assert_eq!(nodes.len(), 1, "only the good node: {nodes:?}");
    let entries: Vec<_> = std::fs::read_dir(&server.data_dir)
        .expect("the data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|e| e.starts_with("lwr.db")
            || ["logs", "artifacts", "spool", "lock"].contains(&e.as_str())),
        "nothing else in the data dir: {entries:?}"
    );
    let spooled = std::fs::read_dir(server.data_dir.join("spool")).map_or(0, |d| d.count());
    assert_eq!(spooled, 0, "no live log spooled");
    let logs = std::fs::read_dir(server.data_dir.join("logs"))
        .expect("logs")
        .count();
    assert_eq!(logs, 0, "no log written");
    let stored = std::fs::read_dir(server.data_dir.join("artifacts")).map_or(0, |d| {
        d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != ".tmp"))
            .count()
    });
    assert_eq!(stored, 0, "no log or artifact stored");
    // A good graph still goes in.
    let a = http.call("POST", "/v1/graphs", t, Some(job(json!({}))));
    assert_eq!(a.status, 201, "{a:?}");
}
