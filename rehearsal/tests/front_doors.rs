//! The HTTP API and the WebSocket API through real clients (reqwest, raw TCP, tokio-tungstenite,
//! the AWS SDK's Management API client), in front of fake functions that record their events.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_apigatewaymanagement::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt as _, StreamExt as _};
use rehearsal::authorizers::{AuthorizerFunction, ConnectAuthorizer, HttpAuthorizer};
use rehearsal::http_api::{self, HttpApiSettings, Route};
use rehearsal::lambda::{Invocation, Invoke};
use rehearsal::template::Template;
use rehearsal::websocket_api::{self, Throttling, WebSocketApi, WebSocketSettings};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

type Answer = Box<dyn Fn(Value) -> BoxFuture<'static, Invocation> + Send + Sync>;

/// A function that records every event and answers with `answer`.
struct Fake {
    events: Mutex<Vec<Value>>,
    answer: Answer,
}

impl Fake {
    fn new(
        answer: impl Fn(Value) -> BoxFuture<'static, Invocation> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        })
    }

    /// Answers every event with `payload`.
    fn answering(payload: Value) -> Arc<Self> {
        Self::new(move |_| {
            let payload = payload.clone();
            Box::pin(async move { Invocation::Response(payload) })
        })
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until an event satisfies `condition`.
    async fn wait_for(&self, condition: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        for _ in 0..250 {
            if let Some(event) = self.events().into_iter().find(|e| condition(e)) {
                return Ok(event);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no such event among {:#?}", self.events())
    }
}

#[async_trait::async_trait]
impl Invoke for Fake {
    async fn invoke(&self, payload: Value) -> Invocation {
        if let Ok(mut events) = self.events.lock() {
            events.push(payload.clone());
        }
        (self.answer)(payload).await
    }
}

fn function_error() -> Invocation {
    Invocation::FunctionError(json!({"errorType": "Boom", "errorMessage": "boom"}))
}

fn template() -> anyhow::Result<Template> {
    Template::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"))
}

// ---------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------

fn http_settings() -> anyhow::Result<HttpApiSettings> {
    HttpApiSettings::from_template(&template()?)
}

/// Routes for any method, for what the emulation does with methods the template's routes
/// (GET and POST) do not take.
fn any_method_settings() -> HttpApiSettings {
    let route = |path: &str| Route {
        method: "ANY".into(),
        path: path.into(),
    };
    HttpApiSettings::new(vec![route("/"), route("/{proxy+}")])
}

async fn http_api(target: Arc<Fake>, settings: HttpApiSettings) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    // The token is never cancelled: the server ends with the test's runtime.
    tokio::spawn(http_api::serve(
        listener,
        target,
        settings,
        CancellationToken::new(),
    ));
    Ok(address)
}

#[test]
fn the_http_routes_come_from_the_template() -> anyhow::Result<()> {
    let settings = http_settings()?;
    let keys: Vec<String> = settings.routes.iter().map(Route::key).collect();
    // Methods named, not ANY: a CORS preflight (OPTIONS) then matches no route, and API
    // Gateway answers it itself.
    assert_eq!(keys, ["GET /", "GET /{proxy+}", "POST /{proxy+}"]);
    assert_eq!(settings.integration_timeout, Duration::from_secs(30));
    assert_eq!(settings.max_payload_bytes, 10 * 1024 * 1024);
    Ok(())
}

#[tokio::test]
async fn a_request_becomes_the_documented_2_0_event_and_the_structured_response_is_sent()
-> anyhow::Result<()> {
    let fake = Fake::answering(json!({
        "statusCode": 201,
        "headers": {"content-type": "text/plain", "x-custom": "yes"},
        "cookies": ["a=1; Path=/", "b=2"],
        "body": "hi",
        "isBase64Encoded": false,
    }));
    let settings = http_settings()?;
    let api_id = settings.api_id.clone();
    let address = http_api(Arc::clone(&fake), settings).await?;
    let response = reqwest::Client::new()
        .post(format!("http://{address}/graphql?x=1&x=2&y=a%20b"))
        .header("Cookie", "c1=v1; c2=v2")
        .header("X-Multi", "a")
        .header("X-Multi", "b")
        .header("User-Agent", "front-doors")
        .header("Content-Type", "application/json")
        .body(r#"{"query":"{ books { name } }"}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("apigw-requestid"));
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-custom"], "yes");
    let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    assert_eq!(response.text().await?, "hi");

    let event = fake.events().pop().context("no event")?;
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "POST /{proxy+}");
    assert_eq!(event["rawPath"], "/graphql");
    assert_eq!(event["rawQueryString"], "x=1&x=2&y=a%20b");
    assert_eq!(event["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(event["headers"]["x-multi"], "a,b");
    assert_eq!(event["headers"]["content-type"], "application/json");
    assert!(
        event["headers"].get("cookie").is_none(),
        "cookies move to `cookies`"
    );
    assert_eq!(
        event["queryStringParameters"],
        json!({"x": "1,2", "y": "a b"})
    );
    assert_eq!(event["pathParameters"], json!({"proxy": "graphql"}));
    assert_eq!(event["body"], r#"{"query":"{ books { name } }"}"#);
    assert_eq!(event["isBase64Encoded"], false);
    let context = &event["requestContext"];
    assert_eq!(context["accountId"], "123456789012");
    assert_eq!(context["apiId"], api_id);
    assert_eq!(context["domainName"], address.to_string());
    assert_eq!(context["domainPrefix"], "127");
    assert_eq!(
        context["http"],
        json!({"method": "POST", "path": "/graphql", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "front-doors"})
    );
    assert_eq!(context["routeKey"], "POST /{proxy+}");
    assert_eq!(context["stage"], "$default");
    assert!(
        context["requestId"]
            .as_str()
            .is_some_and(|id| id.ends_with('='))
    );
    assert!(
        context["timeEpoch"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    let time = context["time"].as_str().context("time")?;
    chrono::DateTime::parse_from_str(time, "%d/%b/%Y:%H:%M:%S %z")?;
    // Nothing of the authorizer payloads the type also models.
    for key in ["httpMethod", "methodArn", "type", "resource"] {
        assert!(event.get(key).is_none(), "{key} in {event}");
    }
    // The api Lambda's runtime reads it as an HTTP API (2.0) request.
    let parsed: lambda_http::request::LambdaRequest = serde_json::from_value(event)?;
    assert!(matches!(
        parsed,
        lambda_http::request::LambdaRequest::ApiGatewayV2(_)
    ));
    Ok(())
}

#[tokio::test]
async fn the_root_is_its_own_route_and_an_unmatched_path_is_not_found() -> anyhow::Result<()> {
    let fake = Fake::answering(json!({"statusCode": 200, "body": "<html>"}));
    let address = http_api(Arc::clone(&fake), http_settings()?).await?;
    let response = reqwest::get(format!("http://{address}/")).await?;
    assert_eq!(response.status(), 200);
    let event = fake.events().pop().context("no event")?;
    assert_eq!(event["routeKey"], "GET /");
    assert!(event.get("pathParameters").is_none());
    assert_eq!(event["rawQueryString"], "");

    let only_root = HttpApiSettings::new(vec![Route {
        method: "ANY".into(),
        path: "/".into(),
    }]);
    let address = http_api(Arc::clone(&fake), only_root).await?;
    let response = reqwest::get(format!("http://{address}/graphql")).await?;
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await?, r#"{"message":"Not Found"}"#);
    Ok(())
}

/// A fake authorizer function: allows a request whose `authorization` header is
/// `Bearer good` (with a context), refuses other values, and fails for `Bearer boom`.
fn fake_http_authorizer() -> Arc<Fake> {
    Fake::new(|event: Value| {
        let authorization = event["headers"]["authorization"]
            .as_str()
            .map(str::to_owned);
        Box::pin(async move {
            match authorization.as_deref() {
                Some("Bearer boom") => function_error(),
                Some("Bearer good") => {
                    Invocation::Response(json!({"isAuthorized": true, "context": {"write": true}}))
                }
                _ => Invocation::Response(json!({"isAuthorized": false})),
            }
        })
    })
}

fn guarded(
    authorizer: Arc<Fake>,
    identity: &[&str],
    ttl: Duration,
) -> anyhow::Result<HttpApiSettings> {
    let mut settings = http_settings()?;
    settings.authorizer = Some(HttpAuthorizer::new(
        AuthorizerFunction {
            logical_id: "AuthorizerFunction".into(),
            target: authorizer,
        },
        vec!["POST /{proxy+}".into()],
        identity.iter().map(|h| (*h).to_owned()).collect(),
        ttl,
    ));
    Ok(settings)
}

#[tokio::test]
async fn a_guarded_route_asks_the_authorizer_as_http_apis_do() -> anyhow::Result<()> {
    let api = Fake::answering(json!({"statusCode": 200, "body": "ok"}));
    let authorizer = fake_http_authorizer();
    let settings = guarded(
        Arc::clone(&authorizer),
        &["authorization"],
        Duration::from_secs(300),
    )?;
    let address = http_api(Arc::clone(&api), settings).await?;
    let client = reqwest::Client::new();
    let post = |authorization: Option<&'static str>| {
        let mut request = client.post(format!("http://{address}/graphql")).body("{}");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };

    // A missing identity source: 401 without asking the authorizer.
    let response = post(None).await?;
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await?, r#"{"message":"Unauthorized"}"#);
    assert!(authorizer.events().is_empty());
    // A refusal: 403, and the function is never invoked.
    let response = post(Some("Bearer bad")).await?;
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await?, r#"{"message":"Forbidden"}"#);
    assert!(api.events().is_empty());
    // A failing authorizer: 500.
    assert_eq!(post(Some("Bearer boom")).await?.status(), 500);
    assert!(api.events().is_empty());
    // Allowed: the context reaches the function in requestContext.authorizer.lambda.
    assert_eq!(post(Some("Bearer good")).await?.status(), 200);
    let event = api.events().pop().context("no event")?;
    assert_eq!(
        event["requestContext"]["authorizer"]["lambda"],
        json!({"write": true})
    );
    // The authorizer's payload: format 2.0 without the body, with routeArn and identitySource.
    let question = authorizer.events().pop().context("no authorizer event")?;
    assert_eq!(question["type"], "REQUEST");
    assert_eq!(question["version"], "2.0");
    assert_eq!(question["identitySource"], json!(["Bearer good"]));
    assert!(
        question["routeArn"]
            .as_str()
            .is_some_and(|arn| arn.ends_with("/$default/POST/graphql"))
    );
    assert!(question.get("body").is_none());
    // Cached by the identity source's value: the same header is not asked about again, and
    // a cached refusal stays a refusal.
    let asked = authorizer.events().len();
    assert_eq!(post(Some("Bearer good")).await?.status(), 200);
    assert_eq!(post(Some("Bearer bad")).await?.status(), 403);
    assert_eq!(authorizer.events().len(), asked);
    // Other routes are not guarded.
    let response = client.get(format!("http://{address}/")).send().await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn without_identity_sources_every_request_is_asked_and_nothing_is_cached()
-> anyhow::Result<()> {
    let api = Fake::answering(json!({"statusCode": 200, "body": "ok"}));
    let authorizer = fake_http_authorizer();
    let address = http_api(
        Arc::clone(&api),
        guarded(Arc::clone(&authorizer), &[], Duration::ZERO)?,
    )
    .await?;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(format!("http://{address}/graphql"))
            .body("{}")
            .send()
            .await?;
        assert_eq!(
            response.status(),
            403,
            "an anonymous request reaches the authorizer"
        );
    }
    assert_eq!(authorizer.events().len(), 3);
    assert!(api.events().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_binary_body_goes_base64_and_a_base64_response_is_decoded() -> anyhow::Result<()> {
    let fake = Fake::answering(json!({"statusCode": 200, "body": "AJ//", "isBase64Encoded": true}));
    let address = http_api(Arc::clone(&fake), http_settings()?).await?;
    let response = reqwest::Client::new()
        .post(format!("http://{address}/upload"))
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 159, 255])
        .send()
        .await?;
    assert_eq!(response.bytes().await?.as_ref(), [0u8, 159, 255]);
    let event = fake.events().pop().context("no event")?;
    assert_eq!(event["isBase64Encoded"], true);
    assert_eq!(event["body"], "AJ//");
    Ok(())
}

#[tokio::test]
async fn a_payload_without_status_code_is_inferred_as_a_json_200() -> anyhow::Result<()> {
    // The two examples of the "Lambda function response for format 2.0" table.
    for (output, body) in [
        (json!("Hello from Lambda!"), "Hello from Lambda!"),
        (
            json!({"message": "Hello from Lambda!"}),
            r#"{"message":"Hello from Lambda!"}"#,
        ),
    ] {
        let address = http_api(Fake::answering(output), http_settings()?).await?;
        let response = reqwest::get(format!("http://{address}/x")).await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await?, body);
    }
    Ok(())
}

#[tokio::test]
async fn a_function_error_is_a_500() -> anyhow::Result<()> {
    let fake = Fake::new(|_| Box::pin(async { function_error() }));
    let address = http_api(fake, http_settings()?).await?;
    let response = reqwest::get(format!("http://{address}/graphql")).await?;
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.text().await?,
        r#"{"message":"Internal Server Error"}"#
    );
    Ok(())
}

#[tokio::test]
async fn a_function_slower_than_the_integration_timeout_is_a_503() -> anyhow::Result<()> {
    let fake = Fake::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Invocation::Response(json!({"statusCode": 200}))
        })
    });
    let mut settings = http_settings()?;
    settings.integration_timeout = Duration::from_millis(200);
    let address = http_api(fake, settings).await?;
    let response = reqwest::get(format!("http://{address}/graphql")).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await?,
        r#"{"message":"Service Unavailable"}"#
    );
    Ok(())
}

