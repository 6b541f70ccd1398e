//! The `activity` table: what the consumers did, one row per (event id, consumer), which is
//! both their visible effect and their idempotency record.

use std::sync::Arc;

use api::{ActivityFeed, ActivityItem, Page, StoreError};
use async_trait::async_trait;
use consumers::{ActivityStore, ActivityStoreError, Recorded, Recording};
use domain::{ActivityEntry, DetailType};
use rusqlite::params;

use super::{Db, DbError, timestamp};

/// Version 1 of the table.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS activity (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    detail_type TEXT NOT NULL,
    consumer TEXT NOT NULL,
    book TEXT NOT NULL,
    processed_at TEXT NOT NULL
);";

/// Version 2: unique per (event id, consumer) rather than per event id, so a second consumer of
/// an event records its own entry instead of finding the first one's (as on AWS, where the
/// table's key is eventId + consumer). SQLite cannot change a constraint in place: the table is
/// copied, positions and the position sequence included, so feed cursors stay valid.
pub(super) const DDL_V2: &str = "
CREATE TABLE activity_v2 (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    detail_type TEXT NOT NULL,
    consumer TEXT NOT NULL,
    book TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    UNIQUE (event_id, consumer)
);
INSERT INTO activity_v2 (position, event_id, detail_type, consumer, book, processed_at)
    SELECT position, event_id, detail_type, consumer, book, processed_at FROM activity;
DELETE FROM sqlite_sequence WHERE name = 'activity_v2';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'activity_v2', seq FROM sqlite_sequence WHERE name = 'activity';
DROP TABLE activity;
ALTER TABLE activity_v2 RENAME TO activity;";

/// The books of the entries after `position`, oldest first, as (position, book name): for
/// watching the table from a connection of one's own (the latency benchmark).
pub fn book_names_after(
    conn: &rusqlite::Connection,
    position: i64,
) -> Result<Vec<(i64, String)>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT position, json_extract(book, '$.name') FROM activity WHERE position > ?1
         ORDER BY position",
    )?;
    let rows = statement.query_map([position], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The activity table: the consumers' conditional put ([`ActivityStore`]) and the API's
/// newest-first feed ([`ActivityFeed`]).
#[derive(Debug, Clone)]
pub struct EmbeddedActivityStore {
    db: Arc<Db>,
}

impl EmbeddedActivityStore {
    /// A store on `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

impl ActivityStore for EmbeddedActivityStore {
    /// The write is queued on the writer thread before this returns ([`Db::write`]).
    fn record(&self, entry: &ActivityEntry) -> Recording {
        let entry = entry.clone();
        let write = self.db.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO activity (event_id, detail_type, consumer, book, processed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (event_id, consumer) DO NOTHING",
                )?
                .execute(params![
                    entry.event_id,
                    entry.detail_type.as_str(),
                    entry.consumer,
                    serde_json::to_string(&entry.book)?,
                    entry.processed_at.to_rfc3339(),
                ])?;
            Ok(if inserted == 1 {
                Recorded::New
            } else {
                Recorded::AlreadyRecorded
            })
        });
        Box::pin(async move { write.await.map_err(|e| ActivityStoreError(e.into())) })
    }

    fn issues_writes_on_call(&self) -> bool {
        true
    }
}

#[async_trait]
impl ActivityFeed for EmbeddedActivityStore {
    async fn list(
        &self,
        first: usize,
        after: Option<&str>,
    ) -> Result<Page<ActivityItem>, StoreError> {
        let after = match after {
            Some(position) => Some(
                position
                    .parse::<i64>()
                    .map_err(|_| StoreError::InvalidPosition)?,
            ),
            None => None,
        };
        self.db
            .read(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT position, event_id, detail_type, consumer, book, processed_at
                     FROM activity WHERE ?1 IS NULL OR position < ?1
                     ORDER BY position DESC LIMIT ?2",
                )?;
                let rows = statement.query_map(params![after, first as i64 + 1], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                })?;
                let mut items = Vec::new();
                for row in rows {
                    let (position, event_id, detail_type, consumer, book, processed_at) = row?;
                    let detail_type = DetailType::parse(&detail_type).ok_or_else(|| {
                        DbError::Corrupt(format!("unknown detail type {detail_type:?}"))
                    })?;
                    let processed_at = timestamp(&processed_at)?;
                    items.push(ActivityItem {
                        position: position.to_string(),
                        entry: ActivityEntry {
                            event_id,
                            detail_type,
                            consumer,
                            book: serde_json::from_str(&book)?,
                            processed_at,
                        },
                    });
                }
                Ok(Page::of_one_more(items, first))
            })
            .await
            .map_err(StoreError::unavailable)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use domain::{BookName, BookSnapshot};
    use rusqlite::Connection;

    use super::*;

    fn entry(event_id: &str, consumer: &str) -> ActivityEntry {
        ActivityEntry {
            event_id: event_id.to_owned(),
            detail_type: DetailType::Added,
            consumer: consumer.to_owned(),
            book: BookSnapshot::name_only(BookName::parse("Dune").unwrap()),
            processed_at: "2024-05-01T12:00:00Z".parse().unwrap(),
        }
    }

    /// Fails on version 1, where the second consumer's entry conflicted with the first one's.
    #[tokio::test]
    async fn two_consumers_of_one_event_each_record_their_entry_once() {
        let store = EmbeddedActivityStore::new(Db::in_memory().unwrap());
        for consumer in ["book-added", "audit"] {
            let recorded = store.record(&entry("e1", consumer)).await.unwrap();
            assert_eq!(recorded, Recorded::New, "{consumer}");
        }
        for consumer in ["book-added", "audit"] {
            let recorded = store.record(&entry("e1", consumer)).await.unwrap();
            assert_eq!(recorded, Recorded::AlreadyRecorded, "{consumer}");
        }
        let page = ActivityFeed::list(&store, 10, None).await.unwrap();
        let consumers: Vec<&str> = page
            .items
            .iter()
            .map(|i| i.entry.consumer.as_str())
            .collect();
        assert_eq!(consumers, ["audit", "book-added"]);
    }

    #[test]
    fn version_2_keeps_every_entry_its_position_and_the_position_sequence() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(DDL_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO activity (event_id, detail_type, consumer, book, processed_at) VALUES
                 ('e1', 'outboxdemo.added', 'book-added', '{}', 't'),
                 ('e2', 'outboxdemo.added', 'book-added', '{}', 't'),
                 ('e3', 'outboxdemo.added', 'book-added', '{}', 't');
             DELETE FROM activity WHERE event_id = 'e3';",
        )
        .unwrap();
        conn.execute_batch(DDL_V2).unwrap();
        let rows: Vec<(i64, String)> = conn
            .prepare("SELECT position, event_id FROM activity ORDER BY position")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(1, "e1".to_owned()), (2, "e2".to_owned())]);
        // The next position follows the last one ever given (3), not the last one left.
        conn.execute_batch(
            "INSERT INTO activity (event_id, detail_type, consumer, book, processed_at)
                 VALUES ('e1', 'outboxdemo.added', 'audit', '{}', 't')",
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4);
    }
}
