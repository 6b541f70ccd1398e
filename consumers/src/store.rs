//! The port consumers record their activity through.

use async_trait::async_trait;
use domain::ActivityEntry;

/// Whether recording an entry had an effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The entry is new: this is the event's first (and only) effect.
    New,
    /// An entry with this event id exists already: a redelivery, with no second effect.
    AlreadyRecorded,
}

/// Where consumers record what they did, keyed by event id.
#[async_trait]
pub trait ActivityStore: Send + Sync {
    /// Records `entry` unless an entry with its event id exists (a conditional put).
    async fn record(&self, entry: &ActivityEntry) -> Result<Recorded, ActivityStoreError>;
}

/// The activity store could not be reached or refused the write.
#[derive(Debug, thiserror::Error)]
#[error("activity store failed: {0}")]
pub struct ActivityStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
