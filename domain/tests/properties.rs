//! Properties of the domain's pure logic, for any input: validation and the item codecs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use domain::book::{MAX_AUTHOR_CHARS, MAX_AUTHORS, MAX_NAME_CHARS, PUBLISHED_YEARS};
use domain::item;
use domain::{
    ActivityEntry, Author, Authors, Book, BookField, BookName, BookSnapshot, DetailType,
    PublishedYear,
};
use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_dynamo::{AttributeValue, Item};
use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

/// Characters that `str::trim` removes: ASCII and Unicode whitespace, some of it also control.
const WHITESPACE: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
    '\u{2028}', '\u{2029}', '\u{202f}', '\u{3000}',
];
/// Control characters that are not whitespace.
const CONTROL: &[char] = &['\0', '\u{1}', '\u{1b}', '\u{7f}', '\u{80}', '\u{9f}'];
/// Format characters (zero-width, bidi controls, BOM, soft hyphen), and a combining accent
/// (valid, but it composes with the letter before it in NFC).
const FORMAT: &[char] = &[
    '\u{200b}', '\u{200d}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{ad}',
];
const COMBINING: char = '\u{301}';

fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Any character, biased toward the ones the rules are about.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        1 => select(WHITESPACE),
        1 => select(CONTROL),
        1 => select(FORMAT),
        1 => Just(COMBINING),
        2 => any::<char>(),
    ]
}

/// Any text, often around `max` characters long so that the bound is crossed both ways.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any_char(), 0..8),
        vec(any_char(), max - 3..=max + 3),
        (
            vec(select(WHITESPACE), 0..3),
            vec(proptest::char::range('a', 'z'), max - 1..=max + 1),
            vec(select(WHITESPACE), 0..3)
        )
            .prop_map(|(head, body, tail)| [head, body, tail].concat()),
    ]
    .prop_map(|chars| chars.into_iter().collect())
}

/// Text that satisfies the rules for `max`, as stored (already trimmed).
fn valid_text(max: usize) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        8 => proptest::char::range('A', 'z'),
        1 => Just(' '),
        1 => Just(COMBINING),
        2 => any::<char>().prop_filter("control or format", |c| !c.is_control() && !is_format(*c)),
    ];
    // Mostly short, to keep cases cheap; often the longest allowed.
    prop_oneof![
        4 => vec(char.clone(), 1..=max.min(20)),
        1 => vec(char.clone(), 1..=max),
        1 => vec(char, max..=max),
    ]
    .prop_filter_map("blank", move |chars| {
        let text = chars.into_iter().collect::<String>();
        let held: String = text.trim().nfc().collect();
        // What is stored is trimmed and in NFC (trimming once more: composing can leave a
        // combining mark alone at an end, which is no whitespace, so it stays).
        (!held.is_empty() && held.chars().count() <= max && held.trim() == held).then_some(held)
    })
}

/// Valid text with whitespace around it, as a client may send it.
fn padded(core: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        vec(select(WHITESPACE), 0..3),
        core,
        vec(select(WHITESPACE), 0..3),
    )
        .prop_map(|(head, core, tail)| {
            let head: String = head.into_iter().collect();
            let tail: String = tail.into_iter().collect();
            format!("{head}{core}{tail}")
        })
}

/// A name or author as it is held: trimmed, in NFC.
fn held(raw: &str) -> String {
    raw.trim().nfc().collect()
}

/// The documented rule for names and authors, written independently of `parse`: trimmed and
/// in NFC, 1 to `max` characters, no control and no format character.
fn follows_text_rules(raw: &str, max: usize) -> bool {
    let text = held(raw);
    (1..=max).contains(&text.chars().count())
        && !text.chars().any(|c| c.is_control() || is_format(c))
}

/// An author as a client may send it: valid `valid_weight` times as often as anything.
fn author_text(valid_weight: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        valid_weight => padded(valid_text(MAX_AUTHOR_CHARS)),
        1 => any_text(MAX_AUTHOR_CHARS),
    ]
}

fn any_year() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        PUBLISHED_YEARS,
        PUBLISHED_YEARS.start() - 5..=PUBLISHED_YEARS.start() + 5,
        PUBLISHED_YEARS.end() - 5..=PUBLISHED_YEARS.end() + 5,
        select(vec![i32::MIN, i32::MAX, 0, -1]),
    ]
}

