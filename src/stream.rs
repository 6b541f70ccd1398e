//! The local change stream: what DynamoDB Streams and Lambda's event source mapping do on AWS.
//!
//! The [`StreamReader`] reads the records committed after its durable checkpoint, hands them to
//! a [`BatchHandler`] as the very JSON a Lambda receives from DynamoDB Streams, and honours the
//! `batchItemFailures` it answers: the checkpoint advances to just before the first failed
//! record, which is retried with backoff; after [`ReaderOptions::max_attempts`] it is moved to
//! the dead letters (with the checkpoint past it, in one transaction) and the stream goes on.
//! One reader handles one batch at a time, so records are handled in commit order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::DynamoDbEventResponse;
use processor::EventPublisher;
use rusqlite::{OptionalExtension, params};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::embedded::{Db, DbError, WriteInFlight};

/// The name under which the processor's checkpoint is stored.
pub const PROCESSOR: &str = "processor";

/// What the stream reader calls with each batch: the processor Lambda's handler, locally.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// Handles one batch and names the first record that failed, if any.
    async fn handle(&self, event: Event) -> DynamoDbEventResponse;
}

#[async_trait]
impl<T: BatchHandler + ?Sized> BatchHandler for Arc<T> {
    async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        (**self).handle(event).await
    }
}

/// The processor library function over an [`EventPublisher`]: the same call the processor
/// Lambda makes.
#[derive(Clone)]
pub struct Processor(pub Arc<dyn EventPublisher>);

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Processor")
    }
}

#[async_trait]
impl BatchHandler for Processor {
    async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        processor::handle_batch(event, self.0.as_ref()).await
    }
}

/// How the reader batches and retries.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The most records in one batch (Lambda's `BatchSize`).
    pub batch_size: usize,
    /// How many times a failing record is tried before it is dead-lettered.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles with each further one.
    pub first_backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReaderOptions {
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        domain::Backoff {
            first: self.first_backoff,
            max: self.max_backoff,
        }
        .delay(attempts)
    }
}

/// One committed change, as stored.
#[derive(Debug, Clone)]
struct StoredRecord {
    seq: i64,
    event_id: String,
    event_name: String,
    keys: String,
    new_image: Option<String>,
    old_image: Option<String>,
    created_at_ms: i64,
}

/// Sequence numbers are zero-padded so that they order the same as text and as numbers, as
/// DynamoDB's do.
fn sequence_number(seq: i64) -> String {
    format!("{seq:021}")
}

