//! The `checkpoints` table: per stream reader, the sequence number of the last record it is
//! done with.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;

/// Version 1 of the table.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS checkpoints (
    reader TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);";

/// `reader`'s checkpoint; 0 (before the first record) when it has none.
pub fn get(conn: &Connection, reader: &str) -> Result<i64, DbError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM checkpoints WHERE reader = ?1")?
        .query_row([reader], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Moves `reader`'s checkpoint to `seq`.
pub(crate) fn save(conn: &Connection, reader: &str, seq: i64) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO checkpoints (reader, seq) VALUES (?1, ?2)
         ON CONFLICT (reader) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![reader, seq])?;
    Ok(())
}
