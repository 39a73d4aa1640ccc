//! The `nanachat` command line: every command and its arguments. The settings users also put in
//! files and variables are declared in [`settings`](crate::settings); what is here is the shape
//! of the commands and the one-shot ones (`token`, `bench`) that need no server.

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::chat::{valid_nick, valid_room};
#[cfg(feature = "bench")]
use crate::config::parse_bytes;
use crate::config::parse_duration;
use crate::settings::{
    ConnectArgs, ConnectionSettings, LogFormat, SecretSettings, ServeArgs, ServerSettings,
    show_defaults,
};
use crate::{Error, Result};

/// `nanachat`: its global options and one command.
#[derive(Debug, Parser)]
#[command(
    name = "nanachat",
    version,
    about = "A real-time chat core over WebSocket."
)]
pub struct Cli {
    /// Log lines on stderr as text or as JSON objects (one per line).
    #[arg(long, global = true, value_enum, env = "NANACHAT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments (and `NANACHAT_*` variables). `--help` shows each
    /// setting's default. A usage error is clap's, as it came: [`usage_error`] makes it one line
    /// (`--help` and `--version` are errors of clap's too, to be printed as they are).
    pub fn parse_args() -> std::result::Result<Self, clap::Error> {
        let matches = show_defaults(Self::command()).try_get_matches()?;
        #[allow(unused_mut)]
        let mut cli = Self::from_arg_matches(&matches)?;
        #[cfg(feature = "bench")]
        if let (Command::Bench(args), Some(("bench", bench))) =
            (&mut cli.command, matches.subcommand())
        {
            args.given = bench
                .ids()
                .filter(|id| {
                    bench.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| id.as_str().to_owned())
                .collect();
        }
        Ok(cli)
    }

    /// The command with the config file it names (if any) read under its command line, and
    /// the log format in force (the flag over the file).
    pub fn resolve(self) -> Result<(Command, LogFormat)> {
        let mut command = self.command.with_files()?;
        let log = match &mut command {
            Command::Serve(args) => Some(&mut args.log),
            Command::Connect(args) => Some(&mut args.log),
            _ => None,
        };
        let format = match log {
            Some(log) => {
                log.log_format = self.log_format.or(log.log_format);
                log.log_format
            }
            None => self.log_format,
        };
        Ok((command, format.unwrap_or(LogFormat::Text)))
    }
}

/// A usage error from clap as one line fit for stderr: what is wrong (with clap's hint, if it
/// has one) and which `--help` to read (`nanachat bench --help`), without clap's usage block;
/// `None` for `--help` and `--version`, which print as clap has them and exit 0. `args`: the
/// command line (without the program), to name the command the error is about.
pub fn usage_error(err: &clap::Error, args: &[String]) -> Option<Error> {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return None;
    }
    // The command the error is about: the subcommands named on the line, in turn.
    let mut here = Cli::command();
    let mut path = vec!["nanachat".to_owned()];
    for arg in args {
        let Some(sub) = here.find_subcommand(arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_owned());
        here = sub;
    }
    let command = path.join(" ");
    let what = match err.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let subs: Vec<&str> = here
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name())
                .collect();
            format!("{command} needs one of: {}", subs.join(", "))
        }
        _ => {
            // clap's text up to its usage block: the error, then its hints, on one line.
            let rendered = err.render().to_string();
            let parts = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .map(|l| l.strip_prefix("error: ").unwrap_or(l));
            let mut what = String::new();
            for part in parts {
                if !what.is_empty() {
                    // A list goes on after its colon; a hint after a semicolon.
                    let glue = if part.starts_with('[') || what.ends_with(':') {
                        " "
                    } else {
                        "; "
                    };
                    what.push_str(glue);
                }
                what.push_str(part);
            }
            if what.is_empty() {
                what.push_str("bad usage");
            }
            what
        }
    };
    Some(Error::Config(format!("{what} (see {command} --help)")))
}

