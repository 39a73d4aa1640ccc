//! The `nanachat` binary: parses the command line, sets up logging and signals, and calls the
//! library. Exit codes: 0 done, 1 failed while running (e.g. cannot connect), 2 bad usage or
//! configuration, 3 refused by the server (nick taken, closed for a policy violation).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use nanachat::chat::Broker;
use nanachat::chat::{Chat, ChatConfig, valid_nick, valid_room};
use nanachat::client::{ClientOptions, Exit, Input, Output, Style, run as run_client, run_raw};
use nanachat::config::{ConnectionConfig, FileConfig, parse_bytes, parse_duration};
use nanachat::connection::Handler;
use nanachat::demo::{DemoClient, DemoServer};
use nanachat::dial::Target;
use nanachat::echo::Echo;
use nanachat::server::{self, ServerConfig};
use nanachat::store::{MemoryStore, PgStore, SqliteStore};
use nanachat::{Error, Result};

#[derive(Debug, Parser)]
#[command(
    name = "nanachat",
    version,
    about = "A real-time chat core over WebSocket."
)]
struct Cli {
    /// Log lines on stderr as text or as JSON objects (one per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "NANACHAT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// The chat server: rooms, direct messages, presence, durable history, resume.
    Serve {
        /// A TOML file with any of these options (keys spelt with `_`); flags win over it.
        #[arg(long, env = "NANACHAT_CONFIG")]
        config: Option<std::path::PathBuf>,
        /// Address to listen on, HOST:PORT (port 0 picks a free one) [default: 127.0.0.1:8765].
        #[arg(long, env = "NANACHAT_ADDR")]
        addr: Option<String>,
        /// Where the history database lives [default: ./nanachat-data].
        #[arg(long, env = "NANACHAT_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// Keep history in memory only: gone when the server stops.
        #[arg(long, env = "NANACHAT_MEMORY")]
        memory: bool,
        /// Keep history in PostgreSQL instead (postgres://USER[:PASSWORD]@HOST:PORT/DB),
        /// shared by every process pointed at it.
        #[arg(long, env = "NANACHAT_STORE")]
        store: Option<String>,
        /// Redis (redis://HOST:PORT/) through which several processes on one --store serve
        /// as one chat: messages, presence, who (docs/scaling.md).
        #[arg(long, env = "NANACHAT_BROKER")]
        broker: Option<String>,
        /// Share the address with other processes (SO_REUSEPORT): the kernel spreads new
        /// connections over them.
        #[arg(long, env = "NANACHAT_REUSE_PORT")]
        reuse_port: bool,
        /// Interval of the app-level heartbeat; 0 turns it off (3s is the seed's server push).
        #[arg(long, value_parser = parse_duration, env = "NANACHAT_HEARTBEAT")]
        heartbeat: Option<Duration>,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        chat: ChatArgs,
        #[command(flatten)]
        limits: ServerArgs,
    },
    /// The terminal client: chat from a terminal, or from a script when stdin is not one.
    Connect {
        /// The server's URL.
        #[arg(default_value = "ws://127.0.0.1:8765")]
        url: String,
        /// Your nick (letters, digits, - and _) [default: $USER].
        #[arg(long, env = "NANACHAT_NICK")]
        nick: Option<String>,
        /// A room to join at start (repeatable); the first is where your lines go.
        #[arg(long = "join", default_value = "lobby")]
        rooms: Vec<String>,
        /// Scripting mode: print the protocol's JSON objects instead of lines.
        #[arg(long)]
        json: bool,
        /// No subprotocol: plain text frames in and out, for any WebSocket server.
        #[arg(long)]
        raw: bool,
        /// Also send the seed's `!Client Send! <timestamp>` this often.
        #[arg(long, value_parser = parse_duration)]
        send_every: Option<Duration>,
        /// Give up when the connection drops instead of reconnecting.
        #[arg(long)]
        no_reconnect: bool,
        /// Also trust the CA certificates in this PEM file (wss:// to a private CA).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
        /// A token for a server that wants one (`nanachat token`).
        #[arg(long, env = "NANACHAT_TOKEN")]
        token: Option<String>,
    },
    /// Mints a token for a server started with --auth-secret: its `sub` is the nick.
    Token {
        /// The nick the token is for.
        #[arg(long)]
        sub: String,
        /// How long it stays valid; 0 never expires.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// A room it may join (repeatable); without any, every room.
        #[arg(long = "room")]
        rooms: Vec<String>,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// The seed's full-duplex pair: a server that pushes every 3 s, a client that sends every 1 s.
    Demo {
        #[command(subcommand)]
        side: DemoSide,
    },
    /// The load generator: fan-out, echo, connection and resume-storm benchmarks.
    #[cfg(feature = "bench")]
    Bench(Box<BenchArgs>),
    /// A bench worker process (started by `nanachat bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchWorker,
    /// An echo server on the same connection layer, for conformance testing.
    Echo {
        /// Address to listen on, HOST:PORT (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:9002")]
        addr: String,
        #[command(flatten)]
        limits: ServerArgs,
    },
}

/// `nanachat bench` options.
#[cfg(feature = "bench")]
#[derive(Debug, Args)]
struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    scenario: BenchScenario,
    /// The server's URL.
    #[arg(default_value = "ws://127.0.0.1:8765")]
    url: String,
    /// Plain text frames, no subprotocol: drives any broadcast server (Node ws, Python websockets, …).
    #[arg(long)]
    raw: bool,
    /// fanout: rooms.
    #[arg(long, default_value_t = 1)]
    rooms: u32,
    /// fanout: receivers per room.
    #[arg(long, default_value_t = 1000)]
    receivers: u32,
    /// fanout: publishers per room.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Messages per second per room (resume: while clients reconnect); 0 is as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages a publisher (or echo client) may have unacknowledged at once.
    #[arg(long, default_value_t = 32)]
    window: u32,
    /// Payload size, e.g. 100 or 1KiB.
    #[arg(long, default_value = "100", value_parser = parse_bytes)]
    size: usize,
    /// echo, connect, resume: clients.
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    /// Connections opened per second; 0 is as fast as the server takes them.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// How long to measure (connect: to hold the connections).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// resume: messages published while the clients are away.
    #[arg(long, default_value_t = 100)]
    missed: u64,
    /// fanout: percent of receivers that stop reading once the run starts (0 to 50).
    #[arg(long, default_value_t = 0.0)]
    stall: f64,
    /// Worker processes; 0 is one per 15,000 clients.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Local address to connect from (repeatable, used in turn); by default 127.0.0.2, … are
    /// used when a loopback run needs more ports than one address has.
    #[arg(long = "source")]
    sources: Vec<std::net::IpAddr>,
    /// The server's process id: its memory is sampled (connect).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for the server under test, in the report.
    #[arg(long, default_value = "nanachat")]
    label: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also draw latency over time and the latency histogram into this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
}

