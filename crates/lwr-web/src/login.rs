//! Signing in with a token and out again (only with `--auth`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use lwr_server::AppState;
use lwr_store::TokenCheck;
use maud::{DOCTYPE, html};

use crate::access::{COOKIE, safe_next};
use crate::assets;
use crate::page::{WebError, html_headers};

fn form(next: &str, error: Option<&str>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "sign in · lwr" }
                link rel="stylesheet" href=(assets::css_url());
            }
            body {
                main.narrow {
                    h1 { "lwr" }
                    p { "This server checks tokens. Paste yours (" code { "lwr tokens create" } " makes one); it is kept in a cookie only this server reads." }
                    @if let Some(error) = error { p.error { (error) } }
                    form.login method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label { "token " input type="password" name="token" autocomplete="off" autofocus required; }
                        button type="submit" { "sign in" }
                    }
                }
            }
        }
    }
    .into_string()
}

/// `GET /login`.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    if !state.config.auth {
        return Redirect::to(&next).into_response();
    }
    (html_headers(), form(&next, None)).into_response()
}

/// `POST /login`: checks the token as the API would, then keeps it in the cookie.
pub async fn login(
    State(state): State<Arc<AppState>>,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let next = safe_next(f.get("next").map(String::as_str));
    let token = f.get("token").map(|t| t.trim()).unwrap_or("");
    // A token is letters, digits and `_`: anything else cannot be one, and could not go
    // into a cookie unquoted.
    let well_formed = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let check = if well_formed {
        state
            .queue
            .store()
            .check_token(token, lwr_store::now_ms())
            .await?
    } else {
        TokenCheck::Unknown
    };
    let error = match check {
        TokenCheck::Valid(_) => {
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            return Ok((
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
            )
                .into_response());
        }
        TokenCheck::Unknown => "unknown token",
        TokenCheck::Revoked => "this token has been revoked",
        TokenCheck::Expired => "this token has expired",
    };
    Ok((
        StatusCode::UNAUTHORIZED,
        html_headers(),
        form(&next, Some(error)),
    )
        .into_response())
}

/// `POST /logout`: forgets the cookie.
pub async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}
