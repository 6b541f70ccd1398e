//! An EventBridge rule target that is a Lambda function: EventBridge invokes the function
//! asynchronously, so an event passes two retry layers, each ending in its own dead letter.
//!
//! The rule delivers (in moto) to a stand-in SQS queue, which stands for the function's
//! asynchronous event queue. [`start`] polls it and, for each event, plays both layers:
//!
//! 1. **Delivery** (EventBridge → Lambda's queue). Only a failed *delivery* is retried by the
//!    rule target's `RetryPolicy`, with exponential backoff and jitter; what cannot be delivered
//!    goes to the target's `DeadLetterConfig` queue as the event itself, with the attributes
//!    `RULE_ARN`, `TARGET_ARN`, `ERROR_CODE`, `ERROR_MESSAGE`
//!    (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html>). Delivery only
//!    fails when the integrator injects a fault ([`AsyncInvoker::pause_delivery`]).
//! 2. **Invocation** (Lambda's queue → the function). A function error is retried
//!    `MaximumRetryAttempts` times, an event older than `MaximumEventAgeInSeconds` is discarded,
//!    throttles are retried until then, and what fails goes to the on-failure destination as an
//!    invocation record (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html>,
//!    <https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html>).
//!
//! An event leaves the stand-in queue only once its fate is decided (handled, dead-lettered, or
//! dropped where AWS drops it); until then it is kept invisible, so a rehearsal stopped mid-way
//! finds it again. Events run concurrently and one may run more than once, as on Lambda
//! ("it's possible for it to receive the same event from Lambda multiple times",
//! invocation-async-error-handling above): consumers dedupe.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lambda::{Invocation, Invoke};
use crate::template::{self, Names, Template};

/// One rule target that is a Lambda function, with both layers' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncTarget {
    /// The rule's ARN (the `RULE_ARN` of a dead letter).
    pub rule_arn: String,
    /// The target's ARN: the function's, unqualified (`TARGET_ARN`).
    pub target_arn: String,
    /// The stand-in queue the rule delivers to (the function's asynchronous event queue).
    pub queue_url: String,
    /// The rule target's `RetryPolicy`.
    pub retry_policy: RetryPolicy,
    /// The rule target's `DeadLetterConfig` queue; without one an undeliverable event is dropped.
    pub rule_dead_letter_url: Option<String>,
    /// The function's `EventInvokeConfig`.
    pub invoke_config: EventInvokeConfig,
}

/// A rule target's `RetryPolicy`
/// (<https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_RetryPolicy.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries of a failed delivery (0–185; AWS's default 185).
    pub maximum_retry_attempts: u32,
    /// How long after the event arrived retries may still start (60 s – 24 h; default 24 h).
    pub maximum_event_age: Duration,
}

/// A function's `EventInvokeConfig`
/// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-configuring.html>).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInvokeConfig {
    /// Retries after a function error (0–2; default 2).
    pub maximum_retry_attempts: u32,
    /// How long Lambda keeps an event in its queue (60 s – 6 h; default 6 h).
    pub maximum_event_age: Duration,
    /// The on-failure destination, an SQS queue; without one a failed event is discarded.
    pub on_failure_url: Option<String>,
}

// https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html: "By default,
// EventBridge retries sending the event for 24 hours and up to 185 times".
const RULE_DEFAULT_RETRIES: i64 = 185;
const RULE_DEFAULT_AGE: i64 = 86_400;
// https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-configuring.html: retries 0–2,
// maximum age up to 6 hours; https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-lambda-eventinvokeconfig.html:
// "By default, Lambda retries an asynchronous invocation twice ... retains events in a queue for
// up to six hours".
const LAMBDA_DEFAULT_RETRIES: i64 = 2;
const LAMBDA_DEFAULT_AGE: i64 = 21_600;

