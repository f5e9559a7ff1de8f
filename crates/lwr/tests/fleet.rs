//! Servers that share nothing but PostgreSQL and the object store: three servers with data
//! dirs of their own, one database, one S3 bucket (moto). A log stored through one is read
//! through another; `lwr logs -f` through B follows a job whose node streams to A and goes
//! on when A (and then B) is killed, every line once, in order; nodes given all three URLs
//! finish a 2,000-job graph while the servers are killed and restarted one after another,
//! every job once. These tests need `LWR_TEST_POSTGRES_URL` (and moto); without it they
//! are reported as ignored.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lwr_model::JobState;

/// How long the big graph may take here (a debug build on two cores, servers dying).
const GRAPH_DEADLINE: Duration = Duration::from_secs(420);

/// Three servers on `db` sharing the bucket of `moto`, with lease `lease`.
fn fleet(dir: &Path, db: &PgDb, moto: &Moto, lease: &str) -> [Server; 3] {
    moto.create_bucket("fleet");
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = ["--artifact-store", "s3://fleet/lwr"];
    ["server-a", "server-b", "server-c"]
        .map(|label| Server::start_on_db_with(dir, label, &db.url, lease, &store, &env))
}

fn urls(servers: &[&Server]) -> String {
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    urls.join(",")
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn a_log_stored_through_one_server_is_read_through_another() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let [a, b, c] = fleet(dir, &db, &moto, "30s");
    let _node = a.node(dir, "n1", 1, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  talk:\n    run: \"sh -c 'for i in $(seq 1 500); do echo stored-line-$i; done'\"\n",
    );
    let out = a.push(&repo, true);
    out.assert_success();
    let job = format!("{}/talk", out.pushed_graph());
    let want: String = (1..=500).map(|i| format!("stored-line-{i}\n")).collect();
    for server in [&b, &c] {
        let got = server.lwr(&["logs", &job]);
        got.assert_success();
        assert_eq!(got.stdout, want, "the log through {}", server.url);
    }
    // From an offset, through the third server.
    let detail = c.job(out.pushed_graph(), "talk");
    let tail = c
        .api
        .block_on(c.api.client().log_from(detail.info.id, None, 100))
        .expect("log from offset 100");
    assert_eq!(tail, want.as_bytes()[100..].to_vec());
    // Nothing of it in any data dir: the bucket holds it.
    for server in [&a, &b, &c] {
        let logs = std::fs::read_dir(server.data_dir.join("logs")).map_or(0, |d| d.count());
        assert_eq!(logs, 0, "{} keeps no log of its own", server.url);
    }
}

/// Waits until `file` holds at least `n` lines starting with `prefix`.
fn wait_lines(file: &Path, prefix: &str, n: usize) {
    wait_until(
        &format!("{n} lines in {}", file.display()),
        DEADLINE,
        || {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let got = text.lines().filter(|l| l.starts_with(prefix)).count();
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} lines"))
            }
        },
    );
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn following_through_b_survives_the_death_of_a_where_the_node_streams() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let [mut a, mut b, c] = fleet(dir, &db, &moto, "10s");
    // The node talks to A first; the follower to B, then C.
    let _node = Node::start(dir, &urls(&[&a, &b, &c]), "n1", 1, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  talk:\n    run: \"sh -c 'for i in $(seq 1 240); do printf \\\"live-%04d\\\\n\\\" $i; sleep 0.05; done'\"\n",
    );
    let out = a.push(&repo, false);
    out.assert_success();
    let graph = out.pushed_graph();
    b.wait_job(graph, "talk", JobState::Running, None);

    let followed = dir.join("followed.out");
    let mut follower = Command::new(bin())
        .args(["logs", &format!("{graph}/talk"), "-f"])
        .env("LWR_SERVER", urls(&[&b, &c]))
        .stdout(std::fs::File::create(&followed).expect("output file"))
        .stderr(std::fs::File::create(dir.join("followed.err")).expect("error file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("lwr logs -f");
    wait_lines(&followed, "live-", 40);
    a.kill();
    wait_lines(&followed, "live-", 110);
    // The viewer's own server dies too: it goes on through C.
    b.kill();
    a.restart();
    wait_lines(&followed, "live-", 170);
    b.restart();
    let status = wait_until("the follower to end", DEADLINE, || {
        follower
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still following".to_string())
    });
    let text = std::fs::read_to_string(&followed).expect("followed output");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("live-")).collect();
    let want: Vec<String> = (1..=240).map(|i| format!("live-{i:04}")).collect();
    assert_eq!(
        lines,
        want,
        "every line once, in order; stderr: {}",
        std::fs::read_to_string(dir.join("followed.err")).unwrap_or_default()
    );
    assert!(status.success(), "{status}");
    // And the stored log reads the same through C.
    let stored = c.lwr(&["logs", &format!("{graph}/talk")]);
    stored.assert_success();
    assert_eq!(stored.stdout.lines().count(), 240, "{stored}");
}

