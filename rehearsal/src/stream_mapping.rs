//! Lambda's event source mapping for a DynamoDB stream, as AWS documents it: it polls every
//! shard of the stream, invokes the function synchronously with batches of records, and
//! checkpoints, retries, bisects or discards by the mapping's settings.
//!
//! The pages this follows (each rule below names its own):
//! - Using AWS Lambda with Amazon DynamoDB — polling, batching, shards:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html>
//! - The mapping's parameters and their defaults:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html>
//! - Batching behaviour of event source mappings (batch size, window, 6 MB):
//!   <https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventsourcemapping.html>
//! - Partial batch responses:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>
//! - Errors, retries, bisection and the on-failure destination:
//!   <https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html>
//!
//! Per shard, one batch is in flight at a time (ParallelizationFactor 1), so records reach the
//! function in stream order and a failing batch holds back everything after it until it
//! succeeds or is discarded. What is discarded is discarded whole — every record of that
//! (sub-)batch — with only a pointer to it (shard and sequence numbers) sent to the
//! on-failure destination: the records themselves are not kept.
//!
//! Checkpoints are kept in memory: every rehearsal starts on a fresh emulator.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use aws_lambda_events::dynamodb::{EventRecord, StreamViewType};
use aws_sdk_dynamodbstreams::types::{
    AttributeValue, Record, ShardIteratorType, StreamViewType as SdkViewType,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::lambda::{Invocation, Invoke};
use crate::resources::Created;
use crate::template::{Template, integer, seconds};

// ---------------------------------------------------------------------------------------------
// The records, as the function gets them
// ---------------------------------------------------------------------------------------------

/// One stream record as the event source mapping hands it to a Lambda: built as
/// `aws_lambda_events`' [`EventRecord`], given in its JSON form. The event is
/// `{"Records": [...]}` of these (<https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html>,
/// "Example event").
pub fn lambda_record(record: &Record, stream_arn: &str) -> Value {
    let mut event = EventRecord::default();
    event.event_id = record.event_id().unwrap_or_default().to_owned();
    event.event_name = record
        .event_name()
        .map(|name| name.as_str().to_owned())
        .unwrap_or_default();
    event.event_version = record.event_version().map(str::to_owned);
    event.event_source = record.event_source().map(str::to_owned);
    event.aws_region = record.aws_region().unwrap_or_default().to_owned();
    event.event_source_arn = Some(stream_arn.to_owned());
    if let Some(data) = record.dynamodb() {
        let change = &mut event.change;
        if let Some(time) = data.approximate_creation_date_time() {
            // Whole seconds, as Lambda's event source mapping sends them.
            let secs = u64::try_from(time.secs()).unwrap_or_default();
            change.approximate_creation_date_time = (UNIX_EPOCH + Duration::from_secs(secs)).into();
        }
        change.keys = image(data.keys.as_ref());
        change.new_image = image(data.new_image.as_ref());
        change.old_image = image(data.old_image.as_ref());
        change.sequence_number = data.sequence_number().map(str::to_owned);
        change.size_bytes = data.size_bytes().unwrap_or_default();
        change.stream_view_type = data.stream_view_type().and_then(view_type);
    }
    serde_json::to_value(event).unwrap_or_default()
}

fn image(image: Option<&HashMap<String, AttributeValue>>) -> serde_dynamo::Item {
    image
        .map(|image| serde_dynamo::Item::from(image.clone()))
        .unwrap_or_default()
}

fn view_type(view: &SdkViewType) -> Option<StreamViewType> {
    match view {
        SdkViewType::KeysOnly => Some(StreamViewType::KeysOnly),
        SdkViewType::NewImage => Some(StreamViewType::NewImage),
        SdkViewType::OldImage => Some(StreamViewType::OldImage),
        SdkViewType::NewAndOldImages => Some(StreamViewType::NewAndOldImages),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// Where a mapping starts reading a shard it finds when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Only records written after the mapping started.
    Latest,
}

/// The on-failure destination: an SQS queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The queue's ARN, as the template names it.
    pub arn: String,
    /// The queue's URL, to send to.
    pub url: String,
}

/// An event source mapping's settings: the template's, and the timings AWS fixes.
#[derive(Debug, Clone)]
pub struct StreamMappingSettings {
    /// The function's name.
    pub function_name: String,
    /// The function's ARN (`requestContext.functionArn` of an on-failure record).
    pub function_arn: String,
    /// The stream's ARN (`Stream`).
    pub stream_arn: String,
    /// `StartingPosition`.
    pub starting_position: StartingPosition,
    /// `BatchSize` (default 100).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds` (default 0).
    pub batching_window: Duration,
    /// `FunctionResponseTypes` has `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    /// `BisectBatchOnFunctionError` (default false).
    pub bisect_batch_on_function_error: bool,
    /// `MaximumRetryAttempts`; `None` for -1 (the default): retried until the record expires.
    pub maximum_retry_attempts: Option<u32>,
    /// `MaximumRecordAgeInSeconds`; `None` for -1 (the default): until the record expires.
    pub maximum_record_age: Option<Duration>,
    /// `ParallelizationFactor`: only 1 (the default) is emulated.
    pub parallelization_factor: u32,
    /// `DestinationConfig.OnFailure`, with the queue's URL.
    pub on_failure: Option<Destination>,
    /// How often a shard is polled: 4 times a second, AWS's base rate
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html>, "Polling and batching
    /// streams"). AWS documents no delay before a failed batch is retried: it is retried on the
    /// next poll. Tests may shrink it.
    pub poll_interval: Duration,
    /// How long a stream keeps a record: 24 hours
    /// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html#Streams.DataRetention>).
    /// A record older than this has expired, which ends its retries whatever the settings say.
    /// Tests may shrink it.
    pub retention: Duration,
    /// The largest event the function can be invoked with: 6 MB, the synchronous payload limit
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventsourcemapping.html>,
    /// "Batching behavior"). Tests may shrink it.
    pub max_payload_bytes: usize,
    /// How often the stream's shards are listed (DescribeStream) to find new ones. AWS
    /// documents no figure; DescribeStream allows 10 calls a second.
    pub shard_discovery_interval: Duration,
}

impl StreamMappingSettings {
    /// The mapping SAM creates from the function's `Events` entry of `Type: DynamoDB`
    /// (<https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-function-dynamodb.html>),
    /// with defaults from <https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html>
    /// and AWS's timings.
    pub fn from_template(
        template: &Template,
        function_logical_id: &str,
        created: &Created,
    ) -> anyhow::Result<Self> {
        let events = &template.properties(function_logical_id)["Events"];
        let entries: Vec<_> = events
            .as_mapping()
            .into_iter()
            .flatten()
            .filter(|(_, event)| event["Type"].as_str() == Some("DynamoDB"))
            .collect();
        let [(event_name, event)] = entries.as_slice() else {
            bail!(
                "{function_logical_id} has {} events of Type DynamoDB; expected one",
                entries.len()
            );
        };
        let what = format!(
            "{function_logical_id}.Events.{}",
            event_name.as_str().unwrap_or_default()
        );
        let p = template.resolve(&event["Properties"], created.names())?;
        let function = created
            .functions
            .get(function_logical_id)
            .with_context(|| format!("{function_logical_id} is not a function of the template"))?;
        for unsupported in ["FilterCriteria", "TumblingWindowInSeconds"] {
            if !p[unsupported].is_null() {
                bail!("{what}: {unsupported} is not emulated");
            }
        }
        if flag(&p["Enabled"]) == Some(false) {
            bail!("{what}: a disabled mapping is not emulated");
        }
        // -1 means infinite for both limits (services-ddb-params).
        let unlimited = |key: &str| -> anyhow::Result<Option<u64>> {
            match integer(&p[key]) {
                None | Some(-1) => Ok(None),
                Some(n) => u64::try_from(n)
                    .map(Some)
                    .with_context(|| format!("{what}: {key} {n}")),
            }
        };
        let parallelization_factor = integer(&p["ParallelizationFactor"]).unwrap_or(1);
        if parallelization_factor != 1 {
            bail!(
                "{what}: ParallelizationFactor {parallelization_factor} is not emulated (only 1)"
            );
        }
        let on_failure = match &p["DestinationConfig"]["OnFailure"] {
            Value::Null => None,
            on_failure => {
                let arn = on_failure["Destination"]
                    .as_str()
                    .with_context(|| format!("{what}: OnFailure has no Destination"))?;
                let queue = created.queue_by_arn(arn).with_context(|| {
                    format!(
                        "{what}: the on-failure destination {arn} is not a queue of the template"
                    )
                })?;
                Some(Destination {
                    arn: arn.to_owned(),
                    url: queue.url.clone(),
                })
            }
        };
        Ok(Self {
            function_name: function.name.clone(),
            function_arn: function.arn.clone(),
            stream_arn: p["Stream"]
                .as_str()
                .with_context(|| format!("{what}: no Stream"))?
                .to_owned(),
            starting_position: match p["StartingPosition"].as_str() {
                Some("TRIM_HORIZON") => StartingPosition::TrimHorizon,
                Some("LATEST") => StartingPosition::Latest,
                other => bail!("{what}: StartingPosition {other:?}"),
            },
            batch_size: integer(&p["BatchSize"])
                .map(usize::try_from)
                .transpose()?
                .unwrap_or(100),
            batching_window: seconds(&p["MaximumBatchingWindowInSeconds"]).unwrap_or_default(),
            report_batch_item_failures: p["FunctionResponseTypes"]
                .as_array()
                .is_some_and(|types| types.iter().any(|t| t == "ReportBatchItemFailures")),
            bisect_batch_on_function_error: flag(&p["BisectBatchOnFunctionError"]).unwrap_or(false),
            maximum_retry_attempts: unlimited("MaximumRetryAttempts")?
                .map(u32::try_from)
                .transpose()?,
            maximum_record_age: unlimited("MaximumRecordAgeInSeconds")?.map(Duration::from_secs),
            parallelization_factor: 1,
            on_failure,
            poll_interval: Duration::from_millis(250),
            retention: Duration::from_secs(24 * 60 * 60),
            max_payload_bytes: 6 * 1024 * 1024,
            shard_discovery_interval: Duration::from_secs(1),
        })
    }

    /// The age beyond which a record is discarded: its maximum age, and never beyond the
    /// stream's retention.
    fn record_age_limit(&self) -> Duration {
        self.maximum_record_age
            .map_or(self.retention, |age| age.min(self.retention))
    }
}

fn flag(value: &Value) -> Option<bool> {
    value
        .as_bool()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

/// Where a mapping stands, for tests and the rehearsal's health checks.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The shards the mapping has started reading, by shard id.
    pub shards: BTreeMap<String, ShardProgress>,
    /// When the shards were last listed (the start of the DescribeStream call).
    pub listed_at: Option<Instant>,
    /// Shards of that listing not read yet: children waiting for their parent to be done.
    pub waiting_shards: Vec<String>,
    /// Invocations so far.
    pub invocations: u64,
    /// Batches discarded so far (retries exhausted, records too old).
    pub discarded_batches: u64,
    /// Records discarded so far.
    pub discarded_records: u64,
    /// Records the emulator handed over a second time, skipped: each record is handed over once.
    pub reread_records: u64,
    /// The last error reading the stream or sending to the destination, if any.
    pub last_error: Option<String>,
}

/// One shard's state.
#[derive(Debug, Clone, Default)]
pub struct ShardProgress {
    /// The parent shard, read to its end before this one started.
    pub parent_shard_id: Option<String>,
    /// The sequence number of the last record done with (processed or discarded).
    pub checkpoint: Option<String>,
    /// Records read but not yet done with.
    pub pending_records: usize,
    /// How long the oldest of them has been in the stream.
    pub oldest_pending_age: Option<Duration>,
    /// The age of the last record of the last batch when it was sent to the function
    /// (Lambda's IteratorAge metric).
    pub iterator_age: Option<Duration>,
    /// When the shard was last found caught up: a read (started then) returned nothing and
    /// nothing was pending or in flight. `None` while it is not.
    pub caught_up_at: Option<Instant>,
    /// The batch in flight or waiting has failed at least once.
    pub retrying: bool,
    /// The shard is closed and every record of it is done with.
    pub finished: bool,
}

impl Progress {
    /// Whether every shard was found caught up (or finished) after `since`, in a listing of
    /// the shards made after `since` too, with none waiting for its parent: nothing written
    /// before `since` is still pending.
    pub fn idle_since(&self, since: Instant) -> bool {
        self.listed_at.is_some_and(|at| at >= since)
            && self.waiting_shards.is_empty()
            && self
                .shards
                .values()
                .all(|s| s.finished || s.caught_up_at.is_some_and(|at| at >= since))
    }

    /// The shards whose oldest pending record has waited longer than `age`.
    pub fn stuck(&self, age: Duration) -> Vec<&str> {
        self.shards
            .iter()
            .filter(|(_, s)| s.oldest_pending_age.is_some_and(|a| a > age))
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The mapping
// ---------------------------------------------------------------------------------------------

/// A running event source mapping. Stops when its shutdown token is cancelled.
pub struct StreamMapping {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    settings: StreamMappingSettings,
    streams: aws_sdk_dynamodbstreams::Client,
    sqs: aws_sdk_sqs::Client,
    target: Arc<dyn Invoke>,
    shutdown: CancellationToken,
    progress: Mutex<Progress>,
}

impl std::fmt::Debug for StreamMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMapping")
            .field("settings", &self.shared.settings)
            .field("progress", &*lock(&self.shared.progress))
            .finish_non_exhaustive()
    }
}

/// Starts polling the stream of `settings` and invoking `target`, until `shutdown`.
pub fn start(
    settings: StreamMappingSettings,
    streams: aws_sdk_dynamodbstreams::Client,
    sqs: aws_sdk_sqs::Client,
    target: Arc<dyn Invoke>,
    shutdown: CancellationToken,
) -> StreamMapping {
    let shared = Arc::new(Shared {
        settings,
        streams,
        sqs,
        target,
        shutdown,
        progress: Mutex::new(Progress::default()),
    });
    let task = tokio::spawn(coordinate(shared.clone()));
    StreamMapping { shared, task }
}

impl StreamMapping {
    /// Where the mapping stands now.
    pub fn progress(&self) -> Progress {
        lock(&self.shared.progress).clone()
    }

    /// Waits until everything written to the table before this call has been done with
    /// (see [`Progress::idle_since`]); fails after `timeout`, saying where it stands.
    pub async fn wait_until_idle(&self, timeout: Duration) -> anyhow::Result<Progress> {
        let since = Instant::now();
        loop {
            let progress = self.progress();
            if progress.idle_since(since) {
                return Ok(progress);
            }
            if since.elapsed() > timeout {
                bail!("the stream mapping is not idle after {timeout:?}: {progress:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the mapping to stop (after its shutdown token is cancelled).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the stream mapping's task failed");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut lock(&self.progress));
    }

    fn error(&self, error: &anyhow::Error) {
        tracing::warn!(error = %format!("{error:#}"), stream = %self.settings.stream_arn, "stream mapping");
        self.update(|p| p.last_error = Some(format!("{error:#}")));
    }

    /// Sleeps, or returns false when the mapping is shut down.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Shard {
    id: String,
    parent: Option<String>,
}

/// Lists the shards now and then, and starts reading each new one, a child only after its
/// parent is read to its end: "To process the records in order, the parent shard must always
/// be processed before a child shard"
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html#Streams.Processing>).
async fn coordinate(shared: Arc<Shared>) {
    let mut started = HashSet::new();
    let mut initial: Option<HashSet<String>> = None;
    let mut readers = tokio::task::JoinSet::new();
    loop {
        let listed_at = Instant::now();
        match list_shards(&shared).await {
            Ok(shards) => {
                let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
                let initial =
                    initial.get_or_insert_with(|| shards.iter().map(|s| s.id.clone()).collect());
                let mut waiting = Vec::new();
                for shard in &shards {
                    if started.contains(&shard.id) {
                        continue;
                    }
                    let parent_pending = shard.parent.as_deref().is_some_and(|parent| {
                        known.contains(parent)
                            && !lock(&shared.progress)
                                .shards
                                .get(parent)
                                .is_some_and(|p| p.finished)
                    });
                    if parent_pending {
                        waiting.push(shard.id.clone());
                        continue;
                    }
                    // A shard found later holds only records written since: read it all.
                    let position = if initial.contains(&shard.id) {
                        shared.settings.starting_position
                    } else {
                        StartingPosition::TrimHorizon
                    };
                    started.insert(shard.id.clone());
                    shared.update(|p| {
                        p.shards.insert(
                            shard.id.clone(),
                            ShardProgress {
                                parent_shard_id: shard.parent.clone(),
                                ..ShardProgress::default()
                            },
                        );
                    });
                    readers.spawn(ShardReader::new(shared.clone(), shard.id.clone()).run(position));
                }
                shared.update(|p| {
                    p.listed_at = Some(listed_at);
                    p.waiting_shards = waiting;
                });
            }
            Err(e) => shared.error(&e),
        }
        if !shared.pause(shared.settings.shard_discovery_interval).await {
            break;
        }
    }
    while readers.join_next().await.is_some() {}
}

async fn list_shards(shared: &Shared) -> anyhow::Result<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let output = shared
            .streams
            .describe_stream()
            .stream_arn(&shared.settings.stream_arn)
            .set_exclusive_start_shard_id(start.take())
            .send()
            .await
            .context("DescribeStream")?;
        let Some(description) = output.stream_description() else {
            return Ok(shards);
        };
        shards.extend(description.shards().iter().filter_map(|s| {
            Some(Shard {
                id: s.shard_id()?.to_owned(),
                parent: s.parent_shard_id().map(str::to_owned),
            })
        }));
        match description.last_evaluated_shard_id() {
            Some(last) => start = Some(last.to_owned()),
            None => return Ok(shards),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One shard
// ---------------------------------------------------------------------------------------------

/// A record read from the shard, with what the mapping needs to know of it.
#[derive(Debug, Clone)]
struct Pending {
    sequence_number: String,
    arrival: DateTime<Utc>,
    json: Value,
    size: usize,
}

/// Records sent to the function together, and what happened to them so far.
#[derive(Debug)]
struct Batch {
    records: Vec<Pending>,
    /// Retries consumed (bisection consumes none).
    retries: u32,
    /// Invocations that held these records (`approximateInvokeCount`).
    invocations: u32,
    last_request_id: Option<String>,
    last_function_error: Option<bool>,
}

impl Batch {
    fn new(records: Vec<Pending>) -> Self {
        Self {
            records,
            retries: 0,
            invocations: 0,
            last_request_id: None,
            last_function_error: None,
        }
    }

    /// The records from `index` on, with this batch's history.
    fn split_off(&mut self, index: usize) -> Self {
        Self {
            records: self.records.split_off(index),
            retries: self.retries,
            invocations: self.invocations,
            last_request_id: self.last_request_id.clone(),
            last_function_error: self.last_function_error,
        }
    }

    fn event(&self) -> Value {
        json!({ "Records": self.records.iter().map(|r| r.json.clone()).collect::<Vec<_>>() })
    }
}

/// How an invocation of a batch ended, for the mapping.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every record is done with.
    Success,
    /// The records before this index are done with; the rest are retried.
    Partial(usize),
    /// The function failed (its own error, a timeout, a crash).
    FunctionError,
    /// The response is not a valid partial batch response: the batch failed as a whole.
    Invalid,
}

/// Reads `invocation` as the mapping does
/// (<https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>,
/// "Success and failure conditions"): without `ReportBatchItemFailures` any response is a
/// success; with it, an empty or null `batchItemFailures` (or an empty or null response) is a
/// success, and an empty or null `itemIdentifier`, one that names no record of the batch, or a
/// malformed response fails the whole batch. Otherwise the checkpoint goes to the lowest
/// sequence number reported.
fn outcome(invocation: &Invocation, records: &[Pending], report_failures: bool) -> Outcome {
    let response = match invocation {
        Invocation::FunctionError(_) => return Outcome::FunctionError,
        Invocation::Response(_) if !report_failures => return Outcome::Success,
        Invocation::Response(response) => response,
    };
    let failures = match response {
        Value::Null => return Outcome::Success,
        Value::Object(object) => match object.get("batchItemFailures") {
            None | Some(Value::Null) => return Outcome::Success,
            Some(Value::Array(failures)) => failures,
            Some(_) => return Outcome::Invalid,
        },
        _ => return Outcome::Invalid,
    };
    let mut lowest: Option<usize> = None;
    for failure in failures {
        let Some(identifier) = failure["itemIdentifier"].as_str().filter(|s| !s.is_empty()) else {
            return Outcome::Invalid;
        };
        let Some(index) = records.iter().position(|r| r.sequence_number == identifier) else {
            return Outcome::Invalid;
        };
        lowest = Some(lowest.map_or(index, |l| l.min(index)));
    }
    lowest.map_or(Outcome::Success, Outcome::Partial)
}

/// Why a batch was discarded: `requestContext.condition` of its on-failure record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    RetryAttemptsExhausted,
    RecordAgeExceeded,
}

impl Condition {
    fn as_str(self) -> &'static str {
        match self {
            Self::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Self::RecordAgeExceeded => "RecordAgeExceeded",
        }
    }
}

