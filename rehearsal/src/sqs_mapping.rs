//! Lambda's event source mapping for an SQS queue, as AWS documents it: pollers receive
//! batches of messages and invoke the function synchronously with each; what the function
//! handled is deleted, the rest becomes visible again when its visibility timeout ends, and
//! SQS itself (here moto, which implements the queue's `RedrivePolicy`) moves a message
//! received `maxReceiveCount` times to the queue's dead-letter queue.
//!
//! The pages this follows (each rule below names its own):
//! - Using Lambda with Amazon SQS — polling, batching, the event:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html>
//! - Creating and configuring the mapping (batch size, window, visibility timeout):
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html>
//! - Scaling and maximum concurrency:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html>
//! - Errors and partial batch responses:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>
//!
//! Not emulated (refused when the template asks for them): FIFO queues, batching windows,
//! batches over 10, filter criteria. Scaling is emulated as its ceiling: `MaximumConcurrency`
//! pollers from the start (AWS starts with five and adds more while messages wait).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lambda::{Invocation, Invoke};
use crate::resources::Created;
use crate::template::Template;

/// "By default, Lambda … sends a batch of up to 10 messages"; a standard queue's batch may be
/// larger only with a batching window (services-sqs-configure above), not emulated here.
const DEFAULT_BATCH_SIZE: i32 = 10;
const MAX_BATCH_WITHOUT_WINDOW: i32 = 10;
/// "When messages are available, Lambda starts processing five batches at a time with five
/// concurrent invocations" (services-sqs-scaling above): the concurrency without a
/// `MaximumConcurrency`.
const DEFAULT_CONCURRENCY: usize = 5;
/// "Lambda uses long polling" (with-sqs above); 20 s is SQS's longest wait.
const LONG_POLL_SECS: i32 = 20;

