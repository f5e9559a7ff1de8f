//! Rolling upgrades: the latest release (the last line of `RELEASES`) and this build in one cluster
//! on one PostgreSQL database. A server and a node of each, each node talking to the other
//! release's server; graphs submitted by both CLIs while the old server runs, is stopped, is
//! restarted on the database the new server migrated, and is finally replaced by the new
//! build. Every job must succeed, once.
//!
//! The old release's binary is built from its commit once and cached (`LWR_UPGRADE_CACHE`,
//! default /tmp/lwr-upgrade-cache, under its version and commit). While this build
//! is the release itself (no code changed since the tag), the "new release" is this
//! build with one extra additive migration (`LWR_TEST_SCHEMA_PROBE`), so the window is
//! exercised before a second release exists. Needs `LWR_TEST_POSTGRES_URL`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lwr_model::GraphId;

/// A release in the cluster: its binary and the environment it runs with.
#[derive(Clone)]
struct Release {
    name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(workspace())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The latest release before HEAD: its version and commit, from the checked-in `RELEASES`
/// file (a clone made without tags still has it, and the commit in its history).
fn latest_release() -> (String, String) {
    let path = workspace().join("RELEASES");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (version, commit) = l.split_once(char::is_whitespace)?;
            Some((version.to_string(), commit.trim().to_string()))
        })
        // A release made on a branch this HEAD does not contain is not its predecessor.
        .rfind(|(_, commit)| git(&["merge-base", "--is-ancestor", commit, "HEAD"]).is_some())
        .unwrap_or_else(|| {
            panic!(
                "no release in {} is an ancestor of HEAD (a shallow clone? fetch its history)",
                path.display()
            )
        })
}

