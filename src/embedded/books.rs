//! The `books` table: [`EmbeddedBookStore`], whose every write commits the book and its record
//! in the [`stream`] table in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use api::{BookStore, CatalogueVersion, Page, StoreError};
use async_trait::async_trait;
use domain::item::{self, ChangeTrace};
use domain::{Book, BookName};
use rusqlite::{Connection, OptionalExtension, params};
use telemetry::InHop as _;

use super::{Db, DbError, stream};

/// Version 1 of the table: the item as DynamoDB JSON, keyed by the book's name.
pub(super) const DDL_V1: &str = "
CREATE TABLE IF NOT EXISTS books (
    name TEXT PRIMARY KEY,
    item TEXT NOT NULL
) WITHOUT ROWID;";

/// A [`BookStore`] on the embedded database. Every write commits the item and its stream
/// record (`INSERT` with the new image, `REMOVE` with the old one) in one transaction, as
/// DynamoDB Streams records exactly the committed changes.
///
/// It is the catalogue's only writer, so it can tell when the catalogue may have changed
/// ([`CatalogueVersion`]): the version moves once each write has committed (or failed), before
/// the write is answered.
#[derive(Debug, Clone)]
pub struct EmbeddedBookStore {
    db: Arc<Db>,
    version: Arc<AtomicU64>,
}

impl EmbeddedBookStore {
    /// A store on `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            version: Arc::default(),
        }
    }

    /// Marks the end of a write, whatever it did.
    fn written(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl CatalogueVersion for EmbeddedBookStore {
    fn catalogue_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

fn item_json(book: &Book, trace: &ChangeTrace) -> Result<String, DbError> {
    Ok(serde_json::to_string(&item::to_traced_item(book, trace))?)
}

fn book_from_json(json: &str) -> Result<Book, DbError> {
    let item = serde_json::from_str(json)?;
    item::from_item(item).map_err(|e| DbError::Corrupt(format!("stored item is not a book: {e}")))
}

/// Appends the change's stream record in the caller's write (so it commits with the change).
fn append_record(
    conn: &Connection,
    event_name: &str,
    name: &BookName,
    new_image: Option<&str>,
    old_image: Option<&str>,
) -> Result<(), DbError> {
    let keys = serde_json::to_string(&item::key(name))?;
    stream::append(conn, event_name, &keys, new_image, old_image)
}

enum Outcome<T> {
    Done(T),
    Refused(StoreError),
}

fn into_result<T>(outcome: Result<Outcome<T>, DbError>) -> Result<T, StoreError> {
    match outcome {
        Ok(Outcome::Done(value)) => Ok(value),
        Ok(Outcome::Refused(error)) => Err(error),
        Err(error) => Err(StoreError::unavailable(error)),
    }
}

#[async_trait]
impl BookStore for EmbeddedBookStore {
    async fn add(&self, book: &Book) -> Result<(), StoreError> {
        let (hop, trace) = api::spans::store_write("add", &book.name);
        let book = book.clone();
        let json = item_json(&book, &trace).map_err(StoreError::unavailable)?;
        let outcome = self
            .db
            .write_appending(move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO books (name, item) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                    )?
                    .execute(params![book.name.as_str(), json])?;
                if inserted == 0 {
                    return Ok(Outcome::Refused(StoreError::Conflict(book.name)));
                }
                append_record(conn, "INSERT", &book.name, Some(&json), None)?;
                Ok(Outcome::Done(()))
            })
            .in_hop(hop)
            .await;
        self.written();
        into_result(outcome)
    }

    /// The `REMOVE` record carries no trace, as on DynamoDB (a deleted item has no new image).
    async fn remove(&self, name: &BookName) -> Result<Book, StoreError> {
        let (hop, _) = api::spans::store_write("remove", name);
        let name = name.clone();
        let outcome = self
            .db
            .write_appending(move |conn| {
                let old: Option<String> = conn
                    .prepare_cached("DELETE FROM books WHERE name = ?1 RETURNING item")?
                    .query_row([name.as_str()], |row| row.get(0))
                    .optional()?;
                let Some(old) = old else {
                    return Ok(Outcome::Refused(StoreError::NotFound(name)));
                };
                let book = book_from_json(&old)?;
                append_record(conn, "REMOVE", &name, None, Some(&old))?;
                Ok(Outcome::Done(book))
            })
            .in_hop(hop)
            .await;
        self.written();
        into_result(outcome)
    }

    async fn get(&self, name: &BookName) -> Result<Option<Book>, StoreError> {
        let name = name.clone();
        self.db
            .read(move |conn| {
                let json: Option<String> = conn
                    .prepare_cached("SELECT item FROM books WHERE name = ?1")?
                    .query_row([name.as_str()], |row| row.get(0))
                    .optional()?;
                json.as_deref().map(book_from_json).transpose()
            })
            .await
            .map_err(StoreError::unavailable)
    }

    async fn list(&self, first: usize, after: Option<&BookName>) -> Result<Page<Book>, StoreError> {
        let after = after.map(|name| name.as_str().to_owned());
        self.db
            .read(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT item FROM books WHERE ?1 IS NULL OR name > ?1 ORDER BY name LIMIT ?2",
                )?;
                let rows = statement.query_map(params![after, first as i64 + 1], |row| {
                    row.get::<_, String>(0)
                })?;
                let items = rows
                    .map(|json| book_from_json(&json?))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page::of_one_more(items, first))
            })
            .await
            .map_err(StoreError::unavailable)
    }
}
