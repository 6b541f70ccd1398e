//! The DynamoDB stream event source mapping against moto: the books table of template.yaml
//! (created by `resources::create`), its stream read through the Streams API, and a function
//! of the test's own that records each event and answers as scripted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use rehearsal::lambda::{Invocation, Invoke};
use rehearsal::resources::{self, Created};
use rehearsal::stream_mapping::{self, StreamMapping, StreamMappingSettings};
use rehearsal::template::Template;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const IDLE: Duration = Duration::from_secs(20);

type Script = dyn Fn(usize, &[Value]) -> Invocation + Send + Sync;

/// A function that records every event it gets and answers what its script says for the
/// n-th call (from 0) and its records.
struct Scripted {
    calls: Mutex<Vec<Vec<Value>>>,
    script: Box<Script>,
}

impl Scripted {
    fn new(script: impl Fn(usize, &[Value]) -> Invocation + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            script: Box::new(script),
        })
    }

    fn calls(&self) -> Vec<Vec<Value>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The book names of each call's records.
    fn names(&self) -> Vec<Vec<String>> {
        self.calls()
            .iter()
            .map(|records| records.iter().map(name).collect())
            .collect()
    }
}

#[async_trait::async_trait]
impl Invoke for Scripted {
    async fn invoke(&self, payload: Value) -> Invocation {
        let records = payload["Records"].as_array().cloned().unwrap_or_default();
        let n = match self.calls.lock() {
            Ok(mut calls) => {
                calls.push(records.clone());
                calls.len() - 1
            }
            Err(_) => 0,
        };
        (self.script)(n, &records)
    }
}