struct ShardReader {
    shared: Arc<Shared>,
    shard_id: String,
    iterator: Option<String>,
    /// The last sequence number read, to get a fresh iterator after an error.
    last_read: Option<String>,
    /// The shard is closed and read to its end.
    exhausted: bool,
    /// Records read, not yet in a batch.
    buffer: VecDeque<Pending>,
    /// Batches formed and not yet done with, in stream order (the halves of a bisected batch).
    batches: VecDeque<Batch>,
    /// When the current batching window began.
    window_start: Instant,
    /// The event ids of the records read lately, to hand each record over once.
    read_ids: RecentIds,
}

/// The event ids of the last [`RecentIds::KEEP`] records read. "Each stream record appears
/// exactly once in the stream"
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>), and Lambda
/// hands it over once per invocation. moto numbers a shard's records with the count before
/// the write, without a lock, so two concurrent writes can get one sequence number, and an
/// iterator after that number reads the second of them again: that second reading is skipped.
#[derive(Debug, Default)]
struct RecentIds {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl RecentIds {
    const KEEP: usize = 10_000;

    /// Whether `id` is new; remembers it.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == Self::KEEP
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

impl ShardReader {
    fn new(shared: Arc<Shared>, shard_id: String) -> Self {
        Self {
            shared,
            shard_id,
            iterator: None,
            last_read: None,
            exhausted: false,
            buffer: VecDeque::new(),
            batches: VecDeque::new(),
            window_start: Instant::now(),
            read_ids: RecentIds::default(),
        }
    }