#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchScenario {
    Fanout,
    Echo,
    Connect,
    Resume,
}

#[derive(Debug, Subcommand)]
enum DemoSide {
    /// The seed's Server.py: prints `< msg` as messages arrive, pushes `!Server Send! …`.
    Server {
        /// Address to listen on, HOST:PORT (port 0 picks a free one).
        #[arg(long, default_value = "localhost:8765")]
        addr: String,
        /// How often each client gets a message.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        every: Duration,
        #[command(flatten)]
        limits: ServerArgs,
    },
    /// The seed's Client.py: sends `!Client Send! …`, prints what arrives, ticks `INTER BREAK`.
    Client {
        /// The server's URL.
        #[arg(default_value = "ws://localhost:8765")]
        url: String,
        /// How often to send a message.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        every: Duration,
        /// How often to print `INTER BREAK`; 0 turns it off.
        #[arg(long, default_value = "0.2s", value_parser = parse_duration)]
        tick: Duration,
        /// Close cleanly after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        limits: ConnectionArgs,
    },
}

/// Where the auth secret comes from.
#[derive(Debug, Args)]
struct SecretArgs {
    /// The secret tokens are signed with (at least 16 bytes); prefer --auth-secret-file.
    #[arg(long, env = "NANACHAT_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// A file holding the secret (trailing newline ignored).
    #[arg(long, env = "NANACHAT_AUTH_SECRET_FILE")]
    auth_secret_file: Option<std::path::PathBuf>,
}

