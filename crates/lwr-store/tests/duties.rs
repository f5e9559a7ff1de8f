//! Duties: one holder at a time, taken over only once its lease has run out, and numbers
//! handed out only to the holder, each once.

use lwr_model::{DurationMs, Millis};

#[macro_use]
mod common;
use common::Fixture;

const LEASE: DurationMs = DurationMs(10_000);

async fn a_duty_has_one_holder_and_changes_hands_only_when_its_lease_ran_out(f: Fixture) {
    let store = f.store;
    let t0 = Millis(1_000_000);
    assert_eq!(
        store.hold_duty("poll", "a", t0, LEASE).await.unwrap(),
        Some(1)
    );
    // Held: b cannot take it, a renews it without a new epoch.
    assert_eq!(
        store
            .hold_duty("poll", "b", t0.plus(DurationMs(9_999)), LEASE)
            .await
            .unwrap(),
        None
    );
    let t1 = t0.plus(DurationMs(5_000));
    assert_eq!(
        store.hold_duty("poll", "a", t1, LEASE).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .hold_duty("poll", "b", t0.plus(DurationMs(14_999)), LEASE)
            .await
            .unwrap(),
        None
    );
    // Another duty is another row.
    assert_eq!(
        store.hold_duty("provider", "b", t1, LEASE).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.next_in_duty("poll", "a", t1).await.unwrap(), Some(1));
    assert_eq!(store.next_in_duty("poll", "b", t1).await.unwrap(), None);

    // a stops renewing: once its lease has run out, b takes over, and a has nothing.
    let t2 = t1.plus(LEASE).plus(DurationMs(1));
    assert_eq!(
        store.next_in_duty("poll", "a", t2).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.hold_duty("poll", "b", t2, LEASE).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.hold_duty("poll", "a", t2, LEASE).await.unwrap(), None);
    // The sequence goes on where a left it.
    assert_eq!(store.next_in_duty("poll", "b", t2).await.unwrap(), Some(2));

    // Released: taken at once.
    store.release_duty("poll", "a").await.unwrap(); // not a's: nothing happens
    assert_eq!(store.hold_duty("poll", "a", t2, LEASE).await.unwrap(), None);
    store.release_duty("poll", "b").await.unwrap();
    assert_eq!(
        store.hold_duty("poll", "a", t2, LEASE).await.unwrap(),
        Some(3)
    );
    assert_eq!(store.next_in_duty("poll", "a", t2).await.unwrap(), Some(3));
    let holders = store.duties().await.unwrap();
    let names: Vec<(&str, &str)> = holders
        .iter()
        .map(|d| (d.name.as_str(), d.holder.as_str()))
        .collect();
    assert_eq!(names, [("poll", "a"), ("provider", "b")]);
}

async fn servers_racing_for_a_duty_leave_it_to_one(f: Fixture) {
    let store = f.store;
    let now = Millis(2_000_000);
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = store.clone();
        racers.spawn(async move {
            let holder = format!("server-{i}");
            let held = store
                .hold_duty("provider", &holder, now, LEASE)
                .await
                .unwrap();
            let number = store.next_in_duty("provider", &holder, now).await.unwrap();
            (held.is_some(), number)
        });
    }
    let mut winners = 0;
    let mut numbers = Vec::new();
    while let Some(done) = racers.join_next().await {
        let (won, number) = done.unwrap();
        winners += usize::from(won);
        numbers.extend(number);
    }
    assert_eq!(winners, 1);
    assert_eq!(numbers, [1], "only the holder numbers");
}

on_both_backends!(
    a_duty_has_one_holder_and_changes_hands_only_when_its_lease_ran_out,
    servers_racing_for_a_duty_leave_it_to_one,
);
