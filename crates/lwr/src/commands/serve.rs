//! `lwr server`, `lwr node` and `lwr dev`: the long-running commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lwr_model::DurationMs;
use lwr_model::words::count;
use lwr_node::NodeConfig;
use lwr_server::Config;
use lwr_store::Store;
use tokio::sync::watch;

/// Free space the nodes of `lwr dev` keep on their disk (as `lwr node --min-free-mb 100`).
const DEV_MIN_FREE: u64 = 100 << 20;

use crate::cli::{DevArgs, NodeArgs, ServeArgs, ServerArgs};

pub async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let (url, _store, serve) = start_server(&args.serve).await?;
    outln!(
        "lwr server listening on {url} (data dir {}, database {}, {})",
        args.serve.data_dir.display(),
        db_label(&args.serve),
        auth_label(&args.serve)
    );
    tokio::select! {
        result = serve => result?,
        _ = stop_signal() => eprintln!("lwr server: stopping"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The provider flags as the server's configuration.
fn provider_config(args: &ServeArgs) -> anyhow::Result<lwr_server::provider::ProviderConfig> {
    use lwr_server::provider::{ProviderConfig, ProviderKind};
    let kind = match args.provider.as_str() {
        "local" => ProviderKind::Local,
        "command" => match (&args.provider_up, &args.provider_down) {
            (Some(up), Some(down)) => ProviderKind::Command {
                up: up.clone(),
                down: down.clone(),
            },
            _ => {
                anyhow::bail!("--provider command needs --provider-up CMD and --provider-down CMD")
            }
        },
        _ => ProviderKind::Static,
    };
    if args.provider_user.is_some() && kind != ProviderKind::Local {
        anyhow::bail!("--provider-user is for --provider local");
    }
    if args.provider_min > args.provider_max {
        anyhow::bail!(
            "--provider-min {} is more than --provider-max {}",
            args.provider_min,
            args.provider_max
        );
    }
    Ok(ProviderConfig {
        kind,
        min: args.provider_min,
        max: args.provider_max,
        idle: args.provider_idle,
        slots: args.provider_slots.max(1),
        user: args.provider_user.clone(),
    })
}

pub async fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let slots = node_slots(&args);
    let client_token = args.conn.bearer()?;
    let config = NodeConfig {
        token: client_token,
        server: args.conn.server,
        name: args.name.unwrap_or_else(lwr_node::props::hostname),
        tags: parse_tags(&args.tags)?,
        slots,
        work_dir: args.work_dir,
        timestamps: args.timestamps,
        health_check: args.health_check,
        reboot_command: args.reboot_command,
        reimage_command: args.reimage_command,
        min_free_bytes: args.min_free_mb.saturating_mul(1 << 20),
        buildbot: args.buildbot.map(|url| lwr_node::buildbot::BridgeConfig {
            url,
            credentials: lwr_node::buildbot::Credentials::from_env(),
        }),
    };
    match lwr_node::run(config, stop_signal()).await? {
        lwr_node::Stopped::Shutdown | lwr_node::Stopped::Rebooting => Ok(ExitCode::SUCCESS),
        // No reboot command: the supervisor (systemd, a container runtime) restarts us.
        lwr_node::Stopped::Reboot => {
            eprintln!("lwr node: drained for a reboot; exiting for the supervisor to restart it");
            Ok(ExitCode::from(lwr_node::REBOOT_EXIT_CODE))
        }
    }
}

pub async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let (url, store, serve) = start_server(&args.serve).await?;
    let tokens = if args.serve.auth {
        Some(dev_tokens(&store, &args.serve.data_dir, args.nodes).await?)
    } else {
        None
    };
    let server = tokio::spawn(serve);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = args.slots.unwrap_or_else(default_slots);
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("dev-{i}");
        let config = NodeConfig {
            server: url.clone(),
            work_dir: args.serve.data_dir.join("nodes").join(&name),
            token: tokens.as_ref().and_then(|t| t.get(i as usize - 1).cloned()),
            name,
            tags: BTreeMap::new(),
            slots,
            timestamps: args.timestamps,
            health_check: None,
            reboot_command: None,
            reimage_command: None,
            min_free_bytes: DEV_MIN_FREE,
            buildbot: None,
        };
        nodes.push(tokio::spawn(dev_node(config, stop_rx.clone())));
    }
    // The follow-up command must reach this server: name it unless it is the default.
    let flag = match url == lwr_client::DEFAULT_SERVER {
        true => String::new(),
        false => format!(" --server {url}"),
    };
    let hint = if args.serve.auth {
        format!(
            "; admin token in {}: try `lwr push{flag} --data-dir {} --repo examples --wait`",
            args.serve
                .data_dir
                .join(super::tokens::ADMIN_TOKEN_FILE)
                .display(),
            args.serve.data_dir.display()
        )
    } else {
        format!("; try `lwr push{flag} --repo examples --wait`")
    };
    outln!(
        "lwr dev: server on {url} with {} of {} (data dir {}, {}){hint}",
        count(args.nodes, "node", "nodes"),
        count(slots, "slot", "slots"),
        args.serve.data_dir.display(),
        auth_label(&args.serve)
    );
    tokio::select! {
        result = server => { result.context("the server task failed")??; }
        _ = stop_signal() => {
            eprintln!("lwr dev: stopping nodes (running jobs finish first; a second signal stops at once)");
            let _ = stop_tx.send(true);
            let drained = async {
                for node in nodes {
                    if let Ok(Err(e)) = node.await {
                        eprintln!("lwr dev: node: {e}");
                    }
                }
            };
            tokio::select! {
                _ = drained => {}
                _ = stop_signal() => eprintln!(
                    "lwr dev: stopped without waiting; the nodes stop the jobs they left \
                     running, and report them, when they next start"
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One node of `lwr dev`, which is its supervisor: a node that drained for a reboot
/// (`lwr nodes reboot`) starts again, as systemd would restart `lwr node`.
async fn dev_node(
    config: NodeConfig,
    stop: watch::Receiver<bool>,
) -> Result<lwr_node::Stopped, lwr_node::NodeError> {
    loop {
        let mut until = stop.clone();
        let stopped = lwr_node::run(config.clone(), async move {
            let _ = until.wait_for(|s| *s).await;
        })
        .await?;
        if *stop.borrow() || matches!(stopped, lwr_node::Stopped::Shutdown) {
            return Ok(stopped);
        }
        eprintln!(
            "lwr dev: node {} drained for a reboot; starting it again",
            config.name
        );
    }
}

/// Makes the tokens of a `lwr dev --auth` cluster: one `node:register` token per node and an
/// admin token written to DIR/admin.token. Tokens of an earlier start are revoked first.
async fn dev_tokens(store: &Store, data_dir: &Path, nodes: u32) -> anyhow::Result<Vec<String>> {
    use lwr_model::Scope;
    use lwr_model::auth::CreateToken;
    store
        .revoke_tokens_labelled("lwr dev ", lwr_store::now_ms())
        .await?;
    let make = |scope: Scope, label: String| CreateToken {
        scopes: vec![scope],
        expires_secs: None,
        label: Some(label),
        node: None,
    };
    let admin =
        super::tokens::create_offline(store, &make(Scope::Admin, "lwr dev admin".into())).await?;
    super::tokens::write_secret(
        &data_dir.join(super::tokens::ADMIN_TOKEN_FILE),
        &admin.token,
    )?;
    let mut secrets = Vec::new();
    for i in 1..=nodes {
        let req = make(Scope::NodeRegister, format!("lwr dev node dev-{i}"));
        secrets.push(super::tokens::create_offline(store, &req).await?.token);
    }
    Ok(secrets)
}

fn auth_label(args: &ServeArgs) -> &'static str {
    if args.auth {
        "authentication on: every request but /v1/health, /v1/openapi.json and the manifest schema needs a token"
    } else if args.insecure_no_auth {
        "NO AUTHENTICATION"
    } else {
        "loopback only, no authentication"
    }
}

/// Opens the store and binds the listener; returns the server's URL, the store and the
/// serving future.
async fn start_server(
    args: &ServeArgs,
) -> anyhow::Result<(
    String,
    Store,
    impl Future<Output = Result<(), lwr_server::ServerError>> + use<>,
)> {
    // Whoever can submit a graph runs commands on every node: without authentication the
    // server stays on this machine unless told otherwise.
    if !args.listen.ip().is_loopback() && !args.insecure_no_auth && !args.auth {
        anyhow::bail!(
            "refusing to serve {} without authentication: anyone reaching it could run commands \
             on every node. Pass --auth (and make a token with `lwr tokens create --data-dir DIR \
             --scope admin`), listen on a loopback address (127.0.0.1), or pass \
             --insecure-no-auth on a network you fully trust",
            args.listen
        );
    }
    // Its owner's only (the server checks again): it will hold the database.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let lock = lock_data_dir(&args.data_dir)?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => sqlite_url(&args.data_dir)?,
    };
    let store = Store::open(&url).await?;
    store.set_pool_config(lwr_store::PoolConfig {
        lost_after_ms: DurationMs::from_std(args.node_lost_after),
        quarantine_after: args.quarantine_after,
    });
    let mut config = Config::new(args.data_dir.clone());
    config.provider = provider_config(args)?;
    config.lease = args.lease;
    config.artifact_store = args.artifact_store.clone();
    config.artifact_expiry = args.artifact_expires;
    config.artifact_sweep = args.artifact_sweep;
    config.keep = (!args.keep.is_zero()).then_some(args.keep);
    config.max_artifact_bytes = args.max_artifact_size;
    config.max_log_bytes = args.max_log_size.max(1024);
    config.auth = args.auth;
    config.public_url = args.public_url.clone();
    config.web = Some(lwr_web::router);
    let (addr, serve) = lwr_server::bind(args.listen, store.clone(), config).await?;
    // The lock is held for as long as the server serves.
    let serve = async move {
        let _lock = lock;
        serve.await
    };
    Ok((format!("http://{addr}"), store, serve))
}

/// How long a server waits for the data dir's lock before it says who holds it.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the data dir's lock file (`lock`, holding the owner's pid), or says who holds it:
/// two servers on one data dir would share its SQLite database, spool and artifacts while
/// each believes it is alone. The lock goes with the process, so a killed server never
/// leaves it behind.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // A server killed a moment ago may hold the lock until the kernel has torn it down
    // (its threads first): a supervisor's restart right after a kill waits for that.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut taken = file.try_lock();
    while matches!(taken, Err(std::fs::TryLockError::WouldBlock))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        taken = file.try_lock();
    }
    match taken {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "data dir {} is in use by another lwr server or lwr dev{holder}; stop it, or \
                 give this one its own --data-dir",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

pub(super) fn sqlite_url(data_dir: &Path) -> anyhow::Result<String> {
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

/// Slots of a Buildbot bridge without `--slots`: builds followed at once.
const BRIDGE_SLOTS: u32 = 32;

/// The slots `lwr node` runs with: `--slots`, else one per core, or for a Buildbot bridge
/// [`BRIDGE_SLOTS`] (its slots are builds it follows, not processes: the workers do the work).
pub(crate) fn node_slots(args: &NodeArgs) -> u32 {
    args.slots.unwrap_or_else(|| match args.buildbot {
        Some(_) => BRIDGE_SLOTS,
        None => default_slots(),
    })
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
