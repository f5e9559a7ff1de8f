//! Access tokens: created with a random secret, stored as its SHA-256 only, checked on every
//! request with one indexed lookup (no cache, so a revocation or an expiry takes effect at
//! once, also on other servers sharing the database).

use lwr_model::Scopes;
use lwr_model::auth::TokenInfo;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;

use crate::error::Op;
use crate::rows::col;
use crate::{Result, Store, StoreError, rfc3339};

/// Prefix of every secret, so a leaked one is easy to recognise (and to search logs for).
const SECRET_PREFIX: &str = "lwr_";

/// A token that checked out: who is calling and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: i64,
    pub scopes: Scopes,
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
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// The stored form of a secret. A plain hash suffices: the secret has 256 bits of entropy,
/// so there is nothing for a slow password hash to protect.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_info(row: &AnyRow, now: i64) -> Result<TokenInfo> {
    let scopes_text: String = col(row, "scopes")?;
    let scopes = Scopes::parse(&scopes_text).map_err(|detail| StoreError::Corrupt {
        what: "token scopes",
        detail,
    })?;
    let expires_at: Option<i64> = col(row, "expires_at")?;
    let revoked_at: Option<i64> = col(row, "revoked_at")?;
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
        created_at: rfc3339(col(row, "created_at")?),
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
        expires_at: Option<i64>,
        now: i64,
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
        .bind(now)
        .bind(expires_at)
        .fetch_one(&self.write)
        .await
        .op("creating token")?;
        Ok((token_info(&row, now)?, secret))
    }

    pub async fn tokens(&self, now: i64) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, scopes, label, created_at, expires_at, revoked_at FROM tokens ORDER BY id",
        )
        .fetch_all(&self.read)
        .await
        .op("listing tokens")?;
        rows.iter().map(|r| token_info(r, now)).collect()
    }

    /// Revokes a token at once. Revoking a revoked token again changes nothing.
    pub async fn revoke_token(&self, id: i64, now: i64) -> Result<TokenInfo> {
        sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&self.write)
            .await
            .op("revoking token")?;
        let row = sqlx::query(
            "SELECT id, scopes, label, created_at, expires_at, revoked_at FROM tokens WHERE id = $1",
        )
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .op("reading token")?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: id.to_string(),
            })?;
        token_info(&row, now)
    }

    /// Revokes every active token whose label starts with `prefix`; returns how many.
    pub async fn revoke_tokens_labelled(&self, prefix: &str, now: i64) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND label LIKE $1",
        )
        .bind(format!("{}%", prefix.replace(['%', '_'], "")))
        .bind(now)
        .execute(&self.write)
        .await
        .op("revoking tokens")?
        .rows_affected();
        Ok(n)
    }

    /// Checks a presented secret: one lookup by its hash (a unique index).
    pub async fn check_token(&self, secret: &str, now: i64) -> Result<TokenCheck> {
        let row =
            sqlx::query("SELECT id, scopes, expires_at, revoked_at FROM tokens WHERE hash = $1")
                .bind(hash_secret(secret))
                .fetch_optional(&self.read)
                .await
                .op("checking token")?;
        let Some(row) = row else {
            return Ok(TokenCheck::Unknown);
        };
        if col::<Option<i64>>(&row, "revoked_at")?.is_some() {
            return Ok(TokenCheck::Revoked);
        }
        if col::<Option<i64>>(&row, "expires_at")?.is_some_and(|t| t <= now) {
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

    /// True when token `id` exists, is not revoked and has not expired.
    pub async fn token_active(&self, id: i64, now: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT id FROM tokens WHERE id = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&self.read)
        .await
        .op("checking token")?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
