//! Counted nouns in messages: "1 job", "2 jobs", never "1 jobs".

/// `n` and the noun, singular for one: `count(1, "job", "jobs")` is "1 job".
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(1u32, "job", "jobs"), "1 job");
        assert_eq!(count(0u32, "job", "jobs"), "0 jobs");
        assert_eq!(count(2u64, "push", "pushes"), "2 pushes");
    }
}
