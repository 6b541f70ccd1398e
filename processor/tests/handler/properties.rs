//! Properties of the mapping from stream records to events, for any record Lambda could hand us.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::DynamoDbEventResponse;
use chrono::DateTime;
use domain::book::{MAX_AUTHORS, PUBLISHED_YEARS};
use domain::event::ENVELOPE_VERSION;
use domain::{Authors, Book, BookName, BookSnapshot, DetailType, Envelope, PublishedYear, item};
use processor::{handle_batch, map_record};
use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::string::string_regex;
use serde_dynamo::{AttributeValue, Item};
use serde_json::{Map, Value, json};
use testing::batch::failed_ids as failures;

use crate::support::{RecordingPoison, RecordingPublisher, untraced};

fn handle(
    event: Event,
    publisher: &RecordingPublisher,
    poison: &RecordingPoison,
) -> DynamoDbEventResponse {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(handle_batch(event, publisher, poison))
}

/// The documented `eventName` → detail type.
fn detail_type_of(event_name: &str) -> Option<DetailType> {
    match event_name {
        "INSERT" => Some(DetailType::Added),
        "MODIFY" => Some(DetailType::Updated),
        "REMOVE" => Some(DetailType::Removed),
        _ => None,
    }
}

fn valid_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_regex("[A-Za-z][A-Za-z .'-]{0,20}").unwrap(),
        1 => string_regex(&format!("\\PC{{1,{max}}}")).unwrap(),
    ]
}

fn book() -> BoxedStrategy<Book> {
    (
        valid_text(200).prop_filter_map("not a name", |n| BookName::parse(&n).ok()),
        prop_oneof![3 => vec(valid_text(100), 1..=3), 1 => vec(valid_text(100), 1..=MAX_AUTHORS)]
            .prop_filter_map("not authors", |a| Authors::parse(&a).ok()),
        PUBLISHED_YEARS.prop_map(|y| PublishedYear::parse(y).unwrap()),
    )
        .prop_map(|(name, authors, published_year)| Book {
            name,
            authors,
            published_year,
        })
        .boxed()
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Dune".to_owned()),
        "[a-z ]{0,8}",
        ".{0,8}",
        "[\\s\\x00-\\x1f]{0,3}",
    ]
}

fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["name", "authors", "publishedYear"]).prop_map(str::to_owned),
        1 => any_text(),
    ]
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        (-3010..=2110i32).prop_map(|n| n.to_string()),
        select(vec![
            "",
            "1e9",
            "1965.5",
            "01965",
            "NaN",
            "99999999999999999999"
        ])
        .prop_map(str::to_owned),
        any_text(),
    ]
}

/// Any attribute value: S, N, BOOL, NULL, SS, NS, B, and L and M nesting them.
fn attribute_value() -> impl Strategy<Value = AttributeValue> {
    let leaf = prop_oneof![
        any_text().prop_map(AttributeValue::S),
        number_text().prop_map(AttributeValue::N),
        any::<bool>().prop_map(AttributeValue::Bool),
        any::<bool>().prop_map(AttributeValue::Null),
        vec(any_text(), 0..3).prop_map(AttributeValue::Ss),
        vec(number_text(), 0..3).prop_map(AttributeValue::Ns),
        vec(any::<u8>(), 0..3).prop_map(AttributeValue::B),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(AttributeValue::L),
            hash_map(attribute_name(), inner, 0..3).prop_map(AttributeValue::M),
        ]
    })
}

fn item_json(item: &Item) -> Value {
    serde_json::to_value(item).unwrap()
}

/// What Lambda may put where an image or the keys go: a book's item, one with an attribute
/// replaced or removed, random attributes, or an empty map.
fn any_image() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => book().prop_map(|b| item_json(&item::to_item(&b))),
        2 => (book(), attribute_name(), option::of(attribute_value())).prop_map(
            |(book, attribute, value)| {
                let mut item = item::to_item(&book);
                match value {
                    Some(value) => item.insert(attribute, value),
                    None => item.remove(&attribute),
                };
                item_json(&item)
            }
        ),
        1 => hash_map(attribute_name(), attribute_value(), 0..4).prop_map(|m| item_json(&Item::from(m))),
        1 => Just(json!({})),
    ]
    .boxed()
}

fn any_keys() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => book().prop_map(|b| item_json(&item::key(&b.name))),
        2 => any_image(),
    ]
    .boxed()
}

