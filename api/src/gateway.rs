//! GraphQL subscriptions on AWS: `graphql-transport-ws` over an API Gateway WebSocket API.
//!
//! A Lambda cannot hold a WebSocket, so API Gateway holds it and calls the `subscriptions`
//! Lambda with each connect, message and disconnect ([`handle_message`]). A `subscribe` is
//! validated against the same schema the local server uses and stored, with its variables, in
//! the connections table ([`Connections`]). The `notifier` Lambda, a bus target like the
//! consumers, runs each stored subscription against each event with that schema
//! ([`notify`]) and posts the results through the API Gateway Management API
//! ([`ManagementApi`]). One subscription schema, two transports: the execution is
//! [`crate::subscriptions::run_against`] here, the live stream locally.

use std::collections::HashMap;

use async_graphql::parser::types::OperationType;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::ApiSchema;
use crate::events::{BookEvent, EventHub};
use crate::operation::operation_type;

/// The only WebSocket subprotocol spoken on AWS.
pub const PROTOCOL: &str = "graphql-transport-ws";
/// How long a connection's rows live: API Gateway ends every connection after two hours, so
/// rows older than that (plus a margin) belong to connections that were lost without a
/// `$disconnect`, and DynamoDB's TTL removes them.
pub const ROW_LIFETIME_SECS: i64 = 2 * 60 * 60 + 10 * 60;
/// The most subscriptions one notifier invocation serves.
pub const MAX_SUBSCRIPTIONS_PER_EVENT: usize = 1000;

/// Why a connections-table or Management-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// DynamoDB failed.
    #[error("connections table: {0}")]
    Table(String),
    /// The connection is gone (API Gateway answered 410).
    #[error("the connection is gone")]
    Gone,
    /// The Management API failed otherwise.
    #[error("management API: {0}")]
    Management(String),
    /// The event is not one the notifier understands.
    #[error("malformed event: {0}")]
    MalformedEvent(String),
}

/// A subscription as stored: which connection, which id, and the request to run.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubscription {
    /// The API Gateway connection id.
    pub connection_id: String,
    /// The client's id for the subscription.
    pub id: String,
    /// The document.
    pub query: String,
    /// The variables, as JSON.
    pub variables: Value,
    /// The operation to run, when the document has several.
    pub operation_name: Option<String>,
}

impl StoredSubscription {
    fn request(&self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(&self.query)
            .variables(async_graphql::Variables::from_json(self.variables.clone()));
        if let Some(name) = &self.operation_name {
            request = request.operation_name(name);
        }
        request
    }
}

/// The connections table: per connection one `connection` row (is it initialised?) and one
/// `sub#<id>` row per subscription, all expiring by TTL.
#[derive(Debug, Clone)]
pub struct Connections {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const CONNECTION_ROW: &str = "connection";
const SUBSCRIPTION_PREFIX: &str = "sub#";

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn table_error<
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
>(
    error: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> GatewayError {
    GatewayError::Table(DisplayErrorContext(error).to_string())
}

fn text<'a>(row: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    row.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

impl Connections {
    /// The table named `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn expires_at() -> AttributeValue {
        AttributeValue::N((chrono::Utc::now().timestamp() + ROW_LIFETIME_SECS).to_string())
    }

    /// Records a new connection, not yet initialised.
    pub async fn open(&self, connection_id: &str) -> Result<(), GatewayError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("connectionId", s(connection_id))
            .item("sk", s(CONNECTION_ROW))
            .item("initialized", AttributeValue::Bool(false))
            .item("expiresAt", Self::expires_at())
            .send()
            .await
            .map_err(table_error)?;
        Ok(())
    }

