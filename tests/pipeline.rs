//! The local change stream and event bus, driven directly: what they hand their handlers,
//! and how they retry, dead-letter and resume.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::BookStore;
use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use domain::event::{DetailType, Envelope, Metadata};
use domain::{Authors, Book, BookName, BookSnapshot, PublishedYear};
use outboxdemo::bus::{self, Delivery, DeliveryError, DeliveryOptions, LocalBus, Route, Target};
use outboxdemo::embedded::{Db, EmbeddedActivityStore, EmbeddedBookStore, EmbeddedDeadLetters};
use outboxdemo::stream::{self, BatchHandler, ReaderOptions, StreamReader};
use processor::{EventPublisher, OutboxEvent};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn book(name: &str) -> Book {
    Book {
        name: BookName::parse(name).unwrap(),
        authors: Authors::parse(&["An Author"]).unwrap(),
        published_year: PublishedYear::parse(2001).unwrap(),
    }
}

fn reader_options() -> ReaderOptions {
    ReaderOptions {
        batch_size: 3,
        // Short, so a record that keeps failing outlives it within the test; long enough that
        // one failing twice (backoff 2 + 4 ms) does not.
        max_record_age: Duration::from_millis(400),
        first_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(10),
    }
}

/// Every dead letter, with its payload (the record or event) parsed.
async fn dead_letters(db: &Arc<Db>) -> Vec<(api::DeadLetter, Value)> {
    let letters = EmbeddedDeadLetters::new(Arc::clone(db))
        .all(100)
        .await
        .unwrap();
    letters
        .into_iter()
        .map(|letter| {
            let payload = serde_json::from_str(&letter.payload).unwrap();
            (letter, payload)
        })
        .collect()
}

async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A processor stand-in: remembers what it handled, and fails chosen records a number of times
/// (`u32::MAX`: always).
#[derive(Default)]
struct ScriptedHandler {
    failures: Mutex<HashMap<String, u32>>,
    handled: Mutex<Vec<Value>>,
    calls: Mutex<u32>,
}

impl ScriptedHandler {
    fn failing(names: &[(&str, u32)]) -> Arc<Self> {
        let handler = Self::default();
        *handler.failures.lock().unwrap() =
            names.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        Arc::new(handler)
    }

    fn handled_names(&self) -> Vec<String> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                r["dynamodb"]["Keys"]["name"]["S"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

#[async_trait]
impl BatchHandler for ScriptedHandler {
    async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        *self.calls.lock().unwrap() += 1;
        let mut response = DynamoDbEventResponse::default();
        for record in event.records {
            let name = match record.change.keys.get("name") {
                Some(serde_dynamo::AttributeValue::S(name)) => name.clone(),
                _ => panic!("record without a name key"),
            };
            let mut failures = self.failures.lock().unwrap();
            if let Some(left) = failures.get_mut(&name).filter(|left| **left > 0) {
                *left = left.saturating_sub(u32::from(*left != u32::MAX));
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = record.change.sequence_number.clone();
                response.batch_item_failures.push(failure);
                return response;
            }
            self.handled
                .lock()
                .unwrap()
                .push(serde_json::to_value(&record).unwrap());
        }
        response
    }
}

async fn run_reader(
    db: &Arc<Db>,
    handler: Arc<ScriptedHandler>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let reader = StreamReader::new(Arc::clone(db), handler, reader_options());
    let task = tokio::spawn(reader.run(stop.clone()));
    (stop, task)
}

#[tokio::test]
async fn the_stream_hands_over_lambda_records_of_each_committed_change_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let store = EmbeddedBookStore::new(Arc::clone(&db));
    let handler = ScriptedHandler::failing(&[]);
    let (stop, task) = run_reader(&db, Arc::clone(&handler)).await;

    store.add(&book("Dune")).await.unwrap();
    store.add(&book("Emma")).await.unwrap();
    assert!(
        store.add(&book("Dune")).await.is_err(),
        "a conflict commits no record"
    );
    store
        .remove(&BookName::parse("Dune").unwrap())
        .await
        .unwrap();
    eventually(|| handler.handled.lock().unwrap().len() == 3).await;
    stop.cancel();
    task.await.unwrap();

