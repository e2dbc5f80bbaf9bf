//! Limits against abuse: token buckets for request rates (per connection, per user) and login
//! throttling (failures per account, attempts per client address). Every limit hit is counted in
//! `/metrics` as `chat_limit_hits_total{limit="…"}`. Pure bookkeeping: no I/O, no `.await`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts a limit hit in the metrics.
pub fn hit(limit: &'static str) {
    metrics::counter!("chat_limit_hits_total", "limit" => limit).increment(1);
}

/// Seconds of rate a bucket holds when full.
pub const BURST_SECONDS: f64 = 10.0;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` per second, holding ten seconds' worth (so that a client
    /// pipelining thousands of requests at once is served); `rate == 0` never limits.
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate);
        TokenBucket {
            rate,
            burst: rate * BURST_SECONDS,
            tokens: rate * BURST_SECONDS,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One bucket per user on this replica, shared by the user's connections.
pub struct UserBuckets {
    rate: u32,
    buckets: Mutex<HashMap<i64, UserBucket>>,
}

/// A user's bucket, shared by the user's connections (each keeps it: see [`RequestRate`]).
type UserBucket = Arc<Mutex<TokenBucket>>;

impl UserBuckets {
    /// Buckets of `rate` requests per second (0: unlimited).
    pub fn new(rate: u32) -> Self {
        UserBuckets {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// `user`'s bucket (`None`: unlimited).
    fn bucket(&self, user: i64) -> Option<UserBucket> {
        if self.rate == 0 {
            return None;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Buckets no connection holds and full again carry no state worth keeping.
            let now = Instant::now();
            buckets.retain(|_, b| {
                Arc::strong_count(b) > 1
                    || b.lock()
                        .is_ok_and(|b| now.duration_since(b.last) < Duration::from_secs(10))
            });
        }
        Some(
            buckets
                .entry(user)
                .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::per_second(self.rate))))
                .clone(),
        )
    }

    /// Takes a token from `user`'s bucket.
    #[cfg(test)]
    fn try_take(&self, user: i64) -> bool {
        self.bucket(user).is_none_or(|b| take(&b))
    }
}

/// Takes a token from a user's bucket.
fn take(bucket: &UserBucket) -> bool {
    bucket.lock().unwrap_or_else(|p| p.into_inner()).try_take()
}

/// A connection's request rate limits: its own bucket and, once logged in, its user's, kept
/// from the user's first request so that a request locks that user's bucket only, not the
/// map of every user's.
#[derive(Debug)]
pub struct RequestRate {
    connection: TokenBucket,
    /// The user the kept bucket is of, and the bucket (`None`: unlimited).
    user: Option<(i64, Option<UserBucket>)>,
}

impl RequestRate {
    /// `rate` requests per second for the connection (0: unlimited).
    pub fn per_second(rate: u32) -> Self {
        RequestRate {
            connection: TokenBucket::per_second(rate),
            user: None,
        }
    }

    /// Takes a token from the connection's bucket and, for a logged-in `user`, from the user's
    /// in `users`; a refusal is counted as the limit it hit.
    pub fn allow(&mut self, users: &UserBuckets, user: Option<i64>) -> bool {
        if !self.connection.try_take() {
            hit("rate_connection");
            return false;
        }
        let Some(user) = user else {
            return true;
        };
        if self.user.as_ref().is_none_or(|(id, _)| *id != user) {
            self.user = Some((user, users.bucket(user)));
        }
        if let Some((_, Some(bucket))) = &self.user
            && !take(bucket)
        {
            hit("rate_user");
            return false;
        }
        true
    }
}

/// Events in the current one-minute window of one key.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Fixed one-minute windows of counts per key.
struct Windows<K> {
    entries: Mutex<HashMap<K, Window>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    fn new() -> Self {
        Windows {
            entries: Mutex::default(),
        }
    }

    fn count(&self, key: &K, now: Instant) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|w| now.duration_since(w.start) < WINDOW)
            .map_or(0, |w| w.count)
    }

    fn add(&self, key: K, now: Instant) -> u32 {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, w| now.duration_since(w.start) < WINDOW);
        }
        let w = entries.entry(key).or_insert(Window {
            start: now,
            count: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        w.count += 1;
        w.count
    }

    fn clear(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// What a login attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginVerdict {
    /// Go ahead.
    Allow,
    /// Go ahead after this pause (the account has recent failures).
    SlowDown(Duration),
    /// Refuse with 429.
    Refuse,
}

/// Throttles password guessing: failures per account, attempts per client address.
pub struct LoginThrottle {
    failures_per_account: u32,
    attempts_per_address: u32,
    failures: Windows<String>,
    attempts: Windows<IpAddr>,
}

impl LoginThrottle {
    /// Allows `failures_per_account` failures per account and `attempts_per_address`
    /// attempts per address per minute (0: unlimited).
    pub fn new(failures_per_account: u32, attempts_per_address: u32) -> Self {
        LoginThrottle {
            failures_per_account,
            attempts_per_address,
            failures: Windows::new(),
            attempts: Windows::new(),
        }
    }

    /// Registers an attempt on `account` (an id or a name) from `address`.
    pub fn check(&self, account: &str, address: Option<IpAddr>) -> LoginVerdict {
        let now = Instant::now();
        if let Some(ip) = address
            && self.attempts_per_address > 0
            && self.attempts.add(ip, now) > self.attempts_per_address
        {
            hit("login_address");
            return LoginVerdict::Refuse;
        }
        if self.failures_per_account == 0 {
            return LoginVerdict::Allow;
        }
        let failures = self.failures.count(&account.to_owned(), now);
        if failures >= self.failures_per_account {
            hit("login_account");
            return LoginVerdict::Refuse;
        }
        // Past half the allowance, every further attempt waits longer.
        let half = self.failures_per_account / 2;
        if failures > half {
            return LoginVerdict::SlowDown(Duration::from_millis(250 * u64::from(failures - half)));
        }
        LoginVerdict::Allow
    }

    /// Records the outcome of an attempt on `account`.
    pub fn record(&self, account: &str, success: bool) {
        if success {
            self.failures.clear(&account.to_owned());
        } else {
            self.failures.add(account.to_owned(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::per_second(10);
        b.last = start;
        let taken = (0..1000).filter(|_| b.try_take_at(start)).count();
        assert_eq!(taken, 100, "the burst is ten seconds of rate");
        assert!(!b.try_take_at(start + Duration::from_millis(50)));
        assert!(b.try_take_at(start + Duration::from_millis(150)));
    }

    #[test]
    fn a_zero_rate_never_limits() {
        let mut b = TokenBucket::per_second(0);
        assert!((0..10_000).all(|_| b.try_take()));
        let users = UserBuckets::new(0);
        assert!((0..10_000).all(|_| users.try_take(1)));
    }

    #[test]
    fn users_have_separate_buckets() {
        let users = UserBuckets::new(5);
        assert_eq!((0..500).filter(|_| users.try_take(1)).count(), 50);
        assert!(users.try_take(2));
    }

    /// A bucket kept by one connection is the one every other connection of the user takes
    /// from, through its own kept handle or through the map.
    #[test]
    fn a_kept_bucket_is_shared_by_the_users_connections() {
        let users = UserBuckets::new(5);
        let (one, two) = (users.bucket(1).unwrap(), users.bucket(1).unwrap());
        assert_eq!((0..30).filter(|_| take(&one)).count(), 30);
        assert_eq!((0..30).filter(|_| take(&two)).count(), 20);
        assert!(!users.try_take(1));
        assert!(users.bucket(2).is_some_and(|b| take(&b)));
        assert!(UserBuckets::new(0).bucket(1).is_none());
    }

    /// A connection's limits: its own bucket first, then its user's, shared with the user's
    /// other connections, and another user's after a new login.
    #[test]
    fn a_connection_takes_from_its_bucket_then_its_users() {
        let users = UserBuckets::new(2);
        let mut one = RequestRate::per_second(100);
        let mut other = RequestRate::per_second(100);
        assert_eq!((0..15).filter(|_| one.allow(&users, Some(1))).count(), 15);
        assert_eq!((0..15).filter(|_| other.allow(&users, Some(1))).count(), 5);
        assert!(
            one.allow(&users, None),
            "anonymous: the connection's bucket only"
        );
        assert!(one.allow(&users, Some(2)), "another user, another bucket");
        let mut slow = RequestRate::per_second(1);
        assert_eq!((0..15).filter(|_| slow.allow(&users, Some(3))).count(), 10);
    }

    #[test]
    fn failed_logins_slow_down_then_refuse_and_success_resets() {
        let t = LoginThrottle::new(4, 0);
        for _ in 0..3 {
            assert_eq!(t.check("ann", None), LoginVerdict::Allow);
            t.record("ann", false);
        }
        assert!(matches!(t.check("ann", None), LoginVerdict::SlowDown(_)));
        t.record("ann", false);
        assert_eq!(t.check("ann", None), LoginVerdict::Refuse);
        assert_eq!(
            t.check("bob", None),
            LoginVerdict::Allow,
            "other accounts unaffected"
        );
        t.record("ann", true);
        assert_eq!(t.check("ann", None), LoginVerdict::Allow);
    }

    #[test]
    fn attempts_per_address_are_capped() {
        let t = LoginThrottle::new(0, 3);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!((0..3).all(|_| t.check("x", Some(ip)) == LoginVerdict::Allow));
        assert_eq!(t.check("y", Some(ip)), LoginVerdict::Refuse);
        assert_eq!(
            t.check("y", Some("10.1.2.4".parse().unwrap())),
            LoginVerdict::Allow
        );
    }
}
