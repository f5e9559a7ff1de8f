//! Every job builds its commit: real git repositories pushed with `lwr push` and polled by a
//! real server, jobs on real nodes checking their revision out of the node's clone cache.

mod common;

use std::path::Path;

use common::*;
use lwr_model::{GraphId, JobState};

/// A repository whose `version.txt` says `version`, with `lwr_yml`.
fn repo_with(dir: &Path, lwr_yml: &str, version: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("version.txt"), version).unwrap();
    git_repo(dir, lwr_yml)
}

/// Commits `version.txt` saying `version`; returns the new revision.
fn next_version(repo: &Path, version: &str) -> String {
    std::fs::write(repo.join("version.txt"), version).unwrap();
    git_commit_all(repo, version)
}

fn push_wait(server: &Server, repo: &Path, extra: &[&str]) -> GraphId {
    let repo = repo.display().to_string();
    let mut args = vec!["push", "--repo", repo.as_str(), "--wait"];
    args.extend_from_slice(extra);
    let out = server.lwr(&args);
    out.assert_success();
    out.pushed_graph()
}

/// The log of job `name` of graph `graph`, which must have succeeded.
fn log_of(server: &Server, graph: GraphId, name: &str) -> String {
    let job = server.job(graph, name);
    assert_eq!(
        job.info.state,
        JobState::Succeeded,
        "{name}: {}",
        server.describe(Some(graph))
    );
    server.api.log(job.info.id).expect("reading the log")
}

const BUILD: &str = "version: 1\njobs:\n  build:\n    run: sh -c 'echo \"content=$(cat version.txt) \
     rev=$LWR_REVISION branch=$LWR_BRANCH base=$LWR_BASE_REVISION repo=$LWR_REPOSITORY\"'\n  \
     bare:\n    checkout: false\n    run: sh -c 'echo entries=$(ls -A | wc -l)'\n  \
     nested:\n    checkout: {path: src/app, depth: 1}\n    \
     run: sh -c 'echo nested=$(cat src/app/version.txt) depth=$(git -C src/app rev-list --count HEAD)'\n";

#[test]
fn each_push_builds_its_own_commit_and_names_it_in_the_environment() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 2, &[]);
    server.wait_node("n1");
    let repo = repo_with(&dir.path().join("repo"), BUILD, "one");
    let one = git_out(&repo, &["rev-parse", "HEAD"]);
    let real = std::fs::canonicalize(&repo).unwrap().display().to_string();

    let g1 = push_wait(&server, &repo, &[]);
    let log = log_of(&server, g1, "build");
    assert!(
        log.contains(&format!(
            "content=one rev={one} branch=main base= repo={real}"
        )),
        "{log}"
    );
    assert_eq!(log_of(&server, g1, "bare").trim(), "entries=0");
    // Two commits of history in the repository; the job asked for one.
    let two = next_version(&repo, "two");
    let g2 = push_wait(&server, &repo, &[]);
    let log = log_of(&server, g2, "build");
    assert!(
        log.contains(&format!("content=two rev={two} branch=main base={one} ")),
        "the second push builds the second commit, after the first: {log}"
    );
    assert_eq!(log_of(&server, g2, "nested").trim(), "nested=two depth=1");

    // An older commit by --rev, on the branch HEAD is on.
    let g3 = push_wait(&server, &repo, &["--rev", &one]);
    let log = log_of(&server, g3, "build");
    assert!(
        log.contains(&format!("content=one rev={one} branch=main base={two} ")),
        "{log}"
    );
}

#[test]
fn push_warns_about_an_uncommitted_lwr_yml_and_refuses_an_unknown_revision() {
    let dir = tempdir();
    let repo = repo_with(&dir.path().join("repo"), BUILD, "one");
    std::fs::write(
        repo.join("lwr.yml"),
        "version: 1\njobs:\n  other:\n    run: true\n",
    )
    .unwrap();
    // No server: the warning comes before the push is sent.
    let repo_arg = repo.display().to_string();
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let out = lwr_at(Some(&url), &["push", "--repo", &repo_arg]);
    out.assert_failure()
        .assert_stderr_has(&["lwr.yml", "uncommitted changes"]);
    let out = lwr_at(
        Some(&url),
        &["push", "--repo", &repo_arg, "--rev", "no-such-ref"],
    );
    out.assert_failure()
        .assert_stderr_has(&["no commit 'no-such-ref'"]);
}

