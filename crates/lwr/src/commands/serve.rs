//! `lwr server`, `lwr node` and `lwr dev`: the long-running commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lwr_node::NodeConfig;
use lwr_server::Config;
use lwr_store::Store;
use tokio::sync::watch;

use crate::cli::{DevArgs, NodeArgs, ServeArgs, ServerArgs};

pub async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let (url, serve) = start_server(&args.serve).await?;
    println!(
        "lwr server listening on {url} (data dir {}, database {}, {})",
        args.serve.data_dir.display(),
        db_label(&args.serve),
        if args.serve.insecure_no_auth {
            "NO AUTHENTICATION"
        } else {
            "loopback only, no authentication"
        }
    );
    tokio::select! {
        result = serve => result?,
        _ = stop_signal() => eprintln!("lwr server: stopping"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let config = NodeConfig {
        server: args.conn.server,
        name: args.name.unwrap_or_else(lwr_node::props::hostname),
        tags: parse_tags(&args.tags)?,
        slots: args.slots.unwrap_or_else(default_slots),
        work_dir: args.work_dir,
    };
    lwr_node::run(config, stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let (url, serve) = start_server(&args.serve).await?;
    let server = tokio::spawn(serve);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = args.slots.unwrap_or_else(default_slots);
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("dev-{i}");
        let config = NodeConfig {
            server: url.clone(),
            work_dir: args.serve.data_dir.join("nodes").join(&name),
            name,
            tags: BTreeMap::new(),
            slots,
        };
        let mut stop = stop_rx.clone();
        nodes.push(tokio::spawn(lwr_node::run(config, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    println!(
        "lwr dev: server on {url} with {} nodes of {slots} slots (data dir {}); \
         try `lwr push --repo examples --wait`",
        args.nodes,
        args.serve.data_dir.display()
    );
    tokio::select! {
        result = server => { result.context("the server task failed")??; }
        _ = stop_signal() => {
            eprintln!("lwr dev: stopping nodes");
            let _ = stop_tx.send(true);
            for node in nodes {
                if let Ok(Err(e)) = node.await {
                    eprintln!("lwr dev: node: {e}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store and binds the listener; returns the server's URL and the serving future.
async fn start_server(
    args: &ServeArgs,
) -> anyhow::Result<(
    String,
    impl Future<Output = Result<(), lwr_server::ServerError>> + use<>,
)> {
    // Whoever can submit a graph runs commands on every node: without authentication the
    // server stays on this machine unless told otherwise.
    if !args.listen.ip().is_loopback() && !args.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve {} without authentication: anyone reaching it could run commands \
             on every node. Listen on a loopback address (127.0.0.1), or pass --insecure-no-auth \
             on a network you fully trust",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => sqlite_url(&args.data_dir)?,
    };
    let store = Store::open(&url).await?;
    let mut config = Config::new(args.data_dir.clone());
    config.lease = args.lease;
    config.artifact_store = args.artifact_store.clone();
    config.artifact_expiry = args.artifact_expires;
    config.artifact_sweep = args.artifact_sweep;
    config.max_artifact_bytes = args.max_artifact_size;
    let (addr, serve) = lwr_server::bind(args.listen, store, config).await?;
    Ok((format!("http://{addr}"), serve))
}

fn sqlite_url(data_dir: &Path) -> anyhow::Result<String> {
    let dir = std::fs::canonicalize(data_dir)
        .with_context(|| format!("cannot resolve data dir {}", data_dir.display()))?;
    Ok(format!("sqlite://{}", dir.join("lwr.db").display()))
}

fn db_label(args: &ServeArgs) -> &'static str {
    args.db
        .as_deref()
        .and_then(|url| url.parse::<lwr_store::Dialect>().ok())
        .unwrap_or(lwr_store::Dialect::Sqlite)
        .name()
}

fn parse_tags(tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    tags.iter()
        .map(|t| lwr_model::node::parse_tag(t).map_err(|e| anyhow::anyhow!("--tag: {e}")))
        .collect()
}

fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
