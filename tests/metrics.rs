//! `/metrics` as an operator's Prometheus scrapes it: the binary run as a process (its own
//! recorder, no other test's counts), scraped before and after traffic and a fault, and read
//! with a Prometheus text-format parser.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

struct Stack {
    _child: Child,
    url: String,
    client: reqwest::Client,
}

async fn start(args: &[&str]) -> Stack {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_outboxdemo"))
        .args(["--in-memory", "--port", &port.to_string()])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stack = Stack {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack
        .client
        .get(format!("{}/health", stack.url))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the stack did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack
}

/// One scrape, parsed: every sample by its name and labels.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// The value of the sample `name` with exactly these labels (0 when it is not there yet,
    /// as for a counter nothing has counted).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .find(|sample| {
                sample.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(value))
            })
            .map_or(0.0, |sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                ref other => panic!("{name} is not a number: {other:?}"),
            })
    }

    /// The buckets of the histogram `name` with exactly these labels: (upper bound, count), the
    /// last `+Inf` (empty before the first observation).
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .find(|sample| {
                sample.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(value))
            })
            .map_or_else(Vec::new, |sample| match &sample.value {
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .map(|bucket| (bucket.less_than, bucket.count))
                    .collect(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
    }

    /// How many observations the histogram `name` with these labels has.
    fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.histogram(name, labels)
            .last()
            .map_or(0.0, |(bound, count)| {
                assert!(bound.is_infinite(), "the last bucket is +Inf");
                *count
            })
    }

    fn kind(&self, name: &str) -> Option<String> {
        let sample = self.0.samples.iter().find(|sample| sample.metric == name)?;
        Some(
            match sample.value {
                prometheus_parse::Value::Counter(_) => "counter",
                prometheus_parse::Value::Gauge(_) => "gauge",
                _ => "other",
            }
            .to_owned(),
        )
    }
}

impl Stack {
    async fn scrape(&self) -> Scrape {
        let response = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format"))
    }