fn name(record: &Value) -> String {
    record["dynamodb"]["Keys"]["name"]["S"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn sequence(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn ok() -> Invocation {
    Invocation::Response(json!({ "batchItemFailures": [] }))
}

fn error(error_type: &str) -> Invocation {
    Invocation::FunctionError(json!({ "errorType": error_type, "errorMessage": "scripted" }))
}

fn failures(identifiers: &[&str]) -> Invocation {
    Invocation::Response(json!({
        "batchItemFailures": identifiers
            .iter()
            .map(|id| json!({ "itemIdentifier": id }))
            .collect::<Vec<_>>()
    }))
}

fn holds(records: &[Value], book: &str) -> bool {
    records.iter().any(|r| name(r) == book)
}

fn names(list: &[&[&str]]) -> Vec<Vec<String>> {
    list.iter()
        .map(|call| call.iter().map(|n| (*n).to_owned()).collect())
        .collect()
}

/// The template's resources on moto, for one test.
struct Fixture {
    sdk: aws_config::SdkConfig,
    template: Template,
    created: Created,
}

impl Fixture {
    async fn new(endpoint: &str) -> anyhow::Result<Self> {
        let sdk = testing::moto::sdk_config(endpoint).await;
        let template =
            Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"))?;
        let stack = testing::moto::unique("sm");
        let created = resources::create_with_parameters(
            &template,
            &sdk,
            &stack,
            &HashMap::from([("EventBusName".to_owned(), format!("{stack}-bus"))]),
        )
        .await?;
        Ok(Self {
            sdk,
            template,
            created,
        })
    }

    /// The processor's mapping as the template declares it, polling fast.
    fn settings(&self) -> anyhow::Result<StreamMappingSettings> {
        let mut settings = StreamMappingSettings::from_template(
            &self.template,
            "ProcessorFunction",
            &self.created,
        )?;
        settings.poll_interval = Duration::from_millis(10);
        settings.shard_discovery_interval = Duration::from_millis(50);
        settings.batching_window = Duration::ZERO;
        Ok(settings)
    }

    fn books_table(&self) -> &str {
        &self.created.tables["BooksTable"].name
    }

    async fn put(&self, books: &[&str]) -> anyhow::Result<()> {
        let client = aws_sdk_dynamodb::Client::new(&self.sdk);
        for book in books {
            client
                .put_item()
                .table_name(self.books_table())
                .item("name", AttributeValue::S((*book).to_owned()))
                .item("publishedYear", AttributeValue::N("1965".to_owned()))
                .send()
                .await?;
        }
        Ok(())
    }

    fn start(&self, settings: StreamMappingSettings, target: Arc<Scripted>) -> Running {
        let shutdown = CancellationToken::new();
        let mapping = stream_mapping::start(
            settings,
            aws_sdk_dynamodbstreams::Client::new(&self.sdk),
            aws_sdk_sqs::Client::new(&self.sdk),
            target,
            shutdown.clone(),
        );
        Running { mapping, shutdown }
    }

    /// The on-failure records in the processor's DLQ, once `count` have arrived.
    async fn dead_letters(&self, count: usize) -> anyhow::Result<Vec<Value>> {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let url = &self.created.queues["ProcessorDLQ"].url;
        let mut bodies = Vec::new();
        for _ in 0..20 {
            let output = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await?;
            for message in output.messages() {
                bodies.push(serde_json::from_str(message.body().unwrap_or_default())?);
            }
            if bodies.len() >= count {
                return Ok(bodies);
            }
        }
        bail!(
            "{} of {count} dead letters arrived: {bodies:?}",
            bodies.len()
        )
    }

    async fn no_dead_letters(&self) -> anyhow::Result<()> {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let output = sqs
            .receive_message()
            .queue_url(&self.created.queues["ProcessorDLQ"].url)
            .wait_time_seconds(0)
            .send()
            .await?;
        if !output.messages().is_empty() {
            bail!("unexpected dead letters: {:?}", output.messages());
        }
        Ok(())
    }
}

struct Running {
    mapping: StreamMapping,
    shutdown: CancellationToken,
}

impl Running {
    async fn idle(&self) -> anyhow::Result<stream_mapping::Progress> {
        let progress = self.mapping.wait_until_idle(IDLE).await?;
        assert!(progress.stuck(Duration::ZERO).is_empty(), "{progress:?}");
        Ok(progress)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.mapping.stopped().await;
    }
}

/// Runs a test body against moto (skipped without it, as every AWS test is).
macro_rules! against_moto {
    ($body:ident) => {{
        let endpoint = testing::emulator!();
        if let Err(e) = $body(&endpoint).await {
            panic!("{e:#}");
        }
    }};
}

// ---------------------------------------------------------------------------------------------

/// Records reach the function in stream order, at most BatchSize at a time, as Lambda sends
/// DynamoDB records.
#[tokio::test]
async fn batches_arrive_in_order_and_sized_per_batch_size() {
    against_moto!(batches_in_order);
}

async fn batches_in_order(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture
        .put(&["b1", "b2", "b3", "b4", "b5", "b6", "b7"])
        .await?;
    let mut settings = fixture.settings()?;
    settings.batch_size = 3;
    let stream_arn = settings.stream_arn.clone();
    let function = Scripted::new(|_, _| ok());
    let running = fixture.start(settings, function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[&["b1", "b2", "b3"], &["b4", "b5", "b6"], &["b7"]])
    );
    let first = &function.calls()[0][0];
    assert_eq!(first["eventSourceARN"], json!(stream_arn));
    assert_eq!(first["eventSource"], "aws:dynamodb");
    assert_eq!(first["eventName"], "INSERT");
    assert_eq!(
        first["dynamodb"]["NewImage"]["publishedYear"],
        json!({"N": "1965"})
    );
    assert_eq!(first["dynamodb"]["StreamViewType"], "NEW_AND_OLD_IMAGES");
    let progress = running.mapping.progress();
    let shard = progress.shards.values().next().context("no shard")?;
    assert_eq!(
        shard.checkpoint.as_deref(),
        Some(sequence(&function.calls()[2][0]).as_str())
    );
    fixture.no_dead_letters().await?;
    running.stop().await;
    Ok(())
}

/// The batching window gathers what arrives within it into one batch; it begins when the
/// previous invocation completes.
#[tokio::test]
async fn the_batching_window_gathers_records_into_one_batch() {
    against_moto!(batching_window);
}

async fn batching_window(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    let mut settings = fixture.settings()?;
    settings.batching_window = Duration::from_secs(1);
    let function = Scripted::new(|_, _| ok());
    let running = fixture.start(settings, function.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fixture.put(&["b1"]).await?; // the first window is over: at once
    running.idle().await?;
    fixture.put(&["b2", "b3", "b4"]).await?; // within the window after b1's invocation
    running.idle().await?;
    assert_eq!(function.names(), names(&[&["b1"], &["b2", "b3", "b4"]]));
    running.stop().await;
    Ok(())
}

/// A batch never exceeds the payload limit (6 MB on AWS, shrunk here to two records' worth).
#[tokio::test]
async fn a_batch_stays_under_the_payload_limit() {
    against_moto!(payload_limit);
}

async fn payload_limit(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3", "b4", "b5"]).await?;
    let mut settings = fixture.settings()?;
    let streams = aws_sdk_dynamodbstreams::Client::new(&fixture.sdk);
    let records = testing::streams::read_records(&streams, &settings.stream_arn).await?;
    let two = serde_json::to_string(&json!({ "Records": &records[..2] }))?.len();
    settings.max_payload_bytes = two + 10;
    let function = Scripted::new(|_, _| ok());
    let running = fixture.start(settings, function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[&["b1", "b2"], &["b3", "b4"], &["b5"]])
    );
    for call in function.calls() {
        assert!(serde_json::to_string(&json!({ "Records": call }))?.len() <= two + 10);
    }
    running.stop().await;
    Ok(())
}

/// ReportBatchItemFailures: the retry starts at the lowest reported record; the records before
/// it are not sent again.
#[tokio::test]
async fn a_partial_failure_resumes_from_the_lowest_reported_record() {
    against_moto!(partial_failure);
}

async fn partial_failure(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3", "b4", "b5"]).await?;
    let function = Scripted::new(|n, records| match n {
        0 => {
            let b3 = sequence(&records[2]);
            let b4 = sequence(&records[3]);
            failures(&[&b4, &b3])
        }
        _ => ok(),
    });
    let running = fixture.start(fixture.settings()?, function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[&["b1", "b2", "b3", "b4", "b5"], &["b3", "b4", "b5"]])
    );
    fixture.no_dead_letters().await?;
    running.stop().await;
    Ok(())
}

/// An empty, null or unknown `itemIdentifier` fails the whole batch: all of it is sent again.
#[tokio::test]
async fn an_unknown_or_empty_identifier_resends_the_whole_batch() {
    against_moto!(invalid_identifiers);
}

async fn invalid_identifiers(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3"]).await?;
    let function = Scripted::new(|n, _| match n {
        0 => failures(&["not-a-sequence-number"]),
        1 => failures(&[""]),
        2 => Invocation::Response(json!({ "batchItemFailures": [{ "itemIdentifier": null }] })),
        _ => ok(),
    });
    let running = fixture.start(fixture.settings()?, function.clone());
    running.idle().await?;
    let all: &[&str] = &["b1", "b2", "b3"];
    assert_eq!(function.names(), names(&[all, all, all, all]));
    fixture.no_dead_letters().await?;
    running.stop().await;
    Ok(())
}

/// BisectBatchOnFunctionError splits a failing batch in two and retries each half on its own
/// (splits consume no retries), down to the record the function fails on; once its retries are
/// exhausted it alone is discarded, and the records after it still flow. Timeouts and crashes
/// are function errors like any other.
#[tokio::test]
async fn bisection_isolates_the_record_the_function_fails_on() {
    against_moto!(bisection);
}

async fn bisection(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3", "b4"]).await?;
    let mut settings = fixture.settings()?;
    settings.maximum_retry_attempts = Some(2);
    let function = Scripted::new(|n, records| {
        if holds(records, "b3") {
            error(if n % 2 == 0 {
                "Sandbox.Timedout"
            } else {
                "Runtime.ExitError"
            })
        } else {
            ok()
        }
    });
    let running = fixture.start(settings.clone(), function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[
            &["b1", "b2", "b3", "b4"],
            &["b1", "b2"],
            &["b3", "b4"],
            &["b3"],
            &["b3"],
            &["b3"],
            &["b4"],
        ])
    );
    let b3 = sequence(&function.calls()[3][0]);
    let [letter] = fixture
        .dead_letters(1)
        .await?
        .try_into()
        .map_err(|l| anyhow::anyhow!("{l:?}"))?;
    assert_eq!(
        letter["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    // Every invocation that held b3: the whole batch, its half, and b3 alone three times.
    assert_eq!(letter["requestContext"]["approximateInvokeCount"], 5);
    assert_eq!(
        letter["DDBStreamBatchInfo"]["startSequenceNumber"],
        json!(b3)
    );
    assert_eq!(letter["DDBStreamBatchInfo"]["endSequenceNumber"], json!(b3));
    assert_eq!(letter["DDBStreamBatchInfo"]["batchSize"], 1);

    fixture.put(&["b5"]).await?;
    running.idle().await?;
    assert_eq!(function.names().last(), Some(&vec!["b5".to_owned()]));
    let progress = running.mapping.progress();
    assert_eq!(
        (progress.discarded_batches, progress.discarded_records),
        (1, 1)
    );
    running.stop().await;
    Ok(())
}

/// Without bisection, a batch whose retries are exhausted is discarded whole; the on-failure
/// destination gets AWS's record of it, naming its first and last sequence numbers; the
/// records after it still flow.
#[tokio::test]
async fn exhausted_retries_discard_the_batch_and_the_destination_is_told() {
    against_moto!(retries_exhausted);
}

async fn retries_exhausted(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3"]).await?;
    let mut settings = fixture.settings()?;
    settings.batch_size = 2;
    settings.bisect_batch_on_function_error = false;
    settings.maximum_retry_attempts = Some(1);
    let function = Scripted::new(|_, records| {
        if holds(records, "b1") {
            error("Runtime.ExitError")
        } else {
            ok()
        }
    });
    let running = fixture.start(settings.clone(), function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[&["b1", "b2"], &["b1", "b2"], &["b3"]])
    );
    let calls = function.calls();
    let letters = fixture.dead_letters(1).await?;
    let [letter] = letters.as_slice() else {
        bail!("expected one dead letter: {letters:?}");
    };
    let shard = running
        .mapping
        .progress()
        .shards
        .keys()
        .next()
        .cloned()
        .context("no shard")?;
    let info = &letter["DDBStreamBatchInfo"];
    let arrival = info["approximateArrivalOfFirstRecord"]
        .as_str()
        .context("no arrival")?;
    assert!(
        chrono::DateTime::parse_from_rfc3339(arrival).is_ok() && arrival.ends_with('Z'),
        "{arrival}"
    );
    let timestamp = letter["timestamp"].as_str().context("no timestamp")?;
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{timestamp}"
    );
    let request_id = letter["requestContext"]["requestId"]
        .as_str()
        .unwrap_or_default();
    assert!(!request_id.is_empty());
    let expected = json!({
        "version": "1.0",
        "timestamp": timestamp,
        "requestContext": {
            "requestId": request_id,
            "functionArn": settings.function_arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 2,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "DDBStreamBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": sequence(&calls[0][0]),
            "endSequenceNumber": sequence(&calls[0][1]),
            "approximateArrivalOfFirstRecord": arrival,
            "approximateArrivalOfLastRecord": info["approximateArrivalOfLastRecord"],
            "batchSize": 2,
            "streamArn": settings.stream_arn,
        },
    });
    assert_eq!(letter, &expected);
    running.stop().await;
    Ok(())
}