    let records = handler.handled.lock().unwrap().clone();
    let names: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["eventName"].as_str().unwrap(),
                r["dynamodb"]["Keys"]["name"]["S"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("INSERT", "Dune"), ("INSERT", "Emma"), ("REMOVE", "Dune")]
    );
    let image = serde_json::json!({"name": {"S": "Dune"}, "authors": {"L": [{"S": "An Author"}]}, "publishedYear": {"N": "2001"}});
    // Beside the book, the item carries the write's commit time and its traceparent: a trace
    // of its own (no client sent one), not sampled (nothing records it here).
    let book_of = |image: &serde_json::Value| {
        let mut image = image.as_object().unwrap().clone();
        let committed_at: i64 = image.remove("committedAt").unwrap()["N"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((chrono::Utc::now().timestamp_millis() - committed_at).abs() < 60_000);
        let traceparent = image.remove("traceparent").unwrap()["S"].clone();
        let traceparent = traceparent.as_str().unwrap();
        assert!(
            traceparent.len() == 55
                && traceparent.starts_with("00-")
                && traceparent.ends_with("-00"),
            "{traceparent}"
        );
        serde_json::Value::Object(image)
    };
    assert_eq!(book_of(&records[0]["dynamodb"]["NewImage"]), image);
    assert_eq!(book_of(&records[2]["dynamodb"]["OldImage"]), image);
    assert!(
        records[2]["dynamodb"]
            .get("NewImage")
            .is_none_or(|v| v.as_object().is_none_or(|o| o.is_empty()))
    );
    let sequence_numbers: Vec<&str> = records
        .iter()
        .map(|r| r["dynamodb"]["SequenceNumber"].as_str().unwrap())
        .collect();
    assert!(
        sequence_numbers.windows(2).all(|w| w[0] < w[1]),
        "{sequence_numbers:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r["eventID"].as_str().unwrap().len() == 32)
    );

    // The checkpoint is durable: a new reader on the same data hands over nothing again.
    drop(store);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(stream::checkpoint(&db).await.unwrap(), 3);
    let again = ScriptedHandler::failing(&[]);
    let (stop, task) = run_reader(&db, Arc::clone(&again)).await;
    EmbeddedBookStore::new(Arc::clone(&db))
        .add(&book("Ulysses"))
        .await
        .unwrap();
    eventually(|| !again.handled.lock().unwrap().is_empty()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(again.handled_names(), ["Ulysses"]);
}

#[tokio::test]
async fn a_failed_record_is_retried_from_where_it_failed_and_nothing_is_handled_twice() {
    let db = Db::in_memory().unwrap();
    let store = EmbeddedBookStore::new(Arc::clone(&db));
    for name in ["A", "B", "C", "D", "E"] {
        store.add(&book(name)).await.unwrap();
    }
    // B fails twice (the batch is A, B, C), D once.
    let handler = ScriptedHandler::failing(&[("B", 2), ("D", 1)]);
    let (stop, task) = run_reader(&db, Arc::clone(&handler)).await;
    eventually(|| handler.handled.lock().unwrap().len() == 5).await;
    stop.cancel();
    task.await.unwrap();

    assert_eq!(handler.handled_names(), ["A", "B", "C", "D", "E"]);
    assert!(dead_letters(&db).await.is_empty());
    assert_eq!(stream::checkpoint(&db).await.unwrap(), 5);
}

#[tokio::test]
async fn a_record_that_keeps_failing_is_retried_until_older_than_the_retention_then_dead_lettered_and_the_stream_goes_on()
 {
    let db = Db::in_memory().unwrap();
    let store = EmbeddedBookStore::new(Arc::clone(&db));
    for name in ["A", "Poison", "C"] {
        store.add(&book(name)).await.unwrap();
    }
    let handler = ScriptedHandler::failing(&[("Poison", u32::MAX)]);
    let (stop, task) = run_reader(&db, Arc::clone(&handler)).await;
    eventually(|| handler.handled.lock().unwrap().len() == 2).await;
    store.add(&book("D")).await.unwrap();
    eventually(|| handler.handled.lock().unwrap().len() == 3).await;
    stop.cancel();
    task.await.unwrap();

    assert_eq!(handler.handled_names(), ["A", "C", "D"]);
    let letters = dead_letters(&db).await;
    assert_eq!(letters.len(), 1);
    let (letter, record) = &letters[0];
    assert_eq!(letter.source, api::DeadLetterSource::Stream);
    assert!(
        letter.attempts >= 3,
        "retried all the while: {}",
        letter.attempts
    );
    assert!(
        letter
            .reason
            .contains("older than the stream keeps records"),
        "{}",
        letter.reason
    );
    assert_eq!(record["dynamodb"]["Keys"]["name"]["S"], "Poison");
    assert_eq!(record["eventName"], "INSERT");
    // 1 call that handled A then failed, 2 more failing tries, then C and D.
    assert!(*handler.calls.lock().unwrap() >= 4);
}

/// Records what it is asked to publish.
#[derive(Default)]
struct RecordingPublisher(Mutex<Vec<OutboxEvent>>);

#[async_trait]
impl EventPublisher for RecordingPublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), processor::PublishError> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

