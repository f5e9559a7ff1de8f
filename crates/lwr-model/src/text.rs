//! Text that reaches terminals and pages: names and labels hold no character that could
//! change how the text around it looks.

/// Control characters (which move a terminal's cursor, colour or clear it) and Unicode's
/// invisible direction marks and overrides (which make `evil\u{202E}txt.exe` read as another
/// name): refused in names, labels and reasons.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// True when `s` holds a character [`is_unsafe`] refuses.
pub fn has_unsafe(s: &str) -> bool {
    s.chars().any(is_unsafe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_direction_overrides_are_unsafe() {
        for bad in [
            "a\u{1b}[2Jb",
            "tab\there",
            "invoice\u{202E}fdp.exe",
            "x\u{2066}y",
            "\u{200F}",
        ] {
            assert!(has_unsafe(bad), "{bad:?}");
        }
        for good in ["build-7", "ünïcode ok", "日本語", "a b", "emoji 🚀"] {
            assert!(!has_unsafe(good), "{good:?}");
        }
    }
}
