//! The page frame, error pages and small formatting helpers shared by every page.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use lwr_model::{JobState, Millis};
use maud::{DOCTYPE, Markup, html};

use crate::access::Viewer;
use crate::assets;

/// An error as a page: the status and one line saying what went wrong.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> WebError {
        WebError {
            status,
            message: message.into(),
        }
    }
}

impl From<lwr_server::ApiError> for WebError {
    fn from(e: lwr_server::ApiError) -> WebError {
        WebError::new(e.status, e.body.error)
    }
}

impl From<lwr_store::StoreError> for WebError {
    fn from(e: lwr_store::StoreError) -> WebError {
        lwr_server::ApiError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string();
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · lwr" }
                    link rel="stylesheet" href=(assets::css_url());
                }
                body {
                    main.narrow {
                        h1 { (self.status.as_u16()) " " (title) }
                        p.error { (self.message) }
                        p { a href="/" { "pushes" } " · " a href="javascript:history.back()" { "back" } }
                    }
                }
            }
        };
        (self.status, html_headers(), body.into_string()).into_response()
    }
}

pub type WebResult<T> = Result<T, WebError>;

/// Headers of every page: no framing by other sites, no sniffing, no referrer to others.
pub fn html_headers() -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ]
}

/// A page in the frame: navigation, sign-out, help for the keyboard shortcuts.
pub fn frame(title: &str, viewer: &Viewer, class: &str, body: Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · lwr" }
                link rel="stylesheet" href=(assets::css_url());
                script src=(assets::js_url()) defer {}
            }
            body class=(class) {
                header.top {
                    a.brand href="/" { "lwr" }
                    nav {
                        a href="/" { "pushes" }
                        a href="/nodes" { "nodes" }
                        a href="/repos" { "repos" }
                    }
                    span.live-dot title="live updates" {}
                    button.help-button type="button" data-help title="keyboard shortcuts (?)" { "?" }
                    @if viewer.signed_in() {
                        form.inline method="post" action="/logout" {
                            (csrf(viewer))
                            button type="submit" { "sign out" }
                        }
                    }
                }
                main { (body) }
                div #help hidden {
                    h2 { "Keyboard" }
                    dl {
                        dt { kbd { "j" } " / " kbd { "k" } } dd { "next / previous failed job" }
                        dt { kbd { "l" } } dd { "log of the selected job" }
                        dt { kbd { "r" } } dd { "retrigger the job (on its page)" }
                        dt { kbd { "/" } } dd { "search the log" }
                        dt { kbd { "n" } " / " kbd { "N" } } dd { "next / previous match" }
                        dt { kbd { "f" } } dd { "follow the log" }
                        dt { kbd { "?" } } dd { "this help" }
                    }
                }
            }
        }
    };
    (html_headers(), page.into_string()).into_response()
}

/// The hidden form token every POST carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A one-button form posting to `action`.
pub fn post_button(viewer: &Viewer, action: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(viewer))
            @for (k, v) in fields {
                input type="hidden" name=(k) value=(v);
            }
            button type="submit" { (label) }
        }
    }
}

/// `3 min ago`.
pub fn age(now: Millis, then: Millis) -> String {
    let s = (now.get() - then.get()).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `1m 05s`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms.max(0) % 1000) / 100),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A run's duration so far.
pub fn run_time(started: Option<Millis>, finished: Option<Millis>, now: Millis) -> Option<String> {
    started.map(|s| duration(finished.unwrap_or(now).get() - s.get()))
}

pub fn short_rev(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// The last part of a repository path or URL: what a person calls it.
pub fn repo_name(repo: &str) -> &str {
    let trimmed = repo.trim_end_matches('/').trim_end_matches(".git");
    trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed)
}

/// A state as a badge.
pub fn state_badge(state: JobState) -> Markup {
    html! { span class={ "badge s-" (state.as_str()) } { (state.as_str()) } }
}

/// A `<time>` with the full timestamp on hover.
pub fn time_ago(now: Millis, at: Millis) -> Markup {
    html! { time datetime=(lwr_store::rfc3339(at)) title=(lwr_store::rfc3339(at)) { (age(now, at)) } }
}

/// The order states are listed in, failures first: what people look for.
pub const STATES: [JobState; 7] = [
    JobState::Failed,
    JobState::Exception,
    JobState::Running,
    JobState::Pending,
    JobState::Blocked,
    JobState::Cancelled,
    JobState::Succeeded,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_durations_read_well() {
        assert_eq!(age(Millis(100_000), Millis(40_000)), "1 min ago");
        assert_eq!(age(Millis(10_000), Millis(9_000)), "1 s ago");
        assert_eq!(duration(1_500), "1.5s");
        assert_eq!(duration(65_000), "1m 05s");
        assert_eq!(duration(3_720_000), "1h 02m");
    }

    #[test]
    fn repository_names_are_their_last_part() {
        assert_eq!(repo_name("https://example.org/a/lwr.git"), "lwr");
        assert_eq!(repo_name("/tmp/x/repo/"), "repo");
        assert_eq!(repo_name("git@host:team/app"), "app");
    }
}
