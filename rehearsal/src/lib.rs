//! The AWS deployment of outboxdemo rehearsed on one machine, with no AWS account and no
//! Docker: moto server holds the data services (DynamoDB and its stream, EventBridge, SQS), the
//! seven Lambda bootstraps run as real processes under a Lambda Runtime API, and what AWS does
//! between them — the event source mapping, EventBridge's asynchronous invocation of its
//! targets, the HTTP and WebSocket APIs — is emulated here as AWS's documentation describes it,
//! with every setting read from `template.yaml`.
//!
//! - [`template`]: `template.yaml` and its intrinsics, resolved against what was created.
//! - [`resources`]: what the template declares, created on moto, and the names intrinsics
//!   resolve to.
//! - [`stream_mapping`]: Lambda's event source mapping for DynamoDB Streams.
//! - [`sqs_mapping`]: Lambda's event source mapping for SQS queues (the notifier's fan-out).
//! - [`async_invoke`]: EventBridge rule targets invoking Lambda asynchronously: both retry
//!   layers and their dead letters.
//! - [`http_api`], [`websocket_api`]: API Gateway's HTTP API (payload format 2.0) and
//!   WebSocket API with its `@connections` Management API.
//! - [`authorizers`]: the Lambda authorizers in front of both APIs, and the HTTP API's CORS.
//! - [`faults`]: a proxy between the functions and moto that refuses PutEvents entries,
//!   throttles, and fails writes, as AWS can and moto does not.
//! - [`stack`]: [`Rehearsal`](stack::Rehearsal), everything above wired as AWS wires it.
//! - [`invoke_api`]: Lambda's Invoke API for the functions (`aws lambda invoke`).
//! - [`status`]: what the deployment holds (open subscriptions), for tests and the curious.
//! - [`lambda`]: a function as a pool of execution environments (processes) under a Runtime
//!   API: one invocation each at a time, timeouts, crashes and cold starts as on Lambda.

pub mod async_invoke;
pub mod authorizers;
pub mod faults;
pub mod http_api;
pub mod invoke_api;
pub mod lambda;
pub mod resources;
pub mod sqs_mapping;
pub mod stack;
pub mod status;
pub mod stream_mapping;
pub mod template;
pub mod websocket_api;
