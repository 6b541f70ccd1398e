//! The WebSocket API in front of the `subscriptions` Lambda, and its `@connections` Management
//! API, as API Gateway runs them
//! (<https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-overview.html>).
//!
//! API Gateway holds the socket; the function only sees one invocation per event:
//! - **`$connect`** while the upgrade request waits: a 2xx accepts it (with the subprotocol the
//!   function answered in `Sec-WebSocket-Protocol`), anything else refuses the handshake with
//!   that status
//!   (<https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-route-keys-connect-disconnect.html>,
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-connect-route-subprotocol.html>).
//!   Until it has returned, the connection does not exist: a post to it is `410`
//!   (<https://repost.aws/knowledge-center/410-gone-api-gateway>).
//! - **Every message** goes to the route the selection expression picks from its JSON body, or
//!   to `$default`
//!   (<https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-develop-routes.html>).
//!   With no route response in the template, what the function returns is not sent back; a
//!   function error is, as API Gateway's `{"message": "Internal server error", "connectionId":
//!   …, "requestId": …}`.
//! - **`$disconnect`** after the socket closed, for whatever reason, best effort.
//!
//! Messages of one connection are invoked one after the other, in the order they came (AWS
//! documents no order; one at a time keeps a protocol like `graphql-transport-ws` sane).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::authorizers::ConnectAuthorizer;
use crate::http_api::{api_id, aws_id, query_parameters, request_time};
use crate::lambda::{Invocation, Invoke};
use crate::template::Template;

/// The WebSocket API as the template declares it, with API Gateway's limits.
#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// The API id.
    pub api_id: String,
    /// `requestContext.accountId`.
    pub account_id: String,
    /// The region, for the record.
    pub region: String,
    /// The stage's `StageName` (`live`): the path of the socket and of the Management API.
    pub stage: String,
    /// The API's `RouteSelectionExpression` (`$request.body.type`).
    pub route_selection_expression: String,
    /// The route keys (`$connect`, `$disconnect`, `$default`, …).
    pub routes: Vec<String>,
    /// The stage's `DefaultRouteSettings` throttling, applied to each route; `None` when the
    /// template sets none.
    pub throttling: Option<Throttling>,
    /// The idle connection timeout, 10 minutes
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html#apigateway-execution-service-websocket-limits-table>);
    /// a field so tests can shrink it.
    pub idle_timeout: Duration,
    /// The maximum connection duration, 2 hours (same page); a field so tests can shrink it.
    pub max_duration: Duration,
    /// The message payload quota, 128 KB (same page).
    pub max_message_bytes: usize,
    /// The frame size quota, 32 KB (same page).
    pub max_frame_bytes: usize,
    /// The `$connect` route's Lambda authorizer ([`crate::authorizers`]).
    pub connect_authorizer: Option<ConnectAuthorizer>,
}

/// A token bucket: `rate_limit` requests per second on average, `burst_limit` at once
/// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-protect.html>).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttling {
    /// `ThrottlingRateLimit`: tokens added per second.
    pub rate_limit: f64,
    /// `ThrottlingBurstLimit`: the bucket's size.
    pub burst_limit: f64,
}

const CONNECT: &str = "$connect";
const DISCONNECT: &str = "$disconnect";
const DEFAULT: &str = "$default";

/// `!Ref <logical id>`, in the short or the long form.
fn is_ref_to(value: &serde_yaml::Value, logical_id: &str) -> bool {
    match value {
        serde_yaml::Value::Tagged(tagged) => {
            tagged.tag.to_string().trim_start_matches('!') == "Ref"
                && tagged.value.as_str() == Some(logical_id)
        }
        serde_yaml::Value::Mapping(_) => value["Ref"].as_str() == Some(logical_id),
        _ => false,
    }
}

