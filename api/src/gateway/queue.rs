//! [`SqsDeliveryQueue`]: the [`DeliveryQueue`] on an SQS queue that invokes the notifier.

use async_trait::async_trait;

use super::{DeliveryQueue, FanoutMessage, GatewayError};
use crate::sdk::error_text;

/// The fan-out queue (`template.yaml`, FanoutQueue): each message one [`FanoutMessage`] as
/// JSON, and the queue's event source mapping invokes the notifier with them.
#[derive(Debug, Clone)]
pub struct SqsDeliveryQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsDeliveryQueue {
    /// The queue at `url`, through the SQS client of this SDK configuration.
    pub fn from_sdk_config(config: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            url: url.into(),
        }
    }
}

#[async_trait]
impl DeliveryQueue for SqsDeliveryQueue {
    async fn enqueue(&self, message: &FanoutMessage, delay_secs: u32) -> Result<(), GatewayError> {
        let body =
            serde_json::to_string(message).map_err(|e| GatewayError::Queue(e.to_string()))?;
        // SQS delays a message by at most 15 minutes
        // (<https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html>).
        let delay = i32::try_from(delay_secs.min(900)).unwrap_or(900);
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay)
            .send()
            .await
            .map_err(|e| GatewayError::Queue(error_text(e)))?;
        Ok(())
    }
}
