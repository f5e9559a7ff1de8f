//! What `lwr --version` says: the release, the commit, and the database schemas this build
//! runs on (the compatibility window of rolling upgrades, docs/operations.md "Upgrading").

use clap::CommandFactory;

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

/// The command line, with the version texts only known at run time (and the examples,
/// completions and man page of [`crate::help`]).
pub fn command() -> clap::Command {
    // clap keeps &'static str; these two strings live as long as the process anyway.
    let short: &'static str = Box::leak(short().into_boxed_str());
    let long: &'static str = Box::leak(long().into_boxed_str());
    crate::help::decorate(Cli::command().version(short).long_version(long))
}
