//! A DynamoDB stream read back through the Streams API, as the Lambda event the processor gets.

use std::collections::HashSet;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use rehearsal::stream_mapping::lambda_record;
use serde_json::{Value, json};

/// Every record of the stream so far, in order, as Lambda presents DynamoDB stream records.
///
/// Each record once: "each stream record appears exactly once in the stream"
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>), but moto
/// can give two records written at once one sequence number, and its iterator after that number
/// then reads the second again, page after page while it is the last
/// (`rehearsal::stream_mapping` skips it the same way).
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
    let mut seen = HashSet::new();
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
            let before = records.len();
            records.extend(
                output
                    .records()
                    .iter()
                    .filter(|r| r.event_id().is_none_or(|id| seen.insert(id.to_owned())))
                    .map(|r| lambda_record(r, stream_arn)),
            );
            if records.len() == before {
                break; // an open shard always offers a next iterator; nothing new means caught up
            }
            iterator = output.next_shard_iterator;
        }
    }
    Ok(records)
}

/// `{"Records": records}`: a DynamoDB stream event as a Lambda receives it.
pub fn lambda_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}
