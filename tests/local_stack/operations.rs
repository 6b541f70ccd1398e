//! What operators rely on: fault injection with nothing lost or doubled, dead letters that can
//! be inspected and redriven, limits that answer with clear errors, and the optional credential.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{
    TestApp, error_code, next, open_subscriptions, quick_settings, send, socket, spawn_with,
    subscribe,
};
use outboxdemo::faults::Faults;
use outboxdemo::stack::Storage;
use serde_json::{Value, json};

async fn dead_letters(app: &TestApp) -> Vec<Value> {
    let data = app
        .data(
            "{ deadLetters(first: 100) { source id target eventId reason attempts } }",
            json!({}),
        )
        .await;
    data["deadLetters"].as_array().unwrap().clone()
}

async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn with_faults_injected_every_change_is_delivered_once_and_the_poison_is_set_aside() {
    let mut settings = quick_settings(Storage::InMemory);
    settings.faults = Faults {
        publish_failure_rate: 0.3,
        delivery_failure_rate: 0.3,
        poison: Some("Poison".into()),
    };
    // Enough delivery tries that a 30% failure rate does not exhaust them (0.3^30). The stream
    // retries a refused publish for as long as it keeps the record (24 h), and sets the poison,
    // which no retry can map, aside at once.
    settings.delivery.max_attempts = 30;
    let app = spawn_with(settings).await;
    let mut subscriber = socket(&app).await;
    send(
        &mut subscriber,
        subscribe(
            "all",
            "subscription { bookEvents { eventId type bookName } }",
        ),
    )
    .await;
    eventually(|| async { open_subscriptions(&app).await == 1 }).await;

    let mut expected = 0;
    // The changes in commit order, as a subscriber must see them: the poison never becomes an
    // event.
    let mut changes = Vec::new();
    for i in 0..15 {
        let name = format!("Book {i}");
        app.add_book(&name, &["A"], 2000).await;
        expected += 1;
        changes.push(("ADDED", name.clone()));
        if i == 5 {
            app.add_book("Poison", &["A"], 2000).await;
        }
        if i % 3 == 0 {
            app.remove_book(&name).await;
            expected += 1;
            changes.push(("REMOVED", name));
        }
    }
    // Publishes that fail after the bus took some or all of their events are offered again:
    // the subscriber still gets each change once, in commit order.
    let mut seen = Vec::new();
    while seen.len() < changes.len() {
        let message = next(&mut subscriber).await;
        assert_eq!(message["type"], "next", "{message}");
        let event = &message["payload"]["data"]["bookEvents"];
        seen.push((
            event["type"].as_str().unwrap().to_owned(),
            event["bookName"].as_str().unwrap().to_owned(),
        ));
    }
    let changes: Vec<(String, String)> = changes
        .into_iter()
        .map(|(kind, name)| (kind.to_owned(), name))
        .collect();
    assert_eq!(seen, changes);
    let activity = app.wait_for_activity(expected).await;
    assert_eq!(
        activity.len(),
        expected,
        "every change but the poison, exactly once"
    );
    // Every retried publish is over by now: nothing more reached the subscriber.
    let more = tokio::time::timeout(Duration::from_millis(200), next(&mut subscriber)).await;
    assert!(
        more.is_err(),
        "a change reached the subscriber twice: {more:?}"
    );
    let mut per_event: HashMap<&str, usize> = HashMap::new();
    for entry in &activity {
        *per_event
            .entry(entry["eventId"].as_str().unwrap())
            .or_default() += 1;
        assert_ne!(entry["bookName"], "Poison");
    }
    assert!(per_event.values().all(|n| *n == 1));
    let names: Vec<&str> = activity
        .iter()
        .map(|e| e["bookName"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Book 14"),
        "the stream went on past the poison"
    );

    eventually(|| async { !dead_letters(&app).await.is_empty() }).await;
    let letters = dead_letters(&app).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["source"], "STREAM");
    assert_eq!(letters[0]["attempts"], 1);
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "fault test: 30% of publishes and deliveries failing, 1 poison book: {} changes delivered exactly once, 0 lost, 0 duplicated, {} dead letter (the poison, set aside whole at once)",
        activity.len(),
        letters.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_can_be_inspected_and_redriven_into_a_running_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = quick_settings(Storage::Dir(dir.path().to_owned()));
    settings.faults = Faults {
        publish_failure_rate: 0.0,
        delivery_failure_rate: 1.0, // every consumer delivery fails: the bus dead-letters them
        poison: Some("Poison".into()),
    };
    let app = spawn_with(settings).await;
    app.add_book("Poison", &["A"], 2000).await;
    app.add_book("Fine", &["B"], 2001).await;
    eventually(|| async { dead_letters(&app).await.len() == 2 }).await;
    let letters = dead_letters(&app).await;
    let summary: Vec<(&str, Option<&str>)> = letters
        .iter()
        .map(|l| (l["source"].as_str().unwrap(), l["target"].as_str()))
        .collect();
    assert!(summary.contains(&("STREAM", None)), "{letters:?}");
    assert!(
        summary.contains(&("BUS", Some("book-added"))),
        "{letters:?}"
    );
    let attempts = |source: &str| {
        letters
            .iter()
            .find(|l| l["source"] == source)
            .map(|l| l["attempts"].clone())
    };
    assert_eq!(
        attempts("STREAM"),
        Some(json!(1)),
        "set aside at once: {letters:?}"
    );
    assert_eq!(attempts("BUS"), Some(json!(5)), "{letters:?}");
    let bus = letters.iter().find(|l| l["source"] == "BUS").unwrap();
    assert_eq!(
        bus["reason"], "DELIVERY_FAILED",
        "the target's error is logged, never sent"
    );
    assert!(app.activity().await.is_empty());
    app.stop().await;

    // The fault is fixed; with the stack running again, redrive everything.
    let app = spawn_with(quick_settings(Storage::Dir(dir.path().to_owned()))).await;
    outboxdemo::cli::dead_letters(outboxdemo::cli::DeadLetterCommand::Redrive {
        data: outboxdemo::stack::DataDir {
            data_dir: dir.path().to_owned(),
        },
        source: None,
        id: None,
    })
    .await
    .unwrap();
    let activity = app.wait_for_activity(2).await;
    let mut names: Vec<&str> = activity
        .iter()
        .map(|e| e["bookName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Fine", "Poison"]);
    assert!(dead_letters(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn limits_answer_with_clear_errors() {
    let mut settings = quick_settings(Storage::InMemory);
    settings.api.max_depth = 3;
    settings.api.max_complexity = 100;
    settings.api.max_body_bytes = 1024;
    let app = spawn_with(settings).await;

    let deep = app
        .graphql(
            "{ books { edges { node { name } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&deep), "GRAPHQL_VALIDATION_FAILED", "{deep}");
    assert!(
        deep["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{deep}"
    );

    let costly = app
        .graphql(
            "{ books(first: 100) { nodes { name authors } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&costly), "GRAPHQL_VALIDATION_FAILED", "{costly}");
    assert!(
        costly["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{costly}"
    );
    let cheap = app
        .graphql("{ books(first: 2) { nodes { name } } }", json!({}))
        .await;
    assert!(cheap.get("errors").is_none(), "{cheap}");

    let big = json!({"query": format!("{{ book(name: \"{}\") {{ name }} }}", "x".repeat(2000))});
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        error_code(&response.json::<Value>().await.unwrap()),
        "PAYLOAD_TOO_LARGE"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_standard_introspection_queries_pass_the_default_limits_and_abuse_does_not() {
    let app = spawn_with(quick_settings(Storage::InMemory)).await;
    let queries = testing::introspection::queries();
    assert!(queries.iter().any(|(name, _)| name == "every option"));
    for (name, query) in &queries {
        let body = app.graphql(query, json!({})).await;
        assert!(body.get("errors").is_none(), "{name}: {body}");
        assert_eq!(
            body["data"]["__schema"]["queryType"]["name"], "Query",
            "{name}"
        );
        if name == "schemaDescription: true" || name == "every option" {
            // This schema has no description; not graphql's own text for `__Schema`.
            assert_eq!(
                body["data"]["__schema"]["description"],
                Value::Null,
                "{name}"
            );
        }
    }

    let walk = app
        .graphql(testing::introspection::TOO_DEEP, json!({}))
        .await;
    assert_eq!(error_code(&walk), "GRAPHQL_VALIDATION_FAILED", "{walk}");
    assert_eq!(
        walk["errors"][0]["message"], "Query is nested too deep.",
        "{walk}"
    );
    // A chain of `ofType`s counts nothing, but the parser's recursion limit bounds it.
    let chain = format!(
        "{{ __type(name: \"Book\") {{ {}name{} }} }}",
        "ofType { ".repeat(40),
        " }".repeat(40)
    );
    let chained = app.graphql(&chain, json!({})).await;
    assert!(
        chained["errors"][0]["extensions"]["code"].is_string() && chained["data"].is_null(),
        "{chained}"
    );
    app.stop().await;
}

#[tokio::test]
async fn production_switches_turn_off_introspection_and_graphiql() {
    let mut settings = quick_settings(Storage::InMemory);
    settings.api.introspection = false;
    settings.api.graphiql = false;
    let app = spawn_with(settings).await;
    // Every introspection query a tool sends is refused, with a word why.
    let queries = testing::introspection::queries();
    let typename = ("__typename".to_owned(), "{ __typename }".to_owned());
    for (name, query) in queries.iter().chain([&typename]) {
        let body = app.graphql(query, json!({})).await;
        if name == "__typename" {
            assert_eq!(body["data"]["__typename"], "Query", "{body}");
            continue;
        }
        assert_eq!(
            error_code(&body),
            "GRAPHQL_VALIDATION_FAILED",
            "{name}: {body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("Introspection is turned off"),
            "{name}: {body}"
        );
        assert!(
            body.get("data").is_none_or(Value::is_null),
            "{name}: {body}"
        );
    }
    assert_eq!(
        app.client.get(app.url("/")).send().await.unwrap().status(),
        404
    );
    app.add_book("Dune", &["Frank Herbert"], 1965).await; // the API itself still works
    app.stop().await;
}

#[tokio::test]
async fn a_configured_token_guards_mutations_and_changes_nothing_without_it() {
    let mut settings = quick_settings(Storage::InMemory);
    settings.api.auth_token = Some("s3cret".into());
    let app = spawn_with(settings).await;
    let add = json!({"query": r#"mutation { addBook(input: {name: "Dune", authors: ["F"], publishedYear: 1965}) { name } }"#});

    for authorization in [None, Some("Bearer wrong"), Some("Basic s3cret")] {
        let mut request = app.client.post(app.url("/graphql")).json(&add);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let body: Value = request.send().await.unwrap().json().await.unwrap();
        assert_eq!(
            error_code(&body),
            "UNAUTHENTICATED",
            "{authorization:?}: {body}"
        );
    }
    let books = app.data("{ books { edges { cursor } } }", json!({})).await;
    assert_eq!(
        books["books"]["edges"],
        json!([]),
        "queries stay open, and nothing was added"
    );

    let body: Value = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", "Bearer s3cret")
        .json(&add)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["addBook"]["name"], "Dune", "{body}");
    app.stop().await;
}