#[tokio::test]
async fn a_body_over_the_payload_quota_is_a_413_declared_or_chunked() -> anyhow::Result<()> {
    let fake = Fake::answering(json!({"statusCode": 200}));
    let mut settings = http_settings()?;
    settings.max_payload_bytes = 1000;
    let address = http_api(Arc::clone(&fake), settings).await?;
    let response = reqwest::Client::new()
        .post(format!("http://{address}/graphql"))
        .body(vec![b'a'; 1001])
        .send()
        .await?;
    assert_eq!(response.status(), 413);

    // Chunked: no length up front.
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(fake.events().is_empty(), "the function never sees it");

    // Chunked and within the quota: the whole body arrives.
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(fake.events().pop().context("no event")?["body"], "abcde");
    Ok(())
}

#[tokio::test]
async fn head_and_get_with_a_body_reach_the_function() -> anyhow::Result<()> {
    let fake = Fake::answering(
        json!({"statusCode": 200, "headers": {"content-type": "text/html"}, "body": "<html></html>"}),
    );
    let address = http_api(Arc::clone(&fake), any_method_settings()).await?;
    let client = reqwest::Client::new();
    let response = client.head(format!("http://{address}/")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "");
    assert_eq!(
        fake.events().pop().context("no event")?["requestContext"]["http"]["method"],
        "HEAD"
    );

    let response = client
        .get(format!("http://{address}/graphql"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.headers()["content-length"], "13");
    assert_eq!(response.text().await?, "<html></html>");
    assert_eq!(fake.events().pop().context("no event")?["body"], "{}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// WebSocket API
// ---------------------------------------------------------------------------------------------

fn ws_settings() -> anyhow::Result<WebSocketSettings> {
    WebSocketSettings::from_template(&template()?)
}

async fn ws_api(target: Arc<Fake>, settings: WebSocketSettings) -> anyhow::Result<WebSocketApi> {
    let sockets = TcpListener::bind("127.0.0.1:0").await?;
    let management = TcpListener::bind("127.0.0.1:0").await?;
    websocket_api::start(
        sockets,
        management,
        target,
        settings,
        CancellationToken::new(),
    )
    .await
}

/// What the subscriptions function answers: `$connect` with the subprotocol, the rest 200.
fn accepting() -> Arc<Fake> {
    Fake::answering(
        json!({"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "graphql-transport-ws"}}),
    )
}

fn management(api: &WebSocketApi) -> aws_sdk_apigatewaymanagement::Client {
    let config = aws_sdk_apigatewaymanagement::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(api.management_endpoint())
        .build();
    aws_sdk_apigatewaymanagement::Client::from_conf(config)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    api: &WebSocketApi,
    query: &str,
) -> anyhow::Result<(Socket, tungstenite::handshake::client::Response)> {
    let mut request = format!("{}{query}", api.url()).into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws, other".parse()?,
    );
    Ok(tokio_tungstenite::connect_async(request).await?)
}

/// The next data message or close frame.
async fn next(socket: &mut Socket) -> anyhow::Result<Message> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .context("nothing came")?
            .context("the socket ended")??;
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return Ok(message);
        }
    }
}

fn close_code(message: &Message) -> Option<u16> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code.into()),
        _ => None,
    }
}

