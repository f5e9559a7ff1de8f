//! Access tokens: created with a random secret, stored as its SHA-256 only, checked on every
//! request with one indexed lookup (no cache, so a revocation or an expiry takes effect at
//! once, also on other servers sharing the database).
//!
//! Job tokens are the other kind: what a job gets as `$LWR_TOKEN` so that `lwr fetch` can
//! read its needs' manifests on a server with `--auth`. One is handed out with every run,
//! so it is not stored: it names its run and carries an HMAC-SHA256 of it under a key kept
//! in the database (shared by every server on it), and it is good for reading only while
//! its run is running.

use hmac::{Hmac, KeyInit, Mac};
use lwr_model::auth::TokenInfo;
use lwr_model::{Millis, RunId, RunState, Scope, Scopes};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq;

use crate::error::Op;
use crate::rows::{col, typed, typed_opt};
use crate::{Result, Store, StoreError, rfc3339};

/// Prefix of every secret, so a leaked one is easy to recognise (and to search logs for).
const SECRET_PREFIX: &str = "lwr_";

/// Prefix of a job token: `lwrjob_RUN_MAC`.
const JOB_TOKEN_PREFIX: &str = "lwrjob_";

/// A token that checked out: who is calling and what they may do. For a job token,
/// `token_id` is the negated run id: no node is ever bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: i64,
    pub scopes: Scopes,
}

/// The node a `node:register` token acts for, and the properties it claimed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBinding {
    pub name: Option<String>,
    pub claims: Option<String>,
}

/// What a presented secret turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(Caller),
    Unknown,
    Revoked,
    Expired,
}

/// A fresh secret: 32 random bytes from the operating system, hex-encoded.
pub fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a secret. A plain hash suffices: the secret has 256 bits of entropy,
/// so there is nothing for a slow password hash to protect.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    // Any key length is valid for HMAC: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn job_mac(key: &[u8; 32], run: i64) -> [u8; 32] {
    hmac_sha256(key, format!("lwr job token for run {run}").as_bytes())
}

/// The run a job token names and its MAC; `None` when it is no job token at all.
fn parse_job_token(secret: &str) -> Option<(i64, Vec<u8>)> {
    let (run, mac) = secret.strip_prefix(JOB_TOKEN_PREFIX)?.split_once('_')?;
    Some((run.parse().ok()?, hex::decode(mac).ok()?))
}

fn token_info(row: &AnyRow, now: Millis) -> Result<TokenInfo> {
    let scopes_text: String = col(row, "scopes")?;
    let scopes = Scopes::parse(&scopes_text).map_err(|detail| StoreError::Corrupt {
        what: "token scopes",
        detail,
    })?;
    let expires_at: Option<Millis> = typed_opt(row, "expires_at")?;
    let revoked_at: Option<Millis> = typed_opt(row, "revoked_at")?;
    let state = if revoked_at.is_some() {
        "revoked"
    } else if expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    };
    Ok(TokenInfo {
        id: col(row, "id")?,
        scopes: scopes.0,
        label: col(row, "label")?,
        created_at: rfc3339(typed(row, "created_at")?),
        expires_at: expires_at.map(rfc3339),
        revoked_at: revoked_at.map(rfc3339),
        state: state.to_string(),
    })
}

