//! Words in messages: counted nouns ("1 job", "2 jobs", never "1 jobs") and "did you mean"
//! for a misspelled name.

/// `n` and the noun, singular for one: `count(1, "job", "jobs")` is "1 job".
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The candidate `word` most likely misspells, if one is close enough: at most one edit
/// (insertion, deletion, substitution or swap of neighbours) for words up to 4 letters, two
/// beyond, ignoring case. Ties go to the first candidate.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = if lower.chars().count() <= 4 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates.into_iter().filter(|c| *c != word) {
        let d = edit_distance(&lower, &candidate.to_lowercase());
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus the swap of two neighbours as one
/// edit (`rnu` is one edit from `run`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Long words are never typos of a key; bound the work a hostile input can cause.
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_find_the_word_meant() {
        let keys = ["version", "jobs", "run", "needs", "node", "build"];
        for (typo, meant) in [
            ("verison", Some("version")),
            ("neds", Some("needs")),
            ("rnu", Some("run")),
            ("bild", Some("build")),
            ("Needs", Some("needs")),
            ("job", Some("jobs")),
            ("needs", None),
            ("xyz", None),
            ("completely-different", None),
        ] {
            assert_eq!(closest(typo, keys), meant, "{typo}");
        }
    }

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(1u32, "job", "jobs"), "1 job");
        assert_eq!(count(0u32, "job", "jobs"), "0 jobs");
        assert_eq!(count(2u64, "push", "pushes"), "2 pushes");
    }
}
