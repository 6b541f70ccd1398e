use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;

/// An in-memory store with the conditional-put semantics of the real ones.
#[derive(Debug, Default)]
struct MemoryStore(Mutex<BTreeMap<String, ActivityEntry>>);

#[async_trait]
impl ActivityStore for MemoryStore {
    async fn record(&self, entry: &ActivityEntry) -> Result<Recorded, ActivityStoreError> {
        let mut entries = self.0.lock().unwrap();
        if entries.contains_key(&entry.event_id) {
            return Ok(Recorded::AlreadyRecorded);
        }
        entries.insert(entry.event_id.clone(), entry.clone());
        Ok(Recorded::New)
    }
}

fn event(json: &str) -> EventBridgeEvent<Value> {
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn book_added_records_one_entry_per_event_id() {
    let store = MemoryStore::default();
    let added = event(include_str!("../fixtures/added-event.json"));
    assert_eq!(
        book_added::handle(added.clone(), &store).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        book_added::handle(added, &store).await.unwrap(),
        Recorded::AlreadyRecorded
    );

    let entries = store.0.into_inner().unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries["c4ca4238a0b923820dcc509a6f75849b"];
    assert_eq!(entry.consumer, "book-added");
    assert_eq!(entry.detail_type, DetailType::Added);
    assert_eq!(entry.book.to_book().unwrap().published_year.get(), 1965);
}

#[tokio::test]
async fn book_removed_accepts_a_name_only_book() {
    let store = MemoryStore::default();
    let removed = event(include_str!("../fixtures/removed-event.json"));
    assert_eq!(
        book_removed::handle(removed, &store).await.unwrap(),
        Recorded::New
    );
    let entries = store.0.into_inner().unwrap();
    let entry = &entries["a87ff679a2f3e71d9181a67b7542122c"];
    assert_eq!(
        (entry.consumer.as_str(), entry.book.name.as_str()),
        ("book-removed", "Neuromancer")
    );
}

#[tokio::test]
async fn a_consumer_refuses_events_that_are_not_its_own() {
    let store = MemoryStore::default();
    let added = event(include_str!("../fixtures/added-event.json"));
    let error = book_removed::handle(added, &store).await.unwrap_err();
    assert!(
        matches!(error, ConsumerError::UnexpectedEvent { .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(store.0.into_inner().unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_detail_is_a_clear_non_retryable_error() {
    let store = MemoryStore::default();
    let mut added = event(include_str!("../fixtures/added-event.json"));
    added.detail = json!({"metadata": {"eventId": "x"}, "data": {"name": ""}});
    let error = book_added::handle(added, &store).await.unwrap_err();
    assert!(
        matches!(error, ConsumerError::MalformedDetail(_)),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn store_failures_are_retryable() {
    struct Unavailable;
    #[async_trait]
    impl ActivityStore for Unavailable {
        async fn record(&self, _: &ActivityEntry) -> Result<Recorded, ActivityStoreError> {
            Err(ActivityStoreError("disk on fire".into()))
        }
    }
    let added = event(include_str!("../fixtures/added-event.json"));
    let error = book_added::handle(added, &Unavailable).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}
