//! What `lwr --version` says: the release, the commit, and the database schemas this build
//! runs on (the compatibility window of rolling upgrades, docs/operations.md "Upgrading").

use clap::{CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The release and commit, for `-V`.
fn short() -> String {
    format!("{} ({})", env!("CARGO_PKG_VERSION"), env!("LWR_COMMIT"))
}

/// `--version`: the release, the commit and the schema window.
fn long() -> String {
    let ours = lwr_store::schema_version();
    format!(
        "{}\ndatabase schema {ours}: migrates schemas {}-{} up to it on start; runs on a newer \
         schema while that schema's migrations keep {ours} readable (the next release's \
         expand steps do; its contract steps do not)\nAPI /v1",
        short(),
        lwr_store::OLDEST_SCHEMA,
        ours - 1,
    )
}

/// Parses the command line, with the version texts only known at run time.
pub fn parse() -> Cli {
    // clap keeps &'static str; these two strings live as long as the process anyway.
    let short: &'static str = Box::leak(short().into_boxed_str());
    let long: &'static str = Box::leak(long().into_boxed_str());
    let matches = Cli::command()
        .version(short)
        .long_version(long)
        .get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}
