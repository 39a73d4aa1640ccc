//! Configuration structs. Every number a user sees (sizes, limits, timings) has its one source of
//! truth in a `Default` here; the command line only overrides them, and [`ConnectionConfig::validate`]
//! checks them once at start.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Error, Result};

/// Limits and timers of one WebSocket connection, the same for every handler.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest message accepted from a peer, after reassembling its frames (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Largest single frame accepted from a peer (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Size of tungstenite's per-connection read buffer. Small, because most connections are
    /// idle and tungstenite keeps all of it touched; reads from the socket go through the
    /// per-thread read-ahead buffer ([`crate::transport::ReadAhead`]) and stay large.
    pub read_buffer_bytes: usize,
    /// Bytes the writer gathers before it writes to the socket; a flush writes them regardless.
    pub write_buffer_bytes: usize,
    /// Payload bytes that may wait in a connection's outbox: live messages past it make the
    /// peer a slow consumer (closed with 4001); the connection's own replies wait at half of it.
    pub outbox_bytes: usize,
    /// A peer whose socket takes no data for this long, while some waits to be written, is a
    /// slow consumer: closed with 4001.
    pub write_timeout: Duration,
    /// Most messages the writer feeds before one flush.
    pub max_batch: usize,
    /// Interval of our own pings; `Duration::ZERO` sends none.
    pub ping_interval: Duration,
    /// A peer from which nothing (not even a pong) arrives for this long is closed.
    pub idle_timeout: Duration,
    /// How long the close handshake may take before the socket is dropped.
    pub close_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 8 * 1024,
            outbox_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_batch: 64,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// The largest message or frame limit a server may be given: beyond it one peer could make the
/// server allocate more than a machine has.
pub const MAX_LIMIT_BYTES: usize = 1 << 30;

/// The largest per-connection read buffer: it is allocated for every connection.
pub const MAX_READ_BUFFER_BYTES: usize = 1 << 20;

impl ConnectionConfig {
    /// Checks the values against each other; a one-line error names the first one that is off.
    pub fn validate(&self) -> Result<()> {
        if self.max_message_bytes == 0 || self.max_frame_bytes == 0 {
            return Err(Error::Config(
                "max message and frame bytes must be above 0".into(),
            ));
        }
        if self.max_message_bytes > MAX_LIMIT_BYTES || self.max_frame_bytes > MAX_LIMIT_BYTES {
            return Err(Error::Config(format!(
                "max message and frame bytes must be at most {MAX_LIMIT_BYTES} (1GiB)"
            )));
        }
        if !(256..=MAX_READ_BUFFER_BYTES).contains(&self.read_buffer_bytes) {
            return Err(Error::Config(format!(
                "read buffer must be from 256 bytes to {MAX_READ_BUFFER_BYTES} (1MiB)"
            )));
        }
        // Replies wait at half the budget, so half must hold the largest one.
        let least = 2 * self.max_message_bytes;
        if self.outbox_bytes < least {
            return Err(Error::Config(format!(
                "the outbox must hold at least two of the largest messages: {least} bytes \
                 (2 x max message bytes), got {}",
                self.outbox_bytes
            )));
        }
        if self.outbox_bytes > MAX_LIMIT_BYTES {
            return Err(Error::Config(format!(
                "the outbox may hold at most {MAX_LIMIT_BYTES} bytes (1GiB)"
            )));
        }
        if self.max_batch == 0 {
            return Err(Error::Config("the writer's batch must be above 0".into()));
        }
        if self.write_timeout.is_zero() {
            return Err(Error::Config("write timeout must be above 0".into()));
        }
        if !self.ping_interval.is_zero() && self.idle_timeout <= self.ping_interval {
            return Err(Error::Config(format!(
                "idle timeout ({:?}) must be longer than the ping interval ({:?})",
                self.idle_timeout, self.ping_interval
            )));
        }
        if self.close_timeout.is_zero() {
            return Err(Error::Config("close timeout must be above 0".into()));
        }
        Ok(())
    }

    /// The tungstenite settings these limits imply.
    pub fn websocket_config(&self) -> WebSocketConfig {
        // The write buffer may hold one whole outgoing message (plus its 14-byte frame header)
        // on top of what is gathered for a batch; beyond that tungstenite refuses to buffer.
        let max_write =
            self.write_buffer_bytes + self.max_message_bytes.max(self.max_frame_bytes) + 14;
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            .write_buffer_size(self.write_buffer_bytes)
            .max_write_buffer_size(max_write)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }
}