fn connection_id(fake: &Fake) -> anyhow::Result<String> {
    let event = fake
        .events()
        .into_iter()
        .find(|e| e["requestContext"]["eventType"] == "CONNECT")
        .context("no CONNECT")?;
    Ok(event["requestContext"]["connectionId"]
        .as_str()
        .context("no id")?
        .to_owned())
}

#[test]
fn the_websocket_settings_come_from_the_template() -> anyhow::Result<()> {
    let settings = ws_settings()?;
    assert_eq!(settings.stage, "live");
    assert_eq!(settings.route_selection_expression, "$request.body.type");
    assert_eq!(settings.routes, ["$connect", "$disconnect", "$default"]);
    assert_eq!(
        settings.throttling,
        Some(Throttling {
            rate_limit: 50.0,
            burst_limit: 100.0
        })
    );
    assert_eq!(settings.idle_timeout, Duration::from_secs(600));
    assert_eq!(settings.max_duration, Duration::from_secs(7200));
    assert_eq!(
        (settings.max_message_bytes, settings.max_frame_bytes),
        (131_072, 32_768)
    );
    Ok(())
}

/// A `$connect` authorizer that allows `?token=good` (with a context), denies other tokens,
/// and fails with `Unauthorized` without one, as a function may to have API Gateway answer 401.
fn fake_connect_authorizer() -> Arc<Fake> {
    Fake::new(|event: Value| {
        let token = event["queryStringParameters"]["token"]
            .as_str()
            .map(str::to_owned);
        let arn = event["methodArn"].as_str().unwrap_or_default().to_owned();
        Box::pin(async move {
            let effect = match token.as_deref() {
                None => {
                    return Invocation::FunctionError(
                        json!({"errorType": "Error", "errorMessage": "Unauthorized"}),
                    );
                }
                Some("good") => "Allow",
                Some(_) => "Deny",
            };
            Invocation::Response(json!({
                "principalId": "someone",
                "policyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": effect, "Resource": arn}
                ]},
                "context": {"write": false}
            }))
        })
    })
}

