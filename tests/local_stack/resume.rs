//! Subscriptions that resume after a cursor, on the whole local stack: a seeded chaos test of
//! writers and of subscribers that disconnect and resume, a slow subscriber behind a small
//! buffer, and the stream's retention (bounded, never ahead of the processor, `CURSOR_EXPIRED`).
//!
//! The truth every subscriber is held to is the store's own change stream, read straight from
//! the database file: the committed changes, in commit order.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outboxdemo::stack::Storage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Socket, TestApp, next, open_subscriptions, quick_settings, send, socket, spawn_with,
};

const EVENTS: &str =
    "subscription($after: String) { bookEvents(after: $after) { eventId cursor type bookName } }";

/// One committed change, as the stream holds it and as a subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    cursor: String,
    event_id: String,
}

/// The committed changes after `after`, in commit order, read from the database file.
fn committed(data_dir: &Path, after: i64) -> Vec<Change> {
    let conn = stream_file(data_dir);
    let mut statement = conn
        .prepare("SELECT seq, event_id FROM stream WHERE seq > ?1 ORDER BY seq")
        .unwrap();
    statement
        .query_map([after], |row| {
            Ok(Change {
                cursor: format!("{:021}", row.get::<_, i64>(0)?),
                event_id: row.get(1)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn stream_file(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join(outboxdemo::embedded::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// The last sequence number the stream gave, and how many records it keeps.
fn stream_extent(data_dir: &Path) -> (i64, i64) {
    let conn = stream_file(data_dir);
    conn.query_row(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'stream'),
                (SELECT COUNT(*) FROM stream)",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

fn subscribe_after(id: &str, after: Option<&str>) -> Value {
    json!({"type": "subscribe", "id": id, "payload": {"query": EVENTS, "variables": {"after": after}}})
}

/// The next message for subscription `s`, or `None` when `wait` passes first.
async fn next_within(socket: &mut Socket, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()?;
        match message.unwrap().unwrap() {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] != "ping" {
                    return Some(message);
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("not a protocol message: {other:?}"),
        }
    }
}

/// One subscriber of the chaos test: it subscribes after `start`, and over and over
/// disconnects at a random moment and resumes after the last cursor it saw, until it has seen
/// `last` (once that is known). Returns everything it received, across its reconnects.
async fn resuming_subscriber(
    app: Arc<TestApp>,
    mut rng: fastrand::Rng,
    start: String,
    last: Arc<AtomicI64>,
    seed: u64,
) -> Vec<Change> {
    let mut received: Vec<Change> = Vec::new();
    let mut cursor = start;
    let done = |cursor: &str, last: &AtomicI64| {
        cursor.parse::<i64>().unwrap() >= last.load(Ordering::Acquire)
    };
    while !done(&cursor, &last) {
        let mut socket = socket(&app).await;
        send(&mut socket, subscribe_after("s", Some(&cursor))).await;
        // This connection's life: a few events, or a few milliseconds without one.
        let mut budget = rng.usize(0..6);
        let patience = Duration::from_micros(rng.u64(200..4000));
        loop {
            if budget == 0 || done(&cursor, &last) {
                break;
            }
            let Some(message) = next_within(&mut socket, patience).await else {
                if last.load(Ordering::Acquire) == i64::MAX {
                    break; // a random moment, while the writers write
                }
                continue;
            };
            assert_eq!(message["type"], "next", "seed {seed}: {message}");
            let event = &message["payload"]["data"]["bookEvents"];
            let change = Change {
                cursor: event["cursor"].as_str().unwrap().to_owned(),
                event_id: event["eventId"].as_str().unwrap().to_owned(),
            };
            cursor.clone_from(&change.cursor);
            received.push(change);
            budget -= 1;
            if rng.u8(..) < 30 {
                // A slow subscriber: the live buffer (4) overflows behind it.
                tokio::time::sleep(Duration::from_millis(rng.u64(1..4))).await;
            }
        }
        // Some say goodbye, some just vanish.
        if rng.bool() {
            let _ = socket
                .send(Message::text(
                    json!({"type": "complete", "id": "s"}).to_string(),
                ))
                .await;
            let _ = socket.close(None).await;
        }
    }
    received
}

/// Writer `w` of seed `seed`: adds and removes its own books, each change committed before
/// the next.
async fn writer(app: Arc<TestApp>, mut rng: fastrand::Rng, seed: u64, w: usize) {
    let mut present = [false; 3];
    for _ in 0..rng.usize(2..8) {
        let book = rng.usize(0..present.len());
        let name = format!("chaos {seed}-{w}-{book}");
        let body = if present[book] {
            app.remove_book(&name).await
        } else {
            app.add_book(&name, &["A. Writer"], 2000).await
        };
        assert!(body.get("errors").is_none(), "seed {seed}: {body}");
        present[book] = !present[book];
        if rng.bool() {
            tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
        }
    }
}

/// The seeds the chaos test runs: 200, or `OUTBOXDEMO_CHAOS_SEEDS` (thousands, say, to hunt).
fn chaos_seeds() -> u64 {
    std::env::var("OUTBOXDEMO_CHAOS_SEEDS")
        .ok()
        .map_or(200, |seeds| {
            seeds.parse().expect("OUTBOXDEMO_CHAOS_SEEDS is a number")
        })
}

/// Several writers add and remove books while subscribers disconnect at random moments and
/// resume after the last cursor they saw; one in ten publishes fails and is retried, and the
/// subscribers' live buffers are small, so they are caught up from the stream as well. Every
/// subscriber's events, across its reconnects, are the committed changes in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_disconnect_and_resume_miss_nothing_and_get_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.subscriber_buffer = 4;
    settings.faults.publish_failure_rate = 0.1;
    let app = Arc::new(spawn_with(settings).await);
    open_subscriptions(&app).await; // serving, so the database file is there

    for seed in 0..chaos_seeds() {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (start, _) = stream_extent(dir.path());
        let start_cursor = format!("{start:021}");
        let last = Arc::new(AtomicI64::new(i64::MAX));
        let subscribers: Vec<_> = (0..rng.usize(1..4))
            .map(|_| {
                tokio::spawn(resuming_subscriber(
                    Arc::clone(&app),
                    rng.fork(),
                    start_cursor.clone(),
                    Arc::clone(&last),
                    seed,
                ))
            })
            .collect();
        let writers: Vec<_> = (0..rng.usize(1..4))
            .map(|w| tokio::spawn(writer(Arc::clone(&app), rng.fork(), seed, w)))
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let (end, _) = stream_extent(dir.path());
        last.store(end, Ordering::Release);
        let expected = committed(dir.path(), start);
        assert_eq!(
            expected.last().map(|c| c.cursor.clone()),
            Some(format!("{end:021}")),
            "seed {seed}: the writers' changes are in the stream"
        );
        for subscriber in subscribers {
            let received = tokio::time::timeout(Duration::from_secs(30), subscriber)
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: a subscriber never caught up"))
                .unwrap();
            assert_eq!(received, expected, "seed {seed}");
        }
    }
    Arc::into_inner(app).unwrap().stop().await;
}

/// A subscriber whose buffer holds 8 events, reading 1,000 changes slower than they come, is
/// caught up from the stream and gets all 1,000, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_with_a_buffer_of_8_gets_all_1000_changes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.subscriber_buffer = 8;
    let app = Arc::new(spawn_with(settings).await);
    open_subscriptions(&app).await; // serving, so the database file is there
    let mut socket = socket(&app).await;
    send(&mut socket, subscribe_after("s", None)).await;
    wait_for_subscriptions(&app, 1).await;

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                for i in 0..250 {
                    let name = format!("slow {w}-{i}");
                    let body = app.add_book(&name, &["A. Writer"], 2000).await;
                    assert!(body.get("errors").is_none(), "{body}");
                }
            })
        })
        .collect();
    let mut received = Vec::new();
    while received.len() < 1000 {
        let message = next(&mut socket).await;
        assert_eq!(message["type"], "next", "{message}");
        let event = &message["payload"]["data"]["bookEvents"];
        received.push(Change {
            cursor: event["cursor"].as_str().unwrap().to_owned(),
            event_id: event["eventId"].as_str().unwrap().to_owned(),
        });
        if received.len() % 50 == 0 {
            // Slower than four writers.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(received, committed(dir.path(), 0));
    drop(socket);
    Arc::into_inner(app).unwrap().stop().await;
}

async fn wait_for_subscriptions(app: &TestApp, count: u64) {
    for _ in 0..200 {
        if open_subscriptions(app).await >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the subscription never opened");
}

/// The error a subscription after `after` is refused with.
async fn refused(app: &TestApp, after: &str) -> Value {
    let mut socket = socket(app).await;
    send(&mut socket, subscribe_after("s", Some(after))).await;
    let message = next(&mut socket).await;
    assert_eq!(message["type"], "error", "{message}");
    message["payload"][0].clone()
}

/// Under sustained writes with a retention of one second, the stream holds about a second's
/// records; a cursor before what it keeps is `CURSOR_EXPIRED`, which says where to resume,
/// and resuming there works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_trimmed_to_its_retention_and_an_older_cursor_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.stream_retention = Duration::from_secs(1);
    let app = spawn_with(settings).await;
    open_subscriptions(&app).await;

    // Four seconds of writes, about 50 a second.
    let mut most_kept = 0;
    let mut written = 0;
    let began = tokio::time::Instant::now();
    while began.elapsed() < Duration::from_secs(4) {
        let name = format!("kept {written}");
        let body = app.add_book(&name, &["A. Writer"], 2000).await;
        assert!(body.get("errors").is_none(), "{body}");
        written += 1;
        if began.elapsed() > Duration::from_secs(2) {
            most_kept = most_kept.max(stream_extent(dir.path()).1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (last, kept) = stream_extent(dir.path());
    assert_eq!(last, written, "every write made a record");
    // A second's records (about 50), and what a trim every 250 ms leaves: never the 200 written.
    assert!(
        most_kept <= 100,
        "the stream kept {most_kept} of {written} records"
    );
    assert!(kept > 0, "the last second's records are kept");

    let error = refused(&app, &format!("{:021}", 0)).await;
    assert_eq!(error["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
    let resume_after = error["extensions"]["resumeAfter"]
        .as_str()
        .unwrap()
        .to_owned();
    let oldest = error["extensions"]["oldestCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(resume_after.parse::<i64>().unwrap() < oldest.parse::<i64>().unwrap());
    assert!(
        error["message"].as_str().unwrap().contains(&resume_after),
        "{error}"
    );

    // Resuming where it says: the next event is the one after it. The stream goes on ageing
    // (every record is past the retention a second after the writes stopped), so the place it
    // names may be trimmed again before the resume: then the answer names a later one.
    let mut resume_after = resume_after;
    let mut socket = loop {
        let mut socket = socket(&app).await;
        send(&mut socket, subscribe_after("s", Some(&resume_after))).await;
        // One more record, so that there is one after wherever the trim is.
        app.add_book(&format!("kept {written}"), &["A. Writer"], 2000)
            .await;
        written += 1;
        let message = next(&mut socket).await;
        if message["type"] == "next" {
            assert_eq!(
                message["payload"]["data"]["bookEvents"]["cursor"],
                format!("{:021}", resume_after.parse::<i64>().unwrap() + 1),
                "{message}"
            );
            break socket;
        }
        assert_eq!(
            message["payload"][0]["extensions"]["code"], "CURSOR_EXPIRED",
            "{message}"
        );
        resume_after = message["payload"][0]["extensions"]["resumeAfter"]
            .as_str()
            .unwrap()
            .to_owned();
    };
    socket.close(None).await.unwrap();
    drop(socket);
    app.stop().await;
}

/// Records the processor has not finished with are kept however old they grow: here every
/// publish fails (after the records before a random one in the batch went out), so the
/// processor holds back at least the last record; only what it checkpointed is trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_removes_a_record_the_processor_has_not_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.stream_retention = Duration::from_secs(1);
    settings.faults.publish_failure_rate = 1.0;
    let app = spawn_with(settings).await;
    open_subscriptions(&app).await;
    for i in 0..5 {
        let body = app
            .add_book(&format!("held {i}"), &["A. Writer"], 2000)
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    // Four trims' worth of time past the retention.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conn = stream_file(dir.path());
    let checkpoint: i64 = conn
        .query_row(
            "SELECT seq FROM checkpoints WHERE reader = 'processor'",
            [],
            |row| row.get(0),
        )
        .unwrap_or(0);
    assert!(checkpoint < 5, "the last record always fails");
    let kept: Vec<i64> = conn
        .prepare("SELECT seq FROM stream ORDER BY seq")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, (checkpoint + 1..=5).collect::<Vec<_>>());
    app.stop().await;
}

/// What is not a cursor of this stream is bad input, named as such.
#[tokio::test]
async fn a_cursor_that_is_not_one_of_the_stream_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(quick_settings(Storage::Dir(dir.path().to_owned()))).await;
    for cursor in ["not-a-cursor", &format!("{:021}", 99)] {
        let error = refused(&app, cursor).await;
        assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{error}");
    }
    app.stop().await;
}

/// The stream is durable, so a cursor outlives the server: a subscriber resumes after a
/// restart with the cursor it saw before it, and gets what was committed since, then live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_a_restart_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(quick_settings(Storage::Dir(dir.path().to_owned()))).await;
    let mut before = socket(&app).await;
    send(&mut before, subscribe_after("s", None)).await;
    wait_for_subscriptions(&app, 1).await;
    app.add_book("Before", &["A. Writer"], 2000).await;
    let message = next(&mut before).await;
    let seen = message["payload"]["data"]["bookEvents"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    app.add_book("Unseen", &["A. Writer"], 2000).await;
    drop(before);
    app.stop().await;

    let app = spawn_with(quick_settings(Storage::Dir(dir.path().to_owned()))).await;
    app.remove_book("Before").await;
    let mut socket = socket(&app).await;
    send(&mut socket, subscribe_after("s", Some(&seen))).await;
    let mut names = Vec::new();
    for _ in 0..2 {
        let message = next(&mut socket).await;
        names.push(message["payload"]["data"]["bookEvents"]["bookName"].clone());
    }
    app.add_book("After", &["A. Writer"], 2000).await;
    let message = next(&mut socket).await;
    names.push(message["payload"]["data"]["bookEvents"]["bookName"].clone());
    assert_eq!(names, [json!("Unseen"), json!("Before"), json!("After")]);
    drop(socket);
    app.stop().await;
}
