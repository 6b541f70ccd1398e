//! The embedded store: one SQLite database (WAL, durable commits) that holds everything the
//! local stack keeps: the books table and its change stream, the stream reader's checkpoint,
//! the bus's delivery queues, the dead letters and the consumers' activity.
//!
//! - [`Db`]: the connections, the schema, and running blocking SQLite work off the async
//!   runtime.
//! - [`books`]: [`EmbeddedBookStore`], whose every write commits the book and its stream record
//!   in one transaction.
//! - [`activity`]: [`EmbeddedActivityStore`], the consumers' conditional put and the API's feed.
//! - [`dead_letters`]: [`EmbeddedDeadLetters`], listing and redriving what kept failing.

pub mod activity;
pub mod books;
pub mod dead_letters;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;

pub use activity::EmbeddedActivityStore;
pub use books::EmbeddedBookStore;
pub use dead_letters::EmbeddedDeadLetters;

/// The database file inside the data directory.
pub const DB_FILE: &str = "outboxdemo.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS books (
    name TEXT PRIMARY KEY,
    item TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_name TEXT NOT NULL,
    keys TEXT NOT NULL,
    new_image TEXT,
    old_image TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    reader TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    record TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS bus_queue_by_target ON bus_queue (target, id);
CREATE TABLE IF NOT EXISTS bus_dead_letters (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS activity (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    detail_type TEXT NOT NULL,
    consumer TEXT NOT NULL,
    book TEXT NOT NULL,
    processed_at TEXT NOT NULL
);
";

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON value could not be read or written.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The data directory could not be created.
    #[error("cannot create the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value is not what this version wrote: the file was changed by something else.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A thread panicked while holding a connection, or the blocking task was cancelled.
    #[error("database worker failed: {0}")]
    Worker(String),
}

/// The embedded database: one writer connection, and a reader connection so that reads do not
/// queue behind writes (on disk; in memory both share the one connection).
#[derive(Debug)]
pub struct Db {
    writer: Mutex<Connection>,
    reader: Option<Mutex<Connection>>,
    /// Woken after every commit that appends to the stream.
    stream_appended: Notify,
}

impl Db {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, DbError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let writer = Connection::open(&path)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "cannot use WAL mode (got {mode})"
            )));
        }
        configure(&writer)?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&reader)?;
        Ok(Arc::new(Self {
            writer: Mutex::new(writer),
            reader: Some(Mutex::new(reader)),
            stream_appended: Notify::new(),
        }))
    }

    /// Opens a throwaway database that lives in memory.
    pub fn in_memory() -> Result<Arc<Self>, DbError> {
        let conn = Connection::open_in_memory()?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Arc::new(Self {
            writer: Mutex::new(conn),
            reader: None,
            stream_appended: Notify::new(),
        }))
    }

    /// Runs `work` on the writer connection, off the async runtime.
    pub async fn write<T, F>(self: &Arc<Self>, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let db = Arc::clone(self);
        blocking(move || {
            let mut conn = db
                .writer
                .lock()
                .map_err(|e| DbError::Worker(e.to_string()))?;
            work(&mut conn)
        })
        .await
    }

    /// Runs `work` on the reader connection, off the async runtime.
    pub async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let db = Arc::clone(self);
        blocking(move || {
            let conn = db.reader.as_ref().unwrap_or(&db.writer);
            let conn = conn.lock().map_err(|e| DbError::Worker(e.to_string()))?;
            work(&conn)
        })
        .await
    }

    /// Tells the stream reader that records were committed.
    pub fn notify_stream_appended(&self) {
        self.stream_appended.notify_one();
    }

    /// Resolves after the next [`Db::notify_stream_appended`] (or at once if one is pending).
    pub async fn stream_appended(&self) {
        self.stream_appended.notified().await;
    }
}

/// Durable commits (`synchronous = FULL` fsyncs the WAL on every commit), enforced constraints,
/// and waiting rather than failing when the other connection holds a lock.
fn configure(conn: &Connection) -> Result<(), DbError> {
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

async fn blocking<T, F>(work: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DbError::Worker(e.to_string()))?
}
