//! Access tokens and their scopes: what a bearer of a token may do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token allows. `admin` allows everything.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Scope {
    /// Submit graphs (`POST /v1/graphs`).
    #[serde(rename = "graph:submit")]
    GraphSubmit,
    /// Cancel jobs and graphs.
    #[serde(rename = "job:cancel")]
    JobCancel,
    /// Run ended jobs again.
    #[serde(rename = "job:retrigger")]
    JobRetrigger,
    /// What a node needs: register, then claim, renew, report and upload logs for its own
    /// runs only.
    #[serde(rename = "node:register")]
    NodeRegister,
    /// Manage nodes (disable, reboot).
    #[serde(rename = "node:admin")]
    NodeAdmin,
    /// Manage watched repositories.
    #[serde(rename = "repo:admin")]
    RepoAdmin,
    /// Listings, logs and artifacts.
    #[serde(rename = "read")]
    Read,
    /// Everything, including managing tokens.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::GraphSubmit,
        Scope::JobCancel,
        Scope::JobRetrigger,
        Scope::NodeRegister,
        Scope::NodeAdmin,
        Scope::RepoAdmin,
        Scope::Read,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::GraphSubmit => "graph:submit",
            Scope::JobCancel => "job:cancel",
            Scope::JobRetrigger => "job:retrigger",
            Scope::NodeRegister => "node:register",
            Scope::NodeAdmin => "node:admin",
            Scope::RepoAdmin => "repo:admin",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope '{s}' (scopes: {})", names.join(", "))
            })
    }
}

/// A set of scopes, stored as space-separated names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// True when these scopes allow `needed` (`admin` allows everything).
    pub fn allow(&self, needed: Scope) -> bool {
        self.0.iter().any(|s| *s == needed || *s == Scope::Admin)
    }

    pub fn is_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    /// Parses space-separated scope names.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes: Vec<Scope> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        scopes.sort();
        scopes.dedup();
        Ok(Scopes(scopes))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&names.join(" "))
    }
}

/// Longest label a token may carry.
pub const MAX_LABEL: usize = 200;

/// `POST /v1/tokens`: a new token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    /// At least one scope.
    pub scopes: Vec<Scope>,
    /// Seconds until the token stops working; none means it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
    /// Free text for people: who or what holds the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// For a `node:register` token: the one node name it may register (otherwise its
    /// first registration binds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A token as listings show it: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; absent when the token never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339; present once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

/// `POST /v1/tokens` answer: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer SECRET`. The server keeps only its hash.
    pub token: String,
}

/// `GET /v1/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
    /// The cursor of the next page (pass it as `cursor`); absent on the last page and on
    /// answers to requests without `cursor`. Added in 0.2: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_admin_allows_all() {
        let s = Scopes::parse("read  graph:submit read").unwrap();
        assert_eq!(s.to_string(), "graph:submit read");
        assert!(s.allow(Scope::Read) && !s.allow(Scope::JobCancel));
        assert!(Scopes::parse("admin").unwrap().allow(Scope::NodeRegister));
        assert!(
            Scopes::parse("root")
                .unwrap_err()
                .contains("unknown scope 'root'")
        );
        for scope in Scope::ALL {
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{scope}\""));
        }
    }
}
