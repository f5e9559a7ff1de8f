//! The one retry pause of lwr: exponential backoff with full jitter between a floor and a
//! cap. The jitter matters after a server restart: every node lost it at the same moment,
//! and without it they would all retry in lockstep, every retry a burst.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How long to pause before a retry: the `n`-th retry (counting from 1) waits a random time
/// between `floor` and `floor * 2^n`, never more than `cap` (nor less than `floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub floor: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The pause before retry `n` for a random `unit` in `[0, 1]`; pure, for tests.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let cap = self.cap.max(self.floor);
        let ceiling = self.floor.saturating_mul(1 << n.min(20)).min(cap);
        let spread = ceiling.saturating_sub(self.floor);
        self.floor + spread.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The pause before retry `n`, with fresh jitter.
    pub fn pause(&self, n: u32) -> Duration {
        self.delay(n, random_unit())
    }
}

/// A random number in `[0, 1]` from the standard library's per-process random hash keys: no
/// generator crate for what only has to differ between nodes and between retries.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        floor: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };

    #[test]
    fn never_below_the_floor_nor_above_the_cap() {
        for n in 0..70 {
            for unit in [0.0, 0.3, 1.0, -1.0, 2.0] {
                let d = B.delay(n, unit);
                assert!(d >= B.floor && d <= B.cap, "retry {n}, {unit}: {d:?}");
            }
        }
        assert_eq!(B.delay(1, 0.0), B.floor);
        assert_eq!(B.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(B.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(B.delay(40, 1.0), B.cap);
        // A cap below the floor: the floor wins, as a retry sooner than it would be no pause.
        let odd = Backoff {
            floor: Duration::from_secs(60),
            cap: Duration::from_secs(10),
        };
        assert_eq!(odd.delay(5, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn pauses_spread_over_the_whole_range() {
        let pauses: Vec<Duration> = (0..200).map(|_| B.pause(10)).collect();
        assert!(pauses.iter().all(|d| *d >= B.floor && *d <= B.cap));
        let (low, high) = (Duration::from_millis(1000), Duration::from_millis(4000));
        // Nodes that all fail at once must not all wait alike: some pauses fall in the
        // lowest fifth of the range and some in the highest.
        assert!(pauses.iter().any(|d| *d < low), "{pauses:?}");
        assert!(pauses.iter().any(|d| *d > high), "{pauses:?}");
        let distinct: std::collections::HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
    }
}