impl SecretArgs {
    fn auth(&self) -> Result<Option<nanachat::auth::Auth>> {
        let secret = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give --auth-secret or --auth-secret-file, not both".into(),
                ));
            }
            (Some(secret), None) => secret.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path).map_err(|err| {
                Error::Config(format!(
                    "cannot read the auth secret from {}: {err}",
                    path.display()
                ))
            })?,
            (None, None) => return Ok(None),
        };
        nanachat::auth::Auth::new(&secret).map(Some)
    }
}

/// Per-connection limits; unset flags keep the library's defaults.
#[derive(Debug, Args)]
struct ConnectionArgs {
    /// Largest message accepted, e.g. 64KiB (close 1009 beyond).
    #[arg(long, value_parser = parse_bytes, env = "NANACHAT_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Largest frame accepted, e.g. 64KiB (close 1009 beyond).
    #[arg(long, value_parser = parse_bytes, env = "NANACHAT_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Per-connection read buffer (default 512): 4KiB is faster for busy peers, costs 3.5 KiB more per idle one.
    #[arg(long, value_parser = parse_bytes, env = "NANACHAT_READ_BUFFER_BYTES")]
    read_buffer_bytes: Option<usize>,
    /// How often to ping the peer; 0 turns pings off.
    #[arg(long, value_parser = parse_duration, env = "NANACHAT_PING_INTERVAL")]
    ping_interval: Option<Duration>,
    /// Close a peer from which nothing arrived for this long.
    #[arg(long, value_parser = parse_duration, env = "NANACHAT_IDLE_TIMEOUT")]
    idle_timeout: Option<Duration>,
}

/// Chat limits; unset flags keep the library's defaults.
#[derive(Debug, Args)]
struct ChatArgs {
    /// Longest message text, in characters.
    #[arg(long, env = "NANACHAT_MAX_TEXT_CHARS")]
    max_text_chars: Option<usize>,
    /// Messages a connection may send per second, sustained.
    #[arg(long, env = "NANACHAT_RATE")]
    rate: Option<u32>,
    /// Messages a connection may send in a burst.
    #[arg(long, env = "NANACHAT_BURST")]
    burst: Option<u32>,
    /// Rooms one connection may be in.
    #[arg(long, env = "NANACHAT_MAX_ROOMS")]
    max_rooms: Option<usize>,
    /// Rooms with more members than this send no join/leave presence events [default: 100].
    #[arg(long, env = "NANACHAT_PRESENCE_LIMIT")]
    presence_limit: Option<usize>,
}

/// Server limits, on top of the per-connection ones.
#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Most WebSocket connections at once (503 beyond).
    #[arg(long, env = "NANACHAT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// How long a graceful shutdown may take.
    #[arg(long, value_parser = parse_duration, env = "NANACHAT_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<Duration>,
    /// How long a client may take to send its handshake request.
    #[arg(long, value_parser = parse_duration, env = "NANACHAT_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<Duration>,
    /// A browser origin allowed to connect, e.g. https://chat.example.org (repeatable; the
    /// server's own pages always are). Other origins get 403. Unset: any origin.
    #[arg(
        long = "allowed-origin",
        env = "NANACHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Serve wss:// (and https://) with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "NANACHAT_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NANACHAT_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
}

