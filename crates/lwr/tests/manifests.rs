//! Artifact manifests and the artifact store, through the real binary: a build's versioned
//! installer reaches its test job through the manifest only; refused uploads leave the store
//! unchanged; missing artifacts fail their job; expired artifacts are swept; the S3 store
//! works against a real S3-compatible server (moto) on loopback.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lwr_client::{ArtifactMeta, StatusCode};
use lwr_model::api::{ClaimRequest, RegisterNode, SubmitGraph};
use lwr_model::manifest::{self, Manifest};
use lwr_model::{GraphId, JobState, NodeId, RunId};
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A build whose installer has a version in its name, and a test that finds it only
/// through the build's manifest.
const BUILD_TEST: &str = r#"version: 1
jobs:
  build:
    run: >-
      mkdir -p dist && printf 'installer-bytes' > dist/app-1.2.3.tar.gz && echo build-log-line &&
      echo '{"version": "1.2.3"}' > "$LWR_EXTRA"
    artifacts:
      - {name: installer, path: "dist/app-*.tar.gz", kind: installer}
      - {name: notes, path: NOTES.txt, optional: true}
  test:
    needs: [build]
    run: lwr fetch build/installer -o inst.bin && grep -q installer-bytes inst.bin && cat "$LWR_MANIFESTS"
"#;

