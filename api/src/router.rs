//! The axum router: the same one is served locally and on Lambda.

use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource, WebSocket as GraphQLWebSocket, WebSocketProtocols,
    WsMessage,
};
use async_graphql_axum::GraphQL;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodFilter, get, on_service};
use axum::{Extension, Router};
use futures_util::{SinkExt, StreamExt};

use crate::schema::ApiSchema;
use crate::subscriptions::EventHub;

/// How often an idle subscription connection is pinged, by default.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// The API's routes: GraphiQL at `/`, GraphQL at `/graphql` (GET and POST), subscriptions at
/// `/graphql/ws` (`graphql-transport-ws`, and the legacy `graphql-ws`), and `/health`.
pub fn router(schema: ApiSchema) -> Router {
    router_with(schema, DEFAULT_KEEPALIVE)
}

/// [`router`], pinging subscription connections every `keepalive`.
pub fn router_with(schema: ApiSchema, keepalive: Duration) -> Router {
    Router::new()
        .route("/", get(graphiql))
        .route(
            "/graphql",
            on_service(
                MethodFilter::GET.or(MethodFilter::POST),
                GraphQL::new(schema.clone()),
            ),
        )
        .route("/graphql/ws", get(subscribe))
        .route("/health", get(health))
        .with_state(Socket { schema, keepalive })
}

#[derive(Clone)]
struct Socket {
    schema: ApiSchema,
    keepalive: Duration,
}

/// The path prefix the API is served under, when it is not the root: behind an API Gateway
/// stage, say, which the Lambda adds as a request extension so GraphiQL's links point home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(pub String);

async fn graphiql(base: Option<Extension<BasePath>>) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let endpoint = format!("{base}/graphql");
    let subscriptions = format!("{base}/graphql/ws");
    Html(
        GraphiQLSource::build()
            .endpoint(&endpoint)
            .subscription_endpoint(&subscriptions)
            .title("outboxdemo")
            .finish(),
    )
}

async fn health(State(socket): State<Socket>) -> impl IntoResponse {
    let subscriptions = socket
        .schema
        .data::<EventHub>()
        .map_or(0, EventHub::subscribers);
    axum::Json(serde_json::json!({"status": "ok", "subscriptions": subscriptions}))
}

async fn subscribe(
    State(socket): State<Socket>,
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
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| serve_socket(stream, socket, protocol))
}

/// Accepts a connection's `connection_init` payload. This is where authentication goes: read
/// a credential from the payload and refuse the connection with an error, or put what it
/// proves into the connection's data for resolvers.
async fn accept_connection(_payload: serde_json::Value) -> async_graphql::Result<Data> {
    Ok(Data::default())
}

/// Speaks the GraphQL WebSocket protocol on one connection, pinging it while it is idle. When
/// the client goes away, the subscriptions' streams are dropped and their buffers released.
async fn serve_socket(stream: WebSocket, socket: Socket, protocol: WebSocketProtocols) {
    let (mut sink, incoming) = stream.split();
    let incoming = incoming
        .take_while(|message| std::future::ready(message.is_ok()))
        .filter_map(|message| {
            std::future::ready(match message {
                Ok(Message::Text(text)) => Some(text.as_bytes().to_vec()),
                Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            })
        });
    let ping = match protocol {
        WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
        WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
    };
    let outgoing = GraphQLWebSocket::new(socket.schema.clone(), incoming, protocol)
        .on_connection_init(accept_connection);
    futures_util::pin_mut!(outgoing);

    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + socket.keepalive,
        socket.keepalive,
    );
    loop {
        let message = tokio::select! {
            message = outgoing.next() => match message {
                Some(WsMessage::Text(text)) => Message::Text(text.into()),
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
                None => break,
            },
            _ = keepalive.tick() => Message::Text(ping.into()),
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
}