impl AsyncTarget {
    /// The target `target_id` of rule `rule` as the template declares it, with the function's
    /// `EventInvokeConfig`. `queue_url` is the stand-in queue the rule delivers to; `names`
    /// must hold `<rule>.Arn`, the function's `.Arn` and what the target refers to;
    /// `queue_url_of` turns a dead-letter queue's ARN into its URL.
    pub fn from_template(
        template: &Template,
        rule: &str,
        target_id: &str,
        queue_url: &str,
        names: &Names,
        queue_url_of: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let rule_arn = names
            .attributes
            .get(&format!("{rule}.Arn"))
            .cloned()
            .with_context(|| format!("no ARN for rule {rule}"))?;
        let targets = template.resolve(&template.properties(rule)["Targets"], names)?;
        let target = targets
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["Id"] == target_id))
            .with_context(|| format!("rule {rule} has no target {target_id}"))?;
        for key in ["Input", "InputPath", "InputTransformer"] {
            if !target[key].is_null() {
                bail!("{rule}/{target_id}: the rehearsal does not emulate {key}");
            }
        }
        let target_arn = target["Arn"]
            .as_str()
            .with_context(|| format!("{rule}/{target_id} has no Arn"))?
            .to_owned();
        let function = function_with_arn(template, names, &target_arn)
            .with_context(|| format!("{rule}/{target_id} does not target a function"))?;
        let dead_letter = |arn: Option<&str>| {
            arn.map(|arn| queue_url_of(arn).with_context(|| format!("no queue URL for {arn}")))
                .transpose()
        };

        let policy = &target["RetryPolicy"];
        let retry_policy = RetryPolicy {
            maximum_retry_attempts: bounded(
                &policy["MaximumRetryAttempts"],
                RULE_DEFAULT_RETRIES,
                0..=185,
            )?,
            maximum_event_age: Duration::from_secs(bounded(
                &policy["MaximumEventAgeInSeconds"],
                RULE_DEFAULT_AGE,
                60..=86_400,
            )?),
        };

        if !template
            .function_property(&function, "DeadLetterQueue")
            .is_null()
        {
            bail!("{function}: the rehearsal does not emulate a function's DeadLetterQueue");
        }
        let config = template.resolve(
            template.function_property(&function, "EventInvokeConfig"),
            names,
        )?;
        let destinations = &config["DestinationConfig"];
        if !destinations["OnSuccess"].is_null() {
            bail!("{function}: the rehearsal does not emulate an OnSuccess destination");
        }
        let on_failure = &destinations["OnFailure"];
        // SAM's Type (SQS, SNS, Lambda, EventBridge, S3): only SQS queues are emulated.
        if let Some(kind) = on_failure["Type"].as_str()
            && kind != "SQS"
        {
            bail!("{function}: the rehearsal emulates SQS destinations only, not {kind}");
        }
        let invoke_config = EventInvokeConfig {
            maximum_retry_attempts: bounded(
                &config["MaximumRetryAttempts"],
                LAMBDA_DEFAULT_RETRIES,
                0..=2,
            )?,
            maximum_event_age: Duration::from_secs(bounded(
                &config["MaximumEventAgeInSeconds"],
                LAMBDA_DEFAULT_AGE,
                60..=21_600,
            )?),
            on_failure_url: dead_letter(on_failure["Destination"].as_str())?,
        };
        Ok(Self {
            rule_arn,
            target_arn,
            queue_url: queue_url.to_owned(),
            retry_policy,
            rule_dead_letter_url: dead_letter(target["DeadLetterConfig"]["Arn"].as_str())?,
            invoke_config,
        })
    }
}

/// The logical id of the function whose `.Arn` is `arn`.
fn function_with_arn(template: &Template, names: &Names, arn: &str) -> Option<String> {
    ["AWS::Serverless::Function", "AWS::Lambda::Function"]
        .into_iter()
        .flat_map(|kind| template.resources_of_type(kind))
        .find(|id| {
            names
                .attributes
                .get(&format!("{id}.Arn"))
                .map(String::as_str)
                == Some(arn)
        })
}

