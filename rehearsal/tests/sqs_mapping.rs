//! The SQS event source mapping against moto, into a scripted function: batch size, maximum
//! concurrency, partial batch responses, a function error returning the whole batch, and the
//! queue's redrive to its dead-letter queue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use rehearsal::lambda::{Invocation, Invoke};
use rehearsal::sqs_mapping::{self, SqsMappingSettings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How the scripted function answers a batch (its bodies, and how many batches came before).
type Script = dyn Fn(&[String], usize) -> Invocation + Send + Sync;

/// A function of the test's own: records each batch's bodies and answers from its script.
struct Scripted {
    script: Box<Script>,
    batches: Mutex<Vec<Vec<String>>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Scripted {
    fn new(script: impl Fn(&[String], usize) -> Invocation + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            batches: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        })
    }

    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().unwrap().clone()
    }

    /// How often each body was received.
    fn received(&self) -> HashMap<String, usize> {
        let mut received = HashMap::new();
        for body in self.batches().into_iter().flatten() {
            *received.entry(body).or_default() += 1;
        }
        received
    }
}

#[async_trait::async_trait]
impl Invoke for Scripted {
    async fn invoke(&self, payload: Value) -> Invocation {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        let records = payload["Records"].as_array().unwrap().clone();
        assert!(records.iter().all(|r| r["eventSource"] == "aws:sqs"));
        let bodies: Vec<String> = records
            .iter()
            .map(|r| r["body"].as_str().unwrap().to_owned())
            .collect();
        let before = {
            let mut batches = self.batches.lock().unwrap();
            batches.push(bodies.clone());
            batches.len() - 1
        };
        tokio::time::sleep(Duration::from_millis(100)).await; // long enough to overlap
        self.running.fetch_sub(1, Ordering::SeqCst);
        let answer = (self.script)(&bodies, before);
        // The response names messages by id: map bodies named "fail" back to their ids.
        match answer {
            Invocation::Response(Value::String(fail)) => {
                let failures: Vec<Value> = records
                    .iter()
                    .filter(|r| r["body"] == fail.as_str())
                    .map(|r| json!({"itemIdentifier": r["messageId"]}))
                    .collect();
                Invocation::Response(json!({ "batchItemFailures": failures }))
            }
            other => other,
        }
    }
}

struct Queues {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    dlq_url: String,
}

/// A queue with a one-second visibility timeout whose messages go to a dead-letter queue
/// after `max_receives` receives.
async fn queues(max_receives: u32) -> Queues {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let sqs = aws_sdk_sqs::Client::new(&rehearsal::stack::sdk_config(&endpoint).await);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("mapping-dlq-{id}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = arn(&sqs, &dlq_url).await;
    let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives});
    let url = sqs
        .create_queue()
        .queue_name(format!("mapping-{id}"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = arn(&sqs, &url).await;
    Queues {
        sqs,
        url,
        arn,
        dlq_url,
    }
}

async fn arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap()
}

impl Queues {
    fn settings(&self, batch_size: i32, maximum_concurrency: usize) -> SqsMappingSettings {
        SqsMappingSettings {
            function: "NotifierFunction".into(),
            event: "FanoutQueue".into(),
            queue_url: self.url.clone(),
            queue_arn: self.arn.clone(),
            batch_size,
            maximum_concurrency,
            report_batch_item_failures: true,
            region: "us-east-1".into(),
        }
    }

    async fn send(&self, bodies: &[&str]) {
        for body in bodies {
            self.sqs
                .send_message()
                .queue_url(&self.url)
                .message_body(*body)
                .send()
                .await
                .unwrap();
        }
    }

    /// The bodies in the dead-letter queue.
    async fn dead_letters(&self) -> Vec<String> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        output
            .messages()
            .iter()
            .map(|m| m.body().unwrap().to_owned())
            .collect()
    }
}

/// Waits (at most 30 s) until `done` holds.
async fn until(mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not done in 30 s");
}

#[tokio::test]
async fn batches_hold_at_most_the_batch_size_and_only_failed_messages_come_back_until_the_dlq() {
    let Some(_) = testing::moto::endpoint() else {
        return;
    };
    let q = queues(2).await;
    let function = Scripted::new(|_, _| Invocation::Response(json!("poison")));
    let bodies = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "poison"];
    q.send(&bodies).await;
    let shutdown = CancellationToken::new();
    let mapping = sqs_mapping::start(
        q.settings(3, 2),
        q.sqs.clone(),
        function.clone(),
        shutdown.clone(),
    );

    let dead = Arc::new(Mutex::new(Vec::new()));
    until(async || {
        let mut found = q.dead_letters().await;
        dead.lock().unwrap().append(&mut found);
        !dead.lock().unwrap().is_empty()
    })
    .await;
    shutdown.cancel();
    mapping.join().await;

    assert_eq!(
        *dead.lock().unwrap(),
        ["poison"],
        "redriven after 2 receives"
    );
    let received = function.received();
    for body in &bodies[..7] {
        assert_eq!(received[*body], 1, "{body} was handled once and deleted");
    }
    assert_eq!(
        received["poison"], 2,
        "a failed message comes back until maxReceiveCount"
    );
    assert!(function.batches().iter().all(|b| b.len() <= 3));
    let most = function.most_running.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} invocations at once");
}

#[tokio::test]
async fn a_function_error_or_an_unreadable_response_returns_the_whole_batch() {
    let Some(_) = testing::moto::endpoint() else {
        return;
    };
    let q = queues(5).await;
    // The first batch fails with a function error, the second names a message not in it,
    // the rest succeed.
    let function = Scripted::new(|_, before| match before {
        0 => Invocation::FunctionError(json!({"errorType": "Boom", "errorMessage": "boom"})),
        1 => Invocation::Response(json!({"batchItemFailures": [{"itemIdentifier": "not-mine"}]})),
        _ => Invocation::Response(json!({"batchItemFailures": []})),
    });
    q.send(&["a", "b", "c"]).await;
    let shutdown = CancellationToken::new();
    let mapping = sqs_mapping::start(
        q.settings(10, 2),
        q.sqs.clone(),
        function.clone(),
        shutdown.clone(),
    );
    until(async || {
        let received = function.received();
        function.batches().len() >= 3
            && ["a", "b", "c"]
                .iter()
                .all(|b| received.get(*b).copied().unwrap_or(0) >= 1)
            && function.running.load(Ordering::SeqCst) == 0
    })
    .await;
    // Give a redelivery of anything wrongly kept the time to show up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    shutdown.cancel();
    mapping.join().await;
    // Every message of the two failed batches came back in a later batch, and was deleted
    // once a batch with it succeeded: none is in the DLQ, none is still queued.
    let batches = function.batches();
    for failed in &batches[..2] {
        for body in failed {
            assert!(
                batches[2..].iter().any(|later| later.contains(body)),
                "{body} did not come back: {batches:?}"
            );
        }
    }
    assert!(q.dead_letters().await.is_empty());
    let left = q
        .sqs
        .receive_message()
        .queue_url(&q.url)
        .send()
        .await
        .unwrap();
    assert!(left.messages().is_empty(), "{batches:?}");
}
