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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, oneshot};

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
    /// The group commit this write was part of did not commit, so the write did not happen.
    #[error("not committed: {0}")]
    Commit(String),
}

/// A write submitted with [`Db::write`] and not yet awaited; it commits whether or not it is.
pub type WriteInFlight = std::pin::Pin<Box<dyn Future<Output = Result<(), DbError>> + Send>>;

/// The most writes one group commit takes in.
const MAX_GROUP: usize = 512;

/// The embedded database.
///
/// Writes go to one writer thread that owns the writer connection and *group-commits*: it takes
/// every write waiting for it, runs each in its own savepoint inside one transaction, commits
/// that transaction once (one fsync for the whole group) and only then answers each caller. A
/// caller therefore hears `Ok` only once its write is durable, exactly as with a commit of its
/// own; a write that fails rolls back to its savepoint and leaves the rest of the group alone.
/// Writes are applied in the order they were submitted.
///
/// Reads use a small pool of read-only connections, so they never wait for a commit (on disk;
/// in memory they share the one connection).
#[derive(Debug)]
pub struct Db {
    jobs: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Woken after every commit that appends to the stream.
    stream_appended: Notify,
}

/// A write, as the writer thread runs it: given the open transaction (or why there is none), it
/// does its work and hands back what to do once the group's commit succeeded or failed.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Ran + Send>;

/// Answers a job's caller, given whether the group committed (or why not).
type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// What a job left behind: whether the group's transaction is still usable, and the reply to
/// send once the commit's outcome is known.
struct Ran {
    usable: bool,
    reply: Reply,
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
        let readers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(2, 4);
        let readers = (0..readers)
            .map(|_| {
                let reader = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&reader)?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Self::start(writer, readers)
    }

    /// Opens a throwaway database that lives in memory.
    pub fn in_memory() -> Result<Arc<Self>, DbError> {
        let conn = Connection::open_in_memory()?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        Self::start(conn, Vec::new())
    }

    fn start(writer: Connection, readers: Vec<Mutex<Connection>>) -> Result<Arc<Self>, DbError> {
        let writer = Arc::new(Mutex::new(writer));
        let (jobs, queue) = mpsc::channel();
        let conn = Arc::clone(&writer);
        let writer_thread = std::thread::Builder::new()
            .name("db-writer".to_owned())
            .spawn(move || group_commits(&conn, &queue))?;
        Ok(Arc::new(Self {
            jobs: Some(jobs),
            writer_thread: Some(writer_thread),
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
            stream_appended: Notify::new(),
        }))
    }

    /// Runs `work` in the next group commit and resolves once it is durable.
    ///
    /// The write is queued when this is *called*, not when the future is first polled, so
    /// writes apply in the order of the calls. `work` sees a connection inside a transaction;
    /// an `Err` from it rolls back what it did, and only that.
    pub fn write<T, F>(&self, work: F) -> impl Future<Output = Result<T, DbError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let (result, usable) = match conn {
                Ok(conn) => in_savepoint(conn, work),
                Err(reason) => (Err(DbError::Commit(reason.to_owned())), true),
            };
            Ran {
                usable,
                reply: Box::new(move |committed| {
                    let _ = reply.send(match (result, committed) {
                        (Ok(value), Ok(())) => Ok(value),
                        (Ok(_), Err(reason)) => Err(DbError::Commit(reason.to_owned())),
                        (Err(error), _) => Err(error),
                    });
                }),
            }
        });
        let queued = match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        async move {
            if !queued {
                return Err(DbError::Worker("the writer thread has stopped".to_owned()));
            }
            answer
                .await
                .map_err(|_| DbError::Worker("the writer thread dropped a write".to_owned()))?
        }
    }

    /// Runs `work` on a reader connection, off the async runtime.
    pub async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = db.reader()?;
            work(&conn)
        })
        .await
        .map_err(|e| DbError::Worker(e.to_string()))?
    }

    /// A free reader connection if there is one, else the next in turn (waiting for it).
    fn reader(&self) -> Result<MutexGuard<'_, Connection>, DbError> {
        if self.readers.is_empty() {
            return lock(&self.writer);
        }
        for reader in &self.readers {
            if let Ok(conn) = reader.try_lock() {
                return Ok(conn);
            }
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[turn])
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

impl Drop for Db {
    /// Lets the writer thread finish what is queued and close the connection.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.writer_thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn lock(conn: &Mutex<Connection>) -> Result<MutexGuard<'_, Connection>, DbError> {
    conn.lock().map_err(|e| DbError::Worker(e.to_string()))
}

/// The writer thread: one transaction and one commit per group of waiting writes, until every
/// sender is gone.
fn group_commits(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // A panic in an earlier job is contained below, so a poisoned lock holds a sound
        // connection.
        let conn = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        commit_group(&conn, group);
    }
}