fn manifest_of(server: &Server, job: &str) -> Manifest {
    let out = server.lwr(&["manifest", job]);
    out.assert_success();
    manifest::read(out.stdout.as_bytes()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every file under `dir` with its content, sorted: the state of a directory store.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn run_build_test(server: &Server, dir: &Path) -> GraphId {
    let repo = git_repo(&dir.join("repo"), BUILD_TEST);
    let out = server.push(&repo, true);
    out.assert_success();
    out.pushed_graph()
}

#[test]
fn a_versioned_installer_reaches_the_test_job_through_the_manifest() {
    let tmp = tempdir();
    let dev = Server::dev(tmp.path(), 2, 2);
    let graph = run_build_test(&dev, tmp.path());
    let m = manifest_of(&dev, &format!("{graph}/build"));
    assert_eq!(m.manifest_version, 1);
    assert_eq!(m.job.name, "build");
    assert_eq!(m.job.status, lwr_model::RunState::Succeeded);
    assert_eq!(m.job.exit_code, Some(0));
    assert!(m.job.revision.is_some() && m.job.finished_at.is_some());
    let inst = m.artifact("installer").expect("installer in the manifest");
    assert_eq!(inst.sha256, sha(b"installer-bytes"));
    assert_eq!((inst.kind.as_str(), inst.size), ("installer", 15));
    assert_eq!(inst.path, "dist/app-1.2.3.tar.gz");
    assert!(inst.location.starts_with(&dev.url), "{}", inst.location);
    let log = m.artifact("log").expect("the log is an artifact");
    assert_eq!(log.kind, "log");
    assert_eq!(log.sha256, sha(b"build-log-line\n"));
    assert_eq!(m.extra["version"], "1.2.3");
    assert_eq!(
        m.missing.len(),
        1,
        "the optional notes are listed as missing"
    );
    assert!(m.missing[0].optional && m.missing[0].name == "notes");

    // The test job got the build's manifest location in $LWR_MANIFESTS.
    let test_log = dev.lwr(&["logs", &format!("{graph}/test")]);
    assert!(
        test_log
            .stdout
            .contains(&format!("/v1/runs/{}/manifest", m.job.run_id)),
        "{test_log}"
    );

    // `lwr artifacts --json` lists the same, and the schema is served.
    let out = dev.lwr(&["artifacts", &format!("{graph}/build"), "--json"]);
    out.assert_success();
    let names: Vec<String> = out.json()["artifacts"]
        .as_array()
        .expect("artifacts array")
        .iter()
        .map(|a| a["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["log", "installer"]);
    let schema: serde_json::Value = serde_json::from_str(&manifest::schema_json()).unwrap();
    assert_eq!(schema["title"], "lwr artifact manifest, version 1");

    // Outside a job, JOB/ARTIFACT fetches and verifies.
    let dest = tmp.path().join("fetched.bin");
    let out = dev.lwr(&[
        "fetch",
        &format!("{graph}/build/installer"),
        "-o",
        &dest.display().to_string(),
    ]);
    out.assert_success();
    assert_eq!(std::fs::read(&dest).unwrap(), b"installer-bytes");
}

#[test]
fn a_missing_declared_artifact_fails_its_job_and_is_listed() {
    let tmp = tempdir();
    let dev = Server::dev(tmp.path(), 1, 2);
    let repo = git_repo(
        &tmp.path().join("repo"),
        r#"version: 1
jobs:
  build:
    run: echo no installer today
    artifacts:
      - {name: installer, path: "dist/app-*.tar.gz", kind: installer}
      - {name: symbols, path: "dist/*.sym", kind: symbols, optional: true}
  test:
    needs: [build]
    run: "true"
"#,
    );
    let out = dev.push(&repo, true);
    out.assert_failure();
    let graph = out.pushed_graph();
    let build = dev.job(graph, "build");
    assert_eq!(build.info.state, JobState::Failed);
    let reason = build.info.reason.unwrap_or_default();
    assert!(
        reason.contains("'installer' (dist/app-*.tar.gz) is missing"),
        "{reason}"
    );
    assert_eq!(dev.job(graph, "test").info.state, JobState::Blocked);
    let m = manifest_of(&dev, &format!("{graph}/build"));
    let missing: Vec<(&str, bool)> = m
        .missing
        .iter()
        .map(|x| (x.name.as_str(), x.optional))
        .collect();
    assert_eq!(missing, [("installer", false), ("symbols", true)]);
    assert_eq!(m.job.status, lwr_model::RunState::Failed);
}

/// A node of our own making that holds a run, so the test can upload as a node would.
struct HeldRun {
    node: NodeId,
    run: RunId,
}

fn hold_a_run(server: &Server) -> HeldRun {
    let client = server.api.client();
    let reg = RegisterNode {
        name: "hand".into(),
        // A property no real node has, so only this node can claim the job.
        properties: lwr_node::props::discover([("hand".to_string(), "yes".to_string())].into()),
        slots: 1,
    };
    let node = server.api.block_on(client.register_node(&reg)).unwrap().id;
    let graph = lwr_model::graph::parse(
        "version: 1\njobs:\n  a: {run: x, node: {hand: 'yes'}}\n",
        "lwr.yml",
    )
    .unwrap();
    let sub = SubmitGraph::new(graph);
    server.api.submit(&sub).unwrap();
    let req = ClaimRequest {
        max: 1,
        wait_ms: 5000,
        results: vec![],
        ahead: 0,
    };
    let claimed = server.api.block_on(client.claim(node, &req)).unwrap();
    HeldRun {
        node,
        run: claimed.assignments[0].run_id,
    }
}

fn meta(name: &str, sha256: &str) -> ArtifactMeta {
    ArtifactMeta {
        name: name.into(),
        sha256: sha256.into(),
        kind: "other".into(),
        path: "out/f".into(),
        content_type: "application/octet-stream".into(),
    }
}

#[test]
fn refused_uploads_get_a_json_4xx_and_leave_the_store_unchanged() {
    let tmp = tempdir();
    let server = Server::start_with(tmp.path(), &["--max-artifact-size", "1K"], &[]);
    let held = hold_a_run(&server);
    let client = server.api.client();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"good bytes").unwrap();
    let upload = |m: &ArtifactMeta, f: &Path| {
        server
            .api
            .block_on(client.upload_artifact(held.run, held.node, m, f))
    };
    upload(&meta("good", &sha(b"good bytes")), &file).expect("a good upload is stored");
    let store = server.data_dir.join("artifacts");
    let before = snapshot(&store);
    assert_eq!(before.len(), 1, "{before:?}");

    let big = tmp.path().join("big");
    std::fs::write(&big, vec![1u8; 2048]).unwrap();
    for (what, m, f, status, says) in [
        (
            "hash mismatch",
            meta("h", &sha(b"other bytes")),
            &file,
            422,
            "sha256 mismatch",
        ),
        (
            "dot-dot",
            meta("../escape", &sha(b"good bytes")),
            &file,
            400,
            "'..'",
        ),
        (
            "inner dot-dot",
            meta("a/../../b", &sha(b"good bytes")),
            &file,
            400,
            "'..'",
        ),
        (
            "absolute",
            meta("/etc/passwd", &sha(b"good bytes")),
            &file,
            400,
            "absolute",
        ),
        ("NUL", meta("a\0b", &sha(b"good bytes")), &file, 400, "NUL"),
        (
            "oversize",
            meta("big", &sha(&vec![1u8; 2048])),
            &big,
            413,
            "limit",
        ),
        (
            "duplicate",
            meta("good", &sha(b"good bytes")),
            &file,
            409,
            "already has",
        ),
        ("bad hash", meta("x", "not-a-hash"), &file, 400, "sha256"),
    ] {
        let err = upload(&m, f).expect_err(what);
        assert_eq!(
            err.status().map(|s| s.as_u16()),
            Some(status),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert_eq!(snapshot(&store), before, "{what} changed the store");
    }
    // The error bodies are JSON naming the field.
    let body = raw_put(&format!(
        "{}/v1/runs/{}/artifacts?node={}&name=..%2Fx&sha256={}",
        server.url,
        held.run,
        held.node,
        sha(b"")
    ));
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(json["field"], "name", "{json}");

    // The manifest lists the one good artifact.
    let m = server
        .api
        .block_on(client.manifest_at(&format!("/v1/runs/{}/manifest", held.run)))
        .unwrap();
    let names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["good"]);
}

#[test]
fn staged_uploads_are_stored_only_when_committed_with_a_matching_hash() {
    let tmp = tempdir();
    let server = Server::start(tmp.path());
    let held = hold_a_run(&server);
    let client = server.api.client();
    let store = server.data_dir.join("artifacts");
    let empty = snapshot(&store);

    // The node's way: hashed while sent, then committed with that hash.
    let file = tmp.path().join("f");
    std::fs::write(&file, b"streamed bytes").unwrap();
    let got = server
        .api
        .block_on(client.upload_artifact_hashing(held.run, held.node, &meta("streamed", ""), &file))
        .expect("a staged upload is committed");
    assert_eq!(got, sha(b"streamed bytes"));
    let before = snapshot(&store);
    assert_eq!(before.len(), empty.len() + 1, "{before:?}");
    assert!(before.iter().any(|(_, b)| b == b"streamed bytes"));
    // Sent again (an answer the node lost): a duplicate, promptly, and nothing changes.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![3u8; 3 << 20]).unwrap();
    let err = server
        .api
        .block_on(client.upload_artifact_hashing(held.run, held.node, &meta("streamed", ""), &big))
        .expect_err("a duplicate");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert_eq!(snapshot(&store), before, "a duplicate changed the store");

    let http = Http::new(&server.url);
    let (run, node) = (held.run, held.node);
    let stage = |name: &str, body: &[u8]| {
        let a = http.send_raw(
            "PUT",
            &format!("/v1/runs/{run}/artifacts?node={node}&name={name}"),
            None,
            None,
            body.to_vec(),
        );
        assert_eq!(a.status, 202, "{a:?}");
        assert_eq!(a.body["size"], body.len(), "{a:?}");
        assert_eq!(a.body["sha256"], sha(body), "{a:?}");
        a.body["upload"].as_str().expect("an upload id").to_string()
    };
    let commit = |upload: &str, sha256: &str| {
        http.call(
            "POST",
            &format!("/v1/runs/{run}/artifact-commits?node={node}"),
            None,
            Some(serde_json::json!({"upload": upload, "sha256": sha256})),
        )
    };

    // Staged bytes are not an artifact; a commit with another hash drops them.
    let upload = stage("s", b"good bytes");
    let a = http.call("GET", &format!("/v1/runs/{run}/artifacts/s"), None, None);
    assert_eq!(a.status, 404, "staged is not visible: {a:?}");
    let a = commit(&upload, &sha(b"other bytes"));
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.body["field"], "sha256", "{a:?}");
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{a:?}"
    );
    assert_eq!(
        snapshot(&store),
        before,
        "a refused commit changed the store"
    );
    let a = commit(&upload, &sha(b"good bytes"));
    assert_eq!(a.status, 404, "a refused upload is gone: {a:?}");
    let a = commit("no-such-upload", &sha(b"good bytes"));
    assert_eq!(a.status, 404, "{a:?}");
    let a = commit(&upload, "not-a-hash");
    assert_eq!(a.status, 400, "{a:?}");

    // A matching commit stores it; a second one of the same name is a duplicate.
    let upload = stage("s", b"good bytes");
    let a = commit(&upload, &sha(b"good bytes"));
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["sha256"], sha(b"good bytes"), "{a:?}");
    let with_s = snapshot(&store);
    assert_eq!(with_s.len(), before.len() + 1);
    let a = http.send_raw(
        "PUT",
        &format!("/v1/runs/{run}/artifacts?node={node}&name=s"),
        None,
        None,
        b"again".to_vec(),
    );
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(snapshot(&store), with_s, "a duplicate changed the store");

    // An upload still staged when the run's manifest arrives is dropped.
    stage("never-committed", b"left behind");
    assert_ne!(
        snapshot(&store),
        with_s,
        "staged bytes wait in the store's temp dir"
    );
    let a = http.call(
        "PUT",
        &format!("/v1/runs/{run}/manifest?node={node}"),
        None,
        Some(serde_json::json!({"artifacts": ["streamed", "s"]})),
    );
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(
        snapshot(&store),
        with_s,
        "the staged upload outlived its run"
    );
    let m = server
        .api
        .block_on(client.manifest_at(&format!("/v1/runs/{run}/manifest")))
        .unwrap();
    let mut names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["s", "streamed"]);
}

