//! Subscriptions at `/graphql/ws`: the pump between one WebSocket and the schema, speaking
//! `graphql-transport-ws` (or the legacy `graphql-ws`), with keep-alive pings and the
//! connection's limits ([`ConnectionLimits`]: its subscriptions, its message rate, its
//! subscription ids), held as on AWS.
//!
//! A WebSocket is not held to the same-origin policy: any page a browser visits may open one to
//! 127.0.0.1, and queries and mutations run over the socket too. Browsers always send `Origin`
//! on a WebSocket handshake
//! (<https://datatracker.ietf.org/doc/html/rfc6455#section-10.2>), so a handshake whose
//! `Origin` is not this server's own (the GraphiQL page it serves) is refused; clients that are
//! not browsers send none. Messages are held to the HTTP body limit.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::Data;
use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, WebSocket as GraphQLWebSocket, WebSocketProtocols, WsMessage,
};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use super::AppState;
use crate::error::ApiError;
use crate::limits::connection::{
    self, ConnectionLimits, INVALID_SUBSCRIPTION_ID, TokenBucket, valid_subscription_id,
};
use crate::options::Credential;
use crate::spans::IncomingTrace;

/// The read buffer of each socket. tungstenite's default, 128 KiB, is zeroed on every read and
/// held per connection (640 MB for 5,000 subscribers); a client's messages are small, and a
/// larger one is read in several reads, so tungstenite's advice for many connections holds.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Upgrades to a WebSocket in the first subprotocol the client offers that we speak.
pub(super) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The first subprotocol the client offers that we speak; without one, the legacy
    // `graphql-ws` protocol, as async-graphql assumes.
    let protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|name| name.trim().parse::<WebSocketProtocols>().ok())
        .unwrap_or(WebSocketProtocols::SubscriptionsTransportWS);
    if let Some(origin) = state.allowed_origins.refuses(&headers) {
        tracing::warn!(origin = ?origin, "WebSocket from another origin refused");
        return (
            StatusCode::FORBIDDEN,
            "a WebSocket from another origin is refused: open GraphiQL on this server",
        )
            .into_response();
    }
    let max = state.max_message_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| serve_socket(stream, state, protocol))
}

/// Accepts a connection's `connection_init` payload and keeps the credential it carries
/// (`{"authorization": "Bearer <token>"}`) for the subscriptions' guard, which answers
/// `UNAUTHENTICATED` when a token is required and this is not it; and the `traceparent` it
/// carries, if any, which the connection's operations continue.
async fn accept_connection(payload: serde_json::Value) -> async_graphql::Result<Data> {
    let authorization = ["authorization", "Authorization"]
        .iter()
        .find_map(|key| payload.get(key).and_then(serde_json::Value::as_str));
    let mut data = Data::default();
    data.insert(Credential::from_authorization(authorization));
    if let Some(trace) = IncomingTrace::from_value(
        payload
            .get(telemetry::context::TRACEPARENT)
            .and_then(serde_json::Value::as_str),
    ) {
        data.insert(trace);
    }
    Ok(data)
}

/// Speaks the GraphQL WebSocket protocol on one connection, pinging it while it is idle. When
/// the client goes away, the subscriptions' streams are dropped and their buffers released.
async fn serve_socket(stream: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    let (sink, incoming) = stream.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    // The ids of this connection's open subscriptions, to hold them to the limit.
    let open = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut gate = Gate::new(
        Arc::clone(&open),
        state.connection_limits,
        protocol,
        connection::now_ms(),
    );
    let refusals = Arc::clone(&sink);
    // Set once the gate closes the connection: nothing the client sends after counts.
    let closing = Arc::new(AtomicBool::new(false));
    let closed = Arc::clone(&closing);
    let incoming = incoming
        .take_while(move |message| {
            std::future::ready(message.is_ok() && !closed.load(Ordering::Relaxed))
        })
        .filter_map(move |message| {
            let bytes = match message {
                Ok(Message::Text(text)) => text.as_bytes().to_vec(),
                Ok(Message::Binary(bytes)) => bytes.to_vec(),
                _ => return futures_util::future::Either::Left(std::future::ready(None)),
            };
            let verdict = gate.admit(&bytes, connection::now_ms());
            let sink = Arc::clone(&refusals);
            let closing = Arc::clone(&closing);
            futures_util::future::Either::Right(async move {
                let answer = match verdict {
                    Verdict::Pass => return Some(bytes),
                    Verdict::Refuse(None) => return None,
                    Verdict::Refuse(Some(answer)) => Message::Text(answer.into()),
                    Verdict::Close(code, reason) => {
                        closing.store(true, Ordering::Relaxed);
                        Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }))
                    }
                };
                let _ = sink.lock().await.send(answer).await;
                None
            })
        });
    let ping = match protocol {
        WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
        WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
    };
    let outgoing = GraphQLWebSocket::new(state.schema.clone(), incoming, protocol)
        .on_connection_init(accept_connection);
    futures_util::pin_mut!(outgoing);

    let mut answers = Answers::default();
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + state.keepalive,
        state.keepalive,
    );
    loop {
        let message = tokio::select! {
            message = outgoing.next() => match message {
                Some(WsMessage::Text(text)) => {
                    forget_completed(&text, &open);
                    let text = match protocol {
                        WebSocketProtocols::GraphQLWS => match answers.rewrite(text, &open) {
                            Some(text) => text,
                            None => continue,
                        },
                        WebSocketProtocols::SubscriptionsTransportWS => text,
                    };
                    Message::Text(text.into())
                }
                Some(WsMessage::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.lock().await.send(Message::Close(Some(frame))).await;
                    break;
                }
                None => break,
            },
            _ = keepalive.tick() => Message::Text(ping.into()),
        };
        if sink.lock().await.send(message).await.is_err() {
            break;
        }
    }
}

