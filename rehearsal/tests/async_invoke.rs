//! EventBridge → Lambda asynchronous invocation against moto: a bus and a rule with the
//! template's pattern deliver to a stand-in queue, and the invoker plays both retry layers
//! into a scripted function.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use rehearsal::async_invoke::{self, AsyncInvoker, AsyncSettings, AsyncTarget, DeliveryFault};
use rehearsal::lambda::{Invocation, Invoke};
use rehearsal::template::{Names, Template};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:outbox-demo-book-added";

/// How the scripted function answers the `attempt`-th (0-based) invocation with one event.
type Script = dyn Fn(usize) -> Invocation + Send + Sync;

/// A function of the test's own: records each invocation and answers from its script.
struct Scripted {
    script: Box<Script>,
    delay: Duration,
    calls: Mutex<Vec<(Value, Instant)>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Scripted {
    fn new(script: impl Fn(usize) -> Invocation + Send + Sync + 'static) -> Arc<Self> {
        Self::slow(Duration::ZERO, script)
    }

    fn slow(
        delay: Duration,
        script: impl Fn(usize) -> Invocation + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            delay,
            calls: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> Vec<(Value, Instant)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Invoke for Scripted {
    async fn invoke(&self, payload: Value) -> Invocation {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        let attempt = match self.calls.lock() {
            Ok(mut calls) => {
                let attempt = calls
                    .iter()
                    .filter(|(p, _)| p["id"] == payload["id"])
                    .count();
                calls.push((payload, Instant::now()));
                attempt
            }
            Err(_) => 0,
        };
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        (self.script)(attempt)
    }
}

fn handled(_: usize) -> Invocation {
    Invocation::Response(json!(null))
}

fn function_error() -> Value {
    json!({"errorType": "ActivityStoreError", "errorMessage": "the activity table is unavailable"})
}

fn failing(_: usize) -> Invocation {
    Invocation::FunctionError(function_error())
}

/// Short enough for tests; the AWS values are the defaults.
fn fast() -> AsyncSettings {
    AsyncSettings {
        first_retry_delay: Duration::from_millis(300),
        second_retry_delay: Duration::from_millis(600),
        throttle_backoff_initial: Duration::from_millis(20),
        throttle_backoff_max: Duration::from_millis(100),
        delivery_backoff_base: Duration::from_millis(5),
        delivery_backoff_max: Duration::from_millis(40),
        long_poll: Duration::from_secs(1),
        visibility_timeout: Duration::from_secs(3),
        ..AsyncSettings::default()
    }
}

/// A bus with BookAddedRule (the template's pattern) delivering to a stand-in queue, and the
/// target read from the template, its DLQ (both layers' dead letters, as in the template) a
/// fresh queue.
struct Fixture {
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
    bus: String,
    target: AsyncTarget,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new(endpoint: &str) -> anyhow::Result<Self> {
        let config = testing::moto::sdk_config(endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let bus = testing::moto::unique("bus");
        events.create_event_bus().name(&bus).send().await?;
        let (stand_in, stand_in_arn) = queue(&sqs, "book-added-async").await?;
        let (dlq, dlq_arn) = queue(&sqs, "book-added-dlq").await?;
        let rule = testing::moto::unique("book-added");
        let rule_arn = events
            .put_rule()
            .name(&rule)
            .event_bus_name(&bus)
            .event_pattern(testing::template::rule_pattern("BookAddedRule")?.to_string())
            .send()
            .await?
            .rule_arn
            .ok_or_else(|| anyhow::anyhow!("no rule arn"))?;
        events
            .put_targets()
            .rule(&rule)
            .event_bus_name(&bus)
            .targets(
                Target::builder()
                    .id("book-added")
                    .arn(stand_in_arn)
                    .build()?,
            )
            .send()
            .await?;

        let template = Template::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../template.yaml"
        )))?;
        let mut names = Names::default();
        for (key, value) in [
            ("BookAddedRule.Arn", rule_arn.as_str()),
            ("BookAddedFunction.Arn", FUNCTION_ARN),
            ("BookAddedDLQ.Arn", dlq_arn.as_str()),
        ] {
            names.attributes.insert(key.into(), value.into());
        }
        let target = AsyncTarget::from_template(
            &template,
            "BookAddedRule",
            "book-added",
            &stand_in,
            &names,
            |arn| (arn == dlq_arn).then(|| dlq.clone()),
        )?;
        Ok(Self {
            sqs,
            events,
            bus,
            target,
            shutdown: CancellationToken::new(),
        })
    }

    fn start(&self, function: Arc<Scripted>, settings: AsyncSettings) -> AsyncInvoker {
        self.start_target(self.target.clone(), function, settings)
    }

    fn start_target(
        &self,
        target: AsyncTarget,
        function: Arc<Scripted>,
        settings: AsyncSettings,
    ) -> AsyncInvoker {
        async_invoke::start(
            target,
            self.sqs.clone(),
            function,
            settings,
            self.shutdown.clone(),
        )
    }

    /// Publishes one outboxdemo.added event per name, as the processor does.
    async fn publish(&self, names: &[&str]) -> anyhow::Result<()> {
        for chunk in names.chunks(10) {
            let mut put = self.events.put_events();
            for name in chunk {
                let detail = json!({
                    "metadata": {"eventId": format!("id-{name}"), "sequenceNumber": "1", "version": 1},
                    "data": {"name": name, "authors": ["An Author"], "publishedYear": 1965},
                });
                put = put.entries(
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source("outboxdemo.processor")
                        .detail_type("outboxdemo.added")
                        .detail(detail.to_string())
                        .build(),
                );
            }
            let output = put.send().await?;
            anyhow::ensure!(output.failed_entry_count == 0, "{output:?}");
        }
        Ok(())
    }

    /// Takes every message in the dead-letter queue: body and string attributes.
    async fn dead_letters(&self) -> anyhow::Result<Vec<(Value, HashMap<String, String>)>> {
        let queue = self
            .target
            .rule_dead_letter_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no dlq"))?;
        let mut letters = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await?;
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(letters);
            }
            for message in messages {
                let attributes = message
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                letters.push((
                    serde_json::from_str(message.body().unwrap_or("null"))?,
                    attributes,
                ));
                if let Some(receipt) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&queue)
                        .receipt_handle(receipt)
                        .send()
                        .await?;
                }
            }
        }
    }

    /// Messages in the stand-in queue, visible or in flight.
    async fn queued(&self) -> anyhow::Result<usize> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.target.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?
            .attributes
            .unwrap_or_default();
        Ok(attributes
            .values()
            .filter_map(|v| v.parse::<usize>().ok())
            .sum())
    }
}

