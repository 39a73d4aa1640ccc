//! `nanachat bench`: the load generator.
//!
//! The parent process plans the run and starts worker processes (the same binary, `bench-worker`),
//! each holding a share of the clients, so that a run can pass one process's open-files limit;
//! with [`BenchSpec::sources`] the clients also spread over several local addresses (127.0.0.2, …)
//! to pass one address's ~28k ports. Parent and workers speak JSON lines: commands on the
//! worker's stdin (`Cmd`), events on its stdout (`Ev`). The parent moves every worker through
//! the same phases together — set up, go, stop, drain — draws a progress bar, merges the
//! workers' HDR histograms and prints the report.
//!
//! Scenarios:
//! - `fanout`: rooms × receivers, publishers at a fixed rate or as fast as their acks allow;
//!   latency from publish to each delivery (the publish time travels in the payload);
//! - `echo`: each client sends and times the echo of what it sent;
//! - `connect`: open N connections at a ramp rate and hold them (connections/s, server memory);
//! - `resume`: N clients drop at once, messages are published meanwhile, all reconnect at once
//!   and resume from their last seq;
//! - `react`: every member of one room reacts once to one message, the reactions spread over
//!   the run; every member gets every reaction (members² deliveries), timed from when each
//!   was due;
//! - `search`: clients send `search` requests from a list of queries, one at a time each, and
//!   time the replies (per kind of query); the first client checks every query's results first.
//!
//! A nanachat server under test needs its per-address limits lifted (`--max-connections-per-ip 0
//! --connect-rate-per-ip 0`): every client comes from this machine. Without that, the
//! connections past them fail with the server's 429 and its reason.
//!
//! Every message is accounted for: a receiver counts what it got from each publisher by the
//! publisher's own sequence number, and after the run waits for as many as were acked; anything
//! missing is *lost*, anything twice or out of order *duplicated*, and the report says so loudly.

mod stats;
mod worker;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use stats::{HistData, Timeline, histogram};
pub use stats::{Percentiles, QueryCheck, Report};

use crate::clock::now_us;
use crate::{Error, Result};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Rooms × receivers, publishers at a rate or as fast as acks allow.
    Fanout,
    /// Each client times the echo of what it sends.
    Echo,
    /// Open many connections at a ramp rate and hold them.
    Connect,
    /// Drop every client at once, publish meanwhile, reconnect and resume.
    Resume,
    /// Every member of one room reacts once to one message; every member gets every reaction.
    React,
    /// Search requests from a list of queries, timed.
    Search,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Echo => "echo",
            Self::Connect => "connect",
            Self::Resume => "resume",
            Self::React => "react",
            Self::Search => "search",
        }
    }
}

/// A run's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchSpec {
    /// The scenario.
    pub scenario: Scenario,
    /// The server, `ws://HOST:PORT[/PATH]`.
    pub url: String,
    /// Plain text frames and no subprotocol, for any broadcast server; else `nanachat.v1`.
    pub raw: bool,
    /// Raw mode: a client is connected once a line starting with this came (else at the
    /// handshake).
    pub ready_line: Option<String>,
    /// Fanout: rooms.
    pub rooms: u32,
    /// Fanout: receivers per room.
    pub receivers: u32,
    /// Fanout: publishers per room.
    pub publishers: u32,
    /// Messages per second per room (resume: while reconnecting); 0 is as fast as acks allow.
    pub rate: f64,
    /// Messages a publisher (or echo client) may have unacknowledged at once.
    pub window: u32,
    /// Payload bytes.
    pub size: usize,
    /// Echo, connect, resume: clients.
    pub connections: u32,
    /// Connections opened per second (0: as fast as possible).
    pub ramp: f64,
    /// Seconds measured (connect: held).
    pub seconds: f64,
    /// Seconds run before measuring.
    pub warmup: f64,
    /// Resume: messages published while the clients are away.
    pub missed: u64,
    /// Fanout: percent of receivers that stop reading once the run starts (their deliveries
    /// are not counted; the others' latency shows what a stalled member costs them).
    pub stall: f64,
    /// Worker processes (0: one per 15,000 clients).
    pub workers: usize,
    /// Local addresses to connect from, in turn (empty: the system's choice, or 127.0.0.x
    /// spread when a loopback target needs more ports than one address has).
    pub sources: Vec<IpAddr>,
    /// The server's process id, to sample its memory.
    pub server_pid: Option<u32>,
    /// A name for the report (the server under test).
    pub label: String,
    /// Search: the queries, sent in turn.
    pub queries: Vec<SearchQuery>,
    /// Search: the nick the clients say hello as (else one of the run's own per client).
    pub nick: Option<String>,
    /// Search: the key that goes with `nick`.
    pub key: Option<String>,
    /// Fanout: publish through the HTTP API with this key (`POST /api/v1/rooms/ROOM/messages`,
    /// one request at a time per publisher, on one kept-alive connection) instead of `say`.
    pub api_key: Option<String>,
}

