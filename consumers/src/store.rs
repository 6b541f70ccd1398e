//! The port consumers record their activity through.

use std::pin::Pin;

use domain::ActivityEntry;

/// Whether recording an entry had an effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The entry is new: this is the event's first (and only) effect.
    New,
    /// This consumer has an entry for this event id already: a redelivery, with no second
    /// effect.
    AlreadyRecorded,
}

/// A conditional put in hand: it resolves to the store's answer.
pub type Recording = Pin<Box<dyn Future<Output = Result<Recorded, ActivityStoreError>> + Send>>;

/// Where consumers record what they did, keyed by (event id, consumer): each consumer of an
/// event has one entry of its own.
pub trait ActivityStore: Send + Sync {
    /// Records `entry` unless an entry with its event id and consumer exists (a conditional
    /// put).
    ///
    /// Synchronous, and the returned [`Recording`] owns what it needs: a store that
    /// [issues its writes on call](ActivityStore::issues_writes_on_call) has the write in hand
    /// before this returns, so writes apply in the order of the calls however their futures are
    /// awaited.
    fn record(&self, entry: &ActivityEntry) -> Recording;

    /// Whether [`ActivityStore::record`] issues the write before it returns (rather than when
    /// its future is first polled). The local bus overlaps a consumer's deliveries only then,
    /// since that is what keeps the consumer's effects in queue order. False by default.
    fn issues_writes_on_call(&self) -> bool {
        false
    }
}

/// The activity store could not be reached or refused the write.
#[derive(Debug, thiserror::Error)]
#[error("activity store failed: {0}")]
pub struct ActivityStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
