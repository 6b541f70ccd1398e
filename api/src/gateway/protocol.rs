//! The `graphql-transport-ws` protocol over API Gateway's WebSocket API: one invocation per
//! connect, message and disconnect, its state kept in a [`ConnectionStore`].

use async_graphql::parser::types::OperationType;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use serde_json::{Value, json};

use futures_util::StreamExt;

use super::{
    Added, ConnectionSender, ConnectionStore, DeliveryQueue, FanoutMessage, GatewayError, Journal,
    OrderedSubscriptions, PROTOCOL, PumpMessage, StoredSubscription, SubscriptionKey, detail_types,
};
use crate::events::{EventHub, parse_cursor};
use crate::limits::connection::{self, ConnectionLimits, INVALID_SUBSCRIPTION_ID};
use crate::operation::operation_type;
use crate::{ApiError, ApiSchema};

fn respond(status: i64) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status;
    response
}

/// What resuming a subscription after a cursor takes: the journal the cursor is checked
/// against, where subscriptions that resumed are kept, and the queue whose message starts
/// delivering to one ([`Pump`](super::Pump)). Without it, `after` is refused (`UNAVAILABLE`).
#[derive(Clone, Copy)]
pub struct Resume<'a> {
    /// The journal of published events.
    pub journal: &'a dyn Journal,
    /// The subscriptions that resumed.
    pub ordered: &'a dyn OrderedSubscriptions,
    /// The fan-out queue.
    pub queue: &'a dyn DeliveryQueue,
}

impl std::fmt::Debug for Resume<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume").finish_non_exhaustive()
    }
}

/// Handles one WebSocket route invocation: `$connect`, `$disconnect` or a message (`$default`).
///
/// Errors of the client's making are answered in the protocol (an `error` message, or closing
/// the connection); only failures of the table or the Management API are errors here, so that
/// API Gateway tells the client the message failed. The connection is held to `limits` as the
/// local socket holds it: every message takes a token from its bucket, a subscribe needs a
/// valid id and a free place.
pub async fn handle_message(
    request: ApiGatewayWebsocketProxyRequest,
    schema: &ApiSchema,
    connections: &dyn ConnectionStore,
    api: &dyn ConnectionSender,
    limits: &ConnectionLimits,
    resume: Option<Resume<'_>>,
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
            let client = Client {
                connection_id: &connection_id,
                schema,
                connections,
                api,
                limits,
                resume,
            };
            client.on_message(body).await?;
            Ok(respond(200))
        }
    }
}

/// One message's connection and what handling it needs.
struct Client<'a> {
    connection_id: &'a str,
    schema: &'a ApiSchema,
    connections: &'a dyn ConnectionStore,
    api: &'a dyn ConnectionSender,
    limits: &'a ConnectionLimits,
    resume: Option<Resume<'a>>,
}