async fn queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> anyhow::Result<(String, String)> {
    testing::bus::create_queue(sqs, &testing::moto::unique(prefix)).await
}

async fn settled(invoker: &AsyncInvoker) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), invoker.wait_idle())
        .await
        .map_err(|_| anyhow::anyhow!("the invoker did not settle"))
}

fn name(event: &Value) -> &str {
    event["detail"]["data"]["name"].as_str().unwrap_or_default()
}

/// The moto guard every AWS test opens with, for tests that return a Result (the skip then
/// returns Ok).
macro_rules! endpoint {
    () => {
        match testing::moto::endpoint() {
            Some(endpoint) => endpoint,
            None => return Ok(()),
        }
    };
}

#[tokio::test]
async fn a_handled_event_is_invoked_once_and_leaves_the_queue() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let invoker = fixture.start(Arc::clone(&function), fast());
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    let calls = function.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(name(&calls[0].0), "Dune");
    assert_eq!(calls[0].0["detail-type"], "outboxdemo.added");
    assert!(fixture.dead_letters().await?.is_empty());
    assert_eq!(fixture.queued().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_failing_event_is_retried_maximum_retry_attempts_times_then_recorded_as_aws_does()
-> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(failing);
    let settings = fast();
    let invoker = fixture.start(Arc::clone(&function), settings.clone());
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    // The template's MaximumRetryAttempts: 2, so three attempts, 1 and 2 "minutes" apart.
    let calls = function.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[1].1 - calls[0].1 >= settings.first_retry_delay);
    assert!(calls[2].1 - calls[1].1 >= settings.second_retry_delay);

    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (record, attributes) = &letters[0];
    assert!(attributes.is_empty(), "{attributes:?}");
    let request_id = record["requestContext"]["requestId"].clone();
    assert!(uuid::Uuid::parse_str(request_id.as_str().unwrap_or_default()).is_ok());
    let timestamp = record["timestamp"].as_str().unwrap_or_default();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok());
    assert_eq!(
        timestamp.len(),
        "2019-11-14T18:16:05.568Z".len(),
        "{timestamp}"
    );
    assert_eq!(
        record,
        &json!({
            "version": "1.0",
            "timestamp": timestamp,
            "requestContext": {
                "requestId": request_id,
                "functionArn": format!("{FUNCTION_ARN}:$LATEST"),
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3
            },
            "requestPayload": calls[0].0,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": function_error(),
        })
    );
    assert_eq!(fixture.queued().await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_event_that_succeeds_on_a_retry_is_not_dead_lettered() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(|attempt| {
        if attempt == 0 {
            failing(attempt)
        } else {
            handled(attempt)
        }
    });
    let invoker = fixture.start(Arc::clone(&function), fast());
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert_eq!(function.calls().len(), 2);
    assert!(fixture.dead_letters().await?.is_empty());
    assert_eq!(fixture.queued().await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_event_older_than_the_maximum_age_goes_to_the_destination_as_event_age_exceeded()
-> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(failing);
    let mut target = fixture.target.clone();
    // Older than this by the first retry, 1 s later.
    target.invoke_config.maximum_event_age = Duration::from_millis(400);
    let settings = AsyncSettings {
        first_retry_delay: Duration::from_secs(1),
        ..fast()
    };
    let invoker = fixture.start_target(target, Arc::clone(&function), settings);
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert_eq!(function.calls().len(), 1);
    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let record = &letters[0].0;
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(name(&record["requestPayload"]), "Dune");
    assert_eq!(record["responsePayload"], function_error());
    Ok(())
}

#[tokio::test]
async fn an_undeliverable_event_goes_to_the_rule_dlq_after_the_retry_policy() -> anyhow::Result<()>
{
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let invoker = fixture.start(Arc::clone(&function), fast());
    invoker.pause_delivery(Duration::from_secs(600));
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert!(function.calls().is_empty());
    // The template's RetryPolicy: 8 retries after the first attempt.
    assert_eq!(invoker.refused_deliveries(), 9);
    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (event, attributes) = &letters[0];
    // The event itself, as the rule matched it.
    assert_eq!(name(event), "Dune");
    assert_eq!(event["source"], "outboxdemo.processor");
    assert_eq!(event["detail"]["metadata"]["eventId"], "id-Dune");
    let fault = DeliveryFault::unavailable();
    assert_eq!(
        attributes,
        &HashMap::from([
            ("RULE_ARN".to_owned(), fixture.target.rule_arn.clone()),
            ("TARGET_ARN".to_owned(), FUNCTION_ARN.to_owned()),
            ("ERROR_CODE".to_owned(), fault.error_code),
            ("ERROR_MESSAGE".to_owned(), fault.error_message),
        ])
    );
    assert_eq!(fixture.queued().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_permanent_delivery_error_goes_to_the_rule_dlq_without_retries() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let invoker = fixture.start(Arc::clone(&function), fast());
    let fault = DeliveryFault {
        error_code: "NO_PERMISSIONS".to_owned(),
        error_message: "EventBridge is not allowed to invoke the function".to_owned(),
        retriable: false,
    };
    invoker.fail_delivery(fault.clone(), Duration::from_secs(600));
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert_eq!(invoker.refused_deliveries(), 1);
    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].1.get("ERROR_CODE"), Some(&fault.error_code));
    assert!(function.calls().is_empty());
    Ok(())
}

