//! The notifier's fan-out through its queue, rehearsed: with FANOUT_BATCH_SIZE at 1, three
//! subscribers are more than one batch, so the rule's invocation queues three batches on
//! FanoutQueue and its event source mapping invokes the notifier again with them (SQS events);
//! every subscriber gets the event exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rehearsal::stack::{Options, Rehearsal};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The template with a fan-out batch of one delivery.
fn template_with_batches_of_one(dir: &std::path::Path) -> PathBuf {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let setting = r#"FANOUT_BATCH_SIZE: "250""#;
    assert_eq!(
        template.matches(setting).count(),
        1,
        "template.yaml sets {setting}"
    );
    let path = dir.join("template.yaml");
    std::fs::write(
        &path,
        template.replace(setting, r#"FANOUT_BATCH_SIZE: "1""#),
    )
    .unwrap();
    path
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_through_the_queue_reaches_every_subscriber_once() {
    if testing::moto::endpoint().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        template: template_with_batches_of_one(dir.path()),
        bootstraps: root().join("target/debug"),
        moto_server: PathBuf::from("moto_server"),
        http_port: 0,
        websocket_port: 0,
        management_port: 0,
        lambda_port: 0,
        emulator_port: 0,
        log_dir: dir.path().join("logs"),
        stack: "fanout".into(),
        parameters: [("PublicAccess".to_owned(), "all".to_owned())].into(),
        ..Options::default()
    };
    let rehearsal = Rehearsal::start(options).await.unwrap();

    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut request = rehearsal
            .websocket_url
            .as_str()
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        send(&mut socket, json!({"type": "connection_init"})).await;
        let ack = next(&mut socket, Duration::from_secs(10)).await.unwrap();
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        send(
            &mut socket,
            json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { bookAdded { name } }"}}),
        )
        .await;
        sockets.push(socket);
    }
    let status = format!("{}/rehearsal/status", rehearsal.lambda_endpoint);
    for _ in 0..100 {
        let now: Value = reqwest::get(&status).await.unwrap().json().await.unwrap();
        if now["subscriptions"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let added: Value = reqwest::Client::new()
        .post(format!("{}/graphql", rehearsal.http_url))
        .json(&json!({"query": r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(added["errors"].is_null(), "{added}");

    for socket in &mut sockets {
        let message = next(socket, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            message,
            json!({"type": "next", "id": "1", "payload": {"data": {"bookAdded": {"name": "Dune"}}}})
        );
    }
    // None twice: wait out a retry's backoff.
    for socket in &mut sockets {
        assert_eq!(next(socket, Duration::from_secs(3)).await, None);
    }
    assert_eq!(
        rehearsal.sqs_mappings.len(),
        1,
        "the template's one SQS event"
    );
    rehearsal.stop().await;
    // The rule's invocation queued the batches, and invocations by the queue posted them.
    let log = std::fs::read_to_string(dir.path().join("logs/fanout-notifier.log")).unwrap();
    assert!(log.contains("subscribers notified"), "{log}");
    assert!(log.contains("fan-out messages handled"), "{log}");
}
