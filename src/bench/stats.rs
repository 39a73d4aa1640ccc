//! Latency histograms (HDR, microseconds), their wire form between worker and parent, and the
//! report: summary table, JSON, SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are kept in microseconds, from 1 µs to a minute, to 3 significant digits.
const MAX_US: u64 = 60_000_000;

/// A new, empty latency histogram.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid")
}

/// Records a latency, clamped into the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// A histogram as (value, count) pairs: what a worker sends its parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HistData(pub(crate) Vec<(u64, u64)>);

impl HistData {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub(crate) fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            let _ = h.record_n(value.clamp(1, MAX_US), count);
        }
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// What a run measured; `--json` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The server's URL.
    pub url: String,
    /// A label for tables (`--label`), e.g. the server's name.
    pub label: String,
    /// What was run, in words.
    pub setup: String,
    /// Connections opened.
    pub connected: u64,
    /// Connections that could not be opened.
    pub connect_failed: u64,
    /// Connections per second while opening them.
    pub connect_rate: f64,
    /// Time to connect (and say hello), per connection.
    pub connect_latency: Percentiles,
    /// Seconds measured.
    pub seconds: f64,
    /// Messages the publishers (or echo clients) had acknowledged.
    pub acked: u64,
    /// Messages per second acknowledged in the measured window.
    pub messages_per_sec: f64,
    /// Deliveries (or echoes) in the measured window.
    pub deliveries: u64,
    /// Deliveries per second in the measured window.
    pub deliveries_per_sec: f64,
    /// Publish-to-delivery latency (or round trip) in the measured window.
    pub latency: Percentiles,
    /// Latency percentiles per second of the window.
    pub timeline: Vec<Percentiles>,
    /// Counts of the latency histogram, (upper bound µs, count), for the plot.
    pub histogram: Vec<(u64, u64)>,
    /// Receivers that stopped reading on purpose (`--stall`); not counted anywhere else.
    pub stalled: u64,
    /// Deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived twice or out of order.
    pub duplicated: u64,
    /// Errors the server sent, and connections dropped.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Resume: seconds from the reconnect until every client had caught up.
    pub resume_seconds: Option<f64>,
    /// Server RSS per connection held, KiB (with `--server-pid`).
    pub server_rss_per_conn_kib: Option<f64>,
    /// Server RSS at the end, MiB (with `--server-pid`).
    pub server_rss_mib: Option<f64>,
    /// Store transactions the server committed from the end of setup to the end of the run
    /// (from its `/metrics`; a nanachat server only).
    pub store_commits: Option<u64>,
    /// Store jobs (appends, …) in those transactions.
    pub store_jobs: Option<u64>,
    /// Milliseconds the store spent in those transactions (from each one's start to its
    /// commit): near the run's length, the store's writer was busy all along.
    pub store_commit_ms: Option<f64>,
    /// Search: latency per kind of query.
    pub kinds: Vec<(String, Percentiles)>,
    /// Search: every query once before the run, and what it found.
    pub checks: Vec<QueryCheck>,
}

