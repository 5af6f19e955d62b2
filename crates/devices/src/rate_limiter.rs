//! Rate limiters in the shape of Firecracker's API: a [`RateLimiter`] holds up to two token
//! buckets, `bandwidth` (bytes) and `ops` (operations).
//!
//! A bucket of [`TokenBucketConfig`] `{ size, one_time_burst, refill_time_ms }` holds at most
//! `size` tokens and earns them back linearly, `size` tokens every `refill_time_ms`
//! milliseconds; it starts full. `one_time_burst` is an extra budget on top, spent before the
//! bucket and never refilled. A size or refill time of 0 means "no limit": that bucket is absent.
//!
//! The module is pure: every method that looks at time takes `now`, so that the devices pass
//! `Instant::now()` and the tests pass whatever instants they like.
//!
//! Rules, as the devices rely on them:
//!
//! - [`RateLimiter::try_consume`] takes `ops` and `bytes` tokens from both buckets, or from
//!   neither: a request either goes through whole or is left for later. When it cannot go
//!   through it answers how long until it can ([`Throttled::wait`]); the caller arms a timer for
//!   that long and tries again. Requests are delayed, never refused.
//! - A request larger than a bucket's `size` (plus what is left of its burst) could never fit:
//!   it goes through once the bucket is full, and the bucket goes into debt by the difference.
//!   The debt is paid off by refills before anything else goes through, so the long-run rate
//!   still holds.
//! - Tokens are counted exactly: the fraction of a token earned between two calls is kept
//!   (in token-nanoseconds), so no rate is rounded away however often the limiter is asked.
//! - A request of 0 tokens from a bucket always goes through, debt or not.
//! - [`RateLimiter::update`] has the semantics of Firecracker's PATCH: a bucket given in the
//!   patch is replaced by a new, full bucket (with its burst) of the given parameters, a bucket
//!   given with size or refill time 0 is removed, and a bucket not given is kept as it is,
//!   tokens and debt included.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Nanoseconds in a millisecond.
const NANOS_PER_MILLI: u128 = 1_000_000;

/// The parameters of one token bucket, as Firecracker's `TokenBucket` API object
/// (`{"size", "one_time_burst", "refill_time"}`, refill time in milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full, and earns back per `refill_time_ms`.
    pub size: u64,
    /// Tokens available once, on top of the bucket; spent first and never refilled.
    pub one_time_burst: u64,
    /// Milliseconds to earn `size` tokens.
    pub refill_time_ms: u64,
}

impl TokenBucketConfig {
    /// Whether these parameters mean "no limit" (size or refill time 0).
    pub fn is_unlimited(&self) -> bool {
        self.size == 0 || self.refill_time_ms == 0
    }
}

/// The parameters of a [`RateLimiter`], as Firecracker's `RateLimiter` API object
/// (`{"bandwidth": {...}, "ops": {...}}`). `None` is "not given": no limit when the limiter is
/// built from it, "keep what is there" when it patches one ([`RateLimiter::update`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimiterConfig {
    /// The bucket counting bytes.
    pub bandwidth: Option<TokenBucketConfig>,
    /// The bucket counting operations (requests, frames).
    pub ops: Option<TokenBucketConfig>,
}

