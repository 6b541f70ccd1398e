//! Writes `tests/fixtures/v0/outboxdemo.sqlite3` with the code of main before the schema got a
//! version (6547a8b): books, activity, events delivered and events still queued, a stream
//! checkpoint, a stream dead letter and a bus dead letter. Run once, by hand:
//! `cargo test --test make_v0_fixture -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use api::BookStore;
use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use domain::{Authors, Book, BookName, PublishedYear};
use outboxdemo::bus::{self, DeliveryOptions, LocalBus, Route};
use outboxdemo::embedded::{Db, EmbeddedActivityStore, EmbeddedBookStore};
use outboxdemo::faults::{Faults, faulty_route};
use outboxdemo::stream::{self, BatchHandler, Processor, ReaderOptions, StreamReader};
use tokio_util::sync::CancellationToken;

fn book(name: &str, year: i32) -> Book {
    Book {
        name: BookName::parse(name).unwrap(),
        authors: Authors::parse(&["An Author"]).unwrap(),
        published_year: PublishedYear::parse(year).unwrap(),
    }
}

/// Fails every record: the stream reader dead-letters it.
struct Refuse;

#[async_trait]
impl BatchHandler for Refuse {
    async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let mut response = DynamoDbEventResponse::default();
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = event.records[0].change.sequence_number.clone();
        response.batch_item_failures.push(failure);
        response
    }
}

async fn until(mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..2000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out");
}

fn routes(db: &Arc<Db>, faults: &Faults) -> Vec<Route> {
    let activity = Arc::new(EmbeddedActivityStore::new(Arc::clone(db)));
    consumers::ALL
        .into_iter()
        .map(|c| faulty_route(Route::consumer(c, activity.clone()), faults))
        .chain([outboxdemo::bus::SubscriptionTarget::route(api::EventHub::new(16))])
        .collect()
}

#[tokio::test]
#[ignore = "writes the checked-in fixture; run by hand with the code it describes"]
async fn write_the_v0_fixture() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0");
    let _ = std::fs::remove_dir_all(&out);
    let db = Db::open(&out).unwrap();
    let books = EmbeddedBookStore::new(Arc::clone(&db));
    let options = ReaderOptions {
        max_attempts: 1,
        ..ReaderOptions::default()
    };

    // 1. Dune, Emma and Hopeless go all the way through; book-added fails Hopeless for good.
    for (name, year) in [("Dune", 1965), ("Emma", 1815), ("Hopeless", 1999)] {
        books.add(&book(name, year)).await.unwrap();
    }
    let faults = Faults {
        poison: Some("Hopeless".into()),
        ..Faults::default()
    };
    let delivery = DeliveryOptions {
        max_attempts: 1,
        ..DeliveryOptions::default()
    };
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "outbox-demo",
        routes(&db, &faults),
        delivery,
    ));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);
    let reader = StreamReader::new(Arc::clone(&db), Processor(bus), options.clone());
    tasks.spawn(reader.run(stop.clone()));
    until(async || {
        bus::queued(&db).await.unwrap() == 0
            && bus::dead_letters(&db).await.unwrap().len() == 1
            && stream::checkpoint(&db).await.unwrap() == 3
    })
    .await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    // 2. Three more changes reach the bus's queues, and no delivery runs: they stay queued.
    books.add(&book("Ulysses", 1922)).await.unwrap();
    books.add(&book("Beloved", 1987)).await.unwrap();
    books
        .remove(&BookName::parse("Emma").unwrap())
        .await
        .unwrap();
    let bus = Arc::new(LocalBus::new(
        Arc::clone(&db),
        "outbox-demo",
        routes(&db, &Faults::default()),
        DeliveryOptions::default(),
    ));
    let stop = CancellationToken::new();
    let reader = StreamReader::new(Arc::clone(&db), Processor(bus), options.clone());
    let task = tokio::spawn(reader.run(stop.clone()));
    until(async || stream::checkpoint(&db).await.unwrap() == 6).await;
    stop.cancel();
    task.await.unwrap();

    // 3. Poison: the processor fails it, and it becomes a stream dead letter.
    books.add(&book("Poison", 2000)).await.unwrap();
    let stop = CancellationToken::new();
    let reader = StreamReader::new(Arc::clone(&db), Refuse, options);
    let task = tokio::spawn(reader.run(stop.clone()));
    until(async || stream::checkpoint(&db).await.unwrap() == 7).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(stream::dead_letters(&db).await.unwrap().len(), 1);
    assert_eq!(bus::queued(&db).await.unwrap(), 6); // 2 added + 1 removed, and 3 subscriptions

    drop(books);
    drop(db);
    let conn = rusqlite::Connection::open(out.join(outboxdemo::embedded::DB_FILE)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    for extra in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(out.join(format!("{}{extra}", outboxdemo::embedded::DB_FILE)));
    }
}
