//! The API on AWS, against the moto emulator: the router over HTTP on the DynamoDB adapters,
//! and the `api` Lambda binary driven through the Lambda Runtime API with API Gateway events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::sync::Arc;

use api::dynamo::{DynamoActivityFeed, DynamoBookStore};
use domain::item;
use domain::{ActivityEntry, BookName, BookSnapshot, DetailType};
use serde_json::{Value, json};
use testing::moto;
use testing::runtime::{LambdaHarness, Outcome};

struct Tables {
    client: aws_sdk_dynamodb::Client,
    books: String,
    activity: String,
}

async fn tables(endpoint: &str) -> Tables {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(endpoint).await);
    let books = moto::unique("books");
    let activity = moto::unique("activity");
    testing::tables::create_books_table(&client, &books)
        .await
        .unwrap();
    testing::tables::create_activity_table(&client, &activity)
        .await
        .unwrap();
    Tables {
        client,
        books,
        activity,
    }
}

/// Serves the router on the DynamoDB adapters on a free port; returns its `/graphql` URL.
async fn serve(tables: &Tables) -> String {
    let books = Arc::new(DynamoBookStore::new(tables.client.clone(), &tables.books));
    let activity = Arc::new(DynamoActivityFeed::new(
        tables.client.clone(),
        &tables.activity,
    ));
    let app = api::router(api::build_schema(books, activity, api::EventHub::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/graphql")
}

async fn graphql(url: &str, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Pages through the connection `field` two at a time: the `key` of every node, in order,
/// until a page says it is the last.
async fn page_through(url: &str, field: &str, key: &str) -> Vec<String> {
    let query = format!(
        "query($after: String) {{ {field}(first: 2, after: $after) {{ edges {{ node {{ {key} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
    );
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let body = graphql(url, &query, json!({"after": after})).await;
        let page = &body["data"][field];
        seen.extend(
            page["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"][key].as_str().unwrap().to_owned()),
        );
        if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            return seen;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}

const ADD: &str =
    "mutation($input: AddBookInput!) { addBook(input: $input) { name authors publishedYear } }";

#[tokio::test]
async fn the_router_on_dynamodb_adds_conflicts_pages_gets_and_removes() {
    let endpoint = testing::emulator!();
    let tables = tables(&endpoint).await;
    let url = serve(&tables).await;

    let names = ["Dune", "Emma", "Beloved", "Ulysses", "Arcadia"];
    for (i, name) in names.iter().enumerate() {
        let body = graphql(
            &url,
            ADD,
            json!({"input": {"name": name, "authors": ["A", "B"], "publishedYear": 1900 + i}}),
        )
        .await;
        assert_eq!(body["data"]["addBook"]["name"], *name, "{body}");
    }
    let conflict = graphql(
        &url,
        ADD,
        json!({"input": {"name": "Dune", "authors": ["X"], "publishedYear": 2000}}),
    )
    .await;
    assert_eq!(code(&conflict), "CONFLICT", "{conflict}");
    let dune = graphql(
        &url,
        r#"{ book(name: "Dune") { authors publishedYear } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        dune["data"]["book"],
        json!({"authors": ["A", "B"], "publishedYear": 1900}),
        "the conflict changed nothing"
    );

    // Two at a time: every book exactly once, and the last page says so.
    let mut seen = page_through(&url, "books", "name").await;
    seen.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);

    let removed = graphql(
        &url,
        r#"mutation { removeBook(name: "Emma") { name publishedYear } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        removed["data"]["removeBook"],
        json!({"name": "Emma", "publishedYear": 1901})
    );
    let again = graphql(
        &url,
        r#"mutation { removeBook(name: "Emma") { name } }"#,
        json!({}),
    )
    .await;
    assert_eq!(code(&again), "NOT_FOUND", "{again}");
    let gone = graphql(&url, r#"{ book(name: "Emma") { name } }"#, json!({})).await;
    assert_eq!(gone["data"]["book"], Value::Null);
}

/// Three consumers' entries for each event, at the same time: all are listed (a table keyed by
/// the event id alone kept one), newest first, and paging (two a page) resumes between them.
#[tokio::test]
async fn the_activity_feed_on_dynamodb_is_newest_first_and_pages_every_consumers_entries() {
    let endpoint = testing::emulator!();
    let tables = tables(&endpoint).await;
    let url = serve(&tables).await;
    let start = chrono::Utc::now();
    for i in 0..5 {
        for consumer in ["book-added", "audit", "mailer"] {
            let entry = ActivityEntry {
                event_id: format!("event-{i}"),
                detail_type: DetailType::Added,
                consumer: consumer.into(),
                book: BookSnapshot::name_only(BookName::parse(&format!("Book {i}")).unwrap()),
                processed_at: start + chrono::Duration::seconds(i),
            };
            let item = item::activity_to_item(&entry).unwrap();
            tables
                .client
                .put_item()
                .table_name(&tables.activity)
                .set_item(Some(item.into()))
                .send()
                .await
                .unwrap();
        }
    }
    let seen = page_through(&url, "activity", "eventId").await;
    let expected: Vec<String> = (0..5)
        .rev()
        .flat_map(|i| std::iter::repeat_n(format!("event-{i}"), 3))
        .collect();
    assert_eq!(seen, expected);
    // Within one event and time, the position orders by consumer (newest first: descending).
    let consumers = page_through(&url, "activity", "consumer").await;
    assert_eq!(consumers[..3], ["mailer", "book-added", "audit"]);
}

/// An entry put as its item; `legacy` puts it as before the sharding, under the one `feed`
/// value every entry had then.
async fn put_entry(tables: &Tables, entry: &ActivityEntry, legacy: bool) {
    let mut item = item::activity_to_item(entry).unwrap();
    if legacy {
        item.insert(
            "feed".to_owned(),
            serde_dynamo::AttributeValue::S(item::ACTIVITY_FEED.to_owned()),
        );
    }
    tables
        .client
        .put_item()
        .table_name(&tables.activity)
        .set_item(Some(item.into()))
        .send()
        .await
        .unwrap();
}

/// The feed over its shards is the one ordered feed: many entries in every shard, several at
/// each time (two consumers of each event and three events a second), and entries from before
/// the sharding in the old partition, older than the rest. Paged through at several sizes,
/// every page continues where the last ended: no gap, no duplicate, newest first.
#[tokio::test]
async fn the_sharded_activity_feed_pages_as_one_ordered_feed() {
    use api::store::ActivityFeed as _;

    let endpoint = testing::emulator!();
    let tables = tables(&endpoint).await;
    let start = chrono::Utc::now();
    let mut expected = Vec::new();
    for i in 0..120 {
        let legacy = i < 12;
        for consumer in ["book-added", "audit"] {
            let entry = ActivityEntry {
                // Shaped like a stream record's eventID.
                event_id: format!("{:032x}", (i as u128 + 1) * 0x9e37_79b9_7f4a),
                detail_type: DetailType::Added,
                consumer: consumer.into(),
                book: BookSnapshot::name_only(BookName::parse(&format!("Book {i}")).unwrap()),
                processed_at: start + chrono::Duration::seconds(i / 3),
            };
            put_entry(&tables, &entry, legacy).await;
            expected.push(item::activity_position(&entry));
        }
    }
    expected.sort();
    expected.reverse();

    // Every shard holds entries, and the old partition its dozen events' entries.
    let scan = tables
        .client
        .scan()
        .table_name(&tables.activity)
        .send()
        .await
        .unwrap();
    let mut per_feed = std::collections::BTreeMap::<String, usize>::new();
    for item in scan.items() {
        let feed = item["feed"].as_s().unwrap().clone();
        *per_feed.entry(feed).or_default() += 1;
    }
    assert_eq!(
        per_feed.keys().cloned().collect::<Vec<_>>(),
        {
            let mut feeds: Vec<String> = item::activity_feeds().collect();
            feeds.sort();
            feeds
        },
        "{per_feed:?}"
    );
    assert_eq!(per_feed[item::ACTIVITY_FEED], 24);

    let feed = DynamoActivityFeed::new(tables.client.clone(), &tables.activity);
    for size in [5, 20, 100, 300] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = feed.list(size, after.as_deref()).await.unwrap();
            assert!(page.items.len() <= size);
            seen.extend(page.items.iter().map(|item| item.position.clone()));
            if !page.has_next_page {
                break;
            }
            assert_eq!(page.items.len(), size, "a page before the last is full");
            after = page.items.last().map(|item| item.position.clone());
        }
        assert_eq!(seen, expected, "pages of {size}");
    }
    assert!(matches!(
        feed.list(5, Some("nonsense")).await,
        Err(api::store::StoreError::InvalidPosition)
    ));
}

