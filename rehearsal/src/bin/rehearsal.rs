//! `rehearsal`: the AWS deployment of outboxdemo on 127.0.0.1, with no AWS account and no
//! Docker (see the README, "Rehearse the deployment"). `./scripts/rehearsal` builds the
//! bootstraps and runs this.

use std::path::PathBuf;

use clap::Parser;
use rehearsal::stack::{Options, Rehearsal};

/// Runs template.yaml's topology on 127.0.0.1: moto server, the seven functions under a Lambda
/// Runtime API, and the stream mapping, EventBridge targets and API Gateway APIs emulated.
#[derive(Debug, Parser)]
struct Cli {
    /// The SAM template.
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
    /// The directory of the seven bootstraps (`cargo build -p api -p processor -p consumers`).
    #[arg(long, default_value = "target/debug")]
    bootstraps: PathBuf,
    /// Use this running emulator instead of starting moto server.
    #[arg(long, env = "REHEARSAL_EMULATOR")]
    emulator: Option<String>,
    /// The moto server to start.
    #[arg(long, default_value = ".venv/bin/moto_server")]
    moto_server: PathBuf,
    /// The first of five ports: HTTP API, WebSocket API, Management API, Lambda API, emulator
    /// (0: any free ports).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// The stack name: functions are `<stack>-api` and so on.
    #[arg(long, default_value = "outboxdemo")]
    stack: String,
    /// Where each function's log goes (`<function>.log`).
    #[arg(long, default_value = "target/rehearsal")]
    log_dir: PathBuf,
    /// A template parameter, as `sam deploy --parameter-overrides` takes it: `Key=Value`
    /// (repeatable), e.g. `--parameter PublicAccess=all` for a public demo.
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parameter)]
    parameters: Vec<(String, String)>,
}

fn parameter(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text}: expected KEY=VALUE"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let port = |offset: u16| if cli.port == 0 { 0 } else { cli.port + offset };
    let options = Options {
        template: cli.template,
        bootstraps: cli.bootstraps,
        emulator: cli.emulator,
        moto_server: cli.moto_server,
        http_port: port(0),
        websocket_port: port(1),
        management_port: port(2),
        lambda_port: port(3),
        emulator_port: port(4),
        stack: cli.stack,
        log_dir: cli.log_dir.clone(),
        parameters: cli.parameters.into_iter().collect(),
        ..Options::default()
    };
    let rehearsal = Rehearsal::start(options).await?;
    println!("GraphiQL (HTTP API)   {}/", rehearsal.http_url);
    println!("GraphQL               {}/graphql", rehearsal.http_url);
    println!("WebSocket API         {}", rehearsal.websocket_url);
    println!("Management API        {}", rehearsal.management_endpoint);
    println!(
        "Lambda API            {}   (AWS_ENDPOINT_URL_LAMBDA)",
        rehearsal.lambda_endpoint
    );
    println!(
        "emulator (moto)       {}   (AWS_ENDPOINT_URL)",
        rehearsal.emulator
    );
    println!(
        "function logs         {}/<function>.log",
        cli.log_dir.display()
    );
    if let Some(secret) = rehearsal.credential() {
        // The rehearsal's secret guards nothing but this machine's play stack; on AWS it is
        // read from Secrets Manager (README, "Deploy to AWS").
        println!("credential            Authorization: Bearer {secret}   (WebSocket: ?token=...)");
    }
    println!("Ctrl-C stops it.");
    // Ctrl-C, or SIGTERM (a supervisor's stop): either way the functions and moto go too.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    println!("stopping");
    rehearsal.stop().await;
    Ok(())
}
