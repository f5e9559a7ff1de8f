//! `lwr tokens create|list|revoke`: against the server with an admin token, or straight in
//! the database (--data-dir or --db), which is how the first admin token is made.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use lwr_client::Client;
use lwr_model::auth::{CreateToken, CreatedToken, TokenInfo};
use lwr_model::{DurationMs, Scopes};
use lwr_store::Store;

use crate::cli::{TokenTarget, TokensAction, TokensArgs};

/// The file in a data dir where `lwr dev --auth` leaves its admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

pub async fn run(args: TokensArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TokensAction::Create(a) => {
            let req = CreateToken {
                scopes: a.scope.clone(),
                expires_secs: a.expires.map(|d| d.as_secs()),
                label: a.label.clone(),
                node: a.node.clone(),
            };
            let created = match open_store(&a.target).await? {
                Some(store) => {
                    let created = create_offline(&store, &req).await;
                    store.close().await;
                    created?
                }
                None => client(&a.target)?.create_token(&req).await?,
            };
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                // The secret alone on the last line, so scripts can take the last word.
                outln!(
                    "created token {} ({}); the secret is shown only now:\n{}",
                    created.info.id,
                    describe(&created.info),
                    created.token
                );
            }
        }
        TokensAction::List(a) => {
            let tokens = match open_store(&a.target).await? {
                Some(store) => {
                    let list = store.tokens(lwr_store::now_ms()).await;
                    store.close().await;
                    list?
                }
                None => client(&a.target)?.tokens().await?.tokens,
            };
            if a.json {
                let list = lwr_model::auth::TokenList {
                    tokens,
                    next_cursor: None,
                };
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!(
                    "{:>4}  {:<8} {:<30} {:<25} LABEL",
                    "ID",
                    "STATE",
                    "SCOPES",
                    "EXPIRES"
                );
                for t in &tokens {
                    outln!(
                        "{:>4}  {:<8} {:<30} {:<25} {}",
                        t.id,
                        t.state,
                        Scopes(t.scopes.clone()).to_string(),
                        t.expires_at.as_deref().unwrap_or("never"),
                        t.label.as_deref().unwrap_or("")
                    );
                }
            }
        }
        TokensAction::Revoke(a) => {
            let info = match open_store(&a.target).await? {
                Some(store) => {
                    let info = store.revoke_token(a.id, lwr_store::now_ms()).await;
                    store.close().await;
                    info?
                }
                None => client(&a.target)?.revoke_token(a.id).await?,
            };
            // Revoking twice keeps the first time: saying when tells the two cases apart.
            outln!(
                "token {} is revoked, since {} ({})",
                info.id,
                info.revoked_at.as_deref().unwrap_or("now"),
                describe(&info)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(t: &TokenInfo) -> String {
    let mut text = format!("scopes: {}", Scopes(t.scopes.clone()));
    match &t.expires_at {
        Some(at) => text.push_str(&format!("; expires {at}")),
        None => text.push_str("; never expires"),
    }
    if let Some(label) = &t.label {
        text.push_str(&format!("; label {label}"));
    }
    text
}

fn client(target: &TokenTarget) -> anyhow::Result<Client> {
    Ok(Client::new(&target.server)?.with_token(target.token.clone()))
}

/// The database named by --db or --data-dir, opened (and migrated) directly; `None` when
/// the command goes to the server.
async fn open_store(target: &TokenTarget) -> anyhow::Result<Option<Store>> {
    let url = match (&target.db, &target.data_dir) {
        (Some(url), _) => url.clone(),
        (None, Some(dir)) => {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
            super::serve::sqlite_url(dir)?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Store::open(&url).await?))
}

/// Creates a token in the store with the checks the server applies.
pub async fn create_offline(store: &Store, req: &CreateToken) -> anyhow::Result<CreatedToken> {
    anyhow::ensure!(!req.scopes.is_empty(), "a token needs at least one --scope");
    let now = lwr_store::now_ms();
    let expires_at = req
        .expires_secs
        .map(|s| i64::try_from(s).map(|s| now.plus(DurationMs::from_secs(s))))
        .transpose()
        .context("--expires is too long")?;
    let mut scopes = req.scopes.clone();
    scopes.sort();
    scopes.dedup();
    let (info, token) = store
        .create_token(&Scopes(scopes), req.label.as_deref(), expires_at, now)
        .await?;
    if let Some(node) = &req.node {
        store.bind_node_token(info.id, node, None).await?;
    }
    Ok(CreatedToken { info, token })
}

/// Writes a secret to `path`, readable by its owner only.
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The admin token `lwr dev --auth` left in `dir`.
pub fn read_admin_token(dir: &Path) -> anyhow::Result<String> {
    let path: PathBuf = dir.join(ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--data-dir {}: cannot read {} (only `lwr dev --auth` writes it; else pass --token)",
            dir.display(),
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}
