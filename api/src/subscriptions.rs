//! The subscription root: GraphQL subscriptions, fed by the event bus through an
//! [`EventHub`] — never by a mutation.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, Subscription};
use domain::event::DetailType;
use futures_util::{Stream, StreamExt};

use crate::error::ApiError;
use crate::options::Authenticated;
use crate::types::{BookEventNode, BookEventType, ChangedBookNode};

pub use crate::events::{BookEvent, DEFAULT_SUBSCRIBER_BUFFER, EventHub};

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

    /// Books as they are added, each with its event's id (to drop a redelivered one).
    #[graphql(guard = "Authenticated")]
    async fn book_added(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ChangedBookNode>> + use<>>
    {
        Ok(books_from_events(hub(ctx)?, DetailType::Added))
    }

    /// Books as they are removed, each with its event's id (removals that carried only the
    /// name are in `bookEvents`).
    #[graphql(guard = "Authenticated")]
    async fn book_removed(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ChangedBookNode>> + use<>>
    {
        Ok(books_from_events(hub(ctx)?, DetailType::Removed))
    }
}

fn books_from_events(
    hub: &EventHub,
    detail_type: DetailType,
) -> impl Stream<Item = async_graphql::Result<ChangedBookNode>> + Send + 'static + use<> {
    events_of(hub, vec![detail_type]).filter_map(|item| {
        std::future::ready(match item {
            Ok(event) => event
                .book
                .to_book()
                .map(|book| Ok(ChangedBookNode { book, event })),
            Err(error) => Some(Err(error)),
        })
    })
}
