//! The `graphql-transport-ws` protocol over API Gateway's WebSocket API: one invocation per
//! connect, message and disconnect, its state kept in a [`ConnectionStore`].

use async_graphql::parser::types::OperationType;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use serde_json::{Value, json};

use super::{
    ConnectionSender, ConnectionStore, GatewayError, PROTOCOL, StoredSubscription, run_against,
};
use crate::ApiSchema;
use crate::operation::operation_type;

fn respond(status: i64) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status;
    response
}

/// Handles one WebSocket route invocation: `$connect`, `$disconnect` or a message (`$default`).
///
/// Errors of the client's making are answered in the protocol (an `error` message, or closing
/// the connection); only failures of the table or the Management API are errors here, so that
/// API Gateway tells the client the message failed.
pub async fn handle_message(
    request: ApiGatewayWebsocketProxyRequest,
    schema: &ApiSchema,
    connections: &dyn ConnectionStore,
    api: &dyn ConnectionSender,
) -> Result<ApiGatewayProxyResponse, GatewayError> {
    let context = &request.request_context;
    let Some(connection_id) = context.connection_id.clone() else {
        return Ok(respond(400));
    };
    match context.route_key.as_deref() {
        Some("$connect") => {
            let offered = request
                .headers
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|p| p.trim() == PROTOCOL);
            if !offered {
                tracing::info!(%connection_id, "refusing a connection without the {PROTOCOL} subprotocol");
                return Ok(respond(400));
            }
            connections.open(&connection_id).await?;
            let mut response = respond(200);
            response.headers.insert(
                "sec-websocket-protocol",
                PROTOCOL
                    .parse()
                    .map_err(|_| GatewayError::Management("header".into()))?,
            );
            Ok(response)
        }
        Some("$disconnect") => {
            connections.close(&connection_id).await?;
            Ok(respond(200))
        }
        _ => {
            let body = request.body.as_deref().unwrap_or_default();
            on_message(&connection_id, body, schema, connections, api).await?;
            Ok(respond(200))
        }
    }
}

async fn on_message(
    connection_id: &str,
    body: &str,
    schema: &ApiSchema,
    connections: &dyn ConnectionStore,
    api: &dyn ConnectionSender,
) -> Result<(), GatewayError> {
    let Ok(message) = serde_json::from_str::<Value>(body) else {
        return api
            .close(connection_id, 4400, "Invalid message received")
            .await;
    };
    match message["type"].as_str() {
        Some("connection_init") => {
            // The place for authentication: read a credential from message["payload"] and
            // close with 4403 when it does not hold.
            if connections.initialize(connection_id).await? {
                api.send(connection_id, &json!({"type": "connection_ack"}))
                    .await
            } else {
                api.close(connection_id, 4429, "Too many initialisation requests")
                    .await
            }
        }
        Some("ping") => api.send(connection_id, &json!({"type": "pong"})).await,
        Some("pong") => Ok(()),
        Some("subscribe") => subscribe(connection_id, &message, schema, connections, api).await,
        Some("complete") => match message["id"].as_str() {
            Some(id) => connections.remove(connection_id, id).await,
            None => {
                api.close(connection_id, 4400, "complete without an id")
                    .await
            }
        },
        _ => {
            api.close(connection_id, 4400, "Invalid message received")
                .await
        }
    }
}

async fn subscribe(
    connection_id: &str,
    message: &Value,
    schema: &ApiSchema,
    connections: &dyn ConnectionStore,
    api: &dyn ConnectionSender,
) -> Result<(), GatewayError> {
    let (Some(id), Some(query)) = (message["id"].as_str(), message["payload"]["query"].as_str())
    else {
        return api
            .close(connection_id, 4400, "subscribe needs an id and a query")
            .await;
    };
    if !connections.is_initialized(connection_id).await? {
        return api.close(connection_id, 4401, "Unauthorized").await;
    }
    let subscription = StoredSubscription {
        connection_id: connection_id.to_owned(),
        id: id.to_owned(),
        query: query.to_owned(),
        variables: message["payload"]["variables"].clone(),
        operation_name: message["payload"]["operationName"]
            .as_str()
            .map(str::to_owned),
    };
    if operation_of(&subscription).is_some_and(|ty| ty != OperationType::Subscription) {
        let error = json!([{"message": "only subscriptions are served over this socket; use /graphql for queries and mutations", "extensions": {"code": "BAD_REQUEST"}}]);
        return api
            .send(
                connection_id,
                &json!({"type": "error", "id": id, "payload": error}),
            )
            .await;
    }
    // Checked with the very schema that will run it, against no events: a document that does
    // not parse or validate answers with its errors right away.
    let errors: Vec<Value> = run_against(schema, subscription.request(), Vec::new())
        .await
        .into_iter()
        .flat_map(|response| response.errors)
        .map(|error| serde_json::to_value(error).unwrap_or_default())
        .collect();
    if !errors.is_empty() {
        return api
            .send(
                connection_id,
                &json!({"type": "error", "id": id, "payload": errors}),
            )
            .await;
    }
    if connections.add(&subscription).await? {
        tracing::info!(connection_id, id, "subscribed");
        Ok(())
    } else {
        api.close(
            connection_id,
            4409,
            &format!("Subscriber for {id} already exists"),
        )
        .await
    }
}

/// The type of the operation a subscribe would run; `None` when the document does not parse or
/// names no operation (validation then says why).
fn operation_of(subscription: &StoredSubscription) -> Option<OperationType> {
    let document = async_graphql::parser::parse_query(&subscription.query).ok()?;
    operation_type(&document, subscription.operation_name.as_deref())
}