/// One query of a search run (a line of `--queries`, JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SearchQuery {
    /// The words.
    pub query: String,
    /// Only in this room (the client joins it); else in every room the user may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// A name for the kind of query: latencies are reported per kind.
    #[serde(default = "SearchQuery::default_kind")]
    pub kind: String,
    /// Results asked for (`limit`, ≤ 50).
    #[serde(default = "SearchQuery::default_limit")]
    pub limit: u32,
    /// How many messages hold every word (in `room`, or in all the user's rooms), when known:
    /// the check then wants `min(expect, limit)` results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u64>,
}

impl SearchQuery {
    fn default_kind() -> String {
        "query".into()
    }

    fn default_limit() -> u32 {
        20
    }

    /// Reads queries, one JSON object a line (blank lines and `#` comments skipped).
    pub fn parse_lines(text: &str) -> Result<Vec<Self>> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|err| Error::Config(format!("query on line {}: {err}", i + 1)))
            })
            .collect()
    }
}

impl Default for BenchSpec {
    fn default() -> Self {
        Self {
            scenario: Scenario::Fanout,
            url: "ws://127.0.0.1:8765".into(),
            raw: false,
            ready_line: None,
            rooms: 1,
            receivers: 1000,
            publishers: 1,
            rate: 0.0,
            window: 32,
            size: 100,
            connections: 1000,
            ramp: 0.0,
            seconds: 10.0,
            warmup: 2.0,
            missed: 100,
            stall: 0.0,
            workers: 0,
            sources: Vec::new(),
            server_pid: None,
            label: "nanachat".into(),
            queries: Vec::new(),
            nick: None,
            key: None,
            api_key: None,
        }
    }
}

/// Clients per worker process when not told, and per source address.
const CLIENTS_PER_WORKER: u64 = 15_000;
const CLIENTS_PER_SOURCE: u64 = 20_000;

impl BenchSpec {
    /// Clients in the run, all workers together.
    pub fn total_clients(&self) -> u64 {
        match self.scenario {
            Scenario::Fanout => u64::from(self.rooms) * u64::from(self.receivers + self.publishers),
            Scenario::Resume => u64::from(self.connections) + 1,
            Scenario::React => u64::from(self.receivers),
            Scenario::Echo | Scenario::Connect | Scenario::Search => u64::from(self.connections),
        }
    }

