//! The `stream_dead_letters` table: stream records the processor kept failing, set aside (with
//! the record as the processor got it) so the stream could go on.

use api::{DeadLetter, DeadLetterSource};
use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::dead_letters::listed;

/// Version 1 of the table.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS stream_dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    record TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL
);";

/// Sets aside the record at `seq` (Lambda's stream record JSON), replacing an earlier dead
/// letter of it.
pub(crate) fn insert(
    conn: &Connection,
    seq: i64,
    event_id: &str,
    record: &str,
    reason: &str,
    attempts: u32,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO stream_dead_letters (seq, event_id, record, reason, attempts, failed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![seq, event_id, record, reason, attempts, chrono::Utc::now().to_rfc3339()])?;
    Ok(())
}

/// Up to `limit` of them, oldest first.
pub(super) fn list(conn: &Connection, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, NULL, event_id, reason, attempts, failed_at, record FROM stream_dead_letters
         ORDER BY failed_at, seq LIMIT ?1",
    )?;
    listed(&mut statement, DeadLetterSource::Stream, limit)
}

/// The record at `seq`, as the processor got it, if it is a dead letter.
pub(super) fn record(conn: &Connection, seq: i64) -> Result<Option<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT record FROM stream_dead_letters WHERE seq = ?1")?
        .query_row([seq], |row| row.get(0))
        .optional()?)
}

/// Forgets the dead letter of the record at `seq`.
pub(super) fn remove(conn: &Connection, seq: i64) -> Result<(), DbError> {
    conn.prepare_cached("DELETE FROM stream_dead_letters WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

/// The sequence numbers in `(after, until]` whose records are dead letters.
pub fn seqs_between(conn: &Connection, after: i64, until: i64) -> Result<Vec<i64>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq FROM stream_dead_letters WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let rows = statement.query_map(params![after, until], |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
