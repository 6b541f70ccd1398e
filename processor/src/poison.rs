//! The port where records the processor can never map are set aside.

use async_trait::async_trait;
use aws_lambda_events::dynamodb::EventRecord;

/// Where a record that can never become an event goes: with the whole record and the reason,
/// so an operator can read it, fix the cause and redrive it, while the stream moves on.
///
/// A record that cannot be mapped now will not be mappable on any retry, so it is a permanent
/// failure: reporting it as a batch item failure would only have the stream retry it until
/// Lambda discards it *and every record after it in its batch*, leaving a pointer with no
/// records (Lambda's on-failure destination for stream sources sends only batch metadata,
/// <https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html>).
#[async_trait]
pub trait PoisonRecords: Send + Sync {
    /// Keeps `record`, which cannot be mapped for `reason`. An error means it was not kept:
    /// the processor then reports the record as a batch item failure, so the stream retries it.
    async fn set_aside(&self, record: &EventRecord, reason: &str) -> Result<(), SetAsideError>;
}

/// A record could not be set aside.
#[derive(Debug, thiserror::Error)]
#[error("the record could not be set aside: {0}")]
pub struct SetAsideError(pub String);

/// What a set-aside record is stored as: the record as Lambda delivered it, and why it could
/// not be mapped. Redrive it as `{"Records": [record]}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PoisonRecord {
    /// The stream record, in the JSON shape of a Lambda event's record.
    pub record: EventRecord,
    /// Why it could not be mapped.
    pub reason: String,
}
