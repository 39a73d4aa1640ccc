//! A bench worker process: opens its share of the clients and plays the scenario, told what to
//! do next by its parent (JSON lines on stdin) and answering with events (JSON lines on stdout).

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::stats::{HistData, QueryCheck, histogram, record};
use super::{BenchSpec, Cmd, Ev, Scenario, SearchQuery, WorkerDone, WorkerSpec};
use crate::clock::now_us;
use crate::config::ConnectionConfig;
use crate::connection::{Connection, Incoming, Message};
use crate::dial::{Target, connect_from};
use crate::protocol::{ClientMsg, SUBPROTOCOL, ServerMsg};
use crate::{Error, Result};

/// How long a publisher waits for its last acks, and receivers for their last deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a raw client waits for its `--ready-line`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A receiver waiting for its last messages gives up when none came for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// Connections a worker opens at once during setup.
const OPEN_AT_ONCE: usize = 256;

/// The marker in front of a bench payload: `~nb PUB SEQ MICROS ` then padding.
const MARKER: &str = "~nb ";

/// Where the scenario is, as every client task sees it.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Setup,
    Run,
    /// Resume: receivers drop their connections.
    Drop,
    /// Resume: the publisher sends this many messages while the receivers are away.
    Publish(u64),
    /// Resume: receivers reconnect and catch up to this seq; the publisher goes on live.
    Reconnect(u64),
    Stop,
    /// Receivers wait for this many messages per room.
    Drain(Arc<Vec<u64>>),
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    deliveries: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    resumed: AtomicU64,
    /// Receivers that stopped reading on purpose.
    stalled: AtomicU64,
    /// Publishers done with a `Publish` budget.
    published: AtomicU64,
    /// Publishers and echo clients done after `Stop` (their last acks are in).
    stopped: AtomicU64,
    last_seq: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[derive(Debug)]
struct Recorder {
    latency: Histogram<u64>,
    timeline: std::collections::BTreeMap<u64, Histogram<u64>>,
    connect: Histogram<u64>,
    resume: Histogram<u64>,
    /// Search: latency per kind of query.
    kinds: std::collections::BTreeMap<String, Histogram<u64>>,
    /// Search: the check of every query.
    checks: Vec<QueryCheck>,
    first_error: Option<String>,
}

