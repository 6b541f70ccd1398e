//! The `notifier` Lambda: runs the stored subscriptions against each bus event. Invoked by the
//! bus rule with the event, and by the fan-out queue's event source mapping with batches of
//! deliveries the first invocation left to others: one function, told apart by the event.

use std::num::{NonZeroU32, NonZeroUsize};

use std::time::Duration;

use api::gateway::{
    DynamoConnectionStore, DynamoJournal, FanoutOptions, ManagementApi, Notifier, Pump,
    SqsDeliveryQueue,
};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::SqsEvent;
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
    /// The fan-out queue's URL.
    #[arg(long, env = "FANOUT_QUEUE_URL")]
    fanout_queue_url: String,
    /// The journal of published events, delivered to the subscriptions that resumed.
    #[arg(long, env = "JOURNAL_TABLE_NAME")]
    journal_table_name: String,
    /// Posts in flight at once, per invocation.
    #[arg(long, env = "NOTIFIER_CONCURRENCY", default_value = "64")]
    concurrency: NonZeroUsize,
    /// Deliveries per queued batch.
    #[arg(long, env = "FANOUT_BATCH_SIZE", default_value = "250")]
    batch_size: NonZeroUsize,
    /// Rows per page of the index: each invocation reads at most one page of each partition, so
    /// this bounds an invocation's read whatever the rows' sizes (DynamoDB's own bound is 1 MB a
    /// page, some 4,700 subscriptions, which moto takes over 30 s to read; see BENCHMARKS.md).
    #[arg(long, env = "INDEX_PAGE_SIZE", default_value = "1000")]
    index_page_size: NonZeroU32,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let telemetry = &telemetry::Telemetry::lambda("notifier")?;
    api::metrics::describe();
    let config = Config::try_parse()?;
    let aws = aws_config::load_from_env().await;
    let connections = DynamoConnectionStore::from_sdk_config(&aws, config.connections_table_name)
        .with_page_size(i32::try_from(config.index_page_size.get()).unwrap_or(i32::MAX));
    let api = ManagementApi::new(&aws, &config.websocket_endpoint);
    let queue = SqsDeliveryQueue::from_sdk_config(&aws, config.fanout_queue_url);
    let schema = api::schema::subscription_schema();
    let journal = DynamoJournal::new(
        aws_sdk_dynamodb::Client::new(&aws),
        config.journal_table_name,
    );
    // A third of the function's 30 s timeout (template.yaml) per pump, then a queued message
    // goes on: far from the timeout, and from the lease's minute.
    let pump = Pump {
        schema: &schema,
        journal: &journal,
        ordered: &connections,
        connections: &connections,
        api: &api,
        queue: &queue,
        budget: Duration::from_secs(10),
    };
    let notifier = Notifier {
        schema: &schema,
        connections: &connections,
        api: &api,
        queue: &queue,
        options: FanoutOptions {
            concurrency: config.concurrency.get(),
            batch_size: config.batch_size.get(),
        },
        pump: Some(pump),
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let answer = async {
            // An SQS event is `{"Records": [...]}`; an EventBridge event has none.
            if event.payload.get("Records").is_some() {
                let batch: SqsEvent = serde_json::from_value(event.payload)?;
                Ok::<_, lambda_runtime::Error>(serde_json::to_value(notifier.deliver(batch).await)?)
            } else {
                let event: EventBridgeEvent<Value> = serde_json::from_value(event.payload)?;
                Ok(serde_json::to_value(notifier.notify(event).await?)?)
            }
        }
        .await;
        telemetry.flush().await;
        answer
    }))
    .await
}
