//! The one poison-tolerant lock: every mutex in lwr guards plain maps and counters that a
//! panicking task leaves consistent, so a poisoned lock is carried on with, not re-panicked.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, carrying on if a task panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = Mutex::new(1);
        let poisoned = std::panic::catch_unwind(|| {
            let _guard = m.lock();
            panic!("poison it");
        });
        assert!(poisoned.is_err() && m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
