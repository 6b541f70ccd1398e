//! [`Db`]: the writer thread, the pool of reader connections, and running blocking SQLite work
//! off the async runtime.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;

use super::group_commit::{self, Job};
use super::{DB_FILE, DbError, private, schema};

/// A write submitted with [`Db::write`] and not yet awaited; it commits whether or not it is.
pub type WriteInFlight = std::pin::Pin<Box<dyn Future<Output = Result<(), DbError>> + Send>>;

/// The embedded database.
///
/// Writes go to one writer thread that group-commits them (see the `group_commit` module): a
/// caller hears `Ok` only once its write is durable, and writes apply in the order they were
/// submitted. Reads use a small pool of read-only connections, so they never wait for a commit
/// (on disk; in memory they share the one connection).
#[derive(Debug)]
pub struct Db {
    jobs: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Woken after every commit that appends to the stream.
    stream_appended: Arc<Notify>,
}

impl Db {
    /// Opens (creating if needed) the database in `dir`, bringing its schema up to
    /// [`schema::CURRENT`] first. The directory and its files are private to the user (see
    /// `private`).
    pub fn open(dir: &Path) -> Result<Arc<Self>, DbError> {
        private::prepare(dir)?;
        let path = dir.join(DB_FILE);
        let mut writer = Connection::open(&path)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "cannot use WAL mode (got {mode})"
            )));
        }
        configure(&writer)?;
        schema::migrate(&mut writer)?;
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
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        Self::start(conn, Vec::new())
    }

    fn start(writer: Connection, readers: Vec<Mutex<Connection>>) -> Result<Arc<Self>, DbError> {
        let writer = Arc::new(Mutex::new(writer));
        let (jobs, queue) = mpsc::channel();
        let conn = Arc::clone(&writer);
        let writer_thread = std::thread::Builder::new()
            .name("db-writer".to_owned())
            .spawn(move || group_commit::group_commits(&conn, &queue))?;
        Ok(Arc::new(Self {
            jobs: Some(jobs),
            writer_thread: Some(writer_thread),
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
            stream_appended: Arc::new(Notify::new()),
        }))
    }

    /// Runs `work` in the next group commit and resolves once it is durable.
    ///
    /// The write is queued when this is *called*, not when the future is first polled, so
    /// writes apply in the order of the calls (the bus's overlapped deliveries rely on it). `work`
    /// sees a connection inside a transaction; an `Err` from it rolls back what it did, and only
    /// that.
    pub fn write<T, F>(&self, work: F) -> impl Future<Output = Result<T, DbError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.write_then(work, || {})
    }

    /// [`Db::write`] of a `work` that appends to the stream: the stream reader is woken by the
    /// writer thread as soon as the commit is done, while the caller is still being answered.
    pub fn write_appending<T, F>(
        &self,
        work: F,
    ) -> impl Future<Output = Result<T, DbError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let appended = Arc::clone(&self.stream_appended);
        self.write_then(work, move || appended.notify_one())
    }

    fn write_then<T, F, C>(
        &self,
        work: F,
        committed: C,
    ) -> impl Future<Output = Result<T, DbError>> + use<T, F, C>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
        C: FnOnce() + Send + 'static,
    {
        let (job, answer) = group_commit::job(work, committed);
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

    /// [`Db::read`] for a short read on the latency path (the stream reader's read of the
    /// records just committed: an indexed range of a few rows). It runs on this very thread when
    /// a reader connection is free, without the hop to the blocking pool and back, which costs
    /// more than such a read; when none is free it takes the hop rather than wait here.
    pub async fn read_short<T, F>(self: &Arc<Self>, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        if let Some(conn) = self
            .readers
            .iter()
            .find_map(|reader| reader.try_lock().ok())
        {
            return work(&conn);
        }
        self.read(work).await
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

    /// Tells the stream reader that records were committed (by a write that was not
    /// [`Db::write_appending`], which tells it itself).
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

    /// A table of the tests' own, so that these tests depend on no table of the store.
    const SCRATCH: &str = "CREATE TABLE scratch (key TEXT PRIMARY KEY, value INTEGER NOT NULL)";

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    fn insert(db: &Db, key: &'static str, value: i64) -> impl Future<Output = Result<(), DbError>> {
        db.write(move |conn| {
            conn.execute("INSERT INTO scratch VALUES (?1, ?2)", params![key, value])?;
            Ok(())
        })
    }

    async fn scratch(db: &Db) {
        db.write(|conn| Ok(conn.execute_batch(SCRATCH)?))
            .await
            .unwrap();
    }

    async fn rows_with(db: &Arc<Db>, key: &'static str) -> i64 {
        db.read(move |conn| {
            Ok(
                conn.query_row("SELECT count(*) FROM scratch WHERE key = ?1", [key], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
        .unwrap()
    }

    /// Writes issued together share commits, apply in the order they were called, and one
    /// that fails (or panics) takes only its own changes back.
    #[tokio::test]
    async fn a_failed_write_rolls_back_alone_and_the_rest_commit_in_call_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        scratch(&db).await;
        let writes: Vec<_> = (0..300)
            .map(|i| {
                db.write(move |conn| {
                    conn.execute(
                        "INSERT INTO scratch (key, value) VALUES (?1, ?2)",
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
                let mut statement = conn.prepare("SELECT value FROM scratch ORDER BY rowid")?;
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
        assert_eq!(count(&reopened, "SELECT count(*) FROM scratch"), 294);
    }

    /// A write that breaks the surrounding transaction fails its whole group, and says so to
    /// every member; the next group starts clean.
    #[tokio::test]
    async fn a_write_that_ends_the_transaction_fails_its_group_and_the_next_group_is_fine() {
        let db = Db::in_memory().unwrap();
        scratch(&db).await;
        let first = insert(&db, "a", 1);
        let breaker = db.write(|conn| {
            conn.execute_batch("ROLLBACK")?;
            Ok(())
        });
        let after = insert(&db, "b", 2);
        let (first, breaker, after) = tokio::join!(first, breaker, after);
        assert!(breaker.is_err());
        // `first` shared the broken group or committed before it; either way the table agrees.
        assert_eq!(first.is_ok(), rows_with(&db, "a").await == 1);
        assert_eq!(after.is_ok(), rows_with(&db, "b").await == 1);
        insert(&db, "c", 3).await.unwrap();
    }
}
