//! `lwr`: the one binary. Subcommands run the server, a node, a laptop cluster, and the
//! client side (graph, push, jobs, logs, nodes).

/// `print!` that ends quietly when stdout is a closed pipe (see [`output`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_fmt(format_args!($($arg)*))
    };
}

/// `println!` that ends quietly when stdout is a closed pipe (see [`output`]).
macro_rules! outln {
    () => {
        $crate::output::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cli;
mod commands;
mod help;
mod output;
mod version;

use std::process::ExitCode;

use clap::FromArgMatches;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let matches = version::command().get_matches();
    if let Some(code) = help::run(&matches) {
        return code;
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let verbose = cli.verbose;
    init_tracing(&cli.command);
    let mut builder = if one_thread(&cli.command) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if verbose && let Some(detail) = client_error(&e).and_then(|c| c.detail()) {
                eprintln!("  (request: {detail})");
            }
            exit_code(&e)
        }
    }
}

/// Whether the command runs on one thread: a node of one slot. It runs one job at a time,
/// so its work is one sequence (claim, prepare, start, wait, report, claim), and on one
/// thread each step follows the last without waking another thread: about 0.2 ms of CPU
/// less per job (`bench/builds`). A node of several slots supervises several jobs and their
/// logs at once, and gets a thread per core. Blocking work goes to tokio's blocking threads
/// either way.
fn one_thread(command: &Command) -> bool {
    // A Buildbot bridge's slots are builds it follows, not processes of its own.
    matches!(command, Command::Node(args)
        if args.buildbot.is_none() && commands::node_slots(args) <= 1)
}

/// The client error behind `e`, if a request to the server failed.
fn client_error(e: &anyhow::Error) -> Option<&lwr_client::ClientError> {
    e.chain()
        .find_map(|c| c.downcast_ref::<lwr_client::ClientError>())
}

/// Exit codes (docs/cli.md): 1 when the command could not do what was asked (not found,
/// refused, invalid input: the user's to fix); 2 when the server could not be asked (down,
/// not an lwr server, an internal error). clap's usage errors are 2 as well.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    use lwr_client::ClientError;
    match client_error(e) {
        Some(ClientError::Unreachable { .. })
        | Some(ClientError::NotLwr { .. })
        | Some(ClientError::Decode { .. }) => ExitCode::from(2),
        Some(c) if c.status().is_some_and(|s| s.is_server_error()) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// The error and its causes on one line, skipping a cause its parent already quotes (many
/// library errors include their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Long-running commands log what they do; client commands only warn.
fn init_tracing(command: &Command) {
    let default = match command {
        // PostgreSQL's notices ("relation lwr_schema already exists, skipping") are not news.
        Command::Server(_) | Command::Node(_) | Command::Dev(_) => {
            "info,sqlx::postgres::notice=warn"
        }
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LWR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