#[tokio::test]
async fn connect_asks_the_authorizer_and_only_an_allowing_policy_opens_the_socket()
-> anyhow::Result<()> {
    let fake = accepting();
    let authorizer = fake_connect_authorizer();
    let mut settings = ws_settings()?;
    settings.connect_authorizer = Some(ConnectAuthorizer {
        function: AuthorizerFunction {
            logical_id: "AuthorizerFunction".into(),
            target: Arc::clone(&authorizer) as Arc<dyn Invoke>,
        },
    });
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let status = |result: anyhow::Result<_>| match result {
        Err(e) => match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => response.status().as_u16(),
            _ => 0,
        },
        Ok(_) => 101,
    };
    assert_eq!(status(connect(&api, "").await), 401);
    assert_eq!(status(connect(&api, "?token=bad").await), 403);
    assert!(
        fake.events().is_empty(),
        "$connect ran only after an allowing policy"
    );
    assert_eq!(api.open_connections(), 0);
    let question = authorizer.events().pop().context("no authorizer event")?;
    assert_eq!(question["type"], "REQUEST");
    assert!(
        question["methodArn"]
            .as_str()
            .is_some_and(|arn| arn.ends_with("/live/$connect"))
    );
    assert_eq!(question["requestContext"]["eventType"], "CONNECT");

    let (_socket, _) = connect(&api, "?token=good").await?;
    assert_eq!(api.open_connections(), 1);
    let event = fake.events().pop().context("no $connect event")?;
    let authorizer = &event["requestContext"]["authorizer"];
    assert_eq!(authorizer["principalId"], "someone", "{event}");
    assert_eq!(authorizer["write"], false, "{event}");
    Ok(())
}

