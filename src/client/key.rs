//! The client's key: the secret it says `hello` with, which makes its nick its own on a server
//! without tokens — for good: the server binds a nick to the first key used with it (see
//! docs/protocol.md, "Whose a nick is"). So the key must outlive the run: it is kept in a file
//! (`--key-file`, by default `$XDG_CONFIG_HOME/nanachat/key` or `~/.config/nanachat/key`),
//! made at first use with random bytes, readable by its owner only — as the browser client
//! keeps its key in the page's local storage.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

/// Random bytes in a new key (32 characters of base64url).
const KEY_BYTES: usize = 24;

/// Where the key is kept unless told: `$XDG_CONFIG_HOME/nanachat/key`, else
/// `$HOME/.config/nanachat/key`; `None` with neither set.
pub fn default_key_file() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let config =
        absolute("XDG_CONFIG_HOME").or_else(|| absolute("HOME").map(|h| h.join(".config")))?;
    Some(config.join("nanachat").join("key"))
}

/// The key kept in `path`, made (and the folders to it) if there is none yet.
pub(crate) fn load_or_make(path: &Path) -> Result<String> {
    match read(path)? {
        Some(key) => Ok(key),
        None => make(path),
    }
}

/// The key in `path`; `None` if there is no such file.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim() {
            "" => Err(Error::Config(format!(
                "the key file {} is empty: delete it to have a new key made",
                path.display()
            ))),
            key => Ok(Some(key.to_owned())),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::file("read the key file", path, err)),
    }
}

/// Makes a key in `path`: written whole to a file of its own, then linked into place, so that
/// two clients starting at once end up with the one key (the second reads the first's).
fn make(path: &Path) -> Result<String> {
    let mut bytes = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Config("no randomness to make a key from".into()))?;
    let key = data_encoding::BASE64URL_NOPAD.encode(&bytes);
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|err| Error::file("create the key's folder", dir, err))?;
    }
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(format!(".{}", std::process::id()));
    let scratch = PathBuf::from(scratch);
    let written = write_private(&scratch, &key);
    let linked = written.and_then(|()| std::fs::hard_link(&scratch, path));
    let _ = std::fs::remove_file(&scratch);
    match linked {
        Ok(()) => Ok(key),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read(path)?
            .ok_or_else(|| Error::Config(format!("the key file {} went away", path.display()))),
        Err(err) => Err(Error::file("write the key file", path, err)),
    }
}

/// Writes `key` to a new file only its owner may read (0600 on Unix).
fn write_private(path: &Path, key: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{key}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("nanachat-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("deep").join("key");
        let key = load_or_make(&path).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(load_or_make(&path).unwrap(), key, "the same key every run");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = load_or_make(&dir.join("other")).unwrap();
        assert_ne!(other, key);
        std::fs::write(&path, "\n").unwrap();
        assert!(
            load_or_make(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