/// An HTTP API request as it reaches the api behind the template's authorizer, which granted
/// writes (the credential was the shared secret).
fn http_event(method: &str, stage: &str, path: &str, body: Option<Value>) -> Value {
    let mut event: Value =
        serde_json::from_str(include_str!("fixtures/http-api-request.json")).unwrap();
    event["requestContext"]["authorizer"] = json!({"lambda": {"write": true}});
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["stage"] = json!(stage);
    event["body"] = json!(body.map(|b| b.to_string()).unwrap_or_default());
    event
}

fn response_body(outcome: Outcome) -> (u16, String) {
    let Outcome::Response(response) = outcome else {
        panic!("{outcome:?}")
    };
    (
        response["statusCode"].as_u64().unwrap() as u16,
        response["body"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The `api` Lambda binary on these tables, under the Lambda Runtime API.
async fn api_lambda(tables: &Tables) -> LambdaHarness {
    let env = [
        ("TABLE_NAME", tables.books.as_str()),
        ("ACTIVITY_TABLE_NAME", tables.activity.as_str()),
    ];
    LambdaHarness::start(env!("CARGO_BIN_EXE_api"), "api", &env)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_api_lambda_serves_graphql_and_graphiql_behind_api_gateway() {
    let endpoint = testing::emulator!();
    let tables = tables(&endpoint).await;
    let mut lambda = api_lambda(&tables).await;

    let add = json!({"query": ADD, "variables": {"input": {"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965}}});
    let (status, body) = response_body(
        lambda
            .invoke(http_event("POST", "$default", "/graphql", Some(add)))
            .await
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["data"]["addBook"],
        json!({"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965})
    );
    let stored = tables
        .client
        .get_item()
        .table_name(&tables.books)
        .key(
            "name",
            aws_sdk_dynamodb::types::AttributeValue::S("Dune".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(
        stored.item.is_some(),
        "the Lambda wrote to the table it was configured with"
    );

    // Under a named stage, GraphQL answers at /<stage>/graphql and GraphiQL points there.
    let query = json!({"query": r#"{ book(name: "Dune") { publishedYear } }"#});
    let (status, body) = response_body(
        lambda
            .invoke(http_event("POST", "prod", "/prod/graphql", Some(query)))
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["data"]["book"]["publishedYear"].clone()
        ),
        (200, json!(1965))
    );
    let (status, html) = response_body(
        lambda
            .invoke(http_event("GET", "prod", "/prod/", None))
            .await
            .unwrap(),
    );
    assert_eq!(status, 200);
    assert!(
        html.contains(r#""endpoint":"/prod/graphql""#)
            && html.contains(r#""subscriptions":"/prod/graphql/ws""#),
        "{html}"
    );
    let (_, html) = response_body(
        lambda
            .invoke(http_event("GET", "$default", "/", None))
            .await
            .unwrap(),
    );
    assert!(html.contains(r#""endpoint":"/graphql""#), "{html}");
}

#[tokio::test]
async fn the_api_lambda_answers_the_standard_introspection_queries_and_refuses_abuse() {
    let endpoint = testing::emulator!();
    let tables = tables(&endpoint).await;
    let mut lambda = api_lambda(&tables).await;
    let mut ask = async |query: &str| {
        let event = http_event(
            "POST",
            "prod",
            "/prod/graphql",
            Some(json!({"query": query})),
        );
        let (status, body) = response_body(lambda.invoke(event).await.unwrap());
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    for (name, query) in testing::introspection::queries() {
        let (status, body) = ask(&query).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.get("errors").is_none(), "{name}: {body}");
        assert_eq!(
            body["data"]["__schema"]["mutationType"]["name"], "Mutation",
            "{name}"
        );
    }
    let (_, body) = ask(testing::introspection::TOO_DEEP).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn the_api_lambda_without_configuration_names_what_is_missing() {
    let _endpoint = testing::emulator!();
    let mut lambda = LambdaHarness::start(env!("CARGO_BIN_EXE_api"), "api", &[])
        .await
        .unwrap();
    let error = lambda
        .invoke(http_event("GET", "$default", "/health", None))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TABLE_NAME"), "{error}");
}
