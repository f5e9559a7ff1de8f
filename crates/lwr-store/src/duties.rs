//! Duties: work one server of those sharing a database does at a time (the provider's
//! scaler, the sweeps, repository polling), each held as a lease row in `duties`.
//!
//! A holder renews its row before it expires; another server takes the row over only once
//! it has expired. Every statement is a single conditional write, so two servers racing for
//! one row cannot both win it: PostgreSQL locks the row for `ON CONFLICT DO UPDATE` and
//! evaluates its `WHERE` on the newest version, and SQLite has one writer.

use lwr_model::{DurationMs, Millis};

use crate::error::Op;
use crate::rows::col;
use crate::{Result, Store};

/// Who holds a duty and until when, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DutyHolder {
    pub name: String,
    pub holder: String,
    pub expires_at: Millis,
    pub epoch: i64,
}

impl Store {
    /// Takes or renews duty `name` for `holder` until `now + lease`: the duty's epoch when
    /// `holder` has it now, `None` while another holder's lease runs. The epoch grows each
    /// time the duty changes hands.
    pub async fn hold_duty(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        lease: DurationMs,
    ) -> Result<Option<i64>> {
        let row = sqlx::query(
            "INSERT INTO duties (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at, \
             epoch = CASE WHEN duties.holder = excluded.holder THEN duties.epoch \
             ELSE duties.epoch + 1 END \
             WHERE duties.holder = excluded.holder OR duties.expires_at < $4 \
             RETURNING epoch",
        )
        .bind(name)
        .bind(holder)
        .bind(now.plus(lease).get())
        .bind(now.get())
        .fetch_optional(&mut *self.writer().await?)
        .await
        .op("holding a duty")?;
        row.map(|row| col(&row, "epoch")).transpose()
    }

    /// Gives duty `name` up at once if `holder` has it (a server that stops), so another
    /// server takes it over without waiting for the lease to run out.
    pub async fn release_duty(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE duties SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *self.writer().await?)
            .await
            .op("releasing a duty")?;
        Ok(())
    }

    /// The next number of duty `name`'s sequence, only while `holder` still holds the duty
    /// at `now` (`None` otherwise): what is numbered with it is never done by a server that
    /// lost the duty, and no number is handed out twice, whoever holds the duty.
    pub async fn next_in_duty(&self, name: &str, holder: &str, now: Millis) -> Result<Option<i64>> {
        let row = sqlx::query(
            "UPDATE duties SET counter = counter + 1 \
             WHERE name = $1 AND holder = $2 AND expires_at >= $3 RETURNING counter",
        )
        .bind(name)
        .bind(holder)
        .bind(now.get())
        .fetch_optional(&mut *self.writer().await?)
        .await
        .op("numbering in a duty")?;
        row.map(|row| col(&row, "counter")).transpose()
    }

    /// Every duty's holder, for operators and tests.
    pub async fn duties(&self) -> Result<Vec<DutyHolder>> {
        let rows = sqlx::query("SELECT name, holder, expires_at, epoch FROM duties ORDER BY name")
            .fetch_all(&self.read)
            .await
            .op("listing duties")?;
        rows.iter()
            .map(|row| {
                Ok(DutyHolder {
                    name: col(row, "name")?,
                    holder: col(row, "holder")?,
                    expires_at: Millis(col(row, "expires_at")?),
                    epoch: col(row, "epoch")?,
                })
            })
            .collect()
    }
}