/// What [`Gate::admit`] makes of a client message.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Pass it on to the protocol.
    Pass,
    /// Do nothing it asks; send this answer, if any.
    Refuse(Option<String>),
    /// Do nothing it asks, and close the connection with this code and reason.
    Close(u16, &'static str),
}

/// One connection's limits between its messages: every message takes a token from its bucket;
/// a subscribe needs a valid id and a free place (a `complete`, `stop` in the legacy protocol,
/// frees one).
struct Gate {
    open: Arc<Mutex<HashSet<String>>>,
    bucket: TokenBucket,
    limits: ConnectionLimits,
    protocol: WebSocketProtocols,
}

impl Gate {
    fn new(
        open: Arc<Mutex<HashSet<String>>>,
        limits: ConnectionLimits,
        protocol: WebSocketProtocols,
        now_ms: i64,
    ) -> Self {
        Self {
            open,
            bucket: TokenBucket::full(limits.rate, now_ms),
            limits,
            protocol,
        }
    }

    /// The verdict on one client message at `now_ms`.
    fn admit(&mut self, bytes: &[u8], now_ms: i64) -> Verdict {
        let message: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let id = message["id"].as_str();
        let subscribe = matches!(message["type"].as_str(), Some("subscribe" | "start"));
        let Some(bucket) = self.bucket.take(self.limits.rate, now_ms) else {
            // The protocol can answer a refused subscribe; other messages have no answer.
            let rate = self.limits.rate;
            let error = ApiError::RateLimited(rate.per_sec, rate.burst);
            return Verdict::Refuse(id.filter(|_| subscribe).map(|id| self.error(id, &error)));
        };
        self.bucket = bucket;
        let Some(id) = id else {
            return Verdict::Pass; // the protocol refuses what it cannot read
        };
        let Ok(mut open) = self.open.lock() else {
            return Verdict::Pass;
        };
        match message["type"].as_str() {
            Some("subscribe" | "start") if !valid_subscription_id(id) => match self.protocol {
                // graphql-ws closes the socket on a message it cannot accept.
                WebSocketProtocols::GraphQLWS => Verdict::Close(4400, INVALID_SUBSCRIPTION_ID),
                WebSocketProtocols::SubscriptionsTransportWS => Verdict::Refuse(Some(
                    self.error(id, &ApiError::bad_input("id", INVALID_SUBSCRIPTION_ID)),
                )),
            },
            // At the limit, as on AWS, before the id is looked up: a duplicate is refused too.
            Some("subscribe" | "start") if open.len() >= self.limits.max_subscriptions => {
                let error = ApiError::TooManySubscriptions(self.limits.max_subscriptions);
                Verdict::Refuse(Some(self.error(id, &error)))
            }
            Some("subscribe" | "start") => {
                open.insert(id.to_owned());
                Verdict::Pass
            }
            Some("complete" | "stop") => {
                open.remove(id);
                Verdict::Pass
            }
            _ => Verdict::Pass,
        }
    }

    /// The protocol's `error` message for subscription `id`.
    fn error(&self, id: &str, error: &ApiError) -> String {
        let error = serde_json::to_value(error.server_error()).unwrap_or_default();
        match self.protocol {
            WebSocketProtocols::GraphQLWS => {
                serde_json::json!({"type": "error", "id": id, "payload": [error]})
            }
            WebSocketProtocols::SubscriptionsTransportWS => {
                serde_json::json!({"type": "error", "id": id, "payload": error})
            }
        }
        .to_string()
    }
}