#[tokio::test]
async fn delivery_retries_stop_at_the_retry_policy_s_maximum_event_age() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let mut target = fixture.target.clone();
    target.retry_policy.maximum_retry_attempts = 185;
    target.retry_policy.maximum_event_age = Duration::from_millis(500);
    let invoker = fixture.start_target(target, Arc::clone(&function), fast());
    invoker.pause_delivery(Duration::from_secs(600));
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    let refused = invoker.refused_deliveries();
    assert!((2..185).contains(&refused), "{refused}");
    assert_eq!(fixture.dead_letters().await?.len(), 1);
    assert!(function.calls().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_delivery_retried_after_the_pause_reaches_the_function() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let settings = AsyncSettings {
        delivery_backoff_base: Duration::from_millis(50),
        delivery_backoff_max: Duration::from_millis(200),
        ..fast()
    };
    let invoker = fixture.start(Arc::clone(&function), settings);
    invoker.pause_delivery(Duration::from_millis(300));
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert!(invoker.refused_deliveries() >= 1);
    assert_eq!(function.calls().len(), 1);
    assert!(fixture.dead_letters().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn throttled_invocations_are_retried_without_counting_as_attempts() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(failing);
    let invoker = fixture.start(Arc::clone(&function), fast());
    invoker.throttle(Duration::from_millis(500));
    let published = Instant::now();
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    let calls = function.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0].1 - published >= Duration::from_millis(400));
    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0["requestContext"]["approximateInvokeCount"], 3);
    Ok(())
}

