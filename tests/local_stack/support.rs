//! The one way these tests start the local stack: on port 0, over real HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use outboxdemo::stack::{self, Settings, Storage};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running local stack.
pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings with short retry waits, so failure paths finish quickly.
pub fn quick_settings(storage: Storage) -> Settings {
    let mut settings = Settings::new(storage);
    settings.reader.first_backoff = Duration::from_millis(5);
    settings.reader.max_backoff = Duration::from_millis(50);
    settings.delivery.first_backoff = Duration::from_millis(5);
    settings.delivery.max_backoff = Duration::from_millis(50);
    settings
}

pub async fn spawn_app(data_dir: &Path) -> TestApp {
    spawn_with(quick_settings(Storage::Dir(data_dir.to_owned()))).await
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stack::run(listener, settings, async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// POSTs a GraphQL request and returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    /// Like [`TestApp::graphql`], asserting there are no errors and returning `data`.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let body = self.graphql(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    pub async fn add_book(&self, name: &str, authors: &[&str], year: i32) -> Value {
        self.data(
            "mutation($input: AddBookInput!) { addBook(input: $input) { name authors publishedYear } }",
            json!({"input": {"name": name, "authors": authors, "publishedYear": year}}),
        )
        .await["addBook"]
            .clone()
    }

    pub async fn remove_book(&self, name: &str) -> Value {
        self.data(
            "mutation($name: String!) { removeBook(name: $name) { name authors publishedYear } }",
            json!({"name": name}),
        )
        .await["removeBook"]
            .clone()
    }

    /// Every activity entry, newest first, read a page at a time.
    pub async fn activity(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after = Value::Null;
        loop {
            let data = self
                .data(
                    "query($after: String) { activity(first: 7, after: $after) {
                        edges { node { eventId eventType consumer bookName book { name authors publishedYear } processedAt } }
                        pageInfo { hasNextPage endCursor } } }",
                    json!({"after": after}),
                )
                .await;
            let connection = &data["activity"];
            entries.extend(
                connection["edges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["node"].clone()),
            );
            if !connection["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                return entries;
            }
            after = connection["pageInfo"]["endCursor"].clone();
        }
    }

    /// Polls the activity feed until it holds `count` entries (or fails after a deadline).
    pub async fn wait_for_activity(&self, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let entries = self.activity().await;
            if entries.len() >= count || tokio::time::Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the stack the way Ctrl-C does and waits until it has let go of its data.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// The `extensions.code` of the first error of a response.
pub fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A WebSocket client of the local stack.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `graphql-transport-ws` socket on `app`, initialised.
pub async fn socket(app: &TestApp) -> Socket {
    let mut request = format!("ws://{}/graphql/ws", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(&mut socket, json!({"type": "connection_init"})).await;
    assert_eq!(next(&mut socket).await["type"], "connection_ack");
    socket
}

pub async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

pub fn subscribe(id: &str, query: &str) -> Value {
    json!({"type": "subscribe", "id": id, "payload": {"query": query}})
}

/// The next protocol message (pings answered on the way), within a few seconds.
pub async fn next(socket: &mut Socket) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await.unwrap().unwrap() {
                Message::Text(text) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] != "ping" {
                        return message;
                    }
                }
                other => panic!("not a protocol message: {other:?}"),
            }
        }
    })
    .await
    .expect("no message in time")
}

/// How many subscriptions the stack has open (its `/health`).
pub async fn open_subscriptions(app: &TestApp) -> u64 {
    let health: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["subscriptions"].as_u64().unwrap()
}
