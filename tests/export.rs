//! Export as an operator meets it: the binary run as a process with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP receiver in this test (protobuf
//! bodies decoded with the protocol's own messages), and `--log-json`: the hops' spans arrive
//! in the client's trace, and the log lines inside them carry `trace_id` and `event_id`; and
//! the same run without the variable, where the log lines still carry the client's trace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testing::otlp::Receiver;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The binary, serving on a free port with JSON log lines at `info`, exporting to `otlp` when
/// given (else with no OTLP variable at all); its stderr lines as they come, and its URL once it
/// answers.
async fn start(otlp: Option<&str>) -> (tokio::process::Child, Arc<Mutex<Vec<String>>>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxdemo"));
    command
        .args(["--in-memory", "--log-json", "--port", &port.to_string()])
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(endpoint) = otlp {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    }
    let mut child = command.spawn().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = Arc::clone(&lines);
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{url}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the stack did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (child, lines, url)
}

/// Adds Dune, sent in the trace `TRACE_ID`.
async fn add_dune_in_the_trace(url: &str) {
    let response: Value = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"query": "mutation { addBook(input: {name: \"Dune\", authors: [\"Frank Herbert\"], publishedYear: 1965}) { name } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["data"]["addBook"]["name"], "Dune", "{response}");
}

/// The consumer's "activity recorded" line, once logged: JSON, with its span's trace id and
/// event id, in the trace `TRACE_ID`.
async fn assert_the_consumer_line_is_in_the_trace(lines: &Mutex<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = lines.lock().unwrap().iter().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["fields"]["message"] == "activity recorded").then_some(line)
        });
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no activity line: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span"]["consumer"], "book-added", "{line}");
    assert!(
        line["span"]["event_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{line}"
    );
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_json_log_lines_carry_the_trace() {
    let receiver = Receiver::start().await.unwrap();
    let (_child, lines, url) = start(Some(&receiver.endpoint)).await;
    add_dune_in_the_trace(&url).await;

    let names = [
        "graphql.request",
        "store.write",
        "stream.batch",
        "processor.publish",
        "consumer.handle",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let in_trace: Vec<(String, String)> = receiver
            .trace(TRACE_ID)
            .into_iter()
            .map(|span| (span.service, span.name))
            .collect();
        if names
            .iter()
            .all(|name| in_trace.iter().any(|(_, got)| got == name))
        {
            assert!(
                in_trace.iter().all(|(service, _)| service == "outboxdemo"),
                "{in_trace:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every hop was exported: {in_trace:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_the_consumer_line_is_in_the_trace(&lines).await;
}

/// Export off (the default): nothing is recorded, and the trace still crosses the stream, the
/// processor and the bus, so the consumer's line carries the client's trace id.
#[tokio::test]
async fn without_export_the_trace_still_reaches_the_consumer() {
    let (_child, lines, url) = start(None).await;
    add_dune_in_the_trace(&url).await;
    assert_the_consumer_line_is_in_the_trace(&lines).await;
}
