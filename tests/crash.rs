//! The crash test: the local stack binary under concurrent `addBook` / `removeBook` traffic,
//! killed with SIGKILL at random moments and restarted on the same data directory, again and
//! again; then stopped with SIGTERM and checked: every acknowledged mutation's effect is in the
//! store, every committed change produced exactly one activity entry, each consumer saw each
//! book's changes in commit order, and nothing sits in a dead-letter table.
//!
//! `OUTBOXDEMO_CRASH_KILLS` sets the number of kills (default 50).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

const WORKERS: usize = 6;
const NAMES_PER_WORKER: usize = 3;

/// What a worker was told: the book exists (true) or not (false) after its last acknowledged
/// mutation.
type Acknowledged = Arc<Mutex<HashMap<String, bool>>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(dir: &Path) -> (Child, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_outboxdemo"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{url}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the stack did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (child, url)
}

/// One mutation; `Some(true)` when acknowledged as done, `Some(false)` when refused by the
/// API (a conflict or not-found: nothing changed), `None` when the answer never came.
async fn mutate(client: &reqwest::Client, url: &str, add: bool, name: &str) -> Option<bool> {
    let query = if add {
        json!({"query": "mutation($n: String!) { addBook(input: {name: $n, authors: [\"A\"], publishedYear: 2000}) { name } }", "variables": {"n": name}})
    } else {
        json!({"query": "mutation($n: String!) { removeBook(name: $n) { name } }", "variables": {"n": name}})
    };
    let response = client
        .post(format!("{url}/graphql"))
        .json(&query)
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    Some(body.get("errors").is_none())
}