/// A setting that CloudFormation would reject outside `range`; `default` when absent.
fn bounded<T: TryFrom<i64>>(
    value: &Value,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<T> {
    let number = if value.is_null() {
        default
    } else {
        template::integer(value).with_context(|| format!("{value} is not a number"))?
    };
    if !range.contains(&number) {
        bail!("{number} is outside {range:?}");
    }
    T::try_from(number).map_err(|_| anyhow::anyhow!("{number} is out of range"))
}

/// Timings AWS fixes in real time, with AWS's values as defaults, so tests can shrink them;
/// and how the emulation uses its stand-in queue.
#[derive(Debug, Clone)]
pub struct AsyncSettings {
    /// Wait before Lambda's first retry of a function error: 1 minute on AWS
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html>:
    /// "a one-minute wait between the first two attempts").
    pub first_retry_delay: Duration,
    /// Wait before the second retry: 2 minutes on AWS (same page).
    pub second_retry_delay: Duration,
    /// First wait after a throttle: 1 second on AWS (same page: "The retry interval increases
    /// exponentially from 1 second after the first attempt to a maximum of 5 minutes").
    pub throttle_backoff_initial: Duration,
    /// Longest wait after a throttle: 5 minutes on AWS.
    pub throttle_backoff_max: Duration,
    /// Base of EventBridge's exponential delivery backoff (full jitter). AWS documents the
    /// backoff and jitter but not its constants: 1 s here.
    pub delivery_backoff_base: Duration,
    /// Cap of the delivery backoff: 5 minutes here (not documented by AWS either).
    pub delivery_backoff_max: Duration,
    /// Long polling of the stand-in queue (SQS allows up to 20 s).
    pub long_poll: Duration,
    /// How long a received event stays invisible; renewed while its fate is open, so it
    /// reappears this long after a rehearsal stopped mid-way.
    pub visibility_timeout: Duration,
    /// How many events may be in flight at once (the function's own concurrency limits how
    /// many run).
    pub max_in_flight: usize,
}

impl Default for AsyncSettings {
    fn default() -> Self {
        Self {
            first_retry_delay: Duration::from_secs(60),
            second_retry_delay: Duration::from_secs(120),
            throttle_backoff_initial: Duration::from_secs(1),
            throttle_backoff_max: Duration::from_secs(300),
            delivery_backoff_base: Duration::from_secs(1),
            delivery_backoff_max: Duration::from_secs(300),
            long_poll: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(60),
            max_in_flight: 64,
        }
    }
}

impl AsyncSettings {
    /// The wait before retry `retry` (1-based) of a function error.
    fn retry_delay(&self, retry: u32) -> Duration {
        if retry <= 1 {
            self.first_retry_delay
        } else {
            self.second_retry_delay
        }
    }
}

/// Why a delivery to the function fails (a fault the rehearsal injects), as the rule's dead
/// letter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFault {
    /// `ERROR_CODE`, one of those EventBridge documents (`SDK_CLIENT_ERROR`, `THROTTLING`,
    /// `NO_PERMISSIONS`, `NO_RESOURCE`…).
    pub error_code: String,
    /// `ERROR_MESSAGE`.
    pub error_message: String,
    /// Whether EventBridge retries it: missing permissions or a target that no longer exists
    /// go to the dead-letter queue without retries
    /// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html>).
    pub retriable: bool,
}

impl DeliveryFault {
    /// Lambda unavailable (its Invoke API failing with a service error): retried.
    pub fn unavailable() -> Self {
        Self {
            error_code: "SDK_CLIENT_ERROR".to_owned(),
            error_message: "Lambda.ServiceException: the function is unavailable".to_owned(),
            retriable: true,
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    delivery: Option<(DeliveryFault, Instant)>,
    throttled_until: Option<Instant>,
    refused: u64,
}

/// What the invoker has in hand, for [`AsyncInvoker::wait_idle`].
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    in_flight: usize,
    /// Receives that came back empty while nothing was in flight.
    empty_polls: u64,
}

struct Shared {
    target: AsyncTarget,
    settings: AsyncSettings,
    sqs: aws_sdk_sqs::Client,
    function: Arc<dyn Invoke>,
    faults: Mutex<Faults>,
    progress: watch::Sender<Progress>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fault a delivery attempt meets now, if any (counted as refused).
    fn delivery_fault(&self) -> Option<DeliveryFault> {
        let mut faults = self.faults();
        match &faults.delivery {
            Some((fault, until)) if Instant::now() < *until => {
                let fault = fault.clone();
                faults.refused += 1;
                Some(fault)
            }
            _ => None,
        }
    }