#[tokio::test]
async fn an_event_throttled_past_its_maximum_age_is_recorded_without_a_response()
-> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(handled);
    let mut target = fixture.target.clone();
    target.invoke_config.maximum_event_age = Duration::from_millis(300);
    let invoker = fixture.start_target(target, Arc::clone(&function), fast());
    invoker.throttle(Duration::from_secs(600));
    fixture.publish(&["Dune"]).await?;
    settled(&invoker).await?;

    assert!(function.calls().is_empty());
    let letters = fixture.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let record = &letters[0].0;
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    assert_eq!(name(&record["requestPayload"]), "Dune");
    // Nothing ran, so there is no response to report.
    assert!(record.get("responseContext").is_none(), "{record}");
    assert!(record.get("responsePayload").is_none(), "{record}");
    Ok(())
}

#[tokio::test]
async fn concurrent_events_run_in_parallel_and_each_is_handled_at_least_once() -> anyhow::Result<()>
{
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::slow(Duration::from_millis(300), |attempt| {
        // Every event fails once, so retries overlap first attempts.
        if attempt == 0 {
            failing(attempt)
        } else {
            handled(attempt)
        }
    });
    let invoker = fixture.start(Arc::clone(&function), fast());
    let names: Vec<String> = (0..25).map(|i| format!("book-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    fixture.publish(&names).await?;
    settled(&invoker).await?;

    let calls = function.calls();
    let mut per_event: HashMap<&str, usize> = HashMap::new();
    for (event, _) in &calls {
        *per_event.entry(name(event)).or_default() += 1;
    }
    // At least once each (twice: one failure, one success); more would be at-least-once too.
    assert_eq!(per_event.len(), names.len(), "{per_event:?}");
    assert!(per_event.values().all(|&n| n >= 2), "{per_event:?}");
    assert!(function.most_running.load(Ordering::SeqCst) > 1);
    assert!(fixture.dead_letters().await?.is_empty());
    assert_eq!(fixture.queued().await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_event_whose_fate_is_open_stays_queued_when_the_rehearsal_stops() -> anyhow::Result<()> {
    let endpoint = endpoint!();
    let fixture = Fixture::new(&endpoint).await?;
    let function = Scripted::new(failing);
    let settings = AsyncSettings {
        first_retry_delay: Duration::from_secs(600),
        ..fast()
    };
    let invoker = fixture.start(Arc::clone(&function), settings);
    fixture.publish(&["Dune"]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while function.calls().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(function.calls().len(), 1);
    fixture.shutdown.cancel();
    invoker.join().await;

    assert_eq!(fixture.queued().await?, 1);
    assert!(fixture.dead_letters().await?.is_empty());
    // Another run finds it once its visibility lapses, and carries on from a first attempt.
    let again = Scripted::new(handled);
    let shutdown = CancellationToken::new();
    let invoker = async_invoke::start(
        fixture.target.clone(),
        fixture.sqs.clone(),
        Arc::clone(&again) as Arc<dyn Invoke>,
        fast(),
        shutdown.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.calls().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&invoker).await?;
    assert_eq!(again.calls().len(), 1);
    assert_eq!(fixture.queued().await?, 0);
    shutdown.cancel();
    invoker.join().await;
    Ok(())
}
