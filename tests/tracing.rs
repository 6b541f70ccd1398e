//! One trace from a mutation to its consumer and its subscriber, on the local stack: a mutation
//! sent with a fixed W3C `traceparent`, the stack's own subscriber installed with an in-memory
//! span exporter (this test binary's only test, since the subscriber is process-wide).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

#[allow(dead_code)] // this test uses a few of its helpers
#[path = "local_stack/support.rs"]
mod support;

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outboxdemo::stack::Storage;
use serde_json::json;
use telemetry::subscriber::{self, LogFormat};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The one span of the trace named `name` (and, for a consumer, handled by `consumer`).
fn only<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|span| span.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_mutation_to_the_consumer_and_the_subscriber() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    subscriber::install(LogFormat::Text, &provider, true).unwrap();
    let app = support::spawn_with(support::quick_settings(Storage::InMemory)).await;

    let mut socket = support::socket(&app).await;
    let subscription = "subscription { bookEvents { eventId type book { name } } }";
    support::send(&mut socket, support::subscribe("1", subscription)).await;
    while support::open_subscriptions(&app).await < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let response: serde_json::Value = app
        .client
        .post(app.url("/graphql"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&json!({
            "query": "mutation { addBook(input: {name: \"Dune\", authors: [\"Frank Herbert\"], publishedYear: 1965}) { name } }"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["data"]["addBook"]["name"], "Dune", "{response}");
    let delivered = support::next(&mut socket).await;
    assert_eq!(delivered["payload"]["data"]["bookEvents"]["type"], "ADDED");
    let event_id = delivered["payload"]["data"]["bookEvents"]["eventId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_for_activity(1).await.len(), 1);

    // Every hop's span, in the client's trace; a span is exported when it ends, which may
    // be a moment after its effect is visible.
    let names = [
        "graphql.request",
        "store.write",
        "stream.batch",
        "processor.publish",
        "consumer.handle",
        "subscription.deliver",
    ];
    let trace_id = TraceId::from_hex(TRACE_ID).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        if names
            .iter()
            .all(|name| spans.iter().any(|span| span.name == *name))
            || tokio::time::Instant::now() > deadline
        {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let in_trace: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
    for name in names {
        assert!(
            in_trace.contains(&name),
            "no {name} in the trace: {in_trace:?}"
        );
    }

    // Each hop is a child of the one before it, across the stream and the bus.
    let request = only(&spans, "graphql.request");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN).unwrap()
    );
    let write = only(&spans, "store.write");
    assert_eq!(write.parent_span_id, request.span_context.span_id());
    let batch = only(&spans, "stream.batch");
    assert_eq!(batch.parent_span_id, write.span_context.span_id());
    let publish = only(&spans, "processor.publish");
    assert_eq!(publish.parent_span_id, write.span_context.span_id());
    assert_eq!(attribute(publish, "event_id").as_deref(), Some(&*event_id));
    // Every consumer the event is routed to (`book-added` only, for an added book).
    let handle = only(&spans, "consumer.handle");
    assert_eq!(handle.parent_span_id, publish.span_context.span_id());
    assert_eq!(attribute(handle, "consumer").as_deref(), Some("book-added"));
    assert_eq!(attribute(handle, "event_id").as_deref(), Some(&*event_id));
    let deliver = only(&spans, "subscription.deliver");
    assert_eq!(deliver.parent_span_id, publish.span_context.span_id());

    // A removal carries no trace through the stream (a deleted item has no new image), so its
    // event starts its own in the processor, and the consumer continues that one.
    app.remove_book("Dune").await;
    assert_eq!(app.wait_for_activity(2).await.len(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let removal = loop {
        let finished = exporter.get_finished_spans().unwrap();
        let removed = finished.iter().find(|span| {
            span.name == "consumer.handle"
                && attribute(span, "consumer").as_deref() == Some("book-removed")
        });
        if let Some(removed) = removed {
            break (removed.clone(), finished);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "book-removed's span did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (handled, finished) = removal;
    assert_ne!(handled.span_context.trace_id(), trace_id);
    let published = finished
        .iter()
        .find(|span| span.span_context.span_id() == handled.parent_span_id)
        .expect("book-removed continues the processor's publish");
    assert_eq!(published.name, "processor.publish");

    // Over the WebSocket, the trace comes with `connection_init`; a mutation sent there
    // continues it.
    let over_socket = "5b8efff798038103d269b633813fc60c";
    let mut request = format!("ws://{}/graphql/ws", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let traceparent = format!("00-{over_socket}-{CLIENT_SPAN}-01");
    support::send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"traceparent": traceparent}}),
    )
    .await;
    assert_eq!(support::next(&mut socket).await["type"], "connection_ack");
    let mutation = r#"mutation { addBook(input: {name: "Emma", authors: ["Jane Austen"], publishedYear: 1815}) { name } }"#;
    support::send(&mut socket, support::subscribe("m", mutation)).await;
    let answer = support::next(&mut socket).await;
    assert_eq!(
        answer["payload"]["data"]["addBook"]["name"], "Emma",
        "{answer}"
    );
    let trace_id = TraceId::from_hex(over_socket).unwrap();
    let spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect();
    let request = only(&spans, "graphql.request");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN).unwrap()
    );
    assert_eq!(
        only(&spans, "store.write").parent_span_id,
        request.span_context.span_id()
    );

    app.stop().await;
}
