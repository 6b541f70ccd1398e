//! The codec between a [`Book`] and its DynamoDB item.
//!
//! The item is `{"name": S, "authors": L of S, "publishedYear": N}`. Reading also accepts
//! `authors` as a string set (SS), which other writers of the table may use; note that a set
//! does not keep order.
//!
//! Beside the book, an item the API writes carries its [`ChangeTrace`]: `traceparent` (S), the
//! W3C trace context of the write, and `committedAt` (N, milliseconds since the epoch). They
//! are not part of the book (reading a book ignores them) and ride the stream record's new
//! image to the processor.

use serde_dynamo::{AttributeValue, Item};

use crate::activity::ActivityEntry;
use crate::book::{Book, BookName, InvalidBook};

/// The name of the table's partition key attribute.
pub const KEY_ATTRIBUTE: &str = "name";

/// The item attribute holding the writer's W3C `traceparent`.
pub const TRACEPARENT_ATTRIBUTE: &str = "traceparent";
/// The item attribute holding the write's commit time, in milliseconds since the epoch.
pub const COMMITTED_AT_ATTRIBUTE: &str = "committedAt";

/// What an item carries beside its book for observability: the trace of the write that made
/// it and when that write was committed (to the millisecond; a stream record's creation time
/// has whole seconds only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeTrace {
    /// The writer's W3C `traceparent`, if it was traced.
    pub traceparent: Option<String>,
    /// When the writer committed the change.
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ChangeTrace {
    /// The trace of a write committed now, in the trace `traceparent` names.
    pub fn now(traceparent: Option<String>) -> Self {
        let now = chrono::Utc::now();
        // Millisecond precision, as stored, so what is written is what is read back.
        let committed_at = chrono::DateTime::from_timestamp_millis(now.timestamp_millis());
        Self {
            traceparent,
            committed_at,
        }
    }

    /// The trace an item carries; parts that are missing or malformed are `None` (they are
    /// diagnostics and never a reason to refuse an item).
    pub fn of_item(item: &Item) -> Self {
        let traceparent = match item.get(TRACEPARENT_ATTRIBUTE) {
            Some(AttributeValue::S(traceparent)) => Some(traceparent.clone()),
            _ => None,
        };
        let committed_at = match item.get(COMMITTED_AT_ATTRIBUTE) {
            Some(AttributeValue::N(ms)) => ms
                .parse()
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis),
            _ => None,
        };
        Self {
            traceparent,
            committed_at,
        }
    }

    /// Adds these attributes to an item (those that are `Some`).
    pub fn add_to(&self, item: &mut Item) {
        if let Some(traceparent) = &self.traceparent {
            item.insert(
                TRACEPARENT_ATTRIBUTE.to_owned(),
                AttributeValue::S(traceparent.clone()),
            );
        }
        if let Some(committed_at) = self.committed_at {
            item.insert(
                COMMITTED_AT_ATTRIBUTE.to_owned(),
                AttributeValue::N(committed_at.timestamp_millis().to_string()),
            );
        }
    }
}

/// Encodes a book as its item, with the trace of the write that stores it.
pub fn to_traced_item(book: &Book, trace: &ChangeTrace) -> Item {
    let mut item = to_item(book);
    trace.add_to(&mut item);
    item
}