/// What one search query found when it was checked before the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueryCheck {
    /// The query.
    pub query: String,
    /// Its room, if any.
    pub room: Option<String>,
    /// Its kind.
    pub kind: String,
    /// Results in the reply.
    pub found: u64,
    /// Messages known to hold its words, if told.
    pub expect: Option<u64>,
    /// What was wrong with the reply, if anything (a result without every word, from another
    /// room, or not as many as expected).
    pub wrong: Option<String>,
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} {}  {}", self.label, self.scenario, self.url);
        let _ = writeln!(out, "  {}", self.setup);
        let row = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "  {k:<16}{v}");
        };
        row(
            &mut out,
            "connections",
            format!(
                "{} ({} failed, {:.0}/s)",
                self.connected, self.connect_failed, self.connect_rate
            ),
        );
        if self.connect_latency.count > 0 {
            row(
                &mut out,
                "connect ms",
                percentile_row(&self.connect_latency),
            );
        }
        if let Some(kib) = self.server_rss_per_conn_kib {
            row(
                &mut out,
                "server RSS",
                format!(
                    "{:.1} MiB, {kib:.2} KiB per connection",
                    self.server_rss_mib.unwrap_or(0.0)
                ),
            );
        }
        if self.seconds > 0.0 {
            // Each line's figures come from one span, named on the line: the measured window,
            // or the whole run.
            row(
                &mut out,
                "messages",
                format!(
                    "{} in {:.1} s ({} /s), measured",
                    thousands(self.messages_per_sec * self.seconds),
                    self.seconds,
                    thousands(self.messages_per_sec)
                ),
            );
            row(
                &mut out,
                "deliveries",
                format!(
                    "{} in {:.1} s ({} /s), measured",
                    thousands(self.deliveries as f64),
                    self.seconds,
                    thousands(self.deliveries_per_sec)
                ),
            );
            row(
                &mut out,
                "acked",
                format!(
                    "{} in the whole run (warm-up and drain too)",
                    thousands(self.acked as f64)
                ),
            );
            row(&mut out, "latency ms", percentile_row(&self.latency));
        }
        for (kind, p) in &self.kinds {
            row(
                &mut out,
                &format!("  {kind}"),
                format!("{} ({} queries)", percentile_row(p), p.count),
            );
        }
        if !self.checks.is_empty() {
            let wrong = self.checks.iter().filter(|c| c.wrong.is_some()).count();
            row(
                &mut out,
                "checked",
                format!("{} queries, {wrong} wrong", self.checks.len()),
            );
        }
        if let (Some(commits), Some(jobs)) = (self.store_commits, self.store_jobs) {
            row(
                &mut out,
                "store",
                format!(
                    "{commits} commits, {jobs} jobs ({:.1} a commit), {:.0} ms committing",
                    jobs as f64 / commits.max(1) as f64,
                    self.store_commit_ms.unwrap_or(0.0)
                ),
            );
        }
        if let Some(s) = self.resume_seconds {
            row(&mut out, "resumed in", format!("{s:.2} s"));
        }
        if self.stalled > 0 {
            row(
                &mut out,
                "stalled",
                format!("{} receivers stopped reading (not counted)", self.stalled),
            );
        }
        row(&mut out, "lost", self.lost.to_string());
        row(&mut out, "duplicated", self.duplicated.to_string());
        let errors = match &self.first_error {
            Some(first) => format!("{} (first: {first})", self.errors),
            None => self.errors.to_string(),
        };
        row(&mut out, "errors", errors);
        if self.lost > 0 || self.duplicated > 0 {
            let _ = writeln!(
                out,
                "  !!! {} LOST AND {} DUPLICATED DELIVERIES: the server broke its promise",
                self.lost, self.duplicated
            );
        }
        out
    }

    /// An SVG with latency percentiles over time (left) and the latency histogram (right).
    pub fn svg(&self) -> String {
        let (w, h, pad) = (900.0_f64, 340.0_f64, 50.0_f64);
        let panel = (w - 3.0 * pad) / 2.0;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            s,
            r#"<rect width="{w}" height="{h}" fill="white"/><text x="{pad}" y="18" font-size="13">{} {}: {}</text>"#,
            xml(&self.label),
            xml(&self.scenario),
            xml(&self.setup)
        );
        let top = 40.0;
        let bottom = h - pad;
        // Left: percentiles per second, log scale.
        type Series = (&'static str, &'static str, fn(&Percentiles) -> f64);
        let series: [Series; 4] = [
            ("p50", "#1f77b4", |p| p.p50),
            ("p99", "#ff7f0e", |p| p.p99),
            ("p99.9", "#d62728", |p| p.p999),
            ("max", "#7f7f7f", |p| p.max),
        ];
        let values: Vec<f64> = self
            .timeline
            .iter()
            .filter(|p| p.count > 0)
            .flat_map(|p| [p.p50, p.max])
            .collect();
        let (lo, hi) = log_range(&values);
        let x0 = pad;
        axes(&mut s, x0, top, panel, bottom, "second", "latency ms (log)");
        log_ticks(&mut s, x0, top, bottom, lo, hi);
        let n = self.timeline.len().max(2) as f64 - 1.0;
        for k in [0.0, 0.5, 1.0] {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
                x0 + k * panel,
                bottom + 14.0,
                k * n
            );
        }
        for (i, (name, colour, get)) in series.iter().enumerate() {
            let points: Vec<String> = self
                .timeline
                .iter()
                .enumerate()
                .filter(|(_, p)| p.count > 0)
                .map(|(t, p)| {
                    let x = x0 + panel * t as f64 / n;
                    let y = log_y(get(p), lo, hi, top, bottom);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            let lx = x0 + 10.0 + 60.0 * i as f64;
            let _ = write!(
                s,
                r#"<rect x="{lx}" y="{}" width="10" height="3" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
                top + 4.0,
                lx + 13.0,
                top + 9.0
            );
        }
        // Right: the histogram, log-spaced latency buckets.
        let x1 = 2.0 * pad + panel;
        axes(
            &mut s,
            x1,
            top,
            panel,
            bottom,
            "latency ms (log)",
            "share %",
        );
        let buckets = 40;
        let all: Vec<f64> = self
            .histogram
            .iter()
            .map(|&(us, _)| us as f64 / 1000.0)
            .collect();
        let (blo, bhi) = log_range(&all);
        let mut counts = vec![0u64; buckets];
        let total: u64 = self.histogram.iter().map(|&(_, c)| c).sum();
        for &(us, c) in &self.histogram {
            let f = ((us as f64 / 1000.0).log10() - blo) / (bhi - blo);
            let b = ((f * buckets as f64) as usize).min(buckets - 1);
            counts[b] += c;
        }
        let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
        let bw = panel / buckets as f64;
        for (b, &c) in counts.iter().enumerate() {
            let bh = (bottom - top) * c as f64 / peak;
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#1f77b4"/>"##,
                x1 + b as f64 * bw,
                bottom - bh,
                (bw - 1.0).max(1.0)
            );
        }
        for k in [0.0, 0.5, 1.0] {
            let ms = 10f64.powf(blo + k * (bhi - blo));
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x1 + k * panel,
                bottom + 14.0,
                short(ms)
            );
        }
        let share = if total > 0 {
            100.0 * peak / total as f64
        } else {
            0.0
        };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{share:.0}</text></svg>"#,
            x1 - 4.0,
            top + 4.0
        );
        s.push('\n');
        s
    }
}

