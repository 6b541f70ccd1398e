//! The change stream as the subscriptions' durable log, and how long it keeps records.
//!
//! [`EmbeddedEventLog`] reads the events of the kept records exactly as the processor published
//! them: each record through [`lambda_record`] and [`processor::map_record`], the same two
//! steps the stream reader and the processor take. A record the processor set aside (a dead
//! letter) was not published and is not in the log.
//!
//! [`Retention`] trims the stream as DynamoDB Streams does (it keeps records 24 hours,
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>), but never
//! a record the processor has not checkpointed: the oldest records go first, in order, and the
//! position trimmed through is kept with them, so a cursor before it is known to be expired.

use std::sync::Arc;
use std::time::Duration;

use api::BookEvent;
use api::subscriptions::{EventLog, LogError, LogPage, Position};
use async_trait::async_trait;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::records::{lambda_record, sequence_number};
use super::{PROCESSOR, pause};
use crate::embedded::{Db, DbError, checkpoints, stream, stream_dead_letters};

/// The name under which the position the stream is trimmed through is stored.
pub const RETENTION: &str = "retention";

/// How long the stream keeps records by default: 24 hours, as DynamoDB Streams does.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most records one trim deletes (one write each).
const TRIM_BATCH: usize = 1000;

/// The local change stream, read as an [`EventLog`].
#[derive(Debug, Clone)]
pub struct EmbeddedEventLog(pub Arc<Db>);

#[async_trait]
impl EventLog for EmbeddedEventLog {
    async fn read(
        &self,
        after: Position,
        until: Position,
        limit: usize,
    ) -> Result<LogPage, LogError> {
        self.0
            .read(move |conn| read(conn, after, until, limit))
            .await
            .map_err(|error| LogError::Unavailable(error.to_string()))?
    }
}

fn read(
    conn: &Connection,
    after: Position,
    until: Position,
    limit: usize,
) -> Result<Result<LogPage, LogError>, DbError> {
    // One snapshot: the records, what is trimmed and what is set aside agree.
    let snapshot = conn.unchecked_transaction()?;
    let records = stream::between(&snapshot, after, until, limit)?;
    let trimmed = checkpoints::get(&snapshot, RETENTION)?;
    if after < trimmed {
        let oldest = stream::after(&snapshot, trimmed, 1)?;
        return Ok(Err(LogError::Expired {
            resume_after: sequence_number(trimmed),
            oldest: oldest.first().map(|record| sequence_number(record.seq)),
        }));
    }
    if after > stream::last_seq(&snapshot)? {
        return Ok(Err(LogError::Unknown));
    }
    let through = match records.last() {
        Some(last) if records.len() >= limit => last.seq,
        _ => until,
    };
    let set_aside = stream_dead_letters::seqs_between(&snapshot, after, through)?;
    let mut events = Vec::with_capacity(records.len());
    for record in records {
        if set_aside.binary_search(&record.seq).is_ok() {
            continue;
        }
        // A record that does not map is one the processor set aside as well.
        if let Ok(event) = processor::map_record(&lambda_record(&record)?)
            && event.source() == domain::event::SOURCE
        {
            events.push(BookEvent::new(event.detail_type, event.envelope));
        }
    }
    Ok(Ok(LogPage { events, through }))
}

/// Trims the stream to what it keeps: records older than `retention` that the processor is
/// done with.
#[derive(Debug, Clone)]
pub struct Retention {
    db: Arc<Db>,
    retention: Duration,
}

impl Retention {
    /// Trims `db`'s stream of records older than `retention`.
    pub fn new(db: Arc<Db>, retention: Duration) -> Self {
        Self { db, retention }
    }

    /// How often it trims: often enough that the stream holds little more than `retention`.
    fn interval(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
    }

    /// Trims what is due now; how many records went.
    pub async fn trim(&self) -> Result<usize, DbError> {
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(retention_ms);
        let mut trimmed = 0;
        loop {
            let batch = self
                .db
                .write(move |conn| {
                    let through = checkpoints::get(conn, PROCESSOR)?;
                    let Some((last, deleted)) = stream::trim(conn, through, cutoff, TRIM_BATCH)?
                    else {
                        return Ok(0);
                    };
                    checkpoints::save(conn, RETENTION, last)?;
                    Ok(deleted)
                })
                .await?;
            trimmed += batch;
            if batch < TRIM_BATCH {
                return Ok(trimmed);
            }
        }
    }

    /// Trims every so often until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.trim().await {
                Ok(0) => {}
                Ok(trimmed) => tracing::debug!(trimmed, "stream trimmed"),
                Err(error) => tracing::warn!(%error, "cannot trim the stream; trying again later"),
            }
            if !pause(&shutdown, self.interval()).await {
                return;
            }
        }
    }
}