impl ConnectionArgs {
    fn config(&self) -> Result<ConnectionConfig> {
        let mut config = ConnectionConfig::default();
        if let Some(v) = self.max_message_bytes {
            config.max_message_bytes = v;
        }
        if let Some(v) = self.max_frame_bytes {
            config.max_frame_bytes = v;
        }
        if let Some(v) = self.read_buffer_bytes {
            config.read_buffer_bytes = v;
        }
        if let Some(v) = self.ping_interval {
            config.ping_interval = v;
        }
        if let Some(v) = self.idle_timeout {
            config.idle_timeout = v;
        }
        config.validate()?;
        Ok(config)
    }
}

impl ServerArgs {
    fn fill_from(&mut self, file: &FileConfig) {
        let c = &mut self.connection;
        c.max_message_bytes = c.max_message_bytes.or(file.max_message_bytes);
        c.max_frame_bytes = c.max_frame_bytes.or(file.max_frame_bytes);
        c.read_buffer_bytes = c.read_buffer_bytes.or(file.read_buffer_bytes);
        c.ping_interval = c.ping_interval.or(file.ping_interval);
        c.idle_timeout = c.idle_timeout.or(file.idle_timeout);
        self.max_connections = self.max_connections.or(file.max_connections);
        self.shutdown_timeout = self.shutdown_timeout.or(file.shutdown_timeout);
        self.handshake_timeout = self.handshake_timeout.or(file.handshake_timeout);
        if self.allowed_origins.is_empty() {
            self.allowed_origins = file.allowed_origins.clone().unwrap_or_default();
        }
        if self.tls_cert.is_none() && self.tls_key.is_none() {
            self.tls_cert.clone_from(&file.tls_cert);
            self.tls_key.clone_from(&file.tls_key);
        }
    }

    fn config(&self) -> Result<ServerConfig> {
        let mut config = ServerConfig {
            connection: self.connection.config()?,
            ..ServerConfig::default()
        };
        if let Some(v) = self.max_connections {
            config.max_connections = v;
        }
        if let Some(v) = self.shutdown_timeout {
            config.shutdown_timeout = v;
        }
        if let Some(v) = self.handshake_timeout {
            config.handshake_timeout = v;
        }
        config.allowed_origins.clone_from(&self.allowed_origins);
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(Error::Config("--tls-cert and --tls-key go together".into()));
            }
        };
        config.validate()?;
        Ok(config)
    }
}

impl ChatArgs {
    fn fill_from(&mut self, file: &FileConfig) {
        self.max_text_chars = self.max_text_chars.or(file.max_text_chars);
        self.rate = self.rate.or(file.rate);
        self.burst = self.burst.or(file.burst);
        self.max_rooms = self.max_rooms.or(file.max_rooms);
        self.presence_limit = self.presence_limit.or(file.presence_limit);
    }