    fn settings(&self) -> &StreamMappingSettings {
        &self.shared.settings
    }

    async fn run(mut self, position: StartingPosition) {
        let first = match position {
            StartingPosition::TrimHorizon => ShardIteratorType::TrimHorizon,
            StartingPosition::Latest => ShardIteratorType::Latest,
        };
        loop {
            if self.shared.shutdown.is_cancelled() {
                return;
            }
            let read_at = Instant::now();
            let mut read_nothing = self.exhausted;
            if !self.exhausted && self.buffer.len() < self.settings().batch_size {
                match self.read(&first).await {
                    Ok(count) => read_nothing = count == 0,
                    Err(e) => {
                        self.shared.error(&e);
                        self.iterator = None;
                        if !self.shared.pause(self.settings().poll_interval).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if self.batches.is_empty() && self.batch_is_due() {
                let batch = self.take_batch();
                self.batches.push_back(batch);
            }
            self.report(read_nothing.then_some(read_at));
            if let Some(batch) = self.batches.pop_front() {
                let retry = self.process(batch).await;
                self.report(None);
                if retry && !self.shared.pause(self.settings().poll_interval).await {
                    return;
                }
                continue;
            }
            if self.exhausted && self.buffer.is_empty() {
                self.shared.update(|p| {
                    if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                        shard.finished = true;
                    }
                });
                return;
            }
            if !self.shared.pause(self.settings().poll_interval).await {
                return;
            }
        }
    }

    /// One GetRecords call; returns how many records it read for the first time.
    async fn read(&mut self, first: &ShardIteratorType) -> anyhow::Result<usize> {
        let streams = &self.shared.streams;
        let iterator = match self.iterator.take() {
            Some(iterator) => iterator,
            None => {
                let request = streams
                    .get_shard_iterator()
                    .stream_arn(&self.shared.settings.stream_arn)
                    .shard_id(&self.shard_id);
                let request = match &self.last_read {
                    Some(sequence) => request
                        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                        .sequence_number(sequence),
                    None => request.shard_iterator_type(first.clone()),
                };
                request
                    .send()
                    .await
                    .context("GetShardIterator")?
                    .shard_iterator
                    .context("GetShardIterator returned no iterator")?
            }
        };
        // GetRecords returns at most 1000 records
        // (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_GetRecords.html>).
        let limit = (self.settings().batch_size - self.buffer.len()).clamp(1, 1000);
        let output = streams
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(1000))
            .send()
            .await
            .context("GetRecords")?;
        let stream_arn = &self.shared.settings.stream_arn;
        let mut count = 0;
        for record in output.records() {
            let Some(data) = record.dynamodb() else {
                continue;
            };
            let Some(sequence_number) = data.sequence_number() else {
                continue;
            };
            if record
                .event_id()
                .is_some_and(|id| !self.read_ids.first_time(id))
            {
                tracing::debug!(sequence_number, "a stream record read again is skipped");
                self.shared.update(|p| p.reread_records += 1);
                continue;
            }
            let arrival = data
                .approximate_creation_date_time()
                .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                .unwrap_or_else(Utc::now);
            count += 1;
            let json = lambda_record(record, stream_arn);
            self.buffer.push_back(Pending {
                sequence_number: sequence_number.to_owned(),
                arrival,
                size: json.to_string().len(),
                json,
            });
            self.last_read = Some(sequence_number.to_owned());
        }
        // No next iterator: the shard is closed and this was its end.
        match output.next_shard_iterator {
            Some(next) => self.iterator = Some(next),
            None => self.exhausted = true,
        }
        Ok(count)
    }

    /// Whether to invoke with what is buffered: "Lambda invokes the function when one of the
    /// following criteria is met: the batching window reaches its maximum value, the batch
    /// size is met, or the payload size reaches 6 MB", and for DynamoDB "the next batching
    /// window begins as soon as the previous function invocation completes"
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventsourcemapping.html>,
    /// "Batching behavior"). A closed shard read to its end gets nothing more to wait for.
    fn batch_is_due(&self) -> bool {
        if self.buffer.is_empty() {
            return false;
        }
        let settings = self.settings();
        self.buffer.len() >= settings.batch_size
            || payload_size(self.buffer.iter()) >= settings.max_payload_bytes
            || self.window_start.elapsed() >= settings.batching_window
            || self.exhausted
    }

    /// The first records of the buffer, up to the batch size and the payload limit (at
    /// least one record: a stream record is far smaller than the limit).
    fn take_batch(&mut self) -> Batch {
        let settings = &self.shared.settings;
        let mut records: Vec<Pending> = Vec::new();
        while let Some(next) = self.buffer.front() {
            if records.len() >= settings.batch_size
                || (!records.is_empty()
                    && payload_size(records.iter().chain([next])) > settings.max_payload_bytes)
            {
                break;
            }
            if let Some(next) = self.buffer.pop_front() {
                records.push(next);
            }
        }
        Batch::new(records)
    }

    /// Invokes with `batch` and acts on the outcome; true when a retry is due (after a pause).
    async fn process(&mut self, mut batch: Batch) -> bool {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        // "MaximumRecordAgeInSeconds – Discard records older than the specified age" (and a
        // record past the stream's retention is gone whatever the setting):
        // https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html
        if batch
            .records
            .iter()
            .any(|r| age(r.arrival) > settings.record_age_limit())
        {
            self.discard(batch, Condition::RecordAgeExceeded).await;
            return false;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        if let Some(last) = batch.records.last() {
            let iterator_age = age(last.arrival);
            self.shared.update(|p| {
                p.invocations += 1;
                if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                    shard.iterator_age = Some(iterator_age);
                }
            });
        }
        let invocation = tokio::select! {
            () = self.shared.shutdown.cancelled() => return false,
            invocation = self.shared.target.invoke(batch.event()) => invocation,
        };
        self.window_start = Instant::now();
        batch.invocations += 1;
        batch.last_request_id = Some(request_id);
        batch.last_function_error = Some(invocation.is_error());
        match outcome(
            &invocation,
            &batch.records,
            settings.report_batch_item_failures,
        ) {
            Outcome::Success => {
                self.checkpoint(&batch.records);
                false
            }
            Outcome::Partial(index) => {
                // "If the batchItemFailures array contains multiple items, Lambda uses the
                // record with the lowest sequence number as the checkpoint. Lambda then
                // retries all records starting from that checkpoint"; with bisection on too,
                // "the batch is bisected at the returned sequence number and Lambda retries
                // only the remaining records" — the same records, counted as a retry:
                // https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html
                let rest = batch.split_off(index);
                self.checkpoint(&batch.records);
                self.retry(rest).await
            }
            Outcome::FunctionError
                if settings.bisect_batch_on_function_error && batch.records.len() > 1 =>
            {
                // "BisectBatchOnFunctionError, which splits a failed batch into two smaller
                // batches ... Splitting batches doesn't consume the retry quota"
                // (services-dynamodb-errors); each half is then retried on its own, first
                // half first, so order holds. It applies "regardless of your
                // ReportBatchItemFailures setting" (services-ddb-batchfailurereporting).
                let second = batch.split_off(batch.records.len().div_ceil(2));
                self.batches.push_front(second);
                self.batches.push_front(batch);
                self.shared.update(|p| {
                    if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                        shard.retrying = true;
                    }
                });
                true
            }
            // A function error (Sandbox.Timedout and Runtime.ExitError included) or an invalid
            // partial response fails the batch as a whole; it is retried "until the records
            // expire, exceed the maximum age, or reach the configured retry quota"
            // (services-dynamodb-errors).
            Outcome::FunctionError | Outcome::Invalid => self.retry(batch).await,
        }
    }

