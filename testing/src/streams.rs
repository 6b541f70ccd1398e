//! A DynamoDB stream read back through the Streams API, as the Lambda event the processor gets.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use aws_lambda_events::dynamodb::{EventRecord, StreamViewType};
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{
    AttributeValue, Record, ShardIteratorType, StreamViewType as SdkViewType,
};
use serde_json::{Value, json};

/// Every record of the stream so far, in order, as Lambda presents DynamoDB stream records.
pub async fn read_records(client: &Client, stream_arn: &str) -> anyhow::Result<Vec<Value>> {
    let stream = client
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await?;
    let shards = stream
        .stream_description()
        .map(|d| d.shards().to_vec())
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let Some(shard_id) = shard.shard_id() else {
            continue;
        };
        let mut iterator = client
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator;
        while let Some(current) = iterator {
            let output = client.get_records().shard_iterator(current).send().await?;
            if output.records().is_empty() {
                break; // an open shard always offers a next iterator; empty means caught up
            }
            records.extend(
                output
                    .records()
                    .iter()
                    .map(|r| lambda_record(r, stream_arn)),
            );
            iterator = output.next_shard_iterator;
        }
    }
    Ok(records)
}

/// `{"Records": records}`: a DynamoDB stream event as a Lambda receives it.
pub fn lambda_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

fn image(image: Option<&HashMap<String, AttributeValue>>) -> serde_dynamo::Item {
    image
        .map(|image| serde_dynamo::Item::from(image.clone()))
        .unwrap_or_default()
}

fn view_type(view: &SdkViewType) -> Option<StreamViewType> {
    match view {
        SdkViewType::KeysOnly => Some(StreamViewType::KeysOnly),
        SdkViewType::NewImage => Some(StreamViewType::NewImage),
        SdkViewType::OldImage => Some(StreamViewType::OldImage),
        SdkViewType::NewAndOldImages => Some(StreamViewType::NewAndOldImages),
        _ => None,
    }
}

/// One stream record as the event source mapping hands it to a Lambda: built as
/// `aws_lambda_events`' [`EventRecord`] (as the local stream reader builds its records), given
/// in its JSON form.
fn lambda_record(record: &Record, stream_arn: &str) -> Value {
    let mut event = EventRecord::default();
    event.event_id = record.event_id().unwrap_or_default().to_owned();
    event.event_name = record
        .event_name()
        .map(|name| name.as_str().to_owned())
        .unwrap_or_default();
    event.event_version = record.event_version().map(str::to_owned);
    event.event_source = record.event_source().map(str::to_owned);
    event.aws_region = record.aws_region().unwrap_or_default().to_owned();
    event.event_source_arn = Some(stream_arn.to_owned());
    if let Some(data) = record.dynamodb() {
        let change = &mut event.change;
        if let Some(time) = data.approximate_creation_date_time() {
            // Whole seconds, as Lambda's event source mapping sends them.
            let secs = u64::try_from(time.secs()).unwrap_or_default();
            change.approximate_creation_date_time = (UNIX_EPOCH + Duration::from_secs(secs)).into();
        }
        change.keys = image(data.keys.as_ref());
        change.new_image = image(data.new_image.as_ref());
        change.old_image = image(data.old_image.as_ref());
        change.sequence_number = data.sequence_number().map(str::to_owned);
        change.size_bytes = data.size_bytes().unwrap_or_default();
        change.stream_view_type = data.stream_view_type().and_then(view_type);
    }
    serde_json::to_value(event).unwrap_or_default()
}
