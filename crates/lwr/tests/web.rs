//! The web app in a real browser (headless Chromium through chromedriver) against a real
//! `lwr dev` cluster: live pushes and graph, the 200-job graph, the live log viewer and line
//! links, retrigger, and access with `--auth`. Without Chromium these tests say "skipped".
//! Each page's screenshot lands in `target/screenshots/`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::browser::{Browser, http};
use common::*;
use lwr_model::api::SubmitGraph;
use serde_json::Value;

fn lwr_yml(gate: &Path, gate2: &Path) -> String {
    format!(
        r#"version: 1
jobs:
  build:
    run: echo building
  test:
    matrix: {{shard: ["1", "2"]}}
    needs: [build]
    run: echo testing
  package:
    needs: [test]
    run: echo packaging
  lint:
    run: sh -c 'echo lint says no; exit 3'
  docs:
    needs: [lint]
    run: echo docs
  gated:
    run: sh -c 'while [ ! -f {gate} ]; do sleep 0.05; done; echo gated'
  talk:
    run: sh -c 'while [ ! -f {gate2} ]; do sleep 0.05; done; i=1; while [ $i -le 30 ]; do printf "\033[3%dmtalk-line-%03d\033[0m\n" $((i % 8)) $i; i=$((i+1)); sleep 0.02; done'
"#,
        gate = gate.display(),
        gate2 = gate2.display()
    )
}

