//! The library's one error type, the one place where errors become WebSocket close codes
//! ([`Error::close_code`]) and the one place where they become exit codes
//! ([`Error::exit_code`]).
//!
//! Errors on the wire carry what the peer is told; errors that come from something else (a file,
//! a service, the OS) keep it as their `#[source]`, so the cause is never flattened into text.
//! Everything below `main.rs` returns [`Result`]; the binary prints the error's one line.

use tokio_tungstenite::tungstenite;
use tungstenite::protocol::frame::coding::CloseCode;

/// Close code for a peer whose outbox overflowed: it read too slowly. It may reconnect and resume.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;

/// Close code for a connection the server's operator ended (`POST /api/v1/users/{nick}/disconnect`);
/// the reason says why. Reconnecting is refused while a ban lasts.
pub const CLOSE_DISCONNECTED: u16 = 4004;

/// Close code for a connection whose token ended: it expired and no fresh one came within the
/// grace, or it no longer verifies (its secret was rotated out). Reconnect with a new token.
pub const CLOSE_TOKEN_ENDED: u16 = 4003;

/// What can go wrong on a nanachat connection or while starting a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the WebSocket protocol (bad frame, bad opcode, unmasked client frame…).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A text message was not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A message or frame was larger than the configured limit.
    #[error("message too big: {0}")]
    TooBig(String),
    /// The peer stopped answering: nothing arrived within the idle timeout.
    #[error("idle timeout: nothing received for {0:?}")]
    IdleTimeout(std::time::Duration),
    /// The peer broke a rule of the application (e.g. kept exceeding the rate limit).
    #[error("policy violation: {0}")]
    Policy(String),
    /// The peer does not read what is sent: its outbox went past its budget, or its socket
    /// took no data for the write timeout.
    #[error("slow consumer: it did not read what was sent (closed with 4001)")]
    SlowConsumer,
    /// The connection's token ended (closed with 4003): the reason says how.
    #[error("{0}")]
    TokenEnded(String),
    /// The server's operator ended the connection, or its nick is banned (closed with 4004):
    /// the reason says which.
    #[error("{0}")]
    Disconnected(String),
    /// The connection is already closed (or its writer has stopped); nothing more can be sent.
    #[error("connection closed")]
    Closed,
    /// A URL, address or option given by the user is not valid.
    #[error("{0}")]
    Config(String),
    /// A file the user named cannot be used: a config file, a secret, a certificate, the data
    /// directory, a report to write.
    #[error("cannot {doing} {}: {source}", path.display())]
    File {
        /// What we tried, as in "cannot *read the auth secret from* FILE".
        doing: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A service named at start (the history store, the Redis broker) cannot be used.
    #[error("cannot use {what}: {source}{hint}")]
    Service {
        /// Which service, as the user named it (passwords redacted).
        what: String,
        /// Why not.
        #[source]
        source: Box<Error>,
        /// What the user may do about it, if we know (starts with a space).
        hint: &'static str,
    },
    /// A benchmark found its run wrong: lost or duplicated deliveries, a worker that failed.
    #[error("bench: {0}")]
    Bench(String),
    /// One of our own values could not be written as JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The WebSocket handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The server refused us for good (nick taken, closed for a policy violation).
    #[error("{0}")]
    Refused(String),
    /// The history store (or the broker) failed: disk full, a lost link, an overloaded writer.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// An I/O error from the socket or the listener, said without the OS's number
    /// ("connection refused", not "Connection refused (os error 111)").
    #[error("{}", io_said(.0))]
    Io(#[from] std::io::Error),
}

/// An I/O error as a person reads it: the system's words, lower case, without "(os error N)".
pub(crate) fn io_said(err: &std::io::Error) -> String {
    const MARK: &str = " (os error ";
    let mut text = err.to_string();
    let mut from = 0;
    // Every " (os error N)" goes, wherever it stands (an error may quote another, then add a
    // hint of its own after it).
    while let Some(at) = text[from..].find(MARK).map(|at| from + at) {
        let digits = &text[at + MARK.len()..];
        let n = digits.bytes().take_while(u8::is_ascii_digit).count();
        if n > 0 && digits.as_bytes().get(n) == Some(&b')') {
            text.replace_range(at..at + MARK.len() + n + 1, "");
        } else {
            from = at + MARK.len();
        }
    }
    let text = text.as_str();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if chars.clone().next().is_some_and(char::is_lowercase) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_owned(),
    }
}

/// Why the history store or the broker failed; the cause stays attached as its source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed (`message` has the server's own words, which the error's
    /// `Display` leaves out).
    #[error("PostgreSQL: {message}")]
    Postgres {
        /// What the server said, or the error's own text.
        message: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Redis refused or failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A link (to PostgreSQL or Redis) is down and waits out its back-off before the next try.
    #[error("{0} is unreachable; retrying")]
    Unreachable(String),
    /// Connecting a link failed just now.
    #[error("cannot reach {what}: {source}")]
    Reconnect {
        /// The service, passwords redacted.
        what: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A batch of writes failed as one; every job of it gets this same cause.
    #[error("{0}")]
    Batch(std::sync::Arc<Error>),
    /// The writer's queue is full.
    #[error("the store is overloaded")]
    Overloaded,
    /// Retention pruned messages a replay had promised (`joined` said the resume was gapless
    /// from there): the replay stops rather than skip them.
    #[error("{room}: messages after {after} were pruned during the replay; resume again")]
    PrunedDuringReplay {
        /// The room.
        room: String,
        /// The last seq replayed.
        after: u64,
    },
    /// The writer has stopped.
    #[error("the store's writer has stopped")]
    Stopped,
    /// A blocking read task died.
    #[error("read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::Store(err.into())
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Store(err.into())
    }
}

