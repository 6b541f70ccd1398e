//! Test support for outboxdemo's AWS code paths, shared by the crates' integration tests.
//!
//! - [`batch`]: what a stream batch handler answered (its batch item failures).
//! - [`bus`]: an event bus with the template's rules, each delivering to a queue to read.
//! - [`introspection`]: the introspection queries of graphql-js, which every tool sends.
//! - [`management`]: a recording stand-in for API Gateway's Management API.
//! - [`moto`]: the AWS API emulator the test command starts (`AWS_ENDPOINT_URL`), SDK
//!   configuration for it, and unique resource names so tests can share one emulator.
//! - [`tables`]: the books and activity tables as the template declares them.
//! - [`streams`]: reads a table's DynamoDB stream back through the Streams API and presents
//!   the records as the Lambda event the processor gets, as Lambda's event source mapping does.
//! - [`template`]: reads `template.yaml`, so tests use the very rule patterns that deploy.
//! - [`otlp`]: an OTLP/HTTP trace receiver, where processes under test export their spans.
//! - [`runtime`]: a Lambda Runtime API on 127.0.0.1 that runs a Lambda binary for real and
//!   invokes it with events.

pub mod batch;
pub mod bus;
pub mod introspection;
pub mod management;
pub mod moto;
pub mod otlp;
pub mod runtime;
pub mod streams;
pub mod tables;
pub mod template;