fn book_name() -> impl Strategy<Value = BookName> {
    valid_text(MAX_NAME_CHARS).prop_map(|name| BookName::parse(&name).unwrap())
}

fn authors() -> impl Strategy<Value = Authors> {
    prop_oneof![
        3 => vec(valid_text(MAX_AUTHOR_CHARS), 1..=3),
        1 => vec(valid_text(MAX_AUTHOR_CHARS), 1..=MAX_AUTHORS),
    ]
    .prop_map(|names| Authors::parse(&names).unwrap())
}

fn published_year() -> impl Strategy<Value = PublishedYear> {
    PUBLISHED_YEARS.prop_map(|year| PublishedYear::parse(year).unwrap())
}

/// Any valid book, built from valid parts.
fn book() -> impl Strategy<Value = Book> {
    (book_name(), authors(), published_year()).prop_map(|(name, authors, published_year)| Book {
        name,
        authors,
        published_year,
    })
}

/// An attribute name: often one a book has, sometimes anything.
fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["name", "authors", "publishedYear"]).prop_map(str::to_owned),
        1 => "[a-zA-Z]{1,8}",
        1 => any_text(4),
    ]
}

/// What might be in an `N`: numbers in and out of range, and things that are not numbers.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any_year().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        select(vec![
            "",
            "-",
            "1e9",
            "1965.0",
            "01965",
            " 1965",
            "+1965",
            "NaN",
            "-0",
            "99999999999999999999"
        ])
        .prop_map(str::to_owned),
        any_text(6),
    ]
}

/// Any attribute value: S, N, BOOL, NULL, SS, NS, B, and L and M nesting them.
fn attribute_value() -> impl Strategy<Value = AttributeValue> {
    let leaf = prop_oneof![
        any_text(8).prop_map(AttributeValue::S),
        number_text().prop_map(AttributeValue::N),
        any::<bool>().prop_map(AttributeValue::Bool),
        any::<bool>().prop_map(AttributeValue::Null),
        vec(any_text(6), 0..4).prop_map(AttributeValue::Ss),
        vec(number_text(), 0..3).prop_map(AttributeValue::Ns),
        vec(any::<u8>(), 0..4).prop_map(AttributeValue::B),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(AttributeValue::L),
            hash_map(attribute_name(), inner, 0..4).prop_map(AttributeValue::M),
        ]
    })
}

/// Any item: random attributes, or a valid book's item with one attribute replaced or removed.
fn any_item() -> impl Strategy<Value = Item> {
    prop_oneof![
        hash_map(attribute_name(), attribute_value(), 0..6).prop_map(Item::from),
        (book(), attribute_name(), option::of(attribute_value())).prop_map(
            |(book, attribute, value)| {
                let mut item = item::to_item(&book);
                match value {
                    Some(value) => item.insert(attribute, value),
                    None => item.remove(&attribute),
                };
                item
            }
        ),
    ]
}

/// A time with nanoseconds, within the years 1 to 9999 that RFC 3339 can write in four digits.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    const YEAR_1: i64 = -62_135_596_800;
    const YEAR_9999_END: i64 = 253_402_300_799;
    (YEAR_1..=YEAR_9999_END, 0..1_000_000_000u32)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap())
}

fn snapshot() -> impl Strategy<Value = BookSnapshot> {
    (
        book_name(),
        option::of(authors()),
        option::of(published_year()),
    )
        .prop_map(|(name, authors, published_year)| BookSnapshot {
            name,
            authors,
            published_year,
        })
}

/// An event id as streams make them: hex digits, or a UUID.
fn stream_event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{32}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    ]
}

fn activity_entry(event_id: impl Strategy<Value = String>) -> impl Strategy<Value = ActivityEntry> {
    (
        event_id,
        select(DetailType::ALL.to_vec()),
        prop_oneof![
            select(vec!["book-added", "book-removed"]).prop_map(str::to_owned),
            any_text(12)
        ],
        snapshot(),
        timestamp(),
    )
        .prop_map(
            |(event_id, detail_type, consumer, book, processed_at)| ActivityEntry {
                event_id,
                detail_type,
                consumer,
                book,
                processed_at,
            },
        )
}

/// An entry where only the event id and the time vary: all that a position is made of.
fn entry_at(event_id: String, processed_at: DateTime<Utc>) -> ActivityEntry {
    ActivityEntry {
        event_id,
        detail_type: DetailType::Added,
        consumer: "book-added".to_owned(),
        book: BookSnapshot::name_only(BookName::parse("Dune").unwrap()),
        processed_at,
    }
}