#[tokio::test]
async fn a_record_the_processor_can_never_map_is_set_aside_whole_at_once_and_the_batch_flows_on() {
    let db = Db::in_memory().unwrap();
    let store = EmbeddedBookStore::new(Arc::clone(&db));
    for name in ["A", "Poison", "C"] {
        store.add(&book(name)).await.unwrap();
    }
    let publisher = Arc::new(RecordingPublisher::default());
    let processor = stream::Processor {
        publisher: publisher.clone(),
        poison: Arc::new(stream::StreamDeadLetters(Arc::clone(&db))),
    };
    let faults = outboxdemo::faults::Faults {
        poison: Some("Poison".into()),
        ..Default::default()
    };
    let handler = outboxdemo::faults::PoisonedRecords::new(processor, faults);
    let stop = CancellationToken::new();
    let reader = StreamReader::new(Arc::clone(&db), handler, reader_options());
    let task = tokio::spawn(reader.run(stop.clone()));
    eventually(|| publisher.0.lock().unwrap().len() == 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream::checkpoint(&db).await.unwrap() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint did not pass the batch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap();

    let published: Vec<_> = publisher
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.envelope.data.name.as_str().to_owned())
        .collect();
    assert_eq!(
        published,
        ["A", "C"],
        "one call, no retry, nothing after it held back"
    );
    let letters = dead_letters(&db).await;
    assert_eq!(letters.len(), 1);
    let (letter, record) = &letters[0];
    assert_eq!(letter.source, api::DeadLetterSource::Stream);
    assert_eq!(
        letter.attempts, 1,
        "set aside at once: a retry cannot map it"
    );
    assert!(
        letter.reason.contains("not a valid book") || letter.reason.contains("NewImage"),
        "{}",
        letter.reason
    );
    assert_eq!(record["eventName"], "INSERT");
    assert_eq!(
        record["dynamodb"]["SequenceNumber"],
        "000000000000000000002"
    );
}

/// A bus target that records what it got and fails on cue.
#[derive(Default)]
struct ScriptedTarget {
    got: Mutex<Vec<EventBridgeEvent<Value>>>,
    /// Per book name: how many deliveries to fail, and whether the failure is retryable.
    failures: Mutex<HashMap<String, (u32, bool)>>,
    /// Whether the bus may overlap deliveries (they all finish in their first step here).
    overlap: bool,
}

