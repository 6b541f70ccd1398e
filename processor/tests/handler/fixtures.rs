//! The handler on fixture batches, in the shapes Lambda sends.

use aws_lambda_events::dynamodb::Event;
use domain::event::DetailType;
use processor::{MappingError, handle_batch, map_record};
use serde_json::json;
use testing::batch::failed_ids as failures;

use crate::support::{RecordingPoison, RecordingPublisher};

fn fixture(json: &str) -> Event {
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn maps_every_record_of_a_mixed_batch_in_order() {
    let publisher = RecordingPublisher::default();
    let response = handle_batch(
        fixture(include_str!("../../fixtures/mixed-batch.json")),
        &publisher,
        &RecordingPoison::default(),
    )
    .await;
    assert!(failures(&response).is_empty());

    let published = publisher.published();
    let details: Vec<_> = published
        .iter()
        .map(|e| {
            (
                e.detail_type,
                serde_json::from_str::<serde_json::Value>(&e.detail_json().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        details,
        [
            (
                DetailType::Added,
                json!({
                    "metadata": {"eventId": "c4ca4238a0b923820dcc509a6f75849b", "sequenceNumber": "111100000000000000001", "occurredAt": "2024-05-01T12:00:00Z", "version": 1},
                    "data": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965}
                })
            ),
            (
                DetailType::Updated,
                json!({
                    "metadata": {"eventId": "c81e728d9d4c2f636f067f89cc14862c", "sequenceNumber": "111100000000000000002", "occurredAt": "2024-05-01T12:00:01Z", "version": 1},
                    "data": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1966}
                })
            ),
            (
                DetailType::Removed,
                json!({
                    "metadata": {"eventId": "eccbc87e4b5ce2fe28308fd9f2a7baf3", "sequenceNumber": "111100000000000000003", "occurredAt": "2024-05-01T12:00:02Z", "version": 1},
                    "data": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1966}
                })
            ),
            (
                DetailType::Removed,
                json!({
                    "metadata": {"eventId": "a87ff679a2f3e71d9181a67b7542122c", "sequenceNumber": "111100000000000000004", "occurredAt": "2024-05-01T12:00:03Z", "version": 1},
                    "data": {"name": "Neuromancer"}
                })
            ),
        ]
    );
    assert!(
        published
            .iter()
            .all(|e| e.source() == "outboxdemo.processor")
    );
}

#[tokio::test]
async fn a_malformed_record_is_set_aside_whole_and_the_rest_of_the_batch_is_published() {
    let publisher = RecordingPublisher::default();
    let poison = RecordingPoison::default();
    let event = fixture(include_str!("../../fixtures/malformed-record.json"));
    let malformed = event.records[1].clone();
    let response = handle_batch(event, &publisher, &poison).await;
    assert!(
        failures(&response).is_empty(),
        "a permanent failure is no batch item failure"
    );
    let published: Vec<_> = publisher
        .published()
        .iter()
        .map(|e| e.envelope.metadata.sequence_number.clone())
        .collect();
    assert_eq!(
        published,
        ["222200000000000000001", "222200000000000000003"]
    );
    let kept = poison.kept();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, malformed);
    assert!(kept[0].1.contains("not a valid book"), "{}", kept[0].1);
}

#[tokio::test]
async fn a_malformed_record_that_cannot_be_set_aside_is_a_batch_item_failure() {
    let publisher = RecordingPublisher::default();
    let response = handle_batch(
        fixture(include_str!("../../fixtures/malformed-record.json")),
        &publisher,
        &RecordingPoison::refusing(),
    )
    .await;
    assert_eq!(failures(&response), ["222200000000000000002"]);
}

#[tokio::test]
async fn a_publish_failure_reports_the_first_unpublished_record() {
    let publisher = RecordingPublisher::failing_from(Some(2));
    let response = handle_batch(
        fixture(include_str!("../../fixtures/mixed-batch.json")),
        &publisher,
        &RecordingPoison::default(),
    )
    .await;
    assert_eq!(failures(&response), ["111100000000000000003"]);
    assert_eq!(publisher.published().len(), 2);
}

#[tokio::test]
async fn an_empty_batch_publishes_nothing_and_fails_nothing() {
    let publisher = RecordingPublisher::default();
    let response = handle_batch(
        fixture(r#"{"Records": []}"#),
        &publisher,
        &RecordingPoison::default(),
    )
    .await;
    assert!(failures(&response).is_empty());
    assert!(publisher.published().is_empty());
}

#[test]
fn records_without_what_consumers_need_are_refused() {
    let mut event = fixture(include_str!("../../fixtures/mixed-batch.json"));
    let mut no_id = event.records[0].clone();
    no_id.event_id.clear();
    assert!(matches!(
        map_record(&no_id),
        Err(MappingError::MissingEventId)
    ));

    let mut no_sequence = event.records[0].clone();
    no_sequence.change.sequence_number = None;
    assert!(matches!(
        map_record(&no_sequence),
        Err(MappingError::MissingSequenceNumber)
    ));

    let mut no_image = event.records[0].clone();
    no_image.change.new_image = Default::default();
    assert!(matches!(
        map_record(&no_image),
        Err(MappingError::MissingNewImage("INSERT"))
    ));

    let mut unknown = event.records.remove(0);
    unknown.event_name = "TRUNCATE".into();
    assert!(matches!(
        map_record(&unknown),
        Err(MappingError::UnknownEventName(_))
    ));
}
