//! An event bus on the emulator with the template's rules, each targeting an SQS queue, so a
//! test can read what each rule delivered.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use crate::moto::unique;
use crate::template;

/// Creates a queue named `name`; returns its URL and ARN (what a rule target names).
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await?
        .queue_url
        .ok_or_else(|| anyhow::anyhow!("no queue url"))?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| anyhow::anyhow!("no queue arn"))?;
    Ok((url, arn))
}

/// A bus whose rules come from `template.yaml`.
#[derive(Debug)]
pub struct TemplateBus {
    /// The bus name.
    pub name: String,
    /// EventBridge, for publishing.
    pub events: aws_sdk_eventbridge::Client,
    sqs: aws_sdk_sqs::Client,
    queues: HashMap<String, String>,
}

impl TemplateBus {
    /// Creates a bus and, for each rule logical id, the rule (with the template's pattern) and a
    /// queue it targets.
    pub async fn create(config: &SdkConfig, rules: &[&str]) -> anyhow::Result<Self> {
        let events = aws_sdk_eventbridge::Client::new(config);
        let sqs = aws_sdk_sqs::Client::new(config);
        let name = unique("bus");
        events.create_event_bus().name(&name).send().await?;
        let mut queues = HashMap::new();
        for rule in rules {
            let pattern = template::rule_pattern(rule)?;
            let (queue_url, queue_arn) = create_queue(&sqs, &unique(rule)).await?;
            let rule_name = unique(rule);
            events
                .put_rule()
                .name(&rule_name)
                .event_bus_name(&name)
                .event_pattern(pattern.to_string())
                .send()
                .await?;
            events
                .put_targets()
                .rule(&rule_name)
                .event_bus_name(&name)
                .targets(Target::builder().id("queue").arn(queue_arn).build()?)
                .send()
                .await?;
            queues.insert((*rule).to_owned(), queue_url);
        }
        Ok(Self {
            name,
            events,
            sqs,
            queues,
        })
    }

    /// Takes every event the rule has delivered since the last call, in order.
    pub async fn delivered(&self, rule: &str) -> anyhow::Result<Vec<Value>> {
        let queue = self
            .queues
            .get(rule)
            .ok_or_else(|| anyhow::anyhow!("no queue for {rule}"))?;
        let mut events = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .send()
                .await?;
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(events);
            }
            for message in messages {
                events.push(serde_json::from_str(message.body().unwrap_or("null"))?);
                if let Some(receipt) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(queue)
                        .receipt_handle(receipt)
                        .send()
                        .await?;
                }
            }
        }
    }
}
