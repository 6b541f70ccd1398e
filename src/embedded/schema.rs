//! The schema's version and its forward migrations.
//!
//! `PRAGMA user_version` holds the version a database is at, and `migrate` brings it to
//! [`CURRENT`] when the database is opened: one migration per version, each in a transaction of
//! its own together with the version bump, so a crash leaves the database at one version or the
//! next. Each table's module owns its DDL; a migration lists the statements, in order, that take
//! the tables from one version to the next. Version 0 is a data directory written before there
//! were versions: its tables are version 1's, which is why version 1's statements create only
//! what is missing. A database at a newer version than this program knows is refused rather
//! than guessed at.

use rusqlite::{Connection, TransactionBehavior};

use super::{
    DbError, activity, books, bus_dead_letters, bus_queue, checkpoints, stream, stream_dead_letters,
};

/// The migrations: `MIGRATIONS[n]` takes a database from version `n` to `n + 1`.
const MIGRATIONS: &[&[&str]] = &[
    // 1: the seven tables as first released.
    &[
        books::DDL_V1,
        stream::DDL_V1,
        checkpoints::DDL_V1,
        stream_dead_letters::DDL_V1,
        bus_queue::DDL_V1,
        bus_dead_letters::DDL_V1,
        activity::DDL_V1,
    ],
    // 2: activity entries unique per (event id, consumer).
    &[activity::DDL_V2],
    // 3: no queue for the subscriptions, which the bus feeds in memory.
    &[bus_queue::DDL_V3],
];

/// The schema version this program writes.
pub const CURRENT: u32 = MIGRATIONS.len() as u32;

/// The version the database is at.
pub fn version(conn: &Connection) -> Result<u32, DbError> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// Brings the database to [`CURRENT`], one version at a time. The version is read again inside
/// each migration's transaction, so two processes opening one database migrate it once.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    loop {
        let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let from = version(&transaction)?;
        if from > CURRENT {
            return Err(DbError::NewerSchema(from));
        }
        let Some(statements) = MIGRATIONS.get(from as usize) else {
            return Ok(()); // at CURRENT; dropping the transaction ends it
        };
        for statement in *statements {
            transaction.execute_batch(statement)?;
        }
        transaction.pragma_update(None, "user_version", from + 1)?;
        transaction.commit()?;
        tracing::info!(from, to = from + 1, "store schema migrated");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_new_database_is_at_the_current_version_and_migrating_again_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
    }

    #[test]
    fn a_database_of_a_newer_version_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", CURRENT + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(DbError::NewerSchema(v)) if v == CURRENT + 1
        ));
    }
}
