//! The processor's handler, through its public interface: on fixture batches (the shapes
//! Lambda sends), and the properties of the mapping for any record Lambda could hand us.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod fixtures;
mod properties;
mod support;
