//! The storage ports of the API.

use async_trait::async_trait;
use domain::{ActivityEntry, Book, BookName};

/// One page of a listing, in the listing's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Whether items follow the last one.
    pub has_next_page: bool,
}

impl<T> Page<T> {
    /// The page of `first` items out of a read of up to `first + 1`: the one more tells
    /// whether items follow, without counting the rest.
    pub fn of_one_more(mut items: Vec<T>, first: usize) -> Self {
        let has_next_page = items.len() > first;
        items.truncate(first);
        Self {
            items,
            has_next_page,
        }
    }
}

/// The books table.
#[async_trait]
pub trait BookStore: Send + Sync {
    /// Adds a book; a book with the same name is [`StoreError::Conflict`] and is left as it was.
    async fn add(&self, book: &Book) -> Result<(), StoreError>;
    /// Removes a book and returns it; an absent book is [`StoreError::NotFound`].
    async fn remove(&self, name: &BookName) -> Result<Book, StoreError>;
    /// The book with this name, if there is one.
    async fn get(&self, name: &BookName) -> Result<Option<Book>, StoreError>;
    /// Up to `first` books after the book named `after`, in the store's stable order.
    async fn list(&self, first: usize, after: Option<&BookName>) -> Result<Page<Book>, StoreError>;
}

/// A count that moves whenever the catalogue (the books) may have changed: after each write
/// commits, before the write is answered. A store that can tell this (the embedded one, the
/// catalogue's only writer) lets `/graphql` answer repeated catalogue queries from a cache
/// ([`router_with_catalogue`](crate::router::router_with_catalogue)).
pub trait CatalogueVersion: Send + Sync {
    /// The version now.
    fn catalogue_version(&self) -> u64;
}

/// An activity entry and its position in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityItem {
    /// The store's key of this position, to continue after it.
    pub position: String,
    /// The entry.
    pub entry: ActivityEntry,
}

/// What the consumers recorded, newest first.
#[async_trait]
pub trait ActivityFeed: Send + Sync {
    /// Up to `first` entries after the position `after` (from an earlier [`ActivityItem`]);
    /// a position the store never gave out is [`StoreError::InvalidPosition`].
    async fn list(
        &self,
        first: usize,
        after: Option<&str>,
    ) -> Result<Page<ActivityItem>, StoreError>;
}

/// Where a dead letter was set aside.
// (Its doc lands in schema.graphql. `clap::ValueEnum`: `stream` or `bus` on the command line.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum, clap::ValueEnum)]
pub enum DeadLetterSource {
    /// A stream record the processor kept failing.
    Stream,
    /// An event a bus target kept failing (or could never handle).
    Bus,
}

/// Something that kept failing and was set aside so the rest could go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it was set aside.
    pub source: DeadLetterSource,
    /// Its id there (the stream record's sequence number, or the bus queue entry's id).
    pub id: i64,
    /// The bus target it was for (bus dead letters).
    pub target: Option<String>,
    /// The event id it concerns.
    pub event_id: Option<String>,
    /// The last error, as recorded: for operators on the host (the CLI). The API sends a bus
    /// dead letter's as a code only, since a target's error can carry internal text.
    pub reason: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was set aside.
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// The record or event itself, as JSON.
    pub payload: String,
}

/// The dead letters, for inspection (the local stack keeps them in its store; on AWS they are
/// in SQS queues).
#[async_trait]
pub trait DeadLetterFeed: Send + Sync {
    /// Up to `first` dead letters, oldest first.
    async fn list(&self, first: usize) -> Result<Vec<DeadLetter>, StoreError>;
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A book with this name exists already.
    #[error("a book named \"{0}\" already exists")]
    Conflict(BookName),
    /// There is no book with this name.
    #[error("there is no book named \"{0}\"")]
    NotFound(BookName),
    /// A listing position that does not come from this store.
    #[error("invalid listing position")]
    InvalidPosition,
    /// The store failed; the cause is for the log, not for clients.
    #[error("storage failed: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps any cause of a storage failure.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(cause.into())
    }
}
