//! Subscriptions on AWS against the moto emulator and a recording Management API: the
//! `graphql-transport-ws` exchange through API Gateway WebSocket events, the notifier, both
//! Lambda binaries, and the whole path from a mutation to a subscriber's `next`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::sync::Arc;

use api::dynamo::{DynamoActivityFeed, DynamoBookStore};
use api::gateway::{self, ConnectionStore as _, DynamoConnectionStore, ManagementApi, Notified};
use api::limits::connection::{ConnectionLimits, MessageRate};
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::{Value, json};
use testing::management::RecordingManagementApi;
use testing::moto;
use testing::runtime::{LambdaHarness, Outcome};

struct Fixture {
    config: aws_config::SdkConfig,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    connections: DynamoConnectionStore,
    recorder: RecordingManagementApi,
    api: ManagementApi,
    schema: api::ApiSchema,
    limits: ConnectionLimits,
}

impl Fixture {
    async fn new(endpoint: &str) -> Self {
        let config = moto::sdk_config(endpoint).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let table = moto::unique("connections");
        testing::tables::create_connections_table(&dynamodb, &table)
            .await
            .unwrap();
        let recorder = RecordingManagementApi::start().await.unwrap();
        let api = ManagementApi::new(&config, &recorder.endpoint);
        Self {
            connections: DynamoConnectionStore::new(dynamodb.clone(), &table),
            config,
            dynamodb,
            table,
            recorder,
            api,
            schema: api::schema::subscription_schema(),
            limits: ConnectionLimits::default(),
        }
    }

    async fn send(&self, event: Value) -> Value {
        let request: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event).unwrap();
        let response = gateway::handle_message(
            request,
            &self.schema,
            &self.connections,
            &self.api,
            &self.limits,
        )
        .await
        .unwrap();
        serde_json::to_value(response).unwrap()
    }

    async fn rows(&self, connection_id: &str) -> Vec<String> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("connectionId = :id")
            .expression_attribute_values(
                ":id",
                aws_sdk_dynamodb::types::AttributeValue::S(connection_id.into()),
            )
            .send()
            .await
            .unwrap();
        output
            .items()
            .iter()
            .map(|row| row["sk"].as_s().unwrap().clone())
            .collect()
    }

    /// Connects, initialises and subscribes `connection` with `query`.
    async fn subscriber(&self, connection: &str, id: &str, query: &str) {
        self.send(route(connection, "$connect", None)).await;
        self.send(message(connection, json!({"type": "connection_init"})))
            .await;
        self.send(message(
            connection,
            json!({"type": "subscribe", "id": id, "payload": {"query": query}}),
        ))
        .await;
        assert_eq!(
            self.rows(connection).await.len(),
            2,
            "connection and subscription rows"
        );
    }
}

fn route(connection: &str, route_key: &str, body: Option<Value>) -> Value {
    let mut event: Value =
        serde_json::from_str(include_str!("fixtures/websocket-message.json")).unwrap();
    event["requestContext"]["connectionId"] = json!(connection);
    event["requestContext"]["routeKey"] = json!(route_key);
    event["requestContext"]["eventType"] = json!(match route_key {
        "$connect" => "CONNECT",
        "$disconnect" => "DISCONNECT",
        _ => "MESSAGE",
    });
    event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
    event
}

fn message(connection: &str, body: Value) -> Value {
    route(connection, "$default", Some(body))
}

