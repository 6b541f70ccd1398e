//! The local stack of outboxdemo: the whole pipeline in one process, with the same handler
//! functions and the same event shapes the Lambdas get on AWS.
//!
//! - [`embedded`]: the durable store (SQLite, WAL). [`embedded::Db`] runs a group-commit writer
//!   thread and a pool of readers; [`embedded::schema`] versions the schema and migrates it
//!   forward on open; one module per table owns that table's DDL and every statement on it
//!   (`books`, `stream`, `checkpoints`, `stream_dead_letters`, `bus_queue`, `bus_dead_letters`,
//!   `activity`), and [`embedded::EmbeddedDeadLetters`] lists and redrives both kinds of dead
//!   letter.
//! - [`stream`]: the stream reader, DynamoDB Streams + Lambda's event source mapping locally:
//!   it feeds the processor batches of `aws_lambda_events::dynamodb::Event`s built from the
//!   stored records, honours `batchItemFailures`, and dead-letters what keeps failing.
//! - [`bus`]: the local event bus, EventBridge + its rules locally: routes and targets (the
//!   consumers and the subscriptions), and the delivery tasks, which take each target's durable
//!   queue in order, overlap a consumer's deliveries where its store allows, retry, and
//!   dead-letter.
//! - [`faults`]: fault injection for tests and drills (off by default; the `--fault-…` flags).
//! - [`cli`]: the `dead-letters` subcommands: list, show, redrive.
//! - [`metrics`]: `/metrics` in the Prometheus text format: the pipeline's counters, and the
//!   stream reader's lag, the queues' depth and the open subscriptions read when scraped.
//! - [`hosts`]: a server on a loopback address answers only for loopback host names (DNS
//!   rebinding).
//! - [`stack`]: the wiring, its [`stack::Settings`] (also the command line's flags), and
//!   [`stack::run`], which serves it all until told to stop.

#![warn(missing_docs)]

pub mod bus;
pub mod cli;
pub mod embedded;
pub mod faults;
pub mod hosts;
pub mod metrics;
pub mod stack;
pub mod stream;
