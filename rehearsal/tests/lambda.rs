//! Functions as processes under the Runtime API, as Lambda runs them: a response, a function
//! error, a timeout, a crash and an init error each end an invocation as Lambda reports them;
//! an environment that timed out or crashed is replaced; environments run one invocation each
//! and no more at once than the function's concurrency. The function is a custom runtime in
//! shell (`fixtures/runtime.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rehearsal::lambda::{Function, FunctionSpec, Invocation};
use serde_json::json;

fn function(
    concurrency: usize,
    timeout: Duration,
    env: &[(&str, &str)],
) -> (Function, tempfile::TempDir) {
    let logs = tempfile::tempdir().unwrap();
    let spec = FunctionSpec {
        name: "test-function".into(),
        binary: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/runtime.sh"
        )),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        timeout,
        memory_mb: 128,
        concurrency,
        log_file: logs.path().join("test-function.log"),
    };
    (Function::new(spec), logs)
}

fn pid(invocation: &Invocation) -> u64 {
    match invocation {
        Invocation::Response(value) => value["pid"].as_u64().unwrap(),
        other => panic!("not a response: {other:?}"),
    }
}

fn error_type(invocation: &Invocation) -> &str {
    match invocation {
        Invocation::FunctionError(value) => value["errorType"].as_str().unwrap(),
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test]
async fn a_response_and_a_function_error_come_back_as_lambda_reports_them() {
    let (function, _logs) = function(1, Duration::from_secs(10), &[]);
    let answer = function.invoke(json!({"echo": 1})).await;
    assert_eq!(answer.payload()["event"], json!({"echo": 1}));
    let failed = function.invoke(json!({"fail": "x"})).await;
    assert_eq!(
        failed.payload(),
        &json!({"errorType": "Test.Failed", "errorMessage": "asked to fail"})
    );
    assert!(failed.is_error());
    // The environment outlives a function error: the same process answers next.
    let again = function.invoke(json!({"echo": 2})).await;
    assert_eq!(pid(&answer), pid(&again));
}

#[tokio::test]
async fn a_timeout_fails_the_invocation_and_the_next_one_gets_a_fresh_environment() {
    let (function, _logs) = function(1, Duration::from_millis(500), &[]);
    let first = pid(&function.invoke(json!({"echo": 0})).await);
    let started = Instant::now();
    let timed_out = function.invoke(json!({"sleep": 5})).await;
    assert_eq!(error_type(&timed_out), "Sandbox.Timedout");
    assert!(
        timed_out.payload()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 0.50 seconds")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended at the timeout"
    );
    let next = pid(&function.invoke(json!({"echo": 1})).await);
    assert_ne!(first, next, "a cold start after the timeout");
}

#[tokio::test]
async fn a_crashed_process_fails_its_invocation_with_an_exit_error_and_is_replaced() {
    let (function, _logs) = function(1, Duration::from_secs(10), &[]);
    let first = pid(&function.invoke(json!({"echo": 0})).await);
    let crashed = function.invoke(json!({"crash": true})).await;
    assert_eq!(error_type(&crashed), "Runtime.ExitError");
    let next = pid(&function.invoke(json!({"echo": 1})).await);
    assert_ne!(first, next);
}

#[tokio::test]
async fn a_process_killed_mid_invocation_fails_that_invocation() {
    let (function, _logs) = function(1, Duration::from_secs(10), &[]);
    let running = {
        let function = function.clone();
        tokio::spawn(async move { function.invoke(json!({"sleep": 5})).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !function.kill_busy() {
        assert!(Instant::now() < deadline, "no busy environment to kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(error_type(&running.await.unwrap()), "Runtime.ExitError");
    assert!(!function.invoke(json!({"echo": 1})).await.is_error());
}

#[tokio::test]
async fn an_init_error_fails_the_invocation_with_its_report() {
    let (function, _logs) = function(1, Duration::from_secs(10), &[("INIT_FAIL", "1")]);
    let failed = function.invoke(json!({"echo": 1})).await;
    assert_eq!(error_type(&failed), "Runtime.InitError");
    assert!(
        failed.payload()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("cannot start")
    );
}

#[tokio::test]
async fn environments_run_one_invocation_each_and_no_more_than_the_concurrency() {
    let (function, _logs) = function(2, Duration::from_secs(10), &[]);
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let function = function.clone();
            tokio::spawn(async move { function.invoke(json!({"sleep": 0.5})).await })
        })
        .collect();
    let mut pids = std::collections::HashSet::new();
    for call in calls {
        pids.insert(pid(&call.await.unwrap()));
    }
    assert_eq!(pids.len(), 2, "two environments, each reused: {pids:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "four half-second calls two at a time: {elapsed:?}"
    );
}
