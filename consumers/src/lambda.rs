//! A consumer as a Lambda (feature `aws`): its configuration, its DynamoDB store, and what
//! Lambda reports when it fails.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::Value;

use crate::dynamo::DynamoActivityStore;
use crate::{Consumer, ConsumerError, Recorded};

/// What Lambda reports for a failed invocation: the kind of failure and its message.
impl From<ConsumerError> for lambda_runtime::Diagnostic {
    fn from(error: ConsumerError) -> Self {
        let error_type = match &error {
            ConsumerError::UnexpectedEvent { .. } => "UnexpectedEvent",
            ConsumerError::MalformedDetail(_) => "MalformedDetail",
            ConsumerError::Store(_) => "ActivityStoreFailed",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Configuration of a consumer Lambda, from the environment.
#[derive(Debug, clap::Parser)]
struct LambdaConfig {
    /// The activity table.
    #[arg(long, env = "ACTIVITY_TABLE_NAME")]
    activity_table_name: String,
}

/// Runs `consumer` as a Lambda on EventBridge events: reads its configuration, builds the
/// DynamoDB client once, and serves invocations. An error fails the invocation, so Lambda
/// retries it and finally sends it to the function's on-failure destination.
pub async fn run(consumer: Consumer) -> Result<(), lambda_runtime::Error> {
    use clap::Parser as _;
    let telemetry = &telemetry::Telemetry::lambda(consumer.name)?;
    crate::metrics::describe();
    let config = LambdaConfig::try_parse()?;
    let client = aws_sdk_dynamodb::Client::new(&aws_config::load_from_env().await);
    let store = DynamoActivityStore::new(client, config.activity_table_name);
    let store = &store;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<EventBridgeEvent<Value>>| async move {
            let handled = consumer.handle(event.payload, store).await;
            telemetry.flush().await;
            handled.map(|recorded| serde_json::json!({"recorded": recorded == Recorded::New}))
        },
    ))
    .await
}