/// Why an item is not a book.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The item's attributes do not have the shape of a book, or hold invalid values.
    #[error("the item is not a valid book: {0}")]
    Malformed(#[from] serde_dynamo::Error),
    /// The key is missing or is not a string.
    #[error("the item has no string attribute `{KEY_ATTRIBUTE}`")]
    MissingKey,
    /// The key is there but is not a valid book name.
    #[error("the item's key is not a valid book name: {0}")]
    InvalidKey(#[from] InvalidBook),
}

/// Encodes a book as its item.
pub fn to_item(book: &Book) -> Item {
    let authors = book
        .authors
        .names()
        .map(|author| AttributeValue::S(author.to_owned()))
        .collect();
    let mut item = Item::default();
    item.insert(
        KEY_ATTRIBUTE.to_owned(),
        AttributeValue::S(book.name.as_str().to_owned()),
    );
    item.insert("authors".to_owned(), AttributeValue::L(authors));
    item.insert(
        "publishedYear".to_owned(),
        AttributeValue::N(book.published_year.get().to_string()),
    );
    item
}

/// Decodes an item into a book, holding it to the same rules as client input.
pub fn from_item(item: Item) -> Result<Book, ItemError> {
    Ok(serde_dynamo::from_item(item)?)
}

/// The key of a book's item: `{"name": S}`.
pub fn key(name: &BookName) -> Item {
    let mut item = Item::default();
    item.insert(
        KEY_ATTRIBUTE.to_owned(),
        AttributeValue::S(name.as_str().to_owned()),
    );
    item
}

/// Reads the book name from a key (or a whole item).
pub fn name_from_key(key: &Item) -> Result<BookName, ItemError> {
    match key.get(KEY_ATTRIBUTE) {
        Some(AttributeValue::S(name)) => Ok(BookName::parse(name)?),
        _ => Err(ItemError::MissingKey),
    }
}

/// The `feed` value (the `byPosition` index's partition key) every activity entry had before
/// the feed was sharded. Entries written then keep it, so a reader queries it too, as the
/// oldest of the feed's partitions (see [`activity_feeds`]).
pub const ACTIVITY_FEED: &str = "activity";

/// How many `feed` values (shards) new activity entries are spread over.
///
/// One `feed` value is one partition key value of the `byPosition` index, and a partition
/// takes at most 1,000 write units per second
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/warm-throughput-scenarios.html>);
/// when an index partition cannot keep up, DynamoDB throttles the writes to the table itself
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/gsi-throttling.html>).
/// With one value the whole feed was held to one partition's rate; with 8 it may take up to
/// 8,000 entries of up to 1 KB a second, above the event bus's quota of target invocations in
/// all but three regions (750 to 4,500 a second;
/// <https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-quota.html>), while a page
/// read costs one query per partition.
///
/// A reader queries every shard below this number, so it may grow (deploy the reader first)
/// but never shrink: entries in the shards above a smaller number would no longer be listed.
pub const ACTIVITY_SHARDS: u32 = 8;

/// The shard of an entry: FNV-1a (64 bits) of its event id, xor-folded to 32 bits as FNV's
/// authors advise for smaller ranges (<http://www.isthe.com/chongo/tech/comp/fnv/>), modulo
/// [`ACTIVITY_SHARDS`]. A pure function of the event id, fixed here rather than `std`'s
/// hasher, whose output may change between Rust releases: every consumer of one event (and
/// every retry) writes to the same shard.
pub fn activity_shard(event_id: &str) -> u32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = event_id.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // The fold keeps the value below 2^32, so the cast is exact.
    let folded = ((hash >> 32) ^ (hash & 0xffff_ffff)) as u32;
    folded % ACTIVITY_SHARDS
}

/// The `feed` value of the entries in `shard`: `activity#<shard>`.
fn shard_feed(shard: u32) -> String {
    format!("{ACTIVITY_FEED}#{shard}")
}

/// The `feed` value (the `byPosition` partition) of an entry for this event id.
pub fn activity_feed(event_id: &str) -> String {
    shard_feed(activity_shard(event_id))
}

/// Every `feed` value a reader of the whole feed queries: the [`ACTIVITY_SHARDS`] shards, then
/// [`ACTIVITY_FEED`], where the entries written before the sharding are.
pub fn activity_feeds() -> impl Iterator<Item = String> {
    (0..ACTIVITY_SHARDS)
        .map(shard_feed)
        .chain(std::iter::once(ACTIVITY_FEED.to_owned()))
}

/// An activity entry's place in the feed: its processing time (fixed-width RFC 3339, so text
/// order is time order), then the entry's table key, consumer and event id, which make it
/// unique and let a position name the item it stands for (a `byPosition` query's start key
/// needs the table key too). Consumer names hold no '#' (see `consumers::ALL`).
pub fn activity_position(entry: &ActivityEntry) -> String {
    format!(
        "{}#{}#{}",
        entry
            .processed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        entry.consumer,
        entry.event_id
    )
}

