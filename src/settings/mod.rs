//! What a user sets, declared once. Each group of settings is one struct that is at the same
//! time the command's clap arguments (flags and their `NANACHAT_*` variables) and the serde
//! source of its TOML file (`--config`): the flag `--max-text-chars`, the variable
//! `NANACHAT_MAX_TEXT_CHARS` and the key `max_text_chars` are one field. Every field is optional;
//! [`or`](ServeArgs::or) merges the command line over the file, and a setting given nowhere
//! takes its default, written once beside the field and shown by `--help`.
//! The precedence is flag > variable (clap) > file > default.
//!
//! These raw settings become the checked configurations the library runs on
//! ([`ConnectionConfig`], [`ServerConfig`], [`ChatConfig`]) in one place each, as ripgrep turns
//! its low-level arguments into high-level ones.

mod file;
mod values;

use std::path::PathBuf;

use clap::builder::BoolishValueParser;

use crate::chat::{ChatConfig, History, ServePlan, valid_nick, valid_room};
use crate::client::{ClientOptions, Speech};
use crate::config::ConnectionConfig;
use crate::dial::Target;
use crate::server::{Listen, ServerConfig};
use crate::store::Retention;
use crate::{Error, Result};

use file::to_file_text;
pub use file::{help_defaults, load_file, parse_file, show_defaults};
pub use values::{Bytes, LogFormat, Secret, ServiceUrl, Setting, Time};

/// Declares a group of settings: the struct (clap + serde, every field an `Option`), its keys,
/// the merge, one accessor per field that falls back to the default, and the defaults as text.
macro_rules! settings {
    (
        $(#[$smeta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$smeta])*
        #[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            /// The keys of this group, as a config file spells them.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// These settings, each one not given here taken from `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self { $($field: self.$field.or(lower.$field)),* }
            }

            /// Each key with its built-in default as a config file would write it (`None`: no
            /// default, the setting is off).
            pub fn defaults() -> Vec<(&'static str, Option<String>)> {
                vec![$((stringify!($field), settings!(@default $ty $(, $default)?))),*]
            }

            /// Each key with the value in force: given, or else the default.
            pub fn effective(&self) -> Vec<(&'static str, Option<String>)> {
                let defaults = Self::defaults();
                let given = [$(self.$field.as_ref().map(Setting::to_toml)),*];
                given
                    .into_iter()
                    .zip(defaults)
                    .map(|(given, (key, default))| (key, given.or(default)))
                    .collect()
            }

            $(settings!(@get $field, $ty $(, $default)?);)*
        }
    };
    (@default $ty:ty, $default:expr) => {{
        let value: $ty = $default;
        Some(Setting::to_toml(&value))
    }};
    (@default $ty:ty) => {
        None
    };
    (@get $field:ident, $ty:ty, $default:expr) => {
        #[doc = concat!("`", stringify!($field), "` as given, or else its default.")]
        pub fn $field(&self) -> $ty {
            self.$field.clone().unwrap_or_else(|| $default)
        }
    };
    (@get $field:ident, $ty:ty) => {
        #[doc = concat!("`", stringify!($field), "` if given (it has no default).")]
        pub fn $field(&self) -> Option<$ty> {
            self.$field.clone()
        }
    };
}

settings! {
    /// Where `nanachat serve` listens and keeps its history.
    pub struct ServeSettings {
        /// Address to listen on, HOST:PORT (port 0 picks a free one).
        #[arg(long, env = "NANACHAT_ADDR", value_name = "HOST:PORT")]
        addr: String = "127.0.0.1:8765".into(),
        /// Where the history database lives.
        #[arg(long, env = "NANACHAT_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf = "./nanachat-data".into(),
        /// Keep history in memory only: gone when the server stops.
        #[arg(long, env = "NANACHAT_MEMORY", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        memory: bool = false,
        /// Keep history in PostgreSQL instead (postgres://USER:PASSWORD@HOST:PORT/DB),
        /// shared by every process pointed at it.
        #[arg(long, env = "NANACHAT_STORE", hide_env_values = true, value_name = "URL")]
        store: ServiceUrl,
        /// The CA certificate (PEM) that signed the database's certificate, for a --store URL
        /// with sslmode=verify-full (or require); without it, the system's roots.
        #[arg(long, env = "NANACHAT_STORE_CA_FILE", value_name = "PEM")]
        store_ca_file: PathBuf,
        /// Redis (redis://HOST:PORT/) through which several processes on one --store serve
        /// as one chat: messages, presence, who (docs/scaling.md).
        #[arg(long, env = "NANACHAT_BROKER", hide_env_values = true, value_name = "URL")]
        broker: ServiceUrl,
        /// The CA certificate (PEM) that signed a rediss:// broker's certificate; without it,
        /// the system's roots.
        #[arg(long, env = "NANACHAT_BROKER_CA_FILE", value_name = "PEM")]
        broker_ca_file: PathBuf,
        /// Share the address with other processes (SO_REUSEPORT): the kernel spreads new
        /// connections over them.
        #[arg(long, env = "NANACHAT_REUSE_PORT", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        reuse_port: bool = false,
        /// Turns the HTTP API on (/api/v1/, docs/api.md): a file of API keys, one per line
        /// (16 characters or more); requests bring one as `Authorization: Bearer KEY`.
        /// Re-read on SIGHUP.
        #[arg(long, env = "NANACHAT_API_KEY_FILE", value_name = "FILE")]
        api_key_file: PathBuf,
    }
}

