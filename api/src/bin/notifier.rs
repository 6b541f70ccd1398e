//! The `notifier` Lambda: runs the stored subscriptions against each bus event.

use api::gateway::{DynamoConnectionStore, ManagementApi};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

/// Configuration, from the environment.
#[derive(Debug, Parser)]
struct Config {
    /// The connections table.
    #[arg(long, env = "CONNECTIONS_TABLE_NAME")]
    connections_table_name: String,
    /// The WebSocket API stage's Management API endpoint.
    #[arg(long, env = "WEBSOCKET_ENDPOINT")]
    websocket_endpoint: String,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::try_parse()?;
    let aws = aws_config::load_from_env().await;
    let connections = DynamoConnectionStore::from_sdk_config(&aws, config.connections_table_name);
    let api = ManagementApi::new(&aws, &config.websocket_endpoint);
    let schema = api::schema::subscription_schema();
    let (schema, connections, api) = (&schema, &connections, &api);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            Ok::<_, lambda_runtime::Error>(
                api::gateway::notify(event.payload, schema, connections, api).await?,
            )
        },
    ))
    .await
}
