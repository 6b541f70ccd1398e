//! The journal's layout: every published event at a position of one total order, which
//! subscriptions on AWS resume after.
//!
//! DynamoDB Streams orders only the records of one shard, and EventBridge delivers events in no
//! order at all, so on AWS the processor (the one reader of the stream in order) writes each
//! event it publishes to the journal table first, at the next free position, and puts that
//! position in the event as `metadata.cursor`. The table (`JOURNAL_TABLE_NAME`, key `part` and
//! `position`) holds three kinds of item:
//! - the head (`part` = [`HEAD`], `position` 0): `last`, the last position given out;
//! - an entry (`part` = [`entries`]`(position)`): `detailType`, `envelope` (the detail's JSON);
//! - a marker (`part` = [`marker`]`(eventId)`, `position` 0): `at`, where the event is, so
//!   that an event journaled once is never journaled again.
//!
//! Positions are dense (1, 2, 3, …: the head and a batch's entries are written in one
//! transaction), so a reader that knows the head knows every entry up to it exists. Entries and
//! markers expire after [`RETENTION_SECS`] (`expiresAt`, the table's TTL), as stream records do.

/// The partition key.
pub const PART: &str = "part";
/// The sort key.
pub const POSITION: &str = "position";
/// The head item's partition.
pub const HEAD: &str = "head";
/// The head's last position given out.
pub const LAST: &str = "last";
/// An entry's detail type.
pub const DETAIL_TYPE: &str = "detailType";
/// An entry's envelope, as JSON text.
pub const ENVELOPE: &str = "envelope";
/// A marker's position.
pub const AT: &str = "at";
/// When an entry or marker expires (epoch seconds; the table's TTL attribute).
pub const EXPIRES_AT: &str = "expiresAt";
/// How long entries are kept: as long as DynamoDB Streams keeps records
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>).
pub const RETENTION_SECS: i64 = 24 * 60 * 60;
/// Entries per partition: one partition holds a range of positions, read in order.
pub const ENTRIES_PER_PARTITION: i64 = 1000;

/// The partition that holds the entry at `position`.
pub fn entries(position: i64) -> String {
    format!("entries#{}", position / ENTRIES_PER_PARTITION)
}

/// The partition of the marker of the event `event_id`.
pub fn marker(event_id: &str) -> String {
    format!("event#{event_id}")
}

/// The cursor of `position`: 21 digits, so cursors order the same as text and as numbers.
pub fn cursor(position: i64) -> String {
    format!("{position:021}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_positions_share_a_partition_until_a_thousand() {
        assert_eq!(entries(1), entries(999));
        assert_ne!(entries(999), entries(1000));
        assert_eq!(cursor(42), "000000000000000000042");
    }
}
