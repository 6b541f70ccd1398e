//! The rehearsal under fault: concurrent adds and removes through the HTTP API, a poison item
//! written straight into the table, a share of PutEvents entries refused, throttling bursts,
//! consumer writes failing, and Lambda processes SIGKILLed mid-invocation. Afterwards every
//! healthy change has had its effect once in each consumer, each book's changes reached the bus
//! in commit order, the poison waits whole in the processor's poison queue, nothing was
//! discarded, and no shard is stuck.
//!
//! Order is checked on the bus, where the pipeline promises it. Past the bus, EventBridge
//! invokes each target asynchronously and retries a failed invocation a minute later while
//! later events go on (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html>), so
//! a consumer may see a book's changes out of order; the test counts how often it did and
//! prints it, and the consumers' effects (one entry per event id) do not depend on it.
//!
//! It runs the bootstraps of `target/debug` (`cargo build -p api -p processor -p consumers`,
//! which `./scripts/test` does) and starts its own moto server (`moto_server` on the PATH).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use rehearsal::async_invoke::AsyncSettings;
use rehearsal::faults::Faults;
use rehearsal::stack::{Options, Rehearsal};
use serde_json::{Value, json};

const WRITERS: usize = 4;
const BOOKS_PER_WRITER: usize = 12;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Whether the test can run here: the same rule as the AWS tests (skipped with a message
/// without the emulator, except under CI, where that fails).
fn emulator_available() -> bool {
    testing::moto::endpoint().is_some()
}

async fn graphql(client: &reqwest::Client, url: &str, query: &str, variables: Value) -> Value {
    for _ in 0..20 {
        let response = client
            .post(format!("{url}/graphql"))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                return response.json().await.unwrap();
            }
            // A killed api environment answers 500 through the HTTP API: the client retries,
            // as a client of API Gateway would.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the HTTP API did not answer {query}");
}

async fn activity(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = graphql(
            client,
            url,
            "query($after: String) { activity(first: 100, after: $after) { nodes { eventId eventType consumer bookName processedAt } pageInfo { hasNextPage endCursor } } }",
            json!({"after": after}),
        )
        .await;
        let activity = &page["data"]["activity"];
        entries.extend(activity["nodes"].as_array().cloned().unwrap_or_default());
        if activity["pageInfo"]["hasNextPage"] != true {
            return entries;
        }
        after = activity["pageInfo"]["endCursor"].clone();
    }
}

async fn queue_messages(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    loop {
        let output = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap();
        if output.messages().is_empty() {
            return messages;
        }
        for message in output.messages() {
            messages.push(serde_json::from_str(message.body().unwrap()).unwrap());
        }
    }
}

/// The functions' and the emulator's logs: kept, and their path printed, when the test fails.
struct Logs(Option<tempfile::TempDir>);

impl Logs {
    fn path(&self) -> PathBuf {
        self.0.as_ref().unwrap().path().to_owned()
    }