/// The commands.
// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The chat server: rooms, direct messages, presence, durable history, resume.
    Serve(ServeArgs),
    /// The terminal client: chat from a terminal, or from a script when stdin is not one.
    Connect(ConnectArgs),
    /// Mints a token for a server started with --auth-secret: its `sub` is the nick.
    Token(TokenArgs),
    /// The seed's full-duplex pair: a server that pushes every 3 s, a client that sends every 1 s.
    Demo {
        /// Which side.
        #[command(subcommand)]
        side: DemoSide,
    },
    /// The load generator: fan-out, echo, connection, resume-storm, reaction-burst and search
    /// benchmarks.
    ///
    /// A nanachat server limits each client address (--max-connections-per-ip 1000,
    /// --connect-rate-per-ip 100) and its clients (--rate 20): every bench client comes from
    /// this machine, so start the server under test with
    /// `--max-connections-per-ip 0 --connect-rate-per-ip 0 --rate 1000000 --burst 1000000`.
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
        /// Server limits.
        #[command(flatten)]
        server: ServerSettings,
        /// Connection limits.
        #[command(flatten)]
        connection: ConnectionSettings,
    },
}

impl Command {
    /// The command with the config file it names (if any) read under its command line.
    fn with_files(self) -> Result<Self> {
        Ok(match self {
            Command::Serve(args) => Command::Serve(args.with_file()?),
            Command::Connect(args) => Command::Connect(args.with_file()?),
            other => other,
        })
    }
}

/// `NANACHAT_*` variables in `vars` that no command reads but that look like one it does
/// (`NANACHAT_ALLOWED_ORIGINS` for `NANACHAT_ALLOWED_ORIGIN`): one line each, naming the one
/// meant. A setting in a misspelt variable is otherwise silently not in force. Variables far
/// from every setting (other tools') are left alone.
pub fn stray_variables(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut known = Vec::new();
    let mut commands = vec![Cli::command()];
    while let Some(command) = commands.pop() {
        known.extend(
            command
                .get_arguments()
                .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned)),
        );
        commands.extend(command.get_subcommands().cloned());
    }
    let mut lines = Vec::new();
    for var in vars {
        if !var.starts_with("NANACHAT_") || known.contains(&var) {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (strsim::osa_distance(k, &var), k))
            .min();
        // Close: two edits at most (two letters swapped are one), and at most one in three
        // letters of the name.
        let letters = var.len() - "NANACHAT_".len();
        if let Some((distance, meant)) = closest
            && distance <= 2
            && distance * 3 <= letters
        {
            lines.push(format!(
                "{var} is not a setting, so it is ignored: did you mean {meant}?"
            ));
        }
    }
    lines
}

/// The two sides of the seed's pair.
#[derive(Debug, Subcommand)]
pub enum DemoSide {
    /// The seed's Server.py: prints `< msg` as messages arrive, pushes `!Server Send! …`.
    Server {
        /// Address to listen on, HOST:PORT (port 0 picks a free one).
        #[arg(long, default_value = "localhost:8765")]
        addr: String,
        /// How often each client gets a message.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        every: Duration,
        /// Server limits.
        #[command(flatten)]
        server: ServerSettings,
        /// Connection limits.
        #[command(flatten)]
        connection: ConnectionSettings,
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
        /// Connection limits.
        #[command(flatten)]
        connection: ConnectionSettings,
    },
}

/// How long a token stays valid: a time, or `never` (asked for by name: a 0 is refused, as it
/// reads like "expired at once").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Option<Duration>);

/// `--ttl`: a time above 0 (`24h`), or `never`.
fn parse_ttl(text: &str) -> std::result::Result<Ttl, String> {
    if text.trim().eq_ignore_ascii_case("never") {
        return Ok(Ttl(None));
    }
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err(
            "a token valid for 0 s would be no use; for one that never expires, say \
             --ttl never"
                .into(),
        );
    }
    Ok(Ttl(Some(ttl)))
}

