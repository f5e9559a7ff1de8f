//! README.md's tour, run: `scripts/readme-tour` runs every command of the tour against a
//! fresh `lwr dev` cluster, so the README cannot drift from what lwr does.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_readme_tour_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new("bash")
        .arg(root.join("scripts/readme-tour"))
        .env("LWR", bin())
        .env_remove("LWR_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running scripts/readme-tour");
    // Generous: a push of the example graph on a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the tour") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("the tour ends");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("the tour's output");
    assert!(
        status.success(),
        "the README tour failed ({status}):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
