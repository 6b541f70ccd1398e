//! The `stream` table: the change stream of the books table, one row per committed change, in
//! commit order. Rows are appended inside the write that makes the change (see `append`), so
//! a change and its record commit together.

use rusqlite::{Connection, OptionalExtension, params};

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
    between(conn, seq, i64::MAX, limit)
}

/// Up to `limit` records at sequence numbers in `(after, until]`, in order.
pub fn between(
    conn: &Connection,
    after: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<StoredRecord>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, event_id, event_name, keys, new_image, old_image, created_at_ms
         FROM stream WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![after, until, limit], |row| {
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

/// The highest sequence number the stream ever gave a record (0 before the first), whether or
/// not that record is still kept.
pub fn last_seq(conn: &Connection) -> Result<i64, DbError> {
    // AUTOINCREMENT keeps the highest in sqlite_sequence, which trimming leaves alone.
    Ok(conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'stream'")?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// How many records are kept.
pub fn count(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM stream")?
        .query_row([], |row| row.get(0))?)
}

/// Deletes the oldest records, in order, while each is at or before `through` and was
/// committed before `created_before_ms`, at most `limit` of them: the sequence number of the
/// last one deleted and how many were, if any was.
pub(crate) fn trim(
    conn: &Connection,
    through: i64,
    created_before_ms: i64,
    limit: usize,
) -> Result<Option<(i64, usize)>, DbError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut last = None;
    let mut statement = conn.prepare_cached(
        "SELECT seq, created_at_ms FROM stream WHERE seq <= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = statement.query(params![through, limit])?;
    while let Some(row) = rows.next()? {
        if row.get::<_, i64>(1)? >= created_before_ms {
            break;
        }
        last = Some(row.get::<_, i64>(0)?);
    }
    drop(rows);
    let Some(last) = last else {
        return Ok(None);
    };
    let deleted = conn
        .prepare_cached("DELETE FROM stream WHERE seq <= ?1")?
        .execute([last])?;
    Ok(Some((last, deleted)))
}
