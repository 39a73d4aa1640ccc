//! The kinds of value a setting holds, each read as people write it (`25s`, `64KiB`) from a
//! flag, a variable or a file, and written back the same way (`--help`, `--check-config`);
//! secrets and passwords are never written back.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{parse_bytes, parse_duration};

/// A value a setting can hold, written as in a TOML file.
pub trait Setting {
    /// The value as a TOML value (`"25s"`, `4000`, `true`, `["a", "b"]`).
    fn to_toml(&self) -> String;
}

pub(super) fn quoted(text: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::Value::from(text).to_string()
}

impl Setting for String {
    fn to_toml(&self) -> String {
        quoted(self)
    }
}

impl Setting for PathBuf {
    fn to_toml(&self) -> String {
        quoted(&self.to_string_lossy())
    }
}

/// Numbers and booleans are written in TOML as they print.
macro_rules! setting_as_printed {
    ($($ty:ty),*) => {$(
        impl Setting for $ty {
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

setting_as_printed!(bool, u32, usize);

impl Setting for Vec<String> {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| quoted(s)).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A duration as people write it: `3s`, `0.2s`, `250ms`, `2m`, `12h`, `30d` (a bare number is
/// seconds); written back in whole days or hours when it is some, else in seconds or ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub Duration);

impl FromStr for Time {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Time)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOUR: u128 = 3_600_000;
        const DAY: u128 = 24 * HOUR;
        let ms = self.0.as_millis();
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}s", self.0.as_secs_f64())
        } else if ms > 0 && ms.is_multiple_of(DAY) {
            write!(f, "{}d", ms / DAY)
        } else if ms > 0 && ms.is_multiple_of(HOUR) {
            write!(f, "{}h", ms / HOUR)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Setting for Time {
    fn to_toml(&self) -> String {
        quoted(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text_or_number(d, "a duration such as \"3s\" or \"250ms\"")
    }
}

/// A size in bytes as people write it: `65536`, `64KiB`, `16MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl FromStr for Bytes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_bytes(text).map(Bytes)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: usize = 1024 * 1024;
        match self.0 {
            0 => write!(f, "0"),
            n if n.is_multiple_of(MIB) => write!(f, "{}MiB", n / MIB),
            n if n.is_multiple_of(1024) => write!(f, "{}KiB", n / 1024),
            n => write!(f, "{n}"),
        }
    }
}

impl Setting for Bytes {
    fn to_toml(&self) -> String {
        quoted(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text_or_number(d, "a size such as 65536 or \"64KiB\"")
    }
}

/// Reads a value written as text or as a number (a config file may say `heartbeat = 3` or
/// `"3s"`) the way the command line reads it; anything else is refused saying what is expected.
fn text_or_number<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct Visitor<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            text.parse().map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
    }
    d.deserialize_any(Visitor(expecting, std::marker::PhantomData))
}

/// A secret (auth secret, token): never shown, not even by `--check-config`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl Setting for Secret {
    fn to_toml(&self) -> String {
        quoted("***")
    }
}

/// The URL of a service (PostgreSQL, Redis): shown with its password replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ServiceUrl(pub String);

impl FromStr for ServiceUrl {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(ServiceUrl(text.to_owned()))
    }
}

impl Setting for ServiceUrl {
    fn to_toml(&self) -> String {
        quoted(&crate::config::redact_url(&self.0))
    }
}

impl Setting for Vec<ServiceUrl> {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(Setting::to_toml).collect();
        format!("[{}]", items.join(", "))
    }
}

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Setting for LogFormat {
    fn to_toml(&self) -> String {
        quoted(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}
