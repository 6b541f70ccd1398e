//! The numbers an operator watches, served at `/metrics` in the Prometheus text format.
//!
//! Counters are counted where things happen, through the `metrics` facade: the API's mutations
//! ([`api::metrics`]), the processor's events ([`processor::metrics`]), and here the bus's
//! deliveries and the retries; the dead letters by source are the processor's
//! [`processor::metrics::DEAD_LETTERS`]. The gauges that describe state — the stream
//! reader's lag, the queues' depth, the open subscriptions — are read from the store and the
//! hub when `/metrics` is scraped, so they are never stale. The latency histograms (a change's
//! commit to a consumer's effect, [`consumers::metrics`], and to a subscription,
//! [`api::metrics`]) are measured from the commit time the change carries. Without a recorder (the Lambdas, or a
//! process that installed another) counting costs next to nothing.

use std::sync::{Arc, OnceLock};

use api::EventHub;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::embedded::{Db, DbError, bus_queue, checkpoints, stream};

/// Deliveries to a bus target, by `consumer` and `outcome` (`delivered`, `retried`,
/// `dead_lettered`).
pub const DELIVERIES: &str = "outboxdemo_deliveries_total";
/// Tries that failed and will be made again, by `source` (`stream`: a stream record the
/// processor failed; `bus`: a delivery).
pub const RETRIES: &str = "outboxdemo_retries_total";
/// Records committed that the processor has not finished with.
pub const STREAM_LAG_RECORDS: &str = "outboxdemo_stream_lag_records";
/// How long ago the oldest record the processor has not finished with was committed.
pub const STREAM_LAG_SECONDS: &str = "outboxdemo_stream_lag_seconds";
/// Deliveries waiting in a target's queue, by `consumer`.
pub const QUEUE_DEPTH: &str = "outboxdemo_queue_depth";
/// Subscriptions open now.
pub const SUBSCRIPTIONS_OPEN: &str = "outboxdemo_subscriptions_open";

/// The buckets of the latency histograms, in seconds: from a quiet stack's few milliseconds
/// to the minutes of a backlog or a retried delivery.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's Prometheus recorder, installed by the first call; `None` when another
/// recorder was installed first (the metrics then go there).
pub fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(api::metrics::MUTATION_TO_SUBSCRIBER.to_owned()),
                    LATENCY_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(consumers::metrics::MUTATION_TO_CONSUMER.to_owned()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|error| tracing::warn!(%error, "metrics are recorded elsewhere"))
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    api::metrics::describe();
    processor::metrics::describe();
    consumers::metrics::describe();
    describe_counter!(
        DELIVERIES,
        "Deliveries to a bus target, by consumer and outcome"
    );
    describe_counter!(RETRIES, "Failed tries that will be made again, by source");
    describe_gauge!(
        STREAM_LAG_RECORDS,
        "Records committed that the processor has not finished with"
    );
    describe_gauge!(
        STREAM_LAG_SECONDS,
        metrics::Unit::Seconds,
        "Age of the oldest record the processor has not finished with"
    );
    describe_gauge!(QUEUE_DEPTH, "Deliveries waiting in a target's queue");
    describe_gauge!(SUBSCRIPTIONS_OPEN, "Subscriptions open now");
}

/// What `/metrics` reads its gauges from.
#[derive(Clone)]
struct Sources {
    handle: PrometheusHandle,
    db: Arc<Db>,
    hub: EventHub,
    consumers: Arc<[String]>,
}

/// The `/metrics` route over `db`'s stream and queues and `hub`'s subscriptions; `consumers`
/// are the bus's targets (each has a depth, zero or not).
pub fn route(
    handle: PrometheusHandle,
    db: Arc<Db>,
    hub: EventHub,
    consumers: Vec<String>,
) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Sources {
            handle,
            db,
            hub,
            consumers: consumers.into(),
        })
}

/// The stream reader's lag and the queues' depths, as the store has them now.
struct Readings {
    lag_records: i64,
    lag_seconds: f64,
    depths: Vec<(String, u64)>,
}

fn read_state(conn: &rusqlite::Connection) -> Result<Readings, DbError> {
    let checkpoint = checkpoints::get(conn, crate::stream::PROCESSOR)?;
    let last = stream::last_seq(conn)?;
    let oldest = stream::after(conn, checkpoint, 1)?;
    let lag_seconds = oldest.first().map_or(0.0, |record| {
        let age_ms = chrono::Utc::now().timestamp_millis() - record.created_at_ms;
        age_ms.max(0) as f64 / 1000.0
    });
    Ok(Readings {
        lag_records: last - checkpoint,
        lag_seconds,
        depths: bus_queue::count_by_target(conn)?,
    })
}

async fn scrape(State(sources): State<Sources>) -> Response {
    let state = match sources.db.read(read_state).await {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(%error, "cannot read the store for /metrics");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    metrics::gauge!(STREAM_LAG_RECORDS).set(state.lag_records as f64);
    metrics::gauge!(STREAM_LAG_SECONDS).set(state.lag_seconds);
    for consumer in sources.consumers.iter() {
        let depth = state
            .depths
            .iter()
            .find(|(target, _)| target == consumer)
            .map_or(0, |(_, depth)| *depth);
        metrics::gauge!(QUEUE_DEPTH, "consumer" => consumer.clone()).set(depth as f64);
    }
    metrics::gauge!(SUBSCRIPTIONS_OPEN).set(sources.hub.subscribers() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sources.handle.render(),
    )
        .into_response()
}
