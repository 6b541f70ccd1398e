//! The codec between a [`Book`] and its DynamoDB item.
//!
//! The item is `{"name": S, "authors": L of S, "publishedYear": N}`. Reading also accepts
//! `authors` as a string set (SS), which other writers of the table may use; note that a set
//! does not keep order.

use serde_dynamo::{AttributeValue, Item};

use crate::activity::ActivityEntry;
use crate::book::{Book, BookName, InvalidBook};

/// The name of the table's partition key attribute.
pub const KEY_ATTRIBUTE: &str = "name";

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

/// The activity table's index attribute that every entry shares, so that one query lists the
/// entries in order (`byPosition`: partition `feed`, sort `position`).
pub const ACTIVITY_FEED: &str = "activity";

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

/// Encodes an activity entry as its item: the entry's fields, plus `feed` and `position`.
pub fn activity_to_item(entry: &ActivityEntry) -> Result<Item, ItemError> {
    let mut item: Item = serde_dynamo::to_item(entry)?;
    item.insert(
        "feed".to_owned(),
        AttributeValue::S(ACTIVITY_FEED.to_owned()),
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
        assert_eq!(item["feed"], AttributeValue::S("activity".into()));
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
