//! The `bus_dead_letters` table: events a bus target kept failing (or could never handle), set
//! aside under their queue entry's id so the queue could go on.

use api::{DeadLetter, DeadLetterSource};
use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::dead_letters::listed;

/// Version 1 of the table.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS bus_dead_letters (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL
);";

/// Sets aside queue entry `id`: `event` (EventBridge's JSON) for `target`.
pub(crate) fn insert(
    conn: &Connection,
    id: i64,
    target: &str,
    event: &str,
    reason: &str,
    attempts: u32,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO bus_dead_letters (id, target, event, reason, attempts, failed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id,
        target,
        event,
        reason,
        attempts,
        chrono::Utc::now().to_rfc3339()
    ])?;
    Ok(())
}

/// Up to `limit` of them, oldest first.
pub(super) fn list(conn: &Connection, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, target, json_extract(event, '$.detail.metadata.eventId'), reason, attempts,
                failed_at, event
         FROM bus_dead_letters ORDER BY failed_at, id LIMIT ?1",
    )?;
    listed(&mut statement, DeadLetterSource::Bus, limit)
}

/// Removes dead letter `id` and hands back its target and event, if there is one.
pub(super) fn take(conn: &Connection, id: i64) -> Result<Option<(String, String)>, DbError> {
    Ok(conn
        .prepare_cached("DELETE FROM bus_dead_letters WHERE id = ?1 RETURNING target, event")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}