/// A field that is usually there, sometimes missing (`None`) or `null`.
fn optional(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![10 => value.prop_map(Some), 1 => Just(None), 1 => Just(Some(Value::Null))]
}

/// An image or the keys: usually an item, sometimes missing, `null`, or JSON that is no item.
fn optional_image(image: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        30 => image.prop_map(Some),
        3 => Just(None),
        3 => Just(Some(Value::Null)),
        1 => Just(Some(json!({"name": "Dune"}))),
    ]
}

/// A field Lambda always sends: rarely missing or of the wrong type. Either makes the whole
/// batch fail to deserialize, so it has to be rare for most batches to get to the handler.
fn required(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![100 => value.prop_map(Some), 1 => Just(None), 1 => Just(Some(json!([1])))]
}

fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect();
    Value::Object(map)
}

/// Epoch seconds, usually plausible; a number out of chrono's range (or `null`, which is
/// what serde_json makes of NaN) does not deserialize.
fn creation_time() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        20 => (0..=4_102_444_800i64).prop_map(|t| Some(Value::from(t))),
        2 => (0.0..4.1e9f64).prop_map(|t| Some(Value::from(t))),
        2 => Just(None),
        2 => (-8_000_000_000_000i64..8_000_000_000_000).prop_map(|t| Some(Value::from(t))), // years ±250000
        1 => any::<i64>().prop_map(|t| Some(Value::from(t))),
        1 => any::<f64>().prop_map(|t| Some(Value::from(t))),
    ]
}

/// A record in the shape of Lambda's DynamoDB stream event (see `fixtures/`), with every part
/// random: eventName, eventID, the images, the keys, the sequence number.
fn any_record() -> BoxedStrategy<Value> {
    let change = (
        creation_time(),
        optional_image(any_keys()),
        optional_image(any_image()),
        optional_image(any_image()),
        prop_oneof![
            20 => "[0-9]{21}".prop_map(|s| Some(Value::from(s))),
            1 => Just(Some(Value::from(""))),
            1 => Just(Some(Value::Null)),
            1 => Just(None),
        ],
        required((0..400i64).prop_map(Value::from)),
        optional(
            select(vec![
                "NEW_AND_OLD_IMAGES",
                "NEW_IMAGE",
                "OLD_IMAGE",
                "KEYS_ONLY",
            ])
            .prop_map(Value::from),
        ),
    )
        .prop_map(|(time, keys, new, old, sequence, size, view)| {
            object(vec![
                ("ApproximateCreationDateTime", time),
                ("Keys", keys),
                ("NewImage", new),
                ("OldImage", old),
                ("SequenceNumber", sequence),
                ("SizeBytes", size),
                ("StreamViewType", view),
            ])
        });
    (
        required(
            prop_oneof![
                20 => "[0-9a-f]{32}",
                1 => Just(String::new()),
                1 => any_text(),
            ]
            .prop_map(Value::from),
        ),
        required(
            prop_oneof![
                12 => select(vec!["INSERT", "MODIFY", "REMOVE"]).prop_map(str::to_owned),
                1 => select(vec!["", "insert", "Remove", "DELETE"]).prop_map(str::to_owned),
                1 => any_text(),
            ]
            .prop_map(Value::from),
        ),
        required(Just(Value::from("eu-west-1"))),
        required(change),
    )
        .prop_map(|(event_id, event_name, region, change)| {
            object(vec![
                ("eventID", event_id),
                ("eventName", event_name),
                ("eventVersion", Some(json!("1.1"))),
                ("eventSource", Some(json!("aws:dynamodb"))),
                ("awsRegion", region),
                ("dynamodb", change),
            ])
        })
        .boxed()
}

/// How a record changed a valid book; what the stream carries depends on it.
#[derive(Debug, Clone, Copy)]
enum Change {
    Insert,
    Modify,
    RemoveWithOldImage,
    RemoveKeysOnly,
}

#[derive(Debug, Clone)]
struct ValidRecord {
    change: Change,
    book: Book,
    /// The image before a MODIFY: the same name, other parts.
    before: Book,
    event_id: String,
    sequence_number: String,
    created: i64,
    /// Whether images list the authors as a string set (SS) rather than a list (L).
    authors_as_set: bool,
}

impl ValidRecord {
    fn image(&self, book: &Book) -> Value {
        let mut item = item::to_item(book);
        if self.authors_as_set {
            let names = book.authors.names().map(str::to_owned).collect();
            item.insert("authors".to_owned(), AttributeValue::Ss(names));
        }
        item_json(&item)
    }

