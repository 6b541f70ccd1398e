//! [`EmbeddedDeadLetters`]: the stream's and the bus's dead letters together, for the API's
//! [`DeadLetterFeed`] and the CLI: listing them, and sending them back (redrive). The SQL is in
//! the two tables' modules.

use std::sync::Arc;

use api::{DeadLetter, DeadLetterFeed, DeadLetterSource, StoreError};
use async_trait::async_trait;

use super::{Db, DbError, bus_dead_letters, bus_queue, stream_dead_letters, timestamp};

/// Runs a dead-letter table's listing, whose columns are, in order: id, target, event id,
/// reason, attempts, failed at, payload; the one reading of a dead letter both tables share.
pub(super) fn listed(
    statement: &mut rusqlite::CachedStatement<'_>,
    source: DeadLetterSource,
    limit: i64,
) -> Result<Vec<DeadLetter>, DbError> {
    let rows = statement.query_map([limit], |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get::<_, String>(5)?,
            row.get(6)?,
        ))
    })?;
    rows.map(|row| {
        let (id, target, event_id, reason, attempts, failed_at, payload) = row?;
        Ok(DeadLetter {
            source,
            id,
            target,
            event_id,
            reason,
            attempts,
            failed_at: timestamp(&failed_at)?,
            payload,
        })
    })
    .collect()
}

/// The stream's and the bus's dead letters.
#[derive(Debug, Clone)]
pub struct EmbeddedDeadLetters {
    db: Arc<Db>,
}

impl EmbeddedDeadLetters {
    /// The dead letters in `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Every dead letter, oldest first (by when it was set aside, then id), up to `limit`.
    pub async fn all(&self, limit: usize) -> Result<Vec<DeadLetter>, DbError> {
        self.db
            .read(move |conn| {
                let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let mut letters = stream_dead_letters::list(conn, sql_limit)?;
                letters.extend(bus_dead_letters::list(conn, sql_limit)?);
                letters.sort_by_key(|letter| (letter.failed_at, letter.id));
                letters.truncate(limit);
                Ok(letters)
            })
            .await
    }

    /// Puts a bus dead letter back at the end of its target's queue, with its tries reset.
    /// False when there is no such dead letter.
    pub async fn redrive_bus(&self, id: i64) -> Result<bool, DbError> {
        self.db
            .write(move |conn| {
                let Some((target, event)) = bus_dead_letters::take(conn, id)? else {
                    return Ok(false);
                };
                bus_queue::enqueue(conn, &target, &event)?;
                Ok(true)
            })
            .await
    }

    /// A stream dead letter's record, as the processor got it.
    pub async fn stream_record(&self, seq: i64) -> Result<Option<serde_json::Value>, DbError> {
        let record = self
            .db
            .read(move |conn| stream_dead_letters::record(conn, seq))
            .await?;
        Ok(record.as_deref().map(serde_json::from_str).transpose()?)
    }

    /// Forgets a stream dead letter (after the processor took its record on redrive).
    pub async fn remove_stream(&self, seq: i64) -> Result<(), DbError> {
        self.db
            .write(move |conn| stream_dead_letters::remove(conn, seq))
            .await
    }
}

#[async_trait]
impl DeadLetterFeed for EmbeddedDeadLetters {
    async fn list(&self, first: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.all(first).await.map_err(StoreError::unavailable)
    }
}
