//! A stand-in for API Gateway's Management API on 127.0.0.1: records what the AWS SDK posts to
//! connections and the connections it deletes, and answers 410 Gone for connections told so.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
}

/// The recording Management API.
#[derive(Debug, Clone)]
pub struct RecordingManagementApi {
    /// Its endpoint, for the SDK's `endpoint_url`.
    pub endpoint: String,
    recorded: Arc<Mutex<Recorded>>,
}

impl RecordingManagementApi {
    /// Serves on a free 127.0.0.1 port.
    pub async fn start() -> anyhow::Result<Self> {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let app = Router::new()
            .route("/@connections/{id}", post(post_to).delete(delete))
            .with_state(Arc::clone(&recorded));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { endpoint, recorded })
    }

    /// From now on, this connection is gone (410).
    pub fn make_gone(&self, connection_id: &str) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.gone.insert(connection_id.to_owned());
        }
    }

    /// The messages posted to a connection, in order.
    pub fn messages(&self, connection_id: &str) -> Vec<Value> {
        self.recorded
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
        self.recorded
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

async fn post_to(
    State(recorded): State<Arc<Mutex<Recorded>>>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let Ok(mut recorded) = recorded.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if recorded.gone.contains(&id) {
        return gone();
    }
    let message = serde_json::from_str(&body).unwrap_or(Value::String(body));
    recorded.posts.push((id, message));
    StatusCode::OK.into_response()
}

async fn delete(State(recorded): State<Arc<Mutex<Recorded>>>, Path(id): Path<String>) -> Response {
    let Ok(mut recorded) = recorded.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if recorded.gone.contains(&id) {
        return gone();
    }
    recorded.deleted.push(id);
    StatusCode::NO_CONTENT.into_response()
}
