//! The axum router: the same one is served locally and on Lambda.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, WebSocket as GraphQLWebSocket, WebSocketProtocols, WsMessage,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::{SinkExt, StreamExt};

use crate::error::ApiError;
use crate::options::{ApiOptions, Credential};
use crate::schema::ApiSchema;
use crate::subscriptions::EventHub;

/// The API's routes: GraphiQL at `/`, GraphQL at `/graphql` (GET and POST), subscriptions at
/// `/graphql/ws` (`graphql-transport-ws`, and the legacy `graphql-ws`), and `/health`.
pub fn router(schema: ApiSchema) -> Router {
    router_with(schema, &ApiOptions::default())
}

/// [`router`] with these options (keep-alive, body and subscription limits, GraphiQL on or off).
pub fn router_with(schema: ApiSchema, options: &ApiOptions) -> Router {
    let mut router = Router::new();
    if options.graphiql {
        router = router.route("/", get(graphiql));
    }
    router
        .route(
            "/graphql",
            get(graphql)
                .post(graphql)
                .layer(DefaultBodyLimit::max(options.max_body_bytes)),
        )
        .route("/graphql/ws", get(subscribe))
        .route("/health", get(health))
        .with_state(Socket {
            schema,
            keepalive: options.keepalive,
            max_subscriptions: options.max_subscriptions_per_connection,
            documents: Arc::default(),
        })
}

#[derive(Clone)]
struct Socket {
    schema: ApiSchema,
    keepalive: Duration,
    max_subscriptions: usize,
    documents: Arc<Documents>,
}

/// How many parsed documents [`Documents`] keeps.
const DOCUMENTS: usize = 256;

/// Parsed GraphQL documents by their text. Clients send the same few documents over and over
/// (with different variables), and parsing is the costliest step of a small request. Only
/// documents that parse are kept; when full, the cache starts over, so a stream of one-off
/// documents cannot pin it.
#[derive(Debug, Default)]
struct Documents(Mutex<HashMap<String, ExecutableDocument>>);

impl Documents {
    /// Gives `request` its parsed document, from the cache or parsed now (a document that does
    /// not parse is left for execution to report).
    fn prepare(&self, request: &mut async_graphql::Request) {
        let cached = self
            .0
            .lock()
            .ok()
            .and_then(|documents| documents.get(&request.query).cloned());
        if let Some(document) = cached {
            request.set_parsed_query(document);
            return;
        }
        let Ok(document) = request.parsed_query() else {
            return;
        };
        let document = document.clone();
        if let Ok(mut documents) = self.0.lock() {
            if documents.len() >= DOCUMENTS {
                documents.clear();
            }
            documents.insert(request.query.clone(), document);
        }
    }
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
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
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
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than the API accepts".to_owned(),
            );
        }
        Err(rejection) => return refuse(rejection.status(), "BAD_REQUEST", rejection.body_text()),
    };
    let parsed = if method == Method::POST {
        serde_json::from_slice::<async_graphql::Request>(&body).map_err(|e| e.to_string())
    } else {
        async_graphql::http::parse_query_string(uri.query().unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                format!("not a GraphQL request: {error}"),
            );
        }
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut request = request.data(Credential::from_authorization(authorization));
    socket.documents.prepare(&mut request);
    if method == Method::GET && is_mutation(&mut request) {
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
    if spec_media_type && request_error {
        let mut body = serde_json::to_value(&response).unwrap_or_default();
        if let Some(body) = body.as_object_mut() {
            body.remove("data");
        }
        return reply(StatusCode::BAD_REQUEST, body);
    }
    match serde_json::to_vec(&response) {
        Ok(body) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(media_type))],
            body,
        )
            .into_response(),
        Err(error) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            format!("the response could not be written: {error}"),
        ),
    }
}

/// Whether the operation the request would run is a mutation.
fn is_mutation(request: &mut async_graphql::Request) -> bool {
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return false; // execution reports the parse error
    };
    let operation = match (&document.operations, operation_name.as_deref()) {
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

/// The GraphiQL page: our own, small, with its assets pinned (they load from unpkg.com).
const GRAPHIQL: &str = include_str!("graphiql.html");

async fn graphiql(base: Option<Extension<BasePath>>) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    Html(graphiql_page(base))
}

