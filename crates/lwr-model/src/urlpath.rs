//! Text put into a URL: the one percent-encoder of lwr, so the client, the server and the
//! store agree on what a name looks like in a path.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// [`SEGMENT`] that keeps `/`: a relative path whose slashes are meant as separators.
const PATH: &AsciiSet = &SEGMENT.remove(b'/');

/// `text` as one path segment (or one query value): a `/`, `#`, `?` or `%` in it cannot
/// end the segment or start another part of the URL.
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// `text` as path segments separated by its slashes (an artifact named `dir/a b`).
pub fn path(text: &str) -> String {
    utf8_percent_encode(text, PATH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_syntax_is_encoded() {
        assert_eq!(segment("c#?%/ é-._~"), "c%23%3F%25%2F%20%C3%A9-._~");
        assert_eq!(path("sym/a b#1.sym"), "sym/a%20b%231.sym");
    }
}