/// A graph of the shape the issue names: 200 jobs, 600 need edges, 27 levels deep. Its jobs
/// need an OS no node has, so they stay pending and cost the machine nothing.
fn big_graph() -> (String, BTreeSet<(String, String)>) {
    let mut levels: Vec<Vec<String>> = Vec::new();
    let mut n = 0;
    for level in 0..27 {
        let size = if level < 11 { 8 } else { 7 };
        levels.push((0..size).map(|k| format!("j{level}-{k}")).collect());
        n += size;
    }
    assert_eq!(n, 200);
    let mut yml = String::from("version: 1\njobs:\n");
    let mut edges = BTreeSet::new();
    let mut extra = 24; // 192 jobs with 3 needs each, 24 of them with a fourth: 600
    for (level, jobs) in levels.iter().enumerate() {
        for (k, job) in jobs.iter().enumerate() {
            let mut needs: Vec<&String> = Vec::new();
            if level > 0 {
                let prev = &levels[level - 1];
                needs.push(&prev[k % prev.len()]);
                let want = if extra > 0 { 4 } else { 3 };
                let mut i = 0;
                while needs.len() < want {
                    let l = (level * 7 + k * 3 + i) % level;
                    let cand = &levels[l][(k + i) % levels[l].len()];
                    if !needs.contains(&cand) {
                        needs.push(cand);
                    }
                    i += 1;
                }
                if want == 4 {
                    extra -= 1;
                }
            }
            for need in &needs {
                edges.insert(((*need).clone(), job.clone()));
            }
            let needs: Vec<&str> = needs.iter().map(|s| s.as_str()).collect();
            yml.push_str(&format!(
                "  {job}:\n    run: \"true\"\n    node: {{os: plan9}}\n    needs: [{}]\n",
                needs.join(", ")
            ));
        }
    }
    assert_eq!(edges.len(), 600);
    (yml, edges)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

const STATES_JS: &str = "var o={};document.querySelectorAll('[data-job]').forEach(e=>{o[e.getAttribute('data-job')]=e.getAttribute('data-state')});return o";
const EDGES_JS: &str = "return Array.from(document.querySelectorAll('[data-edge]')).map(e=>e.getAttribute('data-edge'))";

#[test]
fn pushes_graph_log_and_retrigger_in_a_browser() {
    let dir = tempdir();
    let Some(b) = Browser::start("pushes_graph_log_and_retrigger_in_a_browser") else {
        return;
    };
    let server = Server::dev(dir.path(), 2, 4);
    let (gate, gate2) = (dir.path().join("gate"), dir.path().join("gate2"));
    let repo = git_repo(&dir.path().join("repo"), &lwr_yml(&gate, &gate2));

    // The pushes page, open before the push, gains it and follows its jobs without a reload.
    b.go(&format!("{}/", server.url));
    b.wait_js(
        "the pushes page to listen for changes",
        "return document.body.classList.contains('live')",
    );
    b.js("window.__lwr_mark = 1");
    let g = server.push(&repo, false).assert_success().pushed_graph();
    let push = format!("#push-{g}");
    b.wait_js(
        "the new push with gated running and lint failed",
        &format!(
            "var p=document.querySelector('{push}');if(!p)return false;\
             var s=n=>{{var e=p.querySelector('[data-job=\"'+n+'\"]');return e&&e.getAttribute('data-state')}};\
             return s('gated')==='running'&&s('lint')==='failed'"
        ),
    );
    std::fs::write(&gate, "").expect("opening the gate");
    b.wait_js(
        "gated to turn succeeded on the pushes page",
        &format!(
            "var e=document.querySelector('{push} [data-job=\"gated\"]');return e&&e.getAttribute('data-state')==='succeeded'"
        ),
    );
    assert_eq!(
        b.js("return window.__lwr_mark"),
        Value::from(1),
        "the page reloaded"
    );
    // Who pushed and what the commit says, recorded by `lwr push`.
    let head = b.js(&format!(
        "return document.querySelector('{push} .push-head').innerText"
    ));
    let head = head.as_str().unwrap_or("");
    assert!(
        head.contains("test graph") && head.contains("t <t@t>") && head.contains("main"),
        "{head}"
    );
    let info = server.api.graph(g).expect("the graph");
    assert_eq!(
        (info.author.as_deref(), info.subject.as_deref()),
        (Some("t <t@t>"), Some("test graph"))
    );
    b.screenshot("pushes");

    // The graph page: every job with its state, every need edge.
    let jobs = server.jobs(g);
    b.go(&format!("{}/graphs/{g}", server.url));
    let states = b.wait_js(
        "the graph page's jobs",
        &format!("var n=document.querySelectorAll('[data-job]').length;return n==={} && (function(){{{STATES_JS}}})()", jobs.len()),
    );
    for (name, job) in &jobs {
        if name == "talk" {
            continue; // it may be going
        }
        assert_eq!(
            states[name],
            Value::from(job.state.as_str()),
            "{name} on the graph page"
        );
    }
    let spec = server.api.graph_spec(g).expect("the graph's spec");
    let want: BTreeSet<String> = spec
        .graph
        .jobs
        .iter()
        .flat_map(|j| j.needs.iter().map(move |n| format!("{n}->{}", j.name)))
        .collect();
    let shown: BTreeSet<String> = strings(&b.js(EDGES_JS)).into_iter().collect();
    assert_eq!(shown, want, "the drawn edges are the graph's needs");
    b.screenshot("graph");
    // Hovering highlights what a job needs and what needs it.
    b.js("document.querySelector('[data-job=\"package\"]').dispatchEvent(new MouseEvent('mouseover',{bubbles:true}))");
    let hot = strings(&b.js(
        "return Array.from(document.querySelectorAll('.job.hot')).map(e=>e.dataset.job).sort()",
    ));
    assert_eq!(hot, ["package", "test-1", "test-2"]);
    b.screenshot("graph-hover");

    // The log viewer follows talk from before its first line to its end.
    let talk = jobs["talk"].id;
    b.go(&format!("{}/jobs/{talk}/log", server.url));
    b.wait_js(
        "the log viewer to follow talk's run",
        "return document.getElementById('log-status').textContent.includes('following')",
    );
    b.js("window.__lwr_mark = 2");
    std::fs::write(&gate2, "").expect("opening the second gate");
    b.wait_js(
        "the log viewer to reach the end of talk's log",
        "return document.getElementById('log-status').textContent.includes('end of log')",
    );
    assert_eq!(
        b.js("return window.__lwr_mark"),
        Value::from(2),
        "the page reloaded"
    );
    let stored = server.api.log(talk).expect("talk's stored log");
    let shown = b.js("return document.querySelectorAll('#lines .l').length");
    assert_eq!(
        shown,
        Value::from(stored.lines().count()),
        "lines shown = lines stored"
    );
    assert_eq!(stored.lines().count(), 30);
    let text = b.text();
    for i in [1, 15, 30] {
        let line = format!("talk-line-{i:03}");
        assert_eq!(text.matches(&line).count(), 1, "{line} once in:\n{text}");
    }
    assert!(
        b.js("return document.querySelectorAll('#lines span[class^=\"f\"]').length")
            .as_u64()
            .unwrap_or(0)
            > 0,
        "ANSI colours are rendered"
    );
    b.screenshot("log");

    // A line range link highlights exactly its lines (the stored log, rendered by the server).
    b.go(&format!("{}/jobs/{talk}/log?run=1#L5-7", server.url));
    let selected = b.wait_js(
        "lines 5 to 7 to be selected",
        "var s=Array.from(document.querySelectorAll('.l.sel')).map(e=>e.id);return s.length&&s",
    );
    assert_eq!(strings(&selected), ["L5", "L6", "L7"]);
    assert!(b.text().contains("talk-line-005"));

    // Retrigger from the job page makes a new run.
    let lint = jobs["lint"].id;
    b.go(&format!("{}/jobs/{lint}", server.url));
    let button = b.wait_js(
        "a retrigger button",
        "return Array.from(document.querySelectorAll('button')).filter(e=>e.innerText.trim()==='retrigger').length",
    );
    assert_eq!(button, Value::from(1));
    b.screenshot("job");
    b.js("Array.from(document.querySelectorAll('button')).find(e=>e.innerText.trim()==='retrigger').click()");
    wait_until("lint's second run", DEADLINE, || {
        let job = server.api.job(lint).map_err(|e| e.to_string())?;
        if job.info.runs == 2 {
            Ok(())
        } else {
            Err(format!("{} runs", job.info.runs))
        }
    });

    // The 200-job graph: every job and every edge, readable in one page.
    let (yml, edges) = big_graph();
    let graph = lwr_model::graph::parse(&yml, "big.yml").expect("the big graph parses");
    let big = server
        .api
        .submit(&SubmitGraph::new(graph))
        .expect("submitting the big graph")
        .id;
    b.go(&format!("{}/graphs/{big}", server.url));
    b.wait_js(
        "200 jobs",
        "return document.querySelectorAll('[data-job]').length===200",
    );
    let shown: BTreeSet<(String, String)> = strings(&b.js(EDGES_JS))
        .into_iter()
        .filter_map(|e| {
            e.split_once("->")
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    assert_eq!(shown, edges, "every edge of the 200-job graph is drawn");
    b.screenshot("graph-200");

    // Nodes and repositories.
    b.go(&format!("{}/nodes", server.url));
    b.wait_js(
        "dev-1 on the nodes page",
        "return document.body.innerText.includes('dev-1')",
    );
    b.screenshot("nodes");
}

#[test]
fn with_auth_a_login_scopes_and_forged_posts() {
    let dir = tempdir();
    let Some(b) = Browser::start("with_auth_a_login_scopes_and_forged_posts") else {
        return;
    };
    let server = Server::dev_auth(dir.path(), 1, 2);
    let admin = server.admin_token.clone().expect("an admin token");
    let repo = git_repo(
        &dir.path().join("repo"),
        "version: 1\njobs:\n  lint:\n    run: sh -c 'exit 3'\n  docs:\n    needs: [lint]\n    run: echo docs\n",
    );
    let repo_arg = repo.display().to_string();
    let g = server
        .lwr(&["push", "--repo", &repo_arg, "--token", &admin])
        .assert_success()
        .pushed_graph();
    let lint = server.job(g, "lint").info.id;
    wait_until("lint to fail", DEADLINE, || {
        let job = server.api.job(lint).map_err(|e| e.to_string())?;
        if job.info.state.is_terminal() {
            Ok(())
        } else {
            Err(job.info.state.to_string())
        }
    });
    let read = server
        .lwr(&["tokens", "create", "--scope", "read", "--token", &admin])
        .assert_success()
        .stdout
        .split_whitespace()
        .last()
        .expect("a token")
        .to_string();

    // No cookie: every page leads to the login page.
    let answer = http("GET", &format!("{}/jobs/{lint}", server.url), &[], "");
    assert_eq!(answer.status, 303);
    assert!(
        answer
            .header("location")
            .is_some_and(|l| l.starts_with("/login?next="))
    );
    let answer = http(
        "GET",
        &format!("{}/jobs/{lint}/log/raw", server.url),
        &[],
        "",
    );
    assert_eq!(answer.status, 303, "the raw log needs a session too");

    let login = |token: &str| {
        b.go(&format!("{}/jobs/{lint}", server.url));
        let input = b.find("input[name=token]");
        assert_eq!(input.len(), 1, "a login form: {}", b.text());
        b.type_text(&input[0], &format!("{token}\u{e007}"));
        b.wait_js(
            "the job page after signing in",
            "return !document.querySelector('input[name=token]') && document.body.innerText.includes('lint')",
        );
        assert!(!b.text().contains(token), "the token shows on the page");
        assert!(!b.url().contains(token), "the token is in the URL");
    };
    let retrigger_buttons = "return Array.from(document.querySelectorAll('button')).filter(e=>/retrigger/i.test(e.innerText)).length";

    // A read token sees the job and is offered no action; its POST is refused.
    login(&read);
    assert_eq!(b.js(retrigger_buttons), Value::from(0), "{}", b.text());
    let cookie = b.cookie_header();
    assert!(cookie.contains("lwr_session="), "{cookie}");
    let form = b.js("var f=document.querySelector('form[action=\"/logout\"]');return f.querySelector('[name=csrf]').value");
    let csrf = form.as_str().expect("the form token").to_string();
    let post = |cookie: &str, origin: Option<&str>, body: &str| {
        let mut headers = vec![
            ("Cookie", cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        http(
            "POST",
            &format!("{}/jobs/{lint}/retrigger", server.url),
            &headers,
            body,
        )
        .status
    };
    let body = format!("csrf={csrf}&with_dependents=false");
    assert_eq!(
        post(&cookie, Some(&server.url), &body),
        403,
        "a read session may not retrigger"
    );
    b.screenshot("job-read-only");

    // An admin session is offered retrigger; a forged POST with its cookie is refused.
    b.go(&format!("{}/", server.url));
    b.js("document.querySelector('form[action=\"/logout\"]').submit()");
    b.wait_js(
        "the login page after signing out",
        "return !!document.querySelector('input[name=token]')",
    );
    login(&admin);
    assert_eq!(
        b.js(retrigger_buttons),
        Value::from(2),
        "retrigger, and with dependents"
    );
    let cookie = b.cookie_header();
    let csrf = b
        .js("return document.querySelector('[name=csrf]').value")
        .as_str()
        .expect("the form token")
        .to_string();
    let body = format!("csrf={csrf}&with_dependents=false");
    assert_eq!(
        post(&cookie, Some("http://evil.example"), &body),
        403,
        "another site's form"
    );
    assert_eq!(
        post(&cookie, None, &body),
        403,
        "a POST that says nowhere where it comes from"
    );
    assert_eq!(
        post(&cookie, Some(&server.url), "with_dependents=false"),
        403,
        "a POST without the form token"
    );
    assert_eq!(
        server.api.job(lint).expect("lint").info.runs,
        1,
        "a refused POST changed nothing"
    );
    // The page's own form works.
    b.js("Array.from(document.querySelectorAll('button')).find(e=>e.innerText.trim()==='retrigger').click()");
    wait_until("lint's second run", DEADLINE, || {
        let job = server.api.job(lint).map_err(|e| e.to_string())?;
        if job.info.runs == 2 {
            Ok(())
        } else {
            Err(format!("{} runs", job.info.runs))
        }
    });
    b.screenshot("login-admin-job");
}