impl Target for ScriptedTarget {
    fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<Delivery, DeliveryError> {
        let name = event.detail["data"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some((left, retryable)) = self
            .failures
            .lock()
            .unwrap()
            .get_mut(&name)
            .filter(|(left, _)| *left > 0)
        {
            *left -= 1;
            return Err(DeliveryError {
                retryable: *retryable,
                message: format!("{name} refused"),
            });
        }
        self.got.lock().unwrap().push(event);
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    fn overlaps(&self) -> bool {
        self.overlap
    }
}

fn outbox_event(detail_type: DetailType, name: &str, event_id: &str) -> OutboxEvent {
    OutboxEvent {
        detail_type,
        envelope: Envelope {
            metadata: Metadata {
                event_id: event_id.into(),
                sequence_number: "1".into(),
                occurred_at: chrono::Utc::now(),
                version: 1,
                cursor: None,
                traceparent: None,
                committed_at: None,
            },
            data: BookSnapshot::from(book(name)),
        },
    }
}

fn route(name: &str, detail_type: DetailType, target: &Arc<ScriptedTarget>) -> Route {
    Route {
        name: name.into(),
        source: domain::event::SOURCE.into(),
        detail_types: vec![detail_type.as_str().into()],
        target: Arc::clone(target) as Arc<dyn Target>,
    }
}

fn names(target: &ScriptedTarget) -> Vec<String> {
    target
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.detail["data"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_bus_routes_by_detail_type_and_delivers_eventbridge_events_in_order() {
    let db = Db::in_memory().unwrap();
    let added = Arc::new(ScriptedTarget::default());
    let removed = Arc::new(ScriptedTarget::default());
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "test-bus",
        vec![
            route("added", DetailType::Added, &added),
            route("removed", DetailType::Removed, &removed),
        ],
        DeliveryOptions::default(),
    ));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);

    bus.publish(&[
        outbox_event(DetailType::Added, "A", "e1"),
        outbox_event(DetailType::Updated, "A", "e2"),
        outbox_event(DetailType::Removed, "A", "e3"),
        outbox_event(DetailType::Added, "B", "e4"),
        outbox_event(DetailType::Added, "C", "e5"),
    ])
    .await
    .unwrap();
    eventually(|| names(&added).len() == 3 && names(&removed).len() == 1).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    assert_eq!(names(&added), ["A", "B", "C"]);
    assert_eq!(names(&removed), ["A"]);
    let event = added.got.lock().unwrap()[0].clone();
    assert_eq!(
        (event.source.as_str(), event.detail_type.as_str()),
        ("outboxdemo.processor", "outboxdemo.added")
    );
    assert_eq!(event.detail["metadata"]["eventId"], "e1");
    assert!(event.id.is_some() && event.time.is_some());
    assert_eq!(
        bus::queued(&db).await.unwrap(),
        0,
        "an event no rule matches is not queued"
    );
}

#[tokio::test]
async fn the_bus_retries_then_dead_letters_without_blocking_the_queue() {
    retries_then_dead_letters(false).await;
}

#[tokio::test]
async fn overlapped_deliveries_retry_and_dead_letter_alike() {
    retries_then_dead_letters(true).await;
}

async fn retries_then_dead_letters(overlap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let target = Arc::new(ScriptedTarget {
        overlap,
        ..ScriptedTarget::default()
    });
    *target.failures.lock().unwrap() = HashMap::from([
        ("Flaky".to_owned(), (2, true)),
        ("Hopeless".to_owned(), (u32::MAX, true)),
        ("Malformed".to_owned(), (u32::MAX, false)),
    ]);
    let options = DeliveryOptions {
        max_attempts: 4,
        first_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(10),
    };
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "test-bus",
        vec![route("t", DetailType::Added, &target)],
        options,
    ));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);

    let events: Vec<_> = ["Flaky", "Hopeless", "Malformed", "Fine"]
        .iter()
        .enumerate()
        .map(|(i, name)| outbox_event(DetailType::Added, name, &format!("e{i}")))
        .collect();
    bus.publish(&events).await.unwrap();
    eventually(|| names(&target).len() == 2).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    assert_eq!(names(&target), ["Flaky", "Fine"]);
    let letters = dead_letters(&db).await;
    let summary: Vec<_> = letters
        .iter()
        .map(|(letter, event)| {
            (
                letter.source,
                event["detail"]["data"]["name"].as_str().unwrap(),
                letter.attempts,
            )
        })
        .collect();
    let bus = api::DeadLetterSource::Bus;
    assert_eq!(summary, [(bus, "Hopeless", 4), (bus, "Malformed", 1)]);
    assert_eq!(letters[0].0.reason, "Hopeless refused");
    assert_eq!(letters[0].0.target.as_deref(), Some("t"));
    assert_eq!(bus::queued(&db).await.unwrap(), 0);
}

#[tokio::test]
async fn queued_deliveries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(ScriptedTarget::default());
    {
        // Publish with no delivery running: the events wait in the durable queue.
        let db = Db::open(dir.path()).unwrap();
        let bus = LocalBus::new(
            Arc::clone(&db),
            "test-bus",
            vec![route("t", DetailType::Added, &target)],
            DeliveryOptions::default(),
        );
        bus.publish(&[
            outbox_event(DetailType::Added, "A", "e1"),
            outbox_event(DetailType::Added, "B", "e2"),
        ])
        .await
        .unwrap();
        assert_eq!(bus::queued(&db).await.unwrap(), 2);
    }
    let db = Db::open(dir.path()).unwrap();
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "test-bus",
        vec![route("t", DetailType::Added, &target)],
        DeliveryOptions::default(),
    ));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);
    eventually(|| names(&target).len() == 2).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    assert_eq!(names(&target), ["A", "B"]);
    assert_eq!(bus::queued(&db).await.unwrap(), 0);
}

