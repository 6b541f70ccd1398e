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