    fn to_json(&self) -> Value {
        let (event_name, new_image, old_image, view) = match self.change {
            Change::Insert => (
                "INSERT",
                Some(self.image(&self.book)),
                None,
                "NEW_AND_OLD_IMAGES",
            ),
            Change::Modify => (
                "MODIFY",
                Some(self.image(&self.book)),
                Some(self.image(&self.before)),
                "NEW_AND_OLD_IMAGES",
            ),
            Change::RemoveWithOldImage => (
                "REMOVE",
                None,
                Some(self.image(&self.book)),
                "NEW_AND_OLD_IMAGES",
            ),
            Change::RemoveKeysOnly => ("REMOVE", None, None, "KEYS_ONLY"),
        };
        json!({
            "eventID": self.event_id,
            "eventName": event_name,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1",
            "dynamodb": object(vec![
                ("ApproximateCreationDateTime", Some(json!(self.created))),
                ("Keys", Some(item_json(&item::key(&self.book.name)))),
                ("NewImage", new_image),
                ("OldImage", old_image),
                ("SequenceNumber", Some(json!(self.sequence_number))),
                ("SizeBytes", Some(json!(100))),
                ("StreamViewType", Some(json!(view))),
            ]),
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/outbox-demo/stream/2024-05-01T00:00:00.000"
        })
    }

    /// The event the contract says this record becomes.
    fn expected(&self) -> (DetailType, BookSnapshot) {
        match self.change {
            Change::Insert => (DetailType::Added, self.book.clone().into()),
            Change::Modify => (DetailType::Updated, self.book.clone().into()),
            Change::RemoveWithOldImage => (DetailType::Removed, self.book.clone().into()),
            Change::RemoveKeysOnly => (
                DetailType::Removed,
                BookSnapshot::name_only(self.book.name.clone()),
            ),
        }
    }
}

fn valid_record() -> BoxedStrategy<ValidRecord> {
    (
        select(vec![
            Change::Insert,
            Change::Modify,
            Change::RemoveWithOldImage,
            Change::RemoveKeysOnly,
        ]),
        book(),
        book(),
        "[0-9a-f]{32}",
        "[0-9]{21}",
        0..=4_102_444_800i64,
        any::<bool>(),
    )
        .prop_map(
            |(change, book, before, event_id, sequence_number, created, authors_as_set)| {
                ValidRecord {
                    change,
                    before: Book {
                        name: book.name.clone(),
                        ..before
                    },
                    book,
                    event_id,
                    sequence_number,
                    created,
                    authors_as_set,
                }
            },
        )
        .boxed()
}

