//! The port events leave through.

use async_trait::async_trait;

use crate::mapping::OutboxEvent;

/// Publishes events to an event bus, offered in stream order.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `events`. On failure, names the first event that may not have been
    /// published; every event before it was. Events after it may have been published too (a
    /// bus that ingests a call's entries independently accepts later ones beside a refused
    /// one): they will go out again, with the same `metadata.eventId`. A publisher must not let
    /// a later change of a book get on the bus before an earlier one (EventBridgePublisher
    /// never puts two changes of a book in one call).
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError>;
}

/// Some events were not published.
#[derive(Debug, thiserror::Error)]
#[error("event {first_failed} and later were not published: {reason}")]
pub struct PublishError {
    /// The index of the first event that was not published.
    pub first_failed: usize,
    /// Why, for the log.
    pub reason: String,
}
