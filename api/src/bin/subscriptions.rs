//! The `subscriptions` Lambda: `graphql-transport-ws` over API Gateway's WebSocket API.

use api::gateway::{DynamoConnectionStore, DynamoJournal, ManagementApi, Resume, SqsDeliveryQueue};
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};

/// Configuration, from the environment.
#[derive(Debug, Parser)]
struct Config {
    /// The connections table.
    #[arg(long, env = "CONNECTIONS_TABLE_NAME")]
    connections_table_name: String,
    /// The Management API endpoint; by default the one each request came through.
    #[arg(long, env = "WEBSOCKET_ENDPOINT")]
    websocket_endpoint: Option<String>,
    /// The journal of published events, which a subscription with `after` resumes from.
    #[arg(long, env = "JOURNAL_TABLE_NAME")]
    journal_table_name: String,
    /// The fan-out queue, whose message starts delivering to a subscription that resumed.
    #[arg(long, env = "FANOUT_QUEUE_URL")]
    fanout_queue_url: String,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let telemetry = &telemetry::Telemetry::lambda("subscriptions")?;
    let config = Config::try_parse()?;
    let aws = aws_config::load_from_env().await;
    let connections = DynamoConnectionStore::from_sdk_config(&aws, config.connections_table_name);
    let journal = DynamoJournal::new(
        aws_sdk_dynamodb::Client::new(&aws),
        config.journal_table_name,
    );
    let queue = SqsDeliveryQueue::from_sdk_config(&aws, config.fanout_queue_url);
    let resume = Resume {
        journal: &journal,
        ordered: &connections,
        queue: &queue,
    };
    // The local socket's limits, at their defaults (the schema's too).
    let schema = api::schema::subscription_schema();
    let limits = api::limits::connection::ConnectionLimits::default();
    let (aws, schema, connections, limits, fixed) = (
        &aws,
        &schema,
        &connections,
        &limits,
        &config.websocket_endpoint,
    );
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            let answer = async {
                let endpoint = fixed
                    .clone()
                    .or_else(|| ManagementApi::endpoint_of(&event.payload))
                    .ok_or("the request names no API Gateway domain and stage")?;
                let api = ManagementApi::new(aws, &endpoint);
                Ok::<_, lambda_runtime::Error>(
                    api::gateway::handle_message(
                        event.payload,
                        schema,
                        connections,
                        &api,
                        limits,
                        Some(resume),
                    )
                    .await?,
                )
            }
            .await;
            telemetry.flush().await;
            answer
        },
    ))
    .await
}
