//! The DynamoDB adapter of [`ActivityStore`].

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use domain::ActivityEntry;
use domain::item;

use crate::store::{ActivityStore, ActivityStoreError, Recorded, Recording};

/// The activity table on DynamoDB, keyed by (eventId, consumer): a put conditional on this
/// consumer's entry for the event being new. The item's `feed`, the partition key of the
/// table's `byPosition` index, is the event's shard of the feed
/// ([`domain::item::activity_feed`]), so the feed's writes are spread over several index
/// partitions.
#[derive(Debug, Clone)]
pub struct DynamoActivityStore {
    client: Client,
    table: String,
}

impl DynamoActivityStore {
    /// A store on the table named `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl ActivityStore for DynamoActivityStore {
    /// The request goes out when the future is first polled: a Lambda handles one event at a
    /// time, so nothing needs the writes issued in call order.
    fn record(&self, entry: &ActivityEntry) -> Recording {
        let item = item::activity_to_item(entry);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            // A condition is checked against the one item with the new item's whole key
            // (eventId and consumer), so another consumer's entry for the event does not count.
            // https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html#Expressions.ConditionExpressions.PreventingOverwrites
            .condition_expression("attribute_not_exists(eventId)");
        Box::pin(async move {
            let item = item.map_err(|e| ActivityStoreError(e.into()))?;
            match put.set_item(Some(item.into())).send().await {
                Ok(_) => Ok(Recorded::New),
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    Ok(Recorded::AlreadyRecorded)
                }
                Err(error) => Err(ActivityStoreError(
                    DisplayErrorContext(error).to_string().into(),
                )),
            }
        })
    }
}
