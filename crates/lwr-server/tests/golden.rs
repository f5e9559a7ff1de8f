//! API compatibility: recorded v1 exchanges (`tests/golden/v1.json`) replayed against a real
//! server over HTTP. A response must still hold every recorded field with the recorded value;
//! new fields may appear (a v1 client ignores them), but a field removed, renamed or changed
//! in type or meaning fails here. Volatile values (times, uids, counters) are recorded as
//! `"$any"`. Runs on SQLite always, and on PostgreSQL with `LWR_TEST_POSTGRES_URL`.
//!
//! To record after an intended compatible change (new endpoint, new exchange), run
//! `LWR_BLESS=1 cargo test -p lwr-server --test golden` (it writes the file and fails) and
//! review the diff.

#[path = "support/bless.rs"]
mod bless;

use std::path::PathBuf;
use std::time::Duration;

use lwr_server::Config;
use lwr_store::Store;
use serde_json::{Map, Value, json};

/// Fields whose values differ from run to run or backend to backend, and human-readable
/// messages (a client may show them, never parse them; `field` names stay exact).
const VOLATILE: &[&str] = &[
    "error",
    "note",
    "database",
    "created_at",
    "started_at",
    "finished_at",
    "last_seen",
    "seq",
    "uid",
    "version",
];

fn golden_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1.json")
}

/// Starts a server on a free port over the database at `url`; returns its base URL.
async fn serve(url: &str, data_dir: PathBuf) -> String {
    let store = Store::open(url).await.unwrap();
    let (addr, serve) =
        lwr_server::bind("127.0.0.1:0".parse().unwrap(), store, Config::new(data_dir))
            .await
            .unwrap();
    tokio::spawn(serve);
    format!("http://{addr}")
}

/// Replays every exchange; returns the file with the responses this server gave.
async fn replay(base: &str, file: &Value, bless: bool) -> Value {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut out = file.clone();
    let exchanges = out["exchanges"].as_array_mut().expect("exchanges");
    let mut failures = Vec::new();
    for (i, ex) in exchanges.iter_mut().enumerate() {
        let method = ex["method"].as_str().expect("method");
        let path = ex["path"].as_str().expect("path").to_string();
        let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(body) = ex.get("body") {
            req = req.json(body);
        }
        if let Some(text) = ex.get("text").and_then(Value::as_str) {
            req = req
                .header("content-type", "application/octet-stream")
                .body(text.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let got = json!({"status": status, "body": mask(body)});
        let label = format!("#{i} {method} {path}");
        if bless {
            ex["response"] = got;
        } else {
            match ex.get("response") {
                None => failures.push(format!("{label}: no recorded response (bless first)")),
                Some(want) => {
                    if let Err(e) = holds(want, &got, "") {
                        failures.push(format!(
                            "{label}: {e}\n  recorded: {want}\n  got:      {got}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "a v1 client would break:\n{}",
        failures.join("\n")
    );
    out
}

/// Replaces volatile values by "$any".
fn mask(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) && !v.is_null() {
                        Value::String("$any".into())
                    } else {
                        mask(v)
                    };
                    (k, v)
                })
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask).collect()),
        other => other,
    }
}

/// Whether `got` still holds everything `want` recorded: same values, same array lengths,
/// every recorded key present; keys `got` adds are allowed.
fn holds(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::String(s), _) if s == "$any" => Ok(()),
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let gv = g.get(k).ok_or_else(|| format!("{at}/{k} is missing"))?;
                holds(wv, gv, &format!("{at}/{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!("{at}: {} items, recorded {}", g.len(), w.len()));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                holds(wv, gv, &format!("{at}/{i}"))?;
            }
            Ok(())
        }
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{at}: {g}, recorded {w}")),
    }
}

async fn check(url: &str, data_dir: PathBuf) {
    let bless = bless::requested();
    let text = std::fs::read_to_string(golden_file()).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let base = serve(url, data_dir).await;
    let recorded = replay(&base, &file, bless).await;
    if bless {
        let mut text = serde_json::to_string_pretty(&recorded).unwrap();
        text.push('\n');
        bless::write_and_fail(&[(&golden_file(), &text)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_v1_exchanges_still_hold_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lwr.db").display());
    check(&url, dir.path().to_path_buf()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
async fn recorded_v1_exchanges_still_hold_on_postgres() {
    assert!(
        !bless::requested(),
        "exchanges are recorded on SQLite only; rerun without LWR_BLESS to check PostgreSQL"
    );
    let admin = std::env::var(lwr_store::scratch::POSTGRES_URL_VAR)
        .expect("set LWR_TEST_POSTGRES_URL to run the PostgreSQL tests");
    let db = lwr_store::scratch::ScratchDb::create(&admin).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = tokio::spawn({
        let url = db.url.clone();
        let data = dir.path().to_path_buf();
        async move { check(&url, data).await }
    })
    .await;
    db.drop_db().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[test]
fn the_comparison_allows_new_fields_but_not_missing_or_changed_ones() {
    let want = json!({"a": 1, "b": {"c": "$any"}, "d": [1, 2]});
    assert!(
        holds(
            &want,
            &json!({"a": 1, "b": {"c": 5}, "d": [1, 2], "new": true}),
            ""
        )
        .is_ok()
    );
    assert!(holds(&want, &json!({"a": 1, "b": {}, "d": [1, 2]}), "").is_err());
    assert!(holds(&want, &json!({"a": "1", "b": {"c": 5}, "d": [1, 2]}), "").is_err());
    assert!(holds(&want, &json!({"a": 1, "b": {"c": 5}, "d": [1]}), "").is_err());
}