/// `Result` with nanachat's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The close code (and reason) that ends a connection because of this error, if the error
    /// is one the peer should be told about. `None` means the link is gone or the error is ours
    /// to report elsewhere.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(_) => Some(CloseCode::Protocol),
            Error::InvalidUtf8 => Some(CloseCode::Invalid),
            Error::TooBig(_) => Some(CloseCode::Size),
            Error::IdleTimeout(_) => Some(CloseCode::Away),
            Error::Policy(_) => Some(CloseCode::Policy),
            Error::SlowConsumer => Some(CloseCode::Library(CLOSE_SLOW_CONSUMER)),
            Error::TokenEnded(_) => Some(CloseCode::Library(CLOSE_TOKEN_ENDED)),
            Error::Disconnected(_) => Some(CloseCode::Library(CLOSE_DISCONNECTED)),
            Error::Closed | Error::Io(_) => None,
            Error::Config(_)
            | Error::File { .. }
            | Error::Service { .. }
            | Error::Bench(_)
            | Error::Json(_)
            | Error::Handshake(_)
            | Error::Store(_)
            | Error::Refused(_) => Some(CloseCode::Error),
        }
    }

    /// The process exit code this error ends `nanachat` with: 2 for bad usage or configuration
    /// (including a file or service named at start that cannot be used), 3 when a server
    /// refused us for good, 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::File { .. } | Error::Service { .. } => 2,
            Error::Refused(_) => 3,
            _ => 1,
        }
    }

    /// A file the user named cannot be used for `doing` ("read the auth secret from").
    pub fn file(
        doing: &'static str,
        path: &std::path::Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::File {
            doing,
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// The service `what` cannot be used, because of `source`.
    pub fn service(what: impl Into<String>, source: impl Into<Error>) -> Self {
        Error::Service {
            what: what.into(),
            source: Box::new(source.into()),
            hint: "",
        }
    }

    /// Whether the error means the transport is gone, so no close frame can be sent.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Closed | Error::Io(_))
    }
}

impl From<tungstenite::Error> for Error {
    fn from(err: tungstenite::Error) -> Self {
        use tungstenite::error::{CapacityError, ProtocolError};
        match err {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Error::Closed
            }
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Error::Closed
            }
            tungstenite::Error::Io(io) => Error::Io(io),
            tungstenite::Error::Utf8(_) => Error::InvalidUtf8,
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Error::TooBig(format!("{size} bytes, limit {max_size}"))
            }
            tungstenite::Error::Capacity(other) => Error::TooBig(other.to_string()),
            tungstenite::Error::WriteBufferFull(_) => Error::SlowConsumer,
            tungstenite::Error::Protocol(p) => Error::Protocol(p.to_string()),
            tungstenite::Error::Url(u) => Error::Config(format!("bad URL: {u}")),
            tungstenite::Error::Http(resp) => {
                // The server's one-line reason (ours say which limit and which flag), if any.
                let reason = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .and_then(|body| Some(body.lines().next()?.trim().to_owned()))
                    .filter(|line| !line.is_empty())
                    .map(|line| format!(": {}", line.chars().take(200).collect::<String>()))
                    .unwrap_or_default();
                Error::Handshake(format!("server answered HTTP {}{reason}", resp.status()))
            }
            other => Error::Handshake(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_said_without_the_os_number() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(Error::Io(refused).to_string(), "connection refused");
        let custom = std::io::Error::other("TLS here (os error x) or not");
        assert_eq!(
            Error::Io(custom).to_string(),
            "TLS here (os error x) or not"
        );
        let wrapped = std::io::Error::other(format!(
            "cannot listen on 127.0.0.1:1: {} (use --reuse-port)",
            std::io::Error::from_raw_os_error(98)
        ));
        assert_eq!(
            Error::Io(wrapped).to_string(),
            "cannot listen on 127.0.0.1:1: Address already in use (use --reuse-port)"
        );
    }

    #[test]
    fn exit_codes_are_documented_ones() {
        assert_eq!(Error::Config("x".into()).exit_code(), 2);
        assert_eq!(Error::Refused("x".into()).exit_code(), 3);
        assert_eq!(Error::Io(std::io::Error::other("x")).exit_code(), 1);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let file = Error::file("read", std::path::Path::new("/nowhere"), missing);
        assert_eq!(file.exit_code(), 2);
        assert!(
            std::error::Error::source(&file).is_some(),
            "the cause is kept"
        );
        assert_eq!(Error::Bench("1 lost".into()).exit_code(), 1);
    }
}
