//! The domain of outboxdemo, shared by every other crate and depending on none of them.
//!
//! - [`book`]: [`Book`] and its parts, each a type that can only hold a valid value
//!   (parse, don't validate).
//! - [`item`]: the codec between a [`Book`] and its DynamoDB item, in the attribute-value form
//!   that both the DynamoDB API and DynamoDB Streams records use.
//! - [`event`]: the event contract that consumers depend on: source, detail types and the
//!   metadata/data envelope.
//! - [`activity`]: what a consumer records when it has reacted to an event.
//! - [`journal`]: the layout of the journal table, where the processor on AWS gives every
//!   event it publishes a position of one total order.
//! - [`backoff`]: [`Backoff`], the one rule for how long a retry waits.

pub mod activity;
pub mod backoff;
pub mod book;
pub mod event;
pub mod item;
pub mod journal;

pub use activity::ActivityEntry;
pub use backoff::Backoff;
pub use book::{Author, Authors, Book, BookField, BookName, InvalidBook, PublishedYear};
pub use event::{BookSnapshot, DetailType, Envelope, Metadata};