proptest! {
    #[test]
    fn mapping_any_record_never_panics_and_keeps_its_identity(record in any_record()) {
        let Ok(record) = serde_json::from_value::<EventRecord>(record) else {
            return Ok(()); // Lambda could not have sent it; not deserializing is not a panic
        };
        let Ok(event) = map_record(&record) else {
            return Ok(());
        };
        let metadata = &event.envelope.metadata;
        prop_assert!(!metadata.event_id.is_empty());
        prop_assert_eq!(&metadata.event_id, &record.event_id);
        prop_assert!(!metadata.sequence_number.is_empty());
        prop_assert_eq!(Some(&metadata.sequence_number), record.change.sequence_number.as_ref());
        prop_assert_eq!(metadata.occurred_at, record.change.approximate_creation_date_time);
        prop_assert_eq!(metadata.version, ENVELOPE_VERSION);
        prop_assert_eq!(Some(event.detail_type), detail_type_of(&record.event_name));
        prop_assert_eq!(event.source(), domain::event::SOURCE);
        // What consumers read back is what was mapped.
        let detail = serde_json::from_str(&event.detail_json().unwrap()).unwrap();
        prop_assert_eq!(Envelope::from_detail(detail).unwrap(), event.envelope);
    }

    #[test]
    fn occurred_at_is_the_records_creation_second(record in valid_record(), secs in 0..4_102_444_800i64) {
        // DynamoDB Streams gives ApproximateCreationDateTime in whole epoch seconds, and so do
        // the local stream and the tests. (aws_lambda_events 1.2 would read a fraction as
        // microseconds, e.g. 1714564800.5 as 12:00:00.000500, so nothing here sends one.)
        let mut json = record.to_json();
        json["dynamodb"]["ApproximateCreationDateTime"] = json!(secs);
        let record: EventRecord = serde_json::from_value(json).unwrap();
        let event = map_record(&record).unwrap();
        prop_assert_eq!(event.envelope.metadata.occurred_at.timestamp(), secs);
        prop_assert_eq!(event.envelope.metadata.occurred_at.timestamp_subsec_nanos(), 0);
    }

    #[test]
    fn a_batch_fails_at_most_one_record_and_every_record_before_it_is_published_or_set_aside(
        records in vec(prop_oneof![any_record(), valid_record().prop_map(|r| r.to_json())], 0..6),
        fail_from in option::of(0..6usize),
        poison_refuses in any::<bool>(),
    ) {
        let event = serde_json::from_value::<Event>(json!({"Records": records}));
        prop_assume!(event.is_ok(), "Lambda could not have sent this batch");
        let event = event.unwrap();
        let records = event.records.clone();
        let publisher = RecordingPublisher::failing_from(fail_from);
        let poison = if poison_refuses { RecordingPoison::refusing() } else { RecordingPoison::default() };
        let response = handle(event, &publisher, &poison);

        // Offered: every record that maps, in order (an unmappable one stops nothing).
        let mapped: Vec<_> = records.iter().filter_map(|r| map_record(r).ok()).collect();
        let mapped = untraced(mapped);
        prop_assert_eq!(publisher.offered(), mapped.clone());
        let published = publisher.published();
        prop_assert_eq!(&published[..], &mapped[..published.len()]);
        let failed = failures(&response);
        prop_assert!(failed.len() <= 1, "{failed:?}");
        // The failure, if any, is the first record neither published nor set aside; every
        // record before it is one of the two, and a set-aside record is kept whole.
        let kept = poison.kept();
        let failed_at = failed.first().map(|id| {
            records.iter().position(|r| r.change.sequence_number.clone().unwrap_or_default() == *id)
        });
        let end = match failed_at {
            None => records.len(),
            Some(at) => at.unwrap_or(0),
        };
        let before = &records[..end];
        let unmappable: Vec<_> = before.iter().filter(|r| map_record(r).is_err()).collect();
        let done_mapped = before.len() - unmappable.len();
        prop_assert!(published.len() >= done_mapped);
        prop_assert_eq!(kept.len(), unmappable.len());
        for ((kept, reason), record) in kept.iter().zip(&unmappable) {
            prop_assert_eq!(kept, *record);
            // The reason is the mapping's error (which of several problems it names first can
            // differ between calls: an image is a map without order).
            prop_assert!(map_record(record).is_err() && !reason.is_empty());
        }
        if let Some(at) = failed_at {
            let record = &records[at.unwrap_or(0)];
            let refused = fail_from.is_some_and(|f| f < mapped.len());
            prop_assert!(
                map_record(record).is_err() && poison_refuses || refused,
                "a failure needs a refused publish or a refused set-aside"
            );
        } else {
            prop_assert_eq!(published.len(), mapped.len());
        }
    }

    #[test]
    fn valid_records_all_map_in_order_to_the_contract(
        records in vec(valid_record(), 0..6),
        fail_from in option::of(0..8usize),
    ) {
        let batch = json!({"Records": records.iter().map(ValidRecord::to_json).collect::<Vec<_>>()});
        let event: Event = serde_json::from_value(batch).unwrap();
        let publisher = RecordingPublisher::failing_from(fail_from);
        let poison = RecordingPoison::default();
        let response = handle(event, &publisher, &poison);
        prop_assert!(poison.kept().is_empty());

        let offered = publisher.offered();
        prop_assert_eq!(offered.len(), records.len());
        let refused = fail_from.filter(|&f| f < records.len());
        let published = publisher.published();
        prop_assert_eq!(&published[..], &offered[..refused.unwrap_or(records.len())]);
        for (event, record) in offered.iter().zip(&records) {
            let (detail_type, data) = record.expected();
            prop_assert_eq!(event.detail_type, detail_type);
            prop_assert_eq!(&event.envelope.data, &data);
            let metadata = &event.envelope.metadata;
            prop_assert_eq!(&metadata.event_id, &record.event_id);
            prop_assert_eq!(&metadata.sequence_number, &record.sequence_number);
            prop_assert_eq!(Some(metadata.occurred_at), DateTime::from_timestamp(record.created, 0));
        }
        let expected_failures: Vec<_> = refused
            .map(|f| records[f].sequence_number.clone())
            .into_iter()
            .collect();
        prop_assert_eq!(failures(&response), expected_failures);
    }
}
