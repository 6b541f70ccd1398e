//! The writer thread of the embedded store: it owns the writer connection and *group-commits*.
//!
//! It takes every write waiting for it, runs each in its own savepoint inside one transaction,
//! commits that transaction once (one fsync for the whole group) and only then answers each
//! caller. A caller therefore hears `Ok` only once its write is durable, exactly as with a
//! commit of its own; a write that fails rolls back to its savepoint and leaves the rest of the
//! group alone. Writes are applied in the order they were submitted.

use std::sync::{Mutex, mpsc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::DbError;

/// The most writes one group commit takes in.
const MAX_GROUP: usize = 512;

/// A write, as the writer thread runs it: given the open transaction (or why there is none), it
/// does its work and hands back what to do once the group's commit succeeded or failed.
pub(super) type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Ran + Send>;

/// Answers a job's caller, given whether the group committed (or why not).
type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// What a job left behind: whether the group's transaction is still usable, and the reply to
/// send once the commit's outcome is known.
pub(super) struct Ran {
    usable: bool,
    reply: Reply,
}

/// `work` as a job, and the receiver of its outcome: its own result once the group committed.
/// `committed` runs on the writer thread once `work` succeeded and the group committed, before
/// the caller is answered.
pub(super) fn job<T, F>(
    work: F,
    committed: impl FnOnce() + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T, DbError>>)
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
            reply: Box::new(move |outcome| {
                let _ = reply.send(match (result, outcome) {
                    (Ok(value), Ok(())) => {
                        committed();
                        Ok(value)
                    }
                    (Ok(_), Err(reason)) => Err(DbError::Commit(reason.to_owned())),
                    (Err(error), _) => Err(error),
                });
            }),
        }
    });
    (job, answer)
}

/// The writer thread: one transaction and one commit per group of waiting writes, until every
/// sender is gone.
pub(super) fn group_commits(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
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
