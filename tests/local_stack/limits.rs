//! The attacks of #14 on input and limits, over real HTTP and a real WebSocket: look-alike
//! and bidi names, an over-long subscription id, 1,000 `subscribe` messages on one connection,
//! a connection over its message rate, documents over the size limit. Each gets a coded error
//! or a refused connection, and changes nothing; the AWS path answers the same
//! (`api/tests/gateway.rs`).

use std::time::Duration;

use futures_util::StreamExt;
use outboxdemo::stack::{Settings, Storage};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    Socket, TestApp, error_code, next, open_subscriptions, quick_settings, send, socket,
    spawn_with, subscribe,
};

const EVENTS: &str = "subscription { bookEvents { eventId type bookName } }";

fn in_memory() -> Settings {
    quick_settings(Storage::InMemory)
}

/// The close frame the server ends the socket with.
async fn closed(socket: &mut Socket) -> (CloseCode, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code, frame.reason.to_string());
                }
                Some(Ok(Message::Text(_))) => {}
                other => panic!("not closed with a frame: {other:?}"),
            }
        }
    })
    .await
    .expect("not closed in time")
}

/// Waits until `/health` counts `count` open subscriptions (or fails after a deadline).
async fn wait_for_subscriptions(app: &TestApp, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_subscriptions(app).await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} open subscriptions, not {count}",
            open_subscriptions(app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn book_names(app: &TestApp) -> Vec<String> {
    let data = app.data("{ books { nodes { name } } }", json!({})).await;
    data["books"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["name"].as_str().unwrap().to_owned())
        .collect()
}

const ADD: &str = "mutation($input: AddBookInput!) { addBook(input: $input) { name authors } }";

fn book(name: &str, author: &str) -> Value {
    json!({"input": {"name": name, "authors": [author], "publishedYear": 1965}})
}

#[tokio::test]
async fn bidi_and_zero_width_names_are_refused_and_nothing_is_stored() {
    let app = spawn_with(in_memory()).await;
    for (name, author, field) in [
        // A right-to-left override: shown as "Dune" and the rest reversed ("exe.txt").
        ("Dune\u{202e}txt.exe", "Frank Herbert", "input.name"),
        ("Du\u{200b}ne", "Frank Herbert", "input.name"),
        ("\u{feff}Dune", "Frank Herbert", "input.name"),
        ("Dune", "Frank\u{2066}Herbert\u{2069}", "input.authors"),
        ("Dune", "Frank\u{200d}Herbert", "input.authors"),
    ] {
        let refused = app.graphql(ADD, book(name, author)).await;
        assert_eq!(error_code(&refused), "BAD_USER_INPUT", "{refused}");
        assert_eq!(refused["errors"][0]["extensions"]["field"], field);
        assert!(
            refused["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("format characters"),
            "{refused}"
        );
    }
    assert!(book_names(&app).await.is_empty(), "nothing was stored");
    // A lookup with a hidden character is refused too, rather than missing quietly.
    let lookup = app
        .graphql(r#"{ book(name: "Du\u200bne") { name } }"#, json!({}))
        .await;
    assert_eq!(error_code(&lookup), "BAD_USER_INPUT", "{lookup}");
    app.stop().await;
}

#[tokio::test]
async fn look_alike_spellings_of_a_name_are_one_key() {
    let app = spawn_with(in_memory()).await;
    let added = app.graphql(ADD, book("Cafe\u{301}", "Ame\u{301}lie")).await;
    assert_eq!(
        added["data"]["addBook"],
        json!({"name": "Caf\u{e9}", "authors": ["Am\u{e9}lie"]}),
        "stored in NFC: {added}"
    );
    let again = app.graphql(ADD, book("Caf\u{e9}", "Someone Else")).await;
    assert_eq!(error_code(&again), "CONFLICT", "{again}");
    assert_eq!(book_names(&app).await, ["Caf\u{e9}"]);

    // Lookups normalise the same way: the decomposed spelling finds the composed name.
    let query = "query($name: String!) { book(name: $name) { name } }";
    let found = app.data(query, json!({"name": "Cafe\u{301}"})).await;
    assert_eq!(found["book"]["name"], "Caf\u{e9}");
    let removed = app.remove_book("Cafe\u{301}").await;
    assert_eq!(removed["name"], "Caf\u{e9}");
    assert!(book_names(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_document_over_the_size_limit_is_refused_on_http_and_the_socket() {
    let mut settings = in_memory();
    settings.api.max_query_bytes = 1024;
    let app = spawn_with(settings).await;
    let padding = format!("# {}\n", "x".repeat(1024));

    let http = app
        .graphql(
            &format!("{padding}{{ books {{ nodes {{ name }} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(error_code(&http), "QUERY_TOO_LARGE", "{http}");
    let mutation = app
        .graphql(&format!("{padding}{ADD}"), book("Dune", "Frank Herbert"))
        .await;
    assert_eq!(error_code(&mutation), "QUERY_TOO_LARGE", "{mutation}");
    assert!(book_names(&app).await.is_empty());

    let mut socket = socket(&app).await;
    send(
        &mut socket,
        subscribe("huge", &format!("{padding}{EVENTS}")),
    )
    .await;
    let error = next(&mut socket).await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("huge"))
    );
    assert_eq!(error["payload"][0]["extensions"]["code"], "QUERY_TOO_LARGE");
    assert_eq!(open_subscriptions(&app).await, 0);
    app.stop().await;
}

/// The attack of #14: 1,000 subscribes on one socket, as fast as it takes them. At most the
/// cap (20) is held, every other subscribe gets TOO_MANY_SUBSCRIPTIONS or RATE_LIMITED, and the
/// 20 still get their events.
#[tokio::test]
async fn a_thousand_subscribes_on_one_socket_hold_at_most_the_cap() {
    let app = spawn_with(in_memory()).await;
    let mut socket = socket(&app).await;
    for i in 0..1000 {
        send(&mut socket, subscribe(&format!("s{i}"), EVENTS)).await;
    }
    let mut codes = Vec::new();
    for _ in 0..980 {
        let error = next(&mut socket).await;
        assert_eq!(error["type"], "error", "{error}");
        codes.push(
            error["payload"][0]["extensions"]["code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        codes
            .iter()
            .all(|code| code == "TOO_MANY_SUBSCRIPTIONS" || code == "RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|code| code == "TOO_MANY_SUBSCRIPTIONS"));
    assert!(
        codes.iter().any(|code| code == "RATE_LIMITED"),
        "sent faster than 50 a second"
    );
    wait_for_subscriptions(&app, 20).await;

    // The 20 still work.
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let next = next(&mut socket).await;
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(next["payload"]["data"]["bookEvents"]["bookName"], "Dune");
        ids.push(next["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(open_subscriptions(&app).await, 20);
    app.stop().await;
}

#[tokio::test]
async fn a_socket_over_its_message_rate_is_refused_and_nothing_it_asks_is_done() {
    let mut settings = in_memory();
    settings.api.max_messages_per_sec = 1;
    settings.api.message_burst = 3;
    let app = spawn_with(settings).await;
    let mut socket = socket(&app).await; // connection_init: one token
    send(&mut socket, json!({"type": "ping"})).await;
    send(&mut socket, json!({"type": "ping"})).await; // the burst is spent
    send(&mut socket, subscribe("s", EVENTS)).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    assert_eq!(next(&mut socket).await["type"], "pong");
    let refused = next(&mut socket).await;
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("s"))
    );
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    // No pong for the last ping, and no subscription.
    let quiet = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
    assert!(
        quiet.is_err(),
        "answered a message over the rate: {quiet:?}"
    );
    assert_eq!(open_subscriptions(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_over_long_subscription_id_closes_the_socket_with_4400_and_holds_nothing() {
    let app = spawn_with(in_memory()).await;
    for id in ["x".repeat(129), "a\u{7}b".to_owned()] {
        let mut socket = socket(&app).await;
        send(&mut socket, subscribe(&id, EVENTS)).await;
        let (code, reason) = closed(&mut socket).await;
        assert_eq!(u16::from(code), 4400);
        assert!(reason.contains("128 characters"), "{reason}");
    }
    assert_eq!(open_subscriptions(&app).await, 0);
    // The longest id is fine.
    let mut socket = socket(&app).await;
    send(&mut socket, subscribe(&"😀".repeat(128), EVENTS)).await;
    wait_for_subscriptions(&app, 1).await;
    app.stop().await;
}

/// The local schema refuses deep and complex subscriptions with the codes the AWS path gives
/// (`deep_complex_and_huge_subscriptions_are_refused_on_aws_with_the_local_codes`).
#[tokio::test]
async fn deep_and_complex_subscriptions_are_refused_on_the_socket_as_on_aws() {
    let app = spawn_with(in_memory()).await;
    let mut socket = socket(&app).await;
    let deep = format!(
        "subscription {{ bookEvents {{ {} eventId {} }} }}",
        "book { ".repeat(12),
        "}".repeat(12)
    );
    let fields: String = (0..60).map(|i| format!("a{i}: eventId ")).collect();
    let complex = format!(
        "subscription {{ bookEvents {{ {} }} }} fragment F on BookEvent {{ {fields} }}",
        "...F ".repeat(40)
    );
    for (id, query, words) in [
        ("deep", deep, "nested too deep"),
        ("complex", complex, "too complex"),
    ] {
        send(&mut socket, subscribe(id, &query)).await;
        let error = next(&mut socket).await;
        assert_eq!(
            (error["type"].as_str(), error["id"].as_str()),
            (Some("error"), Some(id))
        );
        assert_eq!(
            error["payload"][0]["extensions"]["code"],
            "GRAPHQL_VALIDATION_FAILED"
        );
        assert!(
            error["payload"][0]["message"]
                .as_str()
                .unwrap()
                .contains(words),
            "{error}"
        );
    }
    assert_eq!(open_subscriptions(&app).await, 0);
    app.stop().await;
}
