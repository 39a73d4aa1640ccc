//! Limits per source address: how many WebSocket connections one IP address may hold open, and
//! how fast it may open new ones (a token bucket: `rate` a second, bursts of twice that). One
//! address must not take every connection the server has, nor spend its accept loop.
//!
//! A connection holds a [`Slot`] for its life; dropping it gives the count back. An address
//! with nothing open and a full bucket is as good as unknown, so its entry is dropped: at
//! release, and in a sweep whenever the table has doubled since the last one. A scan from
//! many addresses therefore costs memory only for the addresses seen in the last few seconds
//! (a bucket is full again `2 / rate` seconds after its last use) and those still connected.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rate::Bucket;

/// The table is never swept below this many entries: a sweep is a full scan.
const SWEEP_FLOOR: usize = 1024;

/// `Retry-After` for an address at its open-connections limit: a slot frees only when one of
/// its own connections ends, so retrying at once is pointless.
const RETRY_FULL: Duration = Duration::from_secs(10);

/// The per-address limits and the table of addresses they are counted for.
#[derive(Debug)]
pub(crate) struct PerIp {
    /// Most connections open at once from one address; 0: no limit.
    max_open: usize,
    /// New connections a second from one address; 0: no limit.
    rate: u32,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// The size at which the next admission sweeps the table first.
    sweep_at: usize,
}

#[derive(Debug)]
struct Entry {
    /// Connections open from this address (slots not yet dropped).
    open: usize,
    /// New connections this address may still open right now.
    bucket: Bucket,
}

impl Entry {
    /// Nothing open and a full bucket (or no rate limit): the entry says nothing.
    fn idle(&mut self, rate: u32, now: Instant) -> bool {
        self.open == 0 && (rate == 0 || self.bucket.is_full_at(now))
    }
}

/// Why an address may not open another connection now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This many connections are open from it already (`--max-connections-per-ip`).
    TooMany(usize),
    /// It opened its burst and more than `rate` a second (`--connect-rate-per-ip`); the next
    /// connection is allowed after `wait`.
    TooFast {
        /// The sustained rate allowed.
        rate: u32,
        /// Until the next token.
        wait: Duration,
    },
}

impl Refusal {
    /// How long the client should wait before trying again, in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let wait = match self {
            Self::TooMany(_) => RETRY_FULL,
            Self::TooFast { wait, .. } => *wait,
        };
        wait.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany(open) => write!(
                f,
                "too many connections from your address ({open} open; see --max-connections-per-ip)"
            ),
            Self::TooFast { rate, .. } => write!(
                f,
                "connecting too fast from your address ({rate} a second; see --connect-rate-per-ip)"
            ),
        }
    }
}

/// One connection counted against its address; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release_at(self.ip, Instant::now());
    }
}

impl PerIp {
    /// Limits of `max_open` connections and `rate` new ones a second per address (0: none).
    pub(crate) fn new(max_open: usize, rate: u32) -> Self {
        Self {
            max_open,
            rate,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused. `None` when both limits
    /// are off: nothing is counted.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Slot>, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Option<Slot>, Refusal> {
        if self.max_open == 0 && self.rate == 0 {
            return Ok(None);
        }
        // An IPv4 client reaching a dual-stack socket is one address, however it arrives.
        let ip = ip.to_canonical();
        let mut table = self.table();
        if table.entries.len() >= table.sweep_at {
            self.sweep(&mut table, now);
        }
        let rate = self.rate;
        let entry = table.entries.entry(ip).or_insert_with(|| Entry {
            open: 0,
            bucket: Bucket::new_at(rate, rate.saturating_mul(2), now),
        });
        if self.max_open != 0 && entry.open >= self.max_open {
            return Err(Refusal::TooMany(entry.open));
        }
        if rate != 0 && !entry.bucket.take_at(now) {
            let wait = entry.bucket.wait_at(now);
            return Err(Refusal::TooFast { rate, wait });
        }
        entry.open += 1;
        Ok(Some(Slot {
            limits: self.clone(),
            ip,
        }))
    }

    /// Gives back one connection of `ip`; forgets the address if that leaves it idle.
    fn release_at(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.idle(self.rate, now) {
                table.entries.remove(&ip);
            }
        }
    }

    /// Drops every idle entry; the next sweep comes when the table has doubled again, so the
    /// scans cost O(1) an admission.
    fn sweep(&self, table: &mut Table, now: Instant) {
        let rate = self.rate;
        table.entries.retain(|_, entry| !entry.idle(rate, now));
        let len = table.entries.len();
        table.sweep_at = (len * 2).max(SWEEP_FLOOR);
        // A scan that is over gives its memory back.
        if table.entries.capacity() > 4 * table.sweep_at {
            table.entries.shrink_to(table.sweep_at);
        }
    }