/// The page for an API served under `base` ("" at the root).
fn graphiql_page(base: &str) -> String {
    let settings = serde_json::json!({
        "endpoint": format!("{base}/graphql"),
        "subscriptions": format!("{base}/graphql/ws"),
    });
    // JSON inside a <script>: no "</script>" (or "<!--") can close it early.
    let settings = settings.to_string().replace('<', "\\u003c");
    GRAPHIQL.replace("__SETTINGS__", &settings)
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

/// Accepts a connection's `connection_init` payload and keeps the credential it carries
/// (`{"authorization": "Bearer <token>"}`) for the subscriptions' guard, which answers
/// `UNAUTHENTICATED` when a token is required and this is not it.
async fn accept_connection(payload: serde_json::Value) -> async_graphql::Result<Data> {
    let authorization = ["authorization", "Authorization"]
        .iter()
        .find_map(|key| payload.get(key).and_then(serde_json::Value::as_str));
    let mut data = Data::default();
    data.insert(Credential::from_authorization(authorization));
    Ok(data)
}

/// Speaks the GraphQL WebSocket protocol on one connection, pinging it while it is idle. When
/// the client goes away, the subscriptions' streams are dropped and their buffers released.
async fn serve_socket(stream: WebSocket, socket: Socket, protocol: WebSocketProtocols) {
    let (sink, incoming) = stream.split();
    let sink = std::sync::Arc::new(tokio::sync::Mutex::new(sink));
    // The ids of this connection's open subscriptions, to hold them to the limit.
    let open = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let limit = socket.max_subscriptions;
    let refusals = std::sync::Arc::clone(&sink);
    let counted = std::sync::Arc::clone(&open);
    let incoming = incoming
        .take_while(|message| std::future::ready(message.is_ok()))
        .filter_map(move |message| {
            let bytes = match message {
                Ok(Message::Text(text)) => text.as_bytes().to_vec(),
                Ok(Message::Binary(bytes)) => bytes.to_vec(),
                _ => return futures_util::future::Either::Left(std::future::ready(None)),
            };
            let refusal = admit(&bytes, &counted, limit, protocol);
            let sink = std::sync::Arc::clone(&refusals);
            futures_util::future::Either::Right(async move {
                match refusal {
                    None => Some(bytes),
                    Some(refusal) => {
                        let _ = sink.lock().await.send(Message::Text(refusal.into())).await;
                        None
                    }
                }
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
                Some(WsMessage::Text(text)) => {
                    forget_completed(&text, &open);
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

/// Counts a client message against the connection's subscription limit: a new subscription
/// over the limit is refused (the refusal message is returned, and the message is not passed
/// on); a `complete` (`stop` in the legacy protocol) frees its place.
fn admit(
    bytes: &[u8],
    open: &std::sync::Mutex<std::collections::HashSet<String>>,
    limit: usize,
    protocol: WebSocketProtocols,
) -> Option<String> {
    let message: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = message["id"].as_str()?.to_owned();
    let mut open = open.lock().ok()?;
    match message["type"].as_str()? {
        "subscribe" | "start" if !open.contains(&id) && open.len() >= limit => {
            use async_graphql::ErrorExtensions as _;
            let error = ApiError::TooManySubscriptions(limit).extend();
            let error = serde_json::json!({"message": error.message, "extensions": {"code": "TOO_MANY_SUBSCRIPTIONS"}});
            Some(
                match protocol {
                    WebSocketProtocols::GraphQLWS => {
                        serde_json::json!({"type": "error", "id": id, "payload": [error]})
                    }
                    WebSocketProtocols::SubscriptionsTransportWS => {
                        serde_json::json!({"type": "error", "id": id, "payload": error})
                    }
                }
                .to_string(),
            )
        }
        "subscribe" | "start" => {
            open.insert(id);
            None
        }
        "complete" | "stop" => {
            open.remove(&id);
            None
        }
        _ => None,
    }
}

/// A subscription the server ended (`complete`) no longer counts against the limit.
fn forget_completed(text: &str, open: &std::sync::Mutex<std::collections::HashSet<String>>) {
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
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;

    use super::*;
    use crate::options::ApiOptions;

    #[test]
    fn documents_that_parse_are_kept_and_the_cache_stays_bounded() {
        let documents = Documents::default();
        let kept = |documents: &Documents| documents.0.lock().unwrap().len();
        for _ in 0..3 {
            let mut request = async_graphql::Request::new("{ books { edges { cursor } } }");
            documents.prepare(&mut request);
            assert!(request.parsed_query().is_ok());
        }
        assert_eq!(kept(&documents), 1);

        let mut broken = async_graphql::Request::new("{ books(");
        documents.prepare(&mut broken);
        assert_eq!(
            kept(&documents),
            1,
            "a document that does not parse is not kept"
        );

        for i in 0..2 * DOCUMENTS {
            documents.prepare(&mut async_graphql::Request::new(format!(
                "{{ book(name: \"{i}\") {{ name }} }}"
            )));
            assert!(kept(&documents) <= DOCUMENTS);
        }
    }

    #[test]
    fn the_graphiql_page_points_at_its_base_path_and_cannot_be_broken_out_of() {
        let page = graphiql_page("/prod");
        assert!(page.contains(r#"const settings = {"endpoint":"/prod/graphql","subscriptions":"/prod/graphql/ws"};"#), "{page}");
        assert!(!page.contains("__SETTINGS__"));

        let page = graphiql_page("/</script><script>alert(1)//");
        assert_eq!(
            page.matches("</script>").count(),
            GRAPHIQL.matches("</script>").count()
        );
        assert!(
            page.contains(r"\u003c/script>\u003cscript>alert(1)//"),
            "{page}"
        );
    }

    fn message(kind: &str, id: &str) -> Vec<u8> {
        serde_json::json!({"type": kind, "id": id})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_connection_holds_at_most_its_limit_of_subscriptions() {
        let open = Mutex::new(HashSet::new());
        let protocol = WebSocketProtocols::GraphQLWS;
        assert_eq!(admit(&message("subscribe", "1"), &open, 2, protocol), None);
        assert_eq!(admit(&message("subscribe", "2"), &open, 2, protocol), None);
        let refusal: serde_json::Value =
            serde_json::from_str(&admit(&message("subscribe", "3"), &open, 2, protocol).unwrap())
                .unwrap();
        assert_eq!(refusal["type"], "error");
        assert_eq!(refusal["id"], "3");
        assert_eq!(
            refusal["payload"][0]["extensions"]["code"],
            "TOO_MANY_SUBSCRIPTIONS"
        );
        assert_eq!(admit(&message("complete", "1"), &open, 2, protocol), None);
        assert_eq!(admit(&message("subscribe", "3"), &open, 2, protocol), None);
        forget_completed(r#"{"type":"complete","id":"2"}"#, &open);
        assert_eq!(open.lock().unwrap().len(), 1);
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