/// `nanachat token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The nick the token is for.
    #[arg(long)]
    pub sub: String,
    /// How long it stays valid (e.g. 1h, 30d); `never` for a token that never expires.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Ttl,
    /// A room it may join (repeatable); without any, every room.
    #[arg(long = "room")]
    pub rooms: Vec<String>,
    /// A room its holder moderates: may edit and delete anyone's messages there (repeatable;
    /// `*` for every room).
    #[arg(long = "moderator", value_name = "ROOM")]
    pub moderates: Vec<String>,
    /// The server's secret.
    #[command(flatten)]
    pub secret: SecretSettings,
}

impl TokenArgs {
    /// The signed token these arguments ask for.
    pub fn mint(self) -> Result<String> {
        let Some(auth) = self.secret.auth()? else {
            return Err(Error::Config(
                "give the server's secret: --auth-secret-file FILE (or --auth-secret)".into(),
            ));
        };
        let sub = self.sub;
        if !valid_nick(&sub) {
            return Err(Error::Config(format!("'{sub}' is not a nick (--sub)")));
        }
        if let Some(bad) = self.rooms.iter().find(|r| !valid_room(r)) {
            return Err(Error::Config(format!(
                "'{bad}' is not a room name (--room)"
            )));
        }
        if let Some(bad) = self.moderates.iter().find(|r| *r != "*" && !valid_room(r)) {
            return Err(Error::Config(format!(
                "'{bad}' is not a room name (--moderator; * for every room)"
            )));
        }
        let moderates = match self.moderates {
            m if m.iter().any(|r| r == "*") => Some(crate::auth::Moderates::All(true)),
            m if m.is_empty() => None,
            m => Some(crate::auth::Moderates::Rooms(m)),
        };
        // The issuer and audience the server checks are the ones the token carries.
        let expect = self.secret.expect();
        let claims = crate::auth::Claims {
            exp: self
                .ttl
                .0
                .map(|ttl| crate::auth::now_secs() + ttl.as_secs().max(1)),
            rooms: (!self.rooms.is_empty()).then_some(self.rooms),
            iss: expect.issuer,
            aud: expect.audience.map(crate::auth::Audience::One),
            moderates,
            ..crate::auth::Claims::for_nick(sub)
        };
        Ok(auth.mint(&claims))
    }
}

/// `nanachat bench` options.
#[cfg(feature = "bench")]
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: BenchScenario,
    /// The server's URL.
    #[arg(default_value = "ws://127.0.0.1:8765")]
    pub url: String,
    /// Plain text frames, no subprotocol: drives any broadcast server (Node ws, Python websockets, …).
    #[arg(long)]
    pub raw: bool,
    /// --raw: a client counts as connected once the server sent a line starting with this (a
    /// server that puts a client in its audience after the handshake, e.g. nanachat's
    /// plain-text mode: `--ready-line '* you joined'`).
    #[arg(long, value_name = "PREFIX", requires = "raw")]
    pub ready_line: Option<String>,
    /// fanout: rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// fanout: receivers per room; react: the room's members.
    #[arg(long, default_value_t = 1000)]
    pub receivers: u32,
    /// fanout: publishers per room.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Messages per second per room (resume: while clients reconnect); 0 is as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages a publisher (or echo client) may have unacknowledged at once.
    #[arg(long, default_value_t = 32)]
    pub window: u32,
    /// Payload size, e.g. 100 or 1KiB.
    #[arg(long, default_value = "100", value_parser = parse_bytes)]
    pub size: usize,
    /// echo, connect, resume, search: clients.
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Connections opened per second; 0 is as fast as the server takes them.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// How long to measure (connect: to hold the connections; react: the time the reactions
    /// are spread over).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// resume: messages published while the clients are away.
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// fanout: percent of receivers that stop reading once the run starts (0 to 50).
    #[arg(long, default_value_t = 0.0)]
    pub stall: f64,
    /// Worker processes; 0 is one per 15,000 clients.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Local address to connect from (repeatable, used in turn); by default 127.0.0.2, … are
    /// used when a loopback run needs more ports than one address has.
    #[arg(long = "source")]
    pub sources: Vec<std::net::IpAddr>,
    /// The server's process id: its memory is sampled (connect).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A name for the server under test, in the report.
    #[arg(long, default_value = "nanachat")]
    pub label: String,
    /// search: the queries, one JSON object a line: `{"query":"WORDS"}`, optionally with
    /// `"room"` (only there; the clients join it), `"kind"` (latency is reported per kind),
    /// `"limit"` (20 unless told) and `"expect"` (how many messages hold the words: checked).
    #[arg(long, value_name = "FILE")]
    pub queries: Option<std::path::PathBuf>,
    /// search: the nick the clients say hello as (all of them), e.g. a user the store
    /// remembers rooms for; else each client is a new user of its own.
    #[arg(long)]
    pub nick: Option<String>,
    /// search: the key that goes with --nick.
    #[arg(long, requires = "nick")]
    pub key: Option<String>,
    /// fanout: publish through the server's HTTP API with this key (one request at a time
    /// per publisher) instead of over the WebSocket.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also draw latency over time and the latency histogram into this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    /// The options given on the command line (clap's ids): one the scenario does not use is
    /// refused (see `SCENARIO_OPTIONS`).
    #[arg(skip)]
    pub given: Vec<String>,
}

