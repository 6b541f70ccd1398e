//! The axum router: the same one is served locally and on Lambda.

use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource, WebSocket as GraphQLWebSocket, WebSocketProtocols,
    WsMessage,
};
use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql_axum::GraphQLRequest;
use async_graphql_axum::rejection::GraphQLRejection;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
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
        .route("/graphql", get(graphql).post(graphql))
        .route("/graphql/ws", get(subscribe))
        .route("/health", get(health))
        .with_state(Socket { schema, keepalive })
}

#[derive(Clone)]
struct Socket {
    schema: ApiSchema,
    keepalive: Duration,
}

/// The media type of the GraphQL-over-HTTP spec; clients that accept it get status codes that
/// say what kind of failure an error is.
const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// GraphQL over HTTP (GET and POST), per the GraphQL-over-HTTP spec: `application/json`
/// responses are always 200; `application/graphql-response+json` ones are 400, without
/// `data`, when the request fails before execution (it does not parse, validate or coerce).
/// GET does not run mutations: a GET must be safe to repeat.
async fn graphql(
    State(socket): State<Socket>,
    method: Method,
    headers: HeaderMap,
    request: Result<GraphQLRequest, GraphQLRejection>,
) -> Response {
    let spec_media_type = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains(GRAPHQL_RESPONSE_JSON));
    let media_type = if spec_media_type {
        GRAPHQL_RESPONSE_JSON
    } else {
        "application/json"
    };
    let reply = |status: StatusCode, body: serde_json::Value| {
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
        response
    };
    let refuse = |status: StatusCode, code: &str, message: String| {
        reply(
            status,
            serde_json::json!({"errors": [{"message": message, "extensions": {"code": code}}]}),
        )
    };

    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if method == Method::POST && !json_body {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_REQUEST",
            "a POST needs content-type: application/json".to_owned(),
        );
    }
    let request = match request {
        Ok(request) => request.into_inner(),
        Err(GraphQLRejection(error)) => {
            return refuse(StatusCode::BAD_REQUEST, "BAD_REQUEST", error.to_string());
        }
    };
    if method == Method::GET && is_mutation(&request) {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            "mutations are not run over GET; use POST".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    let response = socket.schema.execute(request).await;
    // A request error happens before execution: no data, and no error belongs to a field.
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty());
    let mut body = serde_json::to_value(&response).unwrap_or_default();
    if spec_media_type && request_error {
        if let Some(body) = body.as_object_mut() {
            body.remove("data");
        }
        return reply(StatusCode::BAD_REQUEST, body);
    }
    reply(StatusCode::OK, body)
}

/// Whether the operation the request would run is a mutation.
fn is_mutation(request: &async_graphql::Request) -> bool {
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false; // execution reports the parse error
    };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    operation.is_some_and(|operation| operation.node.ty == OperationType::Mutation)
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