    /// Counts a retry of `batch`, and queues it again, or discards it when the retries are
    /// exhausted (`MaximumRetryAttempts`, -1 meaning no limit: services-ddb-params).
    async fn retry(&mut self, mut batch: Batch) -> bool {
        batch.retries += 1;
        let exhausted = self
            .settings()
            .maximum_retry_attempts
            .is_some_and(|max| batch.retries > max);
        if exhausted {
            self.discard(batch, Condition::RetryAttemptsExhausted).await;
            return false;
        }
        self.batches.push_front(batch);
        self.shared.update(|p| {
            if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                shard.retrying = true;
            }
        });
        true
    }

    fn checkpoint(&mut self, records: &[Pending]) {
        let Some(last) = records.last() else {
            return;
        };
        let retrying = !self.batches.is_empty();
        self.shared.update(|p| {
            if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                shard.checkpoint = Some(last.sequence_number.clone());
                shard.retrying = retrying;
            }
        });
    }

    /// Gives up on `batch`: every record of it is skipped, and the on-failure destination
    /// gets a record pointing at them ("If the error handling measures fail, Lambda discards
    /// the records and continues processing batches from the stream", services-dynamodb-errors).
    async fn discard(&mut self, batch: Batch, condition: Condition) {
        tracing::warn!(
            shard = %self.shard_id,
            records = batch.records.len(),
            condition = condition.as_str(),
            "stream mapping discards a batch"
        );
        if let Some(destination) = self.shared.settings.on_failure.clone() {
            let body = failure_record(&self.shared.settings, &self.shard_id, &batch, condition);
            if let Err(e) = self.send(&destination, &body).await {
                // Lambda counts these as DestinationDeliveryFailures; the records are
                // discarded all the same.
                self.shared.error(&e);
            }
        }
        let count = batch.records.len() as u64;
        self.shared.update(|p| {
            p.discarded_batches += 1;
            p.discarded_records += count;
        });
        self.checkpoint(&batch.records);
    }