/// The options that only some scenarios use, by clap id and flag, and the scenarios that use
/// each; the others apply to every scenario.
#[cfg(feature = "bench")]
const SCENARIO_OPTIONS: &[(&str, &str, &[BenchScenario])] = {
    use BenchScenario::*;
    &[
        ("rooms", "--rooms", &[Fanout]),
        ("receivers", "--receivers", &[Fanout, React]),
        ("publishers", "--publishers", &[Fanout]),
        ("rate", "--rate", &[Fanout, Resume]),
        ("window", "--window", &[Fanout, Echo, Resume]),
        ("size", "--size", &[Fanout, Echo, Resume]),
        (
            "connections",
            "--connections",
            &[Echo, Connect, Resume, Search],
        ),
        ("missed", "--missed", &[Resume]),
        ("stall", "--stall", &[Fanout]),
        ("server_pid", "--server-pid", &[Connect]),
        ("queries", "--queries", &[Search]),
        ("nick", "--nick", &[Search]),
        ("key", "--key", &[Search]),
        ("api_key", "--api-key", &[Fanout]),
    ]
};

/// An option given that `scenario` does not use, as the line that refuses it (and says what
/// the scenario uses instead); `None` when every option given is used.
#[cfg(feature = "bench")]
fn ignored_option(scenario: BenchScenario, given: &[String]) -> Option<String> {
    let (_, flag, _) = SCENARIO_OPTIONS
        .iter()
        .find(|(id, _, used_by)| given.iter().any(|g| g == id) && !used_by.contains(&scenario))?;
    let name = scenario.name();
    let uses: Vec<&str> = SCENARIO_OPTIONS
        .iter()
        .filter(|(_, _, used_by)| used_by.contains(&scenario))
        .map(|(_, flag, _)| *flag)
        .collect();
    let uses = match uses.as_slice() {
        [] => "none of the scenario options".to_owned(),
        some => some.join(", "),
    };
    Some(format!(
        "bench {name} does not use {flag}: {}; of the scenario options it uses {uses} (see \
         nanachat bench --help)",
        scenario.clients()
    ))
}

/// What `nanachat bench` runs.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchScenario {
    /// Rooms of receivers and publishers.
    Fanout,
    /// Echo round trips.
    Echo,
    /// Many idle connections.
    Connect,
    /// A crowd that drops and resumes at once.
    Resume,
    /// A room's members all react to one message (--receivers members, spread over --duration).
    React,
    /// Search requests from --queries, timed per kind.
    Search,
}

