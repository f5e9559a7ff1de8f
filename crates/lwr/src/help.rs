//! What `--help` shows beyond the flags: examples for every subcommand, and the commands
//! that describe the CLI itself (`lwr completions SHELL`, `lwr man`). Kept apart from the
//! argument types in `cli.rs` so that adding a flag and documenting a command do not collide.

use std::process::ExitCode;

use clap::{Arg, CommandFactory};

use crate::cli::Cli;

/// Examples by subcommand path ("repos add"); a test checks every subcommand has some.
/// Entries for subcommands this build does not have are skipped.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "server",
        "lwr server                                   127.0.0.1:7370, SQLite in ./.lwr\n  \
         lwr server --listen 127.0.0.1:8080 --data-dir /var/lib/lwr\n  \
         lwr server --db postgres://lwr@db/lwr --auth --listen 0.0.0.0:7370",
    ),
    (
        "node",
        "lwr node --server http://ci:7370 --token T --tag gpu --slots 4\n  \
         lwr node --work-dir /var/lib/lwr-node --health-check 'df -h / | grep -qv 9[0-9]%'\n  \
         lwr node --token-file /etc/lwr/node.token --reimage-command /usr/local/sbin/reimage\n  \
         lwr node --buildbot http://buildbot:8010 --name bb-bridge   a Buildbot bridge (docs/buildbot.md)",
    ),
    (
        "dev",
        "lwr dev                                      a server and 2 nodes, data in ./.lwr\n  \
         lwr dev --nodes 4 --listen 127.0.0.1:7431    then: lwr jobs --server http://127.0.0.1:7431\n  \
         lwr dev --auth                               with tokens; the admin's in .lwr/admin.token",
    ),
    (
        "graph",
        "lwr graph                                    check ./lwr.yml, list its jobs\n  \
         lwr graph --repo examples --json             the expanded graph as JSON\n  \
         lwr graph --repo . --submit                  run the working tree's graph (like push)",
    ),
    (
        "import",
        "lwr import taskgraph full-task-graph.json --out lwr.yml   a TaskCluster task graph\n  \
         taskgraph full --json | lwr import taskgraph - --out lwr.yml",
    ),
    (
        "graph diff",
        "lwr graph diff --repo examples HEAD~1 HEAD   what the last commit changed\n  \
         lwr graph diff old.json new/                 a --json file against a directory\n  \
         lwr graph diff --push 7                      push 7 against the branch's previous push\n  \
         lwr graph diff --buildbot http://buildbot:8010 --revision 3f2c0e1   against what Buildbot built",
    ),
    (
        "push",
        "lwr push --repo . --wait                     run HEAD's graph, wait, exit 0 if all passed\n  \
         lwr push --repo . --rev v1.2                 another commit\n  \
         lwr push --server http://ci:7370 --repo .",
    ),
    (
        "jobs",
        "lwr jobs                                     every job: state, node, runs, why\n  \
         lwr jobs --graph 3 --json",
    ),
    (
        "logs",
        "lwr logs 3/build                             the stored log of job build of graph 3\n  \
         lwr logs 42 --run 1                          job 42's first run\n  \
         lwr logs 3/build -f                          follow it while it runs",
    ),
    (
        "nodes",
        "lwr nodes                                    every node, its state and tags\n  \
         lwr nodes --json",
    ),
    (
        "nodes disable",
        "lwr nodes disable build-7 --reason 'disk full'",
    ),
    ("nodes enable", "lwr nodes enable build-7"),
    (
        "nodes quarantine",
        "lwr nodes quarantine build-7 --reason 'flaky network'",
    ),
    (
        "nodes label",
        "lwr nodes label build-7 speed=10 instance=spot gpu=",
    ),
    (
        "nodes reboot",
        "lwr nodes reboot build-7 --reason 'kernel update'",
    ),
    (
        "nodes reimage",
        "lwr nodes reimage build-7 --reason 'toolchain image v42'",
    ),
    (
        "node-bad",
        "lwr node-bad 'gpu fell off the bus'           inside a job: quarantine its node after it",
    ),
    (
        "fetch",
        "lwr fetch build/installer                    inside a job that needs build\n  \
         lwr fetch 3/build/installer -o installer.bin",
    ),
    (
        "manifest",
        "lwr manifest 3/build\n  lwr manifest 42 --run 2",
    ),
    (
        "artifacts",
        "lwr artifacts 3/build\n  lwr artifacts 42 --json",
    ),
    (
        "gc",
        "lwr gc --dry-run                             what the server's --keep would remove now\n  \
         lwr gc --older-than 30d                      remove graphs idle for 30 days",
    ),
    (
        "keep",
        "lwr keep 3/build                             keep job build of graph 3, and so graph 3\n  \
         lwr keep --graph 3                           keep graph 3\n  \
         lwr keep --graph 3 --off                     let retention remove it again",
    ),
    (
        "cancel",
        "lwr cancel 3/build                           one job; what needs it is blocked\n  \
         lwr cancel --graph 3                         every job of graph 3 not ended yet",
    ),
    (
        "retrigger",
        "lwr retrigger 3/test\n  lwr retrigger 3/build --with-dependents",
    ),
    (
        "repos",
        "lwr repos                                    polled repositories and their state\n  \
         lwr repos --json",
    ),
    (
        "repos add",
        "lwr repos add https://example.com/app.git --branch main --branch 'release/*'\n  \
         lwr repos add . --every 10s                  this repository, its default branch",
    ),
    (
        "repos edit",
        "lwr repos edit 2 --every 5m\n  lwr repos edit 2 --branch main --branch 'release/*'",
    ),
    (
        "repos remove",
        "lwr repos remove 2\n  lwr repos remove https://example.com/app.git",
    ),
    (
        "pushes",
        "lwr pushes                                   every push and its state\n  \
         lwr pushes --repo 2 --json",
    ),
    (
        "trigger",
        "lwr trigger docs --push 7                    a job push 7's graph left out",
    ),
    (
        "checkout",
        "lwr checkout https://example.com/app.git 0123abcd src",
    ),
    ("tokens", "lwr tokens list\n  lwr tokens revoke 3"),
    (
        "tokens list",
        "lwr tokens list --data-dir /var/lib/lwr\n  lwr tokens list --json",
    ),
    ("tokens revoke", "lwr tokens revoke 3"),
    (
        "completions",
        "lwr completions bash > /etc/bash_completion.d/lwr\n  \
         lwr completions zsh > \"${fpath[1]}/_lwr\"\n  \
         lwr completions fish > ~/.config/fish/completions/lwr.fish",
    ),
    ("man", "lwr man > lwr.1 && man ./lwr.1"),
    // Added by the watching and finding work (issue 21); used when present.
    (
        "graphs",
        "lwr graphs                                   recent graphs, their state and duration",
    ),
    (
        "watch",
        "lwr watch 3                                  follow graph 3 until it ends",
    ),
    (
        "show",
        "lwr show 3/build                             spec, runs, placement, log tail",
    ),
];

