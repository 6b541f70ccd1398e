//! The subscription root: GraphQL subscriptions, fed by the event bus through an
//! [`EventHub`] — never by a mutation.
//!
//! Two request-data values let a transport that numbers its messages (Server-Sent Events'
//! `id:`) speak in cursors without the client selecting `cursor`: [`LastCursor`], the cursor of
//! the event a result was made from, and [`ResumeAfter`], a cursor that overrides the
//! document's `after`.

use std::sync::{Arc, Mutex};

use async_graphql::{Context, ErrorExtensions, Subscription};
use domain::event::DetailType;
use futures_util::{Stream, StreamExt};

use crate::error::ApiError;
use crate::options::Authenticated;
use crate::types::{BookEventNode, BookEventType, ChangedBookNode};

pub use crate::events::{
    BookEvent, DEFAULT_SUBSCRIBER_BUFFER, EventHub, EventLog, LogError, LogPage, Position,
};

fn hub<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a EventHub> {
    ctx.data::<EventHub>().map_err(|e| {
        tracing::error!(error = ?e.message, "the schema was built without an EventHub");
        ApiError::Internal.extend()
    })
}

/// Request data: where a subscription writes the cursor of each event just before it hands
/// the event on, so that the transport can tell which event a result was made from.
///
/// A subscription's results are made one at a time, as the transport asks for them: the
/// cursor [`LastCursor::take`] gives right after a result arrives is the cursor of that
/// result's event. A result made from no event (an error) leaves the slot empty.
#[derive(Debug, Clone, Default)]
pub struct LastCursor(Arc<Mutex<Option<String>>>);

impl LastCursor {
    /// The cursor of the event the latest result was made from, if one was; the slot is then
    /// empty until the next event.
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok()?.take()
    }

    fn put(&self, cursor: Option<&str>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = cursor.map(str::to_owned);
        }
    }
}

/// Request data: the cursor a subscription resumes after, in place of the document's own
/// `after` (a reconnecting `EventSource` sends its first request again, with the newest id it
/// saw as `Last-Event-ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeAfter(pub String);

/// Events of the given types, after the cursor `after` if there is one (the request's
/// [`ResumeAfter`] if it has one), as GraphQL results; each event's cursor goes to the
/// request's [`LastCursor`], if it has one, as the event is handed on.
async fn events_of(
    ctx: &Context<'_>,
    types: Vec<DetailType>,
    after: Option<String>,
) -> async_graphql::Result<
    impl Stream<Item = async_graphql::Result<Arc<BookEvent>>> + Send + 'static + use<>,
> {
    let after = match ctx.data_opt::<ResumeAfter>() {
        Some(ResumeAfter(cursor)) => Some(cursor.clone()),
        None => after,
    };
    let last_cursor = ctx.data_opt::<LastCursor>().cloned();
    let since = chrono::Utc::now();
    let events = hub(ctx)?
        .subscribe(after.as_deref())
        .await
        .map_err(|e| e.extend())?;
    Ok(events.filter_map(move |item| {
        let keep = match &item {
            Ok(event) => types.contains(&event.detail_type),
            Err(_) => true,
        };
        if let (true, Ok(event)) = (keep, &item) {
            crate::metrics::handed_over(event, since);
            crate::spans::subscription_deliver(event).in_scope(|| {
                tracing::debug!(cursor = %event.cursor, "event handed to a subscription");
            });
        }
        if let (true, Some(last_cursor)) = (keep, &last_cursor) {
            last_cursor.put(item.as_ref().ok().map(|event| event.cursor.as_str()));
        }
        std::future::ready(keep.then(|| item.map_err(|e| e.extend())))
    }))
}

/// The subscriptions. Every event comes from the bus, after the change stream and the
/// processor, exactly as a consumer gets it, in stream order.
///
/// Each takes `after`, the cursor of the last event a client saw: the subscription then
/// starts with the events after it, replayed from the change stream, and goes on live with
/// nothing missed and nothing twice. A cursor older than the stream keeps is refused with
/// `CURSOR_EXPIRED`, whose `extensions.resumeAfter` is the oldest cursor still honoured.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every book event, or only those of the given types; after the event whose cursor is
    /// `after`, when given (replayed, then live), or from now on.
    #[graphql(guard = "Authenticated")]
    async fn book_events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<BookEventType>>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<BookEventNode>> + use<>>
    {
        let types = match types {
            Some(types) => types.into_iter().map(DetailType::from).collect(),
            None => DetailType::ALL.to_vec(),
        };
        Ok(events_of(ctx, types, after)
            .await?
            .map(|item| item.map(BookEventNode)))
    }

    /// Books as they are added, each with its event's id (to drop a redelivered one) and
    /// cursor; after the event whose cursor is `after`, when given, or from now on.
    #[graphql(guard = "Authenticated")]
    async fn book_added(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ChangedBookNode>> + use<>>
    {
        books_from_events(ctx, DetailType::Added, after).await
    }

    /// Books as they are removed, each with its event's id and cursor (removals that carried
    /// only the name are in `bookEvents`); after the event whose cursor is `after`, when
    /// given, or from now on.
    #[graphql(guard = "Authenticated")]
    async fn book_removed(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ChangedBookNode>> + use<>>
    {
        books_from_events(ctx, DetailType::Removed, after).await
    }
}

async fn books_from_events(
    ctx: &Context<'_>,
    detail_type: DetailType,
    after: Option<String>,
) -> async_graphql::Result<
    impl Stream<Item = async_graphql::Result<ChangedBookNode>> + Send + 'static + use<>,
> {
    Ok(events_of(ctx, vec![detail_type], after)
        .await?
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(event) => event
                    .book
                    .to_book()
                    .map(|book| Ok(ChangedBookNode { book, event })),
                Err(error) => Some(Err(error)),
            })
        }))
}
