//! Wiring: the embedded store, the stream reader running the processor, the local bus with
//! the consumers and the subscriptions as targets, and the API, in one process.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::{ApiOptions, EventHub};
use axum::serve::ListenerExt;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{DeliveryOptions, LocalBus, Route, SubscriptionTarget};
use crate::embedded::{Db, DbError, EmbeddedActivityStore, EmbeddedBookStore, EmbeddedDeadLetters};
use crate::faults::{Faults, FaultyPublisher, PoisonedRecords, faulty_route};
use crate::stream::{
    BatchHandler, DEFAULT_RETENTION, EmbeddedEventLog, Processor, ReaderOptions, Retention,
    StreamDeadLetters, StreamReader,
};

/// Where the local stack keeps its data: `--data-dir` or `--in-memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A durable database in this directory.
    Dir(PathBuf),
    /// A throwaway database in memory.
    InMemory,
}

/// The data directory of a durable store, as a command-line flag.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DataDir {
    /// Where the durable store keeps its data.
    #[arg(long, env = "OUTBOXDEMO_DATA_DIR", default_value = ".outboxdemo")]
    pub data_dir: PathBuf,
}

/// [`Storage`]'s flags (clap derives `Args` for structs only).
#[derive(Debug, clap::Args)]
struct StorageFlags {
    #[command(flatten)]
    dir: DataDir,
    /// Keep everything in memory instead (gone when the process stops).
    #[arg(long, env = "OUTBOXDEMO_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,
}

impl clap::FromArgMatches for Storage {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let flags = StorageFlags::from_arg_matches(matches)?;
        Ok(if flags.in_memory {
            Self::InMemory
        } else {
            Self::Dir(flags.dir.data_dir)
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for Storage {
    fn augment_args(command: clap::Command) -> clap::Command {
        StorageFlags::augment_args(command)
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        StorageFlags::augment_args_for_update(command)
    }
}

/// How long a stop waits, by default, for the stream reader and the deliveries.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything the local stack is configured with. As command-line flags (each with its
/// environment variable) where an operator may set it; the rest keep their defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Where data lives.
    #[command(flatten)]
    pub storage: Storage,
    /// The event bus name.
    #[arg(long, env = "EVENT_BUS_NAME", default_value = domain::event::DEFAULT_EVENT_BUS_NAME)]
    pub event_bus_name: String,
    /// How the stream reader batches and retries.
    #[arg(skip)]
    pub reader: ReaderOptions,
    /// How the bus retries deliveries.
    #[arg(skip)]
    pub delivery: DeliveryOptions,
    /// How many events a subscriber's live buffer holds; one that falls further behind is
    /// caught up from the stream.
    #[arg(skip = api::subscriptions::DEFAULT_SUBSCRIBER_BUFFER)]
    pub subscriber_buffer: usize,
    /// How long the change stream keeps records that the processor is done with (and so how
    /// far back a subscription can resume).
    #[arg(
        long = "stream-retention-secs",
        env = "OUTBOXDEMO_STREAM_RETENTION_SECS",
        value_name = "SECS",
        // DEFAULT_RETENTION, which clap wants as text (a test holds the two together).
        default_value = "86400",
        value_parser = clap::builder::TypedValueParser::map(
            clap::value_parser!(u64).range(1..),
            Duration::from_secs,
        ),
        help = "Seconds the change stream keeps records (and subscriptions can resume from)"
    )]
    pub stream_retention: Duration,
    /// The API's limits, switches and credential.
    #[command(flatten)]
    pub api: ApiOptions,
    /// Faults to inject (none by default).
    #[command(flatten)]
    pub faults: Faults,
    /// How long a stop waits for the stream reader and the deliveries to finish what they hold.
    #[arg(skip = SHUTDOWN_GRACE)]
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Defaults with data in `storage`.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            event_bus_name: domain::event::DEFAULT_EVENT_BUS_NAME.to_owned(),
            reader: ReaderOptions::default(),
            delivery: DeliveryOptions::default(),
            subscriber_buffer: api::subscriptions::DEFAULT_SUBSCRIBER_BUFFER,
            stream_retention: DEFAULT_RETENTION,
            api: ApiOptions::default(),
            faults: Faults::default(),
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Opens the database for `storage`.
pub fn open(storage: &Storage) -> Result<Arc<Db>, DbError> {
    match storage {
        Storage::Dir(dir) => Db::open(dir),
        Storage::InMemory => Db::in_memory(),
    }
}

/// Runs the whole local stack, serving the API on `listener`, until `shutdown` resolves.
///
/// Then the server stops taking requests and finishes those in flight, the stream reader and
/// the deliveries finish what they hold, and the database is closed. Everything committed
/// before a stop (or a crash) is picked up where it was on the next start.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = open(&settings.storage)?;
    let books = Arc::new(EmbeddedBookStore::new(Arc::clone(&db)));
    let activity = Arc::new(EmbeddedActivityStore::new(Arc::clone(&db)));