impl Store {
    /// Creates a token; returns it and its secret, which is not kept anywhere.
    pub async fn create_token(
        &self,
        scopes: &Scopes,
        label: Option<&str>,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(TokenInfo, String)> {
        let secret = new_secret()?;
        let row = sqlx::query(
            "INSERT INTO tokens (hash, scopes, label, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, scopes, label, created_at, expires_at, revoked_at",
        )
        .bind(hash_secret(&secret))
        .bind(scopes.to_string())
        .bind(label.map(str::to_string))
        .bind(now.get())
        .bind(expires_at.map(Millis::get))
        .fetch_one(&mut *self.writer().await?)
        .await
        .op("creating token")?;
        Ok((token_info(&row, now)?, secret))
    }

    pub async fn tokens(&self, now: Millis) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, scopes, label, created_at, expires_at, revoked_at FROM tokens ORDER BY id",
        )
        .fetch_all(&self.read)
        .await
        .op("listing tokens")?;
        rows.iter().map(|r| token_info(r, now)).collect()
    }

    /// Revokes a token at once. Revoking a revoked token again changes nothing.
    pub async fn revoke_token(&self, id: i64, now: Millis) -> Result<TokenInfo> {
        sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now.get())
            .execute(&mut *self.writer().await?)
            .await
            .op("revoking token")?;
        let row = sqlx::query(
            "SELECT id, scopes, label, created_at, expires_at, revoked_at FROM tokens WHERE id = $1",
        )
            .bind(id)
            .fetch_optional(&mut *self.writer().await?)
            .await
            .op("reading token")?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: id.to_string(),
            })?;
        token_info(&row, now)
    }

    /// Revokes every active token whose label starts with `prefix`; returns how many.
    /// Compared as plain text, so `%` and `_` are no wildcards.
    pub async fn revoke_tokens_labelled(&self, prefix: &str, now: Millis) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE tokens SET revoked_at = $2 \
             WHERE revoked_at IS NULL AND substr(label, 1, length($1)) = $1",
        )
        .bind(prefix)
        .bind(now.get())
        .execute(&mut *self.writer().await?)
        .await
        .op("revoking tokens")?
        .rows_affected();
        Ok(n)
    }

    /// The key job tokens are signed with: made by the first server on the database, then
    /// read once by each.
    async fn job_key(&self) -> Result<[u8; 32]> {
        let key = self
            .job_key
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                getrandom::fill(&mut fresh).map_err(|e| StoreError::Random(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES ('job_token_key', $1) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(hex::encode(fresh))
                .execute(&mut *self.writer().await?)
                .await
                .op("making the job token key")?;
                let row = sqlx::query("SELECT value FROM settings WHERE name = 'job_token_key'")
                    .fetch_one(&mut *self.writer().await?)
                    .await
                    .op("reading the job token key")?;
                let text: String = col(&row, "value")?;
                hex::decode(&text)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        what: "job token key",
                        detail: "not 32 hex-encoded bytes".into(),
                    })
            })
            .await?;
        Ok(*key)
    }

    /// Reads (or makes) the key job tokens are signed with, so that no later
    /// [`Store::job_token`] has to touch the database.
    pub async fn load_job_token_key(&self) -> Result<()> {
        self.job_key().await.map(|_| ())
    }

    /// The token run `run`'s job gets: it may read (scope `read`) while the run is running.
    pub async fn job_token(&self, run: RunId) -> Result<String> {
        let key = self.job_key().await?;
        Ok(format!(
            "{JOB_TOKEN_PREFIX}{run}_{}",
            hex::encode(job_mac(&key, run.get()))
        ))
    }

    /// A job token: valid with its MAC and while its run is running (one lookup by id).
    async fn check_job_token(&self, run: i64, mac: &[u8]) -> Result<TokenCheck> {
        let key = self.job_key().await?;
        // Constant time, so timing tells nothing of how much of a forged MAC was right.
        if !bool::from(job_mac(&key, run).as_slice().ct_eq(mac)) {
            return Ok(TokenCheck::Unknown);
        }
        let row = sqlx::query("SELECT state FROM runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&self.node)
            .await
            .op("checking job token")?;
        let Some(row) = row else {
            return Ok(TokenCheck::Unknown);
        };
        if col::<String>(&row, "state")? != RunState::Running.as_str() {
            return Ok(TokenCheck::Expired);
        }
        Ok(TokenCheck::Valid(Caller {
            token_id: -run,
            scopes: Scopes(vec![Scope::Read]),
        }))
    }

    /// Checks a presented secret: one lookup by its hash (a unique index), or for a job
    /// token one by its run.
    pub async fn check_token(&self, secret: &str, now: Millis) -> Result<TokenCheck> {
        if let Some((run, mac)) = parse_job_token(secret) {
            return self.check_job_token(run, &mac).await;
        }
        let row =
            sqlx::query("SELECT id, scopes, expires_at, revoked_at FROM tokens WHERE hash = $1")
                .bind(hash_secret(secret))
                .fetch_optional(&self.node)
                .await
                .op("checking token")?;
        let Some(row) = row else {
            return Ok(TokenCheck::Unknown);
        };
        if col::<Option<i64>>(&row, "revoked_at")?.is_some() {
            return Ok(TokenCheck::Revoked);
        }
        if typed_opt::<Millis>(&row, "expires_at")?.is_some_and(|t| t <= now) {
            return Ok(TokenCheck::Expired);
        }
        let scopes = Scopes::parse(&col::<String>(&row, "scopes")?).map_err(|detail| {
            StoreError::Corrupt {
                what: "token scopes",
                detail,
            }
        })?;
        Ok(TokenCheck::Valid(Caller {
            token_id: col(&row, "id")?,
            scopes,
        }))
    }

    /// Binds `node:register` token `id` to node `name` and, unless bound already, to the
    /// properties placement pins on (`claims`, JSON; `None` when the token is made: the
    /// node's first registration binds them). One statement, so two registrations racing
    /// on one token bind it once. Returns what the token is bound to now: another name or
    /// other claims than asked mean the caller must refuse.
    pub async fn bind_node_token(
        &self,
        id: i64,
        name: &str,
        claims: Option<&str>,
    ) -> Result<NodeBinding> {
        sqlx::query(
            "UPDATE tokens SET node_name = COALESCE(node_name, $2), \
             node_claims = COALESCE(node_claims, $3) \
             WHERE id = $1 AND (node_name IS NULL OR node_name = $2)",
        )
        .bind(id)
        .bind(name.to_string())
        .bind(claims.map(str::to_string))
        .execute(&mut *self.writer().await?)
        .await
        .op("binding token to its node")?;
        let row = sqlx::query("SELECT node_name, node_claims FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.writer().await?)
            .await
            .op("reading token binding")?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: id.to_string(),
            })?;
        Ok(NodeBinding {
            name: col(&row, "node_name")?,
            claims: col(&row, "node_claims")?,
        })
    }

    /// True when token `id` exists, is not revoked and has not expired.
    pub async fn token_active(&self, id: i64, now: Millis) -> Result<bool> {
        let row = sqlx::query(
            "SELECT id FROM tokens WHERE id = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(now.get())
        .fetch_optional(&self.node)
        .await
        .op("checking token")?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 uses a 4-byte key; zero-padding it to 32 bytes is the same
        // key to HMAC, which pads every short key with zeros to the block size.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn job_token_macs_stay_what_they_were() {
        // Job tokens already handed out must keep verifying: these bytes came from the
        // hand-written HMAC that the hmac crate replaced.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(job_mac(&key, 42)),
            "8b80d1f270244dddbabca45f4c485f6ee13ae1ef0461eaeda44cf078deef1fee"
        );
    }

    #[test]
    fn job_tokens_parse_only_in_their_own_form() {
        let mac = "ab".repeat(32);
        assert_eq!(
            parse_job_token(&format!("lwrjob_42_{mac}")),
            Some((42, vec![0xab; 32]))
        );
        for bad in [
            "lwr_42_ab",
            "lwrjob_x_ab",
            "lwrjob_42",
            "lwrjob_42_a",
            "lwrjob_42_zz",
        ] {
            assert_eq!(parse_job_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("lwr_") && a.len() == 4 + 64, "{a}");
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