fn json_round_trip(item: &Item) -> Item {
    serde_json::from_str(&serde_json::to_string(item).unwrap()).unwrap()
}

proptest! {
    #[test]
    fn book_names_are_valid_exactly_when_the_rules_hold(
        raw in prop_oneof![any_text(MAX_NAME_CHARS), padded(valid_text(MAX_NAME_CHARS))],
    ) {
        let parsed = BookName::parse(&raw);
        match &parsed {
            Ok(name) => {
                prop_assert!(follows_text_rules(&raw, MAX_NAME_CHARS));
                prop_assert_eq!(name.as_str(), held(&raw));
                prop_assert_eq!(&BookName::parse(name.as_str()).unwrap(), name);
            }
            Err(e) => {
                prop_assert!(!follows_text_rules(&raw, MAX_NAME_CHARS), "{raw:?} refused: {e}");
                prop_assert_eq!(e.field, BookField::Name);
            }
        }
        // Deserializing holds a value to the same rules.
        let deserialized = serde_json::from_value::<BookName>(serde_json::Value::String(raw.clone()));
        prop_assert_eq!(deserialized.ok(), parsed.ok());
    }

    #[test]
    fn authors_are_valid_exactly_when_the_rules_hold(
        raw in prop_oneof![any_text(MAX_AUTHOR_CHARS), padded(valid_text(MAX_AUTHOR_CHARS))],
    ) {
        match Author::parse(&raw) {
            Ok(author) => {
                prop_assert!(follows_text_rules(&raw, MAX_AUTHOR_CHARS));
                prop_assert_eq!(author.as_str(), held(&raw));
                prop_assert_eq!(&Author::parse(author.as_str()).unwrap(), &author);
            }
            Err(e) => {
                prop_assert!(!follows_text_rules(&raw, MAX_AUTHOR_CHARS), "{raw:?} refused: {e}");
                prop_assert_eq!(e.field, BookField::Authors);
            }
        }
    }

    #[test]
    fn author_lists_are_valid_exactly_when_the_rules_hold(
        raw in prop_oneof![
            vec(author_text(3), 0..=3),
            vec(author_text(40), MAX_AUTHORS - 1..=MAX_AUTHORS + 1),
        ],
    ) {
        let first_invalid = raw.iter().position(|a| !follows_text_rules(a, MAX_AUTHOR_CHARS));
        let valid = (1..=MAX_AUTHORS).contains(&raw.len()) && first_invalid.is_none();
        match Authors::parse(&raw) {
            Ok(authors) => {
                prop_assert!(valid);
                let names: Vec<&str> = authors.names().collect();
                let held: Vec<String> = raw.iter().map(|a| held(a)).collect();
                prop_assert_eq!(&names, &held.iter().map(String::as_str).collect::<Vec<_>>());
                prop_assert_eq!(Authors::parse(&names).unwrap(), authors);
            }
            Err(e) => {
                prop_assert!(!valid, "{raw:?} refused: {e}");
                prop_assert_eq!(e.field, BookField::Authors);
                if let (Some(i), true) = (first_invalid, (1..=MAX_AUTHORS).contains(&raw.len())) {
                    // The error names the first author that is wrong.
                    let prefix = format!("author {}: ", i + 1);
                    prop_assert!(e.problem.starts_with(&prefix), "{e}");
                }
            }
        }
    }

    #[test]
    fn years_are_valid_exactly_when_in_range(year in any_year()) {
        match PublishedYear::parse(year) {
            Ok(parsed) => {
                prop_assert!(PUBLISHED_YEARS.contains(&year));
                prop_assert_eq!(parsed.get(), year);
                prop_assert_eq!(PublishedYear::parse(parsed.get()).unwrap(), parsed);
            }
            Err(e) => {
                prop_assert!(!PUBLISHED_YEARS.contains(&year));
                prop_assert_eq!(e.field, BookField::PublishedYear);
            }
        }
    }

    #[test]
    fn a_book_round_trips_through_its_item_and_json(book in book()) {
        let item = item::to_item(&book);
        prop_assert_eq!(item::from_item(item.clone()).unwrap(), book.clone());
        let through_json = json_round_trip(&item);
        prop_assert_eq!(&through_json, &item);
        prop_assert_eq!(item::from_item(through_json).unwrap(), book.clone());
        prop_assert_eq!(item::name_from_key(&item::key(&book.name)).unwrap(), book.name);
    }

    #[test]
    fn authors_read_as_a_string_set_keep_the_book(book in book()) {
        let mut item = item::to_item(&book);
        let names = book.authors.names().map(str::to_owned).collect();
        item.insert("authors".to_owned(), AttributeValue::Ss(names));
        prop_assert_eq!(item::from_item(item).unwrap(), book);
    }

    #[test]
    fn decoding_any_item_never_panics(item in any_item()) {
        let name = match item.get(item::KEY_ATTRIBUTE) {
            Some(AttributeValue::S(name)) => BookName::parse(name).ok(),
            _ => None,
        };
        prop_assert_eq!(item::name_from_key(&item).ok(), name.clone());
        if let Ok(book) = item::from_item(item.clone()) {
            // A decoded book is a valid book, read from the item's own key.
            prop_assert_eq!(Some(&book.name), name.as_ref());
            prop_assert_eq!(item::from_item(item::to_item(&book)).unwrap(), book);
        }
        prop_assert_eq!(json_round_trip(&item), item);
    }

    #[test]
    fn an_activity_entry_round_trips_through_its_item_and_json(
        entry in activity_entry(prop_oneof![stream_event_id(), any_text(8)]),
    ) {
        let item = item::activity_to_item(&entry).unwrap();
        prop_assert_eq!(&item["eventId"], &AttributeValue::S(entry.event_id.clone()));
        prop_assert_eq!(&item["feed"], &AttributeValue::S(item::activity_feed(&entry.event_id)));
        prop_assert!(item::activity_feeds().any(|feed| item["feed"] == AttributeValue::S(feed)));
        prop_assert_eq!(&item["position"], &AttributeValue::S(item::activity_position(&entry)));
        prop_assert_eq!(item::activity_from_item(item.clone()).unwrap(), entry.clone());
        let through_json = json_round_trip(&item);
        prop_assert_eq!(&through_json, &item);
        prop_assert_eq!(item::activity_from_item(through_json).unwrap(), entry);
    }

    #[test]
    fn decoding_any_item_as_activity_never_panics(item in any_item()) {
        let _ = item::activity_from_item(item);
    }

    #[test]
    fn a_position_gives_back_its_key_with_a_stream_event_id(
        event_id in stream_event_id(),
        consumer in select(vec!["book-added", "book-removed"]),
        at in timestamp(),
    ) {
        let entry = ActivityEntry { consumer: consumer.to_owned(), ..entry_at(event_id, at) };
        let position = item::activity_position(&entry);
        prop_assert_eq!(
            item::activity_key_of_position(&position),
            Some((consumer, entry.event_id.as_str()))
        );
    }

    #[test]
    fn a_position_gives_back_any_event_id(event_id in "[a-z#]{1,8}", at in timestamp()) {
        // Even one holding '#': the timestamp and the consumer have none, so the first two
        // '#' end them.
        let entry = entry_at(event_id, at);
        let position = item::activity_position(&entry);
        prop_assert_eq!(
            item::activity_key_of_position(&position),
            Some(("book-added", entry.event_id.as_str()))
        );
    }

    #[test]
    fn positions_sort_in_time_order(
        ids in (stream_event_id(), stream_event_id()),
        a in timestamp(),
        // Another time, or (when None) one within 3 ms of the first.
        b in option::of(timestamp()),
        nanos in -3_000_000i64..=3_000_000,
    ) {
        let b = b.unwrap_or(a + TimeDelta::nanoseconds(nanos));
        prop_assume!((1..=9999).contains(&b.year()));
        let (a, b) = (entry_at(ids.0, a), entry_at(ids.1, b));
        let millis = |e: &ActivityEntry| e.processed_at.timestamp_millis();
        if millis(&a) < millis(&b) {
            prop_assert!(item::activity_position(&a) < item::activity_position(&b));
        }
    }

    #[test]
    fn decoding_any_position_never_panics(position in any_text(40)) {
        if let Some((consumer, event_id)) = item::activity_key_of_position(&position) {
            prop_assert!(!consumer.is_empty() && !consumer.contains('#'));
            prop_assert!(!event_id.is_empty());
        }
    }
}