#[test]
fn a_kept_tree_follows_the_commit_and_keeps_untracked_files() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 1, &[]);
    server.wait_node("n1");
    let warm = "version: 1\njobs:\n  warm:\n    keep_workdir: true\n    run: sh -c 'echo x >> \
                untracked.cache; echo \"content=$(cat version.txt) cache=$(wc -l < untracked.cache) \
                status=$(git status --porcelain --untracked-files=no | wc -l)\"'\n";
    let repo = repo_with(&dir.path().join("repo"), warm, "one");
    let g1 = push_wait(&server, &repo, &[]);
    assert!(log_of(&server, g1, "warm").contains("content=one cache=1 status=0"));
    next_version(&repo, "two");
    let g2 = push_wait(&server, &repo, &[]);
    let log = log_of(&server, g2, "warm");
    assert!(
        log.contains("content=two cache=2 status=0"),
        "tracked files follow the commit, the untracked one stays: {log}"
    );
}

#[test]
fn a_slot_keeps_an_unchanged_checkout_for_the_next_job_and_never_a_changed_one() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 1, &[]);
    server.wait_node("n1");
    // One slot, one job after another: `first` checks out (and keeps the pristine tree),
    // `dirty` gets a copy and changes it in place, `clean` must get a new copy, `again` the
    // very same one (the same inode), and `bare` an empty dir.
    let yml = "version: 1\njobs:\n  \
               first:\n    run: cat version.txt\n  \
               dirty:\n    needs: [first]\n    \
               run: sh -c 'echo x > leftover; printf eno > version.txt; chmod +x lwr.yml'\n  \
               clean:\n    needs: [dirty]\n    \
               run: sh -c 'test ! -e leftover && test ! -x lwr.yml && echo \"content=$(cat version.txt) inode=$(stat -c %i version.txt)\"'\n  \
               again:\n    needs: [clean]\n    \
               run: sh -c 'echo \"content=$(cat version.txt) inode=$(stat -c %i version.txt)\"'\n  \
               bare:\n    needs: [again]\n    checkout: false\n    run: sh -c 'echo entries=$(ls -A | wc -l)'\n";
    let repo = repo_with(&dir.path().join("repo"), yml, "one");
    let g = push_wait(&server, &repo, &[]);
    let clean = log_of(&server, g, "clean");
    assert!(clean.starts_with("content=one inode="), "{clean}");
    assert_eq!(
        log_of(&server, g, "again"),
        clean,
        "the unchanged copy was kept"
    );
    assert_eq!(log_of(&server, g, "bare").trim(), "entries=0");
}

#[test]
fn a_polled_push_builds_the_polled_revision() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 2, &[]);
    server.wait_node("n1");
    let repo = repo_with(&dir.path().join("repo"), BUILD, "polled");
    let rev = git_out(&repo, &["rev-parse", "HEAD"]);
    let url = format!("file://{}", repo.display());
    server
        .lwr(&["repos", "add", &url, "--branch", "main", "--every", "1s"])
        .assert_success();
    let push = wait_until("a push", DEADLINE, || {
        let list = server.api.pushes().map_err(|e| e.to_string())?.pushes;
        list.into_iter().next().ok_or_else(|| "no push yet".into())
    });
    let graph = wait_until("the push's build job", DEADLINE, || {
        let jobs = server.jobs(push.graph_id);
        match jobs.get("build").map(|j| j.state) {
            Some(s) if s.is_terminal() => Ok(push.graph_id),
            other => Err(format!("build is {other:?}\n{}", server.describe(None))),
        }
    });
    server.wait_finished(graph);
    let log = log_of(&server, graph, "build");
    assert!(
        log.contains(&format!(
            "content=polled rev={rev} branch=main base= repo={}",
            // The server keeps a repository's one spelling: the path, not its file:// form.
            std::fs::canonicalize(&repo).expect("the repo").display()
        )),
        "{log}"
    );
    assert_eq!(log_of(&server, graph, "bare").trim(), "entries=0");
}

#[test]
fn eight_concurrent_jobs_of_one_repository_share_one_clone_cache() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let node = server.node(dir.path(), "n1", 8, &[]);
    server.wait_node("n1");
    // Each job checks that its tree is its commit, whole and clean, and stays a moment so
    // the eight overlap.
    let yml = "version: 1\njobs:\n  check:\n    matrix: {k: [1, 2, 3, 4, 5, 6, 7, 8]}\n    \
               run: sh -c 'test \"$(git rev-parse HEAD)\" = \"$LWR_REVISION\" && \
               git diff --quiet HEAD && git fsck --no-progress --connectivity-only HEAD && \
               grep -qx \"$(git log -1 --format=%s)\" version.txt && sleep 0.3'\n";
    let repo = repo_with(&dir.path().join("repo"), yml, "v0");
    git_commit_all(&repo, "v0");
    for round in 1..=3 {
        if round > 1 {
            next_version(&repo, &format!("v{round}"));
        }
        let g = push_wait(&server, &repo, &[]);
        let counts = server.wait_finished(g).counts;
        assert_eq!(
            counts.succeeded,
            8,
            "round {round}: {}",
            server.describe(Some(g))
        );
    }
    let mirrors: Vec<_> = std::fs::read_dir(node.work_dir.join("cache/git"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "one clone cache for the repository");
    let fsck = std::process::Command::new("git")
        .arg("-C")
        .arg(mirrors[0].path())
        .args(["fsck", "--no-progress", "--full"])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "the cache is sound: {fsck:?}");
}

