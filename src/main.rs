//! `outboxdemo`: runs the local stack (`serve`, the default) or prints the schema (`schema`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use outboxdemo::stack::{self, Settings, Storage};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The outbox pattern with a GraphQL front door, on your machine: GraphQL API, embedded
/// store, change stream, processor, event bus and consumers in one process.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local stack (the default).
    Serve(ServeArgs),
    /// Print the GraphQL schema (SDL), as checked in at schema.graphql.
    Schema,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "OUTBOXDEMO_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, env = "OUTBOXDEMO_PORT", default_value_t = 8000)]
    port: u16,
    /// Where the durable store keeps its data.
    #[arg(long, env = "OUTBOXDEMO_DATA_DIR", default_value = ".outboxdemo")]
    data_dir: PathBuf,
    /// Keep everything in memory instead (gone when the process stops).
    #[arg(long, env = "OUTBOXDEMO_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,
    /// Seconds between keep-alive pings on idle subscription connections.
    #[arg(long, env = "OUTBOXDEMO_KEEPALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_secs: u64,
    /// The event bus name.
    #[arg(long, env = "EVENT_BUS_NAME", default_value = domain::event::DEFAULT_EVENT_BUS_NAME)]
    event_bus_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Schema) => {
            print!("{}", api::sdl());
            return Ok(());
        }
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let storage = if args.in_memory {
        Storage::InMemory
    } else {
        Storage::Dir(args.data_dir)
    };
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let address = listener.local_addr()?;
    tracing::info!("GraphiQL: http://{address}/  GraphQL: http://{address}/graphql");
    let mut settings = Settings::new(storage);
    settings.event_bus_name = args.event_bus_name;
    settings.keepalive = std::time::Duration::from_secs(args.keepalive_secs);
    stack::run(listener, settings, shutdown_signal()).await
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
