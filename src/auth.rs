//! Token auth: HS256 JSON Web Tokens, signed with a secret the server and whoever mints the
//! tokens share (`nanachat token`).
//!
//! A token's `sub` is the nick it may use; `exp` (seconds since the Unix epoch), if present,
//! is when it stops working, `nbf` when it starts; `rooms`, if present, lists the rooms it may
//! join (direct messages to and from the nick are always allowed); `iss` and `aud` are checked
//! when the server is told what they must be. Other claims are ignored. Only `HS256` is
//! accepted: a token that names another algorithm (`none` included) is refused.
//!
//! The secrets rotate: a secret file holds one per line, the first signs and every one
//! verifies, and [`Auth::reload`] re-reads it (the server does on SIGHUP), telling everyone who
//! [subscribed](Auth::subscribe) so that open connections check their tokens again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The nick.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<u64>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience: one, or several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The rooms it may join; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Where its holder is a moderator (may edit and delete anyone's messages): `true` for
    /// every room, or a list of rooms.
    #[serde(default, rename = "mod", skip_serializing_if = "Option::is_none")]
    pub moderates: Option<Moderates>,
}

/// A token's `mod`: every room, or some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Moderates {
    /// `true`: every room (`false`: none).
    All(bool),
    /// These rooms.
    Rooms(Vec<String>),
}

/// A token's `aud`: a string or a list of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A JWT NumericDate (RFC 7519 §2): seconds since the epoch, which may have a fraction
/// (dropped) or be negative (before 1970: 0).
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = n.as_u64() {
        return Ok(Some(n));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(Some(if f <= 0.0 { 0 } else { f.floor() as u64 })),
        _ => Err(serde::de::Error::custom("a date is a number of seconds")),
    }
}

impl Claims {
    /// Claims for `sub`, nothing else.
    pub fn for_nick(sub: impl Into<String>) -> Self {
        Self {
            sub: sub.into(),
            exp: None,
            nbf: None,
            iss: None,
            aud: None,
            rooms: None,
            moderates: None,
        }
    }

    /// Whether these claims make their holder a moderator of `room`.
    pub fn moderates(&self, room: &str) -> bool {
        match &self.moderates {
            Some(Moderates::All(all)) => *all,
            Some(Moderates::Rooms(rooms)) => rooms.iter().any(|r| r == room),
            None => false,
        }
    }

    /// Whether these claims let their holder join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

/// The shortest secret accepted: HS256 with less than 16 bytes of secret is guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// What a token's `iss` and `aud` must be, when the server is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// The one issuer accepted.
    pub issuer: Option<String>,
    /// The audience a token must name.
    pub audience: Option<String>,
}

/// Signs and checks tokens with a set of secrets that can be re-read. Clones share them.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// The first signs; all verify.
    keys: RwLock<Arc<Vec<hmac::Key>>>,
    /// The file they came from, re-read by [`Auth::reload`].
    file: Option<PathBuf>,
    expect: Expect,
    /// Bumped at each reload.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &"<secret>")
            .field("file", &self.inner.file)
            .field("expect", &self.inner.expect)
            .finish()
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// Extensions the token says must be understood (RFC 7515 §4.1.11): none are.
    crit: Option<serde_json::Value>,
}

/// The secrets in `text`: one per line, trailing whitespace (and a `\r`) not part of one, blank
/// lines skipped. At least one, each at least [`MIN_SECRET_BYTES`].
fn parse_secrets(text: &[u8]) -> Result<Vec<hmac::Key>> {
    let secrets: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii_end)
        .filter(|line| !line.is_empty())
        .collect();
    if secrets.is_empty() {
        return Err(Error::Config(
            "no auth secret given (the file is empty)".into(),
        ));
    }
    if let Some(n) = secrets.iter().position(|s| s.len() < MIN_SECRET_BYTES) {
        return Err(Error::Config(format!(
            "the auth secret{} must be at least {MIN_SECRET_BYTES} bytes",
            if secrets.len() > 1 {
                format!(" on line {} of the secrets", n + 1)
            } else {
                String::new()
            }
        )));
    }
    Ok(secrets
        .into_iter()
        .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
        .collect())
}

/// The auth secrets' file: refused if others may read it.
const SECRET_FILE: crate::config::SecretFile = crate::config::SecretFile {
    holds: "auth secret",
    reading: "read the auth secret from",
};

impl Auth {
    /// Tokens signed with `secret`: one secret per line (the first signs, all verify);
    /// trailing whitespace, as from a file, is not part of one.
    pub fn new(secret: &[u8]) -> Result<Self> {
        Self::build(parse_secrets(secret)?, None, Expect::default())
    }