    /// Marks the connection initialised; false when it already was (a second
    /// `connection_init`, which the protocol forbids).
    pub async fn initialize(&self, connection_id: &str) -> Result<bool, GatewayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .update_expression(
                "SET initialized = :yes, expiresAt = if_not_exists(expiresAt, :expires)",
            )
            .condition_expression("attribute_not_exists(initialized) OR initialized = :no")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":expires", Self::expires_at())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(table_error(e)),
        }
    }

    /// Whether the connection has sent its `connection_init`.
    pub async fn is_initialized(&self, connection_id: &str) -> Result<bool, GatewayError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .consistent_read(true)
            .send()
            .await
            .map_err(table_error)?;
        Ok(output
            .item
            .and_then(|row| {
                row.get("initialized")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
            })
            .unwrap_or(false))
    }

    /// Stores a subscription; false when the connection already has one with this id.
    pub async fn add(&self, subscription: &StoredSubscription) -> Result<bool, GatewayError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("connectionId", s(&subscription.connection_id))
            .item("sk", s(format!("{SUBSCRIPTION_PREFIX}{}", subscription.id)))
            .item("subscriptionId", s(&subscription.id))
            .item("query", s(&subscription.query))
            .item("variables", s(subscription.variables.to_string()))
            .item("expiresAt", Self::expires_at())
            .condition_expression("attribute_not_exists(sk)");
        if let Some(name) = &subscription.operation_name {
            put = put.item("operationName", s(name));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(table_error(e)),
        }
    }

    /// Removes one subscription (`complete`).
    pub async fn remove(&self, connection_id: &str, id: &str) -> Result<(), GatewayError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(format!("{SUBSCRIPTION_PREFIX}{id}")))
            .send()
            .await
            .map_err(table_error)?;
        Ok(())
    }

    /// Removes the connection and all its subscriptions.
    pub async fn close(&self, connection_id: &str) -> Result<(), GatewayError> {
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("connectionId = :id")
                .expression_attribute_values(":id", s(connection_id))
                .projection_expression("connectionId, sk")
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(table_error)?;
            for chunk in output.items().chunks(25) {
                let deletes = chunk
                    .iter()
                    .map(|key| {
                        let delete = DeleteRequest::builder()
                            .set_key(Some(key.clone()))
                            .build()
                            .map_err(|e| GatewayError::Table(e.to_string()))?;
                        Ok(WriteRequest::builder().delete_request(delete).build())
                    })
                    .collect::<Result<Vec<_>, GatewayError>>()?;
                self.client
                    .batch_write_item()
                    .request_items(&self.table, deletes)
                    .send()
                    .await
                    .map_err(table_error)?;
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(());
            }
        }
    }

    /// Up to `limit` stored subscriptions, of every connection.
    pub async fn subscriptions(
        &self,
        limit: usize,
    ) -> Result<Vec<StoredSubscription>, GatewayError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(SUBSCRIPTION_PREFIX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(table_error)?;
            for row in output.items() {
                let (Some(connection_id), Some(id), Some(query)) = (
                    text(row, "connectionId"),
                    text(row, "subscriptionId"),
                    text(row, "query"),
                ) else {
                    tracing::warn!(?row, "skipping a malformed subscription row");
                    continue;
                };
                found.push(StoredSubscription {
                    connection_id: connection_id.to_owned(),
                    id: id.to_owned(),
                    query: query.to_owned(),
                    variables: text(row, "variables")
                        .and_then(|v| serde_json::from_str(v).ok())
                        .unwrap_or(Value::Null),
                    operation_name: text(row, "operationName").map(str::to_owned),
                });
                if found.len() >= limit {
                    tracing::warn!(limit, "more subscriptions than one invocation serves");
                    return Ok(found);
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}

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

    /// The endpoint a WebSocket request came through, or `override_url` when given (an
    /// emulator, in tests).
    pub fn endpoint_of(request: &ApiGatewayWebsocketProxyRequest) -> Option<String> {
        let context = &request.request_context;
        Some(format!(
            "https://{}/{}",
            context.domain_name.as_deref()?,
            context.stage.as_deref()?
        ))
    }

    /// Sends one protocol message.
    pub async fn send(&self, connection_id: &str, message: &Value) -> Result<(), GatewayError> {
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
            Err(e) => Err(GatewayError::Management(DisplayErrorContext(e).to_string())),
        }
    }

    /// Closes a connection (API Gateway sends no close code of ours: the protocol's codes are
    /// logged instead).
    pub async fn close(
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
            Err(e) => Err(GatewayError::Management(DisplayErrorContext(e).to_string())),
        }
    }
}

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
    connections: &Connections,
    api: &ManagementApi,
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
    connections: &Connections,
    api: &ManagementApi,
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
    connections: &Connections,
    api: &ManagementApi,
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

