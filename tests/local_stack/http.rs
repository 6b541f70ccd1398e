//! The API, the store, the stream, the processor, the bus and the consumers, as a user meets
//! them.

use std::collections::HashSet;

use crate::support::{error_code, quick_settings, spawn_app, spawn_with};
use outboxdemo::stack::Storage;
use serde_json::{Value, json};

#[tokio::test]
async fn books_can_be_added_read_paged_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;

    let dune = app.add_book("  Dune ", &["Frank Herbert"], 1965).await;
    assert_eq!(
        dune,
        json!({"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965})
    );
    for (name, year) in [
        ("Emma", 1815),
        ("Beloved", 1987),
        ("Ulysses", 1922),
        ("Arcadia", 1593),
    ] {
        app.add_book(name, &["Someone", "Someone Else"], year).await;
    }

    let book = app
        .data(
            r#"{ book(name: "Emma") { name authors publishedYear } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        book["book"],
        json!({"name": "Emma", "authors": ["Someone", "Someone Else"], "publishedYear": 1815})
    );
    let missing = app
        .data(r#"{ book(name: "Nope") { name } }"#, json!({}))
        .await;
    assert_eq!(missing["book"], Value::Null);

    // Page through two at a time: every book once, in a stable order, with working cursors.
    let mut names = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let data = app
            .data(
                "query($after: String) { books(first: 2, after: $after) {
                    edges { cursor node { name } } pageInfo { hasNextPage hasPreviousPage endCursor } } }",
                json!({"after": after}),
            )
            .await;
        let books = &data["books"];
        let edges = books["edges"].as_array().unwrap();
        assert!(edges.len() <= 2);
        names.extend(
            edges
                .iter()
                .map(|e| e["node"]["name"].as_str().unwrap().to_owned()),
        );
        assert_eq!(
            books["pageInfo"]["endCursor"],
            edges.last().map_or(Value::Null, |e| e["cursor"].clone())
        );
        assert_eq!(books["pageInfo"]["hasPreviousPage"], json!(pages > 0));
        pages += 1;
        if !books["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = books["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["Arcadia", "Beloved", "Dune", "Emma", "Ulysses"]);

    let default_page = app
        .data("{ books { edges { node { name } } } }", json!({}))
        .await;
    assert_eq!(default_page["books"]["edges"].as_array().unwrap().len(), 5);

    let removed = app.remove_book("Emma").await;
    assert_eq!(
        removed,
        json!({"name": "Emma", "authors": ["Someone", "Someone Else"], "publishedYear": 1815})
    );
    let gone = app
        .data(r#"{ book(name: "Emma") { name } }"#, json!({}))
        .await;
    assert_eq!(gone["book"], Value::Null);

    // GraphQL over GET answers queries too.
    let response: Value = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", r#"{ book(name: "Dune") { publishedYear } }"#)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["data"]["book"]["publishedYear"], 1965);

    app.stop().await;
}

/// The catalogue's answers are cached (the embedded store tells when the catalogue changed):
/// while readers keep asking the very same queries, every read sent after a mutation was
/// answered sees that mutation, whatever the cache held.
#[tokio::test]
async fn a_catalogue_read_after_an_answered_mutation_sees_it_though_readers_keep_the_cache_warm() {
    const PAGE: &str = "{ books(first: 100) { edges { node { name } } } }";
    const ONE: &str = "query($name: String!) { book(name: $name) { name publishedYear } }";
    let app = std::sync::Arc::new(spawn_with(quick_settings(Storage::InMemory)).await);
    let names = |page: &Value| -> Vec<String> {
        page["books"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    app.data(PAGE, json!({})).await;
                    app.data(ONE, json!({"name": "Book 0"})).await;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..40 {
        let name = format!("Book {i}");
        app.add_book(&name, &["A"], 2000).await;
        assert!(names(&app.data(PAGE, json!({})).await).contains(&name));
        let one = app.data(ONE, json!({"name": "Book 0"})).await;
        assert_eq!(
            one["book"]["name"],
            if i % 2 == 0 {
                json!("Book 0")
            } else {
                Value::Null
            }
        );
        if i % 2 == 0 {
            // Removed again at once, then added back at the next step, so `book(name: "Book 0")`
            // changes at every step.
            app.remove_book("Book 0").await;
            assert_eq!(
                app.data(ONE, json!({"name": "Book 0"})).await["book"],
                Value::Null
            );
            assert!(!names(&app.data(PAGE, json!({})).await).contains(&"Book 0".to_owned()));
        } else {
            app.add_book("Book 0", &["A"], 2000).await;
            assert_eq!(
                app.data(ONE, json!({"name": "Book 0"})).await["book"]["name"],
                "Book 0"
            );
        }
        assert!(names(&app.data(PAGE, json!({})).await).contains(&name) || name == "Book 0");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
}

#[tokio::test]
async fn every_error_has_a_stable_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;

    let add = "mutation($input: AddBookInput!) { addBook(input: $input) { name } }";
    for (input, field) in [
        (
            json!({"name": " ", "authors": ["A"], "publishedYear": 2000}),
            "input.name",
        ),
        (
            json!({"name": "x".repeat(201), "authors": ["A"], "publishedYear": 2000}),
            "input.name",
        ),
        (
            json!({"name": "New", "authors": [], "publishedYear": 2000}),
            "input.authors",
        ),
        (
            json!({"name": "New", "authors": ["A", ""], "publishedYear": 2000}),
            "input.authors",
        ),
        (
            json!({"name": "New", "authors": ["A"], "publishedYear": 99999}),
            "input.publishedYear",
        ),
    ] {
        let body = app.graphql(add, json!({"input": input})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
        assert_eq!(body["data"], Value::Null);
    }

    // A taken name is a conflict, and the stored book is left as it was.
    let body = app
        .graphql(
            add,
            json!({"input": {"name": "Dune", "authors": ["Someone Else"], "publishedYear": 2000}}),
        )
        .await;
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    let dune = app
        .data(
            r#"{ book(name: "Dune") { authors publishedYear } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        dune["book"],
        json!({"authors": ["Frank Herbert"], "publishedYear": 1965})
    );

    let body = app
        .graphql(
            r#"mutation { removeBook(name: "Nope") { name } }"#,
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Nope")
    );

    for query in [
        "{ books(first: 101) { edges { cursor } } }",
        "{ books(first: -1) { edges { cursor } } }",
        r#"{ books(after: "bm90IGEgY3Vyc29y") { edges { cursor } } }"#,
        r#"{ activity(after: "garbage!") { edges { cursor } } }"#,
    ] {
        let body = app.graphql(query, json!({})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{query}: {body}");
    }

    // A books cursor is not an activity cursor.
    let books = app.data("{ books { edges { cursor } } }", json!({})).await;
    let cursor = books["books"]["edges"][0]["cursor"].clone();
    let body = app
        .graphql(
            "query($after: String) { activity(after: $after) { edges { cursor } } }",
            json!({"after": cursor}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    let body = app.graphql("{ books(", json!({})).await;
    assert_eq!(error_code(&body), "GRAPHQL_PARSE_FAILED", "{body}");
    let body = app.graphql("{ shelves { name } }", json!({})).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");

    // Only the one book, and only its one INSERT, went downstream.
    let activity = app.wait_for_activity(1).await;
    assert_eq!(activity.len(), 1, "{activity:?}");
    app.stop().await;
}

#[tokio::test]
async fn consumers_react_to_committed_changes_and_everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    app.add_book("Emma", &["Jane Austen"], 1815).await;
    app.add_book("Ulysses", &["James Joyce"], 1922).await;
    app.remove_book("Emma").await;

    let activity = app.wait_for_activity(4).await;
    // Each consumer has its own queue, so the feed interleaves them freely, even for one
    // book (as on AWS, where EventBridge keeps no order between targets): what holds is which
    // consumer handled which event of which book.
    let mut per_book: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
    for entry in activity.iter().rev() {
        per_book
            .entry(entry["bookName"].as_str().unwrap())
            .or_default()
            .push((
                entry["eventType"].as_str().unwrap(),
                entry["consumer"].as_str().unwrap(),
            ));
    }
    per_book
        .values_mut()
        .for_each(|events| events.sort_unstable());
    assert_eq!(
        per_book,
        std::collections::BTreeMap::from([
            ("Dune", vec![("ADDED", "book-added")]),
            (
                "Emma",
                vec![("ADDED", "book-added"), ("REMOVED", "book-removed")]
            ),
            ("Ulysses", vec![("ADDED", "book-added")]),
        ])
    );
    let removal = activity
        .iter()
        .find(|e| e["eventType"] == "REMOVED")
        .unwrap();
    assert_eq!(
        removal["book"],
        json!({"name": "Emma", "authors": ["Jane Austen"], "publishedYear": 1815})
    );
    let event_ids: HashSet<String> = activity
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(event_ids.len(), 4);
    app.stop().await;

    // Start again on the same data directory: the books and the activity are still there, and
    // nothing is redelivered as a second activity entry.
    let app = spawn_app(dir.path()).await;
    let books = app
        .data("{ books { edges { node { name } } } }", json!({}))
        .await;
    assert_eq!(
        books["books"]["edges"],
        json!([{"node": {"name": "Dune"}}, {"node": {"name": "Ulysses"}}])
    );
    app.add_book("Beloved", &["Toni Morrison"], 1987).await;
    let after_restart = app.wait_for_activity(5).await;
    assert_eq!(after_restart.len(), 5);
    assert_eq!(after_restart[0]["bookName"], "Beloved");
    assert_eq!(&after_restart[1..], &activity[..]);
    app.stop().await;
}

#[tokio::test]
async fn health_and_graphiql_are_served() {
    let app = spawn_with(quick_settings(outboxdemo::stack::Storage::InMemory)).await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok", "subscriptions": 0})
    );

    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("graphiql") && html.contains("/graphql"),
        "{html}"
    );
    app.stop().await;
}

#[tokio::test]
async fn graphql_over_http_status_codes_follow_the_spec() {
    let app = spawn_with(quick_settings(outboxdemo::stack::Storage::InMemory)).await;

    // GET is for queries: a mutation over GET is refused and changes nothing.
    let response = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", r#"mutation { addBook(input: {name: "Dune", authors: ["F"], publishedYear: 1965}) { name } }"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let books = app.data("{ books { edges { cursor } } }", json!({})).await;
    assert_eq!(books["books"]["edges"], json!([]));

    // A POST body that is not JSON is refused with a clear status.
    let response = app
        .client
        .post(app.url("/graphql"))
        .body("{ books { edges { cursor } } }")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // A client that accepts application/graphql-response+json learns from the status that the
    // request failed before execution; with application/json it is always 200.
    for (accept, status, has_data) in [
        ("application/graphql-response+json", 400, false),
        ("application/json", 200, true),
    ] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("accept", accept)
            .json(&json!({"query": "{ books("}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{accept}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(accept)
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body.get("data").is_some(), has_data, "{body}");
        assert_eq!(error_code(&body), "GRAPHQL_PARSE_FAILED");
    }
    // Field errors are still 200: the request was fine, the book was not there.
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({"query": r#"mutation { removeBook(name: "Nope") { name } }"#}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_websocket_from_another_origin_is_refused_and_messages_are_held_to_the_body_limit() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

    let app = spawn_with(quick_settings(outboxdemo::stack::Storage::InMemory)).await;
    let url = format!("ws://{}/graphql/ws", app.address);
    let request = |origin: Option<&str>| {
        let mut request = url.as_str().into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        if let Some(origin) = origin {
            headers.insert("origin", origin.parse().unwrap());
        }
        request
    };

    // A page elsewhere (any site the developer visits) cannot open the socket.
    match tokio_tungstenite::connect_async(request(Some("http://evil.example"))).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a cross-origin handshake was not refused: {other:?}"),
    }
    // This server's own page (GraphiQL) and clients that send no Origin can.
    let own = format!("http://{}", app.address);
    let (mut socket, _) = tokio_tungstenite::connect_async(request(Some(&own)))
        .await
        .unwrap();
    socket
        .send(Message::text(r#"{"type":"connection_init"}"#))
        .await
        .unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    let (mut plain, _) = tokio_tungstenite::connect_async(request(None))
        .await
        .unwrap();

    // A message over the body limit (64 KiB) ends the connection rather than being read.
    let big = format!(
        r#"{{"type":"ping","payload":{{"x":"{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    let _ = plain.send(Message::text(big)).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match plain.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection outlived an oversized message"
    );
    app.stop().await;
}