    /// Checks the spec; a bad one is a configuration error (exit code 2).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(why.to_owned()));
        crate::dial::Target::parse(&self.url)?;
        if self.total_clients() == 0 {
            return bad("nothing to run: no clients (--receivers/--connections)");
        }
        if self.scenario == Scenario::Fanout && (self.rooms == 0 || self.publishers == 0) {
            return bad("fanout needs at least one room and one publisher");
        }
        if self.raw && self.rooms > 1 {
            return bad(
                "--raw has no rooms: a plain broadcast server has one audience (--rooms 1)",
            );
        }
        if self.raw
            && matches!(
                self.scenario,
                Scenario::Resume | Scenario::React | Scenario::Search
            )
        {
            return bad("resume, react and search need the nanachat.v1 protocol: drop --raw");
        }
        if self.scenario == Scenario::React && self.rooms != 1 {
            return bad("react has one room: drop --rooms");
        }
        if self.scenario == Scenario::Search {
            if self.queries.is_empty() {
                return bad("search needs queries: --queries FILE");
            }
            if let Some(q) = self.queries.iter().find(|q| !(1..=50).contains(&q.limit)) {
                return bad(&format!("query {:?}: limit must be 1 to 50", q.query));
            }
        }
        if self.api_key.is_some()
            && (self.scenario != Scenario::Fanout || self.raw || self.rate > 0.0)
        {
            return bad(
                "--api-key publishes a fanout run's messages as fast as the API answers: fanout, no --raw, no --rate",
            );
        }
        if !(0.0..=50.0).contains(&self.stall) {
            return bad("--stall is a percent of receivers, 0 to 50");
        }
        if self.window == 0 {
            return bad("--window must be at least 1");
        }
        if self.seconds.is_nan()
            || self.seconds <= 0.0
            || self.warmup < 0.0
            || self.rate < 0.0
            || self.ramp < 0.0
        {
            return bad("--duration must be above 0; --warmup, --rate and --ramp not below 0");
        }
        if self.size > 60_000 {
            return bad("--size must be at most 60000 bytes");
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let rate = if self.rate > 0.0 {
            format!("{} msg/s", self.rate)
        } else {
            format!("max rate (window {})", self.window)
        };
        let mode = if self.raw { "raw" } else { "nanachat.v1" };
        match self.scenario {
            Scenario::Fanout => format!(
                "{mode}, {} room(s) × {} receivers{}, {} publisher(s) per room, {rate} per room, {} B, {} s",
                self.rooms,
                self.receivers,
                if self.stall > 0.0 {
                    format!(" ({}% stop reading)", self.stall)
                } else {
                    String::new()
                },
                self.publishers,
                self.size,
                self.seconds
            ),
            Scenario::Echo => format!(
                "{mode}, {} clients, window {}, {} B, {} s",
                self.connections, self.window, self.size, self.seconds
            ),
            Scenario::Connect => format!(
                "{mode}, {} connections, ramp {}, held {} s",
                self.connections,
                if self.ramp > 0.0 {
                    format!("{}/s", self.ramp)
                } else {
                    "max".into()
                },
                self.seconds
            ),
            Scenario::Resume => format!(
                "{} clients drop, {} messages meanwhile, then {} msg/s live while they resume",
                self.connections, self.missed, self.rate
            ),
            Scenario::React => format!(
                "1 room × {} members, each reacts once to one message, spread over {} s ({} deliveries)",
                self.receivers,
                self.seconds,
                u64::from(self.receivers) * u64::from(self.receivers)
            ),
            Scenario::Search => format!(
                "{} clients, one search at a time each, {} queries in turn, {} s",
                self.connections,
                self.queries.len(),
                self.seconds
            ),
        }
    }
}

