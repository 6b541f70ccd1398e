//! The notifier at scale, against moto and the recording Management API answering each post
//! after 20 ms. Prints figures; asserts nothing about time.
//!
//! ```sh
//! export AWS_ENDPOINT_URL=http://127.0.0.1:5101 …   # moto server, as for the AWS tests
//! cargo run --release -p api --features aws --example notifier_bench -- 1000 10000 50000
//! INDEX_PAGE_SIZE=none cargo run …   # DynamoDB's 1 MB pages instead of the notifier's 1,000 rows
//! ```
//!
//! For each size it loads that many subscriptions (a quarter each of four documents, one of
//! them `bookRemoved`, which an `outboxdemo.added` event does not match) into a fresh
//! connections table as the subscriptions Lambda stores them (BatchWriteItem, in parallel),
//! then hands one `outboxdemo.added` event to a notifier invocation and runs the fan-out queue
//! as the template's event source mapping does: at most `MAX_CONCURRENCY` invocations at once,
//! `BATCH_SIZE` messages each, deleting what an invocation does not report failed. Each
//! invocation runs in an execution environment of its own kind, a child process that stays up
//! between invocations as a warm Lambda environment does; its peak RSS (VmHWM) is what
//! Lambda's "Max Memory Used" reports for that environment. The time is from handing over the
//! event to the return of the last invocation (whose posts had all been answered). Each
//! invocation also reports how long it waited for moto's Query (a page read in flight), which
//! looks at every item of the table and takes about half a millisecond a row it returns, in
//! one Python process that serves one request at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops on the first surprise

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::gateway::ConnectionStore as _;
use api::gateway::{
    Added, ConnectionState, DynamoConnectionStore, FanoutOptions, GatewayError, IndexPage,
    ManagementApi, Notifier, SqsDeliveryQueue, StoredSubscription, detail_types,
};
use api::limits::connection::MessageRate;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use domain::DetailType;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use testing::management::RecordingManagementApi;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

const POST_DELAY: Duration = Duration::from_millis(20);
const LOADERS: usize = 16;
/// The fan-out queue's event source mapping (template.yaml, NotifierFunction's FanoutQueue
/// event): messages per invocation, invocations at once.
const BATCH_SIZE: i32 = 4;
const MAX_CONCURRENCY: usize = 3;
const DOCUMENTS: [&str; 4] = [
    "subscription { bookAdded { eventId book { name } } }",
    "subscription { bookEvents { eventId type } }",
    "subscription { bookEvents(types: [ADDED]) { eventId book { name authors } } }",
    "subscription { bookRemoved { eventId } }",
];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("environment") {
        return environment(&args[1], &args[2], &args[3]).await;
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (moto server)");
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1000, 10_000, 50_000]
    } else {
        args.iter().map(|a| a.parse().expect("a size")).collect()
    };
    println!(
        "posts answered after {POST_DELAY:?}; NOTIFIER_CONCURRENCY {}, FANOUT_BATCH_SIZE {}, INDEX_PAGE_SIZE {:?}, mapping BatchSize {BATCH_SIZE}, MaximumConcurrency {MAX_CONCURRENCY}",
        FanoutOptions::default().concurrency,
        FanoutOptions::default().batch_size,
        page_size(),
    );
    for size in sizes {
        run(&endpoint, size).await;
    }
}

/// A warm execution environment: a child process taking one event a line.
struct Environment {
    _child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Environment {
    async fn start(table: &str, management: &str, queue: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["environment", table, management, queue])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut environment = Self {
            _child: child,
            stdin,
            stdout,
        };
        environment.invoke(&json!({"warm": true})).await; // its cold start, not timed
        environment
    }