impl WebSocketSettings {
    /// The settings of the template's one `AWS::ApiGatewayV2::Api` with `ProtocolType:
    /// WEBSOCKET`: its routes, its stage and that stage's `DefaultRouteSettings`, with AWS's
    /// limits and a made-up API id.
    pub fn from_template(template: &Template) -> anyhow::Result<Self> {
        let api = template
            .resources_of_type("AWS::ApiGatewayV2::Api")
            .into_iter()
            .find(|id| template.properties(id)["ProtocolType"].as_str() == Some("WEBSOCKET"))
            .context("the template has no WebSocket API")?;
        let expression = template.properties(&api)["RouteSelectionExpression"]
            .as_str()
            .with_context(|| format!("{api} has no RouteSelectionExpression"))?;
        let routes: Vec<String> = template
            .resources_of_type("AWS::ApiGatewayV2::Route")
            .iter()
            .map(|id| template.properties(id))
            .filter(|route| is_ref_to(&route["ApiId"], &api))
            .filter_map(|route| route["RouteKey"].as_str().map(str::to_owned))
            .collect();
        let stage = template
            .resources_of_type("AWS::ApiGatewayV2::Stage")
            .into_iter()
            .map(|id| template.properties(&id).clone())
            .find(|stage| is_ref_to(&stage["ApiId"], &api))
            .with_context(|| format!("{api} has no stage"))?;
        let name = stage["StageName"]
            .as_str()
            .context("the stage has no StageName")?;
        let number = |v: &serde_yaml::Value| v.as_f64().or_else(|| v.as_str()?.parse().ok());
        let defaults = &stage["DefaultRouteSettings"];
        let throttling = match (
            number(&defaults["ThrottlingRateLimit"]),
            number(&defaults["ThrottlingBurstLimit"]),
        ) {
            (Some(rate_limit), Some(burst_limit)) => Some(Throttling {
                rate_limit,
                burst_limit,
            }),
            _ => None,
        };
        Ok(Self {
            api_id: api_id(),
            account_id: "123456789012".to_owned(),
            region: "us-east-1".to_owned(),
            stage: name.to_owned(),
            route_selection_expression: expression.to_owned(),
            routes,
            throttling,
            idle_timeout: Duration::from_secs(10 * 60),
            max_duration: Duration::from_secs(2 * 60 * 60),
            max_message_bytes: 128 * 1024,
            max_frame_bytes: 32 * 1024,
            connect_authorizer: None,
        })
    }

    /// Whether the API has the route `key`.
    pub fn has_route(&self, key: &str) -> bool {
        self.routes.iter().any(|route| route == key)
    }

    /// The route a message goes to: the selection expression's value in its JSON body when a
    /// route has that key, else `$default` (`None` when there is no `$default` either)
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-develop-routes.html>).
    pub fn select_route(&self, body: &str) -> Option<&str> {
        let selected = self
            .route_selection_expression
            .trim_start_matches("${")
            .trim_start_matches('$')
            .trim_end_matches('}')
            .strip_prefix("request.body.")
            .and_then(|path| {
                let body: Value = serde_json::from_str(body).ok()?;
                let value = path.split('.').try_fold(&body, |v, key| v.get(key))?;
                match value {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }
            });
        let route = |key: &str| self.routes.iter().find(|r| *r == key).map(String::as_str);
        selected
            .as_deref()
            .filter(|key| *key != CONNECT && *key != DISCONNECT)
            .and_then(route)
            .or_else(|| route(DEFAULT))
    }
}

/// A running WebSocket API: its socket endpoint and its Management API.
#[derive(Clone)]
pub struct WebSocketApi {
    url: String,
    management_endpoint: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebSocketApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketApi")
            .field("url", &self.url)
            .field("management_endpoint", &self.management_endpoint)
            .finish_non_exhaustive()
    }
}

impl WebSocketApi {
    /// Where clients connect: `ws://127.0.0.1:<port>/<stage>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Management API endpoint for the SDK: `http://127.0.0.1:<port>/<stage>` (the SDK
    /// adds `/@connections/{id}`).
    pub fn management_endpoint(&self) -> &str {
        &self.management_endpoint
    }

    /// How many connections are open (past `$connect`, not yet closed).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    settings: WebSocketSettings,
    target: Arc<dyn Invoke>,
    /// `requestContext.domainName`: the socket's `127.0.0.1:<port>`.
    domain_name: String,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    filled_at: Instant,
}

