//! Lambda functions as real processes under a Lambda Runtime API on 127.0.0.1.
//!
//! A [`Function`] is a pool of execution environments, each one process of the function's
//! bootstrap with a Runtime API of its own, as Lambda runs a custom runtime
//! (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>): the process polls
//! `GET /2018-06-01/runtime/invocation/next`, gets one event at a time, and answers with
//! `…/{id}/response` or `…/{id}/error`. What Lambda does around that, and this module too:
//! - **One invocation per environment at a time**; further ones go to another environment, up to
//!   the function's concurrency (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html>).
//!   Lambda throttles an invocation beyond it; here it waits for a free environment, which a
//!   caller of the rehearsal sees as latency instead of a 429.
//! - **Timeout**: an invocation still running after the function's `Timeout` fails with
//!   `Sandbox.Timedout` and its environment is shut down
//!   (<https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html>).
//! - **A crashed process** fails its invocation with `Runtime.ExitError`; the next invocation
//!   gets a fresh environment (a cold start), as after any environment is reset
//!   (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html>).
//! - **An init error** (the process reports `/runtime/init/error`, or exits before its first
//!   poll) fails the invocation with `Runtime.InitError`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// What a function is, as the template declares it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The function name (`<stack>-api`).
    pub name: String,
    /// The bootstrap to run.
    pub binary: PathBuf,
    /// The function's environment variables (the template's, resolved).
    pub env: Vec<(String, String)>,
    /// The template's `Timeout`.
    pub timeout: Duration,
    /// The template's `MemorySize`, in MB.
    pub memory_mb: u32,
    /// How many environments may run at once (reserved concurrency, or the rehearsal's share
    /// of the account's).
    pub concurrency: usize,
    /// Where the environments' log lines go (appended), one file per function.
    pub log_file: PathBuf,
}

/// How an invocation ended, as Lambda's Invoke API reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// The handler returned this payload.
    Response(Value),
    /// A function error (`X-Amz-Function-Error: Unhandled`): the payload has `errorType` and
    /// `errorMessage` — the handler's error, `Sandbox.Timedout`, `Runtime.ExitError` or
    /// `Runtime.InitError`.
    FunctionError(Value),
}

impl Invocation {
    /// Whether the function failed.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::FunctionError(_))
    }

    /// The payload: the response, or the error object.
    pub fn payload(&self) -> &Value {
        match self {
            Self::Response(value) | Self::FunctionError(value) => value,
        }
    }
}

/// What invokes a function synchronously: a [`Function`], or in a unit test of an emulation's
/// logic, a handler of the test's own.
#[async_trait::async_trait]
pub trait Invoke: Send + Sync {
    /// Invokes with `payload` and waits for how it ended.
    async fn invoke(&self, payload: Value) -> Invocation;
}

#[async_trait::async_trait]
impl Invoke for Function {
    async fn invoke(&self, payload: Value) -> Invocation {
        Function::invoke(self, payload).await
    }
}

/// A cold start, as [`Function::warm`] measured it.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// From starting the process to its first request for work.
    pub first_poll: Duration,
    /// The environment's process.
    pub pid: Option<u32>,
}

/// A function: its environments and the invocations in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Function {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    spec: FunctionSpec,
    slots: Semaphore,
    idle: Mutex<Vec<Environment>>,
    /// The invocations running: their process and when they started.
    busy: Mutex<HashMap<u64, (Option<u32>, Instant)>>,
    next_id: Mutex<u64>,
}