impl StoredRecord {
    /// The record as DynamoDB Streams presents it to a Lambda, as JSON text. The stored keys
    /// and images are JSON already and go in as they are: nothing is parsed to be written
    /// again.
    fn to_lambda_json(&self) -> Result<String, DbError> {
        let size = self.keys.len()
            + self.new_image.as_ref().map_or(0, String::len)
            + self.old_image.as_ref().map_or(0, String::len);
        let mut json = format!(
            concat!(
                r#"{{"eventID":{},"eventName":{},"eventVersion":"1.1","eventSource":"aws:dynamodb","#,
                r#""awsRegion":"local","eventSourceARN":{},"dynamodb":{{"#,
                // Whole epoch seconds, as DynamoDB Streams sends them (aws_lambda_events would
                // misread a fraction as microseconds).
                r#""ApproximateCreationDateTime":{},"Keys":{},"SequenceNumber":"{}","#,
                r#""SizeBytes":{},"StreamViewType":"NEW_AND_OLD_IMAGES""#,
            ),
            serde_json::to_string(&self.event_id)?,
            serde_json::to_string(&self.event_name)?,
            serde_json::to_string(STREAM_ARN)?,
            self.created_at_ms.div_euclid(1000),
            self.keys,
            sequence_number(self.seq),
            size,
        );
        if let Some(image) = &self.new_image {
            json.push_str(r#","NewImage":"#);
            json.push_str(image);
        }
        if let Some(image) = &self.old_image {
            json.push_str(r#","OldImage":"#);
            json.push_str(image);
        }
        json.push_str("}}");
        Ok(json)
    }
}

/// The stream's ARN in the local records.
const STREAM_ARN: &str = "arn:aws:dynamodb:local:000000000000:table/outbox-demo/stream/local";

async fn read_checkpoint(db: &Arc<Db>) -> Result<i64, DbError> {
    db.read(|conn| {
        Ok(conn
            .query_row(
                "SELECT seq FROM checkpoints WHERE reader = ?1",
                [PROCESSOR],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    })
    .await
}

async fn read_batch(db: &Arc<Db>, after: i64, limit: usize) -> Result<Vec<StoredRecord>, DbError> {
    db.read(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT seq, event_id, event_name, keys, new_image, old_image, created_at_ms
             FROM stream WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit as i64], |row| {
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
    })
    .await
}

fn save_checkpoint(conn: &rusqlite::Connection, seq: i64) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO checkpoints (reader, seq) VALUES (?1, ?2)
         ON CONFLICT (reader) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![PROCESSOR, seq])?;
    Ok(())
}

/// Reads the change stream and feeds it to a [`BatchHandler`].
#[derive(Debug)]
pub struct StreamReader<H> {
    db: Arc<Db>,
    handler: H,
    options: ReaderOptions,
}

/// The record at the head of the stream that keeps failing, and how often it has.
#[derive(Debug, Default)]
struct Failing {
    seq: i64,
    attempts: u32,
}

impl<H: BatchHandler> StreamReader<H> {
    /// A reader of `db`'s stream that calls `handler`.
    pub fn new(db: Arc<Db>, handler: H, options: ReaderOptions) -> Self {
        Self {
            db,
            handler,
            options,
        }
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut checkpoint = loop {
            match read_checkpoint(&self.db).await {
                Ok(seq) => break seq,
                Err(error) => {
                    tracing::error!(%error, "cannot read the stream checkpoint; retrying");
                    if !pause(&shutdown, self.options.max_backoff).await {
                        return;
                    }
                }
            }
        };
        let mut failing = Failing::default();
        let mut saving = None;
        while !shutdown.is_cancelled() {
            match self.step(checkpoint, &mut failing, &mut saving).await {
                Ok(Step::Advanced(seq)) => checkpoint = seq,
                Ok(Step::Idle) => {
                    tokio::select! {
                        () = self.db.stream_appended() => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Ok(Step::Retry(backoff)) => {
                    pause(&shutdown, backoff).await;
                }
                Err(error) => {
                    tracing::error!(%error, "stream reader failed; retrying");
                    pause(&shutdown, self.options.max_backoff).await;
                }
            }
        }
    }

    /// Reads and handles one batch after `checkpoint`. After a fully handled batch the
    /// checkpoint is saved by a write left in `saving`, which commits while the next batch is
    /// read and handled; it is awaited before the next checkpoint write.
    async fn step(
        &self,
        checkpoint: i64,
        failing: &mut Failing,
        saving: &mut Option<WriteInFlight>,
    ) -> Result<Step, DbError> {
        let records = read_batch(&self.db, checkpoint, self.options.batch_size).await?;
        if let Some(save) = saving.take() {
            save.await?;
        }
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(Step::Idle);
        };
        let json = records
            .iter()
            .map(StoredRecord::to_lambda_json)
            .collect::<Result<Vec<_>, _>>()?;
        let event: Event = serde_json::from_str(&format!(r#"{{"Records":[{}]}}"#, json.join(",")))?;
        let response = self.handler.handle(event).await;

        let Some(index) = first_failure(&response, &records) else {
            *saving = Some(Box::pin(
                self.db.write(move |conn| save_checkpoint(conn, last)),
            ));
            *failing = Failing::default();
            return Ok(Step::Advanced(last));
        };
        let record = &records[index];
        if index > 0 {
            // Everything before the failed record is done: keep it.
            let done = records[index - 1].seq;
            self.db
                .write(move |conn| save_checkpoint(conn, done))
                .await?;
            *failing = Failing {
                seq: record.seq,
                attempts: 1,
            };
            tracing::warn!(event_id = %record.event_id, "stream record failed; retrying");
            return Ok(Step::Advanced(done));
        }
        if failing.seq != record.seq {
            *failing = Failing {
                seq: record.seq,
                attempts: 0,
            };
        }
        failing.attempts += 1;
        if failing.attempts < self.options.max_attempts {
            tracing::warn!(
                event_id = %record.event_id,
                attempts = failing.attempts,
                "stream record failed; retrying"
            );
            return Ok(Step::Retry(self.options.backoff(failing.attempts)));
        }

        let attempts = failing.attempts;
        let seq = record.seq;
        let event_id = record.event_id.clone();
        let record_json = json[index].clone();
        let reason = format!("the processor failed this record {attempts} times");
        tracing::error!(%event_id, attempts, "stream record dead-lettered; the stream moves on");
        self.db.write(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO stream_dead_letters (seq, event_id, record, reason, attempts, failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![seq, event_id, record_json, reason, attempts, chrono::Utc::now().to_rfc3339()],
            )?;
            save_checkpoint(conn, seq)
        })
        .await?;
        *failing = Failing::default();
        Ok(Step::Advanced(seq))
    }
}

enum Step {
    /// The checkpoint moved to this sequence number.
    Advanced(i64),
    /// Nothing to read.
    Idle,
    /// The head record failed; wait this long before trying it again.
    Retry(Duration),
}

/// The index of the first failed record in the batch: the lowest sequence number reported.
/// An identifier that names no record of the batch fails the whole batch, as on Lambda.
fn first_failure(response: &DynamoDbEventResponse, records: &[StoredRecord]) -> Option<usize> {
    response
        .batch_item_failures
        .iter()
        .map(|failure| {
            let identifier = failure.item_identifier.as_deref().unwrap_or_default();
            records
                .iter()
                .position(|r| sequence_number(r.seq) == identifier)
                .unwrap_or(0)
        })
        .min()
}

/// Sleeps for `duration` unless shut down first; false when shut down.
async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = shutdown.cancelled() => false,
    }
}

/// A stream record that the processor kept failing, set aside so the stream could go on.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDeadLetter {
    /// The record's position in the stream.
    pub seq: i64,
    /// The record's `eventID`.
    pub event_id: String,
    /// The record as the processor got it (Lambda's DynamoDB stream record JSON).
    pub record: Value,
    /// Why it was set aside.
    pub reason: String,
    /// How many times it was tried.
    pub attempts: u32,
}