/// What a worker is told at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerSpec {
    spec: BenchSpec,
    index: usize,
    workers: usize,
    /// Names this run's nicks and rooms.
    run: String,
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Cmd {
    /// Start; measure from this wall-clock µs.
    Go { from_us: u64 },
    /// Resume: the publisher sends `count` messages.
    Publish { count: u64 },
    /// Resume: everyone reconnects and catches up to `target`.
    Reconnect { target: u64 },
    /// Stop sending; the measured window ends at `to_us`.
    Stop { to_us: u64 },
    /// Wait for this many messages per room, then report and exit.
    Drain { expect: Vec<u64> },
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum Ev {
    Ready {
        connected: u64,
        failed: u64,
        connect: HistData,
        /// The first error while connecting (why a client could not), if any.
        first_error: Option<String>,
    },
    Progress {
        deliveries: u64,
        acked: u64,
        errors: u64,
    },
    Dropped,
    Published {
        last_seq: u64,
    },
    Resumed {
        resume: HistData,
    },
    Stopped {
        acked: Vec<u64>,
    },
    Done(WorkerDone),
    Failed {
        error: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerDone {
    latency: HistData,
    timeline: Vec<(u64, HistData)>,
    deliveries: u64,
    stalled: u64,
    acked: u64,
    sent: u64,
    errors: u64,
    first_error: Option<String>,
    lost: u64,
    duplicated: u64,
    /// React: when the last reaction arrived (wall clock µs; 0: none).
    last_delivery_us: u64,
    /// Search: latency per kind of query.
    kinds: Vec<(String, HistData)>,
    /// Search: what the check of every query found.
    checks: Vec<QueryCheck>,
}

/// The entry point of a worker process (`nanachat bench-worker`).
pub fn worker_main() -> Result<()> {
    worker::main()
}

/// How the run is shown while it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar redrawn in place (a terminal).
    Bar,
    /// A line every few seconds (a log).
    Lines,
    /// Nothing.
    Quiet,
}

impl Progress {
    /// A bar on a terminal, lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::Receiver<(usize, Option<Ev>)>,
    /// Latest progress per worker.
    progress: Vec<(u64, u64, u64)>,
}

impl Workers {
    fn start(spec: &BenchSpec, count: usize, run: &str) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let (tx, events) = mpsc::channel();
        let (mut children, mut stdins) = (Vec::new(), Vec::new());
        for index in 0..count {
            let mut child = Command::new(&exe)
                .arg("bench-worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|err| {
                    Error::Io(std::io::Error::other(format!(
                        "cannot start a bench worker: {err}"
                    )))
                })?;
            let mut stdin = child.stdin.take().expect("piped");
            let ws = WorkerSpec {
                spec: spec.clone(),
                index,
                workers: count,
                run: run.to_owned(),
            };
            writeln!(
                stdin,
                "{}",
                serde_json::to_string(&ws).expect("serializable")
            )?;
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(ev) = serde_json::from_str::<Ev>(&line) {
                        let _ = tx.send((index, Some(ev)));
                    }
                }
                let _ = tx.send((index, None));
            });
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Self {
            children,
            stdins,
            events,
            progress: vec![(0, 0, 0); count],
        })
    }

    fn tell(&mut self, cmd: &Cmd) -> Result<()> {
        let line = serde_json::to_string(cmd).expect("serializable");
        for stdin in &mut self.stdins {
            writeln!(stdin, "{line}")?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// The next event within `wait`, progress taken in on the way: `Some((worker, None))` when
    /// a worker's output ended; a worker's failure is an error.
    fn next_event(&mut self, wait: Duration) -> Result<Option<(usize, Option<Ev>)>> {
        match self.events.recv_timeout(wait) {
            Ok((
                i,
                Some(Ev::Progress {
                    deliveries,
                    acked,
                    errors,
                }),
            )) => {
                self.progress[i] = (deliveries, acked, errors);
                Ok(None)
            }
            Ok((i, Some(Ev::Failed { error }))) => {
                Err(Error::Bench(format!("worker {i} failed: {error}")))
            }
            Ok(event) => Ok(Some(event)),
            Err(_) => Ok(None),
        }
    }

    /// Waits for one event from every worker that `pick` accepts; progress meanwhile.
    fn gather<T>(
        &mut self,
        mut pick: impl FnMut(Ev) -> Option<T>,
        bar: &mut Bar,
    ) -> Result<Vec<T>> {
        let mut got: Vec<Option<T>> = (0..self.children.len()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            match self.next_event(Duration::from_millis(250))? {
                Some((i, Some(ev))) => {
                    if let Some(t) = pick(ev) {
                        got[i] = Some(t);
                    }
                }
                Some((i, None)) if got[i].is_none() => return Err(ended_early(i)),
                _ => {}
            }
            bar.draw(self.totals());
        }
        Ok(got.into_iter().map(|t| t.expect("all gathered")).collect())
    }

    /// Sleeps for `d`, drawing progress.
    fn run_for(&mut self, d: Duration, bar: &mut Bar) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let wait = Duration::from_millis(100).min(end - Instant::now());
            if let Some((i, None)) = self.next_event(wait)? {
                return Err(ended_early(i));
            }
            bar.draw(self.totals());
        }
        Ok(())
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.progress
            .iter()
            .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The progress display.
struct Bar {
    style: Progress,
    phase: &'static str,
    started: Instant,
    length: Duration,
    last_draw: Instant,
    last: (Instant, u64),
    rate: f64,
}

impl Bar {
    fn new(style: Progress) -> Self {
        let now = Instant::now();
        Self {
            style,
            phase: "connecting",
            started: now,
            length: Duration::ZERO,
            last_draw: now,
            last: (now, 0),
            rate: 0.0,
        }
    }

    fn phase(&mut self, phase: &'static str, length: Duration) {
        self.phase = phase;
        self.started = Instant::now();
        self.length = length;
    }

    fn draw(&mut self, (deliveries, acked, errors): (u64, u64, u64)) {
        let every = match self.style {
            Progress::Bar => Duration::from_millis(200),
            Progress::Lines => Duration::from_secs(5),
            Progress::Quiet => return,
        };
        if self.last_draw.elapsed() < every {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt >= 0.5 {
            self.rate = deliveries.saturating_sub(self.last.1) as f64 / dt;
            self.last = (now, deliveries);
        }
        self.last_draw = now;
        let done = if self.length.is_zero() {
            0.0
        } else {
            (self.started.elapsed().as_secs_f64() / self.length.as_secs_f64()).min(1.0)
        };
        let filled = (done * 30.0) as usize;
        let line = format!(
            "{:<10} [{}{}] {:>5.1}s  {} deliveries/s  {} acked  {} errors",
            self.phase,
            "#".repeat(filled),
            "-".repeat(30 - filled),
            self.started.elapsed().as_secs_f64(),
            stats::thousands(self.rate),
            acked,
            errors
        );
        match self.style {
            Progress::Bar => eprint!("\r\x1b[K{line}"),
            _ => eprintln!("{line}"),
        }
    }

    fn clear(&self) {
        if self.style == Progress::Bar {
            eprint!("\r\x1b[K");
        }
    }
}

fn ended_early(worker: usize) -> Error {
    Error::Bench(format!("worker {worker} ended early"))
}

/// The server's resident memory, in KiB, from `/proc`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The store's commits, jobs and µs spent committing so far, from the server's `/metrics` on
/// the port of `url` (`ws://` only): `None` when it has none (not a nanachat server, or TLS).
fn store_counters(url: &str) -> Option<(u64, u64, u64)> {
    use std::io::Read;
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("ws") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).ok()?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some((
        value("nanachat_store_commits_total")?,
        value("nanachat_store_jobs_total")?,
        value("nanachat_store_commit_microseconds_total")?,
    ))
}

/// Loopback sources for a run that needs more ports than one address gives.
fn auto_sources(spec: &BenchSpec) -> Vec<IpAddr> {
    let Ok(target) = crate::dial::Target::parse(&spec.url) else {
        return Vec::new();
    };
    let loopback = target
        .host()
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
        || target.host() == "localhost";
    let total = spec.total_clients();
    if !loopback || total <= CLIENTS_PER_SOURCE {
        return Vec::new();
    }
    (0..total.div_ceil(CLIENTS_PER_SOURCE))
        .map(|i| IpAddr::from([127, 0, 0, 2 + i as u8]))
        .collect()
}

/// Runs a benchmark and returns its report.
pub fn run(mut spec: BenchSpec, progress: Progress) -> Result<Report> {
    spec.validate()?;
    if spec.sources.is_empty() {
        spec.sources = auto_sources(&spec);
    }
    let workers = if spec.workers > 0 {
        spec.workers
    } else {
        spec.total_clients().div_ceil(CLIENTS_PER_WORKER).max(1) as usize
    };
    let run_id = format!("{:x}", now_us() % 0xff_ffff_ffff);
    let rss_before = spec.server_pid.and_then(rss_kib);
    let mut bar = Bar::new(progress);
    let started = Instant::now();
    let mut w = Workers::start(&spec, workers, &run_id)?;
    let ready = w.gather(
        |ev| match ev {
            Ev::Ready {
                connected,
                failed,
                connect,
                first_error,
            } => Some((connected, failed, connect, first_error)),
            _ => None,
        },
        &mut bar,
    )?;
    let setup_secs = started.elapsed().as_secs_f64();
    let mut report = Report {
        scenario: spec.scenario.name().into(),
        url: spec.url.clone(),
        label: spec.label.clone(),
        setup: spec.describe(),
        ..Report::default()
    };
    let mut connect = histogram();
    for (connected, failed, hist, first_error) in &ready {
        report.connected += connected;
        report.connect_failed += failed;
        hist.add_to(&mut connect);
        if report.first_error.is_none() {
            report.first_error.clone_from(first_error);
        }
    }
    if report.connected == 0 {
        // Nothing to measure: say so now rather than wait out the run.
        bar.clear();
        return Err(Error::Bench(format!(
            "no client could connect to {} ({} failed; first: {}) — is the server running \
             there?",
            spec.url,
            report.connect_failed,
            report.first_error.as_deref().unwrap_or("?")
        )));
    }
    report.connect_rate = report.connected as f64 / setup_secs.max(1e-9);
    report.connect_latency = Percentiles::of(&connect);
    // The store's commits from here (everyone connected and joined) to the end of the drain.
    let store_before = if spec.raw {
        None
    } else {
        store_counters(&spec.url)
    };
    let from_us = now_us() + (spec.warmup * 1e6) as u64;
    w.tell(&Cmd::Go { from_us })?;
    let rooms = spec.rooms.max(1) as usize;
    match spec.scenario {
        Scenario::Fanout | Scenario::Echo | Scenario::React | Scenario::Search => {
            bar.phase("warmup", Duration::from_secs_f64(spec.warmup));
            w.run_for(Duration::from_secs_f64(spec.warmup), &mut bar)?;
            bar.phase("measuring", Duration::from_secs_f64(spec.seconds));
            w.run_for(Duration::from_secs_f64(spec.seconds), &mut bar)?;
        }
        Scenario::Connect => {
            bar.phase("holding", Duration::from_secs_f64(spec.seconds));
            w.run_for(Duration::from_secs_f64(spec.seconds), &mut bar)?;
            if let (Some(pid), Some(before)) = (spec.server_pid, rss_before)
                && let Some(after) = rss_kib(pid)
            {
                report.server_rss_mib = Some(after as f64 / 1024.0);
                report.server_rss_per_conn_kib =
                    Some(after.saturating_sub(before) as f64 / report.connected.max(1) as f64);
            }
        }
        Scenario::Resume => {
            bar.phase("dropping", Duration::ZERO);
            w.gather(|ev| matches!(ev, Ev::Dropped).then_some(()), &mut bar)?;
            bar.phase("publishing", Duration::ZERO);
            w.tell(&Cmd::Publish { count: spec.missed })?;
            let last = w.gather(
                |ev| match ev {
                    Ev::Published { last_seq } => Some(last_seq),
                    _ => None,
                },
                &mut bar,
            )?;
            let target = last.into_iter().max().unwrap_or(0);
            bar.phase("resuming", Duration::ZERO);
            let t0 = Instant::now();
            w.tell(&Cmd::Reconnect { target })?;
            let resumed = w.gather(
                |ev| match ev {
                    Ev::Resumed { resume } => Some(resume),
                    _ => None,
                },
                &mut bar,
            )?;
            report.resume_seconds = Some(t0.elapsed().as_secs_f64());
            let mut h = histogram();
            for r in &resumed {
                r.add_to(&mut h);
            }
            report.connect_latency = Percentiles::of(&h);
            // A little live traffic after everyone is back, to check the seam.
            bar.phase("live", Duration::from_secs_f64(spec.seconds));
            w.run_for(Duration::from_secs_f64(spec.seconds), &mut bar)?;
        }
    }
    let to_us = now_us();
    w.tell(&Cmd::Stop { to_us })?;
    bar.phase("draining", Duration::ZERO);
    let stopped = w.gather(
        |ev| match ev {
            Ev::Stopped { acked } => Some(acked),
            _ => None,
        },
        &mut bar,
    )?;
    let mut expect = vec![0u64; rooms];
    for acked in &stopped {
        for (room, n) in acked.iter().enumerate() {
            expect[room] += n;
        }
    }
    w.tell(&Cmd::Drain { expect })?;
    let done = w.gather(
        |ev| match ev {
            Ev::Done(d) => Some(d),
            _ => None,
        },
        &mut bar,
    )?;
    drop(w);
    bar.clear();
    if let (Some(before), Some(after)) = (store_before, store_counters(&spec.url)) {
        report.store_commits = Some(after.0.saturating_sub(before.0));
        report.store_jobs = Some(after.1.saturating_sub(before.1));
        report.store_commit_ms = Some(after.2.saturating_sub(before.2) as f64 / 1000.0);
    }
    let mut latency = histogram();
    let mut timeline = Timeline::default();
    let mut kinds: std::collections::BTreeMap<String, hdrhistogram::Histogram<u64>> =
        Default::default();
    let mut last_delivery_us = 0;
    for d in &done {
        last_delivery_us = last_delivery_us.max(d.last_delivery_us);
        for (kind, h) in &d.kinds {
            h.add_to(kinds.entry(kind.clone()).or_insert_with(histogram));
        }
        report.checks.extend(d.checks.iter().cloned());
        d.latency.add_to(&mut latency);
        for (second, h) in &d.timeline {
            timeline.add(*second, h);
        }
        report.deliveries += d.deliveries;
        report.stalled += d.stalled;
        report.acked += d.acked;
        report.errors += d.errors;
        report.lost += d.lost;
        report.duplicated += d.duplicated;
        if report.first_error.is_none() {
            report.first_error.clone_from(&d.first_error);
        }
    }
    let mut window = to_us.saturating_sub(from_us) as f64 / 1e6;
    if spec.scenario == Scenario::React {
        // A burst: from the first reaction due to the last one received.
        window = last_delivery_us.saturating_sub(from_us) as f64 / 1e6;
    }
    report.kinds = kinds
        .iter()
        .map(|(kind, h)| (kind.clone(), Percentiles::of(h)))
        .collect();
    if spec.scenario != Scenario::Connect {
        report.seconds = window;
        report.deliveries_per_sec = report.deliveries as f64 / window.max(1e-9);
        report.messages_per_sec = match spec.scenario {
            Scenario::Fanout => {
                let reading =
                    (u64::from(spec.receivers) * rooms as u64).saturating_sub(report.stalled);
                report.deliveries_per_sec / reading.max(1) as f64
            }
            Scenario::React => report.acked as f64 / window.max(1e-9),
            _ => report.deliveries_per_sec,
        };
        report.latency = Percentiles::of(&latency);
        report.timeline = timeline.percentiles(window.ceil() as u64);
        report.histogram = HistData::of(&latency).0;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let ok = BenchSpec::default();
        assert!(ok.validate().is_ok());
        let cases = [
            BenchSpec {
                raw: true,
                rooms: 2,
                ..BenchSpec::default()
            },
            BenchSpec {
                receivers: 0,
                publishers: 0,
                ..BenchSpec::default()
            },
            BenchSpec {
                url: "http://x".into(),
                ..BenchSpec::default()
            },
            BenchSpec {
                window: 0,
                ..BenchSpec::default()
            },
        ];
        for spec in cases {
            assert!(matches!(spec.validate(), Err(Error::Config(_))), "{spec:?}");
        }
    }

    #[test]
    fn many_loopback_clients_spread_over_source_addresses() {
        let spec = BenchSpec {
            scenario: Scenario::Connect,
            connections: 50_000,
            ..BenchSpec::default()
        };
        let sources = auto_sources(&spec);
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[0], IpAddr::from([127, 0, 0, 2]));
        let few = BenchSpec {
            connections: 100,
            ..spec
        };
        assert!(auto_sources(&few).is_empty());
    }
}
