//! `outboxdemo`: runs the local stack (`serve`, the default), prints the schema (`schema`), or
//! inspects and redrives dead letters (`dead-letters`).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use api::ApiOptions;
use clap::{Args, Parser, Subcommand};
use outboxdemo::stack::{self, Settings};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

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
    #[command(flatten)]
    api: ApiFlags,
}

/// The API's flags. Once `api::ApiOptions` is `clap::Args`, this becomes
/// `type ApiFlags = api::ApiOptions;` and `ApiArgs` goes.
type ApiFlags = ApiArgs;

#[derive(Debug, Args)]
struct ApiArgs {
    /// Seconds between keep-alive pings on idle subscription connections.
    #[arg(long, env = "OUTBOXDEMO_KEEPALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_secs: u64,
    /// Require `Authorization: Bearer <token>` for mutations and subscriptions.
    #[arg(long, env = "OUTBOXDEMO_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Do not answer introspection queries (for production).
    #[arg(long, env = "OUTBOXDEMO_NO_INTROSPECTION")]
    no_introspection: bool,
    /// Do not serve GraphiQL (for production).
    #[arg(long, env = "OUTBOXDEMO_NO_GRAPHIQL")]
    no_graphiql: bool,
    /// The deepest selection a document may have.
    #[arg(long, env = "OUTBOXDEMO_MAX_DEPTH", default_value_t = 12)]
    max_depth: usize,
    /// The most a document may cost (a connection's page size multiplies its fields).
    #[arg(long, env = "OUTBOXDEMO_MAX_COMPLEXITY", default_value_t = 2000)]
    max_complexity: usize,
    /// The largest request body, in bytes.
    #[arg(long, env = "OUTBOXDEMO_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// The most subscriptions one WebSocket connection may hold.
    #[arg(long, env = "OUTBOXDEMO_MAX_SUBSCRIPTIONS", default_value_t = 20)]
    max_subscriptions: usize,
}

impl From<ApiArgs> for ApiOptions {
    fn from(args: ApiArgs) -> Self {
        Self {
            keepalive: Duration::from_secs(args.keepalive_secs),
            auth_token: args.auth_token,
            introspection: !args.no_introspection,
            graphiql: !args.no_graphiql,
            max_depth: args.max_depth,
            max_complexity: args.max_complexity,
            max_body_bytes: args.max_body_bytes,
            max_subscriptions_per_connection: args.max_subscriptions,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let mut settings = args.settings;
    settings.api = args.api.into();
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
