//! The DynamoDB adapter of [`ActivityStore`].

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use domain::ActivityEntry;
use domain::item;

use crate::store::{ActivityStore, ActivityStoreError, Recorded};

/// The activity table on DynamoDB: a put conditional on the event id being new.
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

#[async_trait]
impl ActivityStore for DynamoActivityStore {
    async fn record(&self, entry: &ActivityEntry) -> Result<Recorded, ActivityStoreError> {
        let item = item::activity_to_item(entry).map_err(|e| ActivityStoreError(e.into()))?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.into()))
            .condition_expression("attribute_not_exists(eventId)")
            .send()
            .await;
        match result {
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
    }
}
