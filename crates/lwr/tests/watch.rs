//! Watching a graph (`lwr push --wait`, `lwr watch`) and finding what failed (`lwr graphs`,
//! `lwr jobs` filters, `lwr show`, `lwr logs -f`'s exit code), through the real binary
//! against one server and one node shared by every check (the CI time budget is tight).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lwr_model::{GraphId, JobState};

/// A graph whose watch output is known line for line: a chain that fails at `c`.
const CHAIN: &str = "version: 1
jobs:
  a:
    run: \"true\"
  b:
    needs: [a]
    run: \"true\"
  c:
    needs: [b]
    run: echo failing on purpose; exit 4
  d:
    needs: [c]
    run: \"true\"
";

/// `a  succeeded in 1.2s: x` as `a  succeeded in T: x`: times differ from run to run.
fn without_times(line: &str) -> String {
    let Some(at) = line.find(" in ") else {
        return line.to_string();
    };
    let rest = &line[at + 4..];
    let end = rest.find(':').unwrap_or(rest.len());
    format!("{} in T{}", &line[..at], &rest[end..])
}

/// The lines between `graph N: URL` and the summary: one per change.
fn change_lines(stdout: &str, graph: GraphId) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&format!("graph {graph}: http")))
        .skip(1)
        .take_while(|l| !l.starts_with(&format!("graph {graph} ")) && !l.starts_with("timed out"))
        .map(without_times)
        .collect()
}