impl Shared {
    /// Takes a token from the route's bucket; false when the route is throttled.
    fn admit(&self, route: &str) -> bool {
        let Some(limits) = self.settings.throttling else {
            return true;
        };
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(route.to_owned()).or_insert(Bucket {
            tokens: limits.burst_limit,
            filled_at: now,
        });
        let elapsed = now.duration_since(bucket.filled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limits.rate_limit).min(limits.burst_limit);
        bucket.filled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the Management API asks of a connection's task.
#[derive(Debug)]
enum Command {
    Send(Message),
    Close,
}

/// One open connection, as the Management API sees it.
#[derive(Debug)]
struct Connection {
    commands: mpsc::UnboundedSender<Command>,
    connected_at: DateTime<Utc>,
    last_active_at: Mutex<DateTime<Utc>>,
    source_ip: String,
    user_agent: Option<String>,
}

/// What every event of one connection shares.
#[derive(Debug, Clone)]
struct Caller {
    connection_id: String,
    connected_at: DateTime<Utc>,
    source_ip: String,
    user_agent: Option<String>,
}

impl Shared {
    /// The event for `route_key`, as the Lambda proxy integration of a WebSocket API sends it
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-lambda-auth.html>
    /// shows one).
    fn event(
        &self,
        caller: &Caller,
        route_key: &str,
        event_type: &str,
        request_id: &str,
    ) -> ApiGatewayWebsocketProxyRequest {
        let (time, epoch) = request_time(SystemTime::now());
        let mut event = ApiGatewayWebsocketProxyRequest::default();
        let context = &mut event.request_context;
        context.route_key = Some(route_key.to_owned());
        context.event_type = Some(event_type.to_owned());
        context.extended_request_id = Some(request_id.to_owned());
        context.request_time = Some(time);
        context.request_time_epoch = epoch;
        context.message_direction = Some("IN".to_owned());
        context.stage = Some(self.settings.stage.clone());
        context.connected_at = caller.connected_at.timestamp_millis();
        context.identity.source_ip = Some(caller.source_ip.clone());
        context.identity.user_agent = caller.user_agent.clone();
        context.request_id = Some(request_id.to_owned());
        context.domain_name = Some(self.domain_name.clone());
        context.connection_id = Some(caller.connection_id.clone());
        context.apiid = Some(self.settings.api_id.clone());
        context.account_id = Some(self.settings.account_id.clone());
        event.is_base64_encoded = false;
        event
    }

    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> Invocation {
        self.target.invoke(payload_of(&event)).await
    }
}

/// The event as JSON, without what the type has and API Gateway does not send: fields that
/// serialize as `null`, and empty maps (`pathParameters`, `stageVariables`, a message's
/// headers). `queryStringParameters` holds one value per name (the last, as in REST API
/// proxy events), `multiValueQueryStringParameters` all of them.
fn payload_of(event: &ApiGatewayWebsocketProxyRequest) -> Value {
    fn without_nulls(value: &mut Value) {
        if let Some(object) = value.as_object_mut() {
            object.retain(|_, v| !v.is_null());
            object.values_mut().for_each(without_nulls);
        }
    }
    let mut payload = serde_json::to_value(event).unwrap_or_default();
    without_nulls(&mut payload);
    if let Some(object) = payload.as_object_mut() {
        if let Some(Value::Object(query)) = object.get_mut("queryStringParameters") {
            for value in query.values_mut() {
                if let Some(last) = value.as_array().and_then(|values| values.last()).cloned() {
                    *value = last;
                }
            }
        }
        object.retain(|_, v| v.as_object().is_none_or(|o| !o.is_empty()));
    }
    payload
}

/// Starts the WebSocket API on `ws_listener` and its Management API on `management_listener`;
/// both stop at `shutdown`, closing every connection (with `$disconnect`).
pub async fn start(
    ws_listener: tokio::net::TcpListener,
    management_listener: tokio::net::TcpListener,
    target: Arc<dyn Invoke>,
    settings: WebSocketSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<WebSocketApi> {
    let ws_address = ws_listener.local_addr()?;
    let management_address = management_listener.local_addr()?;
    let stage = settings.stage.clone();
    let shared = Arc::new(Shared {
        settings,
        target,
        domain_name: ws_address.to_string(),
        connections: Mutex::new(HashMap::new()),
        buckets: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
    });
    let sockets = Router::new()
        .route("/{stage}", get(upgrade))
        .with_state(Arc::clone(&shared));
    let management = Router::new()
        .route(
            "/{stage}/{collection}/{connection_id}",
            get(get_connection)
                .post(post_to_connection)
                .delete(delete_connection),
        )
        // The quota is checked in the handler, to answer as API Gateway does.
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(Arc::clone(&shared));
    for (listener, app) in [(ws_listener, sockets), (management_listener, management)] {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
            if let Err(e) = served {
                tracing::error!("the WebSocket API stopped: {e}");
            }
        });
    }
    Ok(WebSocketApi {
        url: format!("ws://{ws_address}/{stage}"),
        management_endpoint: format!("http://{management_address}/{stage}"),
        shared,
    })
}

/// API Gateway's answer to the upgrade request when it does not take it.
fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stage): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if stage != shared.settings.stage {
        return refuse(StatusCode::FORBIDDEN, "Forbidden");
    }
    if !shared.admit(CONNECT) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    }
    let caller = Caller {
        connection_id: aws_id(),
        connected_at: Utc::now(),
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let request_id = aws_id();
    let mut event = shared.event(&caller, CONNECT, "CONNECT", &request_id);
    event.headers = headers.clone();
    event.multi_value_headers = headers;
    let query = query_parameters(&uri);
    event.query_string_parameters = query.clone().into();
    event.multi_value_query_string_parameters = query.into();
    if let Some(authorizer) = &shared.settings.connect_authorizer {
        match authorize(&shared, authorizer, &event).await {
            Ok(fields) => event.request_context.authorizer.fields = fields,
            Err(refusal) => return refusal,
        }
    }
    // Without a $connect route, API Gateway connects without asking anyone.
    let response = if shared.settings.has_route(CONNECT) {
        match shared.invoke(event).await {
            Invocation::Response(response) => response,
            Invocation::FunctionError(error) => {
                tracing::warn!(%error, "$connect failed");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
            }
        }
    } else {
        Value::Null
    };
    let status = response
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if !status.is_success() {
        return status.into_response();
    }
    let mut ws = ws
        .max_frame_size(shared.settings.max_frame_bytes)
        .max_message_size(shared.settings.max_message_bytes);
    if let Some(protocol) = subprotocol(&response) {
        ws = ws.protocols([protocol]);
    }
    ws.on_upgrade(move |socket| run(shared, socket, caller))
}

