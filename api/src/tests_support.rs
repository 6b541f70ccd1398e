//! Stand-ins for unit tests of the schema's plumbing, where no store is reached.

use async_trait::async_trait;
use domain::{Book, BookName};

use crate::store::{ActivityFeed, ActivityItem, BookStore, Page, StoreError};

/// A store that is never called in the tests that use it.
pub(crate) struct NoStore;

fn unused() -> StoreError {
    StoreError::unavailable("not used by this test")
}

#[async_trait]
impl BookStore for NoStore {
    async fn add(&self, _: &Book) -> Result<(), StoreError> {
        Err(unused())
    }
    async fn remove(&self, _: &BookName) -> Result<Book, StoreError> {
        Err(unused())
    }
    async fn get(&self, _: &BookName) -> Result<Option<Book>, StoreError> {
        Err(unused())
    }
    async fn list(&self, _: usize, _: Option<&BookName>) -> Result<Page<Book>, StoreError> {
        Err(unused())
    }
}

#[async_trait]
impl ActivityFeed for NoStore {
    async fn list(&self, _: usize, _: Option<&str>) -> Result<Page<ActivityItem>, StoreError> {
        Err(unused())
    }
}

/// An `outboxdemo.added` event about "Dune" with this id, at no position of a stream.
pub(crate) fn event(id: &str) -> crate::BookEvent {
    crate::BookEvent {
        event_id: id.into(),
        cursor: format!("c-{id}"),
        detail_type: domain::DetailType::Added,
        occurred_at: chrono::Utc::now(),
        book: domain::BookSnapshot::name_only(BookName::parse("Dune").expect("a valid name")),
        traceparent: None,
        committed_at: None,
    }
}