#[test]
fn watching_a_graph_and_finding_what_failed() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut server = Server::start(dir);
    let _node = server.node(dir, "n1", 4, &[]);
    server.wait_node("n1");

    // Without a terminal: one line per change, every change, in order.
    let chain = git_repo(&dir.join("chain"), CHAIN);
    let chain = chain.display().to_string();
    let out = server.lwr(&["push", "--repo", &chain, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "a failed job: exit 1\n{out}");
    let g = out.pushed_graph();
    assert!(
        out.stdout
            .contains(&format!("graph {g}: {}/graphs/{g}\n", server.url)),
        "the graph's page in the web app: {out}"
    );
    let d = server.job(g, "d");
    let blocked = d.info.reason.clone().unwrap_or_default();
    assert_eq!(
        change_lines(&out.stdout, g),
        [
            "a  running on n1".to_string(),
            "a  succeeded in T".into(),
            "b  running on n1".into(),
            "b  succeeded in T".into(),
            "c  running on n1".into(),
            "c  failed in T: exit code 4".into(),
            format!("d  blocked: {blocked}"),
        ],
        "{out}"
    );
    let summary = format!("graph {g} failed: 2 succeeded, 1 failed, 1 blocked of 4 in ");
    assert!(out.stdout.contains(&summary), "{out}");
    let tail =
        format!("--- c: the end of its log (all of it: lwr logs {g}/c) ---\nfailing on purpose\n");
    assert!(
        out.stdout.contains(&tail),
        "the failed job's log tail: {out}"
    );

    // Finding it again.
    let failed = server.lwr(&["jobs", "--state", "failed", "--graph", "latest", "--json"]);
    let jobs = failed.assert_success().json()["jobs"].clone();
    let names: Vec<&str> = jobs
        .as_array()
        .map(|a| a.iter().filter_map(|j| j["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["c"], "{failed}");
    assert!(jobs[0]["started_at"].is_string() && jobs[0]["finished_at"].is_string());
    let names_of = |args: &[&str]| -> Vec<String> {
        let out = server.lwr(args);
        out.assert_success().json()["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|j| j["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let gs = g.to_string();
    assert_eq!(
        names_of(&["jobs", "--graph", &gs, "--name", "[ab]", "--json"]),
        ["a", "b"]
    );
    assert_eq!(
        names_of(&["jobs", "--graph", &gs, "--limit", "2", "--json"]),
        ["c", "d"]
    );
    assert_eq!(
        names_of(&["jobs", "--state", "succeeded,blocked", "--json"]),
        ["a", "b", "d"]
    );
    let table = server.lwr(&["jobs", "--graph", &gs]);
    let header = table.assert_success().stdout.lines().next().unwrap_or("");
    for column in ["NAME", "STATE", "STARTED", "DURATION", "REASON"] {
        assert!(header.contains(column), "{table}");
    }
    let graphs = server.lwr(&["graphs"]);
    let row = graphs
        .assert_success()
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{g} ")))
        .unwrap_or_else(|| panic!("no graph {g} in {graphs}"))
        .to_string();
    for word in [
        chain.as_str(),
        "main",
        "failed",
        "2/4 ok, 1 failed, 1 blocked",
    ] {
        assert!(row.contains(word), "'{word}' in {row:?}\n{graphs}");
    }
    let listed = server.lwr(&["graphs", "--json"]).json();
    assert_eq!(listed["graphs"][0]["id"], g.get(), "{listed:#}");
    assert!(listed["graphs"][0]["finished_at"].is_string(), "{listed:#}");
    let show = server.lwr(&["show", &format!("{g}/c")]);
    for part in [
        "exit code 4",
        "failing on purpose",
        "n1",
        "echo failing on purpose",
    ] {
        assert!(show.stdout.contains(part), "'{part}' in {show}");
    }
    let followed = server.lwr(&["logs", &format!("{g}/c"), "-f"]);
    assert_eq!(followed.status.code(), Some(1), "{followed}");
    server
        .lwr(&["logs", &format!("{g}/a"), "-f"])
        .assert_success();

    // A job no node can run: said once, and named when --timeout gives up.
    let nowhere = git_repo(
        &dir.join("nowhere"),
        "version: 1\njobs:\n  never:\n    node: {os: plan9}\n    run: \"true\"\n",
    );
    let nowhere = nowhere.display().to_string();
    let out = server.lwr(&["push", "--repo", &nowhere, "--wait", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(124), "{out}");
    let g2 = out.pushed_graph();
    assert_eq!(
        change_lines(&out.stdout, g2),
        ["never  cannot start: no node matches: os=plan9 (n1 has linux)"],
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("lwr cancel --graph {g2} --server {}", server.url)),
        "how to stop the graph: {out}"
    );
    assert!(
        out.stdout.contains("pending    never (job ") && out.stdout.contains("os=plan9"),
        "{out}"
    );
    server
        .lwr(&["cancel", "--graph", &g2.to_string()])
        .assert_success();

    // --fail-fast cancels the rest; a failure the job cannot explain ends its log.
    let gate = dir.join("gate");
    let fast = git_repo(
        &dir.join("fast"),
        &format!(
            "version: 1\njobs:\n  slow:\n    run: while [ ! -e {gate} ]; do sleep 0.1; done\n  \
             art:\n    run: \"true\"\n    artifacts:\n      - {{name: out, path: out.txt}}\n",
            gate = sh_quote(&gate)
        ),
    );
    let fast = fast.display().to_string();
    let out = server.lwr(&["push", "--repo", &fast, "--wait", "--fail-fast"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    let g3 = out.pushed_graph();
    assert!(
        out.stdout.contains(&format!(
            "--fail-fast: art failed; cancelled 1 unfinished job of graph {g3}"
        )),
        "{out}"
    );
    assert_eq!(server.jobs(g3)["slow"].state, JobState::Cancelled);
    let log = server.lwr(&["logs", &format!("{g3}/art")]);
    let last = log.stdout.lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("lwr: ") && last.contains("'out' (out.txt) is missing"),
        "the reason is the log's last line: {log}"
    );
    assert!(out.stdout.contains(&last), "and the watch shows it: {out}");

    // On a terminal: a live view whose times move; Ctrl-C leaves the graph running.
    let gated = git_repo(
        &dir.join("gated"),
        &format!(
            "version: 1\njobs:\n  wait:\n    run: while [ ! -e {gate} ]; do sleep 0.1; done\n",
            gate = sh_quote(&gate)
        ),
    );
    let out = server.push(&gated, false);
    let g4 = out.assert_success().pushed_graph();
    server.wait_job(g4, "wait", JobState::Running, Some("n1"));
    let tty = on_a_terminal(dir, &server.url, &["watch", &g4.to_string()]);
    assert_eq!(tty["code"], 130, "{tty:#}");
    let screen = tty["out"].as_str().unwrap_or_default();
    assert!(tty["times_moved"].as_bool().unwrap_or(false), "{screen}");
    assert!(screen.contains("\x1b["), "redrawn in place: {screen:?}");
    assert!(
        screen.contains(&format!("graph {g4} goes on"))
            && screen.contains(&format!("lwr cancel --graph {g4} --server {}", server.url)),
        "{screen}"
    );
    assert_eq!(server.jobs(g4)["wait"].state, JobState::Running);

    // The server goes away and comes back: one line each way, then the watch goes on.
    let (out_file, err_file) = (dir.join("watch.out"), dir.join("watch.err"));
    let mut watcher = Command::new(bin())
        .args(["watch", &g4.to_string()])
        .env("LWR_SERVER", &server.url)
        .env_remove("LWR_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("watch stdout"))
        .stderr(std::fs::File::create(&err_file).expect("watch stderr"))
        .spawn()
        .expect("spawning lwr watch");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until("the watch to start", DEADLINE, || {
        let text = read(&out_file);
        text.contains(&format!("graph {g4}: http"))
            .then_some(())
            .ok_or(text)
    });
    server.kill();
    wait_until("the watch to notice the server is away", DEADLINE, || {
        let err = read(&err_file);
        err.contains("cannot reach").then_some(()).ok_or(err)
    });
    // Away for a while: long enough for many retries, none of which may print a line.
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    std::fs::write(&gate, "").expect("opening the gate");
    let status = wait_until("the watch to end", DEADLINE, || {
        watcher
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| read(&out_file))
    });
    let (stdout, stderr) = (read(&out_file), read(&err_file));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(
        stderr.matches("cannot reach").count(),
        1,
        "one line for the outage: {stderr}"
    );
    assert!(
        stdout.contains("the server answers again"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("wait  succeeded in ") && stdout.contains(&format!("graph {g4} succeeded")),
        "{stdout}"
    );

    // A node's disable reason has a column of its own, not TAGS's.
    server
        .lwr(&["nodes", "disable", "n1", "--reason", "disk check"])
        .assert_success();
    let nodes = server.lwr(&["nodes"]);
    let lines: Vec<&str> = nodes.assert_success().stdout.lines().collect();
    let (header, row) = (lines[0], lines.get(1).copied().unwrap_or_default());
    let column = |line: &str, at: usize| line.get(at..).unwrap_or_default().to_string();
    let (tags, reason) = (
        header.find("TAGS").unwrap_or(0),
        header.find("REASON").unwrap_or(0),
    );
    assert!(column(row, tags).starts_with("- "), "{nodes}");
    assert_eq!(column(row, reason), "disk check", "{nodes}");
}

/// Runs `lwr ARGS` on a pseudo-terminal (python3's pty module), sends Ctrl-C once the
/// running job's elapsed time has been drawn with two values, and returns what happened:
/// `{"code", "out", "times_moved"}`.
fn on_a_terminal(dir: &Path, server: &str, args: &[&str]) -> serde_json::Value {
    let script = dir.join("watch_on_a_tty.py");
    std::fs::write(&script, PTY_SCRIPT).expect("writing the pty script");
    let out = Command::new("python3")
        .arg(&script)
        .arg(bin())
        .args(args)
        .env("LWR_SERVER", server)
        .env("NO_COLOR", "1")
        .env_remove("LWR_TOKEN")
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "pty script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pty script output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const PTY_SCRIPT: &str = r#"
import fcntl, json, os, pty, re, select, struct, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
out, sent, moved = b"", False, False
deadline = time.time() + 60
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    if not sent and len(set(re.findall(rb"running ([0-9.]+s) on", out))) >= 2:
        moved, sent = True, True
        os.write(fd, b"\x03")
    if not sent and time.time() > deadline - 30:
        sent = True
        os.write(fd, b"\x03")
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "out": out.decode("utf-8", "replace"), "times_moved": moved}))
"#;
