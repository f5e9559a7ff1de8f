//! One module per group of subcommands; each turns arguments into library calls.

mod artifacts;
mod buildbot_diff;
mod checkout;
mod control;
mod graph;
mod graphs;
mod import;
mod logs;
mod nodes;
mod push;
mod pushes;
mod query;
mod serve;
mod show;
mod stream;
mod tokens;
mod watch;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub(crate) use serve::node_slots;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Server(args) => serve::server(args).await,
        Command::Node(args) => serve::node(args).await,
        Command::Dev(args) => serve::dev(args).await,
        Command::Graph(args) => graph::run(args).await,
        Command::Push(args) => push::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Graphs(args) => graphs::run(args).await,
        Command::Jobs(args) => query::jobs(args).await,
        Command::Show(args) => show::run(args).await,
        Command::Logs(args) => logs::logs(args).await,
        Command::Nodes(args) => query::nodes(args).await,
        Command::Cancel(args) => control::cancel(args).await,
        Command::Retrigger(args) => control::retrigger(args).await,
        Command::Gc(args) => control::gc(args).await,
        Command::Keep(args) => control::keep(args).await,
        Command::Fetch(args) => artifacts::fetch(args).await,
        Command::Manifest(args) => artifacts::manifest(args).await,
        Command::Artifacts(args) => artifacts::list(args).await,
        Command::Repos(args) => pushes::repos(args).await,
        Command::Pushes(args) => pushes::pushes(args).await,
        Command::Trigger(args) => pushes::trigger(args).await,
        Command::Checkout(args) => checkout::run(args),
        Command::Tokens(args) => tokens::run(args).await,
        Command::Import(args) => import::run(args),
        Command::NodeBad(args) => nodes::node_bad(&args.reason),
        Command::Stamp(args) => {
            let code = lwr_node::stamp::run(&args.command)?;
            // Exit codes are 0..=255; 128 + signal fits.
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

impl crate::cli::ServerConn {
    /// `command` (`lwr repos`) as a follow-up a message suggests, with the --server this
    /// command used when it is not the default (or else it would ask another server).
    pub fn hint(&self, command: &str) -> String {
        match self.server == lwr_client::DEFAULT_SERVER {
            true => format!("`{command}`"),
            false => format!("`{command} --server {}`", self.server),
        }
    }

    /// A client for the server, with the token from --token or LWR_TOKEN, or else from the
    /// admin.token that `lwr dev --auth` wrote to --data-dir.
    pub fn client(&self) -> anyhow::Result<lwr_client::Client> {
        Ok(lwr_client::Client::new(&self.server)?.with_token(self.bearer()?))
    }

    /// The token from --token or LWR_TOKEN, --token-file, or the admin.token that
    /// `lwr dev --auth` wrote to --data-dir.
    pub fn bearer(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context;
        Ok(match (&self.token, &self.token_file, &self.data_dir) {
            (Some(token), _, _) => Some(token.clone()),
            (None, Some(file), _) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--token-file {}: cannot read it", file.display()))?;
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                anyhow::ensure!(
                    !token.is_empty(),
                    "--token-file {}: the file holds no token",
                    file.display()
                );
                Some(token)
            }
            (None, None, Some(dir)) => Some(tokens::read_admin_token(dir)?),
            (None, None, None) => None,
        })
    }
}
