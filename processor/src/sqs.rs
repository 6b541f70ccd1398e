//! The SQS adapter of [`PoisonRecords`]: the processor Lambda's poison queue.

use async_trait::async_trait;
use aws_lambda_events::dynamodb::EventRecord;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

use crate::poison::{PoisonRecord, PoisonRecords, SetAsideError};

/// The largest SQS message body: 256 KiB
/// (<https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html>).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Sets records aside as messages of one SQS queue, each a [`PoisonRecord`] in JSON.
#[derive(Debug, Clone)]
pub struct SqsPoisonRecords {
    client: Client,
    queue_url: String,
}

impl SqsPoisonRecords {
    /// The queue at `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

/// The message for `record`. A DynamoDB item can be 400 KB, more than an SQS message holds: a
/// record too large keeps its keys, identifiers and sequence number but not its images (the
/// reason says so; the stream keeps the whole record for 24 hours).
pub fn message_body(record: &EventRecord, reason: &str) -> Result<String, serde_json::Error> {
    let full = serde_json::to_string(&PoisonRecord {
        record: record.clone(),
        reason: reason.to_owned(),
    })?;
    if full.len() <= MAX_MESSAGE_BYTES {
        return Ok(full);
    }
    let mut slim = record.clone();
    slim.change.new_image = Default::default();
    slim.change.old_image = Default::default();
    serde_json::to_string(&PoisonRecord {
        record: slim,
        reason: format!(
            "{reason} (its images are left out: the record is larger than an SQS message; \
             read it from the stream by its sequence number within 24 hours)"
        ),
    })
}

#[async_trait]
impl PoisonRecords for SqsPoisonRecords {
    async fn set_aside(&self, record: &EventRecord, reason: &str) -> Result<(), SetAsideError> {
        let body = message_body(record, reason).map_err(|e| SetAsideError(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| SetAsideError(DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}