/// Fan-out flow control for one local publisher: how far every receiver of its room in this
/// worker has got. "As fast as the room drains" means a publisher keeps at most `window`
/// messages that some of them has not received yet (and at most `window` unacked).
#[derive(Debug)]
struct Flow {
    /// Per seq (mod the ring's length): local receivers that have it.
    ring: Vec<std::sync::atomic::AtomicU32>,
    /// Local receivers of the room that are connected.
    members: std::sync::atomic::AtomicU32,
    /// Every seq up to here reached every local receiver.
    done: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Flow {
    fn new(window: u32) -> Self {
        Self {
            ring: (0..(window as usize * 2 + 2))
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            members: std::sync::atomic::AtomicU32::new(0),
            done: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self, seq: u64) -> &std::sync::atomic::AtomicU32 {
        &self.ring[(seq % self.ring.len() as u64) as usize]
    }

    /// A receiver got `seq`.
    fn delivered(&self, seq: u64) {
        let have = self.slot(seq).fetch_add(1, Ordering::AcqRel) + 1;
        if have >= self.members.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// A receiver is gone: nobody waits for it any more.
    fn leave(&self) {
        self.members.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Advances past every seq that all members have (up to `sent`); returns how far.
    fn advance(&self, sent: u64) -> u64 {
        let members = self.members.load(Ordering::Acquire);
        let mut done = self.done.load(Ordering::Acquire);
        while done < sent && self.slot(done + 1).load(Ordering::Acquire) >= members {
            self.slot(done + 1).store(0, Ordering::Release);
            done += 1;
        }
        self.done.store(done, Ordering::Release);
        done
    }
}

struct Shared {
    spec: BenchSpec,
    /// Flow control of this worker's fan-out publishers, by publisher id.
    flows: std::collections::HashMap<u64, Flow>,
    run: String,
    target: Target,
    config: ConnectionConfig,
    phase: watch::Receiver<Phase>,
    counters: Counters,
    /// When a receiver last got something while draining (wall clock µs).
    last_activity_us: AtomicU64,
    /// React: when the last reaction arrived (wall clock µs).
    last_delivery_us: AtomicU64,
    /// The measured window, wall clock µs: [from, to).
    from_us: AtomicU64,
    to_us: AtomicU64,
    acked_per_room: Vec<AtomicU64>,
    recorder: Mutex<Recorder>,
    shutdown: CancellationToken,
}

impl Shared {
    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, why: impl Into<String>) {
        bump(&self.counters.errors);
        let mut r = self.recorder();
        if r.first_error.is_none() {
            r.first_error = Some(why.into());
        }
    }

    /// Latency samples, flushed in batches so that the lock is rare.
    fn flush(&self, samples: &mut Vec<(u64, u64)>) {
        if samples.is_empty() {
            return;
        }
        self.counters
            .deliveries
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let from = get(&self.from_us);
        let mut r = self.recorder();
        for &(sent, took) in samples.iter() {
            record(&mut r.latency, took);
            let second = (sent - from) / 1_000_000;
            record(r.timeline.entry(second).or_insert_with(histogram), took);
        }
        samples.clear();
    }

    fn in_window(&self, sent_us: u64) -> bool {
        sent_us >= get(&self.from_us) && sent_us < get(&self.to_us)
    }

    fn json(&self) -> bool {
        !self.spec.raw
    }
}

/// What one receiving client saw of the messages, by publisher.
#[derive(Debug, Default)]
struct Track {
    /// (publisher, next seq expected).
    next: Vec<(u64, u64)>,
    unique: u64,
    duplicated: u64,
}

impl Track {
    /// Counts one delivery of `seq` from `publisher`: the seqs it settles (itself and any gap
    /// before it), or `None` if it was a repeat or out of order.
    fn see(&mut self, publisher: u64, seq: u64) -> Option<std::ops::RangeInclusive<u64>> {
        let slot = match self.next.iter_mut().position(|(p, _)| *p == publisher) {
            Some(i) => &mut self.next[i].1,
            None => {
                self.next.push((publisher, 1));
                &mut self.next.last_mut().expect("just pushed").1
            }
        };
        if seq < *slot {
            self.duplicated += 1;
            return None;
        }
        let settled = *slot..=seq;
        *slot = seq + 1;
        self.unique += 1;
        Some(settled)
    }
}

/// React: which members' reactions one member got (each sends one): a bit per member, since
/// [`Track`]'s search through its publishers would cost the load generator O(members) a
/// delivery.
#[derive(Debug)]
struct Seen {
    members: u64,
    bits: Vec<u64>,
    unique: u64,
    duplicated: u64,
}

impl Seen {
    fn new(members: u32) -> Self {
        Self {
            members: u64::from(members),
            bits: vec![0; (members as usize).div_ceil(64)],
            unique: 0,
            duplicated: 0,
        }
    }

    /// Counts member `g`'s reaction: true the first time (a member the run does not have
    /// counts as a repeat).
    fn see(&mut self, g: u64) -> bool {
        let Some(word) = self
            .bits
            .get_mut((g / 64) as usize)
            .filter(|_| g < self.members)
        else {
            self.duplicated += 1;
            return false;
        };
        let bit = 1u64 << (g % 64);
        if *word & bit != 0 {
            self.duplicated += 1;
            return false;
        }
        *word |= bit;
        self.unique += 1;
        true
    }
}

/// A bench payload's fields: (publisher, seq, sent at µs).
fn parse_payload(text: &str) -> Option<(u64, u64, u64)> {
    let at = text.find(MARKER)?;
    let mut fields = text[at + MARKER.len()..].splitn(4, ' ');
    let p = fields.next()?.parse().ok()?;
    let s = fields.next()?.parse().ok()?;
    let t = fields.next()?.parse().ok()?;
    Some((p, s, t))
}

/// A bench payload of (at least) `size` bytes.
fn payload(publisher: u64, seq: u64, sent_us: u64, size: usize) -> String {
    let mut text = format!("{MARKER}{publisher} {seq} {sent_us} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// The `"seq":N` of a JSON message frame, without parsing the rest.
fn json_seq(text: &str) -> Option<u64> {
    let at = text.find("\"seq\":")? + 6;
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Runs a worker: reads its spec and commands from stdin, writes events to stdout.
pub(crate) fn main() -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut first = String::new();
    if std::io::stdin().read_line(&mut first)? == 0 {
        return Err(Error::Config("bench worker: no spec on stdin".into()));
    }
    let spec: WorkerSpec = serde_json::from_str(&first)
        .map_err(|err| Error::Config(format!("bench worker: bad spec: {err}")))?;
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Cmd>(&line) {
                Ok(cmd) => {
                    if cmd_tx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(err) => emit(&Ev::Failed {
                    error: format!("bad command: {err}"),
                }),
            }
        }
    });
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .div_ceil(spec.workers)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(work(spec, cmd_rx));
    if let Err(err) = &result {
        emit(&Ev::Failed {
            error: err.to_string(),
        });
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn emit(ev: &Ev) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// A client's role in the scenario.
#[derive(Debug, Clone, Copy)]
enum Role {
    Publisher {
        id: u64,
        room: usize,
    },
    Receiver {
        room: usize,
    },
    /// A receiver that stops reading once the run starts (`--stall`).
    Staller {
        room: usize,
    },
    Echo {
        id: u64,
    },
    /// React: a member of the room, which reacts once and receives every reaction.
    Member {
        g: u64,
    },
    /// Search: sends queries one at a time.
    Searcher {
        g: u64,
    },
    Idle,
}

/// The ids of a fan-out room's publishers.
fn room_publishers(spec: &BenchSpec, room: usize) -> std::ops::Range<u64> {
    if spec.scenario != Scenario::Fanout {
        return 0..0;
    }
    let first = room as u64 * u64::from(spec.publishers + spec.receivers);
    first..first + u64::from(spec.publishers)
}

fn role(spec: &BenchSpec, g: u64) -> Role {
    match spec.scenario {
        Scenario::Fanout => {
            let per_room = u64::from(spec.publishers + spec.receivers);
            let room = (g / per_room) as usize;
            let index = g % per_room;
            if index < u64::from(spec.publishers) {
                Role::Publisher { id: g, room }
            } else if spec.stall > 0.0
                && (index - u64::from(spec.publishers))
                    .is_multiple_of((100.0 / spec.stall).round().max(1.0) as u64)
            {
                Role::Staller { room }
            } else {
                Role::Receiver { room }
            }
        }
        Scenario::Resume if g == 0 => Role::Publisher { id: 0, room: 0 },
        Scenario::Resume => Role::Receiver { room: 0 },
        Scenario::Echo => Role::Echo { id: g },
        Scenario::React => Role::Member { g },
        Scenario::Search => Role::Searcher { g },
        Scenario::Connect => Role::Idle,
    }
}

async fn work(ws: WorkerSpec, mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>) -> Result<()> {
    let spec = ws.spec.clone();
    let target = Target::parse(&spec.url)?;
    let config = ConnectionConfig {
        read_buffer_bytes: 4096,
        ping_interval: Duration::ZERO,
        idle_timeout: Duration::from_secs(3600),
        outbox_bytes: ((spec.window as usize + 64) * 1024).max(1 << 20),
        ..ConnectionConfig::default()
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let rooms = spec.rooms.max(1) as usize;
    // Open this worker's clients: every `workers`-th one, from its source address.
    let mine: Vec<u64> = (0..spec.total_clients())
        .filter(|g| g % ws.workers as u64 == ws.index as u64)
        .collect();
    let flows = match spec.scenario {
        Scenario::Fanout => mine
            .iter()
            .filter_map(|g| match role(&spec, *g) {
                Role::Publisher { id, .. } => Some((id, Flow::new(spec.window))),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    };
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        flows,
        run: ws.run.clone(),
        target,
        config,
        phase: phase_rx,
        counters: Counters::default(),
        from_us: AtomicU64::new(0),
        last_activity_us: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        to_us: AtomicU64::new(u64::MAX),
        acked_per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        recorder: Mutex::new(Recorder {
            latency: histogram(),
            timeline: Default::default(),
            connect: histogram(),
            resume: histogram(),
            kinds: Default::default(),
            checks: Vec::new(),
            first_error: None,
        }),
        shutdown: CancellationToken::new(),
    });
    let gate = Arc::new(Semaphore::new(OPEN_AT_ONCE));
    let ramp = (spec.ramp > 0.0).then(|| spec.ramp / ws.workers as f64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(mine.len());
    let receivers = mine
        .iter()
        .filter(|g| matches!(role(&spec, **g), Role::Receiver { .. }))
        .count() as u64;
    let senders = mine
        .iter()
        .filter(|g| {
            matches!(
                role(&spec, **g),
                Role::Publisher { .. }
                    | Role::Echo { .. }
                    | Role::Member { .. }
                    | Role::Searcher { .. }
            )
        })
        .count() as u64;
    for (i, &g) in mine.iter().enumerate() {
        if let Some(rate) = ramp {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        let source =
            (!spec.sources.is_empty()).then(|| spec.sources[(g as usize) % spec.sources.len()]);
        let sh = shared.clone();
        tasks.push(tokio::spawn(
            async move { client(sh, g, source, permit).await },
        ));
    }
    // Setup is over when every client is connected or has failed.
    let total = mine.len() as u64;
    let c = &shared.counters;
    wait_until(&shared, || get(&c.connected) + get(&c.failed) >= total).await;
    let connect = HistData::of(&shared.recorder().connect);
    emit(&Ev::Ready {
        connected: get(&c.connected),
        failed: get(&c.failed),
        connect,
        first_error: shared.recorder().first_error.clone(),
    });
    let progress = tokio::spawn(report_progress(shared.clone()));
    let mut drained = false;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Go { from_us } => {
                shared.from_us.store(from_us, Ordering::Relaxed);
                let _ = phase_tx.send(if spec.scenario == Scenario::Resume {
                    Phase::Drop
                } else {
                    Phase::Run
                });
                if spec.scenario == Scenario::Resume {
                    wait_until(&shared, || get(&c.dropped) >= receivers).await;
                    emit(&Ev::Dropped);
                }
            }
            Cmd::Publish { count } => {
                let _ = phase_tx.send(Phase::Publish(count));
                wait_until(&shared, || get(&c.published) >= senders).await;
                emit(&Ev::Published {
                    last_seq: get(&c.last_seq),
                });
            }
            Cmd::Reconnect { target } => {
                let _ = phase_tx.send(Phase::Reconnect(target));
                wait_until(&shared, || get(&c.resumed) + get(&c.failed) >= receivers).await;
                emit(&Ev::Resumed {
                    resume: HistData::of(&shared.recorder().resume),
                });
            }
            Cmd::Stop { to_us } => {
                shared.to_us.store(to_us, Ordering::Relaxed);
                let _ = phase_tx.send(Phase::Stop);
                // Publishers wait for their last acks, at most DRAIN_TIMEOUT.
                wait_until(&shared, || get(&c.stopped) >= senders).await;
                emit(&Ev::Stopped {
                    acked: shared
                        .acked_per_room
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .collect(),
                });
            }
            Cmd::Drain { expect } => {
                shared.last_activity_us.store(now_us(), Ordering::Relaxed);
                let _ = phase_tx.send(Phase::Drain(Arc::new(expect)));
                drained = true;
                break;
            }
        }
    }
    if !drained {
        // The parent is gone (its end of our stdin closed; it said why, if anything went
        // wrong): so are we, quietly.
        progress.abort();
        shared.shutdown.cancel();
        return Ok(());
    }
    let (mut lost, mut duplicated) = (0, 0);
    for task in tasks {
        if let Ok(Some(track)) = task.await {
            lost += track.0;
            duplicated += track.1;
        }
    }
    progress.abort();
    let r = shared.recorder();
    emit(&Ev::Done(WorkerDone {
        latency: HistData::of(&r.latency),
        timeline: r
            .timeline
            .iter()
            .map(|(s, h)| (*s, HistData::of(h)))
            .collect(),
        deliveries: get(&c.deliveries),
        stalled: get(&c.stalled),
        acked: get(&c.acked),
        sent: get(&c.sent),
        errors: get(&c.errors),
        first_error: r.first_error.clone(),
        lost,
        duplicated,
        last_delivery_us: get(&shared.last_delivery_us),
        kinds: r
            .kinds
            .iter()
            .map(|(k, h)| (k.clone(), HistData::of(h)))
            .collect(),
        checks: r.checks.clone(),
    }));
    shared.shutdown.cancel();
    Ok(())
}

/// Waits until `done` holds, checking every few milliseconds; gives up after a minute with an
/// error counted (the parent then reports what it has).
async fn wait_until(shared: &Shared, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() >= deadline {
            shared.error("a phase did not finish within a minute");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn report_progress(shared: Arc<Shared>) {
    let c = &shared.counters;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        emit(&Ev::Progress {
            deliveries: get(&c.deliveries),
            acked: get(&c.acked),
            errors: get(&c.errors),
        });
    }
}

/// Opens a connection for client `g`: handshake, and in JSON mode hello (and joins: each
/// room with its `since`).
async fn open(
    sh: &Shared,
    g: u64,
    source: Option<IpAddr>,
    joins: &[(String, Option<u64>)],
) -> Result<Connection> {
    let sub = sh.json().then_some(SUBPROTOCOL);
    let mut conn = connect_from(&sh.target, &sh.config, sh.shutdown.clone(), sub, source).await?;
    if !sh.json() {
        if let Some(prefix) = &sh.spec.ready_line {
            tokio::time::timeout(READY_TIMEOUT, wait_for_line(&mut conn, prefix))
                .await
                .map_err(|_| {
                    Error::Bench(format!("no line starting with {prefix:?} came in 10 s"))
                })??;
        }
        return Ok(conn);
    }
    let (nick, key) = match &sh.spec.nick {
        Some(nick) => (nick.clone(), sh.spec.key.clone()),
        None => (format!("b{}-{g}", sh.run), Some(sh.run.clone())),
    };
    let hello = ClientMsg::Hello {
        nick,
        key,
        token: None,
    };
    say(&mut conn, &hello).await?;
    expect(&mut conn, |m| matches!(m, ServerMsg::Welcome { .. })).await?;
    for (room, since) in joins {
        let join = ClientMsg::Join {
            room: room.clone(),
            since: *since,
            epoch: None,
        };
        say(&mut conn, &join).await?;
        expect(&mut conn, |m| matches!(m, ServerMsg::Joined { .. })).await?;
    }
    Ok(conn)
}

/// Raw mode: reads until a text line starting with `prefix` (the server's word that this
/// client is in its audience now).
async fn wait_for_line(conn: &mut Connection, prefix: &str) -> Result<()> {
    loop {
        match conn.read_msg().await? {
            None => {
                return Err(Error::Bench(format!(
                    "the server closed the connection before a line starting with {prefix:?}"
                )));
            }
            Some(Incoming::Text(text)) if text.as_str().starts_with(prefix) => return Ok(()),
            Some(_) => {}
        }
    }
}

fn room_name(run: &str, room: usize) -> String {
    format!("bench-{run}-{room}")
}

async fn say(conn: &mut Connection, msg: &ClientMsg) -> Result<()> {
    let text = serde_json::to_string(msg)?;
    conn.send(Message::Text(text.into())).await
}

/// Reads until a server message that `want` accepts; an error frame fails.
async fn expect(conn: &mut Connection, want: impl Fn(&ServerMsg) -> bool) -> Result<()> {
    loop {
        match conn.read_msg().await? {
            None => {
                let why = match conn.peer_close() {
                    Some(frame) => format!("{} {}", frame.code, frame.reason),
                    None => "without a close frame".into(),
                };
                return Err(Error::Bench(format!(
                    "the server closed the connection: {why}"
                )));
            }
            Some(Incoming::Text(text)) => match serde_json::from_str::<ServerMsg>(text.as_str()) {
                Ok(ServerMsg::Error { code, message, .. }) => {
                    return Err(Error::Refused(format!("{}: {message}", code.as_str())));
                }
                Ok(m) if want(&m) => return Ok(()),
                _ => {}
            },
            Some(Incoming::Binary(_)) => {}
        }
    }
}

/// One client, from connect to drain: returns (lost, duplicated) for a receiver or echo client.
async fn client(
    sh: Arc<Shared>,
    g: u64,
    source: Option<IpAddr>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<(u64, u64)> {
    let role = role(&sh.spec, g);
    let joins = match role {
        Role::Publisher { room, .. } | Role::Receiver { room } | Role::Staller { room } => {
            vec![(room_name(&sh.run, room), None)]
        }
        Role::Member { .. } => vec![(room_name(&sh.run, 0), None)],
        Role::Searcher { .. } => {
            let mut rooms: Vec<_> = sh
                .spec
                .queries
                .iter()
                .filter_map(|q| q.room.clone())
                .collect();
            rooms.sort();
            rooms.dedup();
            rooms.into_iter().map(|r| (r, None)).collect()
        }
        _ => Vec::new(),
    };
    let t0 = Instant::now();
    let opened = match open(&sh, g, source, &joins).await {
        // Before the run: the message to react to, the check of every query.
        Ok(mut conn) => match role {
            Role::Member { g: 0 } => say_target(&sh, &mut conn).await.map(|()| conn),
            Role::Searcher { g: 0 } => check_queries(&sh, &mut conn).await.map(|()| conn),
            _ => Ok(conn),
        },
        Err(err) => Err(err),
    };
    let conn = match opened {
        Ok(conn) => conn,
        Err(err) => {
            sh.error(format!("connect: {err}"));
            bump(&sh.counters.failed);
            sender_gone(&sh, role);
            return None;
        }
    };
    record(&mut sh.recorder().connect, t0.elapsed().as_micros() as u64);
    bump(&sh.counters.connected);
    drop(permit);
    let outcome = match role {
        Role::Publisher { id, room } if sh.spec.api_key.is_some() => {
            // A member only to have joined like the others: its messages go over HTTP.
            close(conn).await;
            http_publisher(&sh, id, room).await.map(|()| None)
        }
        Role::Publisher { id, room } => publisher(&sh, conn, id, room).await.map(|()| None),
        Role::Receiver { room } => Ok(Some(receiver(&sh, conn, g, source, room).await)),
        Role::Staller { .. } => {
            bump(&sh.counters.stalled);
            stall(&sh, conn).await;
            Ok(None)
        }
        Role::Echo { id } => echo(&sh, conn, id).await.map(Some),
        Role::Member { g } => Ok(Some(member(&sh, conn, g).await)),
        Role::Searcher { g } => searcher(&sh, conn, g).await.map(|()| None),
        Role::Idle => idle(&sh, conn).await.map(|()| None),
    };
    match outcome {
        Ok(result) => result,
        Err(err) => {
            sh.error(err.to_string());
            sender_gone(&sh, role);
            None
        }
    }
}

/// A publisher or echo client that failed counts as done, so that nobody waits for it.
fn sender_gone(sh: &Shared, role: Role) {
    if matches!(
        role,
        Role::Publisher { .. } | Role::Echo { .. } | Role::Member { .. } | Role::Searcher { .. }
    ) {
        bump(&sh.counters.published);
        bump(&sh.counters.stopped);
    }
}

async fn close(conn: Connection) {
    conn.finish(&Ok(())).await;
}

/// Reads until the run starts, then nothing at all until the drain: a client that stopped
/// reading. Whatever the server does with it (queue, or close it as a slow consumer) is fine.
async fn stall(sh: &Shared, mut conn: Connection) {
    let mut phase = sh.phase.clone();
    while matches!(*phase.borrow(), Phase::Setup) {
        tokio::select! {
            msg = conn.read_msg() => if !matches!(msg, Ok(Some(_))) { return },
            changed = phase.changed() => if changed.is_err() { return },
        }
    }
    loop {
        if matches!(*phase.borrow(), Phase::Drain(_)) || phase.changed().await.is_err() {
            break;
        }
    }
    // Gone without reading the rest.
    conn.finish(&Err(Error::Closed)).await;
}

/// Holds the connection until the run stops; a drop before then is an error.
async fn idle(sh: &Shared, mut conn: Connection) -> Result<()> {
    let mut phase = sh.phase.clone();
    loop {
        tokio::select! {
            msg = conn.read_msg() => if msg?.is_none() {
                return Err(Error::Bench("the server closed the connection".into()));
            },
            _ = phase.changed() => if matches!(*phase.borrow(), Phase::Drain(_)) {
                close(conn).await;
                return Ok(());
            },
        }
    }
}

/// Sends at the scenario's pace and counts acks (or, in raw mode, its own messages coming back).
async fn publisher(sh: &Shared, mut conn: Connection, id: u64, room: usize) -> Result<()> {
    let mut phase = sh.phase.clone();
    let room_name = room_name(&sh.run, room);
    let spec = &sh.spec;
    let (mut seq, mut in_flight) = (0u64, 0u64);
    // Fixed rate: this publisher's share of the room's rate; max rate: a window of acks.
    let mut budget: Option<u64> = None;
    let mut live = false;
    let mut stopping: Option<Instant> = None;
    let mut ticker: Option<(tokio::time::Interval, u64, Duration)> = None;
    let per_pub_rate = spec.rate / f64::from(spec.publishers.max(1));
    let flow = sh.flows.get(&id);
    let drained = || async {
        match flow {
            Some(f) => f.wake.notified().await,
            None => std::future::pending().await,
        }
    };
    loop {
        // Send what the window allows: unacked, and not yet at every local receiver.
        let undelivered = flow.map_or(0, |f| seq - f.advance(seq));
        let window_open = stopping.is_none()
            && (live || budget.is_some_and(|b| b > 0))
            && in_flight < u64::from(spec.window)
            && undelivered < u64::from(spec.window);
        if window_open && ticker.is_none() {
            seq += 1;
            in_flight += 1;
            if let Some(b) = budget.as_mut() {
                *b -= 1;
            }
            send_payload(sh, &mut conn, id, seq, now_us(), &room_name).await?;
            continue;
        }
        if budget == Some(0) && in_flight == 0 {
            budget = None;
            bump(&sh.counters.published);
        }
        if let Some(since) = stopping
            && (in_flight == 0 || since.elapsed() > DRAIN_TIMEOUT)
        {
            if in_flight > 0 {
                sh.error(format!("{in_flight} messages never acked"));
            }
            bump(&sh.counters.stopped);
            // Stay connected (a raw publisher's echo is its ack) until the drain is over.
            return linger(sh, conn, &mut phase).await;
        }
        tokio::select! {
            msg = conn.read_msg() => match msg? {
                None => return Err(Error::Bench("the server closed the connection".into())),
                Some(Incoming::Text(text)) => {
                    let text = text.as_str();
                    if sh.json() {
                        if text.starts_with(r#"{"type":"ack""#) {
                            in_flight = in_flight.saturating_sub(1);
                            bump(&sh.counters.acked);
                            sh.acked_per_room[room].fetch_add(1, Ordering::Relaxed);
                            if let Some(s) = json_seq(text) {
                                sh.counters.last_seq.fetch_max(s, Ordering::Relaxed);
                            }
                        } else if text.starts_with(r#"{"type":"error""#) {
                            in_flight = in_flight.saturating_sub(1);
                            sh.error(text.to_owned());
                        }
                    } else if let Some((p, _, _)) = parse_payload(text)
                        && p == id
                    {
                        in_flight = in_flight.saturating_sub(1);
                        bump(&sh.counters.acked);
                        sh.acked_per_room[room].fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Incoming::Binary(_)) => {}
            },
            () = drained() => {}
            _ = async { ticker.as_mut().expect("checked").0.tick().await }, if ticker.is_some() && stopping.is_none() => {
                let (_, base, period) = ticker.as_ref().expect("checked");
                seq += 1;
                in_flight += 1;
                // The time it was due, not when it went: a late send shows as latency.
                let due = base + (period.as_micros() as u64) * (seq - 1);
                send_payload(sh, &mut conn, id, seq, due, &room_name).await?;
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = phase.borrow().clone();
                match now {
                    Phase::Run if spec.scenario == Scenario::Fanout && per_pub_rate <= 0.0 => live = true,
                    Phase::Run | Phase::Reconnect(_) if per_pub_rate > 0.0 => {
                        let period = Duration::from_secs_f64(1.0 / per_pub_rate);
                        let mut t = tokio::time::interval(period);
                        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                        ticker = Some((t, now_us() - (period.as_micros() as u64) * seq, period));
                    }
                    Phase::Publish(count) => budget = Some(count),
                    Phase::Stop => stopping = Some(Instant::now()),
                    Phase::Drain(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

/// A publisher through the HTTP API: one `POST` at a time on one kept-alive connection,
/// each answered once the message is stored; its answer is the ack.
async fn http_publisher(sh: &Shared, id: u64, room: usize) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let target = crate::dial::Target::parse(&sh.spec.url)?;
    let tcp = tokio::net::TcpStream::connect((target.host(), target.port())).await?;
    tcp.set_nodelay(true)?;
    let mut http = BufReader::new(tcp);
    let key = sh.spec.api_key.as_deref().unwrap_or_default();
    let path = format!("/api/v1/rooms/{}/messages", room_name(&sh.run, room));
    let mut phase = sh.phase.clone();
    let (mut seq, mut live) = (0u64, false);
    let flow = sh.flows.get(&id);
    loop {
        match phase.borrow_and_update().clone() {
            Phase::Run => live = true,
            Phase::Stop => {
                bump(&sh.counters.stopped);
                return Ok(());
            }
            Phase::Drain(_) => return Ok(()),
            _ => {}
        }
        let undelivered = flow.map_or(0, |f| seq - f.advance(seq));
        if !live || undelivered >= u64::from(sh.spec.window) {
            tokio::select! {
                changed = phase.changed() => if changed.is_err() { return Ok(()) },
                () = async { match flow { Some(f) => f.wake.notified().await, None => std::future::pending().await } } => {}
            }
            continue;
        }
        seq += 1;
        let body = serde_json::json!({
            "from": "~bench",
            "text": payload(id, seq, now_us(), sh.spec.size),
            "cid": format!("{id}-{seq}"),
        })
        .to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            target.host(),
            body.len()
        );
        bump(&sh.counters.sent);
        http.get_mut().write_all(request.as_bytes()).await?;
        let (mut status, mut length, mut line) = (0u16, 0usize, String::new());
        loop {
            line.clear();
            if http.read_line(&mut line).await? == 0 {
                return Err(Error::Bench("the server closed the HTTP connection".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0; length];
        http.read_exact(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        if status == 200 {
            bump(&sh.counters.acked);
            sh.acked_per_room[room].fetch_add(1, Ordering::Relaxed);
            if let Some(s) = json_seq(&answer) {
                sh.counters.last_seq.fetch_max(s, Ordering::Relaxed);
            }
        } else {
            sh.error(format!("HTTP {status}: {answer}"));
        }
    }
}

async fn send_payload(
    sh: &Shared,
    conn: &mut Connection,
    id: u64,
    seq: u64,
    sent_us: u64,
    room: &str,
) -> Result<()> {
    let text = payload(id, seq, sent_us, sh.spec.size);
    bump(&sh.counters.sent);
    if sh.json() {
        let msg = ClientMsg::Say {
            room: room.to_owned(),
            text,
            cid: format!("{id}-{seq}"),
            reply_to: None,
        };
        say(conn, &msg).await
    } else {
        conn.send(Message::Text(text.into())).await
    }
}

/// Keeps reading (and dropping) until the drain phase, then closes.
async fn linger(
    sh: &Shared,
    mut conn: Connection,
    phase: &mut watch::Receiver<Phase>,
) -> Result<()> {
    let _ = sh;
    loop {
        if matches!(*phase.borrow(), Phase::Drain(_)) {
            close(conn).await;
            return Ok(());
        }
        tokio::select! {
            msg = conn.read_msg() => if msg?.is_none() { return Ok(()) },
            _ = phase.changed() => {}
        }
    }
}

/// What woke a receiver.
enum Event {
    Msg(Result<Option<Incoming>>),
    Phase(bool),
    Deadline,
}

/// Counts and times every delivery; in the resume scenario drops, reconnects and catches up.
async fn receiver(
    sh: &Shared,
    conn: Connection,
    g: u64,
    source: Option<IpAddr>,
    room: usize,
) -> (u64, u64) {
    let flows: Vec<&Flow> = room_publishers(&sh.spec, room)
        .filter_map(|p| sh.flows.get(&p))
        .collect();
    for f in &flows {
        f.members.fetch_add(1, Ordering::AcqRel);
    }
    let mut in_flows = true;
    let leave_flows = |in_flows: &mut bool| {
        if std::mem::take(in_flows) {
            for f in &flows {
                f.leave();
            }
        }
    };
    let mut phase = sh.phase.clone();
    let mut track = Track::default();
    let mut samples = Vec::with_capacity(512);
    let mut last_seq = 0u64;
    let mut conn = Some(conn);
    // Messages expected, once draining; waited for until `drain_end`, or until nothing
    // arrived at any receiver of this worker for DRAIN_QUIET.
    let mut drain: Option<u64> = None;
    let mut drain_end = Instant::now();
    // Resume: (reconnected at, seq to reach)
    let mut catching_up: Option<(Instant, u64)> = None;
    loop {
        if let Some(want) = drain
            && (track.unique >= want
                || conn.is_none()
                || Instant::now() >= drain_end
                || now_us().saturating_sub(get(&sh.last_activity_us))
                    > DRAIN_QUIET.as_micros() as u64)
        {
            sh.flush(&mut samples);
            leave_flows(&mut in_flows);
            if let Some(c) = conn.take() {
                close(c).await;
            }
            return (want.saturating_sub(track.unique), track.duplicated);
        }
        let event = match conn.as_mut() {
            None => Event::Phase(phase.changed().await.is_ok()),
            Some(c) => {
                let deadline = async {
                    match drain {
                        Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = c.read_msg() => Event::Msg(msg),
                    ok = phase.changed() => Event::Phase(ok.is_ok()),
                    () = deadline => Event::Deadline,
                }
            }
        };
        match event {
            Event::Msg(Err(_) | Ok(None)) => {
                // Lost the connection: what it did not get counts as lost at the drain.
                sh.error(why_ended(conn.as_ref()));
                leave_flows(&mut in_flows);
                if let Some(c) = conn.take() {
                    c.finish(&Err(Error::Closed)).await;
                }
            }
            Event::Msg(Ok(Some(Incoming::Text(text)))) => {
                let text = text.as_str();
                let Some((p, s, t)) = parse_payload(text) else {
                    continue;
                };
                let settled = track.see(p, s);
                let fresh = settled.is_some();
                if let (Some(seqs), Some(f)) = (settled, sh.flows.get(&p)) {
                    // A gap is settled too: nobody waits for what was lost.
                    seqs.for_each(|s| f.delivered(s));
                }
                if drain.is_some() {
                    sh.last_activity_us.store(now_us(), Ordering::Relaxed);
                }
                if fresh && sh.in_window(t) {
                    let now = now_us();
                    samples.push((t, now.saturating_sub(t)));
                    if samples.len() >= 512 || now > samples[0].0 + samples[0].1 + 1_000_000 {
                        sh.flush(&mut samples);
                    }
                }
                if sh.spec.scenario == Scenario::Resume
                    && let Some(seq) = json_seq(text)
                {
                    last_seq = last_seq.max(seq);
                    if let Some((t0, target)) = catching_up
                        && last_seq >= target
                    {
                        record(&mut sh.recorder().resume, t0.elapsed().as_micros() as u64);
                        bump(&sh.counters.resumed);
                        catching_up = None;
                    }
                }
            }
            Event::Msg(Ok(Some(Incoming::Binary(_)))) | Event::Deadline => {}
            Event::Phase(false) => return (0, 0),
            Event::Phase(true) => {
                let now = phase.borrow().clone();
                match now {
                    Phase::Drop => {
                        sh.flush(&mut samples);
                        leave_flows(&mut in_flows);
                        if let Some(c) = conn.take() {
                            // Gone without a close frame, as when a network drops.
                            c.finish(&Err(Error::Closed)).await;
                        }
                        bump(&sh.counters.dropped);
                    }
                    Phase::Reconnect(target) => {
                        let t0 = Instant::now();
                        let joins = [(room_name(&sh.run, room), Some(last_seq))];
                        match open(sh, g, source, &joins).await {
                            Ok(c) => conn = Some(c),
                            Err(err) => {
                                bump(&sh.counters.failed);
                                sh.error(format!("reconnect: {err}"));
                                continue;
                            }
                        }
                        if last_seq >= target {
                            record(&mut sh.recorder().resume, t0.elapsed().as_micros() as u64);
                            bump(&sh.counters.resumed);
                        } else {
                            catching_up = Some((t0, target));
                        }
                    }
                    Phase::Drain(expect) => {
                        drain = Some(expect[room]);
                        drain_end = Instant::now() + DRAIN_TIMEOUT;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// React: the message every member reacts to, said by member 0 before the run: the room's
/// first, so seq 1 (the room is this run's own).
const TARGET_SEQ: u64 = 1;

/// React: the reactions the members give, in turn (at most 20 different ones a message).
const EMOJI: [&str; 8] = ["👍", "❤️", "😂", "🎉", "😮", "😢", "🔥", "👀"];

/// React: member 0 says the message the others will react to, and waits for its ack.
async fn say_target(sh: &Shared, conn: &mut Connection) -> Result<()> {
    let msg = ClientMsg::Say {
        room: room_name(&sh.run, 0),
        text: "react to this".into(),
        cid: "target".into(),
        reply_to: None,
    };
    say(conn, &msg).await?;
    let seq = std::sync::atomic::AtomicU64::new(0);
    expect(conn, |m| match m {
        ServerMsg::Ack { seq: s, .. } => {
            seq.store(*s, Ordering::Relaxed);
            true
        }
        _ => false,
    })
    .await?;
    match get(&seq) {
        TARGET_SEQ => Ok(()),
        other => Err(Error::Bench(format!(
            "the message to react to got seq {other}, not {TARGET_SEQ}: the room was not new"
        ))),
    }
}

/// React: when member `g`'s reaction is due (wall clock µs): the members in turn, evenly
/// over the run's seconds from its start.
fn react_due(sh: &Shared, g: u64) -> u64 {
    let spread = (sh.spec.seconds * 1e6) as u64;
    get(&sh.from_us) + g * spread / u64::from(sh.spec.receivers.max(1))
}

/// React: the member a `react` event is from (its nick is `b{run}-{g}`), without parsing the
/// rest of the frame.
fn react_from(text: &str, run: &str) -> Option<u64> {
    if !text.starts_with(r#"{"type":"react""#) {
        return None;
    }
    let at = text.find(r#""from":""#)? + 8;
    let nick = &text[at..];
    let nick = &nick[..nick.find('"')?];
    nick.strip_prefix('b')?
        .strip_prefix(run)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// React: one member. Sends its reaction when due and counts the ack (a refusal is an error);
/// counts and times every member's reaction as it arrives (from when it was due, so a late
/// send shows as latency); at the drain, what did not come is lost.
async fn member(sh: &Shared, conn: Connection, g: u64) -> (u64, u64) {
    let mut phase = sh.phase.clone();
    let mut conn = Some(conn);
    let mut track = Seen::new(sh.spec.receivers);
    let mut samples = Vec::with_capacity(512);
    let (mut due, mut sent, mut answered) = (None::<u64>, false, false);
    // When to send (once the run starts), then to look at the drain: one timer, reset.
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut timer_armed = false;
    let mut drain: Option<u64> = None;
    let mut drain_end = Instant::now();
    let answer = |answered: &mut bool| {
        if !std::mem::replace(answered, true) {
            bump(&sh.counters.stopped);
        }
    };
    loop {
        if let Some(want) = drain
            && (track.unique >= want
                || conn.is_none()
                || Instant::now() >= drain_end
                || now_us().saturating_sub(get(&sh.last_activity_us))
                    > DRAIN_QUIET.as_micros() as u64)
        {
            sh.flush(&mut samples);
            if let Some(c) = conn.take() {
                close(c).await;
            }
            return (want.saturating_sub(track.unique), track.duplicated);
        }
        let Some(c) = conn.as_mut() else {
            // Lost the connection: wait for the drain to count what it missed.
            if phase.changed().await.is_err() {
                return (0, 0);
            }
            if let Phase::Drain(expect) = &*phase.borrow() {
                drain = Some(expect[0]);
            }
            continue;
        };
        let event = tokio::select! {
            msg = c.read_msg() => Event::Msg(msg),
            changed = phase.changed() => Event::Phase(changed.is_ok()),
            () = timer.as_mut(), if timer_armed => Event::Deadline,
        };
        match event {
            Event::Msg(Err(_) | Ok(None)) => {
                sh.error(why_ended(Some(c)));
                answer(&mut answered);
                if let Some(c) = conn.take() {
                    c.finish(&Err(Error::Closed)).await;
                }
            }
            Event::Msg(Ok(Some(Incoming::Text(text)))) => {
                let text = text.as_str();
                if let Some(from) = react_from(text, &sh.run) {
                    if drain.is_some() {
                        sh.last_activity_us.store(now_us(), Ordering::Relaxed);
                    }
                    if track.see(from) {
                        let now = now_us();
                        sh.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                        let at = react_due(sh, from);
                        samples.push((at, now.saturating_sub(at)));
                        if samples.len() >= 512 {
                            sh.flush(&mut samples);
                        }
                    }
                } else if text.starts_with(r#"{"type":"ack""#) && sent {
                    if !answered {
                        bump(&sh.counters.acked);
                        sh.acked_per_room[0].fetch_add(1, Ordering::Relaxed);
                    }
                    answer(&mut answered);
                } else if text.starts_with(r#"{"type":"error""#) {
                    sh.error(format!("refused: {text}"));
                    if sent {
                        answer(&mut answered);
                    }
                }
            }
            Event::Msg(Ok(Some(Incoming::Binary(_)))) => {}
            Event::Deadline => {
                // Next: a look at the drain's end now and then, or nothing.
                timer_armed = drain.is_some();
                if timer_armed {
                    timer
                        .as_mut()
                        .reset(Instant::now() + Duration::from_millis(200));
                }
                if due.is_some() && !sent {
                    sent = true;
                    bump(&sh.counters.sent);
                    let react = ClientMsg::React {
                        room: room_name(&sh.run, 0),
                        seq: TARGET_SEQ,
                        emoji: EMOJI[g as usize % EMOJI.len()].into(),
                        on: true,
                        cid: format!("r{g}"),
                    };
                    if let Err(err) = say(c, &react).await {
                        sh.error(format!("send: {err}"));
                        answer(&mut answered);
                    }
                }
            }
            Event::Phase(false) => return (0, 0),
            Event::Phase(true) => {
                let now = phase.borrow().clone();
                match now {
                    Phase::Run => {
                        let at = react_due(sh, g);
                        due = Some(at);
                        let wait = Duration::from_micros(at.saturating_sub(now_us()));
                        timer.as_mut().reset(Instant::now() + wait);
                        timer_armed = true;
                    }
                    Phase::Drain(expect) => {
                        sh.flush(&mut samples);
                        drain = Some(expect[0]);
                        drain_end = Instant::now() + DRAIN_TIMEOUT;
                        if !timer_armed {
                            timer
                                .as_mut()
                                .reset(Instant::now() + Duration::from_millis(200));
                            timer_armed = true;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Search: what is wrong with a reply to `q`, if anything: a result without every word of the
/// query or from another room, or not as many results as expected.
fn judge_results(q: &SearchQuery, results: &[crate::protocol::ChatMessage]) -> Option<String> {
    let words = crate::store::search_words(&q.query);
    for r in results {
        if q.room.as_ref().is_some_and(|room| *room != r.room) {
            return Some(format!("a result from {} (#{})", r.room, r.seq));
        }
        // Every word of the text (`search_words` takes a query's first 8 only).
        let have: Vec<String> = r
            .text
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .collect();
        if let Some(w) = words.iter().find(|w| !have.contains(w)) {
            return Some(format!("#{} in {} has no {w:?}", r.seq, r.room));
        }
    }
    let want = q.expect.map(|e| e.min(u64::from(q.limit)));
    match want {
        Some(want) if want != results.len() as u64 => {
            Some(format!("{} results, {want} expected", results.len()))
        }
        _ => None,
    }
}

fn search_request(q: &SearchQuery) -> ClientMsg {
    ClientMsg::Search {
        query: q.query.clone(),
        room: q.room.clone(),
        limit: Some(q.limit),
        skip: None,
    }
}

/// Search: asks every query once and checks what came back (before the run, by client 0).
async fn check_queries(sh: &Shared, conn: &mut Connection) -> Result<()> {
    for q in &sh.spec.queries {
        say(conn, &search_request(q)).await?;
        let results = std::sync::Mutex::new(Vec::new());
        expect(conn, |m| match m {
            ServerMsg::Search { results: r, .. } => {
                *results.lock().unwrap_or_else(|p| p.into_inner()) = r.clone();
                true
            }
            _ => false,
        })
        .await?;
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        let wrong = judge_results(q, &results);
        if let Some(why) = &wrong {
            sh.error(format!("search {:?}: {why}", q.query));
        }
        sh.recorder().checks.push(QueryCheck {
            query: q.query.clone(),
            room: q.room.clone(),
            kind: q.kind.clone(),
            found: results.len() as u64,
            expect: q.expect,
            wrong,
        });
    }
    Ok(())
}

/// Search: sends the queries in turn (each client from its own place in the list), one at a
/// time, and times each reply.
async fn searcher(sh: &Shared, mut conn: Connection, g: u64) -> Result<()> {
    let queries = &sh.spec.queries;
    let mut phase = sh.phase.clone();
    let mut next = (g as usize * 7) % queries.len();
    let mut in_flight: Option<(usize, u64)> = None;
    let (mut running, mut stopping) = (false, false);
    loop {
        if running && !stopping && in_flight.is_none() {
            bump(&sh.counters.sent);
            in_flight = Some((next, now_us()));
            say(&mut conn, &search_request(&queries[next])).await?;
            next = (next + 1) % queries.len();
            continue;
        }
        if stopping && in_flight.is_none() {
            bump(&sh.counters.stopped);
            return linger(sh, conn, &mut phase).await;
        }
        tokio::select! {
            msg = conn.read_msg() => match msg? {
                None => return Err(Error::Bench("the server closed the connection".into())),
                Some(Incoming::Text(text)) => {
                    let text = text.as_str();
                    if text.starts_with(r#"{"type":"search""#) {
                        let Some((i, sent)) = in_flight.take() else { continue };
                        bump(&sh.counters.acked);
                        if sh.in_window(sent) {
                            let took = now_us().saturating_sub(sent);
                            bump(&sh.counters.deliveries);
                            let mut r = sh.recorder();
                            record(&mut r.latency, took);
                            let second = (sent - get(&sh.from_us)) / 1_000_000;
                            record(r.timeline.entry(second).or_insert_with(histogram), took);
                            let kind = r.kinds.entry(queries[i].kind.clone()).or_insert_with(histogram);
                            record(kind, took);
                        }
                    } else if text.starts_with(r#"{"type":"error""#) {
                        in_flight = None;
                        sh.error(text.to_owned());
                    }
                }
                Some(Incoming::Binary(_)) => {}
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = phase.borrow().clone();
                match now {
                    Phase::Run => running = true,
                    Phase::Stop => stopping = true,
                    Phase::Drain(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

/// Sends payloads in a window and times their echoes.
async fn echo(sh: &Shared, mut conn: Connection, id: u64) -> Result<(u64, u64)> {
    let mut phase = sh.phase.clone();
    let (mut seq, mut in_flight) = (0u64, 0u64);
    let mut track = Track::default();
    let mut samples = Vec::with_capacity(512);
    let mut running = false;
    let mut stopping: Option<Instant> = None;
    loop {
        if running && stopping.is_none() && in_flight < u64::from(sh.spec.window) {
            seq += 1;
            in_flight += 1;
            bump(&sh.counters.sent);
            let text = payload(id, seq, now_us(), sh.spec.size);
            conn.send(Message::Text(text.into())).await?;
            continue;
        }
        if let Some(since) = stopping
            && (in_flight == 0 || since.elapsed() > DRAIN_TIMEOUT)
        {
            sh.flush(&mut samples);
            bump(&sh.counters.stopped);
            let lost = seq - track.unique;
            linger(sh, conn, &mut phase).await?;
            return Ok((lost, track.duplicated));
        }
        tokio::select! {
            msg = conn.read_msg() => match msg? {
                None => return Err(Error::Bench("the server closed the connection".into())),
                Some(Incoming::Text(text)) => {
                    let Some((p, s, t)) = parse_payload(text.as_str()) else {
                        // Not an echo server: it answers with frames of its own.
                        let head: String = text.as_str().chars().take(80).collect();
                        return Err(Error::Bench(format!(
                            "the server answered with a frame that is not ours: {}",
                            crate::shown::escaped(&head)
                        )));
                    };
                    if p == id {
                        in_flight = in_flight.saturating_sub(1);
                        bump(&sh.counters.acked);
                        if track.see(p, s).is_some() && sh.in_window(t) {
                            let now = now_us();
                            samples.push((t, now.saturating_sub(t)));
                            if samples.len() >= 512 || now > samples[0].0 + samples[0].1 + 1_000_000 {
                                sh.flush(&mut samples);
                            }
                        }
                    }
                }
                Some(Incoming::Binary(_)) => {}
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok((0, 0));
                }
                let now = phase.borrow().clone();
                match now {
                    Phase::Run => running = true,
                    Phase::Stop => stopping = Some(Instant::now()),
                    _ => {}
                }
            }
        }
    }
}

/// Why a load-generator connection ended, for its error line: the server's close frame, if
/// it sent one.
fn why_ended(conn: Option<&Connection>) -> String {
    match conn.and_then(|c| c.peer_close()) {
        Some(frame) => format!("closed by the server: {} {}", frame.code, frame.reason),
        None => "the connection ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_fields_at_any_size() {
        let p = payload(7, 42, 1_764_000_000_000_000, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(parse_payload(&p), Some((7, 42, 1_764_000_000_000_000)));
        let line = format!("[lobby] b1-2: {}", payload(1, 2, 3, 0));
        assert_eq!(parse_payload(&line), Some((1, 2, 3)));
        assert_eq!(parse_payload("[lobby] nana: hi"), None);
        assert_eq!(
            json_seq(r#"{"type":"message","room":"r","seq":42,"from":"x"}"#),
            Some(42)
        );
    }

    #[test]
    fn reactions_are_counted_once_per_member() {
        let mut seen = Seen::new(70);
        assert!(seen.see(0) && seen.see(69) && seen.see(64));
        assert!(!seen.see(64) && !seen.see(70));
        assert_eq!((seen.unique, seen.duplicated), (3, 2));
        let nick = r#"{"type":"react","room":"bench-ab-0","seq":7,"from":"bab-42","text":""}"#;
        assert_eq!(react_from(nick, "ab"), Some(42));
        assert_eq!(react_from(&nick.replace("bab-", "bcd-"), "ab"), None);
        assert_eq!(
            react_from(r#"{"type":"message","from":"bab-1"}"#, "ab"),
            None
        );
    }

    #[test]
    fn tracking_counts_gaps_and_repeats() {
        let mut t = Track::default();
        for s in [1, 2, 3, 3, 5] {
            t.see(1, s);
        }
        t.see(2, 1);
        assert_eq!((t.unique, t.duplicated), (5, 1));
    }
}
