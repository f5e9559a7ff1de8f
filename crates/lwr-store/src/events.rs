//! Cross-server wake-ups on PostgreSQL: LISTEN/NOTIFY.
//!
//! Servers sharing one database wake each other's long polls through a notification on
//! [`CHANNEL`], sent inside the transaction that made the change, so PostgreSQL delivers it
//! exactly when (and only if) the change commits. Each payload names the sending store, so a
//! server skips its own notifications (it has already woken its own waiters in memory).
//! SQLite has one server per database, so nothing is sent there.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::error::Op;
use crate::nodes::NodeCache;
use crate::{Dialect, Effects, Result, Store, StoreError};

/// The notification channel of lwr servers.
pub const CHANNEL: &str = "lwr_events";

/// What another server's notification (or the loss of the connection) means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Another server committed a change with these effects.
    Wake(Effects),
    /// The listening connection was lost and is back: notifications sent meanwhile are gone,
    /// so whoever waits should look again.
    Reconnected,
}

/// The payload of a notification: `<store id> <flags>`, flags `r` (a job became ready), `c`
/// (a job changed state), or `n<id>` (node `id` registered again).
pub(crate) fn payload(instance: &str, effects: Effects) -> Option<String> {
    let mut flags = String::new();
    // Other servers wake all their waiting claims: they cannot tell their own from ours.
    if effects.wakes_claims() {
        flags.push('r');
    }
    if effects.changed {
        flags.push('c');
    }
    (!flags.is_empty()).then(|| format!("{instance} {flags}"))
}

impl Store {
    /// Commits a transaction and sends its effects to the other servers (PostgreSQL: the
    /// notification is delivered on commit, so no server wakes before the change is
    /// visible). The notification and the COMMIT are one round trip: a transaction's last
    /// two were a millisecond or more each on a database across a network.
    pub(crate) async fn commit_notifying(
        &self,
        tx: crate::queue::Tx,
        effects: Effects,
        what: &'static str,
    ) -> Result<()> {
        match payload(&self.instance, effects) {
            Some(text) if self.dialect == Dialect::Postgres => {
                // A literal, not an argument: the simple protocol takes none. The payload is
                // this store's id and flag letters; quoted all the same.
                let sql = format!(
                    "SELECT pg_notify('{CHANNEL}', '{}')::text",
                    text.replace('\'', "''")
                );
                tx.commit_after(&sql).await.op(what)
            }
            _ => tx.commit().await.op(what),
        }
    }

    /// Tells other servers that node `id` registered again, so they drop their cached view.
    pub(crate) async fn notify_node(&self, id: lwr_model::NodeId) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            let text = format!("{} n{id}", self.instance);
            let mut conn = self.write.acquire().await.op("notifying servers")?;
            notify(&mut *conn, text).await?;
        }
        Ok(())
    }

    /// Listens for other servers' notifications; `None` for SQLite, where there are none.
    pub async fn events(&self) -> Result<Option<Events>> {
        let Some(url) = self.postgres_url.clone() else {
            return Ok(None);
        };
        let listener = Events::connect(&url).await?;
        Ok(Some(Events {
            url,
            listener: Some(listener),
            instance: self.instance.clone(),
            nodes: self.nodes.clone(),
            pool: self.pool.clone(),
        }))
    }
}

async fn notify<'c, E>(conn: E, text: String) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    // pg_notify returns void, which the Any driver cannot decode: read it as text.
    sqlx::query("SELECT pg_notify($1, $2)::text AS sent")
        .bind(CHANNEL)
        .bind(text)
        .execute(conn)
        .await
        .op("notifying servers")?;
    Ok(())
}

/// The notifications of other servers sharing the database.
pub struct Events {
    url: String,
    listener: Option<PgListener>,
    instance: std::sync::Arc<str>,
    nodes: NodeCache,
    pool: crate::pool::PoolCache,
}

impl Events {
    async fn connect(url: &str) -> Result<PgListener> {
        let mut listener =
            PgListener::connect(url)
                .await
                .map_err(|source| StoreError::Connect {
                    url: crate::redact(url),
                    source,
                })?;
        listener.listen(CHANNEL).await.op("listening for servers")?;
        Ok(listener)
    }

    /// The next event. When the connection drops it reconnects (retrying every `retry`
    /// until it succeeds) and answers [`Event::Reconnected`].
    pub async fn next(&mut self, retry: Duration) -> Event {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                match Events::connect(&self.url).await {
                    Ok(listener) => {
                        tracing::info!("listening for other servers' changes again");
                        self.listener = Some(listener);
                        return Event::Reconnected;
                    }
                    Err(e) => {
                        tracing::warn!("cannot listen for other servers' changes: {e}");
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(note)) => {
                    if let Some(event) = self.parse(note.payload()) {
                        return event;
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the connection listening for other servers' changes");
                    // Reconnect ourselves, so we know when it is back.
                    self.listener = None;
                }
            }
        }
    }

    fn parse(&self, text: &str) -> Option<Event> {
        let (from, flags) = text.split_once(' ')?;
        if from == &*self.instance {
            return None;
        }
        if let Some(id) = flags.strip_prefix('n') {
            if let Ok(id) = id.parse() {
                self.nodes.forget(id);
            }
            self.pool.stale();
            return None;
        }
        Some(Event::Wake(Effects {
            ready: flags.contains('r'),
            released: 0,
            changed: flags.contains('c'),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_store_and_effects() {
        assert_eq!(payload("s1", Effects::NEW_WORK).as_deref(), Some("s1 rc"));
        let counted = Effects {
            released: 2,
            ..Effects::default()
        };
        assert_eq!(payload("s1", counted).as_deref(), Some("s1 r"));
        assert_eq!(payload("s1", Effects::default()), None);
    }
}