/// The shells `lwr completions` writes for.
const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// The whole command line: the derived arguments, the examples, and `completions` and `man`.
pub fn command() -> clap::Command {
    decorate(Cli::command())
}

/// `cmd` (the derived arguments) with examples, usage lines, `completions` and `man`.
pub fn decorate(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd
        .subcommand(
            clap::Command::new("completions")
                .about("Print a shell's completion script for lwr.")
                .arg(
                    Arg::new("shell")
                        .required(true)
                        .value_parser(SHELLS)
                        .help("The shell: bash, zsh or fish."),
                ),
        )
        .subcommand(clap::Command::new("man").about("Print lwr's man page (roff, for man)."));
    for (path, examples) in EXAMPLES {
        cmd = with_examples(cmd, path, examples);
    }
    cmd.build();
    plain_usage(&mut cmd);
    cmd
}

/// Fixes each subcommand's usage line to the one its --help shows. clap otherwise writes the
/// usage under an error with the options the user gave as if they were required
/// (`lwr cancel --server <SERVER> <JOB>`), which reads as "--server is needed".
fn plain_usage(cmd: &mut clap::Command) {
    for sub in cmd.get_subcommands_mut() {
        let usage = sub.render_usage().to_string();
        let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_string();
        *sub = std::mem::take(sub).override_usage(usage);
        plain_usage(sub);
    }
}