    /// The secrets in `path` (see [`Auth::new`]), re-read by [`Auth::reload`]. A file that
    /// group or others may read is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let keys = parse_secrets(&SECRET_FILE.read(path)?)
            .map_err(|err| Error::Config(format!("{}: {err}", path.display())))?;
        Self::build(keys, Some(path.to_owned()), Expect::default())
    }

    /// The same secrets, with `iss` and `aud` checked as `expect` says.
    pub fn expecting(self, expect: Expect) -> Self {
        let keys = self.keys();
        Self::build(keys.as_ref().clone(), self.inner.file.clone(), expect)
            .expect("keys already checked")
    }

    fn build(keys: Vec<hmac::Key>, file: Option<PathBuf>, expect: Expect) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(Arc::new(keys)),
                file,
                expect,
                changed: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    fn keys(&self) -> Arc<Vec<hmac::Key>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The file the secrets come from, if they do.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// Re-reads the secret file and tells the subscribers; how many secrets it now holds. On
    /// an error (unreadable, open to others, no valid secret) the old secrets stay.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.inner.file else {
            return Ok(self.keys().len());
        };
        let keys = parse_secrets(&SECRET_FILE.read(path)?)
            .map_err(|err| Error::Config(format!("{}: {err}", path.display())))?;
        let n = keys.len();
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        self.inner.changed.send_modify(|n| *n += 1);
        Ok(n)
    }

    /// A receiver that sees a change at every reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The issuer and audience a token must name here (a token minted for this server
    /// names them).
    pub fn expected(&self) -> &Expect {
        &self.inner.expect
    }

    /// A signed token carrying `claims`, signed with the first secret.
    pub fn mint(&self, claims: &Claims) -> String {
        let b64 = data_encoding::BASE64URL_NOPAD;
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let signing_input = format!("{}.{}", b64.encode(HEADER.as_bytes()), b64.encode(&payload));
        let keys = self.keys();
        let tag = hmac::sign(&keys[0], signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(tag.as_ref()))
    }

    /// Checks a token's signature, algorithm, issuer, audience and its times at `now`
    /// (seconds since the Unix epoch: `exp`, `nbf`); the error says why, fit to send back.
    pub fn verify(&self, token: &str, now: u64) -> std::result::Result<Claims, String> {
        let claims = self.verify_signed(token)?;
        if claims.exp.is_some_and(|exp| exp <= now) {
            return Err("token expired".into());
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err("token not valid yet (nbf)".into());
        }
        Ok(claims)
    }

    /// As [`Auth::verify`], but not its times: whether the token is still one of ours (after
    /// the secrets were re-read).
    pub fn verify_signed(&self, token: &str) -> std::result::Result<Claims, String> {
        let b64 = data_encoding::BASE64URL_NOPAD;
        let mut parts = token.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token: expected three dot-separated parts".into());
        };
        let decode = |part: &str| {
            b64.decode(part.as_bytes())
                .map_err(|_| "malformed token: not base64url".to_owned())
        };
        let head: Header = serde_json::from_slice(&decode(header)?)
            .map_err(|_| "malformed token: bad header".to_owned())?;
        if head.alg != "HS256" {
            return Err(format!(
                "token algorithm {} is not accepted (HS256 only)",
                head.alg
            ));
        }
        if head.crit.is_some() {
            return Err(
                "the token's header names critical extensions (crit): none are supported".into(),
            );
        }
        let signing_input = &token.trim()[..header.len() + 1 + payload.len()];
        let signature = decode(signature)?;
        let keys = self.keys();
        if !keys
            .iter()
            .any(|key| hmac::verify(key, signing_input.as_bytes(), &signature).is_ok())
        {
            return Err("bad token signature".into());
        }
        let claims: serde_json::Value = serde_json::from_slice(&decode(payload)?)
            .map_err(|err| format!("malformed token claims: {err}"))?;
        if !claims.is_object() {
            return Err("malformed token claims: not a JSON object".into());
        }
        let claims: Claims = serde_json::from_value(claims)
            .map_err(|err| format!("malformed token claims: {err}"))?;
        let expect = &self.inner.expect;
        if let Some(issuer) = &expect.issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(format!("the token's issuer (iss) is not {issuer}"));
        }
        if let Some(audience) = &expect.audience {
            let named = match &claims.aud {
                Some(Audience::One(one)) => one == audience,
                Some(Audience::Many(many)) => many.contains(audience),
                None => false,
            };
            if !named {
                return Err(format!(
                    "the token's audience (aud) does not name {audience}"
                ));
            }
        }
        Ok(claims)
    }
}

