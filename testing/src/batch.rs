//! What a stream batch handler answered.

use aws_lambda_events::streams::DynamoDbEventResponse;

/// The item identifiers (sequence numbers) a response reports as batch item failures, in order.
pub fn failed_ids(response: &DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect()
}
