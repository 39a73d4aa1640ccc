//! Token auth: HS256 JSON Web Tokens, signed with a secret the server and whoever mints the
//! tokens share (`nanachat token`).
//!
//! A token's `sub` is the nick it may use; `exp` (seconds since the Unix epoch), if present,
//! is when it stops working; `rooms`, if present, lists the rooms it may join (direct messages
//! to and from the nick are always allowed). Other claims are ignored. Only `HS256` is
//! accepted: a token that names another algorithm (`none` included) is refused.

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The nick.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// The rooms it may join; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

impl Claims {
    /// Whether these claims let their holder join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

/// The shortest secret accepted: HS256 with less than 16 bytes of secret is guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Auth {
    key: hmac::Key,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { key: <secret> }")
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

impl Auth {
    /// Tokens signed with `secret` (trailing whitespace, as from a file, is not part of it).
    pub fn new(secret: &[u8]) -> Result<Self> {
        let secret = secret.trim_ascii_end();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(Error::Config(format!(
                "the auth secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A signed token carrying `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let b64 = data_encoding::BASE64URL_NOPAD;
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let signing_input = format!("{}.{}", b64.encode(HEADER.as_bytes()), b64.encode(&payload));
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(tag.as_ref()))
    }

    /// Checks a token's signature, algorithm and expiry at `now` (seconds since the Unix
    /// epoch); the error says why, fit to send back.
    pub fn verify(&self, token: &str, now: u64) -> std::result::Result<Claims, String> {
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
        let signing_input = &token.trim()[..header.len() + 1 + payload.len()];
        hmac::verify(&self.key, signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| "bad token signature".to_owned())?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?)
            .map_err(|err| format!("malformed token claims: {err}"))?;
        if claims.exp.is_some_and(|exp| exp <= now) {
            return Err("token expired".into());
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
            sub: "nana".into(),
            exp: Some(2_000),
            rooms: Some(vec!["lobby".into()]),
        };
        let token = auth().mint(&claims);
        assert_eq!(auth().verify(&token, 1_000), Ok(claims.clone()));
        assert!(claims.may_join("lobby") && !claims.may_join("ops"));
        assert_eq!(auth().verify(&token, 2_000), Err("token expired".into()));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let claims = Claims {
            sub: "nana".into(),
            exp: None,
            rooms: None,
        };
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
            sub: "alice".into(),
            exp: Some(4_102_444_800),
            rooms: None,
        };
        let token = auth.mint(&claims);
        let header = token.split('.').next().unwrap();
        // The standard header, byte for byte: {"alg":"HS256","typ":"JWT"}.
        assert_eq!(header, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
        assert_eq!(auth.verify(&token, 0).unwrap().sub, "alice");
    }
}
