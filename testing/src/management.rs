//! A stand-in for API Gateway's Management API on 127.0.0.1: records what the AWS SDK posts to
//! connections and the connections it deletes, and answers 410 Gone for connections told so.
//! It can answer each post after a delay, as a real endpoint takes time, and it counts how many
//! posts it holds at once, so a test can see a sender's concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

#[derive(Debug, Default)]
struct Recorded {
    posts: Vec<(String, Value)>,
    deleted: Vec<String>,
    gone: HashSet<String>,
    failing: HashSet<String>,
}

/// The server's state: what it recorded, how long it takes per post, and the posts in flight.
#[derive(Debug, Default)]
struct Shared {
    recorded: Mutex<Recorded>,
    delay: Duration,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// The recording Management API.
#[derive(Debug, Clone)]
pub struct RecordingManagementApi {
    /// Its endpoint, for the SDK's `endpoint_url`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl RecordingManagementApi {
    /// Serves on a free 127.0.0.1 port, answering at once.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_delay(Duration::ZERO).await
    }

    /// Serves on a free 127.0.0.1 port, answering each post after `delay`.
    pub async fn start_with_delay(delay: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            delay,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/@connections/{id}", post(post_to).delete(delete))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { endpoint, shared })
    }

    /// From now on, this connection is gone (410).
    pub fn make_gone(&self, connection_id: &str) {
        if let Ok(mut recorded) = self.shared.recorded.lock() {
            recorded.gone.insert(connection_id.to_owned());
        }
    }

    /// From now on, posts to this connection fail with 500 (until [`Self::heal`]).
    pub fn make_failing(&self, connection_id: &str) {
        if let Ok(mut recorded) = self.shared.recorded.lock() {
            recorded.failing.insert(connection_id.to_owned());
        }
    }

    /// Posts to this connection succeed again.
    pub fn heal(&self, connection_id: &str) {
        if let Ok(mut recorded) = self.shared.recorded.lock() {
            recorded.failing.remove(connection_id);
        }
    }

    /// How many posts were recorded, to every connection.
    pub fn post_count(&self) -> usize {
        self.shared
            .recorded
            .lock()
            .map(|r| r.posts.len())
            .unwrap_or_default()
    }

    /// Every post, in the order answered: (connection id, message).
    pub fn posts(&self) -> Vec<(String, Value)> {
        self.shared
            .recorded
            .lock()
            .map(|r| r.posts.clone())
            .unwrap_or_default()
    }

    /// The most posts that were in flight (received, not yet answered) at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// The messages posted to a connection, in order.
    pub fn messages(&self, connection_id: &str) -> Vec<Value> {
        self.shared
            .recorded
            .lock()
            .map(|r| {
                r.posts
                    .iter()
                    .filter(|(id, _)| id == connection_id)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The connections deleted (closed by the server), in order.
    pub fn deleted(&self) -> Vec<String> {
        self.shared
            .recorded
            .lock()
            .map(|r| r.deleted.clone())
            .unwrap_or_default()
    }
}

fn gone() -> Response {
    (
        StatusCode::GONE,
        [
            ("x-amzn-errortype", "GoneException"),
            ("content-type", "application/json"),
        ],
        r#"{"message":"the connection is gone"}"#,
    )
        .into_response()
}

/// Counts a post in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn post_to(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let Ok(mut recorded) = shared.recorded.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if recorded.gone.contains(&id) {
        return gone();
    }
    if recorded.failing.contains(&id) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("x-amzn-errortype", "InternalServerErrorException")],
            r#"{"message":"failing"}"#,
        )
            .into_response();
    }
    let message = serde_json::from_str(&body).unwrap_or(Value::String(body));
    recorded.posts.push((id, message));
    StatusCode::OK.into_response()
}

async fn delete(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Ok(mut recorded) = shared.recorded.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if recorded.gone.contains(&id) {
        return gone();
    }
    recorded.deleted.push(id);
    StatusCode::NO_CONTENT.into_response()
}
