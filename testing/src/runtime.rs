//! A Lambda binary run for real under a Lambda Runtime API on 127.0.0.1 and invoked with
//! events, so the binary's `main` — configuration, clients, handler — is what is tested. The
//! Runtime API is the rehearsal's ([`rehearsal::lambda`]); this is the tests' handle on one
//! function of one environment, with the test process's AWS settings (`AWS_ENDPOINT_URL` and
//! the rest) passed on.

use std::path::PathBuf;
use std::time::Duration;

use rehearsal::lambda::{ColdStart, Function, FunctionSpec, Invocation};
use serde_json::Value;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned this response.
    Response(Value),
    /// The handler (or the runtime) reported this error.
    Error(Value),
}

/// A Lambda binary running against the Runtime API.
#[derive(Debug)]
pub struct LambdaHarness {
    function: Function,
    log_file: PathBuf,
    cold_start: Option<ColdStart>,
}

impl LambdaHarness {
    /// Starts `binary` with Lambda's environment, the test process's `AWS_*` and `RUST_LOG`
    /// variables, and `env`.
    pub async fn start(
        binary: &str,
        function_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_file = std::env::temp_dir().join(format!(
            "{function_name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let inherited = std::env::vars().filter(|(k, _)| k.starts_with("AWS_") || k == "RUST_LOG");
        let spec = FunctionSpec {
            name: function_name.to_owned(),
            binary: PathBuf::from(binary),
            env: inherited
                .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .collect(),
            timeout: Duration::from_secs(30),
            memory_mb: 256,
            concurrency: 1,
            log_file: log_file.clone(),
        };
        let function = Function::new(spec);
        // A binary that exits before asking for work (a configuration error) is reported by the
        // first invocation, as Lambda reports it.
        let cold_start = function.warm().await.ok();
        Ok(Self {
            function,
            log_file,
            cold_start,
        })
    }

    /// Invokes the function with `event` and waits (up to 30 s) for how it ended. A process
    /// that exits or fails to start is an error carrying its logs.
    pub async fn invoke(&mut self, event: Value) -> anyhow::Result<Outcome> {
        match self.function.invoke(event).await {
            Invocation::Response(value) => Ok(Outcome::Response(value)),
            Invocation::FunctionError(error)
                if error["errorType"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Runtime.") || t.starts_with("Sandbox.")) =>
            {
                // The process's last lines may reach the log just after it exits.
                tokio::time::sleep(Duration::from_millis(100)).await;
                anyhow::bail!(
                    "the function failed: {error}; logs:\n{}",
                    self.logs().join("\n")
                )
            }
            Invocation::FunctionError(error) => Ok(Outcome::Error(error)),
        }
    }

    /// What the function printed so far (its log lines).
    pub fn logs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log_file)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The time from starting the process to its first request for work: its cold start.
    pub fn time_to_first_poll(&self) -> Option<Duration> {
        self.cold_start.map(|c| c.first_poll)
    }

    /// The process id, to read its resource use.
    pub fn pid(&self) -> Option<u32> {
        self.cold_start.and_then(|c| c.pid)
    }
}

impl Drop for LambdaHarness {
    fn drop(&mut self) {
        self.function.shutdown();
        let _ = std::fs::remove_file(&self.log_file);
    }
}
