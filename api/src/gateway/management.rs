//! [`ManagementApi`]: the [`ConnectionSender`] on the API Gateway Management API.

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use serde_json::Value;

use super::{ConnectionSender, GatewayError};
use crate::sdk::error_text;

/// The API Gateway Management API of one WebSocket API stage: sends to and closes connections.
#[derive(Debug, Clone)]
pub struct ManagementApi {
    client: aws_sdk_apigatewaymanagement::Client,
}

impl ManagementApi {
    /// The Management API at `endpoint` (`https://<api>.execute-api.<region>.amazonaws.com/<stage>`).
    pub fn new(config: &aws_config::SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(config)
            .endpoint_url(endpoint)
            .build();
        Self {
            client: aws_sdk_apigatewaymanagement::Client::from_conf(config),
        }
    }

    /// The Management API endpoint of the stage a WebSocket request came through.
    pub fn endpoint_of(request: &ApiGatewayWebsocketProxyRequest) -> Option<String> {
        let context = &request.request_context;
        Some(format!(
            "https://{}/{}",
            context.domain_name.as_deref()?,
            context.stage.as_deref()?
        ))
    }
}

#[async_trait]
impl ConnectionSender for ManagementApi {
    async fn send(&self, connection_id: &str, message: &Value) -> Result<(), GatewayError> {
        let result = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(message.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => {
                Err(GatewayError::Gone)
            }
            Err(e) => Err(GatewayError::Management(error_text(e))),
        }
    }

    /// API Gateway sends no close code of ours: the protocol's codes are logged instead.
    async fn close(
        &self,
        connection_id: &str,
        code: u16,
        reason: &str,
    ) -> Result<(), GatewayError> {
        tracing::info!(connection_id, code, reason, "closing the connection");
        let result = self
            .client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => Ok(()),
            Err(e) => Err(GatewayError::Management(error_text(e))),
        }
    }
}