/// Parses a duration as people write it: `3s`, `0.2s`, `250ms`, `2m`, `12h`, `30d`, or a bare
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (try 3s, 0.2s or 250ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m, h or d)"
            ));
        }
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a size: `65536`, `64KiB`, `64k`, `16MiB`, `16M`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 65536, 64KiB or 16MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_holds_two_of_the_largest_messages_and_at_most_a_gib() {
        let with = |outbox_bytes| ConnectionConfig {
            outbox_bytes,
            ..ConnectionConfig::default()
        };
        let largest = ConnectionConfig::default().max_message_bytes;
        assert!(with(2 * largest).validate().is_ok());
        let err = with(2 * largest - 1).validate().unwrap_err().to_string();
        assert!(err.contains("two of the largest messages"), "{err}");
        assert!(with(MAX_LIMIT_BYTES + 1).validate().is_err());
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn defaults_validate_and_bad_timers_do_not() {
        assert!(ConnectionConfig::default().validate().is_ok());
        let bad = ConnectionConfig {
            idle_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(2),
            ..ConnectionConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("idle timeout")
        );
    }
}

/// A URL (or a `key=value` connection string) with every secret in it replaced by `***`, for
/// logs, errors and `--check-config`: the password of `user:password@`, and the values of
/// query or `key=value` parameters whose name speaks of a password, a token, a secret or a key.
/// Text that is neither (a bare word might itself be a password) is all `***`.
pub fn redact_url(url: &str) -> String {
    fn secret_key(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        ["pass", "token", "secret", "key", "auth"]
            .iter()
            .any(|word| key.contains(word))
    }
    fn redact_pairs(text: &str, separator: char) -> String {
        text.split(separator)
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if secret_key(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(&separator.to_string())
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('=') {
            redact_pairs(url, ' ')
        } else {
            "***".to_owned()
        };
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(redact_pairs(query, '&'))),
        None => (rest, None),
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{user}:***@{host}")
        }
        _ => authority.to_owned(),
    };
    let mut shown = format!("{scheme}://{authority}");
    if let Some(path) = path {
        shown = format!("{shown}/{path}");
    }
    if let Some(query) = query {
        shown = format!("{shown}?{query}");
    }
    shown
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact_url("postgres://nana:secret@db:5432/chat"),
            "postgres://nana:***@db:5432/chat"
        );
        assert_eq!(
            redact_url("redis://:secret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("postgres://nana@db/chat"),
            "postgres://nana@db/chat"
        );
        assert_eq!(redact_url("host=db user=nana"), "host=db user=nana");
        assert_eq!(
            redact_url("host=db password=hunter2 user=nana"),
            "host=db password=*** user=nana"
        );
        assert_eq!(
            redact_url("postgres://db/chat?password=hunter2&sslmode=off"),
            "postgres://db/chat?password=***&sslmode=off"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/s?pass=hunter2"),
            "redis+unix:///tmp/s?pass=***"
        );
        assert_eq!(
            redact_url("ws://ann:pw@h:1/?token=T&room=a"),
            "ws://ann:***@h:1/?token=***&room=a"
        );
        assert_eq!(redact_url("hunter2"), "***");
    }
}

/// A file of secrets: the auth secrets, the webhook secret, the API keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretFile {
    /// What it holds, as errors name it ("auth secret").
    pub(crate) holds: &'static str,
    /// What reading it is, for [`Error::file`] ("read the auth secret from").
    pub(crate) reading: &'static str,
}

impl SecretFile {
    /// Reads `path`, refusing a file that group or others may read or write, as ssh does with
    /// keys: whoever can read a secret can sign tokens, forge webhooks or use the API.
    pub(crate) fn read(self, path: &std::path::Path) -> Result<Vec<u8>> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta =
                std::fs::metadata(path).map_err(|err| Error::file(self.reading, path, err))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "{} file {} is open to other users (mode {mode:04o}): `chmod 600 {}`",
                    self.holds,
                    path.display(),
                    path.display()
                )));
            }
        }
        std::fs::read(path).map_err(|err| Error::file(self.reading, path, err))
    }

    /// [`read`](Self::read), as text.
    pub(crate) fn read_text(self, path: &std::path::Path) -> Result<String> {
        String::from_utf8(self.read(path)?).map_err(|_| {
            Error::Config(format!(
                "{} file {} is not UTF-8 text",
                self.holds,
                path.display()
            ))
        })
    }
}
