//! The embedded store: one SQLite database (WAL, durable commits) that holds everything the
//! local stack keeps.
//!
//! The machinery:
//! - [`Db`] (`db`): the connections, and running blocking SQLite work off the async runtime.
//! - `group_commit`: the writer thread, which commits waiting writes together.
//! - [`schema`]: the schema's version and its forward migrations.
//! - `private`: the data directory and the database's files private to the user (Unix).
//!
//! One module per table, each owning the table's DDL and every statement on it:
//! - [`books`]: [`EmbeddedBookStore`], whose every write commits the book and its stream record
//!   in one transaction.
//! - [`stream`]: the change stream's records.
//! - [`checkpoints`]: the stream readers' checkpoints.
//! - [`stream_dead_letters`], [`bus_dead_letters`]: what the processor or a bus target kept
//!   failing.
//! - [`bus_queue`]: the local bus's delivery queues.
//! - [`activity`]: [`EmbeddedActivityStore`], the consumers' conditional put and the API's feed.
//!
//! And [`dead_letters`]: [`EmbeddedDeadLetters`], both dead-letter tables together for listing
//! and redriving.

pub mod activity;
pub mod books;
pub mod bus_dead_letters;
pub mod bus_queue;
pub mod checkpoints;
mod db;
pub mod dead_letters;
mod group_commit;
mod private;
pub mod schema;
pub mod stream;
pub mod stream_dead_letters;

pub use activity::EmbeddedActivityStore;
pub use books::EmbeddedBookStore;
pub use db::{Db, WriteInFlight};
pub use dead_letters::EmbeddedDeadLetters;

/// The database file inside the data directory.
pub const DB_FILE: &str = "outboxdemo.sqlite3";

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON value could not be read or written.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The data directory or the database file could not be created or made private.
    #[error("cannot prepare the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value is not what this version wrote: the file was changed by something else.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database was written by a newer version of this program.
    #[error(
        "the store's schema is at version {0}, newer than this program's {current}: use a newer build",
        current = schema::CURRENT
    )]
    NewerSchema(u32),
    /// A thread panicked while holding a connection, or the blocking task was cancelled.
    #[error("database worker failed: {0}")]
    Worker(String),
    /// The group commit this write was part of did not commit, so the write did not happen.
    #[error("not committed: {0}")]
    Commit(String),
}

/// A stored RFC 3339 time.
fn timestamp(text: &str) -> Result<chrono::DateTime<chrono::Utc>, DbError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.to_utc())
        .map_err(|e| DbError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}