    fn config(&self, heartbeat: Option<Duration>) -> Result<ChatConfig> {
        let mut config = ChatConfig::default();
        if let Some(v) = self.max_text_chars {
            config.max_text_chars = v;
        }
        if let Some(v) = self.rate {
            config.rate_per_sec = v;
        }
        if let Some(v) = self.burst {
            config.rate_burst = v;
        }
        if let Some(v) = self.max_rooms {
            config.max_rooms = v;
        }
        if let Some(v) = self.presence_limit {
            config.presence_limit = v;
        }
        if let Some(v) = heartbeat {
            config.heartbeat_interval = v;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nanachat: {err}");
            match err {
                Error::Config(_) => ExitCode::from(2),
                Error::Refused(_) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Connect {
            url,
            nick,
            rooms,
            json,
            raw,
            send_every,
            no_reconnect,
            ca_file,
            token,
        } => {
            let mut target = Target::parse(&url)?;
            if let Some(path) = &ca_file {
                target = target.with_ca_file(path)?;
            }
            let link = Link {
                send_every,
                reconnect: !no_reconnect,
                token,
            };
            let exit = connect(target, nick, rooms, json, raw, link)?;
            match exit {
                Exit::Done => Ok(()),
                Exit::Refused(why) => Err(Error::Refused(why)),
            }
        }
        Command::Serve {
            config,
            addr,
            data_dir,
            memory,
            store,
            broker,
            reuse_port,
            heartbeat,
            secret,
            mut chat,
            mut limits,
        } => {
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let addr = addr
                .or(file.addr.clone())
                .unwrap_or_else(|| "127.0.0.1:8765".into());
            let data_dir = data_dir
                .or(file.data_dir.clone())
                .unwrap_or_else(|| "./nanachat-data".into());
            let memory = memory || file.memory.unwrap_or(false);
            let store = store.or(file.store.clone());
            let broker = broker.or(file.broker.clone());
            let reuse_port = reuse_port || file.reuse_port.unwrap_or(false);
            if let Some(url) = &store
                && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
            {
                return Err(Error::Config(format!(
                    "--store takes a postgres://… URL, not '{}'",
                    nanachat::config::redact_url(url)
                )));
            }
            if memory && store.is_some() {
                return Err(Error::Config("give --memory or --store, not both".into()));
            }
            if broker.is_some() && store.is_none() {
                return Err(Error::Config(
                    "--broker needs a history all processes share: add --store postgres://…".into(),
                ));
            }
            let heartbeat = heartbeat.or(file.heartbeat);
            chat.fill_from(&file);
            limits.fill_from(&file);
            let server = limits.config()?;
            let mut chat = chat.config(heartbeat)?;
            chat.auth = secret.auth()?;
            let say_auth = |auth: bool| {
                if auth {
                    tracing::info!("auth: a valid token is required (HS256, sub = nick)");
                } else {
                    tracing::warn!(
                        "no --auth-secret: the server is open, anyone may connect under any free nick"
                    );
                }
            };
            raise_open_files_limit(server.max_connections);
            let max_message_bytes = server.connection.max_message_bytes;
            let listen = Listen {
                addr: &addr,
                reuse_port,
            };
            if let Some(url) = store {
                serve(listen, server, async || {
                    let store = PgStore::open(&url).await?;
                    if let Some(url) = &broker {
                        let broker = Broker::connect(url).await?;
                        tracing::info!(broker = %broker.shown(), "broker");
                        chat.broker = Some(broker);
                    }
                    say_auth(chat.auth.is_some());
                    Ok(Chat::new(store, chat, max_message_bytes))
                })
            } else if memory {
                serve(listen, server, async || {
                    say_auth(chat.auth.is_some());
                    Ok(Chat::new(MemoryStore::new(), chat, max_message_bytes))
                })
            } else {
                serve(listen, server, async || {
                    let store = SqliteStore::open(&data_dir)?;
                    tracing::info!(path = %store.path().display(), "history store");
                    say_auth(chat.auth.is_some());
                    Ok(Chat::new(store, chat, max_message_bytes))
                })
            }
        }
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench(*args),
        Command::Token {
            sub,
            ttl,
            rooms,
            secret,
        } => {
            let Some(auth) = secret.auth()? else {
                return Err(Error::Config(
                    "give the server's secret: --auth-secret-file FILE (or --auth-secret)".into(),
                ));
            };
            if !valid_nick(&sub) {
                return Err(Error::Config(format!("'{sub}' is not a nick (--sub)")));
            }
            if let Some(bad) = rooms.iter().find(|r| !valid_room(r)) {
                return Err(Error::Config(format!(
                    "'{bad}' is not a room name (--room)"
                )));
            }
            let claims = nanachat::auth::Claims {
                sub,
                exp: (!ttl.is_zero()).then(|| nanachat::auth::now_secs() + ttl.as_secs().max(1)),
                rooms: (!rooms.is_empty()).then_some(rooms),
            };
            println!("{}", auth.mint(&claims));
            Ok(())
        }
        #[cfg(feature = "bench")]
        Command::BenchWorker => nanachat::bench::worker_main(),
        Command::Echo { addr, limits } => {
            serve(Listen::on(&addr), limits.config()?, async || Ok(Echo))
        }
        Command::Demo {
            side:
                DemoSide::Server {
                    addr,
                    every,
                    limits,
                },
        } => serve(Listen::on(&addr), limits.config()?, async || {
            Ok(DemoServer { every })
        }),
        Command::Demo {
            side:
                DemoSide::Client {
                    url,
                    every,
                    tick,
                    count,
                    limits,
                },
        } => {
            let target = Target::parse(&url)?;
            let config = limits.config()?;
            if every.is_zero() {
                return Err(Error::Config("--every must be above 0".into()));
            }
            let client = DemoClient { every, tick, count };
            // One event loop, one thread: the seed's point is that the three tasks interleave.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                client.run(&target, &config, shutdown).await
            })
        }
    }
}

