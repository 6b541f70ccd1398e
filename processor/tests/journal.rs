//! The journal on DynamoDB, against the moto emulator: dense positions in order, each event
//! once however often it is offered, and processors of several shards sharing the head.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::HashMap;

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

#[tokio::test]
async fn processors_of_several_shards_share_the_head_without_a_gap_or_a_double() {
    let endpoint = testing::emulator!();
    let (journal, client, table) = journal(&endpoint).await;
    let shards: Vec<Vec<OutboxEvent>> = (0..4).map(|s| events(&format!("s{s}-"), 30)).collect();

    // Each shard's processor journals its records batch by batch, all at once.
    let runs = shards.iter().map(|records| {
        let journal = journal.clone();
        async move {
            let mut positions = Vec::new();
            for batch in records.chunks(5) {
                positions.extend(journal.append(batch).await.unwrap());
            }
            positions
        }
    });
    let per_shard = futures_util::future::join_all(runs).await;

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
