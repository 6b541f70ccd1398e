use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use serde_json::{Value, json};

use super::*;

/// An in-memory store with the conditional-put semantics of the real ones. It takes each write
/// when `record` is called, and answers when `answer` is set (`None`: never, so a test can see
/// what was issued before any answer).
#[derive(Debug)]
struct MemoryStore {
    /// By (event id, consumer), as the real stores key them.
    entries: Arc<Mutex<BTreeMap<(String, String), ActivityEntry>>>,
    answer: bool,
}

impl MemoryStore {
    fn answering() -> Self {
        Self {
            entries: Arc::default(),
            answer: true,
        }
    }

    fn silent() -> Self {
        Self {
            answer: false,
            ..Self::answering()
        }
    }

    /// The entries by event id (these tests have one consumer per event).
    fn entries(&self) -> BTreeMap<String, ActivityEntry> {
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .map(|((event_id, _), entry)| (event_id.clone(), entry.clone()))
            .collect()
    }
}

impl ActivityStore for MemoryStore {
    fn record(&self, entry: &ActivityEntry) -> Recording {
        let mut entries = self.entries.lock().unwrap();
        let key = (entry.event_id.clone(), entry.consumer.clone());
        let recorded = match entries.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => Recorded::AlreadyRecorded,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(entry.clone());
                Recorded::New
            }
        };
        if self.answer {
            Box::pin(std::future::ready(Ok(recorded)))
        } else {
            Box::pin(std::future::pending())
        }
    }

    fn issues_writes_on_call(&self) -> bool {
        true
    }
}

fn event(json: &str) -> EventBridgeEvent<Value> {
    serde_json::from_str(json).unwrap()
}

const ADDED: &str = include_str!("../fixtures/added-event.json");
const REMOVED: &str = include_str!("../fixtures/removed-event.json");

#[tokio::test]
async fn book_added_records_one_entry_per_event_id() {
    let store = MemoryStore::answering();
    let added = event(ADDED);
    assert_eq!(
        book_added::handle(added.clone(), &store).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        book_added::handle(added, &store).await.unwrap(),
        Recorded::AlreadyRecorded
    );

    let entries = store.entries();
    assert_eq!(entries.len(), 1);
    let entry = &entries["c4ca4238a0b923820dcc509a6f75849b"];
    assert_eq!(entry.consumer, "book-added");
    assert_eq!(entry.detail_type, DetailType::Added);
    assert_eq!(entry.book.to_book().unwrap().published_year.get(), 1965);
}

#[test]
fn consumer_names_hold_no_hash() {
    // A name is part of its entries' feed position, which '#' separates.
    for consumer in ALL {
        assert!(!consumer.name.contains('#'), "{}", consumer.name);
    }
}

#[tokio::test]
async fn book_removed_accepts_a_name_only_book() {
    let store = MemoryStore::answering();
    let removed = event(REMOVED);
    assert_eq!(
        book_removed::handle(removed, &store).await.unwrap(),
        Recorded::New
    );
    let entries = store.entries();
    let entry = &entries["a87ff679a2f3e71d9181a67b7542122c"];
    assert_eq!(
        (entry.consumer.as_str(), entry.book.name.as_str()),
        ("book-removed", "Neuromancer")
    );
}

#[tokio::test]
async fn a_consumer_refuses_events_that_are_not_its_own() {
    let store = MemoryStore::answering();
    let error = book_removed::handle(event(ADDED), &store)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConsumerError::UnexpectedEvent { .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(store.entries().is_empty());
}

#[tokio::test]
async fn a_malformed_detail_is_a_clear_non_retryable_error() {
    let store = MemoryStore::answering();
    let mut added = event(ADDED);
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
    impl ActivityStore for Unavailable {
        fn record(&self, _: &ActivityEntry) -> Recording {
            Box::pin(std::future::ready(Err(ActivityStoreError(
                "disk on fire".into(),
            ))))
        }
    }
    let error = book_added::handle(event(ADDED), &Unavailable)
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

/// The ordering contract (see the crate's docs): every consumer has issued its store write by
/// the end of the first poll of its handler, before it waits for anything. An `.await` on
/// anything else before the write makes this fail.
#[test]
fn every_consumer_issues_its_write_before_it_first_waits() {
    type Handler = for<'a> fn(
        EventBridgeEvent<Value>,
        &'a dyn ActivityStore,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Recorded, ConsumerError>> + 'a>,
    >;
    let handlers: [(Consumer, &str, Handler); 2] = [
        (book_added::CONSUMER, ADDED, |e, s| {
            Box::pin(book_added::handle(e, s))
        }),
        (book_removed::CONSUMER, REMOVED, |e, s| {
            Box::pin(book_removed::handle(e, s))
        }),
    ];
    for (consumer, fixture, handler) in handlers {
        // The bus's path: the write is issued by the time `start` returns.
        let store = MemoryStore::silent();
        let handling = consumer.start(event(fixture), &store).unwrap();
        assert_eq!(store.entries().len(), 1, "{}: start", consumer.name);
        drop(handling);

        // The Lambda's path: the write is issued within the first poll.
        let store = MemoryStore::silent();
        let mut handling = handler(event(fixture), &store);
        let first = handling
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            first.is_pending(),
            "{}: the silent store never answers",
            consumer.name
        );
        assert_eq!(
            store.entries().len(),
            1,
            "{} awaited something before its store write",
            consumer.name
        );
    }
}
