//! The GraphQL output types the roots return: `BookNode`, [`BookEventType`], the activity
//! and dead-letter entries, and `BookEventNode`. Queries, mutations and subscriptions all
//! import them from here, so no root depends on another.

use std::sync::Arc;

use async_graphql::{Enum, ID, Object};
use chrono::{DateTime, Utc};
use domain::{ActivityEntry, Book, DetailType};

use crate::store::{DeadLetter, DeadLetterSource};
use crate::subscriptions::BookEvent;

/// A book.
pub(crate) struct BookNode(pub(crate) Book);

#[Object(name = "Book")]
impl BookNode {
    /// The book's name, unique in the catalogue.
    async fn name(&self) -> &str {
        self.0.name.as_str()
    }

    /// The authors, in the order they were given.
    async fn authors(&self) -> Vec<&str> {
        self.0.authors.names().collect()
    }

    /// The year the book was first published (negative for BCE).
    async fn published_year(&self) -> i32 {
        self.0.published_year.get()
    }
}

/// A book as an event reports it: the book's fields, and the event's id and time.
pub(crate) struct ChangedBookNode {
    pub(crate) book: Book,
    pub(crate) event: Arc<BookEvent>,
}

#[Object(name = "ChangedBook")]
impl ChangedBookNode {
    /// The event's `metadata.eventId`, the same on every redelivery: a client that sees an id
    /// twice (a retried stream batch or notifier invocation sends some events again) drops the
    /// second.
    async fn event_id(&self) -> ID {
        ID(self.event.event_id.clone())
    }

    /// The event's position in the change stream: pass it as `after` to resume after this
    /// event.
    async fn cursor(&self) -> &str {
        &self.event.cursor
    }

    /// When the change was committed.
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.event.occurred_at
    }

    /// The book's name, unique in the catalogue.
    async fn name(&self) -> &str {
        self.book.name.as_str()
    }

    /// The authors, in the order they were given.
    async fn authors(&self) -> Vec<&str> {
        self.book.authors.names().collect()
    }

    /// The year the book was first published (negative for BCE).
    async fn published_year(&self) -> i32 {
        self.book.published_year.get()
    }
}

/// The kind of change an event reports.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum BookEventType {
    /// `outboxdemo.added`: a book was added.
    Added,
    /// `outboxdemo.removed`: a book was removed.
    Removed,
    /// `outboxdemo.updated`: a book was changed.
    Updated,
}

impl From<DetailType> for BookEventType {
    fn from(detail_type: DetailType) -> Self {
        match detail_type {
            DetailType::Added => Self::Added,
            DetailType::Removed => Self::Removed,
            DetailType::Updated => Self::Updated,
        }
    }
}

impl From<BookEventType> for DetailType {
    fn from(event_type: BookEventType) -> Self {
        match event_type {
            BookEventType::Added => Self::Added,
            BookEventType::Removed => Self::Removed,
            BookEventType::Updated => Self::Updated,
        }
    }
}

/// What a consumer did in reaction to an event.
pub(crate) struct ActivityNode(pub(crate) ActivityEntry);

#[Object(name = "ActivityEntry")]
impl ActivityNode {
    /// The event's `metadata.eventId`: the id of the stream record it came from.
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.clone())
    }

    /// The kind of event.
    async fn event_type(&self) -> BookEventType {
        self.0.detail_type.into()
    }

    /// The consumer that reacted, e.g. `book-added`.
    async fn consumer(&self) -> &str {
        &self.0.consumer
    }

    /// The name of the book the event was about.
    async fn book_name(&self) -> &str {
        self.0.book.name.as_str()
    }

    /// The whole book, when the event carried it (a removal may carry only the name).
    async fn book(&self) -> Option<BookNode> {
        self.0.book.to_book().map(BookNode)
    }

    /// When the consumer processed the event.
    async fn processed_at(&self) -> DateTime<Utc> {
        self.0.processed_at
    }
}

/// The reason the API gives for every bus dead letter, in place of the target's error.
const DELIVERY_FAILED: &str = "DELIVERY_FAILED";

/// Something that kept failing and was set aside.
pub(crate) struct DeadLetterNode(pub(crate) DeadLetter);

#[Object(name = "DeadLetter")]
impl DeadLetterNode {
    /// Where it was set aside.
    async fn source(&self) -> DeadLetterSource {
        self.0.source
    }

    /// Its id there: the stream record's sequence number, or the bus queue entry's id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The bus target it was for (bus dead letters).
    async fn target(&self) -> Option<&str> {
        self.0.target.as_deref()
    }

    /// The event id it concerns.
    async fn event_id(&self) -> Option<&str> {
        self.0.event_id.as_deref()
    }

    /// Why it was set aside. A stream record's reason is this stack's own words about the
    /// record: what in its data cannot be mapped to an event, or that the processor kept
    /// failing it until the stream's retention. A bus event's is the stable code
    /// `DELIVERY_FAILED`: the target's error can carry internal text (a store's, a
    /// dependency's), so it is logged, never sent; `outboxdemo dead-letters show` prints it
    /// on the host.
    async fn reason(&self) -> &str {
        match self.0.source {
            DeadLetterSource::Stream => &self.0.reason,
            DeadLetterSource::Bus => DELIVERY_FAILED,
        }
    }

    /// How many times it was tried.
    async fn attempts(&self) -> i32 {
        i32::try_from(self.0.attempts).unwrap_or(i32::MAX)
    }

    /// When it was set aside.
    async fn failed_at(&self) -> DateTime<Utc> {
        self.0.failed_at
    }

    /// The stream record or the event, as JSON.
    async fn payload(&self) -> &str {
        &self.0.payload
    }
}

/// An event, as a subscription delivers it.
pub(crate) struct BookEventNode(pub(crate) Arc<BookEvent>);

#[Object(name = "BookEvent")]
impl BookEventNode {
    /// The event's `metadata.eventId`: the id of the stream record it came from, the same on
    /// every redelivery.
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.clone())
    }

    /// The event's position in the change stream (the stream record's sequence number, the
    /// same on every redelivery): pass it as `after` to resume after this event.
    async fn cursor(&self) -> &str {
        &self.0.cursor
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