/// `nanachat bench`: runs, prints the table (or JSON), draws the plot; lost or duplicated
/// messages make it fail.
#[cfg(feature = "bench")]
fn bench(args: BenchArgs) -> Result<()> {
    use nanachat::bench::{BenchSpec, Progress, Scenario};
    let spec = BenchSpec {
        scenario: match args.scenario {
            BenchScenario::Fanout => Scenario::Fanout,
            BenchScenario::Echo => Scenario::Echo,
            BenchScenario::Connect => Scenario::Connect,
            BenchScenario::Resume => Scenario::Resume,
        },
        url: args.url,
        raw: args.raw,
        rooms: args.rooms,
        receivers: args.receivers,
        publishers: args.publishers,
        rate: args.rate,
        window: args.window,
        size: args.size,
        connections: args.connections,
        ramp: args.ramp,
        seconds: args.duration.as_secs_f64(),
        warmup: args.warmup.as_secs_f64(),
        missed: args.missed,
        stall: args.stall,
        workers: args.workers,
        sources: args.sources,
        server_pid: args.server_pid,
        label: args.label,
    };
    let progress = if args.quiet {
        Progress::Quiet
    } else {
        Progress::for_stderr()
    };
    let report = nanachat::bench::run(spec, progress)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Error::Protocol(e.to_string()))?
        );
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.svg()).map_err(|err| {
            Error::Config(format!(
                "cannot write the plot to {}: {err}",
                path.display()
            ))
        })?;
    }
    if report.lost > 0 || report.duplicated > 0 {
        return Err(Error::Protocol(format!(
            "{} deliveries lost and {} duplicated",
            report.lost, report.duplicated
        )));
    }
    Ok(())
}

/// `nanachat connect`: interactive when stdin is a terminal, scripted otherwise.
/// How `nanachat connect` keeps its link.
struct Link {
    send_every: Option<Duration>,
    reconnect: bool,
    token: Option<String>,
}

fn connect(
    target: Target,
    nick: Option<String>,
    rooms: Vec<String>,
    json: bool,
    raw: bool,
    link: Link,
) -> Result<Exit> {
    let Link {
        send_every,
        reconnect,
        token,
    } = link;
    let nick = nick
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "guest".into());
    if !raw && !valid_nick(&nick) {
        return Err(Error::Config(format!(
            "'{nick}' is not a nick: use 1 to 32 letters, digits, - or _ (--nick)"
        )));
    }
    if let Some(bad) = rooms.iter().find(|r| !valid_room(r)) {
        return Err(Error::Config(format!(
            "'{bad}' is not a room name (--join)"
        )));
    }
    if send_every.is_some_and(|d| d.is_zero()) {
        return Err(Error::Config("--send-every must be above 0".into()));
    }
    let interactive = std::io::stdin().is_terminal() && !json;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut out, editor) = if interactive {
        let (out, editor) = line_editor(tx)?;
        (out, Some(editor))
    } else {
        runtime.spawn(read_stdin(tx));
        (Output::Script { json }, None)
    };
    let opts = ClientOptions {
        target: target.clone(),
        nick,
        rooms,
        send_every,
        reconnect,
        commands: interactive,
        token,
    };
    let result = runtime.block_on(async {
        if raw {
            run_raw(&target, send_every, reconnect, rx, &mut out).await
        } else {
            run_client(opts, rx, &mut out).await
        }
    });
    if let Some(editor) = editor {
        if !editor.is_finished() {
            // The line editor owns the terminal; it must give it back before we exit.
            out.notice("* press Enter to exit");
        }
        let _ = editor.join();
    }
    result
}