/// Puts `examples` under the subcommand at `path` ("repos add"), when there is one.
fn with_examples(mut cmd: clap::Command, path: &str, examples: &str) -> clap::Command {
    let (first, rest) = match path.split_once(' ') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    if cmd.find_subcommand(first).is_none() {
        return cmd;
    }
    cmd = cmd.mut_subcommand(first, |sub| match rest {
        Some(rest) => with_examples(sub, rest, examples),
        // Examples written beside the arguments (`#[command(after_help)]`) win.
        None if sub.get_after_help().is_some() => sub,
        None => sub.after_help(format!("Examples:\n  {examples}")),
    });
    cmd
}

/// Runs `completions` or `man` if that is what was asked; `None` for every other command.
pub fn run(matches: &clap::ArgMatches) -> Option<ExitCode> {
    let mut out = Vec::new();
    match matches.subcommand() {
        Some(("completions", sub)) => {
            let shell = sub.get_one::<String>("shell")?;
            let mut cmd = command();
            match shell.as_str() {
                "bash" => generate(clap_complete::Shell::Bash, &mut cmd, &mut out),
                "zsh" => generate(clap_complete::Shell::Zsh, &mut cmd, &mut out),
                _ => generate(clap_complete::Shell::Fish, &mut cmd, &mut out),
            }
        }
        Some(("man", _)) => {
            if let Err(e) = clap_mangen::Man::new(command()).render(&mut out) {
                eprintln!("error: cannot render the man page: {e}");
                return Some(ExitCode::FAILURE);
            }
        }
        _ => return None,
    }
    crate::output::write_bytes(&out);
    Some(ExitCode::SUCCESS)
}

fn generate(shell: clap_complete::Shell, cmd: &mut clap::Command, out: &mut Vec<u8>) {
    clap_complete::generate(shell, cmd, "lwr", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand a user can see, as its path ("repos add").
    fn visible(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path = format!("{prefix}{}", sub.get_name());
            out.push((path.clone(), sub.clone()));
            visible(sub, &format!("{path} "), out);
        }
    }

    #[test]
    fn every_subcommand_has_examples_and_every_flag_a_description() {
        let cmd = command();
        let mut subs = Vec::new();
        visible(&cmd, "", &mut subs);
        assert!(subs.len() > 20, "{}", subs.len());
        for (path, sub) in &subs {
            if path.split(' ').any(|part| part == "help") {
                continue;
            }
            let after = sub.get_after_help().map(|h| h.to_string());
            assert!(
                after.is_some_and(|h| h.contains("lwr ")),
                "`lwr {path} --help` has no examples"
            );
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "`lwr {path}`: --{id} has no description"
                );
            }
        }
    }

    #[test]
    fn usage_lines_show_server_as_optional() {
        for args in [
            &["lwr", "cancel", "--server", "http://h:1"][..],
            &["lwr", "trigger", "--server", "http://h:1", "docs"][..],
            &["lwr", "nodes", "disable", "--server", "http://h:1"][..],
        ] {
            let e = command()
                .try_get_matches_from(args)
                .expect_err("an argument is missing");
            let text = e.render().to_string();
            assert!(!text.contains("--server <SERVER>"), "{args:?}: {text}");
            assert!(text.contains("[OPTIONS]"), "{args:?}: {text}");
        }
    }

    #[test]
    fn completions_and_the_man_page_name_every_command() {
        let mut cmd = command();
        let mut bash = Vec::new();
        generate(clap_complete::Shell::Bash, &mut cmd, &mut bash);
        let bash = String::from_utf8(bash).expect("utf-8");
        let mut man = Vec::new();
        clap_mangen::Man::new(command())
            .render(&mut man)
            .expect("a man page");
        let man = String::from_utf8(man).expect("utf-8");
        for name in ["push", "logs", "repos", "completions"] {
            assert!(bash.contains(name), "bash completion lacks {name}");
            assert!(man.contains(name), "man page lacks {name}");
        }
    }
}