/// A consumer's deliveries overlap (their writes share commits), yet the activity lands in the
/// order of the queue, once per event.
#[tokio::test]
async fn a_consumer_records_a_large_backlog_in_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let activity = Arc::new(EmbeddedActivityStore::new(Arc::clone(&db)));
    let route = Route::consumer(consumers::book_added::CONSUMER, activity.clone());
    assert!(route.target.overlaps());
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "test-bus",
        vec![route],
        DeliveryOptions::default(),
    ));
    let names: Vec<String> = (0..300).map(|i| format!("Book {i:03}")).collect();
    // Queued before delivery starts, so the deliveries run in full batches.
    for chunk in names.chunks(50) {
        let events: Vec<_> = chunk
            .iter()
            .map(|name| outbox_event(DetailType::Added, name, &format!("id-{name}")))
            .collect();
        bus.publish(&events).await.unwrap();
    }
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bus::queued(&db).await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let page = api::ActivityFeed::list(activity.as_ref(), 1000, None)
        .await
        .unwrap();
    let recorded: Vec<String> = page
        .items
        .iter()
        .rev()
        .map(|item| item.entry.book.name.as_str().to_owned())
        .collect();
    assert_eq!(recorded, names);
}

/// What lets the bus overlap a consumer's deliveries: the embedded store issues each activity
/// write when `record` is called, so the writes land in call order however they are awaited.
#[tokio::test]
async fn the_embedded_activity_store_writes_in_call_order_whatever_the_await_order() {
    use consumers::ActivityStore;

    let db = Db::in_memory().unwrap();
    let activity = EmbeddedActivityStore::new(Arc::clone(&db));
    assert!(activity.issues_writes_on_call());
    let names: Vec<String> = (0..20).map(|i| format!("Book {i:02}")).collect();
    let recordings: Vec<_> = names
        .iter()
        .map(|name| {
            activity.record(&domain::ActivityEntry {
                event_id: format!("id-{name}"),
                detail_type: DetailType::Added,
                consumer: "book-added".to_owned(),
                book: BookSnapshot::from(book(name)),
                processed_at: chrono::Utc::now(),
            })
        })
        .collect();
    for recording in recordings.into_iter().rev() {
        recording.await.unwrap();
    }
    let page = api::ActivityFeed::list(&activity, 100, None).await.unwrap();
    let recorded: Vec<&str> = page
        .items
        .iter()
        .rev()
        .map(|item| item.entry.book.name.as_str())
        .collect();
    assert_eq!(recorded, names);
}

#[tokio::test]
async fn a_live_target_gets_each_event_once_in_stream_order_though_batches_are_offered_again() {
    use futures_util::FutureExt as _;
    use futures_util::StreamExt as _;

    let db = Db::in_memory().unwrap();
    let hub = api::EventHub::new(64);
    let mut subscriber = hub.subscribe(None).await.unwrap();
    let bus = LocalBus::new(
        Arc::clone(&db),
        "test-bus",
        Vec::new(),
        DeliveryOptions::default(),
    )
    .with_live(bus::SubscriptionTarget::live(hub.clone()));
    let at = |seq: u64, name: &str| {
        let mut event = outbox_event(DetailType::Added, name, &format!("e{seq}"));
        event.envelope.metadata.sequence_number = format!("{seq:021}");
        event
    };

    bus.publish(&[at(1, "A"), at(2, "B")]).await.unwrap();
    // Offered again from a failed record, and again whole, as the stream reader does after a
    // publish that failed once the bus had taken (some of) its events.
    bus.publish(&[at(2, "B"), at(3, "C")]).await.unwrap();
    bus.publish(&[at(1, "A"), at(2, "B"), at(3, "C"), at(4, "D")])
        .await
        .unwrap();

    let mut got = Vec::new();
    // A live target is handed its events before `publish` returns.
    while let Some(Some(event)) = subscriber.next().now_or_never() {
        got.push(event.unwrap().event_id.clone());
    }
    assert_eq!(got, ["e1", "e2", "e3", "e4"]);
    assert_eq!(
        bus::queued(&db).await.unwrap(),
        0,
        "a live target has no durable queue"
    );
}
