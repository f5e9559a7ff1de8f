//! The checked-in manifest schema must be exactly what the types generate, so the schema
//! users validate against never drifts from what servers write. After an intended change,
//! run `LWR_BLESS=1 cargo test -p lwr-model --test manifest_schema` (it writes the file and
//! fails), review and commit the file.

#[path = "../../lwr-server/tests/support/bless.rs"]
mod bless;

use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/manifest-v1.json")
}

#[test]
fn checked_in_manifest_schema_matches_the_types() {
    let generated = lwr_model::manifest::schema_json();
    let path = checked_in();
    if bless::requested() {
        bless::write_and_fail(&[(&path, &generated)]);
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the manifest types; if the change is intended, run \
         `LWR_BLESS=1 cargo test -p lwr-model --test manifest_schema` and commit the file",
        path.display()
    );
}