settings! {
    /// How log lines are written: the global `--log-format`, which a config file may set too.
    pub struct LogSettings {
        /// Log lines as text or JSON (the flag is global, see [`crate::cli::Cli`]).
        #[arg(skip)]
        log_format: LogFormat = LogFormat::Text,
    }
}

settings! {
    /// Who may connect: the secret tokens are signed with (`serve`, `token`).
    pub struct SecretSettings {
        /// The secret tokens are signed with (at least 16 bytes); prefer --auth-secret-file.
        #[arg(long, env = "NANACHAT_AUTH_SECRET", hide_env_values = true, value_name = "SECRET")]
        auth_secret: Secret,
        /// A file holding the secret: one per line, the first signs, all verify (rotation);
        /// `serve` re-reads it on SIGHUP.
        #[arg(long, env = "NANACHAT_AUTH_SECRET_FILE", value_name = "FILE")]
        auth_secret_file: PathBuf,
        /// The issuer every token must name (`iss`); `token` writes it into the token.
        #[arg(long, env = "NANACHAT_TOKEN_ISSUER", value_name = "ISS")]
        token_issuer: String,
        /// The audience every token must name (`aud`); `token` writes it into the token.
        #[arg(long, env = "NANACHAT_TOKEN_AUDIENCE", value_name = "AUD")]
        token_audience: String,
    }
}

settings! {
    /// Limits and timers of the chat layer.
    pub struct ChatSettings {
        /// Longest message text, in characters.
        #[arg(long, env = "NANACHAT_MAX_TEXT_CHARS", value_name = "N")]
        max_text_chars: usize = ChatConfig::default().max_text_chars,
        /// Messages a connection may send per second, sustained.
        #[arg(long, env = "NANACHAT_RATE", value_name = "N")]
        rate: u32 = ChatConfig::default().rate_per_sec,
        /// Messages a connection may send in a burst.
        #[arg(long, env = "NANACHAT_BURST", value_name = "N")]
        burst: u32 = ChatConfig::default().rate_burst,
        /// Rooms one connection may be in.
        #[arg(long, env = "NANACHAT_MAX_ROOMS", value_name = "N")]
        max_rooms: usize = ChatConfig::default().max_rooms,
        /// Rooms with more members than this send no join/leave presence events.
        #[arg(long, env = "NANACHAT_PRESENCE_LIMIT", value_name = "N")]
        presence_limit: usize = ChatConfig::default().presence_limit,
        /// How long a room nobody is in, with no traffic, stays in memory (and, in a cluster,
        /// subscribed to); it is read from the store again when someone comes back.
        #[arg(long, env = "NANACHAT_ROOM_TTL", value_name = "TIME")]
        room_ttl: Time = Time(ChatConfig::default().room_ttl),
        /// Interval of the app-level heartbeat; 0 turns it off (3s is the seed's server push).
        #[arg(long, env = "NANACHAT_HEARTBEAT", value_name = "TIME")]
        heartbeat: Time = Time(ChatConfig::default().heartbeat_interval),
        /// Delete messages older than this (e.g. 30d, 12h), checked every minute. Unset: kept
        /// forever (with --retention-messages, a message goes when either says so).
        #[arg(long, env = "NANACHAT_RETENTION_AGE", value_name = "TIME")]
        retention_age: Time,
        /// Keep at most this many of each room's newest messages. Unset: all.
        #[arg(long, env = "NANACHAT_RETENTION_MESSAGES", value_name = "N")]
        retention_messages: usize,
        /// How long a connection whose token expired may take to send a fresh one (`refresh`)
        /// before it is closed with 4003.
        #[arg(long, env = "NANACHAT_TOKEN_GRACE", value_name = "TIME")]
        token_grace: Time = Time(ChatConfig::default().token_grace),
    }
}

