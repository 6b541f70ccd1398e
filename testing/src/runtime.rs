//! A Lambda Runtime API on 127.0.0.1: runs a Lambda binary as Lambda would (the same
//! environment variables, the same HTTP protocol) and invokes it with events, so the binary's
//! `main` — configuration, clients, handler — is what is tested.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned this response.
    Response(Value),
    /// The handler (or the runtime) reported this error.
    Error(Value),
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<(String, Value)>>,
    queued: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<Value>>,
    first_poll: Mutex<Option<Instant>>,
}

/// A Lambda binary running against this Runtime API.
pub struct LambdaHarness {
    shared: Arc<Shared>,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    server: tokio::task::JoinHandle<()>,
}

impl LambdaHarness {
    /// Starts `binary` with Lambda's environment plus `env` (the test process's environment,
    /// including `AWS_ENDPOINT_URL`, is inherited).
    pub async fn start(
        binary: &str,
        function_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address: SocketAddr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let started = Instant::now();
        let mut child = Command::new(binary)
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", function_name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = Arc::clone(&logs);
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            }));
        }
        Ok(Self {
            shared,
            child,
            logs,
            readers,
            started,
            server,
        })
    }

    /// Invokes the function with `event` and waits (up to 30 s) for how it ended.
    pub async fn invoke(&mut self, event: Value) -> anyhow::Result<Outcome> {
        let id = uuid::Uuid::new_v4().to_string();
        let (done, outcome) = oneshot::channel();
        lock(&self.shared.waiting)?.insert(id.clone(), done);
        lock(&self.shared.queue)?.push_back((id, event));
        self.shared.queued.notify_one();
        tokio::select! {
            result = outcome => Ok(result?),
            status = self.child.wait() => {
                // The process is gone: read what it printed to the end.
                for reader in self.readers.drain(..) {
                    let _ = reader.await;
                }
                let init = lock(&self.shared.init_error)?.clone();
                anyhow::bail!(
                    "the function exited ({:?}), init error {init:?}; logs:\n{}",
                    status?,
                    self.logs().join("\n")
                );
            }
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                anyhow::bail!("no answer in 30 s; logs:\n{}", self.logs().join("\n"))
            }
        }
    }

    /// What the function printed so far (its log lines).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The time from starting the process to its first request for work: its cold start.
    pub fn time_to_first_poll(&self) -> Option<Duration> {
        self.shared
            .first_poll
            .lock()
            .ok()?
            .map(|t| t - self.started)
    }

    /// The process id, to read its resource use.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl std::fmt::Debug for LambdaHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaHarness")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Drop for LambdaHarness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    mutex.lock().map_err(|e| anyhow::anyhow!("poisoned: {e}"))
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    if let Ok(mut first) = shared.first_poll.lock() {
        first.get_or_insert_with(Instant::now);
    }
    loop {
        let notified = shared.queued.notified();
        let job = shared.queue.lock().ok().and_then(|mut q| q.pop_front());
        if let Some((id, event)) = job {
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() + 30_000)
                .unwrap_or_default();
            let mut headers = HeaderMap::new();
            let pairs = [
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", deadline.to_string()),
                (
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:test".to_owned(),
                ),
                (
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000".to_owned(),
                ),
            ];
            for (name, value) in pairs {
                if let Ok(value) = value.parse() {
                    headers.insert(name, value);
                }
            }
            return (StatusCode::OK, headers, axum::Json(event)).into_response();
        }
        notified.await;
    }
}

fn finish(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().ok().and_then(|mut w| w.remove(id)) {
        Some(done) => {
            let _ = done.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json_or_text(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    finish(&shared, &id, Outcome::Response(json_or_text(&body)))
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    finish(&shared, &id, Outcome::Error(json_or_text(&body)))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: String) -> StatusCode {
    if let Ok(mut init) = shared.init_error.lock() {
        *init = Some(json_or_text(&body));
    }
    StatusCode::ACCEPTED
}