#[test]
fn a_local_path_push_runs_on_a_node_that_cannot_read_the_path() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let repo = repo_with(&dir.path().join("laptop/repo"), BUILD, "from afar");
    let rev = git_out(&repo, &["rev-parse", "HEAD"]);
    let out = server.push(&repo, false);
    out.assert_success();
    let g = out.pushed_graph();
    // The node, elsewhere with a work dir of its own, will not find the directory.
    std::fs::rename(dir.path().join("laptop"), dir.path().join("gone")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let _n1 = server.node(&elsewhere, "n1", 2, &[]);
    server.wait_finished(g);
    let log = log_of(&server, g, "build");
    assert!(
        log.contains(&format!("content=from afar rev={rev} ")),
        "{log}"
    );
}

#[test]
fn a_commit_nobody_has_fails_the_job_saying_why() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 1, &[]);
    server.wait_node("n1");
    let sub = lwr_model::api::SubmitGraph {
        repository: Some(dir.path().join("nowhere").display().to_string()),
        branch: Some("main".into()),
        revision: Some("0123456789012345678901234567890123456789".into()),
        author: None,
        subject: None,
        graph: lwr_model::graph::parse(
            "version: 1\njobs:\n  a:\n    run: true\n    retries: 0\n",
            "lwr.yml",
        )
        .unwrap(),
        push: None,
        left_out: Vec::new(),
    };
    let g = server.api.submit(&sub).unwrap().id;
    server.wait_finished(g);
    let job = server.job(g, "a");
    assert_eq!(job.info.state, JobState::Exception);
    let reason = job.info.reason.unwrap_or_default();
    assert!(
        reason.contains("cannot check out 012345678901")
            && reason.contains("no bundle of the commit"),
        "{reason}"
    );
}

#[test]
fn a_graph_naming_its_repository_by_a_label_runs_its_jobs_without_a_checkout() {
    let dir = tempdir();
    let server = Server::start(dir.path());
    let _n1 = server.node(dir.path(), "n1", 1, &[]);
    server.wait_node("n1");
    let sub = |repository: &str| {
        lwr_model::api::SubmitGraph {
        repository: Some(repository.into()),
        branch: Some("main".into()),
        revision: Some("0".repeat(40)),
        author: None,
        subject: None,
        graph: lwr_model::graph::parse(
            "version: 1\njobs:\n  a:\n    run: ls -A; echo \"repo=$LWR_REPOSITORY\"\n    retries: 0\n",
            "lwr.yml",
        )
        .unwrap(),
        push: None,
        left_out: Vec::new(),
    }
    };
    // `bench` is no place to fetch from: the job starts in an empty dir, told the label.
    let g = server.api.submit(&sub("bench")).unwrap().id;
    server.wait_finished(g);
    assert_eq!(server.job(g, "a").info.state, JobState::Succeeded);
    assert_eq!(log_of(&server, g, "a").trim(), "repo=bench");
    // An scp-like location is one: the node tries it, and says why it failed.
    let g = server.api.submit(&sub("nohost.invalid:r.git")).unwrap().id;
    server.wait_finished(g);
    let job = server.job(g, "a");
    assert_eq!(job.info.state, JobState::Exception);
    assert!(
        job.info
            .reason
            .unwrap_or_default()
            .contains("cannot check out 000000000000"),
        "the location was fetched from"
    );
}

#[test]
fn with_tokens_the_pusher_uploads_the_commit_and_only_a_node_holding_its_run_fetches_it() {
    let dir = tempdir();
    let server = Server::start_auth(dir.path());
    let pusher = create_token_offline(&server.data_dir, &["graph:submit"], &[]);
    let node_token = create_token_offline(&server.data_dir, &["node:register"], &[]);
    let repo = repo_with(&dir.path().join("laptop/repo"), BUILD, "guarded");
    let repo_arg = repo.display().to_string();
    let out = server.lwr(&["push", "--repo", &repo_arg, "--token", &pusher]);
    out.assert_success();
    assert!(
        !out.stderr.contains("warning"),
        "the upload went through: {out}"
    );
    let g = out.pushed_graph();
    std::fs::rename(dir.path().join("laptop"), dir.path().join("gone")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let _n1 = Node::start_with_token(&elsewhere, &server.url, "n1", 2, &[], Some(&node_token));
    server.wait_finished(g);
    assert!(log_of(&server, g, "build").contains("content=guarded "));
    // Source is not for every reader: a read token gets no bundle.
    let reader = create_token_offline(&server.data_dir, &["read"], &[]);
    let run = server.job(g, "build").run_history[0].id;
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {reader}"))
        .arg(format!("{}/v1/runs/{run}/bundle?node=1", server.url))
        .output()
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}