#[tokio::test]
async fn connect_sends_the_connect_event_and_accepts_with_the_functions_subprotocol()
-> anyhow::Result<()> {
    let fake = accepting();
    let settings = ws_settings()?;
    let api_id = settings.api_id.clone();
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (_socket, response) = connect(&api, "?token=abc").await?;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    assert_eq!(api.open_connections(), 1);

    let event = fake.events().pop().context("no event")?;
    let context = &event["requestContext"];
    assert_eq!(context["eventType"], "CONNECT");
    assert_eq!(context["routeKey"], "$connect");
    assert_eq!(context["messageDirection"], "IN");
    assert_eq!(context["stage"], "live");
    assert_eq!(context["apiId"], api_id);
    let host = api
        .url()
        .trim_start_matches("ws://")
        .trim_end_matches("/live");
    assert_eq!(context["domainName"], host);
    assert!(
        context["connectionId"]
            .as_str()
            .is_some_and(|id| id.ends_with('='))
    );
    assert!(context["requestId"].as_str().is_some());
    assert!(
        context["connectedAt"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    assert_eq!(context["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(
        event["headers"]["sec-websocket-protocol"],
        "graphql-transport-ws, other"
    );
    assert_eq!(
        event["multiValueHeaders"]["sec-websocket-protocol"],
        json!(["graphql-transport-ws, other"])
    );
    assert_eq!(event["queryStringParameters"]["token"], "abc");
    // The subscriptions Lambda's endpoint_of reads the event with the same type.
    let parsed: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
        serde_json::from_value(event)?;
    assert_eq!(parsed.request_context.stage.as_deref(), Some("live"));
    Ok(())
}

#[tokio::test]
async fn a_refused_or_failed_connect_refuses_the_handshake() -> anyhow::Result<()> {
    let api = ws_api(Fake::answering(json!({"statusCode": 403})), ws_settings()?).await?;
    match connect(&api, "").await {
        Err(e) => match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
            _ => bail!("{e}"),
        },
        Ok(_) => bail!("the handshake went through"),
    }
    let api = ws_api(
        Fake::new(|_| Box::pin(async { function_error() })),
        ws_settings()?,
    )
    .await?;
    match connect(&api, "").await {
        Err(e) => match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 500),
            _ => bail!("{e}"),
        },
        Ok(_) => bail!("the handshake went through"),
    }
    assert_eq!(api.open_connections(), 0);
    Ok(())
}

