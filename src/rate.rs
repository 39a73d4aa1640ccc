//! A token bucket: the server limits each connection with one, and the client paces itself with
//! one set from the limits the server announces, so a script piping many lines is never refused;
//! the server also paces each source address's new connections with one.

use std::time::{Duration, Instant};

/// `burst` tokens, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    /// A bucket full at `now` (the `_at` methods take the time, for callers that read the
    /// clock once for many buckets, and for tests).
    pub fn new_at(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self) {
        self.refill_at(Instant::now());
    }

    /// A time before the last one (another thread read the clock first) adds nothing.
    fn refill_at(&mut self, now: Instant) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Takes a token if there is one at `now`.
    pub fn take_at(&mut self, now: Instant) -> bool {
        self.refill_at(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Empties the bucket (the other side said we went too fast).
    pub fn drain(&mut self) {
        self.refill();
        self.tokens = 0.0;
    }

    /// How long until a token is there.
    pub fn wait(&mut self) -> Duration {
        self.wait_at(Instant::now())
    }

    /// How long after `now` until a token is there.
    pub fn wait_at(&mut self, now: Instant) -> Duration {
        self.refill_at(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Whether the bucket is full again at `now`: as if it had never been used.
    pub fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill_at(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_paces() {
        let mut b = Bucket::new(10, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        let wait = b.wait();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        b.drain();
        assert!(!b.take());
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut b = Bucket::new_at(4, 2, start);
        assert!(b.take_at(start) && b.take_at(start) && !b.take_at(start));
        assert!(!b.is_full_at(start));
        assert_eq!(b.wait_at(start), Duration::from_millis(250));
        let later = start + Duration::from_millis(250);
        assert!(b.take_at(later) && !b.take_at(later));
        // An earlier time (another thread's clock read) gives nothing back.
        assert!(!b.take_at(start));
        assert!(b.is_full_at(later + Duration::from_secs(10)));
        assert!(b.take_at(later + Duration::from_secs(10)));
        assert!(b.take_at(later + Duration::from_secs(10)));
        assert!(!b.take_at(later + Duration::from_secs(10)));
    }
}
