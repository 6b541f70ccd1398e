//! The activity feed's read cost on moto, before and after the sharding of its index. Prints
//! figures; asserts nothing about time.
//!
//! ```sh
//! export AWS_ENDPOINT_URL=http://127.0.0.1:5111 …   # moto server, as for the AWS tests
//! cargo run -p api --release --example activity_feed_bench -- 2000 10
//! ```
//!
//! It fills two activity tables with the same entries (the first argument, 2,000 by default):
//! *before*, every entry under the one `feed` value the index had (`activity`), read by a feed
//! of that one partition, which sends one query per page as the reader before the sharding did;
//! *after*, the entries in their shards, read by the feed over all its partitions (the shards
//! and the old value). For pages of 20 and 100 it pages through the first pages (the second
//! argument, 10 by default) and reports per page the time of the listing, the queries sent and
//! the items they read (replayed: the same queries once more), and the read units: moto answers `ReturnConsumedCapacity` with a fixed
//! figure whatever was read, so the figure that counts is the estimate from the items' sizes
//! by DynamoDB's rules (a Query's items summed and rounded up to 4 KB; half a unit per 4 KB,
//! as reads of a global secondary index are eventually consistent). Times are moto's (a Python
//! process on this machine, whose Query looks at every item of the table): they compare the
//! layouts here, they are not DynamoDB's latencies.
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/read-write-operations.html>
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html>

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops on the first surprise

use std::time::{Duration, Instant};

use api::dynamo::DynamoActivityFeed;
use api::store::ActivityFeed as _;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ReturnConsumedCapacity, WriteRequest};
use domain::item;
use domain::{ActivityEntry, Authors, Book, BookName, BookSnapshot, DetailType, PublishedYear};
use futures_util::{StreamExt, stream};

/// A partition takes up to 1,000 write units a second, one unit per KB written.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/warm-throughput-scenarios.html>
const PARTITION_WCU: u32 = 1_000;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("counts"))
        .collect();
    let entries = args.first().copied().unwrap_or(2_000);
    let pages = args.get(1).copied().unwrap_or(10);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (moto server)");
    let client = Client::new(&testing::moto::sdk_config(&endpoint).await);

    let entries: Vec<ActivityEntry> = (0..entries).map(entry).collect();
    let before = table(&client, "before", &entries, true).await;
    let after = table(&client, "after", &entries, false).await;
    let item_bytes = entries
        .iter()
        .map(|e| item_size(&item::activity_to_item(e).unwrap().into()))
        .sum::<usize>()
        / entries.len();
    println!(
        "{} entries, {item_bytes} bytes an item on average; {} shards",
        entries.len(),
        item::ACTIVITY_SHARDS
    );
    let write_units = item_bytes.div_ceil(1024) as u32;
    println!(
        "writes on paper: one index partition key value takes {PARTITION_WCU} WCU/s = {} entries/s before; {} shards: {} entries/s",
        PARTITION_WCU / write_units,
        item::ACTIVITY_SHARDS,
        item::ACTIVITY_SHARDS * PARTITION_WCU / write_units
    );
    println!(
        "| layout | page | queries/page | items read/page | est. RCU/page | moto CU/page | ms/page p50 | p90 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for first in [20, 100] {
        let single = DynamoActivityFeed::of_partitions(
            client.clone(),
            &before,
            vec![item::ACTIVITY_FEED.to_owned()],
        );
        measure("before (1 partition)", &single, first, pages).await;
        let sharded = DynamoActivityFeed::new(client.clone(), &after);
        measure("after (sharded)", &sharded, first, pages).await;
    }
}

