//! The local change stream: what DynamoDB Streams and Lambda's event source mapping do on AWS.
//!
//! The [`StreamReader`] reads the records committed after its durable checkpoint, hands them to
//! a [`BatchHandler`] as the very JSON a Lambda receives from DynamoDB Streams, and honours the
//! `batchItemFailures` it answers as the processor's event source mapping does on AWS: the
//! checkpoint advances to just before the first failed record, which is retried with backoff
//! for as long as the stream keeps records ([`ReaderOptions::max_record_age`], 24 hours as on
//! DynamoDB Streams; template.yaml's mapping has no lower retry or age limit). Only a record
//! older than that is moved to the dead letters (with the checkpoint past it, in one
//! transaction) — where AWS would discard it — and the stream goes on.
//! One reader handles one batch at a time, so records are handled in commit order.
//!
//! A failure the handler reports is transient by contract: the processor sets a record it can
//! never map aside itself ([`processor::PoisonRecords`]; locally [`StreamDeadLetters`]) and
//! reports only what a retry can fix.
//!
//! - this module: [`StreamReader`], its [`ReaderOptions`], the [`BatchHandler`] it calls, and
//!   [`StreamDeadLetters`], where the processor sets aside what it can never map.
//! - `records`: a stored change as the typed `EventRecord` a Lambda gets.
//! - `log`: the stream as the subscriptions' [`EmbeddedEventLog`], and its [`Retention`].

mod log;
mod records;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::DynamoDbEventResponse;
use processor::{EventPublisher, PoisonRecords, SetAsideError};
use tokio_util::sync::CancellationToken;

use crate::embedded::stream::StoredRecord;
use crate::embedded::{Db, DbError, WriteInFlight, checkpoints, stream, stream_dead_letters};
pub use log::{DEFAULT_RETENTION, EmbeddedEventLog, RETENTION, Retention, trimmed_through};
use records::{lambda_record, sequence_number};

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

/// The processor library function over an [`EventPublisher`] and [`PoisonRecords`]: the same
/// call the processor Lambda makes.
#[derive(Clone)]
pub struct Processor {
    /// Where events go.
    pub publisher: Arc<dyn EventPublisher>,
    /// Where records that can never be mapped go.
    pub poison: Arc<dyn PoisonRecords>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Processor")
    }
}

#[async_trait]
impl BatchHandler for Processor {
    async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        processor::handle_batch(event, self.publisher.as_ref(), self.poison.as_ref()).await
    }
}

/// The local [`PoisonRecords`]: the stream's dead letters, which hold the whole record (and
/// which `outboxdemo dead-letters` lists and redrives).
#[derive(Debug, Clone)]
pub struct StreamDeadLetters(pub Arc<Db>);

#[async_trait]
impl PoisonRecords for StreamDeadLetters {
    async fn set_aside(&self, record: &EventRecord, reason: &str) -> Result<(), SetAsideError> {
        let seq = record
            .change
            .sequence_number
            .as_deref()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| SetAsideError("the record has no local sequence number".into()))?;
        let json = serde_json::to_string(record).map_err(|e| SetAsideError(e.to_string()))?;
        let (event_id, reason) = (record.event_id.clone(), reason.to_owned());
        self.0
            .write(move |conn| stream_dead_letters::insert(conn, seq, &event_id, &json, &reason, 1))
            .await
            .map_err(|e| SetAsideError(e.to_string()))
    }
}

/// How the reader batches and retries.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The most records in one batch (Lambda's `BatchSize`).
    pub batch_size: usize,
    /// How old a failing record may grow, retried all the while, before it is dead-lettered:
    /// the stream's retention (DynamoDB Streams keeps records 24 hours,
    /// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>), beyond
    /// which Lambda's mapping discards it.
    pub max_record_age: Duration,
    /// The wait after the first failure; it doubles with each further one.
    pub first_backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_record_age: Duration::from_secs(24 * 60 * 60),
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

async fn read_checkpoint(db: &Arc<Db>) -> Result<i64, DbError> {
    db.read(|conn| checkpoints::get(conn, PROCESSOR)).await
}

fn save_checkpoint(conn: &rusqlite::Connection, seq: i64) -> Result<(), DbError> {
    checkpoints::save(conn, PROCESSOR, seq)
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
    /// read and handled (so the next batch's events are not held behind it); it is awaited
    /// before the next checkpoint write, which the store applies after it in any case.
    async fn step(
        &self,
        checkpoint: i64,
        failing: &mut Failing,
        saving: &mut Option<WriteInFlight>,
    ) -> Result<Step, DbError> {
        let batch_size = self.options.batch_size;
        let records = self
            .db
            .read_short(move |conn| stream::after(conn, checkpoint, batch_size))
            .await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            if let Some(save) = saving.take() {
                save.await?;
            }
            return Ok(Step::Idle);
        };
        let mut event = Event::default();
        event.records = records
            .iter()
            .map(lambda_record)
            .collect::<Result<Vec<_>, _>>()?;
        let response = self.handler.handle(event).await;
        if let Some(save) = saving.take() {
            save.await?;
        }

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
            retried();
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
        let age_ms = chrono::Utc::now().timestamp_millis() - record.created_at_ms;
        let max_age_ms = i64::try_from(self.options.max_record_age.as_millis()).unwrap_or(i64::MAX);
        if age_ms <= max_age_ms {
            retried();
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
        // Built again from the stored record: the batch went to the handler.
        let record_json = serde_json::to_string(&lambda_record(record)?)?;
        let reason = format!(
            "the processor failed this record {attempts} times, until it was older than the stream keeps records ({} s)",
            self.options.max_record_age.as_secs()
        );
        tracing::error!(%event_id, attempts, "stream record dead-lettered; the stream moves on");
        self.db
            .write(move |conn| {
                stream_dead_letters::insert(conn, seq, &event_id, &record_json, &reason, attempts)?;
                save_checkpoint(conn, seq)
            })
            .await?;
        processor::metrics::dead_lettered("stream");
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

/// Counts a stream record that failed and will be tried again.
fn retried() {
    metrics::counter!(crate::metrics::RETRIES, "source" => "stream").increment(1);
}

/// Sleeps for `duration` unless shut down first; false when shut down.
async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = shutdown.cancelled() => false,
    }
}

/// The processor's checkpoint: the sequence number of the last record it is done with.
pub async fn checkpoint(db: &Arc<Db>) -> Result<i64, DbError> {
    read_checkpoint(db).await
}
