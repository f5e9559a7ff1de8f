//! ANSI colours in a log, as HTML: SGR sequences (`ESC [ ... m`) become spans with classes
//! (the 16 colours follow the theme) or inline colours (256 and RGB); every other escape
//! sequence is dropped. The style carries from line to line, as a terminal's does. The log
//! viewer's script has the same rules for what it receives live (`assets/app.js`).

use std::fmt::Write;

/// The SGR state between lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Style {
    fg: Option<Colour>,
    bg: Option<Colour>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Basic(u8),
    Rgb(u8, u8, u8),
}

impl Colour {
    fn from_256(n: u8) -> Colour {
        match n {
            0..=15 => Colour::Basic(n),
            16..=231 => {
                let n = n - 16;
                let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
                Colour::Rgb(level(n / 36), level((n / 6) % 6), level(n % 6))
            }
            _ => {
                let v = 8 + (n - 232) * 10;
                Colour::Rgb(v, v, v)
            }
        }
    }
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn apply(&mut self, params: &str) {
        let mut nums = params.split([';', ':']).map(|p| {
            if p.is_empty() {
                0
            } else {
                p.parse::<u16>().unwrap_or(0)
            }
        });
        while let Some(n) = nums.next() {
            match n {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some(Colour::Basic((n - 30) as u8)),
                39 => self.fg = None,
                40..=47 => self.bg = Some(Colour::Basic((n - 40) as u8)),
                49 => self.bg = None,
                90..=97 => self.fg = Some(Colour::Basic((n - 90 + 8) as u8)),
                100..=107 => self.bg = Some(Colour::Basic((n - 100 + 8) as u8)),
                38 | 48 => {
                    let colour = match nums.next() {
                        Some(5) => nums.next().map(|c| Colour::from_256(c.min(255) as u8)),
                        Some(2) => {
                            let mut c = || nums.next().unwrap_or(0).min(255) as u8;
                            Some(Colour::Rgb(c(), c(), c()))
                        }
                        _ => None,
                    };
                    if n == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
        }
    }

    fn open(&self, out: &mut String) {
        let mut class = String::new();
        let mut css = String::new();
        for (colour, prefix, prop) in [(self.fg, "f", "color"), (self.bg, "b", "background")] {
            match colour {
                Some(Colour::Basic(n)) => {
                    let _ = write!(class, " {prefix}{n}");
                }
                Some(Colour::Rgb(r, g, b)) => {
                    let _ = write!(css, "{prop}:#{r:02x}{g:02x}{b:02x};");
                }
                None => {}
            }
        }
        for (on, name) in [
            (self.bold, "bo"),
            (self.dim, "di"),
            (self.italic, "it"),
            (self.underline, "un"),
        ] {
            if on {
                let _ = write!(class, " {name}");
            }
        }
        out.push_str("<span");
        if !class.is_empty() {
            let _ = write!(out, " class=\"{}\"", class.trim_start());
        }
        if !css.is_empty() {
            let _ = write!(out, " style=\"{css}\"");
        }
        out.push('>');
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\r' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
}

/// One line of a log (without its newline) as HTML, starting in `style` and leaving in it
/// the style the line ends with.
pub fn line_to_html(line: &str, style: &mut Style) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    // Where the open span's tag starts and ends: a span with nothing in it is taken back.
    let mut open: Option<(usize, usize)> = None;
    let start = |out: &mut String, style: &Style| {
        let at = out.len();
        style.open(out);
        Some((at, out.len()))
    };
    let close = |out: &mut String, open: Option<(usize, usize)>| match open {
        Some((at, end)) if out.len() == end => out.truncate(at),
        Some(_) => out.push_str("</span>"),
        None => {}
    };
    if !style.is_plain() {
        open = start(&mut out, style);
    }
    let mut rest = line;
    while let Some(esc) = rest.find('\x1b') {
        escape_into(&mut out, &rest[..esc]);
        let seq = &rest[esc + 1..];
        let consumed = if let Some(csi) = seq.strip_prefix('[') {
            // Parameters and intermediates, then one final byte in @..~.
            match csi.find(|c: char| ('@'..='~').contains(&c)) {
                Some(end) => {
                    if csi.as_bytes()[end] == b'm' {
                        style.apply(&csi[..end]);
                        close(&mut out, open.take());
                        if !style.is_plain() {
                            open = start(&mut out, style);
                        }
                    }
                    1 + end + 1
                }
                None => seq.len(),
            }
        } else if let Some(osc) = seq.strip_prefix(']') {
            // Up to BEL or ST (ESC \).
            match (osc.find('\x07'), osc.find("\x1b\\")) {
                (Some(b), Some(s)) if s < b => 1 + s + 2,
                (Some(b), _) => 1 + b + 1,
                (None, Some(s)) => 1 + s + 2,
                (None, None) => seq.len(),
            }
        } else {
            seq.chars().next().map_or(0, char::len_utf8)
        };
        rest = &seq[consumed..];
    }
    escape_into(&mut out, rest);
    close(&mut out, open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(line: &str) -> String {
        line_to_html(line, &mut Style::default())
    }

    #[test]
    fn plain_text_is_escaped() {
        assert_eq!(html("a <b> & \"c\""), "a &lt;b&gt; &amp; &quot;c&quot;");
    }

    #[test]
    fn colours_become_classes_and_reset_closes_them() {
        assert_eq!(
            html("\x1b[31merror\x1b[0m: x"),
            "<span class=\"f1\">error</span>: x"
        );
        assert_eq!(
            html("\x1b[1;92mok\x1b[m"),
            "<span class=\"f10 bo\">ok</span>"
        );
    }

    #[test]
    fn the_style_carries_to_the_next_line() {
        let mut style = Style::default();
        assert_eq!(
            line_to_html("\x1b[33mwarn", &mut style),
            "<span class=\"f3\">warn</span>"
        );
        assert_eq!(
            line_to_html("still", &mut style),
            "<span class=\"f3\">still</span>"
        );
        assert_eq!(line_to_html("\x1b[0mdone", &mut style), "done");
    }

    #[test]
    fn extended_colours_are_inline() {
        assert_eq!(
            html("\x1b[38;2;1;2;3mx"),
            "<span style=\"color:#010203;\">x</span>"
        );
        assert_eq!(
            html("\x1b[48;5;196mx"),
            "<span style=\"background:#ff0000;\">x</span>"
        );
    }

    #[test]
    fn other_sequences_are_dropped() {
        assert_eq!(html("a\x1b[2Kb\x1b]0;title\x07c\x1b[1Ad"), "abcd");
        assert_eq!(html("cut\x1b["), "cut");
        assert_eq!(html("cr\r"), "cr");
    }
}