/// A worker adds and removes its own books in turn until told to stop.
async fn worker(
    id: usize,
    url: String,
    acknowledged: Acknowledged,
    stop: Arc<AtomicBool>,
    count: Arc<Mutex<u64>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut step = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("w{id}-b{}", step % NAMES_PER_WORKER);
        let exists = acknowledged.lock().await.get(&name).copied();
        // Unknown (after a lost answer) is settled by trying an add: it conflicts if the
        // book is there.
        let add = exists != Some(true);
        match mutate(&client, &url, add, &name).await {
            Some(true) => {
                acknowledged.lock().await.insert(name, add);
                *count.lock().await += 1;
            }
            Some(false) if add => {
                acknowledged.lock().await.insert(name, true); // the conflict says it exists
            }
            Some(false) => {
                acknowledged.lock().await.insert(name, false);
            }
            None => {
                acknowledged.lock().await.remove(&name); // in flight at a kill: unknown
                return;
            }
        }
        step += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_many_times_nothing_is_lost_doubled_or_reordered() {
    let kills: usize = std::env::var("OUTBOXDEMO_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Acknowledged = Arc::default();
    let mutations = Arc::new(Mutex::new(0u64));

    for _ in 0..kills {
        let (mut child, url) = start(dir.path()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|id| {
                tokio::spawn(worker(
                    id,
                    url.clone(),
                    Arc::clone(&acknowledged),
                    Arc::clone(&stop),
                    Arc::clone(&mutations),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..250))).await;
        child.start_kill().unwrap(); // SIGKILL, mid-whatever
        child.wait().await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
    }

    // A last start lets everything committed drain; then SIGTERM, which must stop it cleanly.
    let (child, url) = start(dir.path()).await;
    let client = reqwest::Client::new();
    let quiet = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    loop {
        let body: Value = client
            .post(format!("{url}/graphql"))
            .json(
                &json!({"query": "{ activity(first: 1) { edges { cursor } } deadLetters { id } }"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body == last {
            break;
        }
        last = body;
        assert!(Instant::now() < quiet, "the pipeline did not settle");
        tokio::time::sleep(Duration::from_millis(1500)).await; // longer than the idle re-check
    }
    let pid = child.id().unwrap();
    let terminated = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    let mut child = child;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("SIGTERM stops it")
        .unwrap();
    assert!(status.success(), "a clean stop exits 0: {status}");
    let stop_time = terminated.elapsed();

    // Check the store itself, through its public interfaces.
    let (books, stream, activity, dead) = read_store(dir.path()).await;
    let stored: std::collections::HashSet<&str> = books.iter().map(String::as_str).collect();
    let acknowledged = acknowledged.lock().await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(name, exists)| stored.contains(name.as_str()) != **exists)
        .collect();

    let entries: HashMap<&str, usize> =
        activity
            .iter()
            .fold(HashMap::new(), |mut counts, (event_id, _, _)| {
                *counts.entry(event_id.as_str()).or_default() += 1;
                counts
            });
    let undelivered = stream
        .iter()
        .filter(|(event_id, _, _)| !entries.contains_key(event_id.as_str()))
        .count();
    let duplicated = entries.values().filter(|n| **n > 1).count();

    // Per consumer and book, activity order must follow stream order.
    let seq_of: HashMap<&str, (i64, &str)> = stream
        .iter()
        .map(|(id, what, seq)| (id.as_str(), (*seq, what.as_str())))
        .collect();
    let mut seen: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut reordered = 0;
    for (event_id, consumer, _) in &activity {
        let Some((seq, what)) = seq_of.get(event_id.as_str()) else {
            continue;
        };
        let book = what.split_once(' ').map_or("", |(_, name)| name).to_owned();
        let last = seen.entry((consumer.clone(), book)).or_insert(0);
        if *seq < *last {
            reordered += 1;
        }
        *last = (*last).max(*seq);
    }

    // Straight to stderr, past the test harness's capture, so the figures show in every run.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "crash test: {kills} kills, {} acknowledged mutations, {} events, {} lost, {} duplicated, {} undelivered, {} reordered, {} dead letters, SIGTERM stop in {:?}",
        *mutations.lock().await,
        stream.len(),
        lost.len(),
        duplicated,
        undelivered,
        reordered,
        dead,
        stop_time,
    );
    assert!(
        lost.is_empty(),
        "acknowledged but not in the store: {lost:?}"
    );
    assert_eq!((duplicated, undelivered, reordered, dead), (0, 0, 0, 0));
    assert_eq!(
        activity.len(),
        stream.len(),
        "one activity entry per committed change"
    );
    assert!(
        *mutations.lock().await > kills as u64,
        "the traffic got through between kills"
    );
}

/// Everything the check needs: the books' names; the stream as (event id, "EVENT name", seq);
/// the activity as (event id, consumer, position), oldest first; the number of dead letters.
async fn read_store(
    dir: &Path,
) -> (
    Vec<String>,
    Vec<(String, String, i64)>,
    Vec<(String, String, i64)>,
    usize,
) {
    use api::{ActivityFeed, BookStore};
    use outboxdemo::embedded::{Db, EmbeddedActivityStore, EmbeddedBookStore, EmbeddedDeadLetters};

    let db = Db::open(dir).unwrap();
    let store = EmbeddedBookStore::new(Arc::clone(&db));
    let mut books = Vec::new();
    loop {
        let after = books
            .last()
            .map(|name: &String| domain::BookName::parse(name).unwrap());
        let page = store.list(100, after.as_ref()).await.unwrap();
        books.extend(page.items.iter().map(|b| b.name.as_str().to_owned()));
        if !page.has_next_page {
            break;
        }
    }
    let stream = db
        .read(|conn| outboxdemo::embedded::stream::after(conn, 0, usize::MAX))
        .await
        .unwrap()
        .into_iter()
        .map(|record| {
            let keys: Value = serde_json::from_str(&record.keys).unwrap();
            let what = format!(
                "{} {}",
                record.event_name,
                keys["name"]["S"].as_str().unwrap()
            );
            (record.event_id, what, record.seq)
        })
        .collect();
    let feed = EmbeddedActivityStore::new(Arc::clone(&db));
    let mut activity = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = feed.list(100, after.as_deref()).await.unwrap();
        after = page.items.last().map(|item| item.position.clone());
        activity.extend(page.items.into_iter().map(|item| {
            let position = item.position.parse().unwrap();
            (item.entry.event_id, item.entry.consumer, position)
        }));
        if !page.has_next_page {
            break;
        }
    }
    activity.reverse();
    let dead = EmbeddedDeadLetters::new(db)
        .all(usize::MAX)
        .await
        .unwrap()
        .len();
    (books, stream, activity, dead)
}
