//! What a consumer records when it has reacted to an event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{BookSnapshot, DetailType};

/// One consumer's reaction to one event. Keyed by (`event_id`, `consumer`), so recording it is
/// also the consumer's idempotency record: an event redelivered has no second entry, and every
/// consumer of one event has an entry of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityEntry {
    /// The event's `metadata.eventId`.
    pub event_id: String,
    /// The event's detail type.
    pub detail_type: DetailType,
    /// The consumer that reacted, e.g. `book-added`.
    pub consumer: String,
    /// The book the event was about.
    pub book: BookSnapshot,
    /// When the consumer reacted.
    pub processed_at: DateTime<Utc>,
}
