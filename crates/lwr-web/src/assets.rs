//! The app's script and stylesheet, committed and compiled into the binary: nothing to
//! install, no CDN, no build step. URLs carry a hash of the content, so a browser may keep
//! them for long and still gets a new version at once.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub const CSS: &str = include_str!("../assets/app.css");
pub const JS: &str = include_str!("../assets/app.js");

fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let digest = Sha256::digest(format!("{CSS}\0{JS}").as_bytes());
        hex::encode(&digest[..6])
    })
}

pub fn css_url() -> String {
    format!("/static/app.{}.css", version())
}

pub fn js_url() -> String {
    format!("/static/app.{}.js", version())
}

/// `GET /static/{file}`: any version of a file is this build's (an old page's request gets
/// the new file rather than a 404).
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = if file.ends_with(".css") && file.starts_with("app.") {
        (CSS, "text/css; charset=utf-8")
    } else if file.ends_with(".js") && file.starts_with("app.") {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