    fn throttled(&self) -> bool {
        self.faults()
            .throttled_until
            .is_some_and(|until| Instant::now() < until)
    }
}

/// A running target: polls the stand-in queue until `shutdown` is cancelled.
#[derive(Debug)]
pub struct AsyncInvoker {
    shared: Arc<Shared>,
    poller: JoinHandle<()>,
}

/// Starts delivering the events in `target.queue_url` to `function`, until `shutdown`.
pub fn start(
    target: AsyncTarget,
    sqs: aws_sdk_sqs::Client,
    function: Arc<dyn Invoke>,
    settings: AsyncSettings,
    shutdown: CancellationToken,
) -> AsyncInvoker {
    let shared = Arc::new(Shared {
        target,
        settings,
        sqs,
        function,
        faults: Mutex::new(Faults::default()),
        progress: watch::Sender::new(Progress::default()),
    });
    let poller = tokio::spawn(poll(Arc::clone(&shared), shutdown));
    AsyncInvoker { shared, poller }
}

impl AsyncInvoker {
    /// Fault hook: for `duration`, deliveries to the function fail as unavailable
    /// ([`DeliveryFault::unavailable`]), so the rule's `RetryPolicy` and dead-letter queue act.
    pub fn pause_delivery(&self, duration: Duration) {
        self.fail_delivery(DeliveryFault::unavailable(), duration);
    }

    /// Fault hook: for `duration`, deliveries to the function fail with `fault`.
    pub fn fail_delivery(&self, fault: DeliveryFault, duration: Duration) {
        self.shared.faults().delivery = Some((fault, Instant::now() + duration));
    }

    /// Fault hook: for `duration`, Lambda throttles the function's asynchronous invocations
    /// (429), which it retries until the event's maximum age without counting them as attempts.
    pub fn throttle(&self, duration: Duration) {
        self.shared.faults().throttled_until = Some(Instant::now() + duration);
    }

    /// How many delivery attempts the fault hooks have refused so far.
    pub fn refused_deliveries(&self) -> u64 {
        self.shared.faults().refused
    }

    /// How many events are in hand (their fate still open).
    pub fn in_flight(&self) -> usize {
        self.shared.progress.borrow().in_flight
    }

    /// What the invoker has in hand, for a diagnosis: events in flight, empty receives.
    pub fn describe(&self) -> String {
        let progress = *self.shared.progress.borrow();
        format!(
            "{} in flight, {} empty receives",
            progress.in_flight, progress.empty_polls
        )
    }

    /// Waits until the invoker is quiescent: nothing in flight, and a receive that started
    /// after this call found the queue empty. Everything in the queue before the call has then
    /// met its fate.
    pub async fn wait_idle(&self) {
        let mut progress = self.shared.progress.subscribe();
        let start = progress.borrow().empty_polls;
        // The first empty receive may have started before this call; the second cannot.
        let _ = progress
            .wait_for(|p| p.in_flight == 0 && p.empty_polls >= start + 2)
            .await;
    }

