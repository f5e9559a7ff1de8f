//! Writing a graph as lwr.yml text that reads back as the same graph, whatever its strings
//! hold: every string is emitted double-quoted with YAML escapes, so no label, command or
//! value can be taken for YAML syntax (`#`, `: `, `- `, quotes, newlines, `yes`, `1e3`...).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::graph::{Graph, JobSpec};

use super::{JobNotes, one_line};

/// The whole file: `header` lines as comments, then `version: 1` and the jobs, each preceded
/// by its `comments` (one line each). Only the fields an import sets are written (node
/// requirements as properties, checkout as on or off).
pub(crate) fn write(graph: &Graph, header: &[String], comments: &[Vec<String>]) -> String {
    // Most of a big file is run lines and needs: guess generously to avoid regrowing.
    let mut out = String::with_capacity(256 + graph.jobs.len() * 512);
    for line in header {
        comment(&mut out, "", line);
    }
    out.push_str("version: 1\njobs:\n");
    for (i, job) in graph.jobs.iter().enumerate() {
        for line in comments.get(i).into_iter().flatten() {
            comment(&mut out, "  ", line);
        }
        write_job(&mut out, job);
    }
    out
}

/// The comment lines above each job, and those for the header: what is said of every job is
/// said once, at the top (a graph of thousands of tasks repeats the same few things).
pub(crate) fn comments(per_job: &[JobNotes]) -> (Vec<String>, Vec<Vec<String>>) {
    let everywhere = |items: fn(&JobNotes) -> &Vec<String>| -> HashSet<&str> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for job in per_job {
            let mut seen: Vec<&str> = items(job).iter().map(String::as_str).collect();
            seen.sort_unstable();
            seen.dedup();
            for item in seen {
                *counts.entry(item).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| per_job.len() > 1 && *n == per_job.len())
            .map(|(item, _)| item)
            .collect()
    };
    let common_dropped = everywhere(|j| &j.not_imported);
    let common_notes = everywhere(|j| &j.notes);
    let mut header = Vec::new();
    // In the order the first job lists them.
    if let Some(first) = per_job.first() {
        let dropped: Vec<&str> = first
            .not_imported
            .iter()
            .map(String::as_str)
            .filter(|d| common_dropped.contains(d))
            .collect();
        if !dropped.is_empty() {
            header.push(format!("Every job: not imported: {}", dropped.join(", ")));
        }
        for note in first
            .notes
            .iter()
            .filter(|n| common_notes.contains(n.as_str()))
        {
            header.push(format!("Every job: note: {note}"));
        }
    }
    let comments = per_job
        .iter()
        .map(|job| {
            let dropped: Vec<&str> = job
                .not_imported
                .iter()
                .map(String::as_str)
                .filter(|d| !common_dropped.contains(d))
                .collect();
            let mut lines = Vec::new();
            if !dropped.is_empty() {
                lines.push(format!("not imported: {}", dropped.join(", ")));
            }
            for note in job
                .notes
                .iter()
                .filter(|n| !common_notes.contains(n.as_str()))
            {
                lines.push(format!("note: {note}"));
            }
            lines
        })
        .collect();
    (header, comments)
}

fn comment(out: &mut String, indent: &str, text: &str) {
    out.push_str(indent);
    out.push('#');
    if !text.is_empty() {
        out.push(' ');
        out.push_str(&one_line(text));
    }
    out.push('\n');
}

fn write_job(out: &mut String, job: &JobSpec) {
    out.push_str("  ");
    quoted(out, &job.name);
    out.push_str(":\n");
    if let Some(title) = &job.title {
        field(out, "title", title);
    }
    field(out, "run", &job.run);
    if !job.needs.is_empty() {
        out.push_str("    needs: [");
        for (i, need) in job.needs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            quoted(out, need);
        }
        out.push_str("]\n");
    }
    if !job.requires.is_default() {
        field(out, "requires", job.requires.as_str());
    }
    flow_map(
        out,
        "node",
        job.node
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    // One line: thousands of jobs with a dozen variables each must stay a small file.
    flow_map(out, "env", &job.env);
    if job.timeout_secs != crate::graph::DEFAULT_TIMEOUT_SECS {
        field(out, "timeout", &duration(job.timeout_secs));
    }
    if job.retries != crate::graph::DEFAULT_RETRIES {
        // A number this code made, not text from the input: safe bare.
        let _ = writeln!(out, "    retries: {}", job.retries);
    }
    if !job.artifacts.is_empty() {
        out.push_str("    artifacts:\n");
        for a in &job.artifacts {
            out.push_str("      - {name: ");
            quoted(out, &a.name);
            out.push_str(", path: ");
            quoted(out, &a.path);
            out.push_str(", kind: ");
            quoted(out, &a.kind);
            if a.optional {
                out.push_str(", optional: true");
            }
            out.push_str("}\n");
        }
    }
    if let Some(secs) = job.expires_secs {
        field(out, "expires", &duration(secs));
    }
    if !job.checkout.enabled {
        out.push_str("    checkout: false\n");
    }
}

fn field(out: &mut String, key: &str, value: &str) {
    out.push_str("    ");
    out.push_str(key);
    out.push_str(": ");
    quoted(out, value);
    out.push('\n');
}

/// `90s`, `30m`, `2h`, `3d`: the largest unit that divides `secs` exactly.
pub(crate) fn duration(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `s` as a YAML double-quoted scalar. Everything outside YAML's printable set, and every
/// character a reader could take for a line break, is escaped.
pub(crate) fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// YAML 1.2's printable characters, less those some readers treat as line breaks (NEL,
/// U+2028, U+2029) and the byte order mark.
fn printable(c: char) -> bool {
    matches!(c as u32, 0x20..=0x7e | 0xa0..=0xd7ff | 0xe000..=0xfffd | 0x10000..=0x10ffff)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// `    KEY: {"k": "v", ...}` on one line, nothing for an empty map.
fn flow_map<'a>(out: &mut String, key: &str, map: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut map = map.into_iter().peekable();
    if map.peek().is_none() {
        return;
    }
    out.push_str("    ");
    out.push_str(key);
    out.push_str(": {");
    for (i, (k, v)) in map.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        quoted(out, k);
        out.push_str(": ");
        quoted(out, v);
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> String {
        let mut out = String::new();
        quoted(&mut out, s);
        out
    }

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(q("plain"), "\"plain\"");
        assert_eq!(q("a \"b\" \\ c"), r#""a \"b\" \\ c""#);
        assert_eq!(q("x\ny\tz\r"), r#""x\ny\tz\r""#);
        assert_eq!(
            q("\u{7}\u{85}\u{2028}\u{feff}"),
            r#""\u0007\u0085\u2028\ufeff""#
        );
        assert_eq!(q("é ✓ 🦀"), "\"é ✓ 🦀\"");
    }

    #[test]
    fn durations_take_the_largest_exact_unit() {
        assert_eq!(duration(90), "90s");
        assert_eq!(duration(1800), "30m");
        assert_eq!(duration(7200), "2h");
        assert_eq!(duration(86_400 * 365), "365d");
    }
}
