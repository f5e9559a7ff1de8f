//! The checked-in OpenAPI document must be exactly what the code generates, so the API's
//! description in the repository never drifts from the API. After an intended change, run
//! `LWR_BLESS=1 cargo test -p lwr-server --test openapi` (it writes the file and fails),
//! review and commit the new file.

#[path = "support/bless.rs"]
mod bless;

use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/lwr-v1.json")
}

#[test]
fn checked_in_openapi_matches_the_code() {
    let generated = lwr_server::api::openapi_string();
    let path = checked_in();
    if bless::requested() {
        bless::write_and_fail(&[(&path, &generated)]);
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the API the code serves; if the change is intended, run \
         `LWR_BLESS=1 cargo test -p lwr-server --test openapi` and commit the file",
        path.display()
    );
}

#[test]
fn every_route_is_documented_under_v1() {
    let doc = lwr_server::api::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    // `/metrics` alone sits beside /v1, where Prometheus scrapers look by default.
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/v1/") || p.as_str() == "/metrics"),
        "{paths:?}"
    );
    for needed in [
        "/v1/graphs",
        "/v1/jobs",
        "/v1/nodes/{id}/claim",
        "/v1/jobs/{id}/log",
        "/metrics",
    ] {
        assert!(
            paths.iter().any(|p| *p == needed),
            "{needed} missing from {paths:?}"
        );
    }
}