/// A line editor on its own thread: lines go to `tx`; what the client prints appears above the
/// line being typed, which stays intact.
fn line_editor(
    tx: tokio::sync::mpsc::Sender<Input>,
) -> Result<(Output, std::thread::JoinHandle<()>)> {
    use rustyline::ExternalPrinter;
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|err| Error::Config(format!("cannot open the terminal: {err}")))?;
    let mut printer = editor
        .create_external_printer()
        .map_err(|err| Error::Config(format!("cannot open the terminal: {err}")))?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let output = Output::Terminal {
        printer: Box::new(move |line| {
            let _ = printer.print(line);
        }),
        style: Style { color },
    };
    let thread = std::thread::spawn(move || {
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    let quit = line.trim() == "/quit" || line.trim() == "/q";
                    if tx.blocking_send(Input::Line(line)).is_err() || quit {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    let _ = tx.blocking_send(Input::Line("/quit".into()));
                    break;
                }
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    break;
                }
            }
        }
    });
    Ok((output, thread))
}

/// Scripting mode: every stdin line is input; the end of stdin is [`Input::Eof`].
async fn read_stdin(tx: tokio::sync::mpsc::Sender<Input>) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(Input::Line(line)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::Eof).await;
}

/// Binds `addr` and serves `handler` on it until SIGINT or SIGTERM.
/// The handler is made once the address is bound, so that a bad address touches nothing.
/// Where a server listens.
#[derive(Debug, Clone, Copy)]
struct Listen<'a> {
    /// HOST:PORT.
    addr: &'a str,
    /// Share the port with other processes (SO_REUSEPORT).
    reuse_port: bool,
}

impl<'a> Listen<'a> {
    fn on(addr: &'a str) -> Self {
        Self {
            addr,
            reuse_port: false,
        }
    }
}

fn serve<H: Handler>(
    listen: Listen<'_>,
    config: ServerConfig,
    make_handler: impl AsyncFnOnce() -> Result<H>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = bind(listen).await?;
        let handler = make_handler().await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        server::run(listener, config, handler, shutdown.cancelled_owned()).await
    })
}

/// Resolves HOST:PORT and binds the first address that works.
async fn bind(listen: Listen<'_>) -> Result<TcpListener> {
    let addr = listen.addr;
    let bad = || Error::Config(format!("bad address '{addr}': expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|err| Error::Config(format!("bad address '{addr}': {err}")))?
        .collect();
    // Prefer IPv4 for names like `localhost`, as most clients try it.
    addrs.sort_by_key(|a| !a.is_ipv4());
    let mut last = None;
    for candidate in addrs {
        match listen_on(candidate, listen.reuse_port) {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    let err = last.unwrap_or_else(|| std::io::Error::other("no address to bind"));
    let hint = match err.kind() {
        std::io::ErrorKind::AddrInUse if !listen.reuse_port => {
            " (another server is there; several nanachat processes share a port with --reuse-port)"
        }
        _ => "",
    };
    Err(Error::Io(std::io::Error::new(
        err.kind(),
        format!("cannot listen on {addr}: {err}{hint}"),
    )))
}

/// Connections the kernel may hold for us before we accept them. A crowd reconnecting at once
/// (a resume storm) overflows a short queue, and every dropped SYN costs its client a
/// one-second retry; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen_on(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the open-files soft limit to the hard limit; warns when `max_connections` sockets
/// would not fit under it.
fn raise_open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < max_connections + 64 => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below max connections: connections beyond it will fail"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open-files limit"),
    }
}

/// Cancels `token` on the first SIGINT (Ctrl-C) or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    token.cancel();
}
