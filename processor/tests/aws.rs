//! The processor on AWS, against the moto emulator: the table's real stream read back through
//! the Streams API, published to a bus whose rules come from template.yaml, delivered to queues.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event;
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use domain::{Authors, Book, BookName, PublishedYear, item};
use processor::eventbridge::BookEntry;
use processor::{
    EventBridgePublisher, EventPublisher, OutboxEvent, PoisonRecord, PublishError,
    SqsPoisonRecords, handle_batch,
};
use serde_json::{Value, json};
use testing::batch::failed_ids as failures;
use testing::bus::TemplateBus;
use testing::moto;
use testing::runtime::{LambdaHarness, Outcome};

const RULES: [&str; 2] = ["BookAddedRule", "BookRemovedRule"];

fn book(name: &str, year: i32) -> Book {
    Book {
        name: BookName::parse(name).unwrap(),
        authors: Authors::parse(&["An Author"]).unwrap(),
        published_year: PublishedYear::parse(year).unwrap(),
    }
}

struct Fixture {
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    stream_arn: String,
    bus: TemplateBus,
    publisher: EventBridgePublisher,
    sqs: aws_sdk_sqs::Client,
    poison_queue: String,
    poison: SqsPoisonRecords,
    journal: String,
}

impl Fixture {
    async fn new(endpoint: &str) -> Self {
        let config = moto::sdk_config(endpoint).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let table = moto::unique("books");
        let stream_arn = testing::tables::create_books_table(&dynamodb, &table)
            .await
            .unwrap();
        let bus = TemplateBus::create(&config, &RULES).await.unwrap();
        let publisher = EventBridgePublisher::new(bus.events.clone(), &bus.name);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let poison_queue = sqs
            .create_queue()
            .queue_name(moto::unique("poison"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let poison = SqsPoisonRecords::new(sqs.clone(), &poison_queue);
        let journal = moto::unique("journal");
        testing::tables::create_journal_table(&dynamodb, &journal)
            .await
            .unwrap();
        Self {
            dynamodb,
            streams: aws_sdk_dynamodbstreams::Client::new(&config),
            table,
            stream_arn,
            bus,
            publisher,
            sqs,
            poison_queue,
            poison,
            journal,
        }
    }

    /// Everything set aside in the poison queue so far.
    async fn set_aside(&self) -> Vec<PoisonRecord> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.poison_queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        output
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
            .collect()
    }

    async fn put(&self, book: &Book) {
        let item = item::to_item(book);
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.into()))
            .send()
            .await
            .unwrap();
    }

    async fn delete(&self, name: &str) {
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item::key(&BookName::parse(name).unwrap()).into()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .unwrap();
    }

    /// The stream so far, as the processor Lambda's event.
    async fn stream_records(&self) -> Vec<Value> {
        testing::streams::read_records(&self.streams, &self.stream_arn)
            .await
            .unwrap()
    }
}

fn event(records: &[Value]) -> Event {
    serde_json::from_value(testing::streams::lambda_event(records.to_vec())).unwrap()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["detail"]["data"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn committed_changes_reach_the_rules_targets_as_contract_events_in_order() {
    let endpoint = testing::emulator!();
    let fixture = Fixture::new(&endpoint).await;
    fixture.put(&book("Dune", 1965)).await;
    fixture.put(&book("Emma", 1815)).await;
    fixture.delete("Dune").await;
    fixture.put(&book("Emma", 1816)).await; // MODIFY: outboxdemo.updated, which no rule routes

    let records = fixture.stream_records().await;
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["INSERT", "INSERT", "REMOVE", "MODIFY"]);
    let response = handle_batch(event(&records), &fixture.publisher, &fixture.poison).await;
    assert!(failures(&response).is_empty(), "{response:?}");

    let added = fixture.bus.delivered("BookAddedRule").await.unwrap();
    let removed = fixture.bus.delivered("BookRemovedRule").await.unwrap();
    let expect = |record: &Value, year: i32, name: &str| {
        json!({
            "eventId": record["eventID"],
            "sequenceNumber": record["dynamodb"]["SequenceNumber"],
            "version": 1,
            "data": {"name": name, "authors": ["An Author"], "publishedYear": year},
        })
    };
    let actual = |event: &Value| {
        json!({
            "eventId": event["detail"]["metadata"]["eventId"],
            "sequenceNumber": event["detail"]["metadata"]["sequenceNumber"],
            "version": event["detail"]["metadata"]["version"],
            "data": event["detail"]["data"],
        })
    };
    assert_eq!(
        added.iter().map(actual).collect::<Vec<_>>(),
        [
            expect(&records[0], 1965, "Dune"),
            expect(&records[1], 1815, "Emma")
        ]
    );
    assert_eq!(
        removed.iter().map(actual).collect::<Vec<_>>(),
        [expect(&records[2], 1965, "Dune")]
    );
    for event in added.iter().chain(&removed) {
        assert_eq!(event["source"], "outboxdemo.processor");
        let occurred_at = event["detail"]["metadata"]["occurredAt"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(occurred_at).is_ok(),
            "{occurred_at}"
        );
        assert_eq!(
            event["detail"].as_object().unwrap().len(),
            2,
            "only metadata and data: {event}"
        );
    }
    assert_eq!(added[0]["detail-type"], "outboxdemo.added");
    assert_eq!(removed[0]["detail-type"], "outboxdemo.removed");
}

/// The entry for `event` with a detail EventBridge refuses — the way to make the emulator fail
/// one entry of a call, as EventBridge sometimes does.
fn refused_entry(publisher: &EventBridgePublisher, event: &OutboxEvent) -> BookEntry {
    let mut entry = publisher.entry(event).unwrap();
    let request = &entry.request;
    entry.request = PutEventsRequestEntry::builder()
        .set_event_bus_name(request.event_bus_name().map(str::to_owned))
        .set_source(request.source().map(str::to_owned))
        .set_detail_type(request.detail_type().map(str::to_owned))
        .detail("{not json")
        .build();
    entry
}

/// The real publisher, except that the event of one book is refused.
struct RefusingOne {
    inner: EventBridgePublisher,
    refused: &'static str,
}

#[async_trait]
impl EventPublisher for RefusingOne {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let entries: Vec<BookEntry> = events
            .iter()
            .map(|event| {
                if event.envelope.data.name.as_str() == self.refused {
                    refused_entry(&self.inner, event)
                } else {
                    self.inner.entry(event).unwrap()
                }
            })
            .collect();
        self.inner.put_entries(entries).await
    }
}

