//! Settings files and help: reading a TOML file against the keys a command knows (an unknown
//! key is refused with the list of valid ones), writing settings back as such a file, and
//! showing each default in `--help`.

use std::collections::BTreeSet;
use std::path::Path;

use super::{
    ChatSettings, ConnectSettings, ConnectionSettings, LogSettings, SecretSettings, ServeSettings,
    ServerSettings,
};
use crate::{Error, Result};

pub(super) fn to_file_text(all: &[(&'static str, Option<String>)]) -> String {
    all.iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key} = {v}\n")))
        .collect()
}

/// Reads a TOML settings file: an unknown key is refused with the list of valid ones, a bad
/// value by its key; every error is one line naming the file.
pub fn load_file<T: serde::de::DeserializeOwned>(path: &Path, keys: &[&str]) -> Result<T> {
    // A settings file is small: stop at 1 MiB, so that /dev/zero or a mistaken path to a big
    // file is refused instead of read to the end.
    const MAX_FILE_BYTES: u64 = 1 << 20;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| {
            use std::io::Read;
            file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)
        })
        .map_err(|err| Error::file("read config file", path, err))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::file(
            "read config file",
            path,
            "larger than 1MiB: not a settings file",
        ));
    }
    parse_file(&text, keys)
        .map_err(|why| Error::Config(format!("config file {}: {why}", path.display())))
}

/// Parses the text of a settings file; the error is one line.
pub fn parse_file<T: serde::de::DeserializeOwned>(text: &str, keys: &[&str]) -> Result<T, String> {
    let table: toml::Table = toml::from_str(text).map_err(|err| one_line(&err.to_string()))?;
    let valid: BTreeSet<&str> = keys.iter().copied().collect();
    // Old spellings still read (serde aliases), though the list shows the current ones.
    let aliases = ["allowed_origins"];
    if let Some(bad) = table
        .keys()
        .find(|k| !valid.contains(k.as_str()) && !aliases.contains(&k.as_str()))
    {
        let list: Vec<&str> = valid.into_iter().collect();
        return Err(format!(
            "unknown key `{bad}`; valid keys: {}",
            list.join(", ")
        ));
    }
    for (key, value) in &table {
        // Each key alone first, so that a bad value is reported with its key.
        let one: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
        toml::Value::Table(one)
            .try_into::<T>()
            .map_err(|err| format!("{key}: {}", one_line(&err.to_string())))?;
    }
    toml::Value::Table(table)
        .try_into::<T>()
        .map_err(|err| one_line(&err.to_string()))
}

/// toml's messages span several lines (where, a snippet, what): keep where and what.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let place = lines.next().unwrap_or("invalid TOML");
    match lines.next_back() {
        Some(what) => format!("{place}: {}", what.trim_start_matches(['|', '^', ' '])),
        None => place.to_owned(),
    }
}

/// Every setting's default as `--help` shows it, by its argument id.
pub fn help_defaults() -> Vec<(&'static str, String)> {
    [
        ServeSettings::defaults(),
        LogSettings::defaults(),
        SecretSettings::defaults(),
        ChatSettings::defaults(),
        ServerSettings::defaults(),
        ConnectionSettings::defaults(),
        ConnectSettings::defaults(),
    ]
    .concat()
    .into_iter()
    .filter_map(|(key, value)| {
        let value = value?;
        (value != "false").then(|| (key, value.trim_matches('"').replace("\", \"", ",")))
    })
    .collect()
}

/// Adds `[default: …]` to the help of every setting in `cmd` and its subcommands that has a
/// default (clap's own `default_value` would fill the field, and a file could not override it).
pub fn show_defaults(mut cmd: clap::Command) -> clap::Command {
    let defaults = help_defaults();
    let ids: Vec<(String, Option<String>, Option<String>)> = cmd
        .get_arguments()
        .filter(|a| a.get_default_values().is_empty())
        .map(|a| {
            (
                a.get_id().to_string(),
                a.get_help().map(ToString::to_string),
                a.get_long_help().map(ToString::to_string),
            )
        })
        .collect();
    for (id, help, long_help) in ids {
        let Some((_, default)) = defaults.iter().find(|(key, _)| *key == id) else {
            continue;
        };
        let suffix = format!(" [default: {default}]");
        cmd = cmd.mut_arg(&id, |a| {
            let a = match help {
                Some(help) => a.help(help + &suffix),
                None => a,
            };
            match long_help {
                Some(long) => a.long_help(long + &suffix),
                None => a,
            }
        });
    }
    cmd.mut_subcommands(show_defaults)
}