/// What this connection has answered each subscription so far, so that a subscribe refused
/// before execution gets `graphql-transport-ws`'s `error` message, as on AWS.
///
/// async-graphql answers a document that does not validate (or a guard that refuses it) with a
/// `next` whose payload has errors and no data, then `complete`. The protocol's answer is one
/// `error` message with the errors, after which the subscription is over and no `complete`
/// follows (<https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#error>).
#[derive(Debug, Default)]
struct Answers {
    /// Subscriptions that have been sent a `next`.
    started: HashSet<String>,
    /// Subscriptions answered with `error`, whose `complete` is not sent.
    refused: HashSet<String>,
}

impl Answers {
    /// The message to send instead of `text`, or `None` to send nothing.
    fn rewrite(&mut self, text: String, open: &Mutex<HashSet<String>>) -> Option<String> {
        // Most messages are a started subscription's `next`: read only its type and id (the
        // payload is skipped, not built).
        if let Ok(head) = serde_json::from_str::<Head<'_>>(&text)
            && head.kind == "next"
            && head.id.is_some_and(|id| self.started.contains(id.as_ref()))
        {
            return Some(text);
        }
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Some(text);
        };
        let Some(id) = message["id"].as_str() else {
            return Some(text);
        };
        match message["type"].as_str() {
            Some("next") if !self.started.contains(id) => {
                let payload = &message["payload"];
                let refused = payload["data"].is_null()
                    && payload["errors"].as_array().is_some_and(|e| !e.is_empty());
                if !refused {
                    self.started.insert(id.to_owned());
                    return Some(text);
                }
                self.refused.insert(id.to_owned());
                if let Ok(mut open) = open.lock() {
                    open.remove(id);
                }
                Some(
                    serde_json::json!({"type": "error", "id": id, "payload": payload["errors"]})
                        .to_string(),
                )
            }
            Some("complete") => {
                self.started.remove(id);
                (!self.refused.remove(id)).then_some(text)
            }
            _ => Some(text),
        }
    }
}