settings! {
    /// Webhooks: events sent to HTTP endpoints, signed, at least once (docs/webhooks.md).
    pub struct WebhookSettings {
        /// Send every event (message.created, .edited, .deleted, reaction.changed,
        /// member.joined, .left, room.occupied, .vacated) to this http:// or https:// URL, as
        /// signed JSON (repeatable; needs --webhook-secret-file and a durable store).
        #[arg(long, env = "NANACHAT_WEBHOOK_URL", hide_env_values = true, value_delimiter = ',',
              value_name = "URL")]
        webhook_url: Vec<ServiceUrl>,
        /// A file whose first line (at least 16 characters) signs the webhooks
        /// (`nanachat-signature: t=…,v1=HMAC-SHA256`).
        #[arg(long, env = "NANACHAT_WEBHOOK_SECRET_FILE", value_name = "FILE")]
        webhook_secret_file: PathBuf,
        /// An event not delivered this long after it happened is dropped (counted in
        /// nanachat_webhook_failed_total); until then it is retried with back-off.
        #[arg(long, env = "NANACHAT_WEBHOOK_MAX_AGE", value_name = "TIME")]
        webhook_max_age: Time = Time(std::time::Duration::from_secs(24 * 3600)),
        /// How long one delivery may take (connect, send, answer) before it counts as failed
        /// and is retried.
        #[arg(long, env = "NANACHAT_WEBHOOK_TIMEOUT", value_name = "TIME")]
        webhook_timeout: Time = Time(crate::webhook::DELIVERY_TIMEOUT),
    }
}

impl WebhookSettings {
    /// The webhooks these settings ask for, checked (the secret file is read here); `None`
    /// without a URL.
    pub fn config(&self) -> Result<Option<crate::webhook::WebhookConfig>> {
        let urls: Vec<String> = self
            .webhook_url()
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.0)
            .collect();
        match (urls.is_empty(), self.webhook_secret_file()) {
            (true, None) => Ok(None),
            (true, Some(_)) => Err(Error::Config(
                "--webhook-secret-file needs a --webhook-url".into(),
            )),
            (false, None) => Err(Error::Config(
                "--webhook-url needs --webhook-secret-file (the secret that signs the events)"
                    .into(),
            )),
            (false, Some(file)) => {
                let mut config =
                    crate::webhook::WebhookConfig::new(urls, &file, self.webhook_max_age().0)?;
                config.timeout = self.webhook_timeout().0;
                if config.timeout.is_zero() {
                    return Err(Error::Config("--webhook-timeout must be above 0".into()));
                }
                Ok(Some(config))
            }
        }
    }
}