/// Asks the `$connect` authorizer about a connection: its context (and `principalId`) for the
/// `$connect` event's `requestContext.authorizer` when the policy it answers allows
/// `execute-api:Invoke` on this route, else API Gateway's refusal: 403 for a denying policy,
/// 401 when the function fails with `Unauthorized`, 500 for any other failure
/// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-lambda-auth.html>).
async fn authorize(
    shared: &Shared,
    authorizer: &ConnectAuthorizer,
    event: &ApiGatewayWebsocketProxyRequest,
) -> Result<HashMap<String, Value>, Response> {
    let settings = &shared.settings;
    let method_arn = format!(
        "arn:aws:execute-api:{}:{}:{}/{}/{CONNECT}",
        settings.region, settings.account_id, settings.api_id, settings.stage
    );
    let mut question = payload_of(event);
    if let Some(object) = question.as_object_mut() {
        object.insert("type".into(), json!("REQUEST"));
        object.insert("methodArn".into(), json!(method_arn));
        object.remove("isBase64Encoded");
    }
    let answer = match authorizer.function.target.invoke(question).await {
        Invocation::Response(answer) => answer,
        Invocation::FunctionError(error) => {
            if error["errorMessage"].as_str() == Some("Unauthorized") {
                return Err(refuse(StatusCode::UNAUTHORIZED, "Unauthorized"));
            }
            tracing::warn!(%error, "the $connect authorizer failed");
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
            ));
        }
    };
    let statements = answer["policyDocument"]["Statement"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let covers = |statement: &Value| {
        let listed = |key: &str, wanted: &dyn Fn(&str) -> bool| match &statement[key] {
            Value::String(one) => wanted(one),
            Value::Array(many) => many.iter().filter_map(Value::as_str).any(wanted),
            _ => false,
        };
        listed("Action", &|a| a == "execute-api:Invoke" || a == "*")
            && listed("Resource", &|r| r == method_arn || r == "*")
    };
    let effect = |wanted: &str| {
        statements
            .iter()
            .any(|s| s["Effect"].as_str() == Some(wanted) && covers(s))
    };
    // An explicit Deny wins over an Allow, as in any IAM policy.
    if effect("Deny") || !effect("Allow") {
        return Err(refuse(StatusCode::FORBIDDEN, "Forbidden"));
    }
    let mut fields: HashMap<String, Value> = answer["context"]
        .as_object()
        .map(|context| context.clone().into_iter().collect())
        .unwrap_or_default();
    if let Some(principal) = answer.get("principalId") {
        fields.insert("principalId".into(), principal.clone());
    }
    Ok(fields)
}

/// The `Sec-WebSocket-Protocol` the function answered, in `headers` or `multiValueHeaders`.
fn subprotocol(response: &Value) -> Option<String> {
    ["headers", "multiValueHeaders"].iter().find_map(|field| {
        let (_, value) = response
            .get(*field)?
            .as_object()?
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Array(values) => values.first()?.as_str().map(str::to_owned),
            _ => None,
        }
    })
}

