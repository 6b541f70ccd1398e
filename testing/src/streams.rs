//! A DynamoDB stream read back through the Streams API, as the Lambda event the processor gets.

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use serde_json::{Map, Value, json};

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

fn image(image: Option<&HashMap<String, AttributeValue>>) -> Option<Value> {
    let item = serde_dynamo::Item::from(image?.clone());
    serde_json::to_value(item).ok()
}

/// One stream record in Lambda's JSON shape (what the event source mapping sends).
fn lambda_record(record: &Record, stream_arn: &str) -> Value {
    let mut change = Map::new();
    if let Some(data) = record.dynamodb() {
        if let Some(time) = data.approximate_creation_date_time() {
            change.insert(
                "ApproximateCreationDateTime".into(),
                json!(time.secs()), // whole seconds, as Lambda's event source mapping sends them
            );
        }
        for (name, value) in [
            ("Keys", image(data.keys.as_ref())),
            ("NewImage", image(data.new_image.as_ref())),
            ("OldImage", image(data.old_image.as_ref())),
        ] {
            if let Some(value) = value {
                change.insert(name.into(), value);
            }
        }
        change.insert("SequenceNumber".into(), json!(data.sequence_number()));
        change.insert(
            "SizeBytes".into(),
            json!(data.size_bytes().unwrap_or_default()),
        );
        change.insert(
            "StreamViewType".into(),
            json!(data.stream_view_type().map(|v| v.as_str())),
        );
    }
    json!({
        "eventID": record.event_id(),
        "eventName": record.event_name().map(|name| name.as_str()),
        "eventVersion": record.event_version(),
        "eventSource": record.event_source(),
        "awsRegion": record.aws_region(),
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    })
}