settings! {
    /// Limits of a listening server, on top of each connection's.
    pub struct ServerSettings {
        /// Most WebSocket connections at once (503 beyond).
        #[arg(long, env = "NANACHAT_MAX_CONNECTIONS", value_name = "N")]
        max_connections: usize = ServerConfig::default().max_connections,
        /// How long a graceful shutdown may take.
        #[arg(long, env = "NANACHAT_SHUTDOWN_TIMEOUT", value_name = "TIME")]
        shutdown_timeout: Time = Time(ServerConfig::default().shutdown_timeout),
        /// How long a client may take to send its handshake request.
        #[arg(long, env = "NANACHAT_HANDSHAKE_TIMEOUT", value_name = "TIME")]
        handshake_timeout: Time = Time(ServerConfig::default().handshake_timeout),
        /// Most connections still in their handshake at once (503 beyond).
        #[arg(long, env = "NANACHAT_MAX_HANDSHAKES", value_name = "N")]
        max_handshakes: usize = ServerConfig::default().max_handshakes,
        /// Most WebSocket connections open at once from one IP address (429 beyond); 0: no
        /// limit, for loopback benchmarks or behind a reverse proxy (where every client has
        /// the proxy's address).
        #[arg(long, env = "NANACHAT_MAX_CONNECTIONS_PER_IP", value_name = "N")]
        max_connections_per_ip: usize = ServerConfig::default().max_connections_per_ip,
        /// New WebSocket connections a second from one IP address, bursts of twice as many
        /// (429 beyond); 0: no limit.
        #[arg(long, env = "NANACHAT_CONNECT_RATE_PER_IP", value_name = "N")]
        connect_rate_per_ip: u32 = ServerConfig::default().connect_rate_per_ip,
        /// A browser origin allowed to connect, e.g. `https://chat.example.org` (repeatable:
        /// exactly these, which stops DNS rebinding), or `*` for any. Other origins get 403.
        /// Unset: only the server's own pages (same scheme, host and port).
        #[arg(long, env = "NANACHAT_ALLOWED_ORIGIN", value_delimiter = ',', value_name = "ORIGIN")]
        #[serde(alias = "allowed_origins")]
        allowed_origin: Vec<String>,
        /// Serve wss:// (and https://) with this PEM certificate chain (with --tls-key).
        #[arg(long, env = "NANACHAT_TLS_CERT", value_name = "PEM")]
        tls_cert: PathBuf,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "NANACHAT_TLS_KEY", value_name = "PEM")]
        tls_key: PathBuf,
    }
}

settings! {
    /// Limits and timers of each WebSocket connection.
    pub struct ConnectionSettings {
        /// Largest message accepted (close 1009 beyond).
        #[arg(long, env = "NANACHAT_MAX_MESSAGE_BYTES", value_name = "SIZE")]
        max_message_bytes: Bytes = Bytes(ConnectionConfig::default().max_message_bytes),
        /// Largest frame accepted (close 1009 beyond).
        #[arg(long, env = "NANACHAT_MAX_FRAME_BYTES", value_name = "SIZE")]
        max_frame_bytes: Bytes = Bytes(ConnectionConfig::default().max_frame_bytes),
        /// Per-connection read buffer: 4KiB is faster for busy peers, costs 3.5 KiB more per
        /// idle one.
        #[arg(long, env = "NANACHAT_READ_BUFFER_BYTES", value_name = "SIZE")]
        read_buffer_bytes: Bytes = Bytes(ConnectionConfig::default().read_buffer_bytes),
        /// How often to ping the peer; 0 turns pings off.
        #[arg(long, env = "NANACHAT_PING_INTERVAL", value_name = "TIME")]
        ping_interval: Time = Time(ConnectionConfig::default().ping_interval),
        /// Close a peer from which nothing arrived for this long.
        #[arg(long, env = "NANACHAT_IDLE_TIMEOUT", value_name = "TIME")]
        idle_timeout: Time = Time(ConnectionConfig::default().idle_timeout),
        /// Bytes that may wait to be sent to one peer; a live message past them closes it as a
        /// slow consumer (4001), and its own replies wait at half. At least two of the largest
        /// messages: with a larger --max-message-bytes the default grows to that.
        #[arg(long, env = "NANACHAT_OUTBOX_BYTES", value_name = "SIZE")]
        outbox_bytes: Bytes = Bytes(ConnectionConfig::default().outbox_bytes),
        /// Close a peer (4001) whose socket takes no data for this long while some waits.
        #[arg(long, env = "NANACHAT_WRITE_TIMEOUT", value_name = "TIME")]
        write_timeout: Time = Time(ConnectionConfig::default().write_timeout),
    }
}