/// Entry `i`: one consumer's, three entries a second (so several share a time), with a book
/// of a usual size.
fn entry(i: usize) -> ActivityEntry {
    let book = Book {
        name: BookName::parse(&format!("The Book Number {i}")).unwrap(),
        authors: Authors::parse(&["An Author", "Another Author"]).unwrap(),
        published_year: PublishedYear::parse(1990 + (i % 30) as i32).unwrap(),
    };
    ActivityEntry {
        // Shaped like a stream record's eventID.
        event_id: format!("{:032x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15),
        detail_type: DetailType::Added,
        consumer: "book-added".to_owned(),
        book: BookSnapshot::from(book),
        processed_at: chrono::DateTime::from_timestamp(1_780_000_000 + (i / 3) as i64, 0).unwrap(),
    }
}

/// A new activity table holding `entries`; with `single`, all under the one `feed` value of
/// the index before the sharding.
async fn table(client: &Client, name: &str, entries: &[ActivityEntry], single: bool) -> String {
    let table = testing::moto::unique(name);
    testing::tables::create_activity_table(client, &table)
        .await
        .unwrap();
    let requests: Vec<WriteRequest> = entries
        .iter()
        .map(|entry| {
            let mut item: std::collections::HashMap<String, AttributeValue> =
                item::activity_to_item(entry).unwrap().into();
            if single {
                item.insert(
                    "feed".to_owned(),
                    AttributeValue::S(item::ACTIVITY_FEED.to_owned()),
                );
            }
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    // BatchWriteItem takes up to 25 requests; moto processes them all.
    stream::iter(requests.chunks(25).map(|chunk| {
        client
            .batch_write_item()
            .request_items(&table, chunk.to_vec())
            .send()
    }))
    .buffer_unordered(8)
    .for_each(|result| async {
        assert!(
            result
                .unwrap()
                .unprocessed_items()
                .is_none_or(|unprocessed| unprocessed.is_empty())
        );
    })
    .await;
    table
}

/// Pages through `pages` pages of `first` (after one page to warm up) and prints a row.
async fn measure(layout: &str, feed: &DynamoActivityFeed, first: usize, pages: usize) {
    feed.list(first, None).await.unwrap();
    let mut times = Vec::new();
    let (mut queries, mut items_read, mut estimated, mut reported) = (0, 0, 0.0, 0.0);
    let mut after: Option<String> = None;
    for _ in 0..pages {
        let started = Instant::now();
        let page = feed.list(first, after.as_deref()).await.unwrap();
        times.push(started.elapsed());
        // The reader's queries again, asking for the consumed capacity: each partition's
        // pages of `partition_limit` items, until they hold the page's entries in that
        // partition and one more (the merge's look at what follows), or the partition ends.
        let limit = api::dynamo::partition_limit(first, feed.partitions().len());
        for partition in feed.partitions() {
            let wanted = 1 + page
                .items
                .iter()
                .filter(|item| item_feed(&item.entry, partition))
                .count();
            let (mut fetched, mut start) = (0, None);
            loop {
                let output = feed
                    .partition_query(partition, after.as_deref())
                    .limit(limit)
                    .set_exclusive_start_key(start)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .unwrap();
                queries += 1;
                fetched += output.items().len();
                let bytes: usize = output.items().iter().map(item_size).sum();
                // A query that reads nothing is counted as the least a read costs (AWS's
                // pages give no figure for it).
                estimated += bytes.div_ceil(4096).max(1) as f64 * 0.5;
                reported += output
                    .consumed_capacity()
                    .and_then(|c| c.capacity_units())
                    .unwrap_or_default();
                start = output.last_evaluated_key().cloned();
                if fetched >= wanted || start.is_none() {
                    break;
                }
            }
            items_read += fetched;
        }
        assert_eq!(page.items.len(), first);
        after = page.items.last().map(|item| item.position.clone());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per_page = |n: f64| n / pages as f64;
    println!(
        "| {layout} | {first} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        per_page(queries as f64),
        per_page(items_read as f64),
        per_page(estimated),
        per_page(reported),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[times.len() - 1]),
    );
}

/// Whether `entry` is in the partition `feed` of this bench's tables (a table holds all its
/// entries under the old value, or each in its shard).
fn item_feed(entry: &ActivityEntry, feed: &str) -> bool {
    feed == item::ACTIVITY_FEED || item::activity_feed(&entry.event_id) == feed
}

/// An item's size by DynamoDB's rules: attribute names and string values in UTF-8 bytes,
/// numbers about one byte per two significant digits and one more, lists and maps 3 bytes and
/// one a element besides their elements, booleans and nulls one byte.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html>
fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            let digits = n.trim_matches(|c: char| !c.is_ascii_digit() || c == '0');
            digits
                .chars()
                .filter(char::is_ascii_digit)
                .count()
                .div_ceil(2)
                + 1
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => 3 + map.len() + item_size(map),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        _ => 1,
    }
}