/// The position the stream is trimmed through: every record after it is kept.
pub async fn trimmed_through(db: &Arc<Db>) -> Result<i64, DbError> {
    db.read(|conn| checkpoints::get(conn, RETENTION)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use api::BookStore as _;
    use domain::event::DetailType;
    use domain::{Authors, Book, BookName, PublishedYear};

    use super::*;
    use crate::embedded::EmbeddedBookStore;

    fn book(name: &str) -> Book {
        Book {
            name: BookName::parse(name).unwrap(),
            authors: Authors::parse(&["An Author"]).unwrap(),
            published_year: PublishedYear::parse(2001).unwrap(),
        }
    }

    /// A store with `books` added and then the first of them removed: records 1..=n+1.
    async fn store(books: &[&str]) -> (Arc<Db>, EmbeddedEventLog) {
        let db = Db::in_memory().unwrap();
        let store = EmbeddedBookStore::new(Arc::clone(&db));
        for name in books {
            store.add(&book(name)).await.unwrap();
        }
        store.remove(&book(books[0]).name).await.unwrap();
        (Arc::clone(&db), EmbeddedEventLog(db))
    }

    fn cursors(page: &LogPage) -> Vec<String> {
        page.events.iter().map(|e| e.cursor.clone()).collect()
    }

    #[tokio::test]
    async fn the_log_holds_the_events_the_processor_publishes_in_stream_order() {
        let (_db, log) = store(&["A", "B", "C"]).await;
        let page = log.read(0, 4, 10).await.unwrap();
        assert_eq!(
            cursors(&page),
            (1..=4).map(sequence_number).collect::<Vec<_>>()
        );
        assert_eq!(page.through, 4);
        let types: Vec<DetailType> = page.events.iter().map(|e| e.detail_type).collect();
        assert_eq!(
            types,
            [
                DetailType::Added,
                DetailType::Added,
                DetailType::Added,
                DetailType::Removed
            ]
        );
        assert_eq!(page.events[3].book.name, BookName::parse("A").unwrap());
        // Exactly what the processor makes of the same record.
        let stored = log.0.read(|conn| stream::after(conn, 1, 1)).await.unwrap();
        let published = processor::map_record(&lambda_record(&stored[0]).unwrap()).unwrap();
        assert_eq!(
            page.events[1],
            BookEvent::new(published.detail_type, published.envelope)
        );
    }

    #[tokio::test]
    async fn a_read_goes_up_to_until_and_a_full_page_through_its_last_record() {
        let (_db, log) = store(&["A", "B", "C"]).await;
        let page = log.read(1, 3, 10).await.unwrap();
        assert_eq!(cursors(&page), [sequence_number(2), sequence_number(3)]);
        assert_eq!(page.through, 3, "nothing after until");
        let page = log.read(0, 4, 2).await.unwrap();
        assert_eq!(page.through, 2, "a full page goes through its last record");
        let page = log.read(4, 4, 2).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.through, 4);
    }

    #[tokio::test]
    async fn a_record_set_aside_is_not_in_the_log_but_the_read_goes_past_it() {
        let (db, log) = store(&["A", "B", "C"]).await;
        db.write(|conn| stream_dead_letters::insert(conn, 2, "e2", "{}", "poison", 1))
            .await
            .unwrap();
        let page = log.read(0, 4, 10).await.unwrap();
        assert_eq!(
            cursors(&page),
            [1, 3, 4].map(sequence_number).to_vec(),
            "the dead letter is skipped"
        );
        assert_eq!(page.through, 4);
    }

    #[tokio::test]
    async fn a_trimmed_position_is_expired_and_one_past_the_stream_unknown() {
        let (db, log) = store(&["A", "B", "C"]).await;
        db.write(|conn| {
            checkpoints::save(conn, PROCESSOR, 4)?;
            stream::trim(conn, 2, i64::MAX, 100)?;
            checkpoints::save(conn, RETENTION, 2)
        })
        .await
        .unwrap();
        match log.read(1, 4, 10).await {
            Err(LogError::Expired {
                resume_after,
                oldest,
            }) => {
                assert_eq!(resume_after, sequence_number(2));
                assert_eq!(oldest, Some(sequence_number(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cursors(&log.read(2, 4, 10).await.unwrap()).len(), 2);
        assert!(matches!(log.read(5, 5, 10).await, Err(LogError::Unknown)));
        assert!(log.read(4, 4, 10).await.unwrap().events.is_empty());
    }

    #[tokio::test]
    async fn retention_trims_only_old_records_the_processor_is_done_with() {
        let (db, _log) = store(&["A", "B", "C"]).await;
        let retention = Retention::new(Arc::clone(&db), Duration::ZERO);
        assert_eq!(retention.trim().await.unwrap(), 0, "nothing checkpointed");
        db.write(|conn| checkpoints::save(conn, PROCESSOR, 3))
            .await
            .unwrap();
        // Older than a retention of zero means committed before this millisecond.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(retention.trim().await.unwrap(), 3);
        assert_eq!(trimmed_through(&db).await.unwrap(), 3);
        let kept = db.read(|conn| stream::after(conn, 0, 10)).await.unwrap();
        assert_eq!(kept.iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
        let young = Retention::new(Arc::clone(&db), Duration::from_secs(3600));
        db.write(|conn| checkpoints::save(conn, PROCESSOR, 4))
            .await
            .unwrap();
        assert_eq!(young.trim().await.unwrap(), 0, "younger than the retention");
    }
}