/// The previous release and the new one.
fn releases() -> (Release, Release) {
    let (version, commit) = latest_release();
    let this = PathBuf::from(bin());
    // Compared as code: a release whose sources are HEAD's is this build.
    let unchanged = Command::new("git")
        .args([
            "diff",
            "--quiet",
            &commit,
            "HEAD",
            "--",
            "crates",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .current_dir(workspace())
        .status()
        .is_ok_and(|s| s.success());
    if unchanged {
        let old = Release {
            name: version.clone(),
            bin: this.clone(),
            env: Vec::new(),
        };
        let probe = lwr_store::SCHEMA_PROBE_ENV.to_string();
        let new = Release {
            name: format!("{version}+probe"),
            bin: this,
            env: vec![(probe, "1".into())],
        };
        return (old, new);
    }
    let old = Release {
        name: version.clone(),
        bin: build_release(&version, &commit),
        env: Vec::new(),
    };
    let new = Release {
        name: "HEAD".into(),
        bin: this,
        env: Vec::new(),
    };
    (old, new)
}

/// Hard links of every file under `from` at the same place under `to` (directories are made).
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::hard_link(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `lwr` of a release, built once into the cache (`LWR_UPGRADE_CACHE`, keyed by commit).
///
/// A debug build in a target dir seeded with hard links to this build's compiled dependencies:
/// the release's crates.io dependencies are mostly this build's, so only its own crates
/// compile (a minute or two, where a cold release build takes five to nine). Cargo writes new
/// files and never into existing ones, so the links never change this build's target dir.
fn build_release(version: &str, commit: &str) -> PathBuf {
    let cache = std::env::var("LWR_UPGRADE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/tmp/lwr-upgrade-cache"));
    let short = &commit[..commit.len().min(12)];
    let bin = cache.join(format!("{version}-{short}")).join("lwr");
    if bin.exists() {
        return bin;
    }
    let job = format!("{version}-{}", std::process::id());
    let src = cache.join(format!("src-{job}"));
    let target = cache.join(format!("target-{job}"));
    std::fs::create_dir_all(&cache).expect("creating the upgrade cache");
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("git")
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(commit)
            .current_dir(workspace()),
        &format!("checking out {version} ({short})"),
    );
    // This test's own binary is TARGET/debug/deps/upgrade-HASH: its profile dir holds the
    // dependencies to seed from.
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    if let Some(profile) = profile {
        for dir in ["deps", "build", ".fingerprint"] {
            // Seeding only saves time: a failure just means a longer build.
            let _ = link_tree(&profile.join(dir), &target.join("debug").join(dir));
        }
    }
    run(
        Command::new("cargo")
            .args(["build", "--locked", "--bin", "lwr"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&src),
        &format!("building {version} ({short})"),
    );
    let home = bin.parent().expect("the binary's cache dir");
    std::fs::create_dir_all(home).expect("creating the cache dir");
    // Another test run may be building too: the binary appears whole or not at all.
    let tmp = home.join(format!("lwr.{}", std::process::id()));
    std::fs::copy(target.join("debug/lwr"), &tmp).expect("copying the built lwr");
    std::fs::rename(&tmp, &bin).expect("placing the built lwr");
    let _ = std::fs::remove_dir_all(&target);
    let _ = Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(&src)
        .current_dir(workspace())
        .status();
    bin
}

fn server(dir: &Path, label: &str, release: &Release, db: &str, port: u16) -> Server {
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.join(label);
    let args = [
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data_dir.display().to_string(),
        "--db",
        db,
        "--lease",
        "30s",
    ]
    .map(String::from)
    .to_vec();
    let mut daemon = Daemon::new(
        &format!("{label} ({})", release.name),
        args,
        dir.join(format!("{label}.log")),
        Vec::new(),
    );
    daemon.program = Some(release.bin.clone());
    daemon.env = release.env.clone();
    daemon.start();
    let mut server = Server {
        port,
        url: url.clone(),
        data_dir,
        daemon,
        api: Api::new(&url),
        admin_token: None,
    };
    server.wait_ready();
    server
}

fn node(dir: &Path, name: &str, release: &Release, server: &str) -> Daemon {
    let work = dir.join(name);
    let args = [
        "node",
        "--server",
        server,
        "--name",
        name,
        "--slots",
        "2",
        "--work-dir",
        &work.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut daemon = Daemon::new(
        &format!("node {name} ({})", release.name),
        args,
        dir.join(format!("{name}.log")),
        vec![work],
    );
    daemon.program = Some(release.bin.clone());
    daemon.env = release.env.clone();
    daemon.start();
    daemon
}

fn repo(dir: &Path, prefix: &str) -> PathBuf {
    let mut yml = String::from("version: 1\ncheckout: false\njobs:\n");
    for i in 0..12 {
        yml.push_str(&format!("  {prefix}-{i}:\n    run: \"true\"\n"));
        if i % 4 != 0 {
            yml.push_str(&format!("    needs: [{prefix}-{}]\n", i - 1));
        }
    }
    git_repo(&dir.join(prefix), &yml)
}

/// `lwr push --wait` of `repo` by `cli` through `server`: the graph it made.
fn push(cli: &Release, server: &Server, repo: &Path) -> GraphId {
    let repo = repo.display().to_string();
    let out = program_at(
        &cli.bin,
        Some(&server.url),
        &["push", "--repo", &repo, "--wait"],
    );
    assert!(
        out.success(),
        "{} CLI through {}: {out}\nserver log:\n{}",
        cli.name,
        server.daemon.label,
        server.daemon.log_tail(20)
    );
    out.pushed_graph()
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn two_releases_share_one_database_through_an_upgrade() {
    let (old, new) = releases();
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let (port_a, port_b) = (free_port(), free_port());

    let mut a = server(dir, "server-a", &old, &db.url, port_a);
    // The new release migrates the database while the old server runs on it.
    let b = server(dir, "server-b", &new, &db.url, port_b);
    // Each release's node talks to the other release's server.
    let _old_node = node(dir, "old-node", &old, &b.url);
    let _new_node = node(dir, "new-node", &new, &a.url);
    let schema = db.query_i64("SELECT MAX(version) FROM lwr_schema");

    let mut graphs = vec![
        push(&old, &a, &repo(dir, "old-cli-old-server")),
        push(&new, &b, &repo(dir, "new-cli-new-server")),
        push(&old, &b, &repo(dir, "old-cli-new-server")),
    ];
    // The old server stops mid-upgrade; the cluster goes on through the new one.
    a.daemon.terminate(Duration::from_secs(30));
    graphs.push(push(&new, &b, &repo(dir, "while-old-server-down")));
    // ... and it can start again on the database the new release migrated.
    a.daemon.start();
    a.wait_ready();
    graphs.push(push(&new, &a, &repo(dir, "new-cli-restarted-old-server")));
    graphs.push(push(&old, &a, &repo(dir, "old-cli-restarted-old-server")));
    // Finally it is replaced: the new release on its port and data dir.
    a.daemon.terminate(Duration::from_secs(30));
    drop(a);
    let a2 = server(dir, "server-a", &new, &db.url, port_a);
    graphs.push(push(&old, &a2, &repo(dir, "old-cli-replaced-server")));

    let mut ran_on = std::collections::BTreeSet::new();
    for graph in graphs {
        for (name, job) in b.jobs(graph) {
            assert_eq!(
                (job.state.as_str(), job.runs),
                ("succeeded", 1),
                "job {name} of graph {graph}:\n{}",
                b.describe(Some(graph))
            );
            ran_on.extend(job.node);
        }
    }
    assert!(
        ran_on.contains("old-node") && ran_on.contains("new-node"),
        "both releases' nodes ran jobs: {ran_on:?}"
    );
    assert_eq!(
        db.query_i64("SELECT MAX(version) FROM lwr_schema"),
        schema,
        "the old server never migrated the database back"
    );
    assert!(
        schema >= lwr_store::SCHEMA_VERSION,
        "schema {schema} after the new release started"
    );
}
