//! The wall clock, in the units and formats the crate uses: seconds for token expiry,
//! milliseconds for stored messages, microseconds for epochs and the load generator's
//! latencies, and the texts the terminal client and the seed's pair print.
//!
//! A clock set before 1970 reads as 0 in every unit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::Timelike;

/// Time since the Unix epoch (zero for a clock set before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Microseconds since the Unix epoch: the one clock all processes on a machine share.
pub(crate) fn now_us() -> u64 {
    since_epoch().as_micros() as u64
}

/// `datetime.datetime.now()` as Python prints it (the seed's timestamps): local time,
/// microseconds, and no fraction at all when the microseconds are zero.
pub fn python_now() -> String {
    python_timestamp(chrono::Local::now().naive_local())
}

fn python_timestamp(t: chrono::NaiveDateTime) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// A time in milliseconds since the Unix epoch as local `HH:MM` (empty if out of range).
pub(crate) fn local_hh_mm(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%H:%M").to_string())
        .unwrap_or_default()
}

/// A time in seconds since the Unix epoch as UTC, `2026-11-29 12:00:00 UTC` (the number itself
/// if out of range).
pub(crate) fn utc_from_secs(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || secs.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn timestamps_print_as_python_prints_datetime_now() {
        let day = NaiveDate::from_ymd_opt(2021, 9, 6).expect("date");
        let t = day.and_hms_micro_opt(11, 23, 14, 967_038).expect("time");
        assert_eq!(python_timestamp(t), "2021-09-06 11:23:14.967038");
        let t = day.and_hms_micro_opt(11, 23, 14, 38).expect("time");
        assert_eq!(python_timestamp(t), "2021-09-06 11:23:14.000038");
        let t = day.and_hms_micro_opt(11, 23, 14, 0).expect("time");
        assert_eq!(python_timestamp(t), "2021-09-06 11:23:14");
    }
}