fn percentile_row(p: &Percentiles) -> String {
    // No sample, no statistic: 0.00 would read as a measurement.
    if p.count == 0 {
        return "n/a (no samples)".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        short(p.p50),
        short(p.p90),
        short(p.p99),
        short(p.p999),
        short(p.max)
    )
}

/// A number of milliseconds, short.
fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// 1234567.8 → "1,234,568".
pub(crate) fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// log10 bounds that hold every positive value, at least one decade apart.
fn log_range(values: &[f64]) -> (f64, f64) {
    let positive = values.iter().copied().filter(|v| *v > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min);
    let hi = positive.fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (-1.0, 1.0);
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

fn log_y(v: f64, lo: f64, hi: f64, top: f64, bottom: f64) -> f64 {
    let f = (v.max(1e-6).log10() - lo) / (hi - lo);
    bottom - f.clamp(0.0, 1.0) * (bottom - top)
}

fn axes(s: &mut String, x: f64, top: f64, width: f64, bottom: f64, xl: &str, yl: &str) {
    let _ = write!(
        s,
        r##"<path d="M{x},{top} V{bottom} H{}" stroke="#333" fill="none"/><text x="{}" y="{}" text-anchor="middle">{xl}</text><text x="{x}" y="{}" >{yl}</text>"##,
        x + width,
        x + width / 2.0,
        bottom + 28.0,
        top - 6.0
    );
}

fn log_ticks(s: &mut String, x: f64, top: f64, bottom: f64, lo: f64, hi: f64) {
    let mut d = lo;
    while d <= hi {
        let y = log_y(10f64.powf(d), lo, hi, top, bottom);
        let _ = write!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text><path d="M{x},{y:.1} h4" stroke="#333"/>"##,
            x - 4.0,
            y + 4.0,
            short(10f64.powf(d))
        );
        d += 1.0;
    }
}

/// Per-second histograms of a window, merged from every worker.
#[derive(Debug, Default)]
pub(crate) struct Timeline(pub(crate) BTreeMap<u64, Histogram<u64>>);

impl Timeline {
    pub(crate) fn add(&mut self, second: u64, data: &HistData) {
        data.add_to(self.0.entry(second).or_insert_with(histogram));
    }

    /// One entry per second from 0 to the last, empty seconds included.
    pub(crate) fn percentiles(&self, seconds: u64) -> Vec<Percentiles> {
        (0..seconds)
            .map(|s| self.0.get(&s).map(Percentiles::of).unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let mut h = histogram();
        for us in [5, 50, 500, 5000, 50_000] {
            record(&mut h, us);
        }
        let mut merged = histogram();
        HistData::of(&h).add_to(&mut merged);
        HistData::of(&h).add_to(&mut merged);
        assert_eq!(merged.len(), 10);
        assert_eq!(merged.max(), h.max());
        let p = Percentiles::of(&merged);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn the_table_shouts_about_losses() {
        let mut r = Report {
            scenario: "fanout".into(),
            lost: 3,
            ..Report::default()
        };
        assert!(r.table().contains("3 LOST"));
        r.lost = 0;
        assert!(!r.table().contains("LOST"));
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert!(r.svg().starts_with("<svg"));
    }
}
