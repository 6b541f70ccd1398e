//! Who may do what on the AWS deployment, rehearsed: the template's authorizer in front of the
//! HTTP API's routes and the WebSocket API's `$connect`, the api function holding mutations to
//! the authorizer's write grant, and CORS answered by API Gateway. Each attack is made as a
//! stranger would make it, through the front doors, and must change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rehearsal::stack::{Options, Rehearsal};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

async fn start(stack: &str, parameters: &[(&str, &str)]) -> (Rehearsal, tempfile::TempDir) {
    let log_dir = tempfile::tempdir().unwrap();
    let options = Options {
        template: root().join("template.yaml"),
        bootstraps: root().join("target/debug"),
        moto_server: PathBuf::from("moto_server"),
        http_port: 0,
        websocket_port: 0,
        management_port: 0,
        lambda_port: 0,
        emulator_port: 0,
        log_dir: log_dir.path().to_owned(),
        stack: stack.into(),
        parameters: parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::default()
    };
    (Rehearsal::start(options).await.unwrap(), log_dir)
}

const ADD: &str = r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#;
const BOOKS: &str = "{ books { edges { node { name } } } }";

/// POSTs `query` to the HTTP API, with `credential` as a bearer token when given.
async fn post(rehearsal: &Rehearsal, query: &str, credential: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/graphql", rehearsal.http_url))
        .json(&json!({ "query": query }));
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The books stored, as a reader with `credential` sees them.
async fn stored(rehearsal: &Rehearsal, credential: Option<&str>) -> Vec<Value> {
    let (status, body) = post(rehearsal, BOOKS, credential).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["books"]["edges"].as_array().unwrap().clone()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a `graphql-transport-ws` socket at `url` (with `authorization` as a header when
/// given): the socket, or the HTTP status of the refused handshake.
async fn connect(url: &str, authorization: Option<&str>) -> Result<Socket, u16> {
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(authorization) = authorization {
        headers.insert("authorization", authorization.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("the handshake failed otherwise: {other}"),
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next protocol message, within `wait`.
async fn next(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => return None,
        }
    }
}

/// Subscribes to `bookEvents` and waits until the subscription is stored (the notifier serves
/// only stored subscriptions, and API Gateway answers nothing to a `subscribe`).
async fn subscribe(rehearsal: &Rehearsal, socket: &mut Socket) {
    send(socket, json!({"type": "connection_init"})).await;
    let ack = next(socket, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    send(
        socket,
        json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { bookEvents { type book { name } } }"}}),
    )
    .await;
    let status = format!("{}/rehearsal/status", rehearsal.lambda_endpoint);
    for _ in 0..100 {
        let now: Value = reqwest::get(&status).await.unwrap().json().await.unwrap();
        if now["subscriptions"].as_u64() >= Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the subscription was never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_default_deploy_lets_no_anonymous_client_read_write_or_subscribe() {
    if testing::moto::endpoint().is_none() {
        return;
    }
    let (rehearsal, _logs) = start("private", &[]).await;
    let secret = rehearsal
        .credential()
        .expect("without JwtIssuer the template generates a secret")
        .to_owned();
    assert!(secret.len() >= 40, "a generated secret is long: {secret}");

    // Over HTTP: no credential is 401 from API Gateway itself, a wrong one 403 from the
    // authorizer; neither reaches the api function.
    for query in [ADD, BOOKS] {
        let (status, body) = post(&rehearsal, query, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body, json!({"message": "Unauthorized"}));
        let (status, _) = post(&rehearsal, query, Some("guess")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = post(&rehearsal, query, Some(&secret[1..])).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "a prefix of the secret is not the secret"
        );
    }
    let get = reqwest::get(format!(
        "{}/graphql?query={{books{{edges{{cursor}}}}}}",
        rehearsal.http_url
    ))
    .await
    .unwrap();
    assert_eq!(
        get.status(),
        StatusCode::UNAUTHORIZED,
        "GET /graphql is guarded too"
    );
    assert!(
        stored(&rehearsal, Some(&secret)).await.is_empty(),
        "the attacks changed nothing"
    );
    // The GraphiQL page itself is public (it holds no data; its requests need the credential).
    let page = reqwest::get(format!("{}/", rehearsal.http_url))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // No CORS configured (AllowedOrigins empty): a preflight matches no route.
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/graphql", rehearsal.http_url),
        )
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NOT_FOUND);
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Over the WebSocket API: $connect is refused without the credential, before the
    // subscriptions function stores anything.
    let url = &rehearsal.websocket_url;
    assert_eq!(connect(url, None).await.err(), Some(403));
    assert_eq!(
        connect(&format!("{url}?token=guess"), None).await.err(),
        Some(403)
    );
    assert_eq!(connect(url, Some("Bearer guess")).await.err(), Some(403));
    let status: Value = reqwest::get(format!("{}/rehearsal/status", rehearsal.lambda_endpoint))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["connections"], 0, "{status}");

    // The secret opens both doors: as ?token= (browsers) and as a header (other clients).
    let mut by_header = connect(url, Some(&format!("Bearer {secret}")))
        .await
        .unwrap();
    send(&mut by_header, json!({"type": "connection_init"})).await;
    assert_eq!(
        next(&mut by_header, Duration::from_secs(10)).await.unwrap()["type"],
        "connection_ack"
    );
    let mut socket = connect(&format!("{url}?token={secret}"), None)
        .await
        .unwrap();
    subscribe(&rehearsal, &mut socket).await;
    let (status, body) = post(&rehearsal, ADD, Some(&secret)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["addBook"]["name"], "Dune", "{body}");
    let event = next(&mut socket, Duration::from_secs(30))
        .await
        .expect("the subscriber gets the event");
    assert_eq!(
        event["payload"]["data"]["bookEvents"]["book"]["name"], "Dune",
        "{event}"
    );
    rehearsal.stop().await;
}

/// An OpenID issuer on 127.0.0.1 with the api tests' throwaway key.
async fn issuer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks: Value =
        serde_json::from_str(include_str!("../../api/tests/fixtures/jwt/jwks.json")).unwrap();
    let discovery = json!({ "issuer": url, "jwks_uri": format!("{url}/keys") });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/keys", get(move || async move { Json(jwks) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn token(issuer: &str, scope: &str, expires_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": issuer, "sub": "someone", "client_id": "outboxdemo-client",
        "scope": scope, "iat": now, "exp": now + expires_in,
    });
    let key = EncodingKey::from_rsa_pem(include_bytes!(
        "../../api/tests/fixtures/jwt/test-issuer.pem"
    ))
    .unwrap();
    let header = Header {
        kid: Some("test-key-1".into()),
        ..Header::new(Algorithm::RS256)
    };
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_public_reads_and_jwts_only_the_write_scope_writes_and_cors_answers_listed_origins() {
    if testing::moto::endpoint().is_none() {
        return;
    }
    let issuer = issuer().await;
    let (rehearsal, _logs) = start(
        "jwt",
        &[
            ("PublicAccess", "read"),
            ("JwtIssuer", &issuer),
            ("JwtAudience", "outboxdemo-client"),
            (
                "AllowedOrigins",
                "https://app.example,https://admin.example",
            ),
        ],
    )
    .await;
    assert_eq!(
        rehearsal.credential(),
        None,
        "with JwtIssuer no secret is generated"
    );

    // Anyone may read; a mutation without the write grant is refused by the api with a code.
    assert!(stored(&rehearsal, None).await.is_empty());
    let (status, body) = post(&rehearsal, ADD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    assert_eq!(body["data"], Value::Null);
    let reader = token(&issuer, "openid", 300);
    let (_, body) = post(&rehearsal, ADD, Some(&reader)).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    // A bad token is refused outright, even where anonymous reads are allowed.
    let expired = token(&issuer, "outboxdemo/write", -120);
    let (status, _) = post(&rehearsal, BOOKS, Some(&expired)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        stored(&rehearsal, Some(&reader)).await.is_empty(),
        "nothing was written"
    );

    let writer = token(&issuer, "openid outboxdemo/write", 300);
    let (_, body) = post(&rehearsal, ADD, Some(&writer)).await;
    assert_eq!(body["data"]["addBook"]["name"], "Dune", "{body}");
    assert_eq!(stored(&rehearsal, None).await.len(), 1);

    // Anonymous subscriptions are part of public reads; a bad token is not.
    let url = &rehearsal.websocket_url;
    assert_eq!(
        connect(&format!("{url}?token={expired}"), None).await.err(),
        Some(403)
    );
    let mut socket = connect(url, None).await.unwrap();
    send(&mut socket, json!({"type": "connection_init"})).await;
    assert_eq!(
        next(&mut socket, Duration::from_secs(10)).await.unwrap()["type"],
        "connection_ack"
    );

    // CORS: API Gateway answers preflights itself, without the authorizer, for listed origins.
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/graphql", rehearsal.http_url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let listed = preflight("https://app.example").await.unwrap();
    assert_eq!(listed.status(), StatusCode::NO_CONTENT);
    let allowed = |response: &reqwest::Response, header: &str| {
        response
            .headers()
            .get(header)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        allowed(&listed, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert!(
        allowed(&listed, "access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert!(
        allowed(&listed, "access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let stranger = preflight("https://evil.example").await.unwrap();
    assert_eq!(allowed(&stranger, "access-control-allow-origin"), None);
    let read = client
        .post(format!("{}/graphql", rehearsal.http_url))
        .header("origin", "https://admin.example")
        .json(&json!({"query": BOOKS}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed(&read, "access-control-allow-origin").as_deref(),
        Some("https://admin.example")
    );
    rehearsal.stop().await;
}
