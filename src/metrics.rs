//! Counters for `/metrics`, in the Prometheus text format. Plain atomics bumped with relaxed
//! ordering on the paths they count: no registry, no allocation, nothing held.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Data messages read from peers, all connections.
pub static MESSAGES_IN: AtomicU64 = AtomicU64::new(0);
/// Messages written to peers (data and control), all connections.
pub static MESSAGES_OUT: AtomicU64 = AtomicU64::new(0);
/// Flushes (socket writes of a batch) by the writer tasks.
pub static FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Peers closed with 4001 because their socket took no data for the write timeout.
pub static WRITE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Writes one metric with its help and type lines.
pub fn write(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Writes several metrics: `(name, kind, help, value)` each.
pub fn write_all(out: &mut String, metrics: &[(&str, &str, &str, u64)]) {
    for (name, kind, help, value) in metrics {
        write(out, name, kind, help, *value);
    }
}

/// Writes one labelled sample series: `name{label="key"} value` for each pair.
pub fn write_labelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'static str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (key, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
    }
}

/// The connection layer's counters.
pub fn write_connection_metrics(out: &mut String) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    write_all(
        out,
        &[
            (
                "nanachat_messages_in_total",
                "counter",
                "Data messages received from peers.",
                get(&MESSAGES_IN),
            ),
            (
                "nanachat_messages_out_total",
                "counter",
                "Messages written to peers.",
                get(&MESSAGES_OUT),
            ),
            (
                "nanachat_flushes_total",
                "counter",
                "Socket flushes by the writers (one per batch).",
                get(&FLUSHES),
            ),
            (
                "nanachat_write_timeouts_total",
                "counter",
                "Peers closed with 4001: their socket took no data for the write timeout.",
                get(&WRITE_TIMEOUTS),
            ),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let mut out = String::new();
        write(&mut out, "x_total", "counter", "An x.", 3);
        write_labelled(
            &mut out,
            "e_total",
            "counter",
            "Errors.",
            "code",
            [("a", 1), ("b", 2)],
        );
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total 3\n\
             # HELP e_total Errors.\n# TYPE e_total counter\ne_total{code=\"a\"} 1\ne_total{code=\"b\"} 2\n"
        );
    }
}