    async fn mutate(&self, query: &str) -> Value {
        self.client
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Scrapes until `done` holds of a scrape, for a few seconds.
    async fn scrape_until(&self, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = self.scrape().await;
            if done(&scrape) {
                return scrape;
            }
            assert!(Instant::now() < deadline, "the metrics never got there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const ADDED: &str = "outboxdemo.added";

fn add(name: &str) -> String {
    format!(
        r#"mutation {{ addBook(input: {{name: "{name}", authors: ["A. Writer"], publishedYear: 2000}}) {{ name }} }}"#
    )
}

/// Traffic and a fault move the counters they should, and the gauges say what is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_and_gauges_move_with_traffic_and_a_fault() {
    // Every record of "Poison" is one the processor cannot map: it sets it aside.
    let stack = start(&["--fault-poison", "Poison"]).await;
    let before = stack.scrape().await;
    assert_eq!(
        before.value(
            "outboxdemo_mutations_total",
            &[("field", "addBook"), ("outcome", "ok")]
        ),
        0.0
    );
    assert_eq!(before.value("outboxdemo_subscriptions_open", &[]), 0.0);
    let to_consumer = "outboxdemo_mutation_to_consumer_seconds";
    let to_subscriber = "outboxdemo_mutation_to_subscriber_seconds";
    assert_eq!(
        before.observations(to_consumer, &[("consumer", "book-added")]),
        0.0
    );
    assert_eq!(before.observations(to_subscriber, &[]), 0.0);
    assert_eq!(before.value("outboxdemo_stream_lag_records", &[]), 0.0);
    assert_eq!(
        before.kind("outboxdemo_queue_depth").as_deref(),
        Some("gauge")
    );

    // A subscriber is counted while it is open.
    let mut request = format!("{}/graphql/ws", stack.url.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for message in [
        json!({"type": "connection_init"}),
        json!({"type": "subscribe", "id": "s", "payload": {"query": "subscription { bookEvents { eventId } }"}}),
    ] {
        socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }
    stack
        .scrape_until(|s| s.value("outboxdemo_subscriptions_open", &[]) == 1.0)
        .await;

    assert!(stack.mutate(&add("Dune")).await.get("errors").is_none());
    let conflict = stack.mutate(&add("Dune")).await;
    assert_eq!(conflict["errors"][0]["extensions"]["code"], "CONFLICT");
    let removed = stack
        .mutate(r#"mutation { removeBook(name: "Dune") { name } }"#)
        .await;
    assert!(removed.get("errors").is_none(), "{removed}");
    let missing = stack
        .mutate(r#"mutation { removeBook(name: "Dune") { name } }"#)
        .await;
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert!(stack.mutate(&add("Poison")).await.get("errors").is_none());

    let after = stack
        .scrape_until(|s| {
            s.value("outboxdemo_dead_letters_total", &[("source", "stream")]) == 1.0
                && s.value(
                    "outboxdemo_deliveries_total",
                    &[("consumer", "book-removed"), ("outcome", "delivered")],
                ) == 1.0
        })
        .await;
    for (field, outcome, count) in [
        ("addBook", "ok", 2.0),
        ("addBook", "CONFLICT", 1.0),
        ("removeBook", "ok", 1.0),
        ("removeBook", "NOT_FOUND", 1.0),
    ] {
        assert_eq!(
            after.value(
                "outboxdemo_mutations_total",
                &[("field", field), ("outcome", outcome)]
            ),
            count,
            "{field} {outcome}"
        );
    }
    assert_eq!(
        after.kind("outboxdemo_mutations_total").as_deref(),
        Some("counter")
    );
    assert_eq!(
        after.value(
            "outboxdemo_events_published_total",
            &[("detail_type", ADDED)]
        ),
        1.0,
        "Poison's record was set aside, not published"
    );
    assert_eq!(
        after.value(
            "outboxdemo_events_published_total",
            &[("detail_type", "outboxdemo.removed")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "outboxdemo_deliveries_total",
            &[("consumer", "book-added"), ("outcome", "delivered")]
        ),
        1.0
    );
    // Latency, from the commit the change carries: the one add that reached book-added and the
    // subscriber; a removal carries no commit time (its item has no new image), so
    // book-removed has nothing observed.
    let after = stack
        .scrape_until(|s| s.observations(to_subscriber, &[]) == 1.0)
        .await;
    for (name, labels) in [
        (to_consumer, &[("consumer", "book-added")][..]),
        (to_subscriber, &[][..]),
    ] {
        let buckets = after.histogram(name, labels);
        assert_eq!(after.observations(name, labels), 1.0, "{name}");
        // On a quiet stack on one machine, well under 10 s; the buckets are cumulative.
        let within = buckets
            .iter()
            .find(|(bound, _)| *bound == 10.0)
            .unwrap_or_else(|| panic!("{name} has a 10 s bucket: {buckets:?}"));
        assert_eq!(within.1, 1.0, "{name}: {buckets:?}");
        assert_eq!(buckets[0].0, 0.005, "{name}: {buckets:?}");
    }
    assert_eq!(
        after.observations(to_consumer, &[("consumer", "book-removed")]),
        0.0
    );

    // Everything is through: nothing behind in the stream, nothing queued.
    assert_eq!(after.value("outboxdemo_stream_lag_records", &[]), 0.0);
    assert_eq!(after.value("outboxdemo_stream_lag_seconds", &[]), 0.0);
    for consumer in ["book-added", "book-removed"] {
        assert_eq!(
            after.value("outboxdemo_queue_depth", &[("consumer", consumer)]),
            0.0
        );
    }

    drop(socket);
    stack
        .scrape_until(|s| s.value("outboxdemo_subscriptions_open", &[]) == 0.0)
        .await;
}

/// A consumer that keeps failing: each failed delivery is a retry, and the last a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deliveries_count_as_retries_and_then_a_dead_letter() {
    let stack = start(&["--fault-delivery-rate", "1"]).await;
    assert!(stack.mutate(&add("Emma")).await.get("errors").is_none());
    // Five attempts (100 ms, 200 ms, 400 ms, 800 ms apart), then the dead letter.
    let after = stack
        .scrape_until(|s| s.value("outboxdemo_dead_letters_total", &[("source", "bus")]) == 1.0)
        .await;
    assert_eq!(
        after.value(
            "outboxdemo_deliveries_total",
            &[("consumer", "book-added"), ("outcome", "retried")]
        ),
        4.0
    );
    assert_eq!(
        after.value("outboxdemo_retries_total", &[("source", "bus")]),
        4.0
    );
    assert_eq!(
        after.value(
            "outboxdemo_deliveries_total",
            &[("consumer", "book-added"), ("outcome", "dead_lettered")]
        ),
        1.0
    );
    assert_eq!(
        after.value("outboxdemo_queue_depth", &[("consumer", "book-added")]),
        0.0
    );
}