/// A message from the client, for the function.
#[derive(Debug)]
struct Inbound {
    body: String,
    is_base64_encoded: bool,
}

/// One connection, from the upgrade to `$disconnect`.
async fn run(shared: Arc<Shared>, socket: WebSocket, caller: Caller) {
    let (commands, mut orders) = mpsc::unbounded_channel();
    let connection = Arc::new(Connection {
        commands: commands.clone(),
        connected_at: caller.connected_at,
        last_active_at: Mutex::new(caller.connected_at),
        source_ip: caller.source_ip.clone(),
        user_agent: caller.user_agent.clone(),
    });
    lock(&shared.connections).insert(caller.connection_id.clone(), Arc::clone(&connection));

    let (inbound, queue) = mpsc::unbounded_channel::<Inbound>();
    let worker = tokio::spawn(route_messages(
        Arc::clone(&shared),
        caller.clone(),
        queue,
        commands,
    ));

    let (mut sink, mut stream) = socket.split();
    let settings = &shared.settings;
    let ends_at = Instant::now() + settings.max_duration;
    let mut idle_until = Instant::now() + settings.idle_timeout;
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
    };
    // What $disconnect reports: the client's close code and reason when it sent one.
    let (code, reason): (u16, String) = loop {
        tokio::select! {
            frame = stream.next() => {
                let message = match frame {
                    None => break (1006, String::new()),
                    Some(Err(e)) if too_big(&e) => {
                        // Over the frame or message quota: closed with 1009
                        // (https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html#apigateway-execution-service-websocket-limits-table).
                        let _ = sink.send(close(1009, "Message too big")).await;
                        break (1009, "Message too big".to_owned());
                    }
                    Some(Err(_)) => break (1006, String::new()),
                    Some(Ok(message)) => message,
                };
                idle_until = Instant::now() + settings.idle_timeout;
                *lock(&connection.last_active_at) = Utc::now();
                let message = match message {
                    Message::Text(text) => Inbound { body: text.to_string(), is_base64_encoded: false },
                    Message::Binary(bytes) => Inbound { body: BASE64.encode(&bytes), is_base64_encoded: true },
                    Message::Close(frame) => break frame.map_or_else(
                        || (1005, "Client-side close frame status not set".to_owned()),
                        |f| (f.code, f.reason.to_string()),
                    ),
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let _ = inbound.send(message);
            }
            order = orders.recv() => match order {
                Some(Command::Send(message)) => {
                    if sink.send(message).await.is_err() {
                        break (1006, String::new());
                    }
                }
                // DeleteConnection closes normally (https://github.com/boto/boto3/issues/3789
                // shows the $disconnect it causes).
                Some(Command::Close) | None => {
                    let _ = sink.send(close(1000, "")).await;
                    break (1000, "Connection Closed Normally".to_owned());
                }
            },
            () = tokio::time::sleep_until(idle_until) => {
                let _ = sink.send(close(1001, "Going away")).await;
                break (1001, "Going away".to_owned());
            }
            () = tokio::time::sleep_until(ends_at) => {
                let _ = sink.send(close(1001, "Going away")).await;
                break (1001, "Going away".to_owned());
            }
            () = shared.shutdown.cancelled() => {
                let _ = sink.send(close(1001, "Going away")).await;
                break (1001, "Going away".to_owned());
            }
        }
    };
    // Sends what is still queued, such as the reply to the client's close frame.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    // Gone from here on: a post now gets 410.
    lock(&shared.connections).remove(&caller.connection_id);
    drop(inbound);
    let _ = worker.await;
    if !settings.has_route(DISCONNECT) {
        return;
    }
    let request_id = aws_id();
    let mut event = shared.event(&caller, DISCONNECT, "DISCONNECT", &request_id);
    event.request_context.disconnect_status_code = Some(i64::from(code));
    event.request_context.disconnect_reason = Some(reason);
    if let Invocation::FunctionError(error) = shared.invoke(event).await {
        // Best effort: nobody is left to tell.
        tracing::warn!(%error, "$disconnect failed");
    }
}

/// Whether a read failed on the frame or message size limit.
fn too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<tungstenite::Error>(),
            Some(tungstenite::Error::Capacity(_))
        ) {
            return true;
        }
        source = e.source();
    }
    false
}