impl Client<'_> {
    async fn on_message(&self, body: &str) -> Result<(), GatewayError> {
        let message = serde_json::from_str::<Value>(body);
        let rate = self.limits.rate;
        let now = connection::now_ms();
        if !self
            .connections
            .take_token(self.connection_id, rate, now)
            .await?
        {
            // The protocol can answer a refused subscribe; other messages have no answer.
            return match message {
                Ok(message) if message["type"] == "subscribe" => match message["id"].as_str() {
                    Some(id) => {
                        let error = ApiError::RateLimited(rate.per_sec, rate.burst);
                        self.error(id, &error).await
                    }
                    None => Ok(()),
                },
                _ => Ok(()),
            };
        }
        let Ok(message) = message else {
            return self.close(4400, "Invalid message received").await;
        };
        match message["type"].as_str() {
            Some("connection_init") => {
                // The credential was checked when the socket opened: the WebSocket API's
                // $connect authorizer (template.yaml, WebSocketAuthorizer) lets no other in.
                if self.connections.initialize(self.connection_id).await? {
                    self.send(&json!({"type": "connection_ack"})).await
                } else {
                    self.close(4429, "Too many initialisation requests").await
                }
            }
            Some("ping") => self.send(&json!({"type": "pong"})).await,
            Some("pong") => Ok(()),
            Some("subscribe") => self.subscribe(&message).await,
            Some("complete") => match message["id"].as_str() {
                // An invalid id names no subscription: there is nothing to remove.
                Some(id) if connection::valid_subscription_id(id) => {
                    self.connections.remove(self.connection_id, id).await
                }
                Some(_) => Ok(()),
                None => self.close(4400, "complete without an id").await,
            },
            _ => self.close(4400, "Invalid message received").await,
        }
    }

    async fn subscribe(&self, message: &Value) -> Result<(), GatewayError> {
        let (Some(id), Some(query)) =
            (message["id"].as_str(), message["payload"]["query"].as_str())
        else {
            return self.close(4400, "subscribe needs an id and a query").await;
        };
        if !connection::valid_subscription_id(id) {
            return self.close(4400, INVALID_SUBSCRIPTION_ID).await;
        }
        let state = self.connections.connection(self.connection_id).await?;
        if !state.is_some_and(|state| state.initialized) {
            return self.close(4401, "Unauthorized").await;
        }
        // Refused before the document is looked at, as the local socket refuses it; `add`
        // holds the count atomically whatever happens in between.
        let max = self.limits.max_subscriptions;
        if state.is_some_and(|state| state.subscriptions >= max) {
            return self.error(id, &ApiError::TooManySubscriptions(max)).await;
        }
        let subscription = StoredSubscription {
            connection_id: self.connection_id.to_owned(),
            id: id.to_owned(),
            query: query.to_owned(),
            variables: message["payload"]["variables"].clone(),
            operation_name: message["payload"]["operationName"]
                .as_str()
                .map(str::to_owned),
        };
        if operation_of(&subscription).is_some_and(|ty| ty != OperationType::Subscription) {
            let error = json!([{"message": "only subscriptions are served over this socket; use /graphql for queries and mutations", "extensions": {"code": "BAD_REQUEST"}}]);
            return self
                .send(&json!({"type": "error", "id": id, "payload": error}))
                .await;
        }
        // Checked with the very schema that will run it, against no events: a document that
        // does not parse or validate (or is over a limit) answers with its errors right away.
        // The hub notes the cursor it asks to resume after, if any.
        let hub = match self.resume {
            Some(_) => EventHub::resumed(Vec::new()),
            None => EventHub::replay(Vec::new()),
        };
        let errors: Vec<Value> = self
            .schema
            .execute_stream(subscription.request().data(hub.clone()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|response| response.errors)
            .map(|error| serde_json::to_value(error).unwrap_or_default())
            .collect();
        if !errors.is_empty() {
            return self
                .send(&json!({"type": "error", "id": id, "payload": errors}))
                .await;
        }
        if let (Some(resume), Some(after)) = (self.resume, hub.asked_after()) {
            return self.resume(resume, &subscription, &after).await;
        }
        let detail_types = detail_types(&subscription);
        let added = self
            .connections
            .add(&subscription, &detail_types, max)
            .await?;
        self.added(id, added).await
    }

    /// Stores a subscription that resumes after the cursor `after` and starts delivering the
    /// journal to it, once the cursor is known to be one the journal still holds the events
    /// after (refused as the local server refuses it: `BAD_USER_INPUT`, `CURSOR_EXPIRED`).
    async fn resume(
        &self,
        resume: Resume<'_>,
        subscription: &StoredSubscription,
        after: &str,
    ) -> Result<(), GatewayError> {
        let id = subscription.id.as_str();
        let Some(position) = parse_cursor(after) else {
            let error = ApiError::bad_input("after", "not a cursor: use the cursor of an event");
            return self.error(id, &error).await;
        };
        if let Err(error) = resume.journal.read(position, position, 1).await {
            return self.error(id, &ApiError::from(error)).await;
        }
        let max = self.limits.max_subscriptions;
        let added = resume
            .ordered
            .add_ordered(subscription, position, max)
            .await?;
        if added == Added::Stored {
            let key = SubscriptionKey {
                connection_id: subscription.connection_id.clone(),
                id: subscription.id.clone(),
            };
            resume
                .queue
                .enqueue(&FanoutMessage::Pump(PumpMessage { pump: key }), 0)
                .await?;
        }
        self.added(id, added).await
    }

    /// Answers what storing subscription `id` did.
    async fn added(&self, id: &str, added: Added) -> Result<(), GatewayError> {
        let max = self.limits.max_subscriptions;
        match added {
            Added::Stored => {
                tracing::info!(connection_id = self.connection_id, id, "subscribed");
                Ok(())
            }
            Added::Duplicate => {
                self.close(4409, &format!("Subscriber for {id} already exists"))
                    .await
            }
            Added::TooMany => self.error(id, &ApiError::TooManySubscriptions(max)).await,
        }
    }

    /// Sends the protocol's `error` message for subscription `id`.
    async fn error(&self, id: &str, error: &ApiError) -> Result<(), GatewayError> {
        let error = serde_json::to_value(error.server_error()).unwrap_or_default();
        self.send(&json!({"type": "error", "id": id, "payload": [error]}))
            .await
    }

    async fn send(&self, message: &Value) -> Result<(), GatewayError> {
        self.api.send(self.connection_id, message).await
    }

    async fn close(&self, code: u16, reason: &str) -> Result<(), GatewayError> {
        self.api.close(self.connection_id, code, reason).await
    }
}

/// The type of the operation a subscribe would run; `None` when the document does not parse or
/// names no operation (validation then says why).
fn operation_of(subscription: &StoredSubscription) -> Option<OperationType> {
    let document = async_graphql::parser::parse_query(&subscription.query).ok()?;
    operation_type(&document, subscription.operation_name.as_deref())
}
