//! One stream record → one event, per the contract in [`domain::event`].

use aws_lambda_events::dynamodb::EventRecord;
use domain::event::{BookSnapshot, DetailType, ENVELOPE_VERSION, Envelope, Metadata, SOURCE};
use domain::item::{self, ItemError};

/// An event ready to publish: `source` is always [`SOURCE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The event's `detail-type`.
    pub detail_type: DetailType,
    /// The event's `detail`.
    pub envelope: Envelope,
}

impl OutboxEvent {
    /// The event's `source`.
    pub fn source(&self) -> &'static str {
        SOURCE
    }

    /// The `detail` as the JSON text EventBridge takes.
    pub fn detail_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.envelope)
    }
}

/// Why a stream record cannot become an event.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The record has no `eventID`, which consumers need to dedupe.
    #[error("the record has no eventID")]
    MissingEventId,
    /// The record has no sequence number, so it cannot be ordered or retried.
    #[error("the record has no SequenceNumber")]
    MissingSequenceNumber,
    /// `eventName` is not INSERT, MODIFY or REMOVE.
    #[error("unknown eventName {0:?}")]
    UnknownEventName(String),
    /// An INSERT or MODIFY record has no new image (the stream view type must include it).
    #[error("the {0} record has no NewImage")]
    MissingNewImage(&'static str),
    /// An image or key is not a valid book.
    #[error("{image} is not a valid book: {source}")]
    InvalidBook {
        /// Which part of the record.
        image: &'static str,
        /// Why.
        source: ItemError,
    },
}

/// Maps a stream record to its event.
///
/// `INSERT` → `outboxdemo.added` with the new image; `MODIFY` → `outboxdemo.updated` with the
/// new image; `REMOVE` → `outboxdemo.removed` with the old image, or only the name from the
/// keys when the stream carries no old image.
///
/// The new image's [`ChangeTrace`](item::ChangeTrace) (the write's `traceparent` and commit
/// time) goes into the metadata. A removal has none: the old image's is that of the write
/// that made the book, not of the removal.
pub fn map_record(record: &EventRecord) -> Result<OutboxEvent, MappingError> {
    if record.event_id.is_empty() {
        return Err(MappingError::MissingEventId);
    }
    let change = &record.change;
    let sequence_number = change
        .sequence_number
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or(MappingError::MissingSequenceNumber)?;
    let new_book = |name: &'static str| {
        if change.new_image.is_empty() {
            return Err(MappingError::MissingNewImage(name));
        }
        item::from_item(change.new_image.clone())
            .map(BookSnapshot::from)
            .map_err(|source| MappingError::InvalidBook {
                image: "NewImage",
                source,
            })
    };
    let (detail_type, data) = match record.event_name.as_str() {
        "INSERT" => (DetailType::Added, new_book("INSERT")?),
        "MODIFY" => (DetailType::Updated, new_book("MODIFY")?),
        "REMOVE" if change.old_image.is_empty() => {
            let name =
                item::name_from_key(&change.keys).map_err(|source| MappingError::InvalidBook {
                    image: "Keys",
                    source,
                })?;
            (DetailType::Removed, BookSnapshot::name_only(name))
        }
        "REMOVE" => {
            let book = item::from_item(change.old_image.clone()).map_err(|source| {
                MappingError::InvalidBook {
                    image: "OldImage",
                    source,
                }
            })?;
            (DetailType::Removed, book.into())
        }
        other => return Err(MappingError::UnknownEventName(other.to_owned())),
    };
    let trace = match detail_type {
        DetailType::Added | DetailType::Updated => item::ChangeTrace::of_item(&change.new_image),
        DetailType::Removed => item::ChangeTrace::default(),
    };
    Ok(OutboxEvent {
        detail_type,
        envelope: Envelope {
            metadata: Metadata {
                event_id: record.event_id.clone(),
                sequence_number,
                occurred_at: change.approximate_creation_date_time,
                version: ENVELOPE_VERSION,
                cursor: None,
                traceparent: trace.traceparent,
                committed_at: trace.committed_at,
            },
            data,
        },
    })
}
