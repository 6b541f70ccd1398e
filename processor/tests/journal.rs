//! The journal on DynamoDB, against the moto emulator: dense positions in order, each event
//! once however often it is offered, and processors of several shards sharing the head.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use domain::journal::{self, cursor};
use domain::{DetailType, Envelope};
use processor::{DynamoJournal, Journal, OutboxEvent};
use serde_json::json;
use testing::moto;

fn event(id: &str) -> OutboxEvent {
    let detail = json!({
        "metadata": {"eventId": id, "sequenceNumber": "1", "occurredAt": "2024-01-01T00:00:00Z", "version": 1},
        "data": {"name": format!("book {id}")}
    });
    OutboxEvent {
        detail_type: DetailType::Added,
        envelope: Envelope::from_detail(detail).unwrap(),
    }
}

fn events(prefix: &str, n: usize) -> Vec<OutboxEvent> {
    (0..n).map(|i| event(&format!("{prefix}{i}"))).collect()
}

async fn journal(endpoint: &str) -> (DynamoJournal, aws_sdk_dynamodb::Client, String) {
    let config = moto::sdk_config(endpoint).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::unique("journal");
    testing::tables::create_journal_table(&client, &table)
        .await
        .unwrap();
    (DynamoJournal::new(client.clone(), &table), client, table)
}

/// Every entry of the table, by position: (event id, cursor in its envelope).
async fn entries(client: &aws_sdk_dynamodb::Client, table: &str) -> HashMap<i64, (String, String)> {
    let items = client
        .scan()
        .table_name(table)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    items
        .iter()
        .filter(|item| item[journal::PART].as_s().unwrap().starts_with("entries#"))
        .map(|item| {
            let position = item[journal::POSITION].as_n().unwrap().parse().unwrap();
            let AttributeValue::S(envelope) = &item[journal::ENVELOPE] else {
                panic!("no envelope")
            };
            let envelope: Envelope = serde_json::from_str(envelope).unwrap();
            let metadata = envelope.metadata;
            (position, (metadata.event_id, metadata.cursor.unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn events_take_dense_positions_in_order_and_keep_them_when_offered_again() {
    let endpoint = testing::emulator!();
    let (journal, client, table) = journal(&endpoint).await;

    // More than one transaction's worth: the batch is split, the positions are not.
    let first = events("a", 120);
    let positions = journal.append(&first).await.unwrap();
    assert_eq!(positions, (1..=120).collect::<Vec<_>>());

    // A retried batch: its journaled events keep their places, the new one takes the next.
    let mut again = first[100..].to_vec();
    again.push(event("b"));
    let positions = journal.append(&again).await.unwrap();
    assert_eq!(positions, (101..=121).collect::<Vec<_>>());

    let entries = entries(&client, &table).await;
    assert_eq!(entries.len(), 121, "nothing was journaled twice");
    for (position, (event_id, entry_cursor)) in &entries {
        assert_eq!(
            entry_cursor,
            &cursor(*position),
            "the envelope carries its position"
        );
        let expected = if *position == 121 {
            "b".to_owned()
        } else {
            format!("a{}", position - 1)
        };
        assert_eq!(event_id, &expected);
    }
}

/// A batch that holds one event twice (a stream record handed over twice) journals it once,
/// at one position: DynamoDB refuses a lookup or a transaction that names an item twice, and
/// would refuse the batch on every retry.
#[tokio::test]
async fn an_event_offered_twice_in_one_batch_is_journaled_once() {
    let endpoint = testing::emulator!();
    let (journal, client, table) = journal(&endpoint).await;

    let batch = [event("x"), event("y"), event("x"), event("z")];
    let positions = journal.append(&batch).await.unwrap();
    assert_eq!(positions, vec![1, 2, 1, 3]);

    let entries = entries(&client, &table).await;
    let journaled: BTreeMap<i64, String> = entries
        .into_iter()
        .map(|(position, (event_id, _))| (position, event_id))
        .collect();
    assert_eq!(
        journaled,
        BTreeMap::from([(1, "x".into()), (2, "y".into()), (3, "z".into())])
    );
}

/// The processors of several stream shards share the head, batch after batch: positions stay
/// dense, each shard's in its order. (Their appends are not run at once here: moto checks a
/// transaction's conditions and writes its items one by one, with no lock, and restores a copy of
/// the whole table when one fails, so concurrent transactions corrupt each other there, where
/// DynamoDB runs them serializably:
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html>.
/// What makes a concurrent append safe, its conditions, is tested below with a stale head.)
#[tokio::test]
async fn processors_of_several_shards_share_the_head_without_a_gap_or_a_double() {
    let endpoint = testing::emulator!();
    let (journal, client, table) = journal(&endpoint).await;
    let shards: Vec<Vec<OutboxEvent>> = (0..4).map(|s| events(&format!("s{s}-"), 30)).collect();
    let mut per_shard = vec![Vec::new(); shards.len()];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut next = vec![0; shards.len()];
    while next.iter().zip(&shards).any(|(n, s)| *n < s.len()) {
        let shard = rng.usize(..shards.len());
        let from = next[shard];
        let to = (from + rng.usize(1..=7)).min(shards[shard].len());
        per_shard[shard].extend(journal.append(&shards[shard][from..to]).await.unwrap());
        next[shard] = to;
    }

    for positions in &per_shard {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "a shard's records keep their order: {positions:?}"
        );
    }
    let mut all: Vec<i64> = per_shard.concat();
    all.sort_unstable();
    assert_eq!(all, (1..=120).collect::<Vec<_>>(), "dense, each once");
    assert_eq!(entries(&client, &table).await.len(), 120);
}

/// A processor whose read of the head is stale (another shard's processor journaled since)
/// writes nothing: the head's condition fails the whole transaction, and the same goes for an
/// event journaled meanwhile (its marker's condition). Then it reads again and goes on.
#[tokio::test]
async fn a_stale_head_or_an_event_journaled_meanwhile_writes_nothing() {
    let endpoint = testing::emulator!();
    let (journal, client, table) = journal(&endpoint).await;
    journal.append(&events("a", 2)).await.unwrap();

    let stale = journal.write_after(&[event("b")], 1).await.unwrap();
    assert!(!stale, "a head read before the last transaction");
    let again = journal.write_after(&[event("a1")], 2).await.unwrap();
    assert!(!again, "an event journaled already");
    assert_eq!(entries(&client, &table).await.len(), 2, "nothing written");

    assert_eq!(
        journal.append(&[event("b"), event("a1")]).await.unwrap(),
        [3, 2]
    );
    assert_eq!(entries(&client, &table).await.len(), 3);
}
