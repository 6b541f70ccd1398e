//! The consumers: Lambdas (and local bus targets) that react to the processor's events.
//!
//! - [`book_added`], [`book_removed`]: one module per consumer, each a [`Consumer`] and the
//!   handler its Lambda and the local bus call.
//! - [`metrics`]: what they measure: the latency from a change's commit to their effect.
//! - [`store`]: the [`ActivityStore`] port. Recording an activity entry is both a consumer's
//!   visible effect and its idempotency record: the entry is keyed by the event's
//!   `metadata.eventId` and the consumer's name, so a redelivered event has no second effect
//!   and every consumer of one event has its own.
//! - With the `aws` feature: [`dynamo`], [`dynamo::DynamoActivityStore`], the store the consumer
//!   Lambdas use, and [`lambda`], the whole of a consumer Lambda's `main` ([`lambda::run`]).
//!
//! **Ordering.** The local bus overlaps a consumer's deliveries (it starts the next before the
//! previous has finished) and relies on each consumer's effect being *issued* in the order the
//! deliveries were started. That is why [`Consumer::start`] is synchronous and issues the
//! store's write before it returns: a consumer that needs to do more must do it without
//! awaiting anything before the write, or the effects of one book's changes could land out of
//! order. `tests.rs` fails when the write is not issued in the first poll.

#![warn(missing_docs)]

pub mod book_added;
pub mod book_removed;
#[cfg(feature = "aws")]
pub mod dynamo;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod metrics;
pub mod store;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::Utc;
use domain::event::{DetailType, Envelope, SOURCE};
use domain::{ActivityEntry, BookName};
use serde_json::Value;
use telemetry::{Hop, InHop as _};

pub use store::{ActivityStore, ActivityStoreError, Recorded, Recording};

/// A consumer: its name and the one detail type it reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name, as in its Lambda, its bus rule and its activity entries (part of
    /// their key and of their feed position: no '#', see `domain::item::activity_position`).
    pub name: &'static str,
    /// The detail type its rule routes to it.
    pub detail_type: DetailType,
}

/// Every consumer, for wiring bus rules.
pub const ALL: [Consumer; 2] = [book_added::CONSUMER, book_removed::CONSUMER];

/// Why a consumer did not react to an event.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The event is not one this consumer handles: a routing mistake, not worth retrying.
    #[error("{consumer} does not handle {event_source}/{detail_type}")]
    UnexpectedEvent {
        /// The consumer that got it.
        consumer: &'static str,
        /// The event's source.
        event_source: String,
        /// The event's detail type.
        detail_type: String,
    },
    /// The detail is not a valid envelope: retrying cannot help.
    #[error("malformed event detail: {0}")]
    MalformedDetail(#[from] domain::event::EnvelopeError),
    /// The activity store failed: worth retrying.
    #[error(transparent)]
    Store(#[from] ActivityStoreError),
}

impl ConsumerError {
    /// Whether delivering the same event again may succeed. Events that can never succeed
    /// go straight to the dead letters instead of using up retries.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// A consumer's reaction to one event, with its store write issued (see [`Consumer::start`]);
/// [`Handling::finish`] waits for the store's answer.
#[must_use = "the write is issued, but its outcome is only known once finished"]
pub struct Handling {
    consumer: &'static str,
    event_id: String,
    book: BookName,
    recording: Recording,
    /// When the change was committed, if the event says.
    committed_at: Option<chrono::DateTime<Utc>>,
    /// The `consumer.handle` hop, open until the store has answered.
    hop: Hop,
}

impl std::fmt::Debug for Handling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handling")
            .field("consumer", &self.consumer)
            .field("event_id", &self.event_id)
            .finish_non_exhaustive()
    }
}

impl Handling {
    /// Waits for the activity store's answer: whether this event had its effect now, or had it
    /// already.
    pub async fn finish(self) -> Result<Recorded, ConsumerError> {
        let recorded = self.recording.in_hop(self.hop.clone()).await?;
        // The hop names the consumer, the event and its trace.
        let _in_hop = self.hop.enter();
        match recorded {
            Recorded::New => {
                if let Some(committed_at) = self.committed_at {
                    metrics::reacted(self.consumer, committed_at);
                }
                tracing::info!(book = %self.book, "activity recorded");
            }
            Recorded::AlreadyRecorded => {
                tracing::info!("event already processed; no second effect");
            }
        }
        Ok(recorded)
    }
}

impl Consumer {
    /// Starts reacting to one event delivered by the bus: checks that it is this consumer's,
    /// reads the envelope and issues the activity write (once per event id and consumer).
    ///
    /// Synchronous on purpose: the write is issued before this returns, so that deliveries
    /// started in queue order have their effects in queue order (see the crate's docs). Keep
    /// anything asynchronous after the write, in [`Handling::finish`].
    ///
    /// The handling runs in a `consumer.handle` span (with the consumer's name) that continues
    /// the event's `metadata.traceparent`, from the processor's publish.
    pub fn start(
        &self,
        event: EventBridgeEvent<Value>,
        store: &dyn ActivityStore,
    ) -> Result<Handling, ConsumerError> {
        if event.source != SOURCE || event.detail_type != self.detail_type.as_str() {
            return Err(ConsumerError::UnexpectedEvent {
                consumer: self.name,
                event_source: event.source,
                detail_type: event.detail_type,
            });
        }
        let envelope = Envelope::from_detail(event.detail)?;
        let span = tracing::info_span!(
            "consumer.handle",
            consumer = self.name,
            event_id = %envelope.metadata.event_id,
        );
        let hop = Hop::start(span, envelope.metadata.traceparent.as_deref())
            .with_event_id(&envelope.metadata.event_id)
            .with_consumer(self.name);
        let _in_hop = hop.enter();
        let committed_at = envelope.metadata.committed_at;
        let entry = ActivityEntry {
            event_id: envelope.metadata.event_id,
            detail_type: self.detail_type,
            consumer: self.name.to_owned(),
            book: envelope.data,
            processed_at: Utc::now(),
        };
        let recording = store.record(&entry);
        Ok(Handling {
            consumer: self.name,
            event_id: entry.event_id,
            book: entry.book.name,
            recording,
            committed_at,
            hop: hop.clone(),
        })
    }

    /// Reacts to one event: [`Consumer::start`], then [`Handling::finish`].
    pub async fn handle(
        &self,
        event: EventBridgeEvent<Value>,
        store: &dyn ActivityStore,
    ) -> Result<Recorded, ConsumerError> {
        self.start(event, store)?.finish().await
    }
}

#[cfg(test)]
mod tests;