/// A partial failure that keeps failing counts retries too; the rest of the batch from the
/// reported record is what is discarded, and the response context has no function error.
#[tokio::test]
async fn a_partial_failure_that_keeps_failing_discards_the_rest_of_the_batch() {
    against_moto!(partial_exhausted);
}

async fn partial_exhausted(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2", "b3", "b4"]).await?;
    let mut settings = fixture.settings()?;
    settings.maximum_retry_attempts = Some(2);
    let function = Scripted::new(
        |_, records| match records.iter().find(|r| name(r) == "b3") {
            Some(b3) => failures(&[&sequence(b3)]),
            None => ok(),
        },
    );
    let running = fixture.start(settings, function.clone());
    running.idle().await?;
    assert_eq!(
        function.names(),
        names(&[&["b1", "b2", "b3", "b4"], &["b3", "b4"], &["b3", "b4"]])
    );
    let calls = function.calls();
    let letters = fixture.dead_letters(1).await?;
    let letter = letters.first().context("no dead letter")?;
    assert_eq!(letter["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(letter["responseContext"].get("functionError"), None);
    let info = &letter["DDBStreamBatchInfo"];
    assert_eq!(info["startSequenceNumber"], json!(sequence(&calls[1][0])));
    assert_eq!(info["endSequenceNumber"], json!(sequence(&calls[1][1])));
    assert_eq!(info["batchSize"], 2);
    running.stop().await;
    Ok(())
}

/// MaximumRecordAgeInSeconds: a failing batch is discarded once a record of it is older than
/// the maximum age, even with unlimited retries.
#[tokio::test]
async fn records_older_than_the_maximum_age_are_discarded() {
    against_moto!(record_age);
}

async fn record_age(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1"]).await?;
    let mut settings = fixture.settings()?;
    settings.maximum_retry_attempts = None;
    settings.maximum_record_age = Some(Duration::from_secs(2));
    settings.poll_interval = Duration::from_millis(100);
    let function = Scripted::new(|_, records| {
        if holds(records, "b1") {
            error("Handled")
        } else {
            ok()
        }
    });
    let running = fixture.start(settings, function.clone());
    let letters = fixture.dead_letters(1).await?;
    assert_eq!(
        letters[0]["requestContext"]["condition"],
        "RecordAgeExceeded"
    );
    assert!(function.calls().len() > 3, "retried until it was too old");
    fixture.put(&["b2"]).await?;
    running.idle().await?;
    assert_eq!(function.names().last(), Some(&vec!["b2".to_owned()]));
    running.stop().await;
    Ok(())
}

/// MaximumRetryAttempts and MaximumRecordAgeInSeconds of -1: a failing batch is retried on and
/// on, nothing is discarded, and the shard shows as stuck until the function recovers.
#[tokio::test]
async fn unlimited_settings_retry_on_and_on() {
    against_moto!(unlimited);
}

async fn unlimited(endpoint: &str) -> anyhow::Result<()> {
    let fixture = Fixture::new(endpoint).await?;
    fixture.put(&["b1", "b2"]).await?;
    let mut settings = fixture.settings()?;
    settings.maximum_retry_attempts = None;
    settings.maximum_record_age = None;
    let recovered = Arc::new(AtomicBool::new(false));
    let flag = recovered.clone();
    let function = Scripted::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            ok()
        } else {
            error("Runtime.ExitError")
        }
    });
    let running = fixture.start(settings, function.clone());
    for _ in 0..500 {
        if function.calls().len() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let progress = running.mapping.progress();
    assert!(function.calls().len() >= 30, "{progress:?}");
    assert_eq!(progress.discarded_batches, 0);
    assert!(
        progress
            .shards
            .values()
            .all(|s| s.retrying && s.pending_records == 2)
    );
    assert_eq!(progress.stuck(Duration::ZERO).len(), 1);
    recovered.store(true, Ordering::SeqCst);
    running.idle().await?;
    fixture.no_dead_letters().await?;
    // The template bisects: b1 alone was retried until the function recovered, then b2.
    let calls = function.names();
    assert_eq!(calls[0], ["b1", "b2"]);
    assert_eq!(calls[calls.len() - 2..], names(&[&["b1"], &["b2"]]));
    running.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Several shards, one closed with a child: moto never splits a shard, so this runs against a
// small stand-in for the DynamoDB Streams API on 127.0.0.1.
// ---------------------------------------------------------------------------------------------

/// A shard of the stand-in stream: its records as (sequence number, book).
struct FakeShard {
    id: &'static str,
    parent: Option<&'static str>,
    records: Vec<(&'static str, &'static str)>,
    closed: bool,
}

const FAKE_STREAM: &str =
    "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000";

/// DescribeStream, GetShardIterator and GetRecords (awsJson 1.0) over `shards`; an iterator is
/// `<shard>|<index of the next record>`, and a closed shard's last read gives no next iterator.
async fn fake_streams_api(
    axum::extract::State(shards): axum::extract::State<Arc<Vec<FakeShard>>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let request: Value = serde_json::from_str(&body).unwrap_or_default();
    let target = headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default();
    let shard = |id: &str| shards.iter().find(|s| s.id == id);
    let response = match target.rsplit('.').next().unwrap_or_default() {
        "DescribeStream" => json!({ "StreamDescription": {
            "StreamArn": FAKE_STREAM,
            "StreamStatus": "ENABLED",
            "Shards": shards.iter().map(|s| {
                let mut range = json!({ "StartingSequenceNumber": s.records.first().map(|r| r.0) });
                if s.closed {
                    range["EndingSequenceNumber"] = json!(s.records.last().map(|r| r.0));
                }
                json!({ "ShardId": s.id, "ParentShardId": s.parent, "SequenceNumberRange": range })
            }).collect::<Vec<_>>(),
        }}),
        "GetShardIterator" => {
            let id = request["ShardId"].as_str().unwrap_or_default();
            let records = shard(id).map(|s| s.records.as_slice()).unwrap_or_default();
            let index = match request["ShardIteratorType"].as_str() {
                Some("AFTER_SEQUENCE_NUMBER") => records
                    .iter()
                    .position(|r| Some(r.0) == request["SequenceNumber"].as_str())
                    .map_or(records.len(), |i| i + 1),
                Some("LATEST") => records.len(),
                _ => 0,
            };
            json!({ "ShardIterator": format!("{id}|{index}") })
        }
        "GetRecords" => {
            let iterator = request["ShardIterator"].as_str().unwrap_or_default();
            let (id, index) = iterator.split_once('|').unwrap_or_default();
            let index: usize = index.parse().unwrap_or_default();
            let limit = request["Limit"].as_u64().unwrap_or(1000) as usize;
            let Some(s) = shard(id) else {
                return (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/x-amz-json-1.0",
                    )],
                    "{}".to_owned(),
                );
            };
            let end = (index + limit).min(s.records.len());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            let records: Vec<Value> = s.records[index.min(end)..end]
                .iter()
                .map(|(sequence, book)| {
                    json!({
                        "eventID": format!("e{sequence}"),
                        "eventName": "INSERT",
                        "eventVersion": "1.1",
                        "eventSource": "aws:dynamodb",
                        "awsRegion": "us-east-1",
                        "dynamodb": {
                            "ApproximateCreationDateTime": now,
                            "Keys": { "name": { "S": book } },
                            "SequenceNumber": sequence,
                            "SizeBytes": 10,
                            "StreamViewType": "KEYS_ONLY",
                        },
                    })
                })
                .collect();
            let mut output = json!({ "Records": records });
            if !(s.closed && end == s.records.len()) {
                output["NextShardIterator"] = json!(format!("{id}|{end}"));
            }
            output
        }
        other => json!({ "__type": "UnknownOperationException", "message": other }),
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/x-amz-json-1.0",
        )],
        response.to_string(),
    )
}