    // Subscriptions resume from the stream, after what the processor had published.
    let hub = EventHub::with_log(
        settings.subscriber_buffer,
        Arc::new(EmbeddedEventLog(Arc::clone(&db))),
        crate::stream::checkpoint(&db).await?,
    );
    let faults = &settings.faults;
    if faults.any() {
        tracing::warn!(?faults, "fault injection is on");
    }
    let activity_store: Arc<dyn consumers::ActivityStore> = activity.clone();
    let routes: Vec<Route> = Route::consumers(&activity_store)
        .into_iter()
        .map(|route| faulty_route(route, faults))
        .collect();
    let consumers = routes.iter().map(|route| route.name.clone()).collect();
    let bus = Arc::new(
        LocalBus::new(
            Arc::clone(&db),
            settings.event_bus_name.clone(),
            routes,
            settings.delivery.clone(),
        )
        .with_live(SubscriptionTarget::live(hub.clone())),
    );

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    bus.spawn_deliveries(&mut tasks, &stop);
    let publisher: Arc<dyn processor::EventPublisher> = if faults.any() {
        Arc::new(FaultyPublisher::new(bus, faults.clone()))
    } else {
        bus
    };
    let processor = Processor {
        publisher,
        poison: Arc::new(StreamDeadLetters(Arc::clone(&db))),
    };
    let handler: Arc<dyn BatchHandler> = if faults.poison.is_some() {
        Arc::new(PoisonedRecords::new(processor, faults.clone()))
    } else {
        Arc::new(processor)
    };
    let reader = StreamReader::new(Arc::clone(&db), handler, settings.reader.clone());
    tasks.spawn(reader.run(stop.clone()));
    tasks.spawn(Retention::new(Arc::clone(&db), settings.stream_retention).run(stop.clone()));

    let dead_letters: Arc<dyn api::DeadLetterFeed> =
        Arc::new(EmbeddedDeadLetters::new(Arc::clone(&db)));
    let schema = api::build_schema_with(
        books.clone(),
        activity,
        hub.clone(),
        Some(dead_letters),
        &settings.api,
    );
    let mut app = api::router::router_with_catalogue(schema, &settings.api, books);
    if let Some(recorder) = crate::metrics::recorder() {
        app = app.merge(crate::metrics::route(
            recorder,
            Arc::clone(&db),
            hub,
            consumers,
        ));
    }
    let address = listener.local_addr()?;
    if address.ip().is_loopback() {
        app = crate::hosts::only_local_hosts(app, &settings.api.allowed_origins);
    }
    tracing::info!(%address, storage = ?settings.storage, "serving");
    // Small responses and WebSocket frames go out at once rather than waiting on Nagle's
    // algorithm for the peer's delayed ACK (up to 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;

    // Requests are done; the reader and the deliveries finish the batch or event in hand and
    // stop. Whatever they did not get to stays committed and resumes on the next start.
    stop.cancel();
    let finished = tokio::time::timeout(settings.shutdown_grace, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "a background task failed");
            }
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(grace = ?settings.shutdown_grace, "background work did not finish in time; it resumes on the next start");
        tasks.abort_all();
    }
    tracing::info!("stopped");
    Ok(served?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{Args as _, FromArgMatches as _};

    use super::*;

    fn parse(args: &[&str]) -> Settings {
        let command = Settings::augment_args(clap::Command::new("serve"))
            .mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        Settings::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn the_stream_keeps_records_24_hours_unless_told_otherwise() {
        assert_eq!(parse(&[]).stream_retention, DEFAULT_RETENTION);
        assert_eq!(
            parse(&["--stream-retention-secs=90"]).stream_retention,
            Duration::from_secs(90)
        );
    }
}
