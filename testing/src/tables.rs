//! The tables, as `template.yaml` declares them.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
};

fn attribute(name: &str) -> anyhow::Result<AttributeDefinition> {
    Ok(AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()?)
}

fn key(name: &str, key_type: KeyType) -> anyhow::Result<KeySchemaElement> {
    Ok(KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()?)
}

/// Creates a books table (key `name`, stream with new and old images); returns its stream ARN.
pub async fn create_books_table(client: &Client, table: &str) -> anyhow::Result<String> {
    let output = client
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("name")?)
        .key_schema(key("name", KeyType::Hash)?)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()?,
        )
        .send()
        .await?;
    output
        .table_description()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the books table has no stream"))
}

/// Creates an activity table (key `eventId` + `consumer`, index `byPosition` on `feed` +
/// `position`).
pub async fn create_activity_table(client: &Client, table: &str) -> anyhow::Result<()> {
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("eventId")?)
        .attribute_definitions(attribute("consumer")?)
        .attribute_definitions(attribute("feed")?)
        .attribute_definitions(attribute("position")?)
        .key_schema(key("eventId", KeyType::Hash)?)
        .key_schema(key("consumer", KeyType::Range)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("byPosition")
                .key_schema(key("feed", KeyType::Hash)?)
                .key_schema(key("position", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    Ok(())
}

/// Creates a connections table (key `connectionId` + `sk`, index `bySubscribedTo` on
/// `subscribedTo` with the requests, rows expiring on `expiresAt`).
pub async fn create_connections_table(client: &Client, table: &str) -> anyhow::Result<()> {
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("connectionId")?)
        .attribute_definitions(attribute("sk")?)
        .attribute_definitions(attribute("subscribedTo")?)
        .key_schema(key("connectionId", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("bySubscribedTo")
                .key_schema(key("subscribedTo", KeyType::Hash)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .set_non_key_attributes(Some(
                            ["subscriptionId", "query", "variables", "operationName"]
                                .map(str::to_owned)
                                .to_vec(),
                        ))
                        .build(),
                )
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expiresAt")
                .build()?,
        )
        .send()
        .await?;
    Ok(())
}

/// Creates a journal table (key `part` + `position` (N), rows expiring on `expiresAt`).
pub async fn create_journal_table(client: &Client, table: &str) -> anyhow::Result<()> {
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("part")?)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("position")
                .attribute_type(ScalarAttributeType::N)
                .build()?,
        )
        .key_schema(key("part", KeyType::Hash)?)
        .key_schema(key("position", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    Ok(())
}