settings! {
    /// How `nanachat connect` talks to a server.
    pub struct ConnectSettings {
        /// The server's URL.
        #[arg(env = "NANACHAT_URL", hide_env_values = true, value_name = "URL")]
        url: ServiceUrl = ServiceUrl("ws://127.0.0.1:8765".into()),
        /// Your nick (letters, digits, - and _) [default: $USER].
        #[arg(long, env = "NANACHAT_NICK", value_name = "NICK")]
        nick: String,
        /// A room to join at start (repeatable); the first is where your lines go.
        #[arg(long, env = "NANACHAT_JOIN", value_delimiter = ',', value_name = "ROOM")]
        join: Vec<String> = vec!["lobby".into()],
        /// Scripting mode: print the protocol's JSON objects instead of lines.
        #[arg(long, env = "NANACHAT_JSON", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        json: bool = false,
        /// No subprotocol: plain text frames in and out, for any WebSocket server.
        #[arg(long, env = "NANACHAT_RAW", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        raw: bool = false,
        /// Also send the seed's `!Client Send! <timestamp>` this often.
        #[arg(long, env = "NANACHAT_SEND_EVERY", value_name = "TIME")]
        send_every: Time,
        /// Give up when the connection drops instead of reconnecting.
        #[arg(long, env = "NANACHAT_NO_RECONNECT", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        no_reconnect: bool = false,
        /// Also trust the CA certificates in this PEM file (wss:// to a private CA).
        #[arg(long, env = "NANACHAT_CA_FILE", value_name = "PEM")]
        ca_file: PathBuf,
        /// A token for a server that wants one (`nanachat token`).
        #[arg(long, env = "NANACHAT_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        token: Secret,
        /// A file holding the token, read at start, on every reconnect and when the server
        /// says it expired (then sent in `refresh`): whatever rewrites it keeps the client in.
        #[arg(long, env = "NANACHAT_TOKEN_FILE", value_name = "FILE")]
        token_file: PathBuf,
        /// Where your key is kept: the secret that makes your nick yours, for good, on a
        /// server without tokens; made at first use, readable by you only [default:
        /// $XDG_CONFIG_HOME/nanachat/key, or ~/.config/nanachat/key].
        #[arg(long, env = "NANACHAT_KEY_FILE", value_name = "FILE")]
        key_file: PathBuf,
    }
}