#[tokio::test]
async fn until_connect_returns_the_connection_cannot_be_posted_to() -> anyhow::Result<()> {
    let client: Arc<Mutex<Option<aws_sdk_apigatewaymanagement::Client>>> = Arc::default();
    let gone = Arc::new(Mutex::new(None));
    let (in_connect, outcome) = (Arc::clone(&client), Arc::clone(&gone));
    let fake = Fake::new(move |event| {
        let client = in_connect.lock().ok().and_then(|c| c.clone());
        let outcome = Arc::clone(&outcome);
        Box::pin(async move {
            if event["requestContext"]["eventType"] == "CONNECT"
                && let (Some(client), Some(id)) =
                    (client, event["requestContext"]["connectionId"].as_str())
            {
                let result = client
                    .post_to_connection()
                    .connection_id(id)
                    .data(Blob::new("early"))
                    .send()
                    .await;
                let is_gone = result
                    .err()
                    .and_then(|e| e.into_service_error().is_gone_exception().then_some(()));
                if let Ok(mut outcome) = outcome.lock() {
                    *outcome = Some(is_gone.is_some());
                }
            }
            Invocation::Response(json!({"statusCode": 200}))
        })
    });
    let api = ws_api(fake, ws_settings()?).await?;
    if let Ok(mut slot) = client.lock() {
        *slot = Some(management(&api));
    }
    let request = api.url().into_client_request()?;
    let _socket = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        *gone.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        Some(true)
    );
    Ok(())
}

