//! The `processor` Lambda: DynamoDB stream batches in, journaled, EventBridge events out.

use aws_lambda_events::dynamodb::Event;
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use processor::{DynamoJournal, EventBridgePublisher, Journaled, SqsPoisonRecords};

/// Configuration, from the environment.
#[derive(Debug, Parser)]
struct Config {
    /// The event bus to publish to.
    #[arg(long, env = "EVENT_BUS_NAME", default_value = domain::event::DEFAULT_EVENT_BUS_NAME)]
    event_bus_name: String,
    /// The SQS queue that records the processor can never map are set aside in, whole.
    #[arg(long, env = "POISON_QUEUE_URL")]
    poison_queue_url: String,
    /// The journal table, where each event gets its position before it is published.
    #[arg(long, env = "JOURNAL_TABLE_NAME")]
    journal_table_name: String,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let telemetry = &telemetry::Telemetry::lambda("processor")?;
    processor::metrics::describe();
    let config = Config::try_parse()?;
    let aws = aws_config::load_from_env().await;
    let publisher = Journaled::new(
        DynamoJournal::new(
            aws_sdk_dynamodb::Client::new(&aws),
            config.journal_table_name,
        ),
        EventBridgePublisher::new(
            aws_sdk_eventbridge::Client::new(&aws),
            config.event_bus_name,
        ),
    );
    let poison = SqsPoisonRecords::new(aws_sdk_sqs::Client::new(&aws), config.poison_queue_url);
    let (publisher, poison) = (&publisher, &poison);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        let response = processor::handle_batch(event.payload, publisher, poison).await;
        telemetry.flush().await;
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}
