//! A stored change as the record DynamoDB Streams hands a Lambda: an
//! [`aws_lambda_events::dynamodb::EventRecord`], built from the types (no JSON text is
//! assembled or parsed but the stored keys and images themselves).

use aws_lambda_events::dynamodb::{EventRecord, StreamViewType};

use crate::embedded::DbError;
use crate::embedded::stream::StoredRecord;

/// The stream's ARN in the local records.
const STREAM_ARN: &str = "arn:aws:dynamodb:local:000000000000:table/outbox-demo/stream/local";

/// Sequence numbers are zero-padded so that they order the same as text and as numbers, as
/// DynamoDB's do.
pub(super) fn sequence_number(seq: i64) -> String {
    format!("{seq:021}")
}

/// The record as DynamoDB Streams presents it to a Lambda (view `NEW_AND_OLD_IMAGES`).
pub(super) fn lambda_record(stored: &StoredRecord) -> Result<EventRecord, DbError> {
    let image = |json: Option<&String>| -> Result<serde_dynamo::Item, DbError> {
        Ok(json
            .map(|json| serde_json::from_str(json))
            .transpose()?
            .unwrap_or_default())
    };
    let mut record = EventRecord::default();
    record.event_id = stored.event_id.clone();
    record.event_name = stored.event_name.clone();
    record.event_version = Some("1.1".to_owned());
    record.event_source = Some("aws:dynamodb".to_owned());
    record.aws_region = "local".to_owned();
    record.event_source_arn = Some(STREAM_ARN.to_owned());
    let change = &mut record.change;
    // Whole epoch seconds, as DynamoDB Streams sends them.
    change.approximate_creation_date_time =
        chrono::DateTime::from_timestamp(stored.created_at_ms.div_euclid(1000), 0)
            .ok_or_else(|| DbError::Corrupt(format!("bad time {}", stored.created_at_ms)))?;
    change.keys = serde_json::from_str(&stored.keys)?;
    change.new_image = image(stored.new_image.as_ref())?;
    change.old_image = image(stored.old_image.as_ref())?;
    change.sequence_number = Some(sequence_number(stored.seq));
    change.size_bytes = [
        Some(&stored.keys),
        stored.new_image.as_ref(),
        stored.old_image.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|json| json.len() as i64)
    .sum();
    change.stream_view_type = Some(StreamViewType::NewAndOldImages);
    Ok(record)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::{Value, json};

    /// The record is the DynamoDB Streams record a Lambda gets, in its JSON form too.
    #[test]
    fn a_stored_record_becomes_the_lambda_record() {
        let stored = StoredRecord {
            seq: 42,
            event_id: "e\"1".to_owned(),
            event_name: "MODIFY".to_owned(),
            keys: r#"{"name":{"S":"Dune"}}"#.to_owned(),
            new_image: Some(r#"{"name":{"S":"Dune"},"publishedYear":{"N":"1965"}}"#.to_owned()),
            old_image: Some(r#"{"name":{"S":"Dune"},"publishedYear":{"N":"1964"}}"#.to_owned()),
            created_at_ms: 1_714_564_800_999,
        };
        let record = lambda_record(&stored).unwrap();
        let value = serde_json::to_value(&record).unwrap();
        let size = stored.keys.len() + 2 * stored.new_image.as_ref().unwrap().len();
        for (field, expected) in [
            ("eventID", json!("e\"1")),
            ("eventName", json!("MODIFY")),
            ("eventVersion", json!("1.1")),
            ("eventSource", json!("aws:dynamodb")),
            ("awsRegion", json!("local")),
            ("eventSourceARN", json!(STREAM_ARN)),
        ] {
            assert_eq!(value[field], expected, "{field}");
        }
        let change = &value["dynamodb"];
        assert_eq!(change["ApproximateCreationDateTime"], 1_714_564_800);
        assert_eq!(change["Keys"], json!({"name": {"S": "Dune"}}));
        assert_eq!(change["NewImage"]["publishedYear"], json!({"N": "1965"}));
        assert_eq!(change["OldImage"]["publishedYear"], json!({"N": "1964"}));
        assert_eq!(change["SequenceNumber"], "000000000000000000042");
        assert_eq!(change["SizeBytes"], size);
        assert_eq!(change["StreamViewType"], "NEW_AND_OLD_IMAGES");
        // Read back as a Lambda runtime would, it is the same record.
        let again: EventRecord = serde_json::from_value(value).unwrap();
        assert_eq!(again, record);

        let removal = StoredRecord {
            event_name: "REMOVE".to_owned(),
            new_image: None,
            ..stored
        };
        let record = lambda_record(&removal).unwrap();
        assert!(record.change.new_image.is_empty());
        let value: Value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["dynamodb"]["OldImage"]["publishedYear"]["N"], "1964");
    }
}