#[tokio::test]
async fn messages_are_routed_by_the_selection_expression() -> anyhow::Result<()> {
    let fake = accepting();
    let mut settings = ws_settings()?;
    settings.routes.push("ping".to_owned());
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (mut socket, _) = connect(&api, "").await?;
    for body in [
        r#"{"type":"ping"}"#,
        r#"{"type":"subscribe","id":"1"}"#,
        "not json",
        r#"{"type":"$connect"}"#,
    ] {
        socket.send(Message::text(body)).await?;
    }
    let routed = |body: &'static str| {
        fake.wait_for(move |e| e["requestContext"]["eventType"] == "MESSAGE" && e["body"] == body)
    };
    assert_eq!(
        routed(r#"{"type":"ping"}"#).await?["requestContext"]["routeKey"],
        "ping"
    );
    assert_eq!(
        routed(r#"{"type":"subscribe","id":"1"}"#).await?["requestContext"]["routeKey"],
        "$default"
    );
    let message = routed("not json").await?;
    assert_eq!(message["requestContext"]["routeKey"], "$default");
    assert_eq!(message["requestContext"]["messageDirection"], "IN");
    assert!(message["requestContext"]["messageId"].is_string());
    assert_eq!(message["isBase64Encoded"], false);
    assert_eq!(
        routed(r#"{"type":"$connect"}"#).await?["requestContext"]["routeKey"],
        "$default"
    );
    Ok(())
}

#[tokio::test]
async fn a_function_error_on_a_message_is_reported_to_the_client() -> anyhow::Result<()> {
    let fake = Fake::new(|event| {
        Box::pin(async move {
            if event["requestContext"]["eventType"] == "MESSAGE" {
                function_error()
            } else {
                Invocation::Response(json!({"statusCode": 200}))
            }
        })
    });
    let api = ws_api(Arc::clone(&fake), ws_settings()?).await?;
    let (mut socket, _) = tokio_tungstenite::connect_async(api.url()).await?;
    socket
        .send(Message::text(r#"{"type":"connection_init"}"#))
        .await?;
    let Message::Text(text) = next(&mut socket).await? else {
        bail!("not a text message");
    };
    let error: Value = serde_json::from_str(&text)?;
    let message = fake
        .wait_for(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .await?;
    assert_eq!(
        error,
        json!({
            "message": "Internal server error",
            "connectionId": connection_id(&fake)?,
            "requestId": message["requestContext"]["requestId"],
        })
    );
    Ok(())
}

#[tokio::test]
async fn the_function_result_of_a_message_is_not_sent_to_the_client() -> anyhow::Result<()> {
    let fake = Fake::answering(json!({"statusCode": 200, "body": "not for the client"}));
    let api = ws_api(Arc::clone(&fake), ws_settings()?).await?;
    let (mut socket, _) = tokio_tungstenite::connect_async(api.url()).await?;
    socket.send(Message::text("{}")).await?;
    fake.wait_for(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .await?;
    let nothing = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
    assert!(nothing.is_err(), "got {nothing:?}");
    Ok(())
}

#[tokio::test]
async fn disconnect_follows_the_clients_close() -> anyhow::Result<()> {
    let fake = accepting();
    let api = ws_api(Arc::clone(&fake), ws_settings()?).await?;
    let (mut socket, _) = connect(&api, "").await?;
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await?;
    // The close handshake completes: the client gets the reply to its close frame.
    assert_eq!(close_code(&next(&mut socket).await?), Some(1000));
    let event = fake
        .wait_for(|e| e["requestContext"]["eventType"] == "DISCONNECT")
        .await?;
    let context = &event["requestContext"];
    assert_eq!(context["routeKey"], "$disconnect");
    assert_eq!(context["disconnectStatusCode"], 1000);
    assert_eq!(context["disconnectReason"], "bye");
    assert_eq!(context["connectionId"], connection_id(&fake)?);
    assert_eq!(api.open_connections(), 0);
    Ok(())
}

#[tokio::test]
async fn the_management_api_posts_gets_and_deletes_through_the_sdk() -> anyhow::Result<()> {
    let fake = accepting();
    let api = ws_api(Arc::clone(&fake), ws_settings()?).await?;
    let (mut socket, _) = connect(&api, "").await?;
    let id = connection_id(&fake)?;
    let client = management(&api);

    client
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(r#"{"type":"connection_ack"}"#))
        .send()
        .await?;
    assert_eq!(
        next(&mut socket).await?,
        Message::text(r#"{"type":"connection_ack"}"#)
    );

    let connection = client.get_connection().connection_id(&id).send().await?;
    assert!(connection.connected_at().is_some());
    assert!(connection.last_active_at().is_some());
    assert_eq!(
        connection.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );

    let too_big = client
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(vec![b'a'; 128 * 1024 + 1]))
        .send()
        .await;
    let error = too_big
        .err()
        .context("a 128 KB + 1 post went through")?
        .into_service_error();
    assert!(error.is_payload_too_large_exception(), "{error:?}");

    client.delete_connection().connection_id(&id).send().await?;
    assert_eq!(close_code(&next(&mut socket).await?), Some(1000));
    let event = fake
        .wait_for(|e| e["requestContext"]["eventType"] == "DISCONNECT")
        .await?;
    assert_eq!(event["requestContext"]["disconnectStatusCode"], 1000);

    for gone_id in [id.as_str(), "Zm9vYmFyYmF6cXV4PQ="] {
        let posted = client
            .post_to_connection()
            .connection_id(gone_id)
            .data(Blob::new("x"))
            .send()
            .await;
        let error = posted
            .err()
            .context("a post to a gone connection went through")?
            .into_service_error();
        assert!(error.is_gone_exception(), "{error:?}");
        let got = client.get_connection().connection_id(gone_id).send().await;
        assert!(
            got.err()
                .context("got a gone connection")?
                .into_service_error()
                .is_gone_exception()
        );
        let deleted = client
            .delete_connection()
            .connection_id(gone_id)
            .send()
            .await;
        assert!(
            deleted
                .err()
                .context("deleted a gone connection")?
                .into_service_error()
                .is_gone_exception()
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_a_disconnect() -> anyhow::Result<()> {
    let fake = accepting();
    let mut settings = ws_settings()?;
    settings.idle_timeout = Duration::from_millis(300);
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (mut socket, _) = connect(&api, "").await?;
    assert_eq!(close_code(&next(&mut socket).await?), Some(1001));
    let event = fake
        .wait_for(|e| e["requestContext"]["eventType"] == "DISCONNECT")
        .await?;
    assert_eq!(event["requestContext"]["disconnectStatusCode"], 1001);
    Ok(())
}

#[tokio::test]
async fn an_active_connection_still_ends_at_the_maximum_duration() -> anyhow::Result<()> {
    let fake = accepting();
    let mut settings = ws_settings()?;
    settings.idle_timeout = Duration::from_millis(300);
    settings.max_duration = Duration::from_millis(900);
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (socket, _) = connect(&api, "").await?;
    let (mut sink, mut stream) = socket.split();
    let started = tokio::time::Instant::now();
    let keep_alive = tokio::spawn(async move {
        while sink.send(Message::text("{}")).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await? {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => bail!("{other:?}"),
        }
    };
    keep_alive.abort();
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1001));
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "idle messages kept it open past the idle timeout"
    );
    fake.wait_for(|e| e["requestContext"]["eventType"] == "DISCONNECT")
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_message_over_128_kb_closes_with_1009() -> anyhow::Result<()> {
    let fake = accepting();
    let mut settings = ws_settings()?;
    // Frames as large as messages, to meet the message quota on its own.
    settings.max_frame_bytes = 1024 * 1024;
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (mut socket, _) = connect(&api, "").await?;
    socket.send(Message::text("a".repeat(128 * 1024))).await?;
    fake.wait_for(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .await?;
    socket
        .send(Message::text("a".repeat(128 * 1024 + 1)))
        .await?;
    assert_eq!(close_code(&next(&mut socket).await?), Some(1009));
    let event = fake
        .wait_for(|e| e["requestContext"]["eventType"] == "DISCONNECT")
        .await?;
    assert_eq!(event["requestContext"]["disconnectStatusCode"], 1009);
    Ok(())
}

#[tokio::test]
async fn a_frame_over_32_kb_closes_with_1009() -> anyhow::Result<()> {
    let fake = accepting();
    let api = ws_api(Arc::clone(&fake), ws_settings()?).await?;
    let (mut socket, _) = connect(&api, "").await?;
    socket
        .send(Message::text("a".repeat(32 * 1024 + 1)))
        .await?;
    assert_eq!(close_code(&next(&mut socket).await?), Some(1009));
    Ok(())
}

#[tokio::test]
async fn messages_beyond_the_stage_throttle_are_not_routed() -> anyhow::Result<()> {
    let fake = accepting();
    let mut settings = ws_settings()?;
    settings.throttling = Some(Throttling {
        rate_limit: 0.001,
        burst_limit: 2.0,
    });
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (mut socket, _) = connect(&api, "").await?;
    for _ in 0..3 {
        socket.send(Message::text("{}")).await?;
    }
    let Message::Text(text) = next(&mut socket).await? else {
        bail!("not a text message");
    };
    let reply: Value = serde_json::from_str(&text)?;
    assert_eq!(reply["message"], "Too Many Requests");
    assert_eq!(reply["connectionId"], connection_id(&fake)?);
    let messages = fake
        .events()
        .iter()
        .filter(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .count();
    assert_eq!(messages, 2);
    Ok(())
}

#[tokio::test]
async fn without_connect_and_disconnect_routes_only_messages_reach_the_function()
-> anyhow::Result<()> {
    let fake = Fake::answering(json!({"statusCode": 500}));
    let mut settings = ws_settings()?;
    settings.routes = vec!["$default".to_owned()];
    let api = ws_api(Arc::clone(&fake), settings).await?;
    let (mut socket, _) = tokio_tungstenite::connect_async(api.url()).await?;
    socket.send(Message::text("{}")).await?;
    fake.wait_for(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .await?;
    socket.close(None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<Value> = fake
        .events()
        .iter()
        .map(|e| e["requestContext"]["eventType"].clone())
        .collect();
    assert_eq!(types, [json!("MESSAGE")]);
    Ok(())
}
