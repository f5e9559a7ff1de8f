//! `lwr checkout`: a revision of a repository into a directory, through the node's clone
//! cache (`lwr_node::checkout`, what the node does for every job of a push). Decision jobs
//! of servers before every job was checked out by its node still run it.

use std::process::ExitCode;

use anyhow::bail;
use lwr_model::Checkout;
use lwr_node::checkout::{check_out, git, update_mirror};

use crate::cli::CheckoutArgs;

pub fn run(args: CheckoutArgs) -> anyhow::Result<ExitCode> {
    if args.url.is_empty() || args.revision.is_empty() {
        bail!("give the repository URL and the revision");
    }
    let how = match &args.cache {
        Some(cache) => {
            let (mirror, how) = update_mirror(cache, &args.url, &args.revision)?;
            check_out(&mirror, &args.revision, &args.dir, &Checkout::default())?;
            how
        }
        None => {
            let dir = args.dir.display().to_string();
            git(
                None,
                &["clone", "--quiet", "--no-checkout", "--", &args.url, &dir],
            )?;
            git(
                Some(&args.dir),
                &["checkout", "--quiet", "--detach", &args.revision],
            )?;
            "plain clone, no cache"
        }
    };
    outln!(
        "checked out {} of {} into {} ({how})",
        crate::output::short(&args.revision),
        args.url,
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
