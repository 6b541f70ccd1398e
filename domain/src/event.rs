//! The event contract: what the processor publishes and consumers depend on.
//!
//! Change it only on purpose, with a new [`ENVELOPE_VERSION`].
//!
//! Within a version, fields may be *added* where they are optional: a reader ignores fields it
//! does not know (no `deny_unknown_fields` here, and consumers must not add it), and every
//! added field is omitted when absent, so envelopes written before it read as they did.
//! Version 1 gained `metadata.traceparent` and `metadata.committedAt` that way: a consumer
//! that ignores them keeps working, and an envelope without them is still version 1.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::book::{Authors, Book, BookName, PublishedYear};

/// The `source` of every event the processor publishes.
pub const SOURCE: &str = "outboxdemo.processor";
/// The event bus name used when `EVENT_BUS_NAME` is not set.
pub const DEFAULT_EVENT_BUS_NAME: &str = "outbox-demo";
/// The version of the envelope this crate writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// An event's `detail-type`, one per kind of committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailType {
    /// A book was added (stream `INSERT`).
    #[serde(rename = "outboxdemo.added")]
    Added,
    /// A book was removed (stream `REMOVE`).
    #[serde(rename = "outboxdemo.removed")]
    Removed,
    /// A book was changed in place (stream `MODIFY`).
    #[serde(rename = "outboxdemo.updated")]
    Updated,
}

impl DetailType {
    /// Every detail type.
    pub const ALL: [Self; 3] = [Self::Added, Self::Removed, Self::Updated];

    /// The `detail-type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "outboxdemo.added",
            Self::Removed => "outboxdemo.removed",
            Self::Updated => "outboxdemo.updated",
        }
    }

    /// The detail type a `detail-type` string names, if any.
    pub fn parse(detail_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == detail_type)
    }
}

impl fmt::Display for DetailType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event came from. `event_id` is the stream record's event id: stable across
/// retries and re-reads, so consumers dedupe on it (EventBridge's own `id` is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The stream record's `eventID`.
    pub event_id: String,
    /// The stream record's `SequenceNumber`.
    pub sequence_number: String,
    /// When the change was committed (the record's approximate creation time).
    pub occurred_at: DateTime<Utc>,
    /// The envelope version, [`ENVELOPE_VERSION`].
    pub version: u32,
    /// The event's position in the journal of every published event (on AWS, where stream
    /// sequence numbers order only the records of one shard), which subscriptions resume
    /// after; absent where `sequenceNumber` is that position already (the local stream). Added
    /// within version 1: a field readers that do not know it ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The W3C `traceparent` (<https://www.w3.org/TR/trace-context/#traceparent-header>) of
    /// the span that published the event, which continues the trace of the write that made
    /// the change. A reader should treat one it cannot parse as absent, never as a reason to
    /// refuse the event. Absent on envelopes written before it was added, and on removals
    /// (a deleted item has no new image to carry the remover's trace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// When the writer committed the change, to the millisecond (`occurredAt` has the
    /// stream's whole seconds): what latency is measured from. Absent where `traceparent` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at: Option<DateTime<Utc>>,
}

impl Metadata {
    /// The event's position among all published events: its `cursor`, else its
    /// `sequenceNumber`.
    pub fn position(&self) -> &str {
        self.cursor.as_deref().unwrap_or(&self.sequence_number)
    }
}

/// Seconds from a change's `committedAt` to now: the latency of the hop that measures it, never
/// below zero (the writer's clock may run ahead of the reader's on another host).
pub fn seconds_since(committed_at: DateTime<Utc>) -> f64 {
    let elapsed = Utc::now().signed_duration_since(committed_at);
    elapsed
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The book an event is about: the whole book, except that a `removed` event whose stream
/// record had no old image carries only the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookSnapshot {
    /// The book's name.
    pub name: BookName,
    /// The authors, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authors: Option<Authors>,
    /// The publication year, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_year: Option<PublishedYear>,
}

impl BookSnapshot {
    /// A snapshot that knows only the name.
    pub fn name_only(name: BookName) -> Self {
        Self {
            name,
            authors: None,
            published_year: None,
        }
    }

    /// The whole book, when the snapshot has every part of it.
    pub fn to_book(&self) -> Option<Book> {
        Some(Book {
            name: self.name.clone(),
            authors: self.authors.clone()?,
            published_year: self.published_year?,
        })
    }
}

impl From<Book> for BookSnapshot {
    fn from(book: Book) -> Self {
        Self {
            name: book.name,
            authors: Some(book.authors),
            published_year: Some(book.published_year),
        }
    }
}

/// An event's `detail`: `{"metadata": {...}, "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Where the event came from.
    pub metadata: Metadata,
    /// The book.
    pub data: BookSnapshot,
}

/// Why an event's detail is not an envelope this crate understands.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The detail does not have the envelope's shape or holds invalid values.
    #[error("the detail is not a valid envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The envelope was written by a version of the contract this one does not know.
    #[error("envelope version {0} is not supported (expected {ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
}

impl Envelope {
    /// Reads an envelope from an event's detail, refusing versions it does not know.
    pub fn from_detail(detail: serde_json::Value) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_value(detail)?;
        if envelope.metadata.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.metadata.version));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_types_spell_the_contract() {
        for t in DetailType::ALL {
            assert_eq!(DetailType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert_eq!(DetailType::parse("outboxdemo.other"), None);
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let detail = serde_json::json!({
            "metadata": {"eventId": "e1", "sequenceNumber": "100", "occurredAt": "2024-05-01T12:00:00Z", "version": 1},
            "data": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965}
        });
        let envelope = Envelope::from_detail(detail.clone()).unwrap();
        assert_eq!(envelope.data.to_book().unwrap().published_year.get(), 1965);
        assert_eq!(serde_json::to_value(&envelope).unwrap(), detail);
    }

    #[test]
    fn trace_fields_are_optional_additions_to_version_1() {
        let traced = serde_json::json!({
            "metadata": {"eventId": "e1", "sequenceNumber": "100", "occurredAt": "2024-05-01T12:00:00Z", "version": 1,
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "committedAt": "2024-05-01T12:00:00.123Z"},
            "data": {"name": "Dune"}
        });
        let envelope = Envelope::from_detail(traced.clone()).unwrap();
        assert_eq!(
            envelope.metadata.committed_at.unwrap().timestamp_millis(),
            1_714_564_800_123
        );
        assert_eq!(serde_json::to_value(&envelope).unwrap(), traced);

        // A reader that knows only the fields before them (a consumer built earlier) reads it.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct OlderMetadata {
            event_id: String,
            sequence_number: String,
            occurred_at: DateTime<Utc>,
            version: u32,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OlderEnvelope {
            metadata: OlderMetadata,
            data: BookSnapshot,
        }
        let older: OlderEnvelope = serde_json::from_value(traced).unwrap();
        assert_eq!(older.metadata.version, ENVELOPE_VERSION);
    }

    #[test]
    fn name_only_snapshot_omits_the_rest() {
        let snapshot = BookSnapshot::name_only(BookName::parse("Dune").unwrap());
        assert_eq!(
            serde_json::to_value(&snapshot).unwrap(),
            serde_json::json!({"name": "Dune"})
        );
        assert!(snapshot.to_book().is_none());
    }

    #[test]
    fn unknown_versions_are_refused() {
        let detail = serde_json::json!({
            "metadata": {"eventId": "e1", "sequenceNumber": "1", "occurredAt": "2024-05-01T12:00:00Z", "version": 2},
            "data": {"name": "Dune"}
        });
        assert!(matches!(
            Envelope::from_detail(detail),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
    }
}