#[cfg(feature = "bench")]
impl BenchScenario {
    /// Its name on the command line.
    fn name(self) -> &'static str {
        match self {
            BenchScenario::Fanout => "fanout",
            BenchScenario::Echo => "echo",
            BenchScenario::Connect => "connect",
            BenchScenario::Resume => "resume",
            BenchScenario::React => "react",
            BenchScenario::Search => "search",
        }
    }

    /// Its clients, in words: which options make them.
    fn clients(self) -> &'static str {
        match self {
            BenchScenario::Fanout => "its clients are --rooms of --receivers and --publishers",
            BenchScenario::Echo => "its clients are --connections echo clients",
            BenchScenario::Connect => "it holds --connections idle connections",
            BenchScenario::Resume => "its clients are --connections receivers and one publisher",
            BenchScenario::React => "its clients are --receivers members of one room",
            BenchScenario::Search => "its clients are --connections searchers",
        }
    }
}

/// `nanachat bench`: runs, prints the table (or JSON), draws the plot; lost or duplicated
/// messages make it fail, and so does a run that measured nothing: a client that could not
/// connect, nothing delivered, the clients rate-limited.
#[cfg(feature = "bench")]
pub fn bench(args: BenchArgs) -> Result<()> {
    use crate::bench::{BenchSpec, Progress, Scenario, SearchQuery};
    if let Some(refusal) = ignored_option(args.scenario, &args.given) {
        return Err(Error::Config(refusal));
    }
    let queries = match &args.queries {
        Some(path) => SearchQuery::parse_lines(
            &std::fs::read_to_string(path).map_err(|err| Error::file("read", path, err))?,
        )?,
        None => Vec::new(),
    };
    let spec = BenchSpec {
        scenario: match args.scenario {
            BenchScenario::Fanout => Scenario::Fanout,
            BenchScenario::Echo => Scenario::Echo,
            BenchScenario::Connect => Scenario::Connect,
            BenchScenario::Resume => Scenario::Resume,
            BenchScenario::React => Scenario::React,
            BenchScenario::Search => Scenario::Search,
        },
        url: args.url,
        raw: args.raw,
        ready_line: args.ready_line,
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
        queries,
        nick: args.nick,
        key: args.key,
        api_key: args.api_key,
    };
    let scenario = spec.scenario;
    let members = u64::from(spec.receivers);
    let progress = if args.quiet {
        Progress::Quiet
    } else {
        Progress::for_stderr()
    };
    let report = crate::bench::run(spec, progress)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.svg())
            .map_err(|err| Error::file("write the plot to", path, err))?;
    }
    // Not one echo: not a server that echoes (a chat server answers its frames otherwise), not
    // a server that broke a promise.
    if scenario == Scenario::Echo && report.acked == 0 && report.connected > 0 {
        return Err(Error::Bench(
            "no frame came back: `bench echo` measures a server that sends each frame back as \
             it came, such as `nanachat echo` (with --raw, as it speaks no subprotocol); a chat \
             server is measured with `bench fanout`"
                .into(),
        ));
    }
    if report.lost > 0 || report.duplicated > 0 {
        return Err(Error::Bench(format!(
            "{} deliveries lost and {} duplicated",
            report.lost, report.duplicated
        )));
    }
    measured_something(scenario, &report)?;
    // A reaction refused, or a wrong search result, fails the run as a loss does.
    if scenario == Scenario::React && (report.errors > 0 || report.acked < members) {
        return Err(Error::Bench(format!(
            "{} of {members} reactions acked, {} errors",
            report.acked, report.errors
        )));
    }
    if scenario == Scenario::Search && report.errors > 0 {
        return Err(Error::Bench(format!(
            "{} errors (first: {})",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        )));
    }
    Ok(())
}

