//! The `bus_queue` table: the local bus's durable delivery queues, one per target, in the order
//! events were published. An entry leaves its queue only once its target succeeded or it was
//! dead-lettered.

use rusqlite::{Connection, params};

use super::DbError;

/// Version 1 of the table and its index.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS bus_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS bus_queue_by_target ON bus_queue (target, id);";

/// Version 3: the subscriptions are a live target of the bus, with no queue; what an earlier
/// version queued for them was for subscribers that ended with its process.
pub(super) const DDL_V3: &str = "DELETE FROM bus_queue WHERE target = 'subscriptions';";

/// One queued delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    /// Its place in the queues.
    pub id: i64,
    /// The event, as EventBridge's JSON.
    pub event: String,
    /// How many deliveries of it failed so far.
    pub attempts: u32,
}

/// Queues `event` (EventBridge's JSON) at the end of `target`'s queue.
pub(crate) fn enqueue(conn: &Connection, target: &str, event: &str) -> Result<(), DbError> {
    conn.prepare_cached("INSERT INTO bus_queue (target, event) VALUES (?1, ?2)")?
        .execute(params![target, event])?;
    Ok(())
}

/// Up to `limit` of `target`'s entries after `after`, in queue order.
pub(crate) fn heads(
    conn: &Connection,
    target: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Queued>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, event, attempts FROM bus_queue WHERE target = ?1 AND id > ?2
         ORDER BY id LIMIT ?3",
    )?;
    let rows = statement.query_map(params![target, after, limit], |row| {
        Ok(Queued {
            id: row.get(0)?,
            event: row.get(1)?,
            attempts: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Takes entries off the queue.
pub(crate) fn dequeue(conn: &Connection, ids: &[i64]) -> Result<(), DbError> {
    let mut delete = conn.prepare_cached("DELETE FROM bus_queue WHERE id = ?1")?;
    for id in ids {
        delete.execute([id])?;
    }
    Ok(())
}

/// Notes a failed delivery of entry `id`: its tries so far, and the error.
pub(crate) fn failed(
    conn: &Connection,
    id: i64,
    attempts: u32,
    error: &str,
) -> Result<(), DbError> {
    conn.prepare_cached("UPDATE bus_queue SET attempts = ?2, last_error = ?3 WHERE id = ?1")?
        .execute(params![id, attempts, error])?;
    Ok(())
}

/// How many deliveries are queued, over all targets.
pub fn count(conn: &Connection) -> Result<u64, DbError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM bus_queue")?
        .query_row([], |row| row.get(0))?)
}

/// How many deliveries are queued for each target that has any.
pub fn count_by_target(conn: &Connection) -> Result<Vec<(String, u64)>, DbError> {
    let mut statement =
        conn.prepare_cached("SELECT target, count(*) FROM bus_queue GROUP BY target")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