fn commit_group(conn: &Connection, group: Vec<Job>) {
    if let Err(error) = run(conn, "BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a transaction: {error}");
        for job in group {
            (job(Err(&reason)).reply)(Err(&reason));
        }
        return;
    }
    let mut replies = Vec::with_capacity(group.len());
    let mut aborted = None;
    for job in group {
        match &aborted {
            None => {
                let ran = job(Ok(conn));
                if !ran.usable {
                    aborted = Some("an earlier write in the same commit broke the transaction");
                }
                replies.push(ran.reply);
            }
            Some(reason) => replies.push(job(Err(reason)).reply),
        }
    }
    let outcome = match aborted {
        Some(reason) => {
            let _ = run(conn, "ROLLBACK");
            Err(reason.to_owned())
        }
        None => run(conn, "COMMIT").map_err(|error| {
            let _ = run(conn, "ROLLBACK");
            format!("commit failed: {error}")
        }),
    };
    let outcome = outcome.as_ref().map(|_| ()).map_err(String::as_str);
    for reply in replies {
        reply(outcome);
    }
}

/// Runs `work` in a savepoint, rolled back if it fails. Also says whether the surrounding
/// transaction is still usable (not when the savepoint itself could not be taken or ended).
/// A panic in `work` is caught and rolled back like an error.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, DbError>,
) -> (Result<T, DbError>, bool) {
    if let Err(error) = run(conn, "SAVEPOINT job") {
        return (Err(error.into()), false);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
        .unwrap_or_else(|_| Err(DbError::Worker("a write panicked".to_owned())));
    let end = match &result {
        Ok(_) => run(conn, "RELEASE job"),
        Err(_) => run(conn, "ROLLBACK TO job").and_then(|()| run(conn, "RELEASE job")),
    };
    let usable = end.is_ok() && !conn.is_autocommit();
    match end {
        Err(error) if result.is_ok() => (Err(error.into()), false),
        _ => (result, usable),
    }
}

/// Runs one statement without parameters, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Durable commits (`synchronous = FULL` fsyncs the WAL on every commit), enforced constraints,
/// and waiting rather than failing when the other connection holds a lock.
fn configure(conn: &Connection) -> Result<(), DbError> {
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rusqlite::params;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// Writes issued together share commits, apply in the order they were called, and one
    /// that fails (or panics) takes only its own changes back.
    #[tokio::test]
    async fn a_failed_write_rolls_back_alone_and_the_rest_commit_in_call_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let writes: Vec<_> = (0..300)
            .map(|i| {
                db.write(move |conn| {
                    conn.execute(
                        "INSERT INTO checkpoints (reader, seq) VALUES (?1, ?2)",
                        params![format!("r{i}"), i],
                    )?;
                    match i % 100 {
                        13 => Err(DbError::Corrupt("refused".to_owned())),
                        14 => panic!("a bug in a write"),
                        _ => Ok(i),
                    }
                })
            })
            .collect();
        let results = futures_util::future::join_all(writes).await;
        for (i, result) in results.iter().enumerate() {
            match i % 100 {
                13 | 14 => assert!(result.is_err(), "write {i} should fail"),
                _ => assert_eq!(result.as_ref().unwrap(), &(i as i64)),
            }
        }
        let seen = db
            .read(|conn| {
                let mut statement = conn.prepare("SELECT seq FROM checkpoints ORDER BY rowid")?;
                let rows = statement.query_map([], |row| row.get::<_, i64>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        let expected: Vec<i64> = (0..300).filter(|i| !matches!(i % 100, 13 | 14)).collect();
        assert_eq!(seen, expected);

        // Durable: a fresh open of the same file sees every acknowledged write.
        drop(db);
        let reopened = Connection::open(dir.path().join(DB_FILE)).unwrap();
        assert_eq!(count(&reopened, "SELECT count(*) FROM checkpoints"), 294);
    }

    /// A write that breaks the surrounding transaction fails its whole group, and says so to
    /// every member; the next group starts clean.
    #[tokio::test]
    async fn a_write_that_ends_the_transaction_fails_its_group_and_the_next_group_is_fine() {
        let db = Db::in_memory().unwrap();
        let first = db.write(|conn| {
            conn.execute("INSERT INTO checkpoints (reader, seq) VALUES ('a', 1)", [])?;
            Ok(())
        });
        let breaker = db.write(|conn| {
            conn.execute_batch("ROLLBACK")?;
            Ok(())
        });
        let after = db.write(|conn| {
            conn.execute("INSERT INTO checkpoints (reader, seq) VALUES ('b', 2)", [])?;
            Ok(())
        });
        let (first, breaker, after) = tokio::join!(first, breaker, after);
        assert!(breaker.is_err());
        // `first` shared the broken group or committed before it; either way the table agrees.
        let committed = db
            .read(|conn| {
                Ok(count(
                    conn,
                    "SELECT count(*) FROM checkpoints WHERE reader = 'a'",
                ))
            })
            .await
            .unwrap();
        assert_eq!(first.is_ok(), committed == 1);
        let b = db
            .read(|conn| {
                Ok(count(
                    conn,
                    "SELECT count(*) FROM checkpoints WHERE reader = 'b'",
                ))
            })
            .await
            .unwrap();
        assert_eq!(after.is_ok(), b == 1);

        db.write(|conn| {
            conn.execute("INSERT INTO checkpoints (reader, seq) VALUES ('c', 3)", [])?;
            Ok(())
        })
        .await
        .unwrap();
    }
}