/// The real publisher, except that it refuses the first event of each book whose next change
/// is in the same batch: the refusal that, inside one call, would let the next change overtake it.
struct RefusingOvertaken {
    inner: EventBridgePublisher,
}

#[async_trait]
impl EventPublisher for RefusingOvertaken {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let book = |event: &OutboxEvent| event.envelope.data.name.clone();
        let entries: Vec<BookEntry> = events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let first = events[..i].iter().all(|e| book(e) != book(event));
                let next_in_batch = events[i + 1..].iter().any(|e| book(e) == book(event));
                if first && next_in_batch {
                    refused_entry(&self.inner, event)
                } else {
                    self.inner.entry(event).unwrap()
                }
            })
            .collect();
        self.inner.put_entries(entries).await
    }
}

#[tokio::test]
async fn a_refused_entry_becomes_the_batch_item_failure_and_the_ones_before_it_are_delivered_once()
{
    let endpoint = testing::emulator!();
    let fixture = Fixture::new(&endpoint).await;
    for name in ["A", "B", "C", "D"] {
        fixture.put(&book(name, 2000)).await;
    }
    let records = fixture.stream_records().await;
    let refusing = RefusingOne {
        inner: fixture.publisher.clone(),
        refused: "B",
    };

    let response = handle_batch(event(&records), &refusing, &fixture.poison).await;
    assert_eq!(
        failures(&response),
        [records[1]["dynamodb"]["SequenceNumber"].as_str().unwrap()]
    );
    let first_try = fixture.bus.delivered("BookAddedRule").await.unwrap();
    assert_eq!(
        names(&first_try),
        ["A", "C", "D"],
        "entries of the same call after the refused one went through"
    );

    // Lambda retries from the failed record; this time it goes through.
    let response = handle_batch(event(&records[1..]), &fixture.publisher, &fixture.poison).await;
    assert!(failures(&response).is_empty());
    let retry = fixture.bus.delivered("BookAddedRule").await.unwrap();
    assert_eq!(names(&retry), ["B", "C", "D"]);

    // A was delivered once; C and D twice, with the same eventId, on which consumers dedupe.
    let all: Vec<&Value> = first_try.iter().chain(&retry).collect();
    let ids = |name: &str| -> Vec<&Value> {
        all.iter()
            .filter(|e| e["detail"]["data"]["name"] == name)
            .map(|e| &e["detail"]["metadata"]["eventId"])
            .collect()
    };
    assert_eq!(ids("A").len(), 1);
    assert_eq!(ids("C").len(), 2);
    assert_eq!(ids("C")[0], ids("C")[1]);
    assert_eq!(ids("B"), [&records[1]["eventID"]]);
}