/// The table key inside a position made by [`activity_position`]: (consumer, event id).
pub fn activity_key_of_position(position: &str) -> Option<(&str, &str)> {
    // The timestamp and the consumer have no '#', so the first two end them, whatever the
    // event id holds.
    let (_, key) = position.split_once('#')?;
    key.split_once('#')
        .filter(|(consumer, event_id)| !consumer.is_empty() && !event_id.is_empty())
}

/// Encodes an activity entry as its item: the entry's fields, plus `feed` (its shard, see
/// [`activity_feed`]) and `position`.
pub fn activity_to_item(entry: &ActivityEntry) -> Result<Item, ItemError> {
    let mut item: Item = serde_dynamo::to_item(entry)?;
    item.insert(
        "feed".to_owned(),
        AttributeValue::S(activity_feed(&entry.event_id)),
    );
    item.insert(
        "position".to_owned(),
        AttributeValue::S(activity_position(entry)),
    );
    Ok(item)
}

/// Decodes an activity entry from its item.
pub fn activity_from_item(item: Item) -> Result<ActivityEntry, ItemError> {
    Ok(serde_dynamo::from_item(item)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Authors, PublishedYear};

    fn dune() -> Book {
        Book {
            name: BookName::parse("Dune").unwrap(),
            authors: Authors::parse(&["Frank Herbert", "Brian Herbert"]).unwrap(),
            published_year: PublishedYear::parse(1965).unwrap(),
        }
    }

    #[test]
    fn encodes_the_documented_shape() {
        let json = serde_json::to_value(to_item(&dune())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": {"S": "Dune"},
                "authors": {"L": [{"S": "Frank Herbert"}, {"S": "Brian Herbert"}]},
                "publishedYear": {"N": "1965"}
            })
        );
    }

    #[test]
    fn round_trips() {
        assert_eq!(from_item(to_item(&dune())).unwrap(), dune());
        assert_eq!(name_from_key(&key(&dune().name)).unwrap(), dune().name);
    }

    #[test]
    fn a_traced_item_is_still_the_book_and_carries_its_trace() {
        let trace = ChangeTrace {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            committed_at: chrono::DateTime::from_timestamp_millis(1_714_564_800_123),
        };
        let item = to_traced_item(&dune(), &trace);
        assert_eq!(
            item[COMMITTED_AT_ATTRIBUTE],
            AttributeValue::N("1714564800123".into())
        );
        assert_eq!(ChangeTrace::of_item(&item), trace);
        assert_eq!(from_item(item).unwrap(), dune());
        assert_eq!(
            ChangeTrace::of_item(&to_item(&dune())),
            ChangeTrace::default()
        );
        let now = ChangeTrace::now(None);
        assert_eq!(
            now.committed_at.unwrap().timestamp_subsec_nanos() % 1_000_000,
            0
        );
        let mut bad = to_item(&dune());
        bad.insert(
            COMMITTED_AT_ATTRIBUTE.into(),
            AttributeValue::S("soon".into()),
        );
        assert_eq!(ChangeTrace::of_item(&bad).committed_at, None);
    }

    #[test]
    fn activity_entries_round_trip_with_their_feed_position() {
        let entry = ActivityEntry {
            event_id: "e1".into(),
            detail_type: crate::DetailType::Removed,
            consumer: "book-removed".into(),
            book: crate::BookSnapshot::name_only(BookName::parse("Dune").unwrap()),
            processed_at: "2024-05-01T12:00:00.5Z".parse().unwrap(),
        };
        let item = activity_to_item(&entry).unwrap();
        assert_eq!(
            item["position"],
            AttributeValue::S("2024-05-01T12:00:00.500Z#book-removed#e1".into())
        );
        assert_eq!(
            item["feed"],
            AttributeValue::S(format!("activity#{}", activity_shard("e1")))
        );
        assert_eq!(
            item["detailType"],
            AttributeValue::S("outboxdemo.removed".into())
        );
        assert_eq!(activity_from_item(item).unwrap(), entry);
        assert_eq!(
            activity_key_of_position("2024-05-01T12:00:00.500Z#book-removed#e1"),
            Some(("book-removed", "e1"))
        );
        assert_eq!(activity_key_of_position("nonsense"), None);
        // A position of the table keyed by event id alone names no consumer.
        assert_eq!(
            activity_key_of_position("2024-05-01T12:00:00.500Z#e1"),
            None
        );
    }

    #[test]
    fn the_shard_hash_is_fnv_1a_xor_folded() {
        // FNV-1a 64 of "" and of "a", from the FNV reference's test vectors.
        let fold = |hash: u64| ((hash >> 32) ^ (hash & 0xffff_ffff)) % u64::from(ACTIVITY_SHARDS);
        assert_eq!(u64::from(activity_shard("")), fold(0xcbf2_9ce4_8422_2325));
        assert_eq!(u64::from(activity_shard("a")), fold(0xaf63_dc4c_8601_ec8c));
        assert_eq!(
            activity_feed("c4ca4238a0b923820dcc509a6f75849b"),
            activity_feed("c4ca4238a0b923820dcc509a6f75849b")
        );
    }

    #[test]
    fn stream_event_ids_spread_evenly_over_the_shards() {
        // Ids shaped like DynamoDB Streams' eventID (32 hex digits) and like other writers'.
        let mut counts = [0u32; ACTIVITY_SHARDS as usize];
        let ids = 8_000u32;
        for i in 0..ids {
            for id in [
                format!("{:032x}", u128::from(i) * 0x9e37_79b9),
                format!("event-{i}"),
            ] {
                counts[activity_shard(&id) as usize] += 1;
            }
        }
        let fair = 2 * ids / ACTIVITY_SHARDS;
        for count in counts {
            assert!(count.abs_diff(fair) < fair / 10, "{counts:?}");
        }
    }

    #[test]
    fn a_reader_queries_every_shard_and_the_feed_before_sharding() {
        let feeds: Vec<String> = activity_feeds().collect();
        assert_eq!(feeds.len(), ACTIVITY_SHARDS as usize + 1);
        assert_eq!(feeds[0], "activity#0");
        assert_eq!(feeds.last().map(String::as_str), Some(ACTIVITY_FEED));
        for id in ["", "e1", "c4ca4238a0b923820dcc509a6f75849b"] {
            assert!(feeds.contains(&activity_feed(id)));
        }
    }

    #[test]
    fn accepts_authors_as_a_string_set() {
        let item: Item = serde_json::from_value(serde_json::json!({
            "name": {"S": "Dune"},
            "authors": {"SS": ["Frank Herbert"]},
            "publishedYear": {"N": "1965"}
        }))
        .unwrap();
        let book = from_item(item).unwrap();
        assert_eq!(book.authors.names().collect::<Vec<_>>(), ["Frank Herbert"]);
    }

    #[test]
    fn rejects_items_that_are_not_books() {
        for bad in [
            serde_json::json!({"name": {"S": "Dune"}}),
            serde_json::json!({"name": {"S": "Dune"}, "authors": {"L": []}, "publishedYear": {"N": "1965"}}),
            serde_json::json!({"name": {"S": "Dune"}, "authors": {"S": "x"}, "publishedYear": {"N": "1965"}}),
            serde_json::json!({"name": {"N": "1"}, "authors": {"L": [{"S": "x"}]}, "publishedYear": {"N": "1965"}}),
            serde_json::json!({"name": {"S": "Dune"}, "authors": {"L": [{"S": "x"}]}, "publishedYear": {"N": "1e9"}}),
        ] {
            let item: Item = serde_json::from_value(bad.clone()).unwrap();
            assert!(from_item(item).is_err(), "{bad} decoded");
        }
        assert!(matches!(
            name_from_key(&Item::default()),
            Err(ItemError::MissingKey)
        ));
    }
}