    /// The last `n` lines of each log, for a failure seen only in CI's output.
    fn tails(&self, n: usize) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.path())
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        files.sort();
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {} (last {n} lines)\n", file.display());
            for line in &lines[lines.len().saturating_sub(n)..] {
                out += line;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("the rehearsal's logs are kept in {}", dir.keep().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_faults_every_healthy_change_has_its_effects_once_and_the_poison_is_set_aside_whole()
{
    if !emulator_available() {
        return;
    }
    let log_dir = Logs(Some(tempfile::tempdir().unwrap()));
    let options = Options {
        template: root().join("template.yaml"),
        bootstraps: root().join("target/debug"),
        moto_server: PathBuf::from("moto_server"),
        http_port: 0,
        websocket_port: 0,
        management_port: 0,
        lambda_port: 0,
        emulator_port: 0,
        log_dir: log_dir.path(),
        stack: "faults".into(),
        // AWS waits 1 and 2 minutes before retrying a failed asynchronous invocation.
        async_settings: AsyncSettings {
            first_retry_delay: Duration::from_millis(200),
            second_retry_delay: Duration::from_millis(400),
            throttle_backoff_initial: Duration::from_millis(50),
            throttle_backoff_max: Duration::from_millis(500),
            delivery_backoff_base: Duration::from_millis(50),
            delivery_backoff_max: Duration::from_millis(500),
            long_poll: Duration::from_secs(1),
            ..AsyncSettings::default()
        },
        faults: Faults {
            refused_entry_rate: 0.2,
            throttle_burst_rate: 0.05,
            throttle_burst: Duration::from_millis(300),
            write_failure_rate: 0.2,
            failing_table: None, // the activity table
        },
        ..Options::default()
    };
    let rehearsal = Rehearsal::start(options).await.unwrap();
    let url = rehearsal.http_url.clone();
    let sdk = rehearsal::stack::sdk_config(&rehearsal.emulator).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let books_table = rehearsal.created.tables["BooksTable"].clone();

    // What the bus accepted, in order: a rule of the test's own on the template's bus, to a queue
    // (moto delivers to it as it ingests each PutEvents entry).
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let (bus_queue, bus_queue_arn) = testing::bus::create_queue(&sqs, "faults-bus-record")
        .await
        .unwrap();
    let bus_name = rehearsal.created.buses["EventBus"].name.clone();
    events
        .put_rule()
        .name("faults-record")
        .event_bus_name(&bus_name)
        .event_pattern(r#"{"source": ["outboxdemo.processor"]}"#)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("faults-record")
        .event_bus_name(&bus_name)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("record")
                .arn(bus_queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // Writers add books and remove some, concurrently; the killer SIGKILLs busy environments.
    // The default deployment lets no anonymous client in: the writers present its secret.
    let credential = rehearsal
        .credential()
        .expect("the default deploy generates a secret");
    let client = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {credential}").parse().unwrap(),
        )]))
        .build()
        .unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (client, url) = (client.clone(), url.clone());
        writers.spawn(async move {
            for i in 0..BOOKS_PER_WRITER {
                let name = format!("Book {writer}-{i}");
                let added = graphql(
                    &client,
                    &url,
                    "mutation($input: AddBookInput!) { addBook(input: $input) { name } }",
                    json!({"input": {"name": name, "authors": ["A"], "publishedYear": 2000}}),
                )
                .await;
                assert!(
                    added["errors"].is_null()
                        || added["errors"][0]["extensions"]["code"] == "CONFLICT",
                    "{added}"
                );
                if i % 3 == 0 {
                    graphql(
                        &client,
                        &url,
                        "mutation($name: String!) { removeBook(name: $name) { name } }",
                        json!({"name": name}),
                    )
                    .await;
                    // Every other removed book comes back: a book with three changes.
                    if i % 2 == 0 {
                        graphql(
                            &client,
                            &url,
                            "mutation($input: AddBookInput!) { addBook(input: $input) { name } }",
                            json!({"input": {"name": name, "authors": ["B"], "publishedYear": 2001}}),
                        )
                        .await;
                    }
                }
            }
        });
    }
    // The poison: an item in a shape no processor can map (authors a number), written straight
    // into the table while the writers run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    dynamodb
        .put_item()
        .table_name(&books_table.name)
        .item(
            "name",
            aws_sdk_dynamodb::types::AttributeValue::S("Poison".into()),
        )
        .item(
            "authors",
            aws_sdk_dynamodb::types::AttributeValue::N("5".into()),
        )
        .send()
        .await
        .unwrap();
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    // The killer runs while the writers do and a while after, as the pipeline drains.
    let killer = async {
        let victims = [
            "ProcessorFunction",
            "BookAddedFunction",
            "BookRemovedFunction",
            "NotifierFunction",
        ];
        let mut drain_until = None;
        loop {
            for victim in victims {
                if rehearsal.function(victim).unwrap().kill_busy() {
                    *kills.entry(victim.to_owned()).or_default() += 1;
                }
            }
            if writers.is_empty() {
                let until = *drain_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(3));
                if tokio::time::Instant::now() > until {
                    break;
                }
            }
            tokio::select! {
                Some(done) = writers.join_next(), if !writers.is_empty() => done.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(30)) => {}
            }
        }
    };
    killer.await;

    let settling = tokio::time::Instant::now();
    if let Err(e) = rehearsal.settle(Duration::from_secs(120)).await {
        panic!("{e:#}\n{}", log_dir.tails(40));
    }
    let settled_in = settling.elapsed();
    // Retries of the asynchronous invocations may still be pending behind their delays.
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let records =
        testing::streams::read_records(&streams, books_table.stream_arn.as_deref().unwrap())
            .await
            .unwrap();
    let poison_id = records
        .iter()
        .find(|r| r["dynamodb"]["Keys"]["name"]["S"] == "Poison")
        .map(|r| r["eventID"].as_str().unwrap().to_owned())
        .expect("the poison is in the stream");
    // Each healthy change and the consumer that must react to it.
    let expected: BTreeMap<String, (&str, String)> = records
        .iter()
        .filter(|r| r["eventID"] != poison_id.as_str())
        .filter_map(|r| {
            let consumer = match r["eventName"].as_str()? {
                "INSERT" => "book-added",
                "REMOVE" => "book-removed",
                _ => return None,
            };
            let name = r["dynamodb"]["Keys"]["name"]["S"].as_str()?.to_owned();
            Some((r["eventID"].as_str()?.to_owned(), (consumer, name)))
        })
        .collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let entries = activity(&client, &url).await;
        if entries.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut effects: HashMap<(String, String), usize> = HashMap::new();
    for entry in &entries {
        *effects
            .entry((
                entry["eventId"].as_str().unwrap().to_owned(),
                entry["consumer"].as_str().unwrap().to_owned(),
            ))
            .or_default() += 1;
    }
    let lost: Vec<_> = expected
        .iter()
        .filter(|(id, (consumer, _))| {
            !effects.contains_key(&((*id).clone(), (*consumer).to_owned()))
        })
        .collect();
    let duplicated: Vec<_> = effects.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<_> = effects
        .keys()
        .filter(|(id, consumer)| expected.get(id).is_none_or(|(c, _)| c != consumer))
        .collect();
    // Per consumer and book, the order effects happened in against the order of commit.
    let position: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r["eventID"].as_str().unwrap(), i))
        .collect();
    let mut seen: BTreeMap<(String, String), Vec<(String, usize)>> = BTreeMap::new();
    for entry in &entries {
        let key = (
            entry["consumer"].as_str().unwrap().to_owned(),
            entry["bookName"].as_str().unwrap().to_owned(),
        );
        let id = entry["eventId"].as_str().unwrap();
        seen.entry(key).or_default().push((
            entry["processedAt"].as_str().unwrap().to_owned(),
            position[id],
        ));
    }
    for effects in seen.values_mut() {
        effects.sort();
    }
    let reordered = seen
        .values()
        .filter(|effects| effects.windows(2).any(|w| w[0].1 > w[1].1))
        .count();

    // On the bus: each book's changes, at their first publication, in commit order (a change
    // published again after a refused entry comes later, with the same id, and is skipped).
    let mut published: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut first_seen = std::collections::HashSet::new();
    for event in queue_messages(&sqs, &bus_queue).await {
        let id = event["detail"]["metadata"]["eventId"]
            .as_str()
            .unwrap()
            .to_owned();
        if first_seen.insert(id.clone()) {
            let name = event["detail"]["data"]["name"].as_str().unwrap().to_owned();
            published
                .entry(name)
                .or_default()
                .push(position[id.as_str()]);
        }
    }
    let reordered_on_bus = published
        .values()
        .filter(|positions| positions.windows(2).any(|w| w[0] > w[1]))
        .count();
    let missing_on_bus = records.len() - 1 - first_seen.len();
    let poison = queue_messages(&sqs, &rehearsal.created.queues["ProcessorPoisonQueue"].url).await;
    let discarded = queue_messages(&sqs, &rehearsal.created.queues["ProcessorDLQ"].url).await;
    let progress = rehearsal.stream_mapping.progress();
    let stuck = progress.stuck(Duration::from_secs(30));
    let injected = rehearsal.injected.clone().unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    let (refused, throttled, failed_writes) = (
        injected.refused_entries.load(Relaxed),
        injected.throttled_calls.load(Relaxed),
        injected.failed_writes.load(Relaxed),
    );
    let stuck = stuck.into_iter().map(str::to_owned).collect::<Vec<_>>();
    rehearsal.stop().await;

    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated effects: {duplicated:?}");
    assert!(
        unexpected.is_empty(),
        "effects of no healthy change: {unexpected:?}"
    );
    assert_eq!(reordered_on_bus, 0, "{published:?}");
    assert_eq!(missing_on_bus, 0, "every healthy change reached the bus");
    assert!(
        discarded.is_empty(),
        "Lambda discarded batches: {discarded:?}"
    );
    assert!(stuck.is_empty(), "stuck shards: {stuck:?}");
    // Set aside at least once: a processor killed between setting it aside and answering gets
    // the batch again, and sets it aside again (SQS standard queues do not deduplicate).
    assert!(!poison.is_empty(), "the poison was set aside");
    for message in &poison {
        let record = &message["record"];
        assert_eq!(record["eventID"], poison_id.as_str(), "{poison:?}");
        assert_eq!(
            record["dynamodb"]["NewImage"]["authors"],
            json!({"N": "5"}),
            "set aside whole"
        );
    }
    assert!(
        refused > 0 && failed_writes > 0,
        "faults were injected: {refused} {failed_writes}"
    );

    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "rehearsal fault test: {} changes, {} effects once each, 0 lost, 0 duplicated, 0 reordered on the bus ({reordered} at consumers, whose asynchronous invocation AWS does not order); the poison set aside whole in ProcessorPoisonQueue ({}x), 0 batches discarded, 0 shards stuck; injected: {refused} PutEvents entries refused, {throttled} calls throttled, {failed_writes} consumer writes failed, {} processes killed ({kills:?}); {} stream records moto handed over twice skipped; settled {settled_in:.1?} after the writers",
        records.len(),
        expected.len(),
        poison.len(),
        kills.values().sum::<usize>(),
        progress.reread_records,
    );
}