/// A server message's type and subscription id.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// A subscription the server ended (`complete`) no longer counts against the limit.
fn forget_completed(text: &str, open: &Mutex<HashSet<String>>) {
    if !text.contains("\"complete\"") {
        return;
    }
    if let Ok(message) = serde_json::from_str::<serde_json::Value>(text)
        && message["type"] == "complete"
        && let (Some(id), Ok(mut open)) = (message["id"].as_str(), open.lock())
    {
        open.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ApiOptions;
    use crate::schema::ApiSchema;

    fn message(kind: &str, id: &str) -> Vec<u8> {
        serde_json::json!({"type": kind, "id": id})
            .to_string()
            .into_bytes()
    }

    fn gate(max_subscriptions: usize, per_sec: u32, burst: u32) -> Gate {
        let limits = ConnectionLimits {
            max_subscriptions,
            rate: connection::MessageRate { per_sec, burst },
        };
        Gate::new(Arc::default(), limits, WebSocketProtocols::GraphQLWS, 0)
    }

    fn refusal_code(verdict: Verdict) -> serde_json::Value {
        let Verdict::Refuse(Some(text)) = verdict else {
            panic!("not an answered refusal: {verdict:?}")
        };
        let refusal: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(refusal["type"], "error");
        refusal["payload"][0]["extensions"]["code"].clone()
    }

    #[test]
    fn a_connection_holds_at_most_its_limit_of_subscriptions() {
        let mut gate = gate(2, 1000, 1000);
        assert_eq!(gate.admit(&message("subscribe", "1"), 0), Verdict::Pass);
        assert_eq!(gate.admit(&message("subscribe", "2"), 0), Verdict::Pass);
        assert_eq!(
            refusal_code(gate.admit(&message("subscribe", "3"), 0)),
            "TOO_MANY_SUBSCRIPTIONS"
        );
        assert_eq!(gate.admit(&message("complete", "1"), 0), Verdict::Pass);
        assert_eq!(gate.admit(&message("subscribe", "3"), 0), Verdict::Pass);
        forget_completed(r#"{"type":"complete","id":"2"}"#, &gate.open);
        assert_eq!(gate.open.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_connection_over_its_rate_is_refused_and_nothing_it_asks_is_done() {
        let mut gate = gate(20, 10, 3);
        for id in ["1", "2", "3"] {
            assert_eq!(gate.admit(&message("subscribe", id), 0), Verdict::Pass);
        }
        assert_eq!(
            refusal_code(gate.admit(&message("subscribe", "4"), 0)),
            "RATE_LIMITED"
        );
        assert_eq!(
            gate.admit(&message("complete", "1"), 0),
            Verdict::Refuse(None),
            "no answer for a message without one, and nothing done"
        );
        assert_eq!(gate.open.lock().unwrap().len(), 3);
        // A tenth of a second later, one message's token is back.
        assert_eq!(gate.admit(&message("subscribe", "4"), 100), Verdict::Pass);
        assert_eq!(gate.open.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_subscribe_with_an_over_long_id_closes_the_socket_and_stores_nothing() {
        let mut gate = gate(20, 1000, 1000);
        let long = "x".repeat(connection::MAX_SUBSCRIPTION_ID_CHARS + 1);
        assert_eq!(
            gate.admit(&message("subscribe", &long), 0),
            Verdict::Close(4400, INVALID_SUBSCRIPTION_ID)
        );
        assert_eq!(
            gate.admit(&message("subscribe", "a\u{7}b"), 0),
            Verdict::Close(4400, INVALID_SUBSCRIPTION_ID)
        );
        assert!(gate.open.lock().unwrap().is_empty());
        let mut legacy = gate;
        legacy.protocol = WebSocketProtocols::SubscriptionsTransportWS;
        let Verdict::Refuse(Some(text)) = legacy.admit(&message("start", &long), 0) else {
            panic!()
        };
        let refusal: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(refusal["payload"]["extensions"]["code"], "BAD_USER_INPUT");
        assert!(legacy.open.lock().unwrap().is_empty());
    }

    #[test]
    fn a_subscribe_refused_before_execution_is_answered_with_one_error_message() {
        let open = Mutex::new(HashSet::from(["bad".to_owned(), "good".to_owned()]));
        let mut answers = Answers::default();
        let refused = r#"{"type":"next","id":"bad","payload":{"data":null,"errors":[{"message":"Unknown field","extensions":{"code":"GRAPHQL_VALIDATION_FAILED"}}]}}"#;
        let error: serde_json::Value =
            serde_json::from_str(&answers.rewrite(refused.into(), &open).unwrap()).unwrap();
        assert_eq!(
            error,
            serde_json::json!({"type": "error", "id": "bad", "payload": [{"message": "Unknown field", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]})
        );
        assert_eq!(
            answers.rewrite(r#"{"type":"complete","id":"bad"}"#.into(), &open),
            None,
            "no complete after an error"
        );
        assert!(!open.lock().unwrap().contains("bad"), "its place is free");

        // A subscription that started keeps its next messages, errors and all, and its complete.
        let next = r#"{"type":"next","id":"good","payload":{"data":{"bookAdded":{"name":"A"}}}}"#;
        assert_eq!(answers.rewrite(next.into(), &open).as_deref(), Some(next));
        let later = r#"{"type":"next","id":"good","payload":{"data":null,"errors":[{"message":"lagged"}]}}"#;
        assert_eq!(answers.rewrite(later.into(), &open).as_deref(), Some(later));
        let complete = r#"{"type":"complete","id":"good"}"#;
        assert_eq!(
            answers.rewrite(complete.into(), &open).as_deref(),
            Some(complete)
        );
    }

    async fn first_error_code(
        schema: &ApiSchema,
        authorization: serde_json::Value,
    ) -> Option<String> {
        let data = accept_connection(serde_json::json!({"authorization": authorization}))
            .await
            .unwrap();
        let request = async_graphql::Request::new("subscription { bookAdded { name } }");
        let mut stream = schema.execute_stream_with_session_data(request, Arc::new(data));
        let first =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
        match first {
            Ok(Some(response)) => response.errors.first().and_then(|e| {
                e.extensions
                    .as_ref()?
                    .get("code")
                    .map(|code| code.to_string().trim_matches('"').to_owned())
            }),
            _ => None, // subscribed and waiting for events: allowed
        }
    }

    #[tokio::test]
    async fn subscriptions_need_the_token_from_connection_init_when_one_is_configured() {
        let options = ApiOptions {
            auth_token: Some("s3cret".into()),
            ..ApiOptions::default()
        };
        let schema = crate::schema::build_schema_with(
            Arc::new(crate::tests_support::NoStore),
            Arc::new(crate::tests_support::NoStore),
            crate::EventHub::default(),
            None,
            &options,
        );
        assert_eq!(
            first_error_code(&schema, serde_json::Value::Null)
                .await
                .as_deref(),
            Some("UNAUTHENTICATED")
        );
        assert_eq!(
            first_error_code(&schema, "Bearer nope".into())
                .await
                .as_deref(),
            Some("UNAUTHENTICATED")
        );
        assert_eq!(
            first_error_code(&schema, "Bearer s3cret".into()).await,
            None
        );
    }
}