/// The stream's dead letters, oldest first.
pub async fn dead_letters(db: &Arc<Db>) -> Result<Vec<StreamDeadLetter>, DbError> {
    db.read(|conn| {
        let mut statement = conn.prepare_cached(
            "SELECT seq, event_id, record, reason, attempts FROM stream_dead_letters ORDER BY seq",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, String>(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        let mut letters = Vec::new();
        for row in rows {
            let (seq, event_id, record, reason, attempts) = row?;
            letters.push(StreamDeadLetter {
                seq,
                event_id,
                record: serde_json::from_str(&record)?,
                reason,
                attempts,
            });
        }
        Ok(letters)
    })
    .await
}

/// The processor's checkpoint: the sequence number of the last record it is done with.
pub async fn checkpoint(db: &Arc<Db>) -> Result<i64, DbError> {
    read_checkpoint(db).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    /// The text built around the stored JSON is the DynamoDB Streams record a Lambda gets.
    #[test]
    fn a_stored_record_becomes_the_lambda_record_json() {
        let record = StoredRecord {
            seq: 42,
            event_id: "e\"1".to_owned(),
            event_name: "MODIFY".to_owned(),
            keys: r#"{"name":{"S":"Dune"}}"#.to_owned(),
            new_image: Some(r#"{"name":{"S":"Dune"},"publishedYear":{"N":"1965"}}"#.to_owned()),
            old_image: Some(r#"{"name":{"S":"Dune"},"publishedYear":{"N":"1964"}}"#.to_owned()),
            created_at_ms: 1_714_564_800_999,
        };
        let text = record.to_lambda_json().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "eventID": "e\"1",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "local",
                "eventSourceARN": STREAM_ARN,
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_714_564_800,
                    "Keys": {"name": {"S": "Dune"}},
                    "NewImage": {"name": {"S": "Dune"}, "publishedYear": {"N": "1965"}},
                    "OldImage": {"name": {"S": "Dune"}, "publishedYear": {"N": "1964"}},
                    "SequenceNumber": "000000000000000000042",
                    "SizeBytes": text_len(&record),
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            })
        );
        let event: Event = serde_json::from_str(&format!(r#"{{"Records":[{text}]}}"#)).unwrap();
        assert_eq!(
            event.records[0].change.sequence_number.as_deref(),
            Some("000000000000000000042")
        );

        let removal = StoredRecord {
            event_name: "REMOVE".to_owned(),
            new_image: None,
            ..record
        };
        let value: Value = serde_json::from_str(&removal.to_lambda_json().unwrap()).unwrap();
        assert!(value["dynamodb"].get("NewImage").is_none());
        assert_eq!(value["dynamodb"]["OldImage"]["publishedYear"]["N"], "1964");
    }

    fn text_len(record: &StoredRecord) -> usize {
        record.keys.len()
            + record.new_image.as_ref().map_or(0, String::len)
            + record.old_image.as_ref().map_or(0, String::len)
    }
}