/// Runs a subscription request against exactly `events`: the GraphQL responses it yields (none
/// when its filters keep none of them; one with errors when the document is not a valid
/// subscription). Request data comes before schema data, so this hub is the one it sees.
pub async fn run_against(
    schema: &crate::ApiSchema,
    request: async_graphql::Request,
    events: Vec<BookEvent>,
) -> Vec<async_graphql::Response> {
    schema
        .execute_stream(request.data(EventHub::replay(events)))
        .collect()
        .await
}

/// What one notification did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Notified {
    /// `next` messages posted.
    pub sent: usize,
    /// Connections found gone and removed.
    pub gone: usize,
    /// Posts that failed otherwise (logged; the other subscribers were still served).
    pub failed: usize,
}

/// Runs every stored subscription against one bus event and posts the results. A gone
/// connection is removed; any other failure for one connection is logged and the rest are
/// still served.
pub async fn notify(
    event: EventBridgeEvent<Value>,
    schema: &ApiSchema,
    connections: &Connections,
    api: &ManagementApi,
) -> Result<Notified, GatewayError> {
    let book_event = BookEvent::from_eventbridge(event)
        .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
    let event_id = book_event.event_id.clone();

    let mut notified = Notified::default();
    let mut gone: Vec<String> = Vec::new();
    for subscription in connections
        .subscriptions(MAX_SUBSCRIPTIONS_PER_EVENT)
        .await?
    {
        if gone.contains(&subscription.connection_id) {
            continue;
        }
        for response in run_against(schema, subscription.request(), vec![book_event.clone()]).await
        {
            let message = json!({"type": "next", "id": subscription.id, "payload": response});
            match api.send(&subscription.connection_id, &message).await {
                Ok(()) => notified.sent += 1,
                Err(GatewayError::Gone) => {
                    gone.push(subscription.connection_id.clone());
                    break;
                }
                Err(error) => {
                    tracing::warn!(%event_id, connection_id = %subscription.connection_id, %error, "could not notify a subscriber");
                    notified.failed += 1;
                }
            }
        }
    }
    for connection_id in &gone {
        if let Err(error) = connections.close(connection_id).await {
            tracing::warn!(%connection_id, %error, "could not remove a gone connection");
        }
    }
    notified.gone = gone.len();
    tracing::info!(%event_id, sent = notified.sent, gone = notified.gone, failed = notified.failed, "subscribers notified");
    Ok(notified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscription_runs_against_a_replayed_event_with_its_filters() {
        let schema = crate::schema::subscription_schema();
        let event = crate::tests_support::event;
        let run = |query: &str| {
            let schema = schema.clone();
            let request = async_graphql::Request::new(query);
            async move {
                let responses = run_against(&schema, request, vec![event("e1")]).await;
                serde_json::to_value(responses).unwrap()
            }
        };
        assert_eq!(
            run("subscription { bookEvents { eventId type bookName } }").await,
            serde_json::json!([{"data": {"bookEvents": {"eventId": "e1", "type": "ADDED", "bookName": "Dune"}}}])
        );
        assert_eq!(
            run("subscription { bookEvents(types: [REMOVED]) { eventId } }").await,
            serde_json::json!([])
        );
        let invalid = run("subscription { bookEvents { nope } }").await;
        assert_eq!(
            invalid[0]["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
            "{invalid}"
        );
    }
}
