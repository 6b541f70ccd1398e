//! The local stack end to end, started in this process on port 0 and driven over real HTTP.
//!
//! - `support`: [`support::spawn_app`] and the GraphQL helpers every test here uses.
//! - `http`: the API as a user meets it, and what the consumers did, across a restart.
//! - `operations`: what operators rely on: fault injection, dead letters, limits, the credential.
//! - `limits`: the attacks on input and limits: look-alike and bidi names, over-long
//!   subscription ids, 1,000 subscribes on one socket, a socket over its rate, huge documents.
//! - `resume`: subscriptions that resume after a cursor (a seeded chaos test of writers and
//!   of subscribers that disconnect), a slow subscriber, and the stream's retention.
//! - `upgrade`: a data directory of an older version, upgraded in place.
//! - `web`: pages on other origins: the socket's allow-list, CORS, and dead letters behind
//!   the credential.
//! - `data_dir`: the data directory private to the user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod data_dir;
mod http;
mod limits;
mod operations;
mod resume;
mod support;
mod upgrade;
mod web;
