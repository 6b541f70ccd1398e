//! Faults AWS has and moto does not: a proxy between the Lambda processes and the emulator that
//! refuses a share of PutEvents entries, throttles PutEvents in bursts, and fails a share of the
//! consumers' writes, so the rehearsal's fault test meets what the pipeline meets on AWS.
//!
//! - PutEvents answers a partial failure per entry, with `FailedEntryCount` and an `ErrorCode`
//!   on each refused entry, the others ingested
//!   (<https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEvents.html>); the proxy
//!   forwards only the accepted entries to moto and merges the answer in request order.
//! - A throttled call is answered `400 ThrottlingException` as a whole
//!   (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-quota.html>).
//! - A failed DynamoDB write is `500 InternalServerError`, which the SDK retries a few times
//!   before the handler sees it
//!   (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>).
//!
//! Everything else goes through untouched. The emulations of the rehearsal itself talk to moto
//! directly: only what a function does meets the faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What to break, and how often.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// The chance (0–1) that one PutEvents entry is refused (`InternalFailure`).
    pub refused_entry_rate: f64,
    /// The chance (0–1) that a PutEvents call starts a throttling burst.
    pub throttle_burst_rate: f64,
    /// How long a throttling burst lasts: every PutEvents call in it is throttled.
    pub throttle_burst: Duration,
    /// The chance (0–1) that a write to the table named `failing_table` fails.
    pub write_failure_rate: f64,
    /// The table whose writes fail (the consumers' activity table).
    pub failing_table: Option<String>,
}

impl Faults {
    /// Whether anything is broken.
    pub fn any(&self) -> bool {
        self.refused_entry_rate > 0.0
            || self.throttle_burst_rate > 0.0
            || (self.write_failure_rate > 0.0 && self.failing_table.is_some())
    }
}

/// How many faults the proxy injected, by kind.
#[derive(Debug, Default)]
pub struct Injected {
    /// PutEvents entries refused.
    pub refused_entries: AtomicU64,
    /// PutEvents calls throttled.
    pub throttled_calls: AtomicU64,
    /// Table writes failed.
    pub failed_writes: AtomicU64,
}

#[derive(Debug)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    faults: Faults,
    injected: Arc<Injected>,
    burst_until: std::sync::Mutex<Option<Instant>>,
}

/// Serves the proxy on `listener` in front of `upstream` until `shutdown`; returns the
/// counters of what it injected.
pub fn serve(
    listener: tokio::net::TcpListener,
    upstream: String,
    faults: Faults,
    shutdown: CancellationToken,
) -> Arc<Injected> {
    let injected = Arc::new(Injected::default());
    let proxy = Arc::new(Proxy {
        upstream,
        client: reqwest::Client::new(),
        faults,
        injected: Arc::clone(&injected),
        burst_until: std::sync::Mutex::new(None),
    });
    let app = Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    injected
}

async fn forward(
    State(proxy): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if target == "AWSEvents.PutEvents" {
        if proxy.throttled() {
            proxy
                .injected
                .throttled_calls
                .fetch_add(1, Ordering::Relaxed);
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            );
        }
        if proxy.faults.refused_entry_rate > 0.0
            && let Ok(request) = serde_json::from_slice::<Value>(&body)
        {
            return proxy.put_events(method, uri, headers, request).await;
        }
    }
    if target.starts_with("DynamoDB_") && proxy.fails_write(&target, &body) {
        proxy.injected.failed_writes.fetch_add(1, Ordering::Relaxed);
        return aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "com.amazonaws.dynamodb.v20120810#InternalServerError",
            "Internal server error (injected by the rehearsal)",
        );
    }
    proxy.send(method, &uri, &headers, body.to_vec()).await
}

impl Proxy {
    /// Whether this PutEvents call is throttled: inside a burst, or starting one.
    fn throttled(&self) -> bool {
        let Ok(mut until) = self.burst_until.lock() else {
            return false;
        };
        let now = Instant::now();
        if until.is_some_and(|until| now < until) {
            return true;
        }
        if self.faults.throttle_burst_rate > 0.0
            && fastrand::f64() < self.faults.throttle_burst_rate
        {
            *until = Some(now + self.faults.throttle_burst);
            return true;
        }
        false
    }

    fn fails_write(&self, target: &str, body: &[u8]) -> bool {
        let Some(table) = &self.faults.failing_table else {
            return false;
        };
        let write = target.ends_with(".PutItem")
            || target.ends_with(".UpdateItem")
            || target.ends_with(".DeleteItem");
        write
            && self.faults.write_failure_rate > 0.0
            && serde_json::from_slice::<Value>(body)
                .is_ok_and(|request| request["TableName"].as_str() == Some(table))
            && fastrand::f64() < self.faults.write_failure_rate
    }

    /// PutEvents with a share of the entries refused: the rest go to moto, and the answer has
    /// one result per request entry, in request order.
    async fn put_events(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        mut request: Value,
    ) -> Response {
        let entries = request["Entries"].as_array().cloned().unwrap_or_default();
        let refused: Vec<bool> = entries
            .iter()
            .map(|_| fastrand::f64() < self.faults.refused_entry_rate)
            .collect();
        let accepted: Vec<Value> = entries
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| !**refused)
            .map(|(entry, _)| entry.clone())
            .collect();
        let mut upstream_results = Vec::new();
        let mut failed = 0;
        if !accepted.is_empty() {
            request["Entries"] = Value::Array(accepted);
            let response = self
                .send(method, &uri, &headers, request.to_string().into_bytes())
                .await;
            if !response.status().is_success() {
                return response;
            }
            let Ok(bytes) = axum::body::to_bytes(response.into_body(), 10 << 20).await else {
                return aws_error(
                    StatusCode::BAD_GATEWAY,
                    "InternalFailure",
                    "moto answered no body",
                );
            };
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            failed += answer["FailedEntryCount"].as_u64().unwrap_or_default();
            upstream_results = answer["Entries"].as_array().cloned().unwrap_or_default();
        }
        let mut upstream = upstream_results.into_iter();
        let mut results = Vec::with_capacity(entries.len());
        for refused in refused {
            if refused {
                self.injected
                    .refused_entries
                    .fetch_add(1, Ordering::Relaxed);
                failed += 1;
                results.push(json!({
                    "ErrorCode": "InternalFailure",
                    "ErrorMessage": "the entry was refused (injected by the rehearsal)",
                }));
            } else {
                results.push(upstream.next().unwrap_or_else(|| json!({})));
            }
        }
        let body = json!({"FailedEntryCount": failed, "Entries": results}).to_string();
        (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            body,
        )
            .into_response()
    }

    async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Response {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", self.upstream.trim_end_matches('/'));
        let mut request = self.client.request(method, url).body(body);
        for (name, value) in headers {
            if name != "host" && name != "content-length" {
                request = request.header(name, value);
            }
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                let mut out = (status, body).into_response();
                for (name, value) in &headers {
                    if name != "content-length" && name != "transfer-encoding" {
                        out.headers_mut().insert(name, value.clone());
                    }
                }
                out
            }
            Err(error) => aws_error(
                StatusCode::BAD_GATEWAY,
                "InternalFailure",
                &format!("the emulator did not answer: {error}"),
            ),
        }
    }
}

/// An error in the AWS JSON protocols' shape (`__type` names the error).
fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-errortype", kind),
        ],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}