/// A bare PUT with an empty body; returns the answer's body.
fn raw_put(url: &str) -> String {
    let (host, path) = url
        .trim_start_matches("http://")
        .split_once('/')
        .expect("a URL with a path");
    let mut s = std::net::TcpStream::connect(host).expect("connecting");
    use std::io::{Read, Write};
    write!(
        s,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn a_corrupted_download_is_refused_by_fetch() {
    let tmp = tempdir();
    let dev = Server::dev(tmp.path(), 1, 2);
    let graph = run_build_test(&dev, tmp.path());
    // Corrupt the stored bytes behind the server's back.
    // The artifact, beside the runs' logs (`RUN/log`).
    let stored: Vec<_> = snapshot(&dev.data_dir.join("artifacts"))
        .into_iter()
        .filter(|(p, _)| !p.ends_with("log"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    std::fs::write(&stored[0].0, b"tampered-bytes!").unwrap();
    let dest = tmp.path().join("inst.bin");
    let out = dev.lwr(&[
        "fetch",
        &format!("{graph}/build/installer"),
        "-o",
        &dest.display().to_string(),
    ]);
    out.assert_clear_error(2);
    out.assert_stderr_has(&["sha256 mismatch", &sha(b"installer-bytes")]);
    assert!(!dest.exists(), "nothing is kept from a bad download");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("lwr-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn expired_artifacts_and_their_rows_are_swept() {
    let tmp = tempdir();
    let server = Server::start_with(tmp.path(), &["--artifact-sweep", "1s"], &[]);
    let _node = server.node(tmp.path(), "n1", 2, &[]);
    let repo = git_repo(
        &tmp.path().join("repo"),
        r#"version: 1
jobs:
  short:
    run: echo a > a.txt
    artifacts: [{name: a, path: a.txt}]
    expires: 1s
  long:
    run: echo b > b.txt
    artifacts: [{name: b, path: b.txt}]
"#,
    );
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let store = server.data_dir.join("artifacts");
    wait_until("the short-lived artifact to be swept", DEADLINE, || {
        let m = manifest_of(&server, &format!("{graph}/short"));
        let files = snapshot(&store);
        match (m.artifact("a"), files.len()) {
            (None, 1) => Ok(()),
            (a, n) => Err(format!("artifact a: {a:?}; {n} files in the store")),
        }
    });
    let m = manifest_of(&server, &format!("{graph}/long"));
    let b = m.artifact("b").expect("the default expiry is long");
    assert_eq!(b.sha256, sha(b"b\n"));
    assert!(
        m.artifact("log").is_some(),
        "logs do not expire with artifacts"
    );
    // Fetching it says it may have expired, not only what is left.
    server
        .lwr(&["fetch", &format!("{graph}/short/a")])
        .assert_clear_error(1)
        .assert_stderr_has(&["has no artifact 'a'", "expired"]);
}

#[test]
fn artifacts_wait_on_the_node_while_the_server_is_down() {
    let tmp = tempdir();
    let mut server = Server::start(tmp.path());
    let node = server.node(tmp.path(), "n1", 1, &[]);
    let gate = tmp.path().join("gate");
    let repo = git_repo(
        &tmp.path().join("repo"),
        &format!(
            r#"version: 1
jobs:
  build:
    run: while [ ! -e {gate} ]; do sleep 0.05; done; printf 'kept-bytes' > out.bin
    artifacts: [{{name: out, path: out.bin}}]
"#,
            gate = sh_quote(&gate)
        ),
    );
    let graph = server.push(&repo, false).pushed_graph();
    server.wait_job(graph, "build", JobState::Running, Some("n1"));
    server.kill();
    std::fs::write(&gate, "").unwrap();
    // The job ends with the server away: its artifact waits in the node's outbox, out of
    // the slot dir that the next job empties.
    let outbox = node.work_dir.join("outbox");
    wait_until("the artifact to wait in the outbox", DEADLINE, || {
        let files = snapshot(&outbox);
        match files.iter().any(|(_, c)| c == b"kept-bytes") {
            true => Ok(()),
            false => Err(format!("{files:?}")),
        }
    });
    server.restart();
    let info = server.wait_finished(graph);
    assert_eq!(info.counts.succeeded, 1, "{}", server.describe(Some(graph)));
    let m = manifest_of(&server, &format!("{graph}/build"));
    assert_eq!(
        m.artifact("out").expect("uploaded").sha256,
        sha(b"kept-bytes")
    );
    wait_until("the outbox to empty", DEADLINE, || {
        match snapshot(&outbox).len() {
            0 => Ok(()),
            n => Err(format!("{n} files")),
        }
    });
}

#[test]
fn the_s3_store_serves_a_build_and_test_against_a_local_s3_server() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket("lwr-it");
    let tmp = tempdir();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(
        tmp.path(),
        &[
            "--artifact-store",
            "s3://lwr-it/runs",
            "--max-artifact-size",
            "1M",
        ],
        &env,
    );
    let _node = server.node(tmp.path(), "n1", 2, &[]);
    let graph = run_build_test(&server, tmp.path());
    let m = manifest_of(&server, &format!("{graph}/build"));
    assert_eq!(
        m.artifact("installer").expect("installer").sha256,
        sha(b"installer-bytes")
    );
    assert!(
        snapshot(&server.data_dir.join("artifacts")).is_empty(),
        "nothing in the directory store"
    );
    // The same refusals hold with S3 behind the server.
    let held = hold_a_run(&server);
    let file = tmp.path().join("f");
    std::fs::write(&file, b"good bytes").unwrap();
    let client = server.api.client();
    let err = server
        .api
        .block_on(client.upload_artifact(held.run, held.node, &meta("h", &sha(b"x")), &file))
        .expect_err("hash mismatch");
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    server
        .api
        .block_on(client.upload_artifact(
            held.run,
            held.node,
            &meta("g", &sha(b"good bytes")),
            &file,
        ))
        .expect("a good upload");
    let m = server
        .api
        .block_on(client.manifest_at(&format!("/v1/runs/{}/manifest", held.run)))
        .unwrap();
    let names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["g"]);
    let dest = tmp.path().join("g.bin");
    let g = m.artifact("g").unwrap();
    server
        .api
        .block_on(client.download_verified(&g.location, &g.sha256, &dest))
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"good bytes");
}
