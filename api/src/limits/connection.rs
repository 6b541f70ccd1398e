//! What one WebSocket connection may do, the same on the local socket and on API Gateway:
//! how many subscriptions it holds, how fast it sends, and what a subscription id may be.
//!
//! The local socket keeps a connection's [`TokenBucket`] in memory; on AWS, where every
//! message is a fresh invocation, the bucket lives in the connection's row and is taken with a
//! conditional write. Both use [`TokenBucket::take`], so both refuse the same messages.

use crate::options::ApiOptions;

/// The longest subscription id, in characters. On AWS the id is part of a sort key, which
/// DynamoDB bounds at 1,024 bytes
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-partition-sort-keys>):
/// 128 characters of at most 4 bytes each, behind the row's prefix, fit.
pub const MAX_SUBSCRIPTION_ID_CHARS: usize = 128;

/// The close reason for a subscribe whose id is not [`valid_subscription_id`] (with close code
/// 4400, as graphql-ws closes on a message it cannot accept:
/// <https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md>).
pub const INVALID_SUBSCRIPTION_ID: &str =
    "Invalid subscription id: 1 to 128 characters, no control characters";

/// Whether `id` may name a subscription: 1 to [`MAX_SUBSCRIPTION_ID_CHARS`] characters, none a
/// control character.
pub fn valid_subscription_id(id: &str) -> bool {
    let chars = id.chars().count();
    (1..=MAX_SUBSCRIPTION_ID_CHARS).contains(&chars) && !id.chars().any(char::is_control)
}

/// How fast one connection may send messages: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRate {
    /// Messages a second, on average.
    pub per_sec: u32,
    /// The most messages at once (the bucket's size).
    pub burst: u32,
}

/// One token, in the bucket's unit (a thousandth of a message, so that refilling by the
/// millisecond stays in integers).
const TOKEN: i64 = 1000;

/// A token bucket: what is left of a connection's burst, and when that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// What is left, in thousandths of a message.
    pub milli_tokens: i64,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`: a new connection may send its whole burst at once.
    pub fn full(rate: MessageRate, now_ms: i64) -> Self {
        Self {
            milli_tokens: i64::from(rate.burst) * TOKEN,
            at_ms: now_ms,
        }
    }

    /// The bucket after one message at `now_ms`, or `None` when the message is over the rate
    /// (the bucket is then left as it was: a refused message spends nothing, and the refill
    /// is a function of the time since the last message let through).
    pub fn take(self, rate: MessageRate, now_ms: i64) -> Option<Self> {
        // A clock that went back (another Lambda's) refills nothing.
        let elapsed = now_ms.saturating_sub(self.at_ms).max(0);
        // per_sec messages a second are per_sec thousandths a millisecond.
        let refilled = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(i64::from(rate.per_sec)))
            .min(i64::from(rate.burst) * TOKEN);
        (refilled >= TOKEN).then_some(Self {
            milli_tokens: refilled - TOKEN,
            at_ms: now_ms.max(self.at_ms),
        })
    }
}

/// The limits on one WebSocket connection, from the [`ApiOptions`] (on AWS, their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most subscriptions it holds at once.
    pub max_subscriptions: usize,
    /// How fast it may send.
    pub rate: MessageRate,
}

impl From<&ApiOptions> for ConnectionLimits {
    fn from(options: &ApiOptions) -> Self {
        Self {
            max_subscriptions: options.max_subscriptions_per_connection,
            rate: options.message_rate(),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::from(&ApiOptions::default())
    }
}

/// Milliseconds since the epoch, the clock both buckets run on.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: MessageRate = MessageRate {
        per_sec: 50,
        burst: 100,
    };

    #[test]
    fn subscription_ids_are_bounded_and_printable() {
        assert!(valid_subscription_id("1"));
        assert!(valid_subscription_id(
            &"é".repeat(MAX_SUBSCRIPTION_ID_CHARS)
        ));
        assert!(!valid_subscription_id(""));
        assert!(!valid_subscription_id(
            &"x".repeat(MAX_SUBSCRIPTION_ID_CHARS + 1)
        ));
        assert!(!valid_subscription_id("a\nb"));
        assert!(!valid_subscription_id("a\u{0}"));
        // The longest id, in the widest characters, fits a DynamoDB sort key behind "sub#".
        const { assert!(4 + 4 * MAX_SUBSCRIPTION_ID_CHARS <= 1024) };
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(RATE, 0);
        for _ in 0..100 {
            bucket = bucket.take(RATE, 0).unwrap();
        }
        assert_eq!(bucket.take(RATE, 0), None, "the burst is spent");
        assert_eq!(bucket.take(RATE, 19), None, "less than a message refilled");
        let bucket = bucket.take(RATE, 20).unwrap();
        assert_eq!(bucket.take(RATE, 20), None);
        // A long pause refills no more than the burst.
        let mut bucket = bucket;
        let mut let_through = 0;
        while let Some(next) = bucket.take(RATE, 60_000) {
            bucket = next;
            let_through += 1;
        }
        assert_eq!(let_through, 100);
        // A clock that goes back refills nothing and moves nothing back.
        let bucket = TokenBucket::full(RATE, 1_000).take(RATE, 500).unwrap();
        assert_eq!(bucket.at_ms, 1_000);
    }

    /// Over any stretch of time, a connection gets at most its burst plus the rate times the
    /// stretch through (gaps between messages from a fixed pseudo-random sequence).
    #[test]
    fn what_gets_through_is_bounded_by_burst_and_rate() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..50 {
            let mut bucket = TokenBucket::full(RATE, 0);
            let (mut now, mut through) = (0i64, 0i64);
            for _ in 0..1_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                now += i64::try_from(seed % 40).unwrap_or(0);
                if let Some(next) = bucket.take(RATE, now) {
                    bucket = next;
                    through += 1;
                }
            }
            assert!(through <= 100 + now * 50 / 1000, "{through} in {now} ms");
        }
    }

    #[test]
    fn a_client_at_the_rate_is_never_refused() {
        let mut bucket = TokenBucket::full(RATE, 0);
        for i in 0..10_000 {
            bucket = bucket.take(RATE, i * 20).unwrap();
        }
    }
}