/// A token bucket; see the [module docs](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    config: TokenBucketConfig,
    /// What is left of the one-time burst.
    burst: u64,
    /// Tokens in the bucket, at most `config.size`; 0 while `debt` is non-zero.
    budget: u64,
    /// Tokens taken beyond the bucket by a request larger than it, to be refilled first.
    debt: u64,
    /// Token-nanoseconds earned since `last` that do not yet make a whole token: below
    /// `refill_time_ms * 10^6`.
    carry: u128,
    /// When tokens were last added.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket with `config`, or `None` if it means no limit (size or refill time 0).
    pub fn new(config: TokenBucketConfig, now: Instant) -> Option<TokenBucket> {
        if config.is_unlimited() {
            return None;
        }
        Some(TokenBucket {
            config,
            burst: config.one_time_burst,
            budget: config.size,
            debt: 0,
            carry: 0,
            last: now,
        })
    }

    /// The bucket's parameters.
    pub fn config(&self) -> TokenBucketConfig {
        self.config
    }

    /// Tokens available now without debt (burst left plus bucket), as of the last refill.
    pub fn available(&self) -> u64 {
        if self.debt > 0 {
            0
        } else {
            self.budget.saturating_add(self.burst)
        }
    }

    /// What is left of the one-time burst.
    pub fn burst_left(&self) -> u64 {
        self.burst
    }

    /// Tokens owed by a request larger than the bucket.
    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// Nanoseconds to earn `size` tokens.
    fn period_ns(&self) -> u128 {
        u128::from(self.config.refill_time_ms) * NANOS_PER_MILLI
    }

    /// Adds the tokens earned between the last refill and `now` (an earlier `now` adds none).
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if now > self.last {
            self.last = now;
        }
        let size = self.config.size;
        if self.debt == 0 && self.budget == size {
            // Full: time spent full earns nothing.
            self.carry = 0;
            return;
        }
        let period = self.period_ns();
        let acc = elapsed
            .saturating_mul(u128::from(size))
            .saturating_add(self.carry);
        let mut earned = acc / period;
        self.carry = acc % period;
        let paid = earned.min(u128::from(self.debt));
        // `paid <= debt`, a u64.
        self.debt -= paid as u64;
        earned -= paid;
        let room = u128::from(size - self.budget);
        if earned >= room {
            self.budget = size;
            self.carry = 0;
        } else {
            // `earned < room <= u64::MAX`.
            self.budget += earned as u64;
        }
    }

    /// Whether `tokens` can be taken now (as of the last refill).
    fn can_take(&self, tokens: u64) -> bool {
        tokens == 0
            || self.debt == 0
                && (tokens <= self.budget.saturating_add(self.burst)
                    || self.budget == self.config.size)
    }

    /// Takes `tokens`: the burst first, then the bucket, the rest as debt.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = tokens - from_burst;
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        self.debt = self.debt.saturating_add(rest - from_budget);
    }

    /// How long after the last refill until `tokens` can be taken.
    fn wait_for(&self, tokens: u64) -> Duration {
        if self.can_take(tokens) {
            return Duration::ZERO;
        }
        let size = self.config.size;
        // The bucket level that lets the request through: enough with the burst, or full.
        let target = tokens.saturating_sub(self.burst).min(size);
        let missing = u128::from(self.debt) + u128::from(target.saturating_sub(self.budget));
        // The first instant at which `elapsed * size + carry >= missing * period`.
        let needed = missing
            .saturating_mul(self.period_ns())
            .saturating_sub(self.carry);
        let ns = needed.div_ceil(u128::from(size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` if it can now; otherwise answers how long until it can.
    pub fn try_consume(&mut self, tokens: u64, now: Instant) -> Result<(), Throttled> {
        self.refill(now);
        if self.can_take(tokens) {
            self.take(tokens);
            Ok(())
        } else {
            Err(Throttled {
                wait: self.wait_for(tokens),
            })
        }
    }
}

/// A request that a [`RateLimiter`] held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until the same request would go through (if nothing else is taken meanwhile).
    pub wait: Duration,
}

/// Up to two token buckets, bytes and operations; see the [module docs](self).
///
/// The default limiter has no bucket and lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter with the buckets of `config` (absent or zero ones mean no limit), full.
    pub fn new(config: &RateLimiterConfig, now: Instant) -> RateLimiter {
        RateLimiter {
            bandwidth: config.bandwidth.and_then(|c| TokenBucket::new(c, now)),
            ops: config.ops.and_then(|c| TokenBucket::new(c, now)),
        }
    }

    /// Whether the limiter has no bucket at all.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// The bytes bucket.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The operations bucket.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// The parameters of the buckets there are (`None` for a bucket that is absent).
    pub fn config(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::config),
            ops: self.ops.as_ref().map(TokenBucket::config),
        }
    }

    /// Takes `ops` operations and `bytes` bytes, from both buckets or (when either is short)
    /// from neither; then answers how long until both have enough.
    pub fn try_consume(&mut self, ops: u64, bytes: u64, now: Instant) -> Result<(), Throttled> {
        let mut wait = Duration::ZERO;
        for (bucket, tokens) in [(&mut self.ops, ops), (&mut self.bandwidth, bytes)] {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait_for(tokens));
            }
        }
        if wait > Duration::ZERO {
            return Err(Throttled { wait });
        }
        for (bucket, tokens) in [(&mut self.ops, ops), (&mut self.bandwidth, bytes)] {
            if let Some(b) = bucket {
                b.take(tokens);
            }
        }
        Ok(())
    }

    /// Applies a PATCH: each bucket given in `patch` is replaced by a new, full one of those
    /// parameters, or removed when they mean no limit; a bucket not given is kept as it is.
    pub fn update(&mut self, patch: &RateLimiterConfig, now: Instant) {
        if let Some(c) = patch.bandwidth {
            self.bandwidth = TokenBucket::new(c, now);
        }
        if let Some(c) = patch.ops {
            self.ops = TokenBucket::new(c, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    #[test]
    fn zero_size_or_refill_time_is_no_bucket() {
        let t0 = Instant::now();
        assert!(TokenBucket::new(bucket(0, 10, 100), t0).is_none());
        assert!(TokenBucket::new(bucket(10, 10, 0), t0).is_none());
        let mut l = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(bucket(0, 0, 1000)),
                ops: None,
            },
            t0,
        );
        assert!(l.is_unlimited());
        assert_eq!(l.config(), RateLimiterConfig::default());
        assert_eq!(l.try_consume(u64::MAX, u64::MAX, t0), Ok(()));
        assert_eq!(RateLimiter::default(), l);
    }

    #[test]
    fn a_bucket_starts_full_and_refills_linearly() {
        let t0 = Instant::now();
        // 1000 tokens per 100 ms.
        let mut b = TokenBucket::new(bucket(1000, 0, 100), t0).unwrap();
        assert_eq!(b.available(), 1000);
        assert_eq!(b.try_consume(1000, t0), Ok(()));
        assert_eq!(
            b.try_consume(1, t0),
            Err(Throttled {
                wait: ms(100) / 1000
            })
        );
        assert_eq!(
            b.try_consume(500, t0 + ms(10)),
            Err(Throttled { wait: ms(40) })
        );
        assert_eq!(b.available(), 100);
        assert_eq!(b.try_consume(500, t0 + ms(50)), Ok(()));
        assert_eq!(b.available(), 0);
        // Never more than full.
        b.refill(t0 + Duration::from_secs(3600));
        assert_eq!(b.available(), 1000);
    }

    #[test]
    fn fractions_of_a_token_are_kept() {
        let t0 = Instant::now();
        // 3 tokens per second: one every 333.33 ms.
        let mut b = TokenBucket::new(bucket(3, 0, 1000), t0).unwrap();
        b.try_consume(3, t0).unwrap();
        // Asked every millisecond for 1 s: the partial tokens add up to exactly 3.
        let mut got = 0;
        for i in 1..=1000 {
            if b.try_consume(1, t0 + ms(i)).is_ok() {
                got += 1;
            }
        }
        assert_eq!(got, 3);
        // The wait answered is exact, to the nanosecond.
        b.refill(t0 + ms(1000));
        assert_eq!(b.available(), 0);
        let wait = b.try_consume(1, t0 + ms(1000)).unwrap_err().wait;
        assert_eq!(wait, Duration::from_nanos(333_333_334));
        assert!(b
            .try_consume(1, t0 + ms(1000) + wait - Duration::from_nanos(1))
            .is_err());
        assert!(b.try_consume(1, t0 + ms(1000) + wait).is_ok());
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_comes_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(100, 1000, 1000), t0).unwrap();
        assert_eq!(b.available(), 1100);
        assert_eq!(b.try_consume(1050, t0), Ok(()));
        assert_eq!((b.burst_left(), b.available()), (0, 50));
        b.refill(t0 + Duration::from_secs(100));
        assert_eq!((b.burst_left(), b.available()), (0, 100));
        // The burst goes first even while the bucket is full.
        let mut b = TokenBucket::new(bucket(100, 1000, 1000), t0).unwrap();
        b.try_consume(100, t0).unwrap();
        assert_eq!(b.burst_left(), 900);
        assert_eq!(b.try_consume(900, t0), Ok(()));
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_runs_into_debt() {
        let t0 = Instant::now();
        // 100 tokens per second.
        let mut b = TokenBucket::new(bucket(100, 0, 1000), t0).unwrap();
        b.try_consume(60, t0).unwrap();
        // 250 never fits: it waits until the bucket is full again (60 tokens, 600 ms)...
        assert_eq!(b.try_consume(250, t0), Err(Throttled { wait: ms(600) }));
        assert_eq!(b.try_consume(250, t0 + ms(600)), Ok(()));
        assert_eq!((b.available(), b.debt()), (0, 150));
        // ...and then nothing goes through until the debt of 150 is paid (1.5 s)...
        assert_eq!(
            b.try_consume(1, t0 + ms(600)),
            Err(Throttled { wait: ms(1510) })
        );
        assert_eq!(
            b.try_consume(1, t0 + ms(2000)),
            Err(Throttled { wait: ms(110) })
        );
        assert_eq!(b.debt(), 10);
        // ...but empty requests do.
        assert_eq!(b.try_consume(0, t0 + ms(2000)), Ok(()));
        assert_eq!(b.try_consume(1, t0 + ms(2110)), Ok(()));
        // Over 2.11 s, 311 tokens went through a 100/s bucket that started with 100: the rate
        // held.
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn both_buckets_or_neither() {
        let t0 = Instant::now();
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 1000)),
            ops: Some(bucket(2, 0, 1000)),
        };
        let mut l = RateLimiter::new(&config, t0);
        assert_eq!(l.config(), config);
        assert_eq!(l.try_consume(1, 600, t0), Ok(()));
        // Enough ops, not enough bytes: nothing is taken from either.
        assert_eq!(l.try_consume(1, 600, t0), Err(Throttled { wait: ms(200) }));
        assert_eq!(l.ops().unwrap().available(), 1);
        assert_eq!(l.bandwidth().unwrap().available(), 400);
        assert_eq!(l.try_consume(1, 100, t0), Ok(()));
        // Out of ops: the wait is the longer of the two.
        assert_eq!(l.try_consume(1, 600, t0), Err(Throttled { wait: ms(500) }));
        assert_eq!(l.try_consume(1, 600, t0 + ms(500)), Ok(()));
    }

    #[test]
    fn patch_replaces_removes_or_keeps_each_bucket() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(bucket(1000, 0, 1000)),
                ops: Some(bucket(10, 0, 1000)),
            },
            t0,
        );
        l.try_consume(10, 1000, t0).unwrap();
        // Only ops given: bandwidth keeps its (empty) state, ops is new and full.
        l.update(
            &RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(20, 5, 500)),
            },
            t0,
        );
        assert_eq!(l.bandwidth().unwrap().available(), 0);
        assert_eq!(l.ops().unwrap().available(), 25);
        assert_eq!(l.ops().unwrap().config(), bucket(20, 5, 500));
        // Bandwidth given with size 0: removed, and bytes are no longer limited.
        l.update(
            &RateLimiterConfig {
                bandwidth: Some(bucket(0, 0, 0)),
                ops: None,
            },
            t0,
        );
        assert!(l.bandwidth().is_none());
        assert_eq!(l.try_consume(1, u64::MAX, t0), Ok(()));
        // An empty patch changes nothing.
        let before = l.clone();
        l.update(&RateLimiterConfig::default(), t0 + ms(1));
        assert_eq!(l, before);
    }

    #[test]
    fn time_going_backwards_earns_nothing_and_panics_nowhere() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(bucket(u64::MAX, u64::MAX, u64::MAX), t0).unwrap();
        assert_eq!(b.try_consume(u64::MAX, t0), Ok(()));
        assert_eq!(b.try_consume(u64::MAX, t0), Ok(()));
        assert!(b.try_consume(1, t0 - Duration::from_secs(5)).is_err());
        let wait = b.try_consume(u64::MAX, t0).unwrap_err().wait;
        assert!(wait > Duration::from_secs(1_000_000), "{wait:?}");
        let mut b = TokenBucket::new(bucket(1, 0, 1), t0).unwrap();
        b.try_consume(u64::MAX, t0).unwrap();
        assert_eq!(b.debt(), u64::MAX - 1);
        // A debt of 2^64 - 2 tokens at 1 per millisecond: about 2^64 ms.
        b.refill(t0 + Duration::from_secs(u64::MAX / 1000 + 2));
        assert_eq!(b.available(), 1);
    }
}