/// Every shard is read, each with its own batches; a child shard only once its closed parent
/// is read to its end and every record of it is done with (here: after a failed batch of the
/// parent was retried).
#[tokio::test]
async fn a_parent_shard_is_done_with_before_its_child_and_every_shard_is_read() -> anyhow::Result<()>
{
    let shards = Arc::new(vec![
        FakeShard {
            id: "shard-child",
            parent: Some("shard-parent"),
            records: vec![("200", "b3")],
            closed: false,
        },
        FakeShard {
            id: "shard-other",
            parent: None,
            records: vec![("300", "x1")],
            closed: false,
        },
        FakeShard {
            id: "shard-parent",
            parent: None,
            records: vec![("100", "b1"), ("101", "b2")],
            closed: true,
        },
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/", axum::routing::post(fake_streams_api))
        .with_state(shards);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sdk = testing::moto::sdk_config(&url).await;

    let settings = StreamMappingSettings {
        function_name: "f".to_owned(),
        function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".to_owned(),
        stream_arn: FAKE_STREAM.to_owned(),
        starting_position: stream_mapping::StartingPosition::TrimHorizon,
        batch_size: 10,
        batching_window: Duration::ZERO,
        report_batch_item_failures: true,
        bisect_batch_on_function_error: false,
        maximum_retry_attempts: None,
        maximum_record_age: None,
        parallelization_factor: 1,
        on_failure: None,
        poll_interval: Duration::from_millis(10),
        retention: Duration::from_secs(86_400),
        max_payload_bytes: 6 * 1024 * 1024,
        shard_discovery_interval: Duration::from_millis(20),
    };
    // The parent's batch fails twice before it succeeds.
    let parent_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let function = Scripted::new(move |_, records| {
        if holds(records, "b1") && parent_calls.fetch_add(1, Ordering::SeqCst) < 2 {
            error("Runtime.ExitError")
        } else {
            ok()
        }
    });
    let shutdown = CancellationToken::new();
    let mapping = stream_mapping::start(
        settings,
        aws_sdk_dynamodbstreams::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
        function.clone(),
        shutdown.clone(),
    );
    let progress = mapping.wait_until_idle(IDLE).await?;
    shutdown.cancel();
    mapping.stopped().await;
    server.abort();

    let calls = function.names();
    let parent_done = calls
        .iter()
        .rposition(|c| c.contains(&"b1".to_owned()))
        .context("the parent was not read")?;
    let child = calls
        .iter()
        .position(|c| c.contains(&"b3".to_owned()))
        .context("the child was not read")?;
    assert!(parent_done < child, "{calls:?}");
    assert!(calls.contains(&vec!["x1".to_owned()]), "{calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.contains(&"b3".to_owned()))
            .count(),
        1
    );
    let parent = &progress.shards["shard-parent"];
    assert!(parent.finished);
    assert_eq!(parent.checkpoint.as_deref(), Some("101"));
    assert_eq!(
        progress.shards["shard-child"].parent_shard_id.as_deref(),
        Some("shard-parent")
    );
    assert_eq!(
        progress.shards["shard-child"].checkpoint.as_deref(),
        Some("200")
    );
    assert_eq!(
        progress.shards["shard-other"].checkpoint.as_deref(),
        Some("300")
    );
    Ok(())
}