#[tokio::test]
async fn a_refused_entry_is_never_overtaken_by_a_later_change_of_its_book() {
    let endpoint = testing::emulator!();
    let fixture = Fixture::new(&endpoint).await;
    // One queue behind the rule that routes every kind of change, so delivery order covers
    // a book's added and removed events alike.
    let config = moto::sdk_config(&endpoint).await;
    let bus = TemplateBus::create(&config, &["NotifierRule"])
        .await
        .unwrap();
    let publisher = EventBridgePublisher::new(bus.events.clone(), &bus.name);
    fixture.put(&book("Dune", 1965)).await;
    fixture.put(&book("Emma", 1815)).await;
    fixture.delete("Dune").await;
    fixture.put(&book("Dune", 1966)).await;
    fixture.put(&book("Ubik", 1969)).await;
    let records = fixture.stream_records().await;
    let event_ids: Vec<&Value> = records.iter().map(|r| &r["eventID"]).collect();

    // Dune's first change is refused; its next two are in the same batch.
    let refusing = RefusingOvertaken {
        inner: publisher.clone(),
    };
    let response = handle_batch(event(&records), &refusing, &fixture.poison).await;
    assert_eq!(
        failures(&response),
        [records[0]["dynamodb"]["SequenceNumber"].as_str().unwrap()]
    );
    let first_try = bus.delivered("NotifierRule").await.unwrap();
    // Lambda retries from the failed record; this time it goes through.
    let response = handle_batch(event(&records), &publisher, &fixture.poison).await;
    assert!(failures(&response).is_empty(), "{response:?}");
    let delivered = [
        first_try.clone(),
        bus.delivered("NotifierRule").await.unwrap(),
    ]
    .concat();

    // Each book's events in delivery order, as positions in the stream (commit order).
    for name in ["Dune", "Emma", "Ubik"] {
        let positions: Vec<usize> = delivered
            .iter()
            .filter(|e| e["detail"]["data"]["name"] == name)
            .map(|e| {
                let id = &e["detail"]["metadata"]["eventId"];
                event_ids.iter().position(|known| *known == id).unwrap()
            })
            .collect();
        assert!(
            positions.is_sorted(),
            "{name}'s events were delivered out of commit order: {positions:?}"
        );
        let mut committed: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r["dynamodb"]["Keys"]["name"]["S"] == name)
            .map(|(i, _)| i)
            .collect();
        let mut seen = positions.clone();
        seen.dedup();
        committed.sort_unstable();
        assert_eq!(seen, committed, "every change of {name}, once after dedupe");
    }
    assert_eq!(
        names(&first_try),
        ["Emma"],
        "of the refused entry's call, only another book's change went through, and no later call"
    );
}

#[tokio::test]
async fn the_processor_lambda_publishes_a_batch_and_sets_aside_the_record_it_cannot_map() {
    let endpoint = testing::emulator!();
    let fixture = Fixture::new(&endpoint).await;
    let mut lambda = LambdaHarness::start(
        env!("CARGO_BIN_EXE_processor"),
        "processor",
        &[
            ("EVENT_BUS_NAME", fixture.bus.name.as_str()),
            ("POISON_QUEUE_URL", fixture.poison_queue.as_str()),
            ("JOURNAL_TABLE_NAME", fixture.journal.as_str()),
        ],
    )
    .await
    .unwrap();

    let mixed: Value = serde_json::from_str(include_str!("../fixtures/mixed-batch.json")).unwrap();
    assert_eq!(
        lambda.invoke(mixed).await.unwrap(),
        Outcome::Response(json!({"batchItemFailures": []}))
    );
    let added = fixture.bus.delivered("BookAddedRule").await.unwrap();
    let removed = fixture.bus.delivered("BookRemovedRule").await.unwrap();
    assert_eq!(names(&added), ["Dune"]);
    assert_eq!(names(&removed), ["Dune", "Neuromancer"]);
    assert!(fixture.set_aside().await.is_empty());
    let mut cursors: Vec<&str> = added
        .iter()
        .chain(&removed)
        .map(|e| e["detail"]["metadata"]["cursor"].as_str().unwrap())
        .collect();
    cursors.sort_unstable();
    assert_eq!(
        cursors,
        [1, 3, 4].map(domain::journal::cursor),
        "each event carries its journal position, in stream order (the MODIFY at 2 goes to no rule here)"
    );

    let malformed: Value =
        serde_json::from_str(include_str!("../fixtures/malformed-record.json")).unwrap();
    assert_eq!(
        lambda.invoke(malformed.clone()).await.unwrap(),
        Outcome::Response(json!({"batchItemFailures": []})),
        "a record that can never be mapped is no batch item failure"
    );
    assert_eq!(
        names(&fixture.bus.delivered("BookAddedRule").await.unwrap()),
        ["Dune", "Emma"],
        "the records around it are published"
    );
    let kept = fixture.set_aside().await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        serde_json::to_value(&kept[0].record).unwrap(),
        serde_json::to_value(
            serde_json::from_value::<Event>(malformed).unwrap().records[1].clone()
        )
        .unwrap(),
        "set aside whole"
    );
    assert!(
        kept[0].reason.contains("not a valid book"),
        "{}",
        kept[0].reason
    );
    let logs = lambda.logs().join("\n");
    assert!(
        logs.contains("8f14e45fceea167a5a36dedd4bea2543") && logs.contains("set aside"),
        "{logs}"
    );
}