    async fn send(&self, destination: &Destination, body: &Value) -> anyhow::Result<()> {
        self.shared
            .sqs
            .send_message()
            .queue_url(&destination.url)
            .message_body(body.to_string())
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot send to the on-failure destination {}",
                    destination.arn
                )
            })?;
        Ok(())
    }

    /// Publishes this shard's state; `caught_up_at` when the read started then found nothing
    /// and nothing is pending.
    fn report(&self, read_nothing_at: Option<Instant>) {
        let pending = self
            .buffer
            .iter()
            .chain(self.batches.iter().flat_map(|b| b.records.iter()));
        let pending_records = pending.clone().count();
        let oldest = pending.map(|r| r.arrival).min();
        let caught_up_at = read_nothing_at.filter(|_| pending_records == 0);
        self.shared.update(|p| {
            if let Some(shard) = p.shards.get_mut(&self.shard_id) {
                shard.pending_records = pending_records;
                shard.oldest_pending_age = oldest.map(age);
                if pending_records > 0 {
                    shard.caught_up_at = None;
                } else if caught_up_at.is_some() {
                    shard.caught_up_at = caught_up_at;
                }
            }
        });
    }
}

/// The size of the event holding `records`: `{"Records":[` … `]}` and a comma between two.
fn payload_size<'a>(records: impl Iterator<Item = &'a Pending>) -> usize {
    let (count, bytes) = records.fold((0_usize, 0_usize), |(n, b), r| (n + 1, b + r.size));
    "{\"Records\":[]}".len() + bytes + count.saturating_sub(1)
}

