//! Duties: what one server of those sharing a database does at a time. The provider's
//! scaler, the lease sweeper, the artifact expiry sweep, repository polling and retention each run on
//! the server that holds their lease row (`lwr_store`'s `duties` table), renewed every
//! [`timing::DUTY_RENEW`]; another server takes a duty over once its lease has run out.
//!
//! The holder counts on a duty only until [`timing::DUTY_MARGIN`] before the lease it last
//! renewed runs out (measured from before the renewal was sent), so a server that cannot
//! reach the database stops doing it before anyone else may start. What must never happen
//! twice (numbering a new node) is also checked in the database in the same statement
//! ([`lwr_store::Store::next_in_duty`]).

use std::sync::Arc;

use lwr_model::{DurationMs, timing};
use lwr_store::{Store, now_ms};
use tokio::sync::watch;
use tokio::time::Instant;

/// The duties, each held by one server at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The provider's scaler (`--provider local|command`).
    Provider,
    /// Ending runs whose lease ran out.
    LeaseSweep,
    /// Deleting expired artifacts.
    ArtifactSweep,
    /// Polling repositories for new heads.
    Poll,
    /// Removing old graphs (`--keep`).
    Retention,
}

impl Duty {
    pub const ALL: [Duty; 5] = [
        Duty::Provider,
        Duty::LeaseSweep,
        Duty::ArtifactSweep,
        Duty::Poll,
        Duty::Retention,
    ];

    /// Its row's name in the database and its label in the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Provider => "provider",
            Duty::LeaseSweep => "lease-sweep",
            Duty::ArtifactSweep => "artifact-sweep",
            Duty::Poll => "poll",
            Duty::Retention => "retention",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// This server's side of the duties: whether it holds each now.
pub struct Duties {
    store: Store,
    holder: String,
    held: [watch::Sender<bool>; 5],
}

impl Duties {
    /// `holder` names this server in the database: the same name after a restart lets the
    /// restarted server take its duties back at once.
    pub fn new(store: Store, holder: String) -> Duties {
        Duties {
            store,
            holder,
            held: std::array::from_fn(|_| watch::channel(false).0),
        }
    }

    /// This server's name as a holder.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Whether this server does `duty` now.
    pub fn holds(&self, duty: Duty) -> bool {
        *self.held[duty.index()].borrow()
    }

    /// Follows whether this server does `duty`.
    pub fn watch(&self, duty: Duty) -> watch::Receiver<bool> {
        self.held[duty.index()].subscribe()
    }

    /// The next number of `duty`'s sequence, only while this server holds it in the
    /// database (see [`Store::next_in_duty`]).
    pub async fn next_number(&self, duty: Duty) -> Result<Option<i64>, lwr_store::StoreError> {
        self.store
            .next_in_duty(duty.as_str(), &self.holder, now_ms())
            .await
    }

    /// Tries to take or renew every duty once; returns until when this server may count on
    /// those it holds.
    async fn renew(&self, deadlines: &mut [Option<Instant>; 5]) {
        let lease = DurationMs::from_std(timing::DUTY_LEASE);
        for duty in Duty::ALL {
            // From before the statement: the database's lease starts no earlier than this.
            let sent = Instant::now();
            let held = tokio::time::timeout(
                timing::DUTY_RENEW_TIMEOUT,
                self.store
                    .hold_duty(duty.as_str(), &self.holder, now_ms(), lease),
            )
            .await;
            let slot = &mut deadlines[duty.index()];
            match held {
                Ok(Ok(Some(_epoch))) => {
                    *slot = Some(sent + timing::DUTY_LEASE - timing::DUTY_MARGIN);
                }
                // Another server holds it.
                Ok(Ok(None)) => *slot = None,
                // Unknown: count on it only until the deadline of the last renewal.
                Ok(Err(e)) => tracing::warn!("cannot renew duty {}: {e}", duty.as_str()),
                Err(_) => tracing::warn!(
                    "renewing duty {} took over {:?}",
                    duty.as_str(),
                    timing::DUTY_RENEW_TIMEOUT
                ),
            }
        }
        self.publish(deadlines);
    }

    /// Tells the duties' tasks whether they run, by the deadlines.
    fn publish(&self, deadlines: &mut [Option<Instant>; 5]) {
        let now = Instant::now();
        for duty in Duty::ALL {
            let slot = &mut deadlines[duty.index()];
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
            }
            let holds = slot.is_some();
            let sender = &self.held[duty.index()];
            if *sender.borrow() != holds {
                tracing::info!(
                    "{} duty {} ({})",
                    match holds {
                        true => "took",
                        false => "gave up",
                    },
                    duty.as_str(),
                    self.holder
                );
                sender.send_replace(holds);
            }
        }
    }

    /// Takes the duties it can now, before the tasks that do them start, so that a single
    /// server starts them at once.
    pub async fn start(self: &Arc<Duties>) -> tokio::task::JoinHandle<()> {
        let mut deadlines = [None; 5];
        self.renew(&mut deadlines).await;
        let duties = self.clone();
        tokio::spawn(async move { duties.keep(deadlines).await })
    }

    /// Renews the duties it holds and tries to take the others, until stopped; a duty whose
    /// renewal fails is given up by its deadline at the latest.
    async fn keep(&self, mut deadlines: [Option<Instant>; 5]) {
        let mut next = Instant::now() + timing::DUTY_RENEW;
        loop {
            let first_deadline = deadlines.iter().flatten().min().copied();
            let wake = first_deadline.map_or(next, |d| d.min(next));
            tokio::time::sleep_until(wake).await;
            if Instant::now() >= next {
                next = Instant::now() + timing::DUTY_RENEW;
                self.renew(&mut deadlines).await;
            } else {
                self.publish(&mut deadlines);
            }
        }
    }
}

/// This server's name among those sharing the database: its machine and data dir, as the
/// provider's token labels name it (two servers on one machine cannot share a data dir).
pub fn holder_name(data_dir: &std::path::Path) -> String {
    format!(
        "{}:{}",
        crate::provider::hostname(),
        std::path::absolute(data_dir)
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .display()
    )
}