    /// Waits for the poller and every event in flight to stop after `shutdown` is cancelled;
    /// events whose fate was open stay in the queue.
    pub async fn join(self) {
        let _ = self.poller.await;
    }
}

async fn poll(shared: Arc<Shared>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(shared.settings.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(first) = first else { break };
        let mut permits = vec![first];
        // SQS returns at most 10 messages per receive.
        while permits.len() < 10 {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = receive(&shared, permits.len()) => received,
        };
        match received {
            Err(e) => {
                tracing::warn!(queue = %shared.target.queue_url, error = %e, "cannot receive; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Ok(messages) if messages.is_empty() => shared.progress.send_modify(|p| {
                if p.in_flight == 0 {
                    p.empty_polls += 1;
                }
            }),
            Ok(messages) => {
                for (message, permit) in messages.into_iter().zip(permits.drain(..)) {
                    let in_hand = InHand::new(&shared);
                    let shared = Arc::clone(&shared);
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = settle(&shared, message) => {}
                        }
                        drop((in_hand, permit));
                    });
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One event in flight: counted from receipt until its task ends, however it ends.
struct InHand(Arc<Shared>);

impl InHand {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.progress.send_modify(|p| p.in_flight += 1);
        Self(Arc::clone(shared))
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.progress.send_modify(|p| p.in_flight -= 1);
    }
}

async fn receive(shared: &Shared, max: usize) -> anyhow::Result<Vec<Message>> {
    let output = shared
        .sqs
        .receive_message()
        .queue_url(&shared.target.queue_url)
        .max_number_of_messages(i32::try_from(max).unwrap_or(10))
        .wait_time_seconds(seconds(shared.settings.long_poll).min(20))
        .visibility_timeout(seconds(shared.settings.visibility_timeout).max(1))
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .context("ReceiveMessage")?;
    Ok(output.messages.unwrap_or_default())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// What became of an event.
#[derive(Debug)]
enum Fate {
    /// Handled, dead-lettered, or dropped as AWS drops it: it leaves the queue.
    Decided,
    /// The rehearsal is stopping, or a dead letter could not be sent: it stays in the queue
    /// and comes back after its visibility timeout.
    Open,
}

/// Decides the fate of one event, keeping it invisible meanwhile, and deletes it once decided.
async fn settle(shared: &Shared, message: Message) {
    let Some(receipt) = message.receipt_handle().map(str::to_owned) else {
        return;
    };
    let fate = tokio::select! {
        fate = decide(shared, &message) => fate,
        never = keep_invisible(shared, &receipt) => match never {},
    };
    if let Fate::Decided = fate
        && let Err(e) = shared
            .sqs
            .delete_message()
            .queue_url(&shared.target.queue_url)
            .receipt_handle(&receipt)
            .send()
            .await
    {
        // It comes back and runs again: at least once, as on AWS.
        tracing::warn!(error = %e, "cannot delete a settled event from the stand-in queue");
    }
}

async fn keep_invisible(shared: &Shared, receipt: &str) -> std::convert::Infallible {
    let timeout = shared
        .settings
        .visibility_timeout
        .max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(timeout / 3).await;
        if let Err(e) = shared
            .sqs
            .change_message_visibility()
            .queue_url(&shared.target.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(timeout))
            .send()
            .await
        {
            tracing::warn!(error = %e, "cannot keep an event in flight invisible");
        }
    }
}

async fn decide(shared: &Shared, message: &Message) -> Fate {
    let body = message.body().unwrap_or_default();
    let arrived = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|ms| ms.parse().ok())
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    if let Err(fault) = deliver(shared, arrived).await {
        return dead_letter_undelivered(shared, body, &fault).await;
    }
    let event = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    match invoke(shared, &event).await {
        Invoked::Succeeded => Fate::Decided,
        Invoked::Stopped => Fate::Open,
        Invoked::Failed(record) => send_on_failure(shared, &record).await,
    }
}

/// Layer 1: EventBridge hands the event to Lambda's queue, retrying a failed delivery by the
/// target's `RetryPolicy` (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html>):
/// exponential backoff with jitter, up to `MaximumRetryAttempts` retries, none started once
/// the event is older than `MaximumEventAgeInSeconds`.
async fn deliver(shared: &Shared, arrived: SystemTime) -> Result<(), DeliveryFault> {
    let policy = shared.target.retry_policy;
    let mut retries = 0;
    loop {
        let Some(fault) = shared.delivery_fault() else {
            return Ok(());
        };
        // https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html: errors such
        // as missing permissions go to the DLQ without retries.
        if !fault.retriable || retries >= policy.maximum_retry_attempts {
            return Err(fault);
        }
        tokio::time::sleep(delivery_backoff(&shared.settings, retries)).await;
        retries += 1;
        let age = SystemTime::now()
            .duration_since(arrived)
            .unwrap_or_default();
        if age > policy.maximum_event_age {
            return Err(fault);
        }
    }
}

/// Full jitter: a random wait up to `base · 2^retry`, capped.
fn delivery_backoff(settings: &AsyncSettings, retry: u32) -> Duration {
    let ceiling = settings
        .delivery_backoff_base
        .saturating_mul(1 << retry.min(20))
        .min(settings.delivery_backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

/// The undeliverable event to the rule target's dead-letter queue: the event as it is, with
/// the attributes EventBridge documents
/// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html>).
async fn dead_letter_undelivered(shared: &Shared, body: &str, fault: &DeliveryFault) -> Fate {
    let target = &shared.target;
    let Some(queue) = &target.rule_dead_letter_url else {
        // Same page: without a DLQ, "the event is dropped".
        tracing::warn!(rule = %target.rule_arn, "undeliverable event dropped: the target has no DLQ");
        return Fate::Decided;
    };
    let attributes = [
        ("RULE_ARN", target.rule_arn.as_str()),
        ("TARGET_ARN", target.target_arn.as_str()),
        ("ERROR_CODE", fault.error_code.as_str()),
        ("ERROR_MESSAGE", fault.error_message.as_str()),
    ];
    let mut send = shared
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(body);
    for (name, value) in attributes {
        match MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
        {
            Ok(value) => send = send.message_attributes(name, value),
            Err(e) => {
                tracing::error!(error = %e, "cannot build a dead-letter attribute");
                return Fate::Open;
            }
        }
    }
    sent(send.send().await, queue)
}

fn sent<T, E: std::fmt::Display>(result: Result<T, E>, queue: &str) -> Fate {
    match result {
        Ok(_) => Fate::Decided,
        Err(e) => {
            // AWS would count a failed destination delivery and drop the record; the rehearsal
            // keeps the event instead (it runs again), so nothing is lost to a misconfiguration.
            tracing::error!(%queue, error = %e, "cannot send a dead letter; the event stays queued");
            Fate::Open
        }
    }
}

/// How Lambda's work on one queued event ended.
enum Invoked {
    Succeeded,
    /// The invocation record for the on-failure destination.
    Failed(Value),
    /// The function was shut down under it: the rehearsal is stopping.
    Stopped,
}

/// The `errorType` a shut-down [`crate::lambda::Function`] answers with.
const STOPPED: &str = "Rehearsal.Stopped";

/// Layer 2: Lambda runs the queued event
/// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html>): a
/// function error is retried `MaximumRetryAttempts` times (after 1 and 2 minutes), a throttle is
/// retried with backoff from 1 s to 5 min without counting as an attempt, and an event older
/// than `MaximumEventAgeInSeconds` is discarded.
async fn invoke(shared: &Shared, event: &Value) -> Invoked {
    let config = &shared.target.invoke_config;
    let settings = &shared.settings;
    // Its age counts from when Lambda's queue accepted it (the delivery above).
    let queued = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut invocations = 0;
    let mut last_error = None;
    let mut throttle_backoff = settings.throttle_backoff_initial;
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let failed = |condition, invocations, last_error: Option<&Value>| {
            Invoked::Failed(invocation_record(
                &request_id,
                &shared.target.target_arn,
                condition,
                invocations,
                event,
                last_error,
                Utc::now(),
            ))
        };
        if queued.elapsed() > config.maximum_event_age {
            return failed(
                Condition::EventAgeExceeded,
                invocations,
                last_error.as_ref(),
            );
        }
        if shared.throttled() {
            wait = throttle_backoff;
            throttle_backoff = (throttle_backoff * 2).min(settings.throttle_backoff_max);
            continue;
        }
        invocations += 1;
        match shared.function.invoke(event.clone()).await {
            Invocation::Response(_) => return Invoked::Succeeded,
            Invocation::FunctionError(error) if error["errorType"] == STOPPED => {
                return Invoked::Stopped;
            }
            Invocation::FunctionError(error) => {
                if invocations > config.maximum_retry_attempts {
                    return failed(Condition::RetriesExhausted, invocations, Some(&error));
                }
                last_error = Some(error);
                wait = settings.retry_delay(invocations);
            }
        }
    }
}

/// Why Lambda gave up on an event (`requestContext.condition`).
#[derive(Debug, Clone, Copy)]
enum Condition {
    RetriesExhausted,
    EventAgeExceeded,
}

/// The invocation record of a failed asynchronous invocation, shaped as AWS's example
/// (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html>,
/// "Example invocation record"). `last_error` is the function's error of the last attempt;
/// without one (never invoked) the record has no response.
fn invocation_record(
    request_id: &str,
    function_arn: &str,
    condition: Condition,
    invoke_count: u32,
    request: &Value,
    last_error: Option<&Value>,
    timestamp: DateTime<Utc>,
) -> Value {
    let mut record = json!({
        "version": "1.0",
        "timestamp": timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
        "requestContext": {
            "requestId": request_id,
            // The example's ARN is qualified with the version that ran.
            "functionArn": format!("{function_arn}:$LATEST"),
            "condition": match condition {
                Condition::RetriesExhausted => "RetriesExhausted",
                Condition::EventAgeExceeded => "EventAgeExceeded",
            },
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": request,
    });
    if let (Some(error), Some(object)) = (last_error, record.as_object_mut()) {
        object.insert(
            "responseContext".to_owned(),
            json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}),
        );
        object.insert("responsePayload".to_owned(), error.clone());
    }
    record
}

/// The record to the function's on-failure destination; without one Lambda discards the event
/// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-lambda-eventinvokeconfig.html>).
async fn send_on_failure(shared: &Shared, record: &Value) -> Fate {
    let Some(queue) = &shared.target.invoke_config.on_failure_url else {
        tracing::warn!(function = %shared.target.target_arn, "failed event discarded: no on-failure destination");
        return Fate::Decided;
    };
    let send = shared
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(record.to_string())
        .send()
        .await;
    sent(send, queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let mut names = Names {
            stack: "s".into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            ..Names::default()
        };
        for (key, value) in [
            (
                "BookAddedRule.Arn",
                "arn:aws:events:us-east-1:123456789012:rule/bus/added",
            ),
            (
                "BookAddedFunction.Arn",
                "arn:aws:lambda:us-east-1:123456789012:function:s-book-added",
            ),
            (
                "BookAddedDLQ.Arn",
                "arn:aws:sqs:us-east-1:123456789012:added-dlq",
            ),
        ] {
            names.attributes.insert(key.into(), value.into());
        }
        names
    }

    #[test]
    fn the_template_s_target_and_function_settings_are_read() -> anyhow::Result<()> {
        let template = Template::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../template.yaml"
        )))?;
        let target = AsyncTarget::from_template(
            &template,
            "BookAddedRule",
            "book-added",
            "http://q/stand-in",
            &names(),
            |arn| {
                arn.ends_with(":added-dlq")
                    .then(|| "http://q/added-dlq".to_owned())
            },
        )?;
        assert_eq!(
            target,
            AsyncTarget {
                rule_arn: "arn:aws:events:us-east-1:123456789012:rule/bus/added".into(),
                target_arn: "arn:aws:lambda:us-east-1:123456789012:function:s-book-added".into(),
                queue_url: "http://q/stand-in".into(),
                retry_policy: RetryPolicy {
                    maximum_retry_attempts: 8,
                    maximum_event_age: Duration::from_secs(3600),
                },
                rule_dead_letter_url: Some("http://q/added-dlq".into()),
                invoke_config: EventInvokeConfig {
                    maximum_retry_attempts: 2,
                    // Absent from the template: Lambda's default, 6 hours.
                    maximum_event_age: Duration::from_secs(21_600),
                    on_failure_url: Some("http://q/added-dlq".into()),
                },
            }
        );
        Ok(())
    }

    #[test]
    fn a_setting_outside_aws_range_is_refused() {
        assert!(bounded::<u32>(&json!(3), 2, 0..=2).is_err());
        assert!(bounded::<u32>(&json!("2"), 2, 0..=2).is_ok());
        assert_eq!(bounded::<u32>(&Value::Null, 185, 0..=185).ok(), Some(185));
    }

    #[test]
    fn the_invocation_record_matches_aws_example() -> anyhow::Result<()> {
        // https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html
        let expected = json!({
            "version": "1.0",
            "timestamp": "2019-11-14T18:16:05.568Z",
            "requestContext": {
                "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:my-function:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3
            },
            "requestPayload": {
                "ORDER_IDS": [
                    "9e07af03-ce31-4ff3-xmpl-36dce652cb4f",
                    "637de236-e7b2-464e-xmpl-baf57f86bb53",
                    "a81ddca6-2c35-45c7-xmpl-c3a03a31ed15"
                ]
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled"
            },
            "responsePayload": {
                "errorMessage": "RequestId: e4b46cbf-b738-xmpl-8880-a18cdf61200e Process exited before completing request"
            }
        });
        let record = invocation_record(
            "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
            "arn:aws:lambda:us-east-1:123456789012:function:my-function",
            Condition::RetriesExhausted,
            3,
            &expected["requestPayload"],
            Some(&expected["responsePayload"]),
            DateTime::parse_from_rfc3339("2019-11-14T18:16:05.568Z")?.with_timezone(&Utc),
        );
        assert_eq!(record, expected);
        Ok(())
    }

    #[test]
    fn the_delivery_backoff_grows_exponentially_up_to_its_cap() {
        let settings = AsyncSettings {
            delivery_backoff_base: Duration::from_millis(100),
            delivery_backoff_max: Duration::from_secs(1),
            ..AsyncSettings::default()
        };
        for retry in 0..30 {
            let ceiling = Duration::from_millis(100 << retry.min(4)).min(Duration::from_secs(1));
            assert!(
                delivery_backoff(&settings, retry) <= ceiling,
                "retry {retry}"
            );
        }
    }
}