/// One SQS event source mapping's settings, from a function's `Type: SQS` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsMappingSettings {
    /// The function's logical id.
    pub function: String,
    /// The event's name under `Events`.
    pub event: String,
    /// The queue's URL.
    pub queue_url: String,
    /// The queue's ARN (each record's `eventSourceARN`).
    pub queue_arn: String,
    /// Messages per invocation, at most.
    pub batch_size: i32,
    /// Invocations at once, at most (`ScalingConfig.MaximumConcurrency`).
    pub maximum_concurrency: usize,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`: the function answers which
    /// messages failed.
    pub report_batch_item_failures: bool,
    /// The Region (each record's `awsRegion`).
    pub region: String,
}

impl SqsMappingSettings {
    /// Every `Type: SQS` event of every function in the template.
    pub fn all_from_template(template: &Template, created: &Created) -> anyhow::Result<Vec<Self>> {
        let mut found = Vec::new();
        for function in template.resources_of_type("AWS::Serverless::Function") {
            let Some(events) = template.properties(&function)["Events"].as_mapping() else {
                continue;
            };
            for (name, event) in events {
                if event["Type"].as_str() != Some("SQS") {
                    continue;
                }
                let name = name.as_str().context("an event name")?.to_owned();
                let properties = template.resolve(&event["Properties"], created.names())?;
                found.push(Self::from_properties(
                    &function,
                    &name,
                    &properties,
                    created,
                )?);
            }
        }
        Ok(found)
    }

    fn from_properties(
        function: &str,
        event: &str,
        properties: &Value,
        created: &Created,
    ) -> anyhow::Result<Self> {
        let at = format!("{function}.Events.{event}");
        let queue_arn = properties["Queue"]
            .as_str()
            .with_context(|| format!("{at}: no Queue"))?
            .to_owned();
        let queue_url = created
            .queue_by_arn(&queue_arn)
            .map(|q| q.url.clone())
            .with_context(|| format!("{at}: {queue_arn} is not a queue of the template"))?;
        for unsupported in ["FilterCriteria", "ProvisionedPollerConfig"] {
            if !properties[unsupported].is_null() {
                bail!("{at}: the rehearsal does not emulate {unsupported}");
            }
        }
        if properties["MaximumBatchingWindowInSeconds"]
            .as_i64()
            .is_some_and(|w| w > 0)
        {
            bail!("{at}: the rehearsal does not emulate a batching window");
        }
        if queue_arn.ends_with(".fifo") {
            bail!("{at}: the rehearsal does not emulate FIFO queues");
        }
        let batch_size = match properties["BatchSize"].as_i64() {
            None => DEFAULT_BATCH_SIZE,
            Some(n) if (1..=i64::from(MAX_BATCH_WITHOUT_WINDOW)).contains(&n) => i32::try_from(n)?,
            Some(n) => bail!("{at}: BatchSize {n} needs a batching window (not emulated)"),
        };
        // MaximumConcurrency is 2 to 1,000
        // (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-lambda-eventsourcemapping-scalingconfig.html).
        let maximum_concurrency = match properties["ScalingConfig"]["MaximumConcurrency"].as_i64() {
            None => DEFAULT_CONCURRENCY,
            Some(n) if (2..=1000).contains(&n) => usize::try_from(n)?,
            Some(n) => bail!("{at}: MaximumConcurrency {n} is not 2 to 1,000"),
        };
        let report_batch_item_failures = properties["FunctionResponseTypes"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "ReportBatchItemFailures"));
        Ok(Self {
            function: function.to_owned(),
            event: event.to_owned(),
            queue_url,
            queue_arn,
            batch_size,
            maximum_concurrency,
            report_batch_item_failures,
            region: crate::resources::REGION.to_owned(),
        })
    }
}

/// A running SQS event source mapping. Stops when its shutdown token is cancelled.
#[derive(Debug)]
pub struct SqsMapping {
    pollers: JoinSet<()>,
    in_flight: Arc<AtomicUsize>,
}

impl SqsMapping {
    /// How many invocations are running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits for the pollers to stop (after the shutdown token is cancelled).
    pub async fn join(mut self) {
        while self.pollers.join_next().await.is_some() {}
    }
}

/// Starts `settings.maximum_concurrency` pollers of the queue, each invoking `target` with
/// one batch at a time, until `shutdown`.
pub fn start(
    settings: SqsMappingSettings,
    sqs: aws_sdk_sqs::Client,
    target: Arc<dyn Invoke>,
    shutdown: CancellationToken,
) -> SqsMapping {
    let settings = Arc::new(settings);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut pollers = JoinSet::new();
    for _ in 0..settings.maximum_concurrency {
        let (settings, sqs, target, shutdown, in_flight) = (
            Arc::clone(&settings),
            sqs.clone(),
            Arc::clone(&target),
            shutdown.clone(),
            Arc::clone(&in_flight),
        );
        pollers.spawn(async move {
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = receive(&sqs, &settings) => received,
                };
                let messages = match received {
                    Ok(messages) => messages,
                    Err(error) => {
                        tracing::warn!(queue = %settings.queue_url, "{error:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if messages.is_empty() {
                    continue;
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                let handled = invoke(&settings, target.as_ref(), &messages).await;
                if let Err(error) = delete(&sqs, &settings, &messages, &handled).await {
                    tracing::warn!(queue = %settings.queue_url, "{error:#}");
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
    SqsMapping { pollers, in_flight }
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    settings: &SqsMappingSettings,
) -> anyhow::Result<Vec<Message>> {
    let output = sqs
        .receive_message()
        .queue_url(&settings.queue_url)
        .max_number_of_messages(settings.batch_size)
        .wait_time_seconds(LONG_POLL_SECS)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .context("ReceiveMessage")?;
    Ok(output.messages.unwrap_or_default())
}

/// One message as the mapping hands it to the function (with-sqs above, "Example Amazon SQS
/// message event").
pub fn lambda_record(message: &Message, queue_arn: &str, region: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    })
}

/// Invokes the function with one batch; returns the message ids it handled.
///
/// A function error fails the whole batch: "all messages in that batch become visible in the
/// queue again". With ReportBatchItemFailures, the messages the response names failed, and a
/// response Lambda cannot read (an item failure whose `itemIdentifier` is empty, missing or not
/// a message of the batch) fails the whole batch too; an empty or null list, or no response,
/// is a complete success (services-sqs-errorhandling above).
async fn invoke(
    settings: &SqsMappingSettings,
    target: &dyn Invoke,
    messages: &[Message],
) -> HashSet<String> {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| lambda_record(m, &settings.queue_arn, &settings.region))
        .collect();
    let ids: HashSet<String> = messages
        .iter()
        .filter_map(|m| m.message_id().map(str::to_owned))
        .collect();
    let response = match target.invoke(json!({ "Records": records })).await {
        Invocation::FunctionError(error) => {
            tracing::info!(function = %settings.function, %error, "the batch failed whole");
            return HashSet::new();
        }
        Invocation::Response(response) => response,
    };
    if !settings.report_batch_item_failures {
        return ids;
    }
    let failures = match &response {
        Value::Null => return ids,
        Value::Object(object) => match object.get("batchItemFailures") {
            None | Some(Value::Null) => return ids,
            Some(Value::Array(failures)) => failures,
            Some(_) => return HashSet::new(),
        },
        _ => return ids,
    };
    let mut failed = HashSet::new();
    for failure in failures {
        match failure["itemIdentifier"].as_str() {
            Some(id) if ids.contains(id) => {
                failed.insert(id.to_owned());
            }
            _ => return HashSet::new(), // unreadable: the whole batch failed
        }
    }
    ids.difference(&failed).cloned().collect()
}

/// Deletes the handled messages; the others wait out their visibility timeout.
async fn delete(
    sqs: &aws_sdk_sqs::Client,
    settings: &SqsMappingSettings,
    messages: &[Message],
    handled: &HashSet<String>,
) -> anyhow::Result<()> {
    for message in messages {
        if !message.message_id().is_some_and(|id| handled.contains(id)) {
            continue;
        }
        let Some(receipt) = message.receipt_handle() else {
            continue;
        };
        sqs.delete_message()
            .queue_url(&settings.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .context("DeleteMessage")?;
    }
    Ok(())
}