fn bus_event(detail_type: &str, event_id: &str, data: Value) -> EventBridgeEvent<Value> {
    serde_json::from_value(json!({
        "version": "0", "id": "x", "detail-type": detail_type, "source": "outboxdemo.processor",
        "account": "123456789012", "time": "2024-05-01T12:00:01Z", "region": "us-east-1", "resources": [],
        "detail": {"metadata": {"eventId": event_id, "sequenceNumber": "1", "occurredAt": "2024-05-01T12:00:00Z", "version": 1}, "data": data}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_graphql_transport_ws_exchange_over_api_gateway() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;

    // $connect needs the subprotocol and answers with it.
    let mut refused = route("c0", "$connect", None);
    refused["headers"]["Sec-WebSocket-Protocol"] = json!("graphql-ws");
    assert_eq!(f.send(refused).await["statusCode"], 400);
    let connected = f.send(route("c1", "$connect", None)).await;
    assert_eq!(connected["statusCode"], 200);
    assert_eq!(
        connected["headers"]["sec-websocket-protocol"],
        "graphql-transport-ws"
    );

    // A subscribe before connection_init is unauthorised: the connection is closed.
    f.send(route("c2", "$connect", None)).await;
    f.send(message("c2", json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { bookAdded { name } }"}}))).await;
    assert_eq!(f.recorder.deleted(), ["c2"]);

    f.send(message(
        "c1",
        json!({"type": "connection_init", "payload": {}}),
    ))
    .await;
    f.send(message("c1", json!({"type": "ping"}))).await;
    assert_eq!(
        f.recorder.messages("c1"),
        [json!({"type": "connection_ack"}), json!({"type": "pong"})]
    );

    // An invalid document is answered with an error message for its id, and nothing is stored.
    f.send(message("c1", json!({"type": "subscribe", "id": "bad", "payload": {"query": "subscription { bookEvents { nope } }"}}))).await;
    let error = f.recorder.messages("c1").pop().unwrap();
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("bad")),
        "{error}"
    );
    assert_eq!(
        error["payload"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    // So is a query: only subscriptions are served over this socket.
    f.send(message("c1", json!({"type": "subscribe", "id": "q", "payload": {"query": "{ books { edges { cursor } } }"}}))).await;
    assert_eq!(
        f.recorder.messages("c1").pop().unwrap()["payload"][0]["extensions"]["code"],
        "BAD_REQUEST"
    );
    assert_eq!(f.rows("c1").await, ["connection"]);

    let subscribe = json!({"type": "subscribe", "id": "s1", "payload": {"query": "subscription($t: [BookEventType!]) { bookEvents(types: $t) { type } }", "variables": {"t": ["ADDED"]}}});
    f.send(message("c1", subscribe.clone())).await;
    assert_eq!(f.rows("c1").await, ["connection", "sub#s1"]);
    let stored = f.connections.subscriptions(10).await.unwrap();
    let mine = stored.iter().find(|s| s.connection_id == "c1").unwrap();
    assert_eq!(mine.variables, json!({"t": ["ADDED"]}));

    // complete removes one subscription; a duplicate id closes the connection (4409).
    f.send(message("c1", json!({"type": "complete", "id": "s1"})))
        .await;
    assert_eq!(f.rows("c1").await, ["connection"]);
    f.send(message("c1", subscribe.clone())).await;
    f.send(message("c1", subscribe)).await;
    assert_eq!(f.recorder.deleted(), ["c2", "c1"]);

    // $disconnect removes everything the connection had.
    f.send(route("c1", "$disconnect", None)).await;
    assert!(f.rows("c1").await.is_empty());
    // A second connection_init is a protocol error (4429).
    f.send(route("c3", "$connect", None)).await;
    f.send(message("c3", json!({"type": "connection_init"})))
        .await;
    f.send(message("c3", json!({"type": "connection_init"})))
        .await;
    assert_eq!(f.recorder.deleted().last().map(String::as_str), Some("c3"));
    // Garbage closes the connection too, and never errors the Lambda.
    f.send(route("c4", "$connect", None)).await;
    let response = f
        .send(route("c4", "$default", Some(json!("not a message"))))
        .await;
    assert_eq!(response["statusCode"], 200);
    assert_eq!(f.recorder.deleted().last().map(String::as_str), Some("c4"));
}

#[tokio::test]
async fn the_notifier_sends_the_right_payloads_to_the_right_subscribers_and_drops_gone_ones() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    f.subscriber(
        "added",
        "a",
        "subscription { bookEvents(types: [ADDED]) { eventId type book { name publishedYear } } }",
    )
    .await;
    f.subscriber(
        "removed",
        "r",
        "subscription { bookRemoved { name authors } }",
    )
    .await;
    f.subscriber("gone", "g", "subscription { bookEvents { type } }")
        .await;
    f.recorder.make_gone("gone");

    let dune = json!({"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965});
    let notified = gateway::notify(
        bus_event("outboxdemo.added", "e1", dune.clone()),
        &f.schema,
        &f.connections,
        &f.api,
    )
    .await
    .unwrap();
    assert_eq!(
        notified,
        Notified {
            sent: 1,
            gone: 1,
            failed: 0
        }
    );
    assert_eq!(
        f.recorder.messages("added").last().unwrap(),
        &json!({"type": "next", "id": "a", "payload": {"data": {"bookEvents": {"eventId": "e1", "type": "ADDED", "book": {"name": "Dune", "publishedYear": 1965}}}}})
    );
    assert!(
        f.rows("gone").await.is_empty(),
        "a gone connection is removed"
    );

    let notified = gateway::notify(
        bus_event("outboxdemo.removed", "e2", dune),
        &f.schema,
        &f.connections,
        &f.api,
    )
    .await
    .unwrap();
    assert_eq!(
        notified,
        Notified {
            sent: 1,
            gone: 0,
            failed: 0
        }
    );
    assert_eq!(
        f.recorder.messages("removed").last().unwrap(),
        &json!({"type": "next", "id": "r", "payload": {"data": {"bookRemoved": {"name": "Dune", "authors": ["Frank Herbert"]}}}})
    );
    assert_eq!(
        f.recorder.messages("added").len(),
        2,
        "ack and one next: the filter kept the removal out"
    );

    let malformed = bus_event("outboxdemo.added", "e3", json!({"name": ""}));
    assert!(
        gateway::notify(malformed, &f.schema, &f.connections, &f.api)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_subscriptions_and_notifier_lambdas_run_for_real() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    let env = [
        ("CONNECTIONS_TABLE_NAME", f.table.as_str()),
        ("WEBSOCKET_ENDPOINT", f.recorder.endpoint.as_str()),
    ];
    let mut subscriptions =
        LambdaHarness::start(env!("CARGO_BIN_EXE_subscriptions"), "subscriptions", &env)
            .await
            .unwrap();
    let mut notifier = LambdaHarness::start(env!("CARGO_BIN_EXE_notifier"), "notifier", &env)
        .await
        .unwrap();

    let Outcome::Response(connected) = subscriptions
        .invoke(route("l1", "$connect", None))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(connected["statusCode"], 200);
    for body in [
        json!({"type": "connection_init"}),
        json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { bookAdded { name } }"}}),
    ] {
        let Outcome::Response(response) = subscriptions.invoke(message("l1", body)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(response["statusCode"], 200);
    }
    let event = serde_json::to_value(bus_event(
        "outboxdemo.added",
        "e1",
        json!({"name": "Emma", "authors": ["Jane Austen"], "publishedYear": 1815}),
    ))
    .unwrap();
    assert_eq!(
        notifier.invoke(event).await.unwrap(),
        Outcome::Response(json!({"sent": 1, "gone": 0, "failed": 0}))
    );
    assert_eq!(
        f.recorder.messages("l1"),
        [
            json!({"type": "connection_ack"}),
            json!({"type": "next", "id": "1", "payload": {"data": {"bookAdded": {"name": "Emma"}}}})
        ]
    );
}

#[tokio::test]
async fn a_mutation_reaches_a_websocket_subscriber_through_stream_processor_bus_and_notifier() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    f.subscriber(
        "w1",
        "live",
        "subscription { bookEvents { type bookName } }",
    )
    .await;

    // The api router on DynamoDB takes the mutation.
    let books = moto::unique("books");
    let activity = moto::unique("activity");
    let stream_arn = testing::tables::create_books_table(&f.dynamodb, &books)
        .await
        .unwrap();
    testing::tables::create_activity_table(&f.dynamodb, &activity)
        .await
        .unwrap();
    let schema = api::build_schema(
        Arc::new(DynamoBookStore::new(f.dynamodb.clone(), &books)),
        Arc::new(DynamoActivityFeed::new(f.dynamodb.clone(), &activity)),
        api::EventHub::default(),
    );
    let added = schema
        .execute(r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#)
        .await;
    assert!(added.errors.is_empty(), "{added:?}");

    // The stream, read back as the processor's Lambda event, goes to a bus whose rule is the
    // template's NotifierRule, targeting a queue that stands in for the notifier's invocation.
    let streams = aws_sdk_dynamodbstreams::Client::new(&f.config);
    let records = testing::streams::read_records(&streams, &stream_arn)
        .await
        .unwrap();
    let bus = testing::bus::TemplateBus::create(&f.config, &["NotifierRule"])
        .await
        .unwrap();
    let publisher = processor::EventBridgePublisher::new(bus.events.clone(), &bus.name);
    let event = serde_json::from_value(testing::streams::lambda_event(records)).unwrap();
    let response = processor::handle_batch(event, &publisher, &NoPoison).await;
    assert!(response.batch_item_failures.is_empty());
    let delivered = bus.delivered("NotifierRule").await.unwrap();
    assert_eq!(delivered.len(), 1);

    let mut bus_event = delivered[0].clone();
    bus_event["time"] = json!("2024-05-01T12:00:01Z"); // moto writes epoch seconds here
    let notified = gateway::notify(
        serde_json::from_value(bus_event).unwrap(),
        &f.schema,
        &f.connections,
        &f.api,
    )
    .await
    .unwrap();
    assert_eq!(notified.sent, 1);
    assert_eq!(
        f.recorder.messages("w1").last().unwrap(),
        &json!({"type": "next", "id": "live", "payload": {"data": {"bookEvents": {"type": "ADDED", "bookName": "Dune"}}}})
    );
}

/// A poison queue for batches in which every record maps.
struct NoPoison;

#[async_trait::async_trait]
impl processor::PoisonRecords for NoPoison {
    async fn set_aside(
        &self,
        record: &aws_lambda_events::dynamodb::EventRecord,
        reason: &str,
    ) -> Result<(), processor::SetAsideError> {
        panic!("{} set aside: {reason}", record.event_id)
    }
}

const EVENTS: &str = "subscription { bookEvents { eventId type } }";

fn subscribe(id: &str, query: &str) -> Value {
    json!({"type": "subscribe", "id": id, "payload": {"query": query}})
}

impl Fixture {
    /// Connects and initialises `connection`.
    async fn initialized(&self, connection: &str) {
        self.send(route(connection, "$connect", None)).await;
        self.send(message(connection, json!({"type": "connection_init"})))
            .await;
    }

    /// The ids of the subscriptions stored for `connection`.
    async fn stored(&self, connection: &str) -> Vec<String> {
        self.rows(connection)
            .await
            .into_iter()
            .filter_map(|sk| sk.strip_prefix("sub#").map(str::to_owned))
            .collect()
    }

    /// The codes of the `error` messages `connection` was sent.
    fn error_codes(&self, connection: &str) -> Vec<String> {
        self.recorder
            .messages(connection)
            .iter()
            .filter(|m| m["type"] == "error")
            .map(|m| {
                m["payload"][0]["extensions"]["code"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

/// The attack of #14: one anonymous connection sends 1,000 subscribes. At most the cap (20,
/// as locally) is stored, the counter on the connection row says so, every other subscribe is
/// refused with TOO_MANY_SUBSCRIPTIONS or RATE_LIMITED, and the 20 still get their events; a
/// `complete` frees a place.
#[tokio::test]
async fn a_thousand_subscribes_on_one_connection_store_at_most_the_cap() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    f.initialized("c1").await;
    for i in 0..1000 {
        f.send(message("c1", subscribe(&format!("s{i}"), EVENTS)))
            .await;
    }
    assert_eq!(f.stored("c1").await.len(), 20);
    let codes = f.error_codes("c1");
    assert_eq!(codes.len(), 980, "every other subscribe is answered");
    assert!(
        codes
            .iter()
            .all(|code| code == "TOO_MANY_SUBSCRIPTIONS" || code == "RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|code| code == "TOO_MANY_SUBSCRIPTIONS"));
    assert!(f.recorder.deleted().is_empty(), "the connection stays open");

    // The 20 still work.
    let dune = json!({"name": "Dune", "authors": ["Frank Herbert"], "publishedYear": 1965});
    let notified = gateway::notify(
        bus_event("outboxdemo.added", "e1", dune),
        &f.schema,
        &f.connections,
        &f.api,
    )
    .await
    .unwrap();
    assert_eq!(notified.sent, 20);

    // complete frees a place (the counter goes down with the row), and only one.
    let first = f.stored("c1").await[0].clone();
    f.send(message("c1", json!({"type": "complete", "id": first})))
        .await;
    f.send(message("c1", json!({"type": "complete", "id": first})))
        .await;
    f.send(message("c1", subscribe("again", EVENTS))).await;
    f.send(message("c1", subscribe("more", EVENTS))).await;
    let stored = f.stored("c1").await;
    assert_eq!(stored.len(), 20);
    assert!(stored.contains(&"again".to_owned()));
    assert_eq!(
        f.error_codes("c1").last().map(String::as_str),
        Some("TOO_MANY_SUBSCRIPTIONS")
    );
}

/// A connection over its message rate gets RATE_LIMITED for a subscribe and nothing for other
/// messages, and nothing it asked is done.
#[tokio::test]
async fn a_connection_over_its_rate_is_refused_and_nothing_it_asks_is_done() {
    let endpoint = testing::emulator!();
    let mut f = Fixture::new(&endpoint).await;
    f.limits = ConnectionLimits {
        rate: MessageRate {
            per_sec: 1,
            burst: 3,
        },
        ..ConnectionLimits::default()
    };
    f.initialized("c1").await; // one token
    f.send(message("c1", json!({"type": "ping"}))).await;
    f.send(message("c1", json!({"type": "ping"}))).await; // the burst is spent
    f.send(message("c1", subscribe("s", EVENTS))).await;
    f.send(message("c1", json!({"type": "ping"}))).await;
    let messages = f.recorder.messages("c1");
    assert_eq!(
        messages[..3],
        [
            json!({"type": "connection_ack"}),
            json!({"type": "pong"}),
            json!({"type": "pong"})
        ]
    );
    assert_eq!(messages.len(), 4, "no pong for the ping over the rate");
    assert_eq!(messages[3]["id"], "s");
    assert_eq!(
        messages[3]["payload"][0]["extensions"]["code"],
        "RATE_LIMITED"
    );
    assert!(f.stored("c1").await.is_empty());
}

/// An id longer than 128 characters (or with control characters) closes the connection, as a
/// message the protocol cannot accept, and stores nothing; one past DynamoDB's key size does not
/// fail the Lambda. The longest id, in 4-byte characters, fits the sort key.
#[tokio::test]
async fn an_over_long_subscription_id_closes_the_connection_and_stores_nothing() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    for (connection, id) in [
        ("c1", "x".repeat(129)),
        ("c2", "x".repeat(2000)),
        ("c3", "a\u{7}b".to_owned()),
    ] {
        f.initialized(connection).await;
        let response = f.send(message(connection, subscribe(&id, EVENTS))).await;
        assert_eq!(response["statusCode"], 200);
        assert_eq!(
            f.recorder.deleted().last().map(String::as_str),
            Some(connection)
        );
        assert!(f.stored(connection).await.is_empty());
    }
    let widest = "😀".repeat(128);
    f.initialized("c4").await;
    f.send(message("c4", subscribe(&widest, EVENTS))).await;
    assert_eq!(f.stored("c4").await, [widest]);
}

/// The AWS subscription schema has the local limits: too deep, too complex and too long
/// documents are refused with the local codes, and nothing is stored.
#[tokio::test]
async fn deep_complex_and_huge_subscriptions_are_refused_on_aws_with_the_local_codes() {
    let endpoint = testing::emulator!();
    let f = Fixture::new(&endpoint).await;
    f.initialized("c1").await;
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
    let huge = format!(
        "# {}\nsubscription {{ bookEvents {{ eventId }} }}",
        "x".repeat(16 * 1024)
    );
    for (id, query, code, words) in [
        ("deep", deep, "GRAPHQL_VALIDATION_FAILED", "nested too deep"),
        (
            "complex",
            complex,
            "GRAPHQL_VALIDATION_FAILED",
            "too complex",
        ),
        (
            "huge",
            huge,
            "QUERY_TOO_LARGE",
            "longer than the 16384 bytes",
        ),
    ] {
        f.send(message("c1", subscribe(id, &query))).await;
        let error = f.recorder.messages("c1").pop().unwrap();
        assert_eq!(
            (error["type"].as_str(), error["id"].as_str()),
            (Some("error"), Some(id))
        );
        assert_eq!(error["payload"][0]["extensions"]["code"], code, "{error}");
        let message = error["payload"][0]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
    }
    assert!(f.stored("c1").await.is_empty());
}
