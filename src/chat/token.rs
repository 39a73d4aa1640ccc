//! A connection's token over time: when it expires, the grace after that, and the secrets
//! being re-read (SIGHUP). The session holds one [`HeldToken`] per authenticated connection
//! and waits on [`HeldToken::next`] beside its reads; what each event means on the wire
//! (`token_expired`, a close with 4003) is decided there, in `session.rs`.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::auth::{Auth, Claims};

/// What happened to a held token.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TokenEvent {
    /// It reached its `exp`: the grace begins.
    Expired,
    /// The grace ended without a fresh token.
    GraceOver,
    /// It no longer verifies after the secrets were re-read; the reason says why.
    Revoked(String),
}

/// The token a connection is let in with, and its clock.
#[derive(Debug)]
pub(super) struct HeldToken {
    token: String,
    /// The next moment that matters: `exp`, then the end of the grace; none for a token
    /// without `exp`.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Past `exp`: only `refresh` is served.
    expired: bool,
    grace: Duration,
    auth: Auth,
    changes: watch::Receiver<u64>,
}

impl HeldToken {
    /// Holds `token` (which `auth` verified into `claims`); after its `exp`, `grace` to
    /// refresh it.
    pub(super) fn new(auth: &Auth, token: String, claims: &Claims, grace: Duration) -> Self {
        let deadline = claims.exp.map(|exp| Box::pin(sleep_until(instant_of(exp))));
        // Checked once more as soon as it is held: the secrets may have been re-read between
        // its verification and now, and that change would otherwise count as seen.
        let mut changes = auth.subscribe();
        changes.mark_changed();
        Self {
            token,
            deadline,
            expired: false,
            grace,
            auth: auth.clone(),
            changes,
        }
    }

    /// Whether the token has expired (and not been refreshed).
    pub(super) fn expired(&self) -> bool {
        self.expired
    }

    /// Waits for the next thing that happens to the token (forever, for a token without
    /// `exp` whose secrets are never re-read). Cancel-safe.
    pub(super) async fn next(&mut self) -> TokenEvent {
        loop {
            tokio::select! {
                () = async { self.deadline.as_mut().expect("checked").await }, if self.deadline.is_some() => {
                    if self.expired {
                        self.deadline = None;
                        return TokenEvent::GraceOver;
                    }
                    self.expired = true;
                    let end = Instant::now() + self.grace;
                    if let Some(deadline) = self.deadline.as_mut() {
                        deadline.as_mut().reset(end);
                    }
                    return TokenEvent::Expired;
                }
                // It cannot fail: `self.auth` keeps the sender.
                _ = self.changes.changed() => {
                    if let Err(why) = self.auth.verify_signed(&self.token) {
                        return TokenEvent::Revoked(why);
                    }
                }
            }
        }
    }
}

/// The moment `exp` (seconds since the Unix epoch) comes, on Tokio's clock.
fn instant_of(exp: u64) -> Instant {
    let now_ms = crate::clock::now_ms().max(0) as u64;
    let left = exp.saturating_mul(1000).saturating_sub(now_ms);
    Instant::now() + Duration::from_millis(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"a secret of more than sixteen bytes").expect("long enough")
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expires_then_its_grace_ends() {
        let auth = auth();
        let claims = Claims {
            exp: Some(crate::clock::now_secs() + 2),
            ..Claims::for_nick("nana")
        };
        let token = auth.mint(&claims);
        let mut held = HeldToken::new(&auth, token, &claims, Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(held.next().await, TokenEvent::Expired);
        assert!(held.expired());
        assert!(start.elapsed() <= Duration::from_secs(2));
        assert_eq!(held.next().await, TokenEvent::GraceOver);
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_reload_that_drops_the_tokens_secret_revokes_it() {
        let dir = std::env::temp_dir().join(format!("nanachat-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        let write = |text: &str| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        };
        write("old secret, sixteen bytes or more\n");
        let auth = Auth::from_file(&file).unwrap();
        let claims = Claims::for_nick("nana");
        let token = auth.mint(&claims);
        let mut held = HeldToken::new(&auth, token, &claims, Duration::from_secs(30));
        // A new secret first, the old one kept: the token still verifies.
        write("new secret, sixteen bytes or more\nold secret, sixteen bytes or more\n");
        assert_eq!(auth.reload().unwrap(), 2);
        let quiet = tokio::time::timeout(Duration::from_millis(200), held.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        // The old one taken out: revoked.
        write("new secret, sixteen bytes or more\n");
        assert_eq!(auth.reload().unwrap(), 1);
        let event = tokio::time::timeout(Duration::from_secs(5), held.next())
            .await
            .unwrap();
        assert_eq!(event, TokenEvent::Revoked("bad token signature".into()));

        // Verified, then the secrets re-read, then held (a refresh racing a SIGHUP): held, it
        // is checked against the secrets in force and revoked at once.
        write("old secret, sixteen bytes or more\nnew secret, sixteen bytes or more\n");
        auth.reload().unwrap();
        let token = auth.mint(&claims);
        assert!(auth.verify(&token, 0).is_ok());
        write("new secret, sixteen bytes or more\n");
        auth.reload().unwrap();
        let mut held = HeldToken::new(&auth, token, &claims, Duration::from_secs(30));
        let event = tokio::time::timeout(Duration::from_secs(5), held.next())
            .await
            .unwrap();
        assert_eq!(event, TokenEvent::Revoked("bad token signature".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