pub use crate::clock::now_secs;

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"a secret of more than sixteen bytes").expect("long enough")
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let claims = Claims {
            exp: Some(2_000),
            rooms: Some(vec!["lobby".into()]),
            ..Claims::for_nick("nana")
        };
        let token = auth().mint(&claims);
        assert_eq!(auth().verify(&token, 1_000), Ok(claims.clone()));
        assert!(claims.may_join("lobby") && !claims.may_join("ops"));
        assert_eq!(auth().verify(&token, 2_000), Err("token expired".into()));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let claims = Claims::for_nick("nana");
        let token = auth().mint(&claims);
        let other = Auth::new(b"another secret, also long enough").unwrap();
        assert_eq!(other.verify(&token, 0), Err("bad token signature".into()));
        // The payload swapped for another nick, the signature kept.
        let b64 = data_encoding::BASE64URL_NOPAD;
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(br#"{"sub":"root"}"#),
            parts[2]
        );
        assert_eq!(auth().verify(&forged, 0), Err("bad token signature".into()));
        // alg none, unsigned.
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(br#"{"sub":"root"}"#)
        );
        assert!(
            auth()
                .verify(&none, 0)
                .unwrap_err()
                .contains("not accepted")
        );
        assert!(
            auth()
                .verify("garbage", 0)
                .unwrap_err()
                .starts_with("malformed")
        );
        assert!(Auth::new(b"short").is_err());
    }

    /// The header is the standard one, byte for byte, so other JWT libraries read our tokens
    /// (tests/auth.rs checks one minted by Python's standard library the other way round).
    #[test]
    fn standard_tokens_verify() {
        let auth = Auth::new(b"your-256-bit-secret-for-nanachat").unwrap();
        let claims = Claims {
            exp: Some(4_102_444_800),
            ..Claims::for_nick("alice")
        };
        let token = auth.mint(&claims);
        let header = token.split('.').next().unwrap();
        // The standard header, byte for byte: {"alg":"HS256","typ":"JWT"}.
        assert_eq!(header, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
        assert_eq!(auth.verify(&token, 0).unwrap().sub, "alice");
    }

    #[test]
    fn nbf_iss_and_aud_are_checked() {
        let claims = Claims {
            nbf: Some(1_000),
            ..Claims::for_nick("nana")
        };
        let token = auth().mint(&claims);
        assert_eq!(
            auth().verify(&token, 999),
            Err("token not valid yet (nbf)".into())
        );
        assert!(auth().verify(&token, 1_000).is_ok());

        let strict = auth().expecting(Expect {
            issuer: Some("https://auth.example.org".into()),
            audience: Some("chat".into()),
        });
        let plain = auth().mint(&Claims::for_nick("nana"));
        assert!(strict.verify(&plain, 0).unwrap_err().contains("issuer"));
        let good = |aud: Audience| Claims {
            iss: Some("https://auth.example.org".into()),
            aud: Some(aud),
            ..Claims::for_nick("nana")
        };
        for aud in [
            Audience::One("chat".into()),
            Audience::Many(vec!["other".into(), "chat".into()]),
        ] {
            assert!(strict.verify(&auth().mint(&good(aud)), 0).is_ok());
        }
        let wrong = good(Audience::Many(vec!["other".into()]));
        assert!(
            strict
                .verify(&auth().mint(&wrong), 0)
                .unwrap_err()
                .contains("audience")
        );
        let other_issuer = Claims {
            iss: Some("https://evil.example".into()),
            ..good(Audience::One("chat".into()))
        };
        assert!(
            strict
                .verify(&auth().mint(&other_issuer), 0)
                .unwrap_err()
                .contains("issuer")
        );
    }

    #[test]
    fn dates_may_have_fractions_and_crit_or_a_non_object_is_refused() {
        let b64 = data_encoding::BASE64URL_NOPAD;
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"a secret of more than sixteen bytes");
        let sign = |header: &str, payload: &str| {
            let input = format!(
                "{}.{}",
                b64.encode(header.as_bytes()),
                b64.encode(payload.as_bytes())
            );
            let tag = hmac::sign(&key, input.as_bytes());
            format!("{input}.{}", b64.encode(tag.as_ref()))
        };
        let claims = auth()
            .verify(
                &sign(HEADER, r#"{"sub":"nana","exp":2000.5,"nbf":-1}"#),
                1_000,
            )
            .unwrap();
        assert_eq!((claims.exp, claims.nbf), (Some(2_000), Some(0)));
        let array = auth().verify(&sign(HEADER, r#"["nana"]"#), 0);
        assert!(array.unwrap_err().contains("not a JSON object"));
        let crit = sign(r#"{"alg":"HS256","crit":["exp"]}"#, r#"{"sub":"nana"}"#);
        assert!(auth().verify(&crit, 0).unwrap_err().contains("crit"));
    }

    #[test]
    fn several_secrets_the_first_signs_all_verify() {
        let both = Auth::new(b"the new secret, long enough\r\n\nthe old secret, long enough too\n")
            .unwrap();
        let old = Auth::new(b"the old secret, long enough too").unwrap();
        let new = Auth::new(b"the new secret, long enough").unwrap();
        let claims = Claims::for_nick("nana");
        assert!(both.verify(&old.mint(&claims), 0).is_ok());
        assert!(both.verify(&new.mint(&claims), 0).is_ok());
        // Signed with the first.
        assert!(new.verify(&both.mint(&claims), 0).is_ok());
        assert!(old.verify(&both.mint(&claims), 0).is_err());
        // Every line must be a secret of its own length.
        assert!(Auth::new(b"a secret of more than sixteen bytes\nshort\n").is_err());
        assert!(Auth::new(b"\n\n").is_err());
    }
}
