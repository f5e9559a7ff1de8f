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
mod output;
mod version;

use std::process::ExitCode;

use crate::cli::Command;

fn main() -> ExitCode {
    let cli = version::parse();
    init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            ExitCode::FAILURE
        }
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