impl ChatSettings {
    /// The chat configuration these settings make, checked.
    pub fn config(&self) -> Result<ChatConfig> {
        let config = ChatConfig {
            max_text_chars: self.max_text_chars(),
            rate_per_sec: self.rate(),
            rate_burst: self.burst(),
            max_rooms: self.max_rooms(),
            presence_limit: self.presence_limit(),
            room_ttl: self.room_ttl().0,
            heartbeat_interval: self.heartbeat().0,
            token_grace: self.token_grace().0,
            retention: Retention {
                max_age: self.retention_age().map(|t| t.0),
                max_messages: self.retention_messages().map(|n| n as u64),
            },
            ..ChatConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

impl ConnectionSettings {
    /// The connection configuration these settings make, checked.
    pub fn config(&self) -> Result<ConnectionConfig> {
        let config = ConnectionConfig {
            max_message_bytes: self.max_message_bytes().0,
            max_frame_bytes: self.max_frame_bytes().0,
            read_buffer_bytes: self.read_buffer_bytes().0,
            ping_interval: self.ping_interval().0,
            idle_timeout: self.idle_timeout().0,
            // Not given: the default, or two of the largest messages when they are larger.
            outbox_bytes: self.outbox_bytes.map_or_else(
                || self.outbox_bytes().0.max(2 * self.max_message_bytes().0),
                |b| b.0,
            ),
            write_timeout: self.write_timeout().0,
            ..ConnectionConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

impl ServerSettings {
    /// The server configuration these settings make over `connection`, checked (the TLS files
    /// are read here).
    pub fn config(&self, connection: ConnectionConfig) -> Result<ServerConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::server::tls_config(cert, key)?),
            (None, None) => None,
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        let config = ServerConfig {
            max_connections: self.max_connections(),
            shutdown_timeout: self.shutdown_timeout().0,
            handshake_timeout: self.handshake_timeout().0,
            max_handshakes: self.max_handshakes(),
            max_connections_per_ip: self.max_connections_per_ip(),
            connect_rate_per_ip: self.connect_rate_per_ip(),
            allowed_origins: self.allowed_origin().unwrap_or_default(),
            tls,
            connection,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The CA certificate file an option names, read now; naming one for a link that is not
/// there is refused with `unused`.
fn read_ca(
    path: Option<PathBuf>,
    link: bool,
    unused: &str,
    doing: &'static str,
) -> Result<Option<Vec<u8>>> {
    match path {
        Some(_) if !link => Err(Error::Config(unused.into())),
        Some(path) => std::fs::read(&path)
            .map(Some)
            .map_err(|err| Error::file(doing, &path, err)),
        None => Ok(None),
    }
}

impl SecretSettings {
    /// The token checker for the secret given, if one was.
    pub fn auth(&self) -> Result<Option<crate::auth::Auth>> {
        if [&self.token_issuer, &self.token_audience]
            .iter()
            .any(|v| v.as_deref() == Some(""))
        {
            return Err(Error::Config(
                "--token-issuer and --token-audience cannot be empty".into(),
            ));
        }
        let auth = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give --auth-secret or --auth-secret-file, not both".into(),
                ));
            }
            (Some(secret), None) => crate::auth::Auth::new(secret.0.as_bytes())?,
            (None, Some(path)) => crate::auth::Auth::from_file(path)?,
            (None, None) => {
                if self.token_issuer.is_some() || self.token_audience.is_some() {
                    return Err(Error::Config(
                        "--token-issuer and --token-audience need an auth secret".into(),
                    ));
                }
                return Ok(None);
            }
        };
        Ok(Some(auth.expecting(self.expect())))
    }

    /// What every token's `iss` and `aud` must be (an empty one is no rule: refused).
    pub fn expect(&self) -> crate::auth::Expect {
        crate::auth::Expect {
            issuer: self.token_issuer.clone(),
            audience: self.token_audience.clone(),
        }
    }
}

/// `nanachat serve`: every group of its settings, and where they may also come from.
#[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
pub struct ServeArgs {
    /// Where it listens and keeps history.
    #[command(flatten)]
    #[serde(flatten)]
    pub serve: ServeSettings,
    /// How it logs.
    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogSettings,
    /// Who may connect.
    #[command(flatten)]
    #[serde(flatten)]
    pub secret: SecretSettings,
    /// Chat limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub chat: ChatSettings,
    /// Server limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Connection limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub connection: ConnectionSettings,
    /// Webhooks.
    #[command(flatten)]
    #[serde(flatten)]
    pub webhook: WebhookSettings,
    /// A TOML file with any of these options (keys spelt with `_`); flags and variables win
    /// over it.
    #[arg(long, env = "NANACHAT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the settings, print them as a config file would hold them, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
}

impl ServeArgs {
    /// Every key of a `serve` config file.
    pub fn keys() -> Vec<&'static str> {
        [
            ServeSettings::KEYS,
            LogSettings::KEYS,
            SecretSettings::KEYS,
            ChatSettings::KEYS,
            ServerSettings::KEYS,
            ConnectionSettings::KEYS,
            WebhookSettings::KEYS,
        ]
        .concat()
    }

    /// These settings over `lower`'s (the command line over the file). A choice made here
    /// also overrides the other side of it made below: `--store` over the file's `memory`,
    /// `--auth-secret-file` over the file's `auth_secret`, and the other way round.
    pub fn or(self, mut lower: Self) -> Self {
        if self.serve.store.is_some() {
            lower.serve.memory = None;
        }
        if self.serve.memory == Some(true) {
            lower.serve.store = None;
            lower.serve.broker = None;
        }
        if self.secret.auth_secret.is_some() {
            lower.secret.auth_secret_file = None;
        }
        if self.secret.auth_secret_file.is_some() {
            lower.secret.auth_secret = None;
        }
        Self {
            serve: self.serve.or(lower.serve),
            log: self.log.or(lower.log),
            secret: self.secret.or(lower.secret),
            chat: self.chat.or(lower.chat),
            server: self.server.or(lower.server),
            connection: self.connection.or(lower.connection),
            webhook: self.webhook.or(lower.webhook),
            config: self.config,
            check_config: self.check_config,
        }
    }

    /// The command line merged over its `--config` file, if it names one.
    pub fn with_file(self) -> Result<Self> {
        match &self.config {
            Some(path) => {
                let file: Self = load_file(path, &Self::keys())?;
                Ok(self.or(file))
            }
            None => Ok(self),
        }
    }

    /// The checked plan of a chat server these settings describe (files they name, such as
    /// the auth secret and TLS keys, are read here; nothing is opened or bound yet).
    pub fn plan(&self) -> Result<ServePlan> {
        let serve = &self.serve;
        let store = serve.store().map(|url| url.0);
        let broker = serve.broker().map(|url| url.0);
        if let Some(url) = &store
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(Error::Config(format!(
                "--store takes a postgres://… URL, not '{}'",
                crate::config::redact_url(url)
            )));
        }
        if serve.memory() && store.is_some() {
            return Err(Error::Config("give --memory or --store, not both".into()));
        }
        if broker.is_some() && store.is_none() {
            return Err(Error::Config(
                "--broker needs a history all processes share: add --store postgres://…".into(),
            ));
        }
        // Everything that can be checked without touching the network or the disk.
        if let Some(url) = &store {
            crate::store::PgStore::parse_url(url)?;
        }
        if let Some(url) = &broker {
            crate::chat::Broker::parse_url(url)?;
        }
        let listen = Listen {
            addr: serve.addr(),
            reuse_port: serve.reuse_port(),
        };
        listen.host_port()?;
        let broker_ca = read_ca(
            serve.broker_ca_file(),
            broker.is_some(),
            "--broker-ca-file needs a rediss:// --broker",
            "read the broker's CA certificate from",
        )?;
        let store_ca = read_ca(
            serve.store_ca_file(),
            store.is_some(),
            "--store-ca-file needs a postgres://…?sslmode=verify-full --store",
            "read the store's CA certificate from",
        )?;
        let history = match store {
            Some(url) => History::Postgres {
                url,
                broker,
                store_ca,
                broker_ca,
            },
            None if serve.memory() => History::Memory,
            None => History::File(serve.data_dir()),
        };
        let server = self.server.config(self.connection.config()?)?;
        let mut chat = self.chat.config()?;
        chat.auth = self.secret.auth()?;
        chat.api_keys = match serve.api_key_file() {
            Some(file) => Some(std::sync::Arc::new(crate::chat::ApiKeys::from_file(&file)?)),
            None => None,
        };
        let webhooks = self.webhook.config()?;
        if webhooks.is_some() && matches!(history, History::Memory) {
            return Err(Error::Config(
                "--webhook-url needs a durable outbox: --memory keeps none (use --data-dir or --store)"
                    .into(),
            ));
        }
        Ok(ServePlan {
            listen,
            server,
            chat,
            history,
            webhooks,
        })
    }

    /// Every key with the value in force, as a config file would hold it; settings that are
    /// off are left out.
    pub fn effective(&self) -> String {
        let all = [
            self.serve.effective(),
            self.log.effective(),
            self.secret.effective(),
            self.chat.effective(),
            self.server.effective(),
            self.connection.effective(),
            self.webhook.effective(),
        ]
        .concat();
        to_file_text(&all)
    }
}

/// `nanachat connect`'s settings, and where they may also come from.
#[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
pub struct ConnectArgs {
    /// How to talk to the server.
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: ConnectSettings,
    /// How it logs.
    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogSettings,
    /// A TOML file with any of these options (keys spelt with `_`); flags and variables win
    /// over it.
    #[arg(long, env = "NANACHAT_CONNECT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the settings, print them as a config file would hold them, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
}

impl ConnectArgs {
    /// The checked client options and way of speaking these settings describe.
    pub fn plan(&self) -> Result<(ClientOptions, Speech)> {
        let c = &self.connect;
        let speech = Speech {
            json: c.json(),
            raw: c.raw(),
        };
        let (token, token_file) = match (c.token(), c.token_file()) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give --token or --token-file, not both".into(),
                ));
            }
            (Some(token), None) => (Some(token.0), None),
            // `--raw` speaks no protocol: no hello, no token.
            (None, Some(_)) if speech.raw => (None, None),
            (None, Some(path)) => (Some(crate::client::read_token(&path)?), Some(path)),
            (None, None) => (None, None),
        };
        // Without --nick, the token's own nick (its `sub`, read without verifying: the server
        // verifies it).
        let nick = c
            .nick()
            .or_else(|| token.as_deref().and_then(crate::client::token_sub))
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "guest".into());
        if !speech.raw && !valid_nick(&nick) {
            return Err(Error::Config(format!(
                "'{nick}' is not a nick: use 1 to 32 letters, digits, - or _ (--nick)"
            )));
        }
        let rooms = c.join();
        if let Some(bad) = rooms.iter().find(|r| !valid_room(r)) {
            return Err(Error::Config(format!(
                "'{bad}' is not a room name (--join)"
            )));
        }
        let send_every = c.send_every().map(|t| t.0);
        if send_every.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config("--send-every must be above 0".into()));
        }
        let mut target = Target::parse(&c.url().0)?;
        if let Some(path) = c.ca_file() {
            target = target.with_ca_file(&path)?;
        }
        let opts = ClientOptions {
            target,
            nick,
            rooms,
            send_every,
            reconnect: !c.no_reconnect(),
            commands: false,
            token,
            token_file,
            key_file: c.key_file().or_else(crate::client::default_key_file),
        };
        Ok((opts, speech))
    }

    /// The command line merged over its `--config` file, if it names one.
    pub fn with_file(self) -> Result<Self> {
        match &self.config {
            Some(path) => {
                let keys = [ConnectSettings::KEYS, LogSettings::KEYS].concat();
                let mut file: Self = load_file(path, &keys)?;
                // A token given here, either way, overrides the file's, either way.
                if self.connect.token.is_some() || self.connect.token_file.is_some() {
                    file.connect.token = None;
                    file.connect.token_file = None;
                }
                Ok(Self {
                    connect: self.connect.or(file.connect),
                    log: self.log.or(file.log),
                    ..self
                })
            }
            None => Ok(self),
        }
    }

    /// Every key with the value in force, as a config file would hold it.
    pub fn effective(&self) -> String {
        to_file_text(&[self.connect.effective(), self.log.effective()].concat())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn durations_and_sizes_print_as_they_are_written() {
        for text in [
            "3s", "250ms", "200ms", "25s", "0s", "1500ms", "30d", "12h", "90s",
        ] {
            assert_eq!(text.parse::<Time>().unwrap().to_string(), text);
        }
        for text in ["64KiB", "16MiB", "1000", "512"] {
            assert_eq!(text.parse::<Bytes>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn every_option_has_one_name_as_flag_variable_and_key() {
        let cmd = Serve::command();
        let keys: BTreeSet<&str> = ServeArgs::keys().into_iter().collect();
        let mut seen = BTreeSet::new();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if ["config", "check_config", "help"].contains(&id) {
                continue;
            }
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
            let env = format!("NANACHAT_{}", id.to_ascii_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "{id}"
            );
            assert!(keys.contains(id), "{id} is not a file key");
            seen.insert(id);
        }
        // The one key that is no flag of `serve`: the global --log-format.
        let missing: Vec<_> = keys.difference(&seen).collect();
        assert_eq!(missing, [&"log_format"]);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_valid_ones() {
        let err = parse_file::<ServeArgs>("colour = \"blue\"", &ServeArgs::keys()).unwrap_err();
        assert!(err.contains("unknown key `colour`"), "{err}");
        for key in ServeArgs::keys() {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn a_config_file_reads_as_people_write_it() {
        let c: ServeArgs = parse_file(
            "addr = \"0.0.0.0:9000\"\nheartbeat = \"3s\"\nmax_message_bytes = \"16KiB\"\nmax_frame_bytes = 4096\nrate = 5\nauth_secret_file = \"s\"\nlog_format = \"json\"\nallowed_origins = [\"https://a.example\"]\n",
            &ServeArgs::keys(),
        )
        .unwrap();
        assert_eq!(c.serve.addr.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(c.chat.heartbeat, Some(Time(Duration::from_secs(3))));
        assert_eq!(
            (
                c.connection.max_message_bytes,
                c.connection.max_frame_bytes,
                c.chat.rate
            ),
            (Some(Bytes(16384)), Some(Bytes(4096)), Some(5))
        );
        assert_eq!(c.secret.auth_secret_file, Some(PathBuf::from("s")));
        assert_eq!(c.log.log_format, Some(LogFormat::Json));
        assert_eq!(
            c.server.allowed_origin,
            Some(vec!["https://a.example".to_owned()])
        );
    }

    #[test]
    fn a_bad_config_file_gets_a_one_line_error() {
        for (text, expect) in [
            ("colour = \"blue\"", "unknown key"),
            ("heartbeat = \"soon\"", "not a duration"),
            ("rate = \"fast\"", "expected u32"),
            ("not toml at all", ""),
        ] {
            let err = parse_file::<ServeArgs>(text, &ServeArgs::keys()).unwrap_err();
            assert!(!err.contains('\n') && err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let flags = Serve::parse_from(["serve", "--rate", "7", "--memory"]).args;
        let file: ServeArgs = parse_file("rate = 3\nburst = 9\n", &ServeArgs::keys()).unwrap();
        let merged = flags.or(file);
        assert_eq!(merged.chat.rate(), 7);
        assert_eq!(merged.chat.burst(), 9);
        assert_eq!(merged.chat.max_rooms(), ChatConfig::default().max_rooms);
        assert!(merged.serve.memory());
        let off = Serve::parse_from(["serve", "--memory=false"]).args;
        assert!(!off.serve.memory());
    }
}
