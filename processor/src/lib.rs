//! The processor: DynamoDB stream records in, events out.
//!
//! - [`mapping`]: one stream record → one [`OutboxEvent`] per the contract, or a reason it
//!   cannot be mapped.
//! - [`publisher`]: the [`EventPublisher`] port that events leave through (EventBridge on
//!   AWS, the local bus in the local stack).
//! - `eventbridge` (feature `aws`): `EventBridgePublisher`, the publisher the processor
//!   Lambda uses. The local stack builds without it, and so without the AWS SDK.
//! - [`journal`]: the [`Journal`] port, where each event gets its position among all published
//!   events before it is published ([`Journaled`]); on AWS the journal table
//!   (`dynamo_journal`, feature `aws`), which subscriptions resume from.
//! - [`poison`]: the [`PoisonRecords`] port where a record that can never be mapped is set
//!   aside, whole (an SQS queue on AWS, the stream's dead letters locally).
//! - `sqs` (feature `aws`): `SqsPoisonRecords`, the processor Lambda's poison queue.
//! - [`metrics`]: what it counts (events published, records set aside).
//! - [`spans`]: its hop spans, `stream.batch` and `processor.publish`, and how an event's
//!   `metadata.traceparent` is handed on.
//! - [`handle_batch`]: the function the processor Lambda and the local stream reader both call:
//!   a batch in, `batchItemFailures` out.

#[cfg(feature = "aws")]
pub mod dynamo_journal;
#[cfg(feature = "aws")]
pub mod eventbridge;
pub mod journal;
pub mod mapping;
pub mod metrics;
pub mod poison;
pub mod publisher;
pub mod spans;
#[cfg(feature = "aws")]
pub mod sqs;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use telemetry::{Hop, InHop as _};

#[cfg(feature = "aws")]
pub use dynamo_journal::DynamoJournal;
#[cfg(feature = "aws")]
pub use eventbridge::EventBridgePublisher;
pub use journal::{Journal, JournalError, Journaled};
pub use mapping::{MappingError, OutboxEvent, map_record};
pub use poison::{PoisonRecord, PoisonRecords, SetAsideError};
pub use publisher::{EventPublisher, PublishError};
#[cfg(feature = "aws")]
pub use sqs::SqsPoisonRecords;

/// Maps a batch of stream records to events and publishes them, in stream order.
///
/// Failures are of two kinds, told apart here:
/// - **Permanent**: a record that cannot be mapped will not be mappable on a retry either. It
///   is set aside in `poison`, whole, and the rest of the batch flows on.
/// - **Transient**: an event the publisher refused (throttled, or an entry failed). The response
///   names the first record not published, as a batch item failure, and the stream retries
///   from there (with `ReportBatchItemFailures`, Lambda checkpoints before the lowest reported
///   sequence number: <https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>).
///   A record that could not be set aside is reported the same way.
///
/// Records before the first failure are done and not retried. Records after it may already be
/// on the bus (the publisher accepted them beside the refused one): they go out again with the
/// same `metadata.eventId`, on which consumers and subscribers dedupe. Those of other books can
/// reach the bus before the record the stream retries; a later change of the same book cannot
/// (the EventBridge publisher never puts two changes of a book in one call). An unmappable record after the first failure is
/// set aside on the retry, not now, so it is set aside once per time the stream reaches it.
///
/// **Tracing.** The batch runs in a `stream.batch` span, which continues the trace of its first
/// record that has one and links the others'. Each event gets a `processor.publish` span that
/// continues its own record's trace (the write's `store.write`), and the event's
/// `metadata.traceparent` becomes that span's, so consumers and subscribers continue from it.
pub async fn handle_batch(
    event: Event,
    publisher: &dyn EventPublisher,
    poison: &dyn PoisonRecords,
) -> DynamoDbEventResponse {
    let records = event.records;
    // (index of the record, its event) for every record that maps; the others are poison.
    let mut events = Vec::with_capacity(records.len());
    let mut unmapped = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match map_record(record) {
            Ok(event) => events.push((index, event)),
            Err(error) => unmapped.push((index, error)),
        }
    }
    let (indexes, outbox): (Vec<usize>, Vec<OutboxEvent>) = events.into_iter().unzip();
    let batch = spans::batch(records.len(), &outbox);
    publish_batch(&records, indexes, outbox, unmapped, publisher, poison)
        .in_hop(batch)
        .await
}

/// [`handle_batch`] once its records are mapped: publishes the events, sets the unmappable
/// records aside and names the first failure.
async fn publish_batch(
    records: &[EventRecord],
    indexes: Vec<usize>,
    mut outbox: Vec<OutboxEvent>,
    unmapped: Vec<(usize, MappingError)>,
    publisher: &dyn EventPublisher,
    poison: &dyn PoisonRecords,
) -> DynamoDbEventResponse {
    let publishing: Vec<Hop> = outbox.iter_mut().map(spans::publish).collect();
    let published = match publisher.publish(&outbox).await {
        Ok(()) => outbox.len(),
        Err(error) => {
            let first = error.first_failed.min(outbox.len());
            if let Some(record) = indexes.get(first).and_then(|i| records.get(*i)) {
                tracing::warn!(
                    event_id = %record.event_id,
                    %error,
                    "publishing failed; the stream will retry from this record"
                );
            }
            first
        }
    };
    for (event, hop) in outbox[..published].iter().zip(&publishing) {
        metrics::published(event.detail_type);
        // The hop names the event and its trace.
        hop.in_scope(|| tracing::info!(detail_type = %event.detail_type, "event published"));
    }
    drop(publishing);
    let mut first_failed = indexes.get(published).copied();

    for (index, error) in unmapped {
        if first_failed.is_some_and(|failed| index > failed) {
            break; // the stream will hand it over again
        }
        let record = &records[index];
        let sequence_number = record.change.sequence_number.as_deref().unwrap_or("-");
        let reason = error.to_string();
        match poison.set_aside(record, &reason).await {
            Ok(()) => {
                metrics::dead_lettered("stream");
                tracing::error!(
                    event_id = %record.event_id,
                    sequence_number,
                    %reason,
                    "stream record cannot be mapped to an event; set aside with the whole record"
                );
            }
            Err(error) => {
                tracing::warn!(
                    event_id = %record.event_id,
                    sequence_number,
                    %reason,
                    %error,
                    "an unmappable record could not be set aside; the stream will retry from it"
                );
                first_failed = Some(first_failed.map_or(index, |failed| failed.min(index)));
                break;
            }
        }
    }

    let mut response = DynamoDbEventResponse::default();
    if let Some(record) = first_failed.and_then(|index| records.get(index)) {
        let mut failure = DynamoDbBatchItemFailure::default();
        // A record without a sequence number cannot be named; an empty identifier makes
        // Lambda (and the local reader) treat the whole batch as failed, which loses nothing.
        failure.item_identifier = Some(record.change.sequence_number.clone().unwrap_or_default());
        response.batch_item_failures.push(failure);
    }
    response
}
