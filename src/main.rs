//! `outboxdemo`: runs the local stack (`serve`, the default), prints the schema (`schema`), or
//! inspects and redrives dead letters (`dead-letters`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use outboxdemo::faults::Faults;
use outboxdemo::stack::{self, Settings, Storage};
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
    Serve(ServeArgs),
    /// Print the GraphQL schema (SDL), as checked in at schema.graphql.
    Schema,
    /// List, show and redrive what kept failing.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// One line of JSON per dead letter, oldest first.
    List(DataArgs),
    /// One dead letter, in full (`stream <seq>` or `bus <id>`, as `list` names them).
    Show {
        #[command(flatten)]
        data: DataArgs,
        /// `stream` or `bus`.
        source: String,
        /// The id `list` shows.
        id: i64,
    },
    /// Send dead letters back: a stream record to the processor, a bus event to its target's
    /// queue. With no source and id, every one of them.
    Redrive {
        #[command(flatten)]
        data: DataArgs,
        /// `stream` or `bus`.
        source: Option<String>,
        /// The id `list` shows.
        id: Option<i64>,
    },
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Where the durable store keeps its data.
    #[arg(long, env = "OUTBOXDEMO_DATA_DIR", default_value = ".outboxdemo")]
    data_dir: PathBuf,
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
    /// The event bus name.
    #[arg(long, env = "EVENT_BUS_NAME", default_value = domain::event::DEFAULT_EVENT_BUS_NAME)]
    event_bus_name: String,
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
    /// Testing only: the chance (0-1) that a publish fails from a random entry on.
    #[arg(long, env = "OUTBOXDEMO_FAULT_PUBLISH_RATE", default_value_t = 0.0)]
    fault_publish_rate: f64,
    /// Testing only: the chance (0-1) that a consumer delivery fails.
    #[arg(long, env = "OUTBOXDEMO_FAULT_DELIVERY_RATE", default_value_t = 0.0)]
    fault_delivery_rate: f64,
    /// Testing only: events about the book of this name always fail (a poison).
    #[arg(long, env = "OUTBOXDEMO_FAULT_POISON")]
    fault_poison: Option<String>,
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
            return outboxdemo::cli::dead_letters(command.into()).await;
        }
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };

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
    settings.api.keepalive = Duration::from_secs(args.keepalive_secs);
    settings.api.auth_token = args.auth_token;
    settings.api.introspection = !args.no_introspection;
    settings.api.graphiql = !args.no_graphiql;
    settings.api.max_depth = args.max_depth;
    settings.api.max_complexity = args.max_complexity;
    settings.api.max_body_bytes = args.max_body_bytes;
    settings.api.max_subscriptions_per_connection = args.max_subscriptions;
    settings.faults = Faults {
        publish_failure_rate: args.fault_publish_rate,
        delivery_failure_rate: args.fault_delivery_rate,
        poison: args.fault_poison,
    };
    stack::run(listener, settings, shutdown_signal()).await
}

impl From<DeadLetterCommand> for outboxdemo::cli::DeadLetterCommand {
    fn from(command: DeadLetterCommand) -> Self {
        use outboxdemo::cli::DeadLetterCommand as C;
        match command {
            DeadLetterCommand::List(data) => C::List {
                data_dir: data.data_dir,
            },
            DeadLetterCommand::Show { data, source, id } => C::Show {
                data_dir: data.data_dir,
                source,
                id,
            },
            DeadLetterCommand::Redrive { data, source, id } => C::Redrive {
                data_dir: data.data_dir,
                source,
                id,
            },
        }
    }
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
