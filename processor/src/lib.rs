//! The processor: DynamoDB stream records in, events out.
//!
//! - [`mapping`]: one stream record → one [`OutboxEvent`] per the contract, or a reason it
//!   cannot be mapped.
//! - [`publisher`]: the [`EventPublisher`] port that events leave through (EventBridge on
//!   AWS, the local bus in the local stack).
//! - `eventbridge` (feature `aws`): `EventBridgePublisher`, the publisher the processor
//!   Lambda uses. The local stack builds without it, and so without the AWS SDK.
//! - [`handle_batch`]: the function the processor Lambda and the local stream reader both call:
//!   a batch in, `batchItemFailures` out.

#[cfg(feature = "aws")]
pub mod eventbridge;
pub mod mapping;
pub mod publisher;

use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};

#[cfg(feature = "aws")]
pub use eventbridge::EventBridgePublisher;
pub use mapping::{MappingError, OutboxEvent, map_record};
pub use publisher::{EventPublisher, PublishError};

/// Maps a batch of stream records to events and publishes them, in stream order.
///
/// Records are mapped in order up to the first one that cannot be mapped; that prefix is
/// published. The response names the first record that was not published (unmappable, or
/// refused by the publisher), so the stream retries from there and nothing after it is
/// skipped. Records before it that were published are not reported and not retried. Records
/// after it may already be on the bus (the publisher accepted them beside the refused one):
/// they go out again with the same `metadata.eventId`, on which consumers dedupe, and they can
/// reach the bus before the record the stream retries, so the bus sees them out of order.
pub async fn handle_batch(event: Event, publisher: &dyn EventPublisher) -> DynamoDbEventResponse {
    let records = event.records;
    let mut events = Vec::with_capacity(records.len());
    let mut first_unmapped = None;
    for (index, record) in records.iter().enumerate() {
        match map_record(record) {
            Ok(event) => events.push(event),
            Err(error) => {
                tracing::error!(
                    event_id = %record.event_id,
                    sequence_number = record.change.sequence_number.as_deref().unwrap_or("-"),
                    %error,
                    "stream record cannot be mapped to an event; reporting it as a batch item failure"
                );
                first_unmapped = Some(index);
                break;
            }
        }
    }

    let first_failed = match publisher.publish(&events).await {
        Ok(()) => first_unmapped,
        Err(error) => {
            let index = error.first_failed.min(events.len());
            if let Some(record) = records.get(index) {
                tracing::warn!(
                    event_id = %record.event_id,
                    %error,
                    "publishing failed; the stream will retry from this record"
                );
            }
            Some(index)
        }
    };
    for event in events.iter().take(first_failed.unwrap_or(events.len())) {
        tracing::info!(
            event_id = %event.envelope.metadata.event_id,
            detail_type = %event.detail_type,
            "event published"
        );
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
