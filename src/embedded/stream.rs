//! The `stream` table: the change stream of the books table, one row per committed change, in
//! commit order. Rows are appended inside the write that makes the change (see `append`), so
//! a change and its record commit together.

use rusqlite::{Connection, params};

use super::DbError;

/// Version 1 of the table.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_name TEXT NOT NULL,
    keys TEXT NOT NULL,
    new_image TEXT,
    old_image TEXT,
    created_at_ms INTEGER NOT NULL
);";

/// One committed change, as stored. The keys and images are DynamoDB JSON (attribute values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its position in the stream (from 1).
    pub seq: i64,
    /// A unique id, the record's `eventID`.
    pub event_id: String,
    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub event_name: String,
    /// The item's key attributes.
    pub keys: String,
    /// The item after the change, if there is one.
    pub new_image: Option<String>,
    /// The item before the change, if there was one.
    pub old_image: Option<String>,
    /// The commit time, in milliseconds since the epoch.
    pub created_at_ms: i64,
}

/// Appends a record of a change in the caller's write (so it commits with the change).
pub(crate) fn append(
    conn: &Connection,
    event_name: &str,
    keys: &str,
    new_image: Option<&str>,
    old_image: Option<&str>,
) -> Result<(), DbError> {
    let event_id = uuid::Uuid::new_v4().simple().to_string();
    conn.prepare_cached(
        "INSERT INTO stream (event_id, event_name, keys, new_image, old_image, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        event_id,
        event_name,
        keys,
        new_image,
        old_image,
        chrono::Utc::now().timestamp_millis()
    ])?;
    Ok(())
}

/// Up to `limit` records after `seq`, in order.
pub fn after(conn: &Connection, seq: i64, limit: usize) -> Result<Vec<StoredRecord>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, event_id, event_name, keys, new_image, old_image, created_at_ms
         FROM stream WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![seq, limit], |row| {
        Ok(StoredRecord {
            seq: row.get(0)?,
            event_id: row.get(1)?,
            event_name: row.get(2)?,
            keys: row.get(3)?,
            new_image: row.get(4)?,
            old_image: row.get(5)?,
            created_at_ms: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
