//! The events subscriptions deliver, and the live fan-out that hands them out.
//!
//! [`BookEvent`] is a committed change as a subscriber sees it; [`BookEvent::from_eventbridge`]
//! is the one way a bus event becomes one. [`EventHub`] fans the events a bus target hands it
//! out to every subscriber. Each subscriber reads from a bounded buffer; the hub never waits
//! for anyone, so a slow or stuck subscriber cannot slow the bus, the consumers or the other
//! subscribers. One that falls further behind than the buffer holds gets a
//! `SUBSCRIPTION_LAGGED` error and its subscription ends.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use domain::event::{BookSnapshot, DetailType, Envelope};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use crate::error::ApiError;

/// How many events a subscriber may fall behind before its subscription is ended.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

/// A committed change, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEvent {
    /// The event's `metadata.eventId`.
    pub event_id: String,
    /// What happened.
    pub detail_type: DetailType,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    /// The book.
    pub book: BookSnapshot,
}

impl BookEvent {
    /// The event an envelope of this detail type describes.
    pub fn new(detail_type: DetailType, envelope: Envelope) -> Self {
        Self {
            event_id: envelope.metadata.event_id,
            detail_type,
            occurred_at: envelope.metadata.occurred_at,
            book: envelope.data,
        }
    }
}

/// Why a bus event is not a [`BookEvent`]: its detail type is not one of ours, or its detail
/// is not an envelope. Such an event can never be delivered, however often it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedEvent(String);

impl BookEvent {
    /// The event an EventBridge event (as the bus delivers it to a target) describes.
    pub fn from_eventbridge(
        event: EventBridgeEvent<serde_json::Value>,
    ) -> Result<Self, MalformedEvent> {
        let detail_type = DetailType::parse(&event.detail_type).ok_or_else(|| {
            MalformedEvent(format!("unknown detail type {:?}", event.detail_type))
        })?;
        let envelope =
            Envelope::from_detail(event.detail).map_err(|e| MalformedEvent(e.to_string()))?;
        Ok(Self::new(detail_type, envelope))
    }
}

/// Where subscriptions get their events: a live fan-out, or a fixed list.
#[derive(Debug, Clone)]
pub struct EventHub {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Events as they are published, to every current subscriber.
    Live(broadcast::Sender<Arc<BookEvent>>),
    /// Exactly these events, then the end: how a stored subscription is run against one
    /// event on AWS, and how a document is checked without any.
    Replay(Arc<[Arc<BookEvent>]>),
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(DEFAULT_SUBSCRIBER_BUFFER)
    }
}

impl EventHub {
    /// A hub whose subscribers may each fall `buffer` events behind.
    pub fn new(buffer: usize) -> Self {
        Self {
            source: Source::Live(broadcast::channel(buffer.max(1)).0),
        }
    }

    /// A hub whose every subscription sees exactly `events` and then ends.
    pub fn replay(events: Vec<BookEvent>) -> Self {
        Self {
            source: Source::Replay(events.into_iter().map(Arc::new).collect()),
        }
    }

    /// Hands `event` to every current subscriber, without waiting for any of them.
    /// (A replaying hub has nothing to hand it to.)
    pub fn publish(&self, event: BookEvent) {
        if let Source::Live(sender) = &self.source {
            // An error only means that nobody is subscribed right now.
            let _ = sender.send(Arc::new(event));
        }
    }

    /// How many subscriptions are open.
    pub fn subscribers(&self) -> usize {
        match &self.source {
            Source::Live(sender) => sender.receiver_count(),
            Source::Replay(_) => 0,
        }
    }

    /// The events from now on; a subscriber that falls too far behind gets one
    /// `SUBSCRIPTION_LAGGED` error and then the stream ends (and its buffer is released).
    pub fn subscribe(&self) -> BoxStream<'static, Result<Arc<BookEvent>, ApiError>> {
        let sender = match &self.source {
            Source::Live(sender) => sender,
            Source::Replay(events) => {
                let events = Arc::clone(events);
                return futures_util::stream::iter(
                    (0..events.len()).map(move |i| Ok(Arc::clone(&events[i]))),
                )
                .boxed();
            }
        };
        futures_util::stream::unfold(Some(sender.subscribe()), |receiver| async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Ok(event) => Some((Ok(event), Some(receiver))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "subscriber fell behind; ending its subscription");
                    Some((Err(ApiError::SubscriptionLagged(missed)), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::event;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_released_and_others_are_not_slowed() {
        let hub = EventHub::new(2);
        let mut slow = Box::pin(hub.subscribe());
        let mut fast = Box::pin(hub.subscribe());
        assert_eq!(hub.subscribers(), 2);
        for i in 0..5 {
            hub.publish(event(&i.to_string()));
            assert_eq!(fast.next().await.unwrap().unwrap().event_id, i.to_string());
        }
        assert!(matches!(
            slow.next().await,
            Some(Err(ApiError::SubscriptionLagged(3)))
        ));
        assert!(slow.next().await.is_none());
        assert_eq!(
            hub.subscribers(),
            1,
            "the lagging subscriber's buffer is released"
        );
        drop(fast);
        assert_eq!(hub.subscribers(), 0);
    }
}