/// A run whose clients could not all connect, that delivered nothing, or that the server
/// rate-limited measured the wrong thing (or nothing): it fails, saying why and what to change.
#[cfg(feature = "bench")]
fn measured_something(
    scenario: crate::bench::Scenario,
    report: &crate::bench::Report,
) -> Result<()> {
    use crate::bench::Scenario;
    let first = report.first_error.as_deref().unwrap_or("?");
    let rate_limited = report.errors > 0 && first.contains("rate_limited");
    let hint = if rate_limited {
        " — the server rate-limited the clients: start it with `nanachat serve --rate 1000000 \
         --burst 1000000` (and `--max-connections-per-ip 0 --connect-rate-per-ip 0`)"
    } else {
        ""
    };
    if report.connect_failed > 0 {
        return Err(Error::Bench(format!(
            "{} of {} clients could not connect (first error: {first}){hint}",
            report.connect_failed,
            report.connect_failed + report.connected
        )));
    }
    let nothing = match scenario {
        Scenario::Connect => None,
        Scenario::Search => report
            .kinds
            .iter()
            .all(|(_, p)| p.count == 0)
            .then_some("no search was answered"),
        // What a resume run measures is the resume (its live phase may be over before the
        // replays are, on a loaded machine).
        Scenario::Resume => (report.resume_seconds.is_none_or(|s| s <= 0.0)
            && report.deliveries == 0)
            .then_some("no client resumed"),
        Scenario::Fanout | Scenario::Echo | Scenario::React => {
            (report.deliveries == 0).then_some("nothing was delivered")
        }
    };
    if let Some(nothing) = nothing {
        let errors = match report.errors {
            0 => String::new(),
            n => format!(" ({n} errors, first: {first})"),
        };
        return Err(Error::Bench(format!(
            "{nothing}: the run measured nothing{errors}{hint}"
        )));
    }
    if rate_limited {
        return Err(Error::Bench(format!(
            "{} errors (first: {first}): the figures measure the server's rate limit{hint}",
            report.errors
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_variable_is_named_with_the_one_meant_and_others_are_left_alone() {
        let vars = [
            "NANACHAT_ALLOWED_ORIGINS",
            "NANACHAT_MAX_TEXT_CHAR",
            "NANACHAT_BORKER",
            "NANACHAT_RAT",
            "NANACHAT_NICKK",
            "NANACHAT_RATE",
            "NANACHAT_BIN",
            "NANACHAT_TOOLS",
            "NANACHAT_PYTHON10",
            "NANACHAT_NODE",
            "PATH",
        ];
        let lines = stray_variables(vars.map(str::to_owned));
        assert_eq!(
            lines,
            [
                "NANACHAT_ALLOWED_ORIGINS is not a setting, so it is ignored: did you mean NANACHAT_ALLOWED_ORIGIN?",
                "NANACHAT_MAX_TEXT_CHAR is not a setting, so it is ignored: did you mean NANACHAT_MAX_TEXT_CHARS?",
                "NANACHAT_BORKER is not a setting, so it is ignored: did you mean NANACHAT_BROKER?",
                "NANACHAT_RAT is not a setting, so it is ignored: did you mean NANACHAT_RATE?",
                "NANACHAT_NICKK is not a setting, so it is ignored: did you mean NANACHAT_NICK?",
            ]
        );
    }

    /// One table says which scenario uses which option: an option given that the scenario
    /// does not use is named, with what it uses instead; one it uses passes.
    #[cfg(feature = "bench")]
    #[test]
    fn an_option_a_scenario_ignores_is_named_from_the_table() {
        let given = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
        let said = ignored_option(BenchScenario::Echo, &given(&["receivers", "url"])).unwrap();
        assert!(said.contains("does not use --receivers"), "{said}");
        assert!(said.contains("--connections"), "{said}");
        assert_eq!(
            ignored_option(
                BenchScenario::Echo,
                &given(&["connections", "window", "duration"])
            ),
            None
        );
        assert_eq!(
            ignored_option(
                BenchScenario::Fanout,
                &given(&["receivers", "rooms", "stall"])
            ),
            None
        );
        let said = ignored_option(BenchScenario::Search, &given(&["api_key"])).unwrap();
        assert!(said.contains("--api-key"), "{said}");
    }
}
