//! The dead letters of the embedded store: listing them (the API's [`DeadLetterFeed`]) and
//! sending them back (redrive).

use std::sync::Arc;

use api::{DeadLetter, DeadLetterFeed, DeadLetterSource, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Db, DbError};

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

    /// Every dead letter, oldest first, up to `limit`.
    pub async fn all(&self, limit: usize) -> Result<Vec<DeadLetter>, DbError> {
        self.db
            .read(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT 'stream', seq, NULL, event_id, reason, attempts, failed_at, record FROM stream_dead_letters
                     UNION ALL
                     SELECT 'bus', id, target, json_extract(event, '$.detail.metadata.eventId'), reason, attempts, failed_at, event FROM bus_dead_letters
                     ORDER BY 7, 2 LIMIT ?1",
                )?;
                let rows = statement.query_map([limit as i64], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, u32>(5)?,
                        row.get::<_, String>(6)?,
                        row.get::<_, String>(7)?,
                    ))
                })?;
                let mut letters = Vec::new();
                for row in rows {
                    let (source, id, target, event_id, reason, attempts, failed_at, payload) = row?;
                    letters.push(DeadLetter {
                        source: if source == "stream" { DeadLetterSource::Stream } else { DeadLetterSource::Bus },
                        id,
                        target,
                        event_id,
                        reason,
                        attempts,
                        failed_at: chrono::DateTime::parse_from_rfc3339(&failed_at)
                            .map_err(|e| DbError::Corrupt(format!("bad timestamp: {e}")))?
                            .to_utc(),
                        payload,
                    });
                }
                Ok(letters)
            })
            .await
    }

    /// Puts a bus dead letter back at the end of its target's queue, with its tries reset.
    /// False when there is no such dead letter.
    pub async fn redrive_bus(&self, id: i64) -> Result<bool, DbError> {
        self.db
            .write(move |conn| {
                let letter: Option<(String, String)> = conn
                    .query_row(
                        "SELECT target, event FROM bus_dead_letters WHERE id = ?1",
                        [id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((target, event)) = letter else {
                    return Ok(false);
                };
                conn.execute(
                    "INSERT INTO bus_queue (target, event) VALUES (?1, ?2)",
                    params![target, event],
                )?;
                conn.execute("DELETE FROM bus_dead_letters WHERE id = ?1", [id])?;
                Ok(true)
            })
            .await
    }

    /// A stream dead letter's record, as the processor got it.
    pub async fn stream_record(&self, seq: i64) -> Result<Option<serde_json::Value>, DbError> {
        let record: Option<String> = self
            .db
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT record FROM stream_dead_letters WHERE seq = ?1",
                        [seq],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        record
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(DbError::from)
    }

    /// Forgets a stream dead letter (after the processor took its record on redrive).
    pub async fn remove_stream(&self, seq: i64) -> Result<(), DbError> {
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM stream_dead_letters WHERE seq = ?1", [seq])?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl DeadLetterFeed for EmbeddedDeadLetters {
    async fn list(&self, first: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.all(first).await.map_err(StoreError::unavailable)
    }
}