fn age(arrival: DateTime<Utc>) -> Duration {
    (Utc::now() - arrival).to_std().unwrap_or_default()
}

fn whole_seconds(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The record the on-failure destination gets for a discarded batch of a DynamoDB stream: a
/// pointer to the records, not the records
/// (<https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html>, the example
/// invocation record).
fn failure_record(
    settings: &StreamMappingSettings,
    shard_id: &str,
    batch: &Batch,
    condition: Condition,
) -> Value {
    let first = batch.records.first();
    let last = batch.records.last();
    let mut record = json!({
        "requestContext": {
            "requestId": batch
                .last_request_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            "functionArn": settings.function_arn,
            "condition": condition.as_str(),
            "approximateInvokeCount": batch.invocations,
        },
        "version": "1.0",
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first.map(|r| r.sequence_number.clone()),
            "endSequenceNumber": last.map(|r| r.sequence_number.clone()),
            "approximateArrivalOfFirstRecord": first.map(|r| whole_seconds(r.arrival)),
            "approximateArrivalOfLastRecord": last.map(|r| whole_seconds(r.arrival)),
            "batchSize": batch.records.len(),
            "streamArn": settings.stream_arn,
        },
    });
    // The response of the last invocation, when there was one: a function error is
    // "Unhandled"; a response that failed the batch (partial or invalid) has none.
    if let Some(function_error) = batch.last_function_error {
        let mut response = json!({ "statusCode": 200, "executedVersion": "$LATEST" });
        if function_error {
            response["functionError"] = json!("Unhandled");
        }
        record["responseContext"] = response;
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_id_is_new_once_among_the_last_ten_thousand() {
        let mut ids = RecentIds::default();
        assert!(ids.first_time("a"));
        assert!(!ids.first_time("a"), "read again");
        for i in 0..RecentIds::KEEP {
            assert!(ids.first_time(&i.to_string()));
        }
        assert_eq!(ids.order.len(), RecentIds::KEEP, "bounded");
        assert!(ids.first_time("a"), "forgotten after KEEP others");
        assert!(!ids.first_time(&(RecentIds::KEEP - 1).to_string()));
    }

    fn pending(sequence_number: &str) -> Pending {
        Pending {
            sequence_number: sequence_number.to_owned(),
            arrival: Utc::now(),
            json: json!({}),
            size: 2,
        }
    }

    fn batch() -> Vec<Pending> {
        ["100", "101", "102"].map(pending).to_vec()
    }

    fn response(value: Value) -> Invocation {
        Invocation::Response(value)
    }

    #[test]
    fn an_empty_or_null_response_is_a_success() {
        for value in [
            Value::Null,
            json!({}),
            json!({"batchItemFailures": null}),
            json!({"batchItemFailures": []}),
        ] {
            assert_eq!(
                outcome(&response(value.clone()), &batch(), true),
                Outcome::Success,
                "{value}"
            );
        }
    }

    #[test]
    fn the_lowest_reported_sequence_number_is_where_the_retry_starts() {
        let reported =
            json!({"batchItemFailures": [{"itemIdentifier": "102"}, {"itemIdentifier": "101"}]});
        assert_eq!(
            outcome(&response(reported), &batch(), true),
            Outcome::Partial(1)
        );
    }

    #[test]
    fn a_bad_identifier_or_response_fails_the_whole_batch() {
        for value in [
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"itemId": "101"}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "999"}]}),
            json!({"batchItemFailures": "101"}),
            json!("not a response"),
        ] {
            assert_eq!(
                outcome(&response(value.clone()), &batch(), true),
                Outcome::Invalid,
                "{value}"
            );
        }
    }

    #[test]
    fn without_report_batch_item_failures_any_response_is_a_success() {
        let reported = json!({"batchItemFailures": [{"itemIdentifier": "101"}]});
        assert_eq!(
            outcome(&response(reported), &batch(), false),
            Outcome::Success
        );
        let error = Invocation::FunctionError(json!({"errorType": "Sandbox.Timedout"}));
        assert_eq!(outcome(&error, &batch(), false), Outcome::FunctionError);
    }

    fn created() -> Created {
        let mut created = Created::default();
        created.names_mut().stack = "s".to_owned();
        created
            .names_mut()
            .attributes
            .insert("BooksTable.StreamArn".to_owned(), "arn:stream".to_owned());
        created.names_mut().attributes.insert(
            "ProcessorDLQ.Arn".to_owned(),
            "arn:aws:sqs:us-east-1:123456789012:s-ProcessorDLQ".to_owned(),
        );
        created.queues.insert(
            "ProcessorDLQ".to_owned(),
            crate::resources::Queue {
                name: "s-ProcessorDLQ".to_owned(),
                url: "http://queue/s-ProcessorDLQ".to_owned(),
                arn: "arn:aws:sqs:us-east-1:123456789012:s-ProcessorDLQ".to_owned(),
            },
        );
        created.functions.insert(
            "ProcessorFunction".to_owned(),
            crate::resources::FunctionName {
                name: "s-processor".to_owned(),
                arn: "arn:aws:lambda:us-east-1:123456789012:function:s-processor".to_owned(),
            },
        );
        created
    }

    fn template_text() -> anyhow::Result<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        Ok(std::fs::read_to_string(path)?)
    }

    fn template_from(text: &str) -> anyhow::Result<Template> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), text)?;
        Template::load(file.path())
    }

    /// template.yaml with the processor's retry and age limits set to `retries` and `age`
    /// (the lines of the BooksStream event, whatever they say now).
    fn with_limits(retries: &str, age: &str) -> anyhow::Result<Template> {
        let text = template_text()?;
        let start = text.find("BooksStream:").context("no BooksStream event")?;
        let (before, event) = text.split_at(start);
        let mut replaced = String::from(before);
        let mut done = (false, false);
        for line in event.split_inclusive('\n') {
            let indent = &line[..line.len() - line.trim_start().len()];
            if !done.0 && line.trim_start().starts_with("MaximumRetryAttempts:") {
                replaced.push_str(&format!("{indent}MaximumRetryAttempts: {retries}\n"));
                done.0 = true;
            } else if !done.1 && line.trim_start().starts_with("MaximumRecordAgeInSeconds:") {
                replaced.push_str(&format!("{indent}MaximumRecordAgeInSeconds: {age}\n"));
                done.1 = true;
            } else {
                replaced.push_str(line);
            }
        }
        template_from(&replaced)
    }

    #[test]
    fn the_processors_mapping_is_read_from_the_template() -> anyhow::Result<()> {
        let template = with_limits("10", "3600")?;
        let settings =
            StreamMappingSettings::from_template(&template, "ProcessorFunction", &created())?;
        assert_eq!(settings.stream_arn, "arn:stream");
        assert_eq!(settings.function_name, "s-processor");
        assert_eq!(settings.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(settings.batch_size, 100);
        assert_eq!(settings.batching_window, Duration::from_secs(1));
        assert!(settings.report_batch_item_failures);
        assert!(settings.bisect_batch_on_function_error);
        assert_eq!(settings.maximum_retry_attempts, Some(10));
        assert_eq!(settings.maximum_record_age, Some(Duration::from_secs(3600)));
        assert_eq!(settings.parallelization_factor, 1);
        assert_eq!(
            settings.on_failure.map(|d| d.url).as_deref(),
            Some("http://queue/s-ProcessorDLQ")
        );
        // AWS's figures, until a test shrinks them.
        assert_eq!(settings.poll_interval, Duration::from_millis(250));
        assert_eq!(settings.max_payload_bytes, 6 * 1024 * 1024);
        assert_eq!(settings.retention, Duration::from_secs(86_400));
        Ok(())
    }

    #[test]
    fn minus_one_means_no_limit() -> anyhow::Result<()> {
        let template = with_limits("-1", "-1")?;
        let settings =
            StreamMappingSettings::from_template(&template, "ProcessorFunction", &created())?;
        assert_eq!(settings.maximum_retry_attempts, None);
        assert_eq!(settings.maximum_record_age, None);
        // Unlimited still ends at the stream's retention.
        assert_eq!(settings.record_age_limit(), settings.retention);
        Ok(())
    }

    #[test]
    fn a_function_without_a_dynamodb_event_has_no_mapping() -> anyhow::Result<()> {
        let template = template_from(&template_text()?)?;
        assert!(
            StreamMappingSettings::from_template(&template, "ApiFunction", &created()).is_err()
        );
        Ok(())
    }

    #[test]
    fn the_failure_record_has_the_shape_aws_documents() {
        let settings = StreamMappingSettings {
            function_name: "f".to_owned(),
            function_arn: "arn:f".to_owned(),
            stream_arn: "arn:s".to_owned(),
            starting_position: StartingPosition::TrimHorizon,
            batch_size: 10,
            batching_window: Duration::ZERO,
            report_batch_item_failures: true,
            bisect_batch_on_function_error: false,
            maximum_retry_attempts: None,
            maximum_record_age: None,
            parallelization_factor: 1,
            on_failure: None,
            poll_interval: Duration::ZERO,
            retention: Duration::ZERO,
            max_payload_bytes: 0,
            shard_discovery_interval: Duration::ZERO,
        };
        let mut batch = Batch::new(batch());
        let record = failure_record(&settings, "shard-1", &batch, Condition::RecordAgeExceeded);
        assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
        assert_eq!(record.get("responseContext"), None, "never invoked");
        batch.invocations = 4;
        batch.last_request_id = Some("r".to_owned());
        batch.last_function_error = Some(true);
        let record = failure_record(
            &settings,
            "shard-1",
            &batch,
            Condition::RetryAttemptsExhausted,
        );
        let arrival = whole_seconds(batch.records[0].arrival);
        assert_eq!(
            record,
            json!({
                "requestContext": {
                    "requestId": "r",
                    "functionArn": "arn:f",
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": 4,
                },
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled",
                },
                "version": "1.0",
                "timestamp": record["timestamp"],
                "DDBStreamBatchInfo": {
                    "shardId": "shard-1",
                    "startSequenceNumber": "100",
                    "endSequenceNumber": "102",
                    "approximateArrivalOfFirstRecord": arrival,
                    "approximateArrivalOfLastRecord": whole_seconds(batch.records[2].arrival),
                    "batchSize": 3,
                    "streamArn": "arn:s",
                },
            })
        );
    }

    #[test]
    fn the_payload_size_counts_the_envelope() {
        let records = batch();
        assert_eq!(
            payload_size(records.iter()),
            r#"{"Records":[{},{},{}]}"#.len()
        );
        assert_eq!(payload_size([].iter()), r#"{"Records":[]}"#.len());
    }
}