    /// Addresses in the table: those with a connection open or a bucket not yet full.
    pub(crate) fn addresses(&self) -> usize {
        self.table().entries.len()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table is consistent between statements: a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// Ends a connection at `now` instead of the clock's time.
    fn close_at(slot: Option<Slot>, now: Instant) {
        let slot = std::mem::ManuallyDrop::new(slot.expect("counted"));
        slot.limits.release_at(slot.ip, now);
    }

    #[test]
    fn the_open_count_is_per_address_and_released_on_drop() {
        let limits = Arc::new(PerIp::new(2, 0));
        let now = Instant::now();
        let a = limits.admit_at(v4(1), now).unwrap();
        let _b = limits.admit_at(v4(1), now).unwrap();
        assert_eq!(
            limits.admit_at(v4(1), now).unwrap_err(),
            Refusal::TooMany(2)
        );
        // Another address is not affected.
        let _other = limits.admit_at(v4(2), now).unwrap();
        drop(a);
        let _c = limits.admit_at(v4(1), now).unwrap();
        assert!(limits.admit_at(v4(1), now).is_err());
    }

    #[test]
    fn the_bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let limits = Arc::new(PerIp::new(0, 5));
        let start = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..10 {
            slots.push(limits.admit_at(v4(1), start).unwrap());
        }
        let refusal = limits.admit_at(v4(1), start).unwrap_err();
        let Refusal::TooFast { rate: 5, wait } = refusal else {
            panic!("{refusal:?}")
        };
        assert!(wait.abs_diff(Duration::from_millis(200)) < Duration::from_millis(1));
        assert_eq!(refusal.retry_after_secs(), 1);
        assert!(refusal.to_string().contains("--connect-rate-per-ip"));
        // Closing connections gives no tokens back; time does, at the rate.
        slots.clear();
        assert!(limits.admit_at(v4(1), start).is_err());
        let later = start + Duration::from_millis(250);
        slots.push(limits.admit_at(v4(1), later).unwrap());
        assert!(limits.admit_at(v4(1), later).is_err());
        let much_later = later + Duration::from_secs(60);
        for _ in 0..10 {
            slots.push(limits.admit_at(v4(1), much_later).unwrap());
        }
        assert!(limits.admit_at(v4(1), much_later).is_err());
    }

    #[test]
    fn off_limits_count_nothing() {
        let limits = Arc::new(PerIp::new(0, 0));
        for _ in 0..10_000 {
            assert!(limits.admit(v4(1)).unwrap().is_none());
        }
        assert_eq!(limits.addresses(), 0);
    }

    #[test]
    fn an_address_is_forgotten_once_released_with_a_full_bucket() {
        let limits = Arc::new(PerIp::new(3, 0));
        let slot = limits.admit(v4(1)).unwrap();
        assert_eq!(limits.addresses(), 1);
        drop(slot);
        assert_eq!(limits.addresses(), 0);

        let limits = Arc::new(PerIp::new(3, 10));
        let start = Instant::now();
        // Released at once: its bucket is not full yet, so the entry stays to keep the count.
        close_at(limits.admit_at(v4(1), start).unwrap(), start);
        assert_eq!(limits.addresses(), 1);
        // Released after the bucket refilled (a connection that lived a while): forgotten.
        let slot = limits.admit_at(v4(2), start).unwrap();
        close_at(slot, start + Duration::from_secs(1));
        assert_eq!(limits.addresses(), 1);
    }

    #[test]
    fn a_scan_of_many_addresses_does_not_grow_the_table_forever() {
        let limits = Arc::new(PerIp::new(10, 100));
        let start = Instant::now();
        let mut peak = 0;
        // 100,000 addresses, one connection each, a thousand a second; each closes at once,
        // leaving an entry whose bucket is not yet full.
        for i in 0..100_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i) + 1));
            close_at(limits.admit_at(ip, now).unwrap(), now);
            peak = peak.max(limits.addresses());
        }
        assert!(peak <= 2 * SWEEP_FLOOR, "the table reached {peak} entries");
        // One that keeps a connection open is never swept.
        let kept = limits.admit_at(v4(9), start).unwrap();
        let late = start + Duration::from_secs(1000);
        limits.sweep(&mut limits.table(), late);
        assert_eq!(limits.addresses(), 1);
        close_at(kept, late);
        assert_eq!(limits.addresses(), 0);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let limits = Arc::new(PerIp::new(1, 0));
        let _slot = limits.admit(v4(7)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(limits.admit(mapped).unwrap_err(), Refusal::TooMany(1));
        let _v6 = limits.admit("2001:db8::7".parse().unwrap()).unwrap();
    }
}
