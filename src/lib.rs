//! The local stack of outboxdemo: the whole pipeline in one process, with the same handler
//! functions and the same event shapes the Lambdas get on AWS.
//!
//! - [`embedded`]: the durable store (SQLite, WAL): books and their change stream, committed
//!   together; checkpoints, queues, dead letters and the consumers' activity.
//! - [`stream`]: the stream reader, DynamoDB Streams + Lambda's event source mapping locally:
//!   it feeds the processor batches of Lambda's DynamoDB event JSON.
//! - [`bus`]: the local event bus, EventBridge + its rules locally: it routes the processor's
//!   events to the consumers from durable queues, with retries and dead letters.
//! - [`faults`]: fault injection for tests and drills (off by default).
//! - [`cli`]: the `dead-letters` subcommands: list, show, redrive.
//! - [`stack`]: the wiring, and [`stack::run`], which serves it all until told to stop.

pub mod bus;
pub mod cli;
pub mod embedded;
pub mod faults;
pub mod stack;
pub mod stream;