impl Function {
    /// A function with no environment yet: the first invocation starts one.
    pub fn new(spec: FunctionSpec) -> Self {
        let slots = Semaphore::new(spec.concurrency.max(1));
        Self {
            inner: Arc::new(Pool {
                spec,
                slots,
                idle: Mutex::new(Vec::new()),
                busy: Mutex::new(HashMap::new()),
                next_id: Mutex::new(0),
            }),
        }
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// The function's declared configuration.
    pub fn spec(&self) -> &FunctionSpec {
        &self.inner.spec
    }

    /// Starts one environment ahead of the first invocation (a provisioned cold start), so a
    /// configuration error shows at once.
    /// What it measured: the cold start (exec → first poll of the Runtime API) and the
    /// process id, to read its resource use.
    pub async fn warm(&self) -> anyhow::Result<ColdStart> {
        let mut environment = Environment::start(&self.inner.spec).await?;
        let mut polled = environment.api.first_poll.subscribe();
        let first_poll = tokio::select! {
            polled = polled.wait_for(Option::is_some) => {
                polled.ok().and_then(|at| *at).map(|at| at - environment.started)
            }
            _ = environment.exited.wait_for(Option::is_some) => None,
        };
        let first_poll = first_poll
            .with_context(|| format!("{} exited before it asked for work", self.inner.spec.name))?;
        let cold = ColdStart {
            first_poll,
            pid: environment.pid(),
        };
        lock(&self.inner.idle).push(environment);
        Ok(cold)
    }

    /// Invokes the function synchronously (`RequestResponse`) and waits for how it ended.
    pub async fn invoke(&self, payload: Value) -> Invocation {
        let pool = &self.inner;
        let Ok(_slot) = pool.slots.acquire().await else {
            return error("Rehearsal.Stopped", "the function is shut down");
        };
        let environment = lock(&pool.idle).pop();
        let mut environment = match environment {
            Some(environment) if environment.alive() => environment,
            _ => match Environment::start(&pool.spec).await {
                Ok(environment) => environment,
                Err(e) => return error("Runtime.InitError", &format!("{e:#}")),
            },
        };
        let id = {
            let mut next = lock(&pool.next_id);
            *next += 1;
            *next
        };
        lock(&pool.busy).insert(id, (environment.pid(), Instant::now()));
        let outcome = environment.run(payload, pool.spec.timeout).await;
        lock(&pool.busy).remove(&id);
        if environment.alive() {
            lock(&pool.idle).push(environment);
        }
        outcome
    }

    /// SIGKILLs the process of one environment that is running an invocation (a fault the
    /// rehearsal injects); true when there was one.
    pub fn kill_busy(&self) -> bool {
        let pid = lock(&self.inner.busy).values().find_map(|(pid, _)| *pid);
        pid.is_some_and(kill)
    }

    /// What the function is doing, for a diagnosis: the invocations running (process and
    /// age), idle environments, free concurrency.
    pub fn describe(&self) -> String {
        let running: Vec<String> = lock(&self.inner.busy)
            .values()
            .map(|(pid, started)| format!("pid {pid:?} for {:?}", started.elapsed()))
            .collect();
        format!(
            "running [{}], {} idle, {} of {} free",
            running.join(", "),
            lock(&self.inner.idle).len(),
            self.inner.slots.available_permits(),
            self.inner.spec.concurrency.max(1),
        )
    }

    /// Stops every idle environment (those running an invocation stop when it ends).
    pub fn shutdown(&self) {
        self.inner.slots.close();
        lock(&self.inner.idle).clear();
    }
}

fn kill(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn error(error_type: &str, message: &str) -> Invocation {
    Invocation::FunctionError(json!({ "errorType": error_type, "errorMessage": message }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One job for an environment: the request id, the event, and where its outcome goes.
type Job = (String, Value, oneshot::Sender<Invocation>);

/// One execution environment: a process of the bootstrap and its own Runtime API.
#[derive(Debug)]
struct Environment {
    started: Instant,
    pid: Option<u32>,
    stop: Option<oneshot::Sender<()>>,
    jobs: mpsc::Sender<Job>,
    /// `Some(exit status)` once the process is gone.
    exited: watch::Receiver<Option<String>>,
    api: Arc<Api>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Api {
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Invocation>>>,
    init_error: Mutex<Option<Value>>,
    /// When the process first asked for work.
    first_poll: watch::Sender<Option<Instant>>,
    function_arn: String,
    timeout: Duration,
}

impl Environment {
    async fn start(spec: &FunctionSpec) -> anyhow::Result<Self> {
        let (jobs, receiver) = mpsc::channel(1);
        let api = Arc::new(Api {
            jobs: tokio::sync::Mutex::new(receiver),
            waiting: Mutex::new(HashMap::new()),
            init_error: Mutex::new(None),
            first_poll: watch::Sender::new(None),
            function_arn: format!(
                "arn:aws:lambda:us-east-1:123456789012:function:{}",
                spec.name
            ),
            timeout: spec.timeout,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&api));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let started = Instant::now();
        let mut child = Command::new(&spec.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "rehearsal")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("_HANDLER", "bootstrap")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.binary.display()))?;
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .await
            .with_context(|| format!("cannot open {}", spec.log_file.display()))?;
        let log = Arc::new(tokio::sync::Mutex::new(log));
        let outputs = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ];
        for output in outputs.into_iter().flatten() {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(output).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = log.lock().await;
                    let _ = log.write_all(line.as_bytes()).await;
                    let _ = log.write_all(b"\n").await;
                }
            });
        }
        let (exited_tx, exited) = watch::channel(None);
        let (stop, stopped) = oneshot::channel::<()>();
        let pid = child.id();
        // The process belongs to this task: it ends when the process exits, or kills it when
        // the environment is dropped (the oneshot's sender goes with it).
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stopped => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let text = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let _ = exited_tx.send(Some(text));
        });
        Ok(Self {
            started,
            pid,
            stop: Some(stop),
            jobs,
            exited,
            api,
            server,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Shuts the environment down and waits until its process is gone.
    async fn shut_down(&mut self) {
        self.stop.take();
        let _ = self.exited.wait_for(Option::is_some).await;
    }

    /// Runs one invocation; a timeout or a crash leaves the environment dead.
    async fn run(&mut self, payload: Value, timeout: Duration) -> Invocation {
        let id = uuid::Uuid::new_v4().to_string();
        let (done, outcome) = oneshot::channel();
        if self.jobs.send((id.clone(), payload, done)).await.is_err() {
            return error("Runtime.ExitError", "the runtime API is gone");
        }
        let mut exited = self.exited.clone();
        tokio::select! {
            result = outcome => match result {
                Ok(invocation) => invocation,
                Err(_) => error("Runtime.ExitError", &format!("RequestId: {id} Error: Runtime exited")),
            },
            status = async { exited.wait_for(Option::is_some).await.map(|s| s.clone()) } => {
                let status = status.ok().flatten().unwrap_or_default();
                match lock(&self.api.init_error).take() {
                    Some(init) => Invocation::FunctionError(json!({
                        "errorType": "Runtime.InitError",
                        "errorMessage": init.to_string(),
                    })),
                    None => error(
                        "Runtime.ExitError",
                        &format!("RequestId: {id} Error: Runtime exited with error: {status}"),
                    ),
                }
            }
            () = tokio::time::sleep(timeout) => {
                // Lambda shuts the environment down: the next invocation starts a fresh one.
                self.shut_down().await;
                error(
                    "Sandbox.Timedout",
                    &format!("RequestId: {id} Error: Task timed out after {:.2} seconds", timeout.as_secs_f64()),
                )
            }
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    api.first_poll.send_if_modified(|first| {
        let unset = first.is_none();
        first.get_or_insert_with(Instant::now);
        unset
    });
    let job = api.jobs.lock().await.recv().await;
    let Some((id, event, done)) = job else {
        return StatusCode::GONE.into_response();
    };
    lock(&api.waiting).insert(id.clone(), done);
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d + api.timeout).as_millis())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    let trace = format!(
        "Root=1-{:08x}-{}",
        deadline / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..24]
    );
    for (name, value) in [
        ("lambda-runtime-aws-request-id", id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            api.function_arn.clone(),
        ),
        ("lambda-runtime-trace-id", trace),
    ] {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, axum::Json(event)).into_response()
}

fn finish(api: &Api, id: &str, outcome: Invocation) -> StatusCode {
    match lock(&api.waiting).remove(id) {
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

async fn response(State(api): State<Arc<Api>>, Path(id): Path<String>, body: String) -> StatusCode {
    finish(&api, &id, Invocation::Response(json_or_text(&body)))
}

async fn invocation_error(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    finish(&api, &id, Invocation::FunctionError(json_or_text(&body)))
}

async fn init_error(State(api): State<Arc<Api>>, body: String) -> StatusCode {
    *lock(&api.init_error) = Some(json_or_text(&body));
    StatusCode::ACCEPTED
}