#[test]
#[ignore = "set LWR_TEST_POSTGRES_URL and run with --include-ignored"]
fn nodes_with_three_urls_finish_2000_jobs_while_servers_die_one_after_another() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let db = PgDb::create();
    let tmp = tempdir();
    let dir = tmp.path();
    let servers = fleet(dir, &db, &moto, "6s");
    let all = urls(&servers.iter().collect::<Vec<_>>());
    let mut servers = servers;
    let _nodes: Vec<Node> = (1..=4)
        .map(|i| Node::start(dir, &all, &format!("n{i}"), 2, &[]))
        .collect();
    let ledger = dir.join("ledger");
    let mut yml = String::from("version: 1\njobs:\n");
    for i in 0..2000 {
        yml.push_str(&format!(
            "  j{i}:\n    run: \"sh -c 'echo j{i} >> {}'\"\n",
            ledger.display()
        ));
        if i % 100 >= 1 && i % 100 < 10 {
            yml.push_str(&format!("    needs: [j{}]\n", i - 1));
        }
    }
    let repo = git_repo(&dir.join("repo"), &yml);
    let out = lwr_at(Some(&all), &["push", "--repo", &repo.display().to_string()]);
    out.assert_success();
    let graph = out.pushed_graph();
    let succeeded = |servers: &[Server]| -> u64 {
        servers
            .iter()
            .find_map(|s| s.api.graph(graph).ok())
            .map_or(0, |g| g.counts.succeeded)
    };
    // Kill each server in turn once the graph moved on, and bring it back.
    for (k, at) in [(0, 200), (1, 600), (2, 1000)] {
        wait_until(&format!("{at} jobs done"), GRAPH_DEADLINE, || {
            let done = succeeded(&servers);
            if done >= at {
                Ok(())
            } else {
                Err(format!("{done} succeeded"))
            }
        });
        servers[k].kill();
        let then = succeeded(&servers);
        wait_until("progress without it", GRAPH_DEADLINE, || {
            let done = succeeded(&servers);
            if done >= then + 50 {
                Ok(())
            } else {
                Err(format!("{done} succeeded, {then} at the kill"))
            }
        });
        servers[k].restart();
    }
    let jobs = wait_until("the graph to finish", GRAPH_DEADLINE, || {
        match servers[0].api.graph(graph) {
            Ok(info) if info.finished => servers[0]
                .api
                .jobs(Some(graph))
                .map(|l| l.jobs)
                .map_err(|e| e.to_string()),
            Ok(info) => Err(format!("{:?}", info.counts)),
            Err(e) => Err(e.to_string()),
        }
    });
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &jobs {
        *states.entry(j.state.as_str()).or_default() += 1;
    }
    assert_eq!(states.get("succeeded"), Some(&2000), "{states:?}");
    // Each job's command ran once: a claim whose answer died with a server may leave a run
    // that expires and is retried, but its node never started it.
    let ran = std::fs::read_to_string(&ledger).expect("ledger");
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for line in ran.lines() {
        *count.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    assert_eq!(count.len(), 2000, "every job ran");
}

#[test]
fn a_log_stored_by_an_earlier_version_in_the_data_dir_stays_readable() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(dir);
    let _node = server.node(dir, "n1", 1, &[]);
    let repo = git_repo(
        &dir.join("repo"),
        "version: 1\njobs:\n  old:\n    run: \"sh -c 'for i in $(seq 1 50); do echo old-line-$i; done'\"\n",
    );
    let out = server.push(&repo, true);
    out.assert_success();
    let graph = out.pushed_graph();
    let detail = server.job(graph, "old");
    let run = detail.run_history[0].id;
    // Where versions before this one kept it: the data dir, not the artifact store.
    let stored = server
        .data_dir
        .join("artifacts")
        .join(run.to_string())
        .join("log");
    let legacy = server.data_dir.join("logs").join(format!("{run}.log"));
    std::fs::rename(&stored, &legacy).expect("the log is in the artifact store");
    let want: String = (1..=50).map(|i| format!("old-line-{i}\n")).collect();
    let got = server.lwr(&["logs", &format!("{graph}/old")]);
    got.assert_success();
    assert_eq!(got.stdout, want);
    let tail = server
        .api
        .block_on(server.api.client().log_from(detail.info.id, None, 10))
        .expect("log from offset 10");
    assert_eq!(tail, want.as_bytes()[10..].to_vec());
}