/// Invokes the function with each message of one connection, in order.
async fn route_messages(
    shared: Arc<Shared>,
    caller: Caller,
    mut queue: mpsc::UnboundedReceiver<Inbound>,
    replies: mpsc::UnboundedSender<Command>,
) {
    while let Some(message) = queue.recv().await {
        let request_id = aws_id();
        let reply = |text: &str| {
            let body = json!({
                "message": text,
                "connectionId": caller.connection_id,
                "requestId": request_id,
            });
            let _ = replies.send(Command::Send(Message::Text(body.to_string().into())));
        };
        let route = if message.is_base64_encoded {
            shared.settings.has_route(DEFAULT).then_some(DEFAULT)
        } else {
            shared.settings.select_route(&message.body)
        };
        let Some(route) = route else {
            tracing::info!(
                connection_id = caller.connection_id,
                "no route for a message"
            );
            continue;
        };
        // Stage throttling (DefaultRouteSettings): the message is not routed
        // (https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-protect.html).
        if !shared.admit(route) {
            reply("Too Many Requests");
            continue;
        }
        let mut event = shared.event(&caller, route, "MESSAGE", &request_id);
        event.request_context.message_id = Some(aws_id());
        event.body = Some(message.body);
        event.is_base64_encoded = message.is_base64_encoded;
        if let Invocation::FunctionError(error) = shared.invoke(event).await {
            // The message API Gateway sends the client, as seen in
            // https://github.com/aws-samples/simple-websockets-chat-app/issues/46.
            tracing::warn!(%error, "a message route failed");
            reply("Internal server error");
        }
    }
}

/// The errors of the Management API
/// (<https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/apigatewaymanagementapi.html>,
/// the reference the @connections page points to).
#[derive(Debug, Clone, Copy)]
enum ManagementError {
    /// Not this stage, or not `@connections`.
    Forbidden,
    /// No such connection: never opened, not yet past `$connect`, or closed.
    Gone,
    /// A message over the payload quota.
    PayloadTooLarge,
}

impl IntoResponse for ManagementError {
    /// The shape the SDK reads: the type in `x-amzn-ErrorType`, the message in the JSON body.
    fn into_response(self) -> Response {
        let (status, error_type, message) = match self {
            Self::Forbidden => (StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden"),
            Self::Gone => (StatusCode::GONE, "GoneException", "Gone"),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLargeException",
                "Message too long",
            ),
        };
        (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    header::HeaderName::from_static("x-amzn-errortype"),
                    HeaderValue::from_static(error_type),
                ),
            ],
            json!({ "message": message }).to_string(),
        )
            .into_response()
    }
}

/// The connection a Management API path names.
fn connection(
    shared: &Shared,
    (stage, collection, connection_id): &(String, String, String),
) -> Result<Arc<Connection>, ManagementError> {
    if *stage != shared.settings.stage || collection != "@connections" {
        return Err(ManagementError::Forbidden);
    }
    lock(&shared.connections)
        .get(connection_id)
        .cloned()
        .ok_or(ManagementError::Gone)
}

/// `POST @connections/{id}`: sends the body to the client
/// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-how-to-call-websocket-api-connections.html>).
async fn post_to_connection(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<(String, String, String)>,
    body: Bytes,
) -> Result<StatusCode, ManagementError> {
    let connection = connection(&shared, &path)?;
    // The message payload quota holds for messages to the client too.
    if body.len() > shared.settings.max_message_bytes {
        return Err(ManagementError::PayloadTooLarge);
    }
    let message = match String::from_utf8(body.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(_) => Message::Binary(body),
    };
    connection
        .commands
        .send(Command::Send(message))
        .map_err(|_| ManagementError::Gone)?;
    Ok(StatusCode::OK)
}

/// `GET @connections/{id}`: when it connected, who, and when it last sent something.
async fn get_connection(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<(String, String, String)>,
) -> Result<axum::Json<Value>, ManagementError> {
    let connection = connection(&shared, &path)?;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let last_active_at = *lock(&connection.last_active_at);
    Ok(axum::Json(json!({
        "connectedAt": time(connection.connected_at),
        "identity": {
            "sourceIp": connection.source_ip,
            "userAgent": connection.user_agent,
        },
        "lastActiveAt": time(last_active_at),
    })))
}

/// `DELETE @connections/{id}`: closes the connection (then `$disconnect` runs).
async fn delete_connection(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<(String, String, String)>,
) -> Result<StatusCode, ManagementError> {
    let _ = connection(&shared, &path)?.commands.send(Command::Close);
    Ok(StatusCode::NO_CONTENT)
}
