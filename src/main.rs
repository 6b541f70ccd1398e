//! `outboxdemo`: runs the local stack (`serve`, the default), prints the schema (`schema`), or
//! inspects and redrives dead letters (`dead-letters`).

use std::net::IpAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use outboxdemo::stack::{self, Settings};
use telemetry::Telemetry;
use telemetry::subscriber::LogFormat;
use tokio::net::TcpListener;

/// mimalloc rather than the system allocator: the stack allocates on every request, record and
/// event, and with glibc's malloc durable `addBook`/s at 128 clients was about 40% lower
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The outbox pattern with a GraphQL front door, on your machine: GraphQL API, embedded
/// store, change stream, processor, event bus and consumers in one process.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Write log lines as JSON objects (with the span's trace_id and event_id fields).
    #[arg(long, global = true, env = "OUTBOXDEMO_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local stack (the default).
    Serve(Box<ServeArgs>),
    /// Print the GraphQL schema (SDL), as checked in at schema.graphql.
    Schema,
    /// List, show and redrive what kept failing.
    #[command(subcommand)]
    DeadLetters(outboxdemo::cli::DeadLetterCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "OUTBOXDEMO_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, env = "OUTBOXDEMO_PORT", default_value_t = 8000)]
    port: u16,
    #[command(flatten)]
    settings: Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = if cli.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let telemetry = Telemetry::install("outboxdemo", format)?;
    let result = run(cli).await;
    telemetry.shutdown().await;
    result
}

/// Runs the command the command line names.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Some(Command::Schema) => {
            print!("{}", api::sdl());
            return Ok(());
        }
        Some(Command::DeadLetters(command)) => {
            return outboxdemo::cli::dead_letters(command).await;
        }
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
    };

    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let address = listener.local_addr()?;
    tracing::info!("GraphiQL: http://{address}/  GraphQL: http://{address}/graphql");
    stack::run(listener, args.settings, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