    async fn invoke(&mut self, event: &Value) -> Value {
        self.stdin
            .write_all(format!("{event}\n").as_bytes())
            .await
            .unwrap();
        let line = self.stdout.next_line().await.unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

async fn run(endpoint: &str, size: usize) {
    let config = testing::moto::sdk_config(endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let table = testing::moto::unique("bench-connections");
    testing::tables::create_connections_table(&dynamodb, &table)
        .await
        .unwrap();
    let (queue, _) = testing::bus::create_queue(&sqs, &testing::moto::unique("bench-fanout"))
        .await
        .unwrap();
    let started = Instant::now();
    load(&dynamodb, &table, size).await;
    let load = started.elapsed();
    // What moto alone costs to read the index the rule's invocation reads.
    let started = Instant::now();
    let mut store = DynamoConnectionStore::new(dynamodb.clone(), &table);
    if let Some(rows) = page_size() {
        store = store.with_page_size(rows);
    }
    let pages: Vec<Vec<StoredSubscription>> = store
        .subscribed_to(DetailType::Added)
        .try_collect()
        .await
        .unwrap();
    let index_read = started.elapsed();
    let read: usize = pages.iter().map(Vec::len).sum();
    let recorder = RecordingManagementApi::start_with_delay(POST_DELAY)
        .await
        .unwrap();

    let mut rule_env = Environment::start(&table, &recorder.endpoint, &queue).await;
    let mut queue_envs = Vec::new();
    for _ in 0..MAX_CONCURRENCY {
        queue_envs.push(Environment::start(&table, &recorder.endpoint, &queue).await);
    }

    let started = Instant::now();
    let planner_done = Arc::new(AtomicBool::new(false));
    // Queue invocations under way: a read on queues more messages before it returns.
    let busy = Arc::new(AtomicUsize::new(0));
    let invocations = Arc::new(AtomicUsize::new(0));
    // Over queue invocations: the slowest (ms, of which in Query), the largest peak RSS (KiB).
    let worst = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let mut pollers = Vec::new();
    for mut environment in queue_envs {
        let (sqs, queue) = (sqs.clone(), queue.clone());
        let (planner_done, busy, invocations, worst) = (
            Arc::clone(&planner_done),
            Arc::clone(&busy),
            Arc::clone(&invocations),
            Arc::clone(&worst),
        );
        pollers.push(tokio::spawn(async move {
            loop {
                let done = planner_done.load(Ordering::SeqCst) && busy.load(Ordering::SeqCst) == 0;
                busy.fetch_add(1, Ordering::SeqCst);
                let output = sqs
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(BATCH_SIZE)
                    .send()
                    .await
                    .unwrap();
                if output.messages().is_empty() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    if done {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let records: Vec<Value> = output
                    .messages()
                    .iter()
                    .map(|m| json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(), "eventSource": "aws:sqs"}))
                    .collect();
                let report = environment.invoke(&json!({"Records": records})).await;
                invocations.fetch_add(1, Ordering::SeqCst);
                {
                    let mut worst = worst.lock().await;
                    let ms = report["ms"].as_u64().unwrap();
                    if ms > worst.0 {
                        (worst.0, worst.1) = (ms, report["query_ms"].as_u64().unwrap());
                    }
                    worst.2 = worst.2.max(report["hwm_kib"].as_u64().unwrap());
                }
                let failed = &report["response"]["batchItemFailures"];
                assert_eq!(failed, &json!([]), "no failures expected");
                for m in output.messages() {
                    sqs.delete_message()
                        .queue_url(&queue)
                        .receipt_handle(m.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
                busy.fetch_sub(1, Ordering::SeqCst);
            }
        }));
    }
    let planner = rule_env.invoke(&event()).await;
    planner_done.store(true, Ordering::SeqCst);
    for poller in pollers {
        poller.await.unwrap();
    }
    let total = started.elapsed();
    let (worst_ms, worst_query_ms, worst_hwm) = *worst.lock().await;
    println!(
        "{size:>6} subscriptions (moto load {:.1} s; index read alone: {read} rows in {} pages, {} ms): event → last post {} ms; {} posts answered (peak {} in flight); rule invocation {} ms ({} ms in Query), peak RSS {} KiB, {}; {} queue invocations, slowest {} ms ({} ms in Query), largest peak RSS {} KiB",
        load.as_secs_f64(),
        pages.len(),
        index_read.as_millis(),
        total.as_millis(),
        recorder.post_count(),
        recorder.peak_in_flight(),
        planner["ms"],
        planner["query_ms"],
        planner["hwm_kib"],
        planner["response"],
        invocations.load(Ordering::SeqCst),
        worst_ms,
        worst_query_ms,
        worst_hwm,
    );
}

/// Writes `size` subscriptions of `size` connections as the subscriptions Lambda stores them,
/// 25 rows a call, `LOADERS` calls at once.
async fn load(dynamodb: &aws_sdk_dynamodb::Client, table: &str, size: usize) {
    let rows: Vec<_> = (0..size)
        .flat_map(|i| {
            let subscription = StoredSubscription {
                connection_id: format!("conn-{i:06}"),
                id: "1".to_owned(),
                query: DOCUMENTS[i % DOCUMENTS.len()].to_owned(),
                variables: Value::Null,
                operation_name: None,
            };
            DynamoConnectionStore::subscription_rows(&subscription, &detail_types(&subscription))
        })
        .collect();
    stream::iter(rows.chunks(25))
        .map(|chunk| async move {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|row| {
                    let put = PutRequest::builder()
                        .set_item(Some(row.clone()))
                        .build()
                        .unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !pending.is_empty() {
                let output = dynamodb
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .unwrap();
                pending = output
                    .unprocessed_items()
                    .and_then(|items| items.get(table))
                    .cloned()
                    .unwrap_or_default();
            }
        })
        .buffer_unordered(LOADERS)
        .collect::<Vec<()>>()
        .await;
}

fn event() -> Value {
    json!({
        "version": "0", "id": "x", "detail-type": "outboxdemo.added", "source": "outboxdemo.processor",
        "account": "123456789012", "time": "2024-05-01T12:00:01Z", "region": "us-east-1", "resources": [],
        "detail": {"metadata": {"eventId": "bench-1", "sequenceNumber": "1", "occurredAt": "2024-05-01T12:00:00Z", "version": 1},
                   "data": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965}}
    })
}

/// The connections table, timing its index reads: how long an invocation waits for moto's
/// Query (which looks at every item of the table, where DynamoDB reads one partition's page):
/// the time with at least one page read in flight.
struct Timed {
    store: DynamoConnectionStore,
    in_query: AtomicU64,
    /// Reads in flight, and since when there has been one.
    flight: std::sync::Mutex<(usize, Option<Instant>)>,
}

#[async_trait::async_trait]
impl api::gateway::ConnectionStore for Timed {
    async fn open(&self, connection_id: &str) -> Result<(), GatewayError> {
        self.store.open(connection_id).await
    }
    async fn initialize(&self, connection_id: &str) -> Result<bool, GatewayError> {
        self.store.initialize(connection_id).await
    }
    async fn connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionState>, GatewayError> {
        self.store.connection(connection_id).await
    }
    async fn take_token(
        &self,
        connection_id: &str,
        rate: MessageRate,
        now_ms: i64,
    ) -> Result<bool, GatewayError> {
        self.store.take_token(connection_id, rate, now_ms).await
    }
    async fn add(
        &self,
        subscription: &StoredSubscription,
        detail_types: &[DetailType],
        max: usize,
    ) -> Result<Added, GatewayError> {
        self.store.add(subscription, detail_types, max).await
    }
    async fn remove(&self, connection_id: &str, id: &str) -> Result<(), GatewayError> {
        self.store.remove(connection_id, id).await
    }
    async fn close(&self, connection_id: &str) -> Result<(), GatewayError> {
        self.store.close(connection_id).await
    }
    fn shards(&self) -> u32 {
        self.store.shards()
    }
    async fn subscribed_page(
        &self,
        detail_type: DetailType,
        shard: u32,
        after: Option<&str>,
    ) -> Result<IndexPage, GatewayError> {
        {
            let mut flight = self.flight.lock().unwrap();
            flight.0 += 1;
            flight.1.get_or_insert_with(Instant::now);
        }
        let page = self.store.subscribed_page(detail_type, shard, after).await;
        let mut flight = self.flight.lock().unwrap();
        flight.0 -= 1;
        if flight.0 == 0 {
            let since = flight.1.take().unwrap();
            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.in_query.fetch_add(nanos, Ordering::SeqCst);
        }
        page
    }
}

/// `INDEX_PAGE_SIZE`, as the notifier Lambda reads it (1,000 rows per index page by default), or
/// `none` for DynamoDB's 1 MB pages.
fn page_size() -> Option<i32> {
    match std::env::var("INDEX_PAGE_SIZE").as_deref() {
        Err(_) => Some(1000),
        Ok("none") => None,
        Ok(rows) => Some(rows.parse().expect("INDEX_PAGE_SIZE: a number or none")),
    }
}

/// The peak resident set of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An execution environment: the notifier's handler, as `src/bin/notifier.rs` builds and
/// dispatches it, one event a line from stdin, one report a line to stdout.
async fn environment(table: &str, management: &str, queue: &str) {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let config = testing::moto::sdk_config(&endpoint).await;
    let mut store = DynamoConnectionStore::from_sdk_config(&config, table);
    if let Some(rows) = page_size() {
        store = store.with_page_size(rows);
    }
    let connections = Timed {
        store,
        in_query: AtomicU64::new(0),
        flight: std::sync::Mutex::new((0, None)),
    };
    let api = ManagementApi::new(&config, management);
    let queue = SqsDeliveryQueue::from_sdk_config(&config, queue);
    let schema = api::schema::subscription_schema();
    let notifier = Notifier {
        schema: &schema,
        connections: &connections,
        api: &api,
        queue: &queue,
        options: FanoutOptions::default(),
        pump: None,
    };
    // Blocking reads: between invocations an environment does nothing else.
    use std::io::{BufRead, Write};
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        let started = Instant::now();
        connections.in_query.store(0, Ordering::SeqCst);
        let response = if event.get("warm").is_some() {
            Value::Null
        } else if event.get("Records").is_some() {
            serde_json::to_value(
                notifier
                    .deliver(serde_json::from_value(event).unwrap())
                    .await,
            )
            .unwrap()
        } else {
            serde_json::to_value(
                notifier
                    .notify(serde_json::from_value(event).unwrap())
                    .await
                    .unwrap(),
            )
            .unwrap()
        };
        let query_ms = connections.in_query.load(Ordering::SeqCst) / 1_000_000;
        let report = json!({"ms": started.elapsed().as_millis() as u64, "query_ms": query_ms,
            "hwm_kib": vm_hwm_kib(), "response": response});
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{report}").unwrap();
        stdout.flush().unwrap();
    }
}
