//! One trace across the AWS path, rehearsed: the Lambda bootstraps run as processes with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at an OTLP receiver in this test, and an `addBook` sent to the
//! HTTP API with a fixed `traceparent` reaches the processor (through the DynamoDB item and its
//! stream record), the book-added consumer and the notifier (through the event's
//! `metadata.traceparent` on EventBridge), each continuing the trace of the hop before it. The
//! functions' logs carry the same counters as CloudWatch embedded metric format documents.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use rehearsal::stack::{Options, Rehearsal};
use serde_json::{Value, json};
use testing::otlp::{ReceivedSpan, Receiver};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Where `cargo build` put the bootstraps.
fn bootstraps() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("debug")
}

/// The template with every function exporting to `endpoint`, in batches sent at once.
fn template_exporting_to(dir: &std::path::Path, endpoint: &str) -> PathBuf {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let variables = "      Environment:\n        Variables:\n";
    assert_eq!(
        template.matches(variables).count(),
        7,
        "every function sets variables"
    );
    let path = dir.join("template.yaml");
    std::fs::write(
        &path,
        template.replace(
            variables,
            &format!(
                "{variables}          OTEL_EXPORTER_OTLP_ENDPOINT: \"{endpoint}\"\n          OTEL_BSP_SCHEDULE_DELAY: \"50\"\n"
            ),
        ),
    )
    .unwrap();
    path
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.service == service && span.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_reaches_the_processor_a_consumer_and_the_notifier() {
    if testing::moto::endpoint().is_none() {
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        template: template_exporting_to(dir.path(), &receiver.endpoint),
        bootstraps: bootstraps(),
        moto_server: PathBuf::from("moto_server"),
        http_port: 0,
        websocket_port: 0,
        management_port: 0,
        lambda_port: 0,
        emulator_port: 0,
        log_dir: dir.path().join("logs"),
        stack: "tracing".into(),
        parameters: [("PublicAccess".to_owned(), "all".to_owned())].into(),
        ..Options::default()
    };
    let rehearsal = Rehearsal::start(options).await.unwrap();

    // A subscriber, for the notifier to have someone to post to.
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
    let messages = [
        json!({"type": "connection_init"}),
        json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { bookAdded { name } }"}}),
    ];
    for message in messages {
        socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    let status = format!("{}/rehearsal/status", rehearsal.lambda_endpoint);
    for _ in 0..100 {
        let now: Value = reqwest::get(&status).await.unwrap().json().await.unwrap();
        if now["subscriptions"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let added: Value = reqwest::Client::new()
        .post(format!("{}/graphql", rehearsal.http_url))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&json!({"query": r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(added["data"]["addBook"]["name"], "Dune", "{added}");
    let delivered = loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "next" {
                    break message;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no event for the subscriber: {other:?}"),
        }
    };
    assert_eq!(delivered["payload"]["data"]["bookAdded"]["name"], "Dune");

    let wanted = [
        ("api", "graphql.request"),
        ("api", "store.write"),
        ("processor", "stream.batch"),
        ("processor", "processor.publish"),
        ("book-added", "consumer.handle"),
        ("notifier", "subscription.fanout"),
        ("notifier", "subscription.deliver"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.trace(TRACE_ID);
        if wanted.iter().all(|(service, name)| {
            spans
                .iter()
                .any(|span| span.service == *service && span.name == *name)
        }) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "not every hop reached the trace: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request = one(&spans, "api", "graphql.request");
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    let write = one(&spans, "api", "store.write");
    assert_eq!(write.parent_span_id, request.span_id);
    let publish = one(&spans, "processor", "processor.publish");
    assert_eq!(
        publish.parent_span_id, write.span_id,
        "through the stream record"
    );
    let handle = one(&spans, "book-added", "consumer.handle");
    assert_eq!(
        handle.parent_span_id, publish.span_id,
        "through EventBridge"
    );
    let fanout = one(&spans, "notifier", "subscription.fanout");
    assert_eq!(
        fanout.parent_span_id, publish.span_id,
        "through EventBridge"
    );
    // The subscriber's subscription run inside the fan-out, and its hand-over of the event,
    // which continues the event's trace as a local subscription's does.
    let run = one(&spans, "notifier", "graphql.request");
    assert_eq!(run.parent_span_id, fanout.span_id);
    let deliver = one(&spans, "notifier", "subscription.deliver");
    assert_eq!(deliver.parent_span_id, publish.span_id);

    // The same counters as CloudWatch metrics, as the functions log them for CloudWatch Logs
    // to extract. Each invocation's documents are written when it ends.
    let logs = dir.path().join("logs");
    let metric = |function: &str, name: &str| -> Option<Value> {
        std::fs::read_dir(&logs)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|file| file.to_string_lossy().contains(function))
            })
            .flat_map(|path| {
                std::fs::read_to_string(path)
                    .unwrap()
                    .lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .collect::<Vec<_>>()
            })
            .find(|document| document.get("_aws").is_some() && document.get(name).is_some())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = [
        ("-api.", "outboxdemo_mutations_total"),
        ("-processor.", "outboxdemo_events_published_total"),
        ("-book-added.", "outboxdemo_mutation_to_consumer_seconds"),
        ("-notifier.", "outboxdemo_mutation_to_subscriber_seconds"),
    ];
    let documents = loop {
        let found: Vec<Option<Value>> = wanted
            .iter()
            .map(|(function, name)| metric(function, name))
            .collect();
        if found.iter().all(Option::is_some) {
            break found.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(
            Instant::now() < deadline,
            "not every metric was logged: {found:?} in {:?}",
            std::fs::read_dir(&logs).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (document, (_, name)) in documents.iter().zip(wanted) {
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "outboxdemo", "{document}");
        assert_eq!(directive["Metrics"][0]["Name"], name, "{document}");
        assert!(document["_aws"]["Timestamp"].is_u64(), "{document}");
    }
    let mutations = &documents[0];
    assert_eq!(mutations["field"], "addBook", "{mutations}");
    assert_eq!(mutations["outcome"], "ok", "{mutations}");
    assert_eq!(mutations["outboxdemo_mutations_total"], 1, "{mutations}");
    let published = &documents[1];
    assert_eq!(published["detail_type"], "outboxdemo.added", "{published}");
    assert_eq!(
        published["outboxdemo_events_published_total"], 1,
        "{published}"
    );
    let to_consumer = &documents[2];
    assert_eq!(to_consumer["consumer"], "book-added", "{to_consumer}");
    assert_eq!(
        to_consumer["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
        "Seconds"
    );
    let seconds = &to_consumer["outboxdemo_mutation_to_consumer_seconds"];
    let seconds = seconds.as_f64().or_else(|| seconds[0].as_f64()).unwrap();
    assert!((0.0..30.0).contains(&seconds), "{to_consumer}");

    drop(socket);
    rehearsal.stop().await;
}
