//! The consumers on AWS, against the moto emulator: the DynamoDB activity store and the two
//! Lambda binaries driven through the Lambda Runtime API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use aws_lambda_events::eventbridge::EventBridgeEvent;
use consumers::dynamo::DynamoActivityStore;
use consumers::{Consumer, Recorded, book_added};
use domain::DetailType;
use serde_json::{Value, json};
use testing::moto;
use testing::runtime::{LambdaHarness, Outcome};

const ADDED: &str = include_str!("../fixtures/added-event.json");
const REMOVED: &str = include_str!("../fixtures/removed-event.json");

async fn activity_table(endpoint: &str) -> (aws_sdk_dynamodb::Client, String) {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(endpoint).await);
    let table = moto::unique("activity");
    testing::tables::create_activity_table(&client, &table)
        .await
        .unwrap();
    (client, table)
}

async fn items(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Value> {
    let output = client.scan().table_name(table).send().await.unwrap();
    output
        .items()
        .iter()
        .map(|item| serde_json::to_value(serde_dynamo::Item::from(item.clone())).unwrap())
        .collect()
}

#[tokio::test]
async fn the_same_event_delivered_twice_records_one_entry() {
    let endpoint = testing::emulator!();
    let (client, table) = activity_table(&endpoint).await;
    let store = DynamoActivityStore::new(client.clone(), &table);

    let added: EventBridgeEvent<Value> = serde_json::from_str(ADDED).unwrap();
    assert_eq!(
        book_added::handle(added.clone(), &store).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        book_added::handle(added, &store).await.unwrap(),
        Recorded::AlreadyRecorded
    );

    let items = items(&client, &table).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(
        item["eventId"],
        json!({"S": "c4ca4238a0b923820dcc509a6f75849b"})
    );
    assert_eq!(item["consumer"], json!({"S": "book-added"}));
    assert_eq!(item["detailType"], json!({"S": "outboxdemo.added"}));
    assert_eq!(
        item["feed"],
        json!({"S": domain::item::activity_feed("c4ca4238a0b923820dcc509a6f75849b")})
    );
    assert_eq!(
        item["book"],
        json!({"M": {"name": {"S": "Dune"}, "authors": {"L": [{"S": "Frank Herbert"}]}, "publishedYear": {"N": "1965"}}})
    );
}

/// A second consumer of the same detail type (say an audit log) has its own effect for an event
/// that book-added already recorded: with the table keyed by event id alone it was told
/// `AlreadyRecorded` and skipped it. Each consumer's repeat is still deduplicated.
#[tokio::test]
async fn two_consumers_of_one_event_each_record_their_entry_once() {
    let endpoint = testing::emulator!();
    let (client, table) = activity_table(&endpoint).await;
    let store = DynamoActivityStore::new(client.clone(), &table);
    let audit = Consumer {
        name: "audit",
        detail_type: DetailType::Added,
    };

    let added: EventBridgeEvent<Value> = serde_json::from_str(ADDED).unwrap();
    assert_eq!(
        book_added::handle(added.clone(), &store).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        audit.handle(added.clone(), &store).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        audit.handle(added.clone(), &store).await.unwrap(),
        Recorded::AlreadyRecorded
    );
    assert_eq!(
        book_added::handle(added, &store).await.unwrap(),
        Recorded::AlreadyRecorded
    );

    let mut entries: Vec<(String, String)> = items(&client, &table)
        .await
        .iter()
        .map(|item| {
            (
                item["eventId"]["S"].as_str().unwrap().to_owned(),
                item["consumer"]["S"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    entries.sort();
    let event_id = "c4ca4238a0b923820dcc509a6f75849b".to_owned();
    assert_eq!(
        entries,
        [
            (event_id.clone(), "audit".to_owned()),
            (event_id, "book-added".to_owned())
        ]
    );
}

/// The index's partition key is the entry's shard: events with stream-shaped ids land in every
/// shard, each event's in one, and none in the single partition the feed had before.
#[tokio::test]
async fn recorded_entries_spread_over_the_feed_shards() {
    let endpoint = testing::emulator!();
    let (client, table) = activity_table(&endpoint).await;
    let store = DynamoActivityStore::new(client.clone(), &table);
    let events: u64 = 96;
    for i in 0..events {
        let mut added: EventBridgeEvent<Value> = serde_json::from_str(ADDED).unwrap();
        added.detail["metadata"]["eventId"] = json!(format!("{:032x}", (i + 1) * 0x9e37_79b9));
        assert_eq!(
            book_added::handle(added, &store).await.unwrap(),
            Recorded::New
        );
    }

    let mut per_shard = vec![0; domain::item::ACTIVITY_SHARDS as usize];
    let items = items(&client, &table).await;
    assert_eq!(items.len(), events as usize);
    for item in &items {
        let event_id = item["eventId"]["S"].as_str().unwrap();
        let shard = domain::item::activity_shard(event_id);
        assert_eq!(item["feed"]["S"], format!("activity#{shard}"), "{item}");
        per_shard[shard as usize] += 1;
    }
    // 12 a shard if perfectly even; every shard takes a share.
    assert!(per_shard.iter().all(|&n| n >= 6), "{per_shard:?}");
}

#[tokio::test]
async fn the_consumer_lambdas_record_once_and_refuse_what_is_not_theirs() {
    let endpoint = testing::emulator!();
    let (client, table) = activity_table(&endpoint).await;
    let env = [("ACTIVITY_TABLE_NAME", table.as_str())];
    let mut added = LambdaHarness::start(env!("CARGO_BIN_EXE_book-added"), "book-added", &env)
        .await
        .unwrap();
    let mut removed =
        LambdaHarness::start(env!("CARGO_BIN_EXE_book-removed"), "book-removed", &env)
            .await
            .unwrap();

    let added_event: Value = serde_json::from_str(ADDED).unwrap();
    let removed_event: Value = serde_json::from_str(REMOVED).unwrap();
    assert_eq!(
        added.invoke(added_event.clone()).await.unwrap(),
        Outcome::Response(json!({"recorded": true}))
    );
    assert_eq!(
        added.invoke(added_event.clone()).await.unwrap(),
        Outcome::Response(json!({"recorded": false}))
    );
    assert_eq!(
        removed.invoke(removed_event).await.unwrap(),
        Outcome::Response(json!({"recorded": true}))
    );

    // An event routed to the wrong consumer fails the invocation with a clear error type,
    // so Lambda retries it and then sends it to the on-failure destination.
    let Outcome::Error(error) = removed.invoke(added_event).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(error["errorType"], "UnexpectedEvent", "{error}");
    let mut malformed: Value = serde_json::from_str(REMOVED).unwrap();
    malformed["detail"]["data"] = json!({"name": ""});
    let Outcome::Error(error) = removed.invoke(malformed).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(error["errorType"], "MalformedDetail", "{error}");

    let mut consumers: Vec<String> = items(&client, &table)
        .await
        .iter()
        .map(|item| item["consumer"]["S"].as_str().unwrap().to_owned())
        .collect();
    consumers.sort();
    assert_eq!(consumers, ["book-added", "book-removed"]);
    // Logs are JSON lines that name the event.
    assert!(
        added
            .logs()
            .iter()
            .any(|line| line.contains("c4ca4238a0b923820dcc509a6f75849b") && line.starts_with('{')),
        "{:?}",
        added.logs()
    );
}

#[tokio::test]
async fn a_consumer_lambda_without_its_table_says_which_variable_is_missing() {
    let _endpoint = testing::emulator!();
    let mut lambda = LambdaHarness::start(env!("CARGO_BIN_EXE_book-added"), "book-added", &[])
        .await
        .unwrap();
    let error = lambda
        .invoke(serde_json::from_str(ADDED).unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("ACTIVITY_TABLE_NAME"), "{error}");
}
