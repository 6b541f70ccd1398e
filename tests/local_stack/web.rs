//! What pages on other origins can do with the local stack: open the socket only when their
//! origin is listed (`--allow-origin`), read responses (CORS) only then, and see dead letters
//! only with the credential when one is set.

use futures_util::{SinkExt, StreamExt};
use outboxdemo::faults::Faults;
use outboxdemo::stack::Storage;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::support::{TestApp, error_code, quick_settings, spawn_with};

const LISTED: &str = "http://localhost:5173";
const UNLISTED: &str = "http://evil.example";

async fn app_allowing(origins: &[&str]) -> TestApp {
    let mut settings = quick_settings(Storage::InMemory);
    settings.api.allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
    spawn_with(settings).await
}

/// Opens `/graphql/ws` as a page of `origin` would.
async fn open_socket(
    app: &TestApp,
    origin: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let mut request = format!("ws://{}/graphql/ws", app.address)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    headers.insert("origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The `access-control-*` headers of a response.
fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn a_listed_origin_may_open_the_socket_and_subscribe_and_others_are_refused() {
    let app = app_allowing(&[LISTED]).await;
    let mut socket = open_socket(&app, LISTED).await.unwrap();
    socket
        .send(Message::text(r#"{"type":"connection_init"}"#))
        .await
        .unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    socket
        .send(Message::text(
            json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { bookAdded { name } }"}})
                .to_string(),
        ))
        .await
        .unwrap();
    // The subscription is live once the server holds it; a book added then reaches it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let next = loop {
        app.add_book(&format!("Book {}", fastrand::u32(..)), &["A"], 2000)
            .await;
        let next = tokio::time::timeout(std::time::Duration::from_millis(300), async {
            loop {
                let message = socket.next().await.unwrap().unwrap();
                let text = message.to_text().unwrap().to_owned();
                if text.contains("\"next\"") {
                    return text;
                }
            }
        })
        .await;
        match next {
            Ok(next) => break next,
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "no event"),
        }
    };
    assert!(next.contains("bookAdded"), "{next}");

    for origin in [
        UNLISTED,
        "http://localhost:5174",
        "https://localhost:5173",
        "null",
    ] {
        match open_socket(&app, origin).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}");
            }
            other => panic!("{origin}: the handshake was not refused: {other:?}"),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn preflights_are_answered_for_listed_origins_only() {
    let app = app_allowing(&[LISTED]).await;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };

    let listed = preflight(LISTED).await.unwrap();
    assert_eq!(listed.status(), 204);
    let headers = listed.headers();
    assert_eq!(headers["access-control-allow-origin"], LISTED);
    assert_eq!(headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        headers["access-control-allow-headers"],
        "content-type, authorization, last-event-id, traceparent"
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["vary"], "Origin");
    assert!(!headers.contains_key("access-control-allow-credentials"));

    let unlisted = preflight(UNLISTED).await.unwrap();
    assert_ne!(unlisted.status(), 204);
    assert_eq!(
        cors_headers(unlisted.headers()),
        Vec::<String>::new(),
        "an unlisted origin is told nothing"
    );

    // Actual requests: a listed origin may read the response, an unlisted one may not.
    let query = json!({"query": "{ books { edges { cursor } } }"});
    for (origin, allowed) in [(Some(LISTED), true), (Some(UNLISTED), false), (None, false)] {
        let mut request = app.client.post(app.url("/graphql")).json(&query);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let expected: Vec<String> = if allowed {
            vec!["access-control-allow-origin".to_owned()]
        } else {
            vec![]
        };
        assert_eq!(cors_headers(response.headers()), expected, "{origin:?}");
        if allowed {
            assert_eq!(response.headers()["access-control-allow-origin"], LISTED);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn without_allowed_origins_there_is_no_cors_and_a_cross_site_form_post_runs_nothing() {
    let app = app_allowing(&[]).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", UNLISTED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(preflight.headers()), Vec::<String>::new());

    // What a page elsewhere can send without a preflight: a "simple" POST (text/plain or a
    // form). It is refused before anything runs.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("origin", UNLISTED)
            .header("content-type", content_type)
            .body(json!({"query": r#"mutation { removeBook(name: "Dune") { name } }"#}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{content_type}");
        assert_eq!(cors_headers(response.headers()), Vec::<String>::new());
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "BAD_REQUEST");
    }
    let book = app
        .data(r#"{ book(name: "Dune") { name } }"#, json!({}))
        .await;
    assert_eq!(book["book"]["name"], "Dune", "the book is still there");
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_need_the_token_when_one_is_set_and_never_carry_internal_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.api.auth_token = Some("s3cret".into());
    settings.faults = Faults {
        publish_failure_rate: 0.0,
        delivery_failure_rate: 1.0, // every delivery fails with the target's error text
        poison: Some("Poison".into()),
    };
    let app = spawn_with(settings).await;
    let add = |name: &str| json!({"query": "mutation($name: String!) { addBook(input: {name: $name, authors: [\"A\"], publishedYear: 2000}) { name } }", "variables": {"name": name}});
    let query = json!({"query": "{ deadLetters(first: 100) { source target reason payload } }"});
    let post = |body: &Value, token: Option<&str>| {
        let mut request = app.client.post(app.url("/graphql")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    for name in ["Poison", "Fine"] {
        let body = post(&add(name), Some("s3cret")).await;
        assert!(!body.contains("errors"), "{body}");
    }
    let listed = loop {
        let body = post(&query, Some("s3cret")).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        let letters = body["data"]["deadLetters"].as_array().unwrap().clone();
        if letters.len() == 2 {
            break letters;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    // With the token: listed, payloads and all; a stream record's mapping problem is shown
    // (it is about the record's data), a target's error only as a code.
    let bus = listed.iter().find(|l| l["source"] == "BUS").unwrap();
    assert_eq!(bus["reason"], "DELIVERY_FAILED", "{bus}");
    assert!(bus["payload"].as_str().unwrap().contains("Fine"), "{bus}");
    let stream = listed.iter().find(|l| l["source"] == "STREAM").unwrap();
    assert!(
        stream["payload"].as_str().unwrap().contains("Poison"),
        "{stream}"
    );
    assert_ne!(stream["reason"], "", "{stream}");
    let with_token = post(&query, Some("s3cret")).await;
    assert!(
        !with_token.contains("injected fault"),
        "the target's error text is never sent: {with_token}"
    );

    // Without it (or with a wrong one): refused with a code, and no dead letter in the answer.
    for token in [None, Some("wrong")] {
        let body = post(&query, token).await;
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error_code(&parsed), "UNAUTHENTICATED", "{body}");
        assert!(parsed["data"].is_null(), "{body}");
        for leaked in ["Poison", "Fine", "injected fault", "payload\":"] {
            assert!(!body.contains(leaked), "{leaked} in {body}");
        }
    }
    app.stop().await;
}

/// DNS rebinding: a page of `http://rebound.example:<port>` whose name the attacker has pointed
/// at 127.0.0.1 sends its own name as both `Host` and `Origin`, so to the origin check it is
/// this server's own page. The server refuses every request for a host that is not a loopback
/// name (or a listed origin's), over HTTP and for the socket, and nothing changes.
#[tokio::test]
async fn a_rebound_domain_is_refused_over_http_and_the_socket() {
    let app = app_allowing(&[LISTED]).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    let rebound = format!("rebound.example:{}", app.address.port());
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("host", &rebound)
        .header("origin", format!("http://{rebound}"))
        .json(&json!({"query": r#"mutation { removeBook(name: "Dune") { name } }"#}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 421);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_REQUEST");

    let mut request = format!("ws://{}/graphql/ws", app.address)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("host", rebound.parse().unwrap());
    headers.insert("origin", format!("http://{rebound}").parse().unwrap());
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 421),
        other => panic!("the handshake for a rebound name was not refused: {other:?}"),
    }

    // Loopback names, and a listed origin's host, are served.
    for host in [
        format!("localhost:{}", app.address.port()),
        format!("[::1]:{}", app.address.port()),
        "localhost:5173".to_owned(),
    ] {
        let response = app
            .client
            .get(app.url("/health"))
            .header("host", host.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    let book = app
        .data(r#"{ book(name: "Dune") { name } }"#, json!({}))
        .await;
    assert_eq!(book["book"]["name"], "Dune", "the book is still there");
    app.stop().await;
}
