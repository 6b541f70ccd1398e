//! Opening a data directory written by an older version.

use serde_json::json;

use crate::support::spawn_app;

/// A data directory written before the schema had a version (`tests/fixtures/v0`, made by the
/// code of that time) is upgraded in place: every book, activity entry and dead letter is still
/// there, the events that were still queued for the consumers are delivered (those queued for
/// the subscriptions, a live target now, are dropped: their subscribers ended with the process
/// that queued them, and nothing would ever deliver them), and the stream goes on from its
/// checkpoint (nothing before it is read again: Hopeless, dead-lettered by the bus, and Poison,
/// dead-lettered by the stream, get no activity).
#[tokio::test]
async fn a_data_directory_from_before_schema_versions_is_upgraded_in_place() {
    use outboxdemo::embedded::{DB_FILE, Db, schema};

    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v0/",
        "outboxdemo.sqlite3"
    );
    std::fs::copy(fixture, dir.path().join(DB_FILE)).unwrap();
    let app = spawn_app(dir.path()).await;

    let books = app
        .data("{ books { edges { node { name } } } }", json!({}))
        .await;
    let names: Vec<&str> = books["books"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Beloved", "Dune", "Hopeless", "Poison", "Ulysses"]);

    app.add_book("Sentinel", &["After The Upgrade"], 2026).await;
    let activity = app.wait_for_activity(6).await;
    let mut seen: Vec<(&str, &str)> = activity
        .iter()
        .map(|e| {
            (
                e["bookName"].as_str().unwrap(),
                e["eventType"].as_str().unwrap(),
            )
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            ("Beloved", "ADDED"),
            ("Dune", "ADDED"),
            ("Emma", "ADDED"),
            ("Emma", "REMOVED"),
            ("Sentinel", "ADDED"),
            ("Ulysses", "ADDED"),
        ],
        "{activity:?}"
    );
    let letters = app
        .data(
            "{ deadLetters { source id target reason attempts } }",
            json!({}),
        )
        .await;
    assert_eq!(
        letters["deadLetters"],
        json!([
            {"source": "BUS", "id": "5", "target": "book-added", "reason": "DELIVERY_FAILED", "attempts": 1},
            {"source": "STREAM", "id": "7", "target": null, "reason": "the processor failed this record 1 times", "attempts": 1},
        ])
    );
    app.stop().await;

    let db = Db::open(dir.path()).unwrap();
    assert_eq!(outboxdemo::bus::queued(&db).await.unwrap(), 0);
    assert_eq!(db.read(schema::version).await.unwrap(), schema::CURRENT);
    assert_eq!(outboxdemo::stream::checkpoint(&db).await.unwrap(), 8);
}
