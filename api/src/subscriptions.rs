//! GraphQL subscriptions, fed by the event bus — never by a mutation.
//!
//! [`EventHub`] fans the events a bus target hands it out to every subscriber. Each subscriber
//! reads from a bounded buffer; the hub never waits for anyone, so a slow or stuck subscriber
//! cannot slow the bus, the consumers or the other subscribers. One that falls further behind
//! than the buffer holds gets a `SUBSCRIPTION_LAGGED` error and its subscription ends.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, ID, Object, Subscription};
use chrono::{DateTime, Utc};
use domain::event::{BookSnapshot, DetailType, Envelope};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::options::Authenticated;
use crate::schema::{BookEventType, BookNode};

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

/// An event, as a subscription delivers it.
pub(crate) struct BookEventNode(Arc<BookEvent>);

#[Object(name = "BookEvent")]
impl BookEventNode {
    /// The event's `metadata.eventId`: the id of the stream record it came from, the same on
    /// every redelivery.
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.clone())
    }

    /// What happened.
    async fn r#type(&self) -> BookEventType {
        self.0.detail_type.into()
    }

    /// When the change was committed.
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }

    /// The name of the book.
    async fn book_name(&self) -> &str {
        self.0.book.name.as_str()
    }

    /// The whole book, when the event carried it (a removal may carry only the name).
    async fn book(&self) -> Option<BookNode> {
        self.0.book.to_book().map(BookNode)
    }
}

/// Runs a subscription request against exactly `events`: the GraphQL responses it yields (none
/// when its filters keep none of them; one with errors when the document is not a valid
/// subscription). Request data comes before schema data, so this hub is the one it sees.
pub async fn run_against(
    schema: &crate::ApiSchema,
    request: async_graphql::Request,
    events: Vec<BookEvent>,
) -> Vec<async_graphql::Response> {
    schema
        .execute_stream(request.data(EventHub::replay(events)))
        .collect()
        .await
}

fn hub<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a EventHub> {
    ctx.data::<EventHub>().map_err(|e| {
        tracing::error!(error = ?e.message, "the schema was built without an EventHub");
        ApiError::Internal.extend()
    })
}

/// Events of the given types, as GraphQL results.
fn events_of(
    hub: &EventHub,
    types: Vec<DetailType>,
) -> impl Stream<Item = async_graphql::Result<Arc<BookEvent>>> + Send + 'static + use<> {
    hub.subscribe().filter_map(move |item| {
        let keep = match &item {
            Ok(event) => types.contains(&event.detail_type),
            Err(_) => true,
        };
        std::future::ready(keep.then(|| item.map_err(|e| e.extend())))
    })
}

/// The subscriptions. Every event comes from the bus, after the change stream and the
/// processor, exactly as a consumer gets it.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every book event, or only those of the given types.
    #[graphql(guard = "Authenticated")]
    async fn book_events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<BookEventType>>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<BookEventNode>> + use<>>
    {
        let types = match types {
            Some(types) => types.into_iter().map(DetailType::from).collect(),
            None => DetailType::ALL.to_vec(),
        };
        Ok(events_of(hub(ctx)?, types).map(|item| item.map(BookEventNode)))
    }

    /// Books as they are added.
    #[graphql(guard = "Authenticated")]
    async fn book_added(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<BookNode>> + use<>> {
        Ok(books_of(hub(ctx)?, DetailType::Added))
    }

    /// Books as they are removed (removals that carried only the name are in `bookEvents`).
    #[graphql(guard = "Authenticated")]
    async fn book_removed(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<BookNode>> + use<>> {
        Ok(books_of(hub(ctx)?, DetailType::Removed))
    }
}

fn books_of(
    hub: &EventHub,
    detail_type: DetailType,
) -> impl Stream<Item = async_graphql::Result<BookNode>> + Send + 'static + use<> {
    events_of(hub, vec![detail_type]).filter_map(|item| {
        std::future::ready(match item {
            Ok(event) => event.book.to_book().map(|book| Ok(BookNode(book))),
            Err(error) => Some(Err(error)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::BookName;

    fn event(id: &str) -> BookEvent {
        BookEvent {
            event_id: id.into(),
            detail_type: DetailType::Added,
            occurred_at: Utc::now(),
            book: BookSnapshot::name_only(BookName::parse("Dune").unwrap()),
        }
    }

    #[tokio::test]
    async fn a_subscription_runs_against_a_replayed_event_with_its_filters() {
        let schema = crate::schema::subscription_schema();
        let run = |query: &str| {
            let schema = schema.clone();
            let request = async_graphql::Request::new(query);
            async move {
                let responses = run_against(&schema, request, vec![event("e1")]).await;
                serde_json::to_value(responses).unwrap()
            }
        };
        assert_eq!(
            run("subscription { bookEvents { eventId type bookName } }").await,
            serde_json::json!([{"data": {"bookEvents": {"eventId": "e1", "type": "ADDED", "bookName": "Dune"}}}])
        );
        assert_eq!(
            run("subscription { bookEvents(types: [REMOVED]) { eventId } }").await,
            serde_json::json!([])
        );
        let invalid = run("subscription { bookEvents { nope } }").await;
        assert_eq!(
            invalid[0]["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
            "{invalid}"
        );
    }

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
