//! Whose a nick is, on an open server (no tokens). A nick first used with a `key` is bound to
//! that key in the store, for good — salted and hashed here, never kept as it came — so that
//! only the key's holder ever takes it again; a nick bound to no key is anyone's once it is
//! free. Either way a holder reads a direct-message room of its nick only from where its
//! holding began ([`Floors`]): the rooms as they stood when the nick was bound, or — keyless —
//! when this connection took it. The hub applies that to everything it delivers, and `join`
//! and `history` read from there (see docs/protocol.md, "Whose a nick is").
//!
//! It is apart from the session because taking a nick is several steps against three
//! parties (the store's binding, the cluster's claim, the hub's table), in an order that
//! matters: a binding is checked before anything is held, so that trying a nick that is not
//! yours never keeps it from its holder; the nick is then held (in Redis and in the hub, its
//! direct messages not yet delivered to the connection) while the binding is made or checked
//! again and the floors are read, so that nobody else can take or bind it in between.

use data_encoding::HEXLOWER;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::warn;

use super::session::{Failure, Refusal, Session, refuse, unavailable};
use super::types::{Floors, nick_key, valid_nick};
use crate::Error;
use crate::protocol::{ErrorCode, ServerMsg};
use crate::store::{Membership, Store};

/// How a key is kept: `hmac-sha256:<salt>:<tag>`, the tag HMAC-SHA-256 of the key under a
/// random salt of [`SALT_BYTES`] (hex).
const SCHEME: &str = "hmac-sha256";
const SALT_BYTES: usize = 16;

/// What a key is kept as: salted and hashed. `None` if the system gave no randomness.
pub(super) fn hash_key(key: &str) -> Option<String> {
    let mut salt = [0u8; SALT_BYTES];
    SystemRandom::new().fill(&mut salt).ok()?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salt), key.as_bytes());
    Some(format!(
        "{SCHEME}:{}:{}",
        HEXLOWER.encode(&salt),
        HEXLOWER.encode(tag.as_ref())
    ))
}

/// Whether `key` is the one `hash` was made of (compared in constant time).
pub(super) fn key_matches(key: &str, hash: &str) -> bool {
    let mut parts = hash.split(':');
    let (Some(SCHEME), Some(salt), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(tag)) = (
        HEXLOWER.decode(salt.as_bytes()),
        HEXLOWER.decode(tag.as_bytes()),
    ) else {
        return false;
    };
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &salt),
        key.as_bytes(),
        &tag,
    )
    .is_ok()
}

/// The refusal of a nick bound to a key the client did not bring.
fn bound_to_a_key(nick: &str) -> Refusal {
    Refusal(
        ErrorCode::NickTaken,
        format!("{nick} is bound to a key (not the one given): only its holder may use it"),
    )
}

/// A store that cannot say whose a nick is: refused, to be tried again.
fn cannot_check(err: &Error) -> Refusal {
    warn!(cause = %err, "cannot check a nick's binding");
    Refusal(
        ErrorCode::Internal,
        "cannot check the nick now; retry".into(),
    )
}

/// Who asks for a nick: a client naming it, or the server giving a plain-text guest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Client,
    /// A guest's name is taken to be free when the cluster cannot be asked (as it always was):
    /// guests get in while Redis is down.
    Guest,
}

impl<S: Store> Session<S> {
    /// Takes `nick` for this connection on an open server (`hello`): not bound to another
    /// key, free in the cluster and here; then held while its binding is made (first use with
    /// a key) or checked again, and its direct messages reach the connection from where its
    /// holding begins. A refusal after the nick was held lets go of it again.
    pub(super) async fn take_nick(&self, nick: &str, key: Option<&str>) -> Result<(), Refusal> {
        self.take(nick, key, Asker::Client).await
    }

    /// Takes the name `nick` for a plain-text guest, as [`take_nick`](Self::take_nick) does
    /// (without a key), but taking it to be free when the cluster cannot be asked.
    pub(super) async fn take_guest_nick(&self, nick: &str) -> Result<(), Refusal> {
        self.take(nick, None, Asker::Guest).await
    }

    async fn take(&self, nick: &str, key: Option<&str>, asker: Asker) -> Result<(), Refusal> {
        let bound = self.nick_binding(nick).await?;
        if let Some(hash) = &bound
            && !key.is_some_and(|key| key_matches(key, hash))
        {
            return Err(bound_to_a_key(nick));
        }
        let free = match (self.claim(nick, key).await, asker) {
            (Ok(free), _) => free,
            (Err(_), Asker::Guest) => true,
            (Err(refusal), Asker::Client) => return Err(refusal),
        };
        if !free {
            return refuse(ErrorCode::NickTaken, format!("{nick} is taken"));
        }
        self.hub()
            .connect(self.id, nick, key, self.outbox.clone(), self.mode, None)
            .or_else(|code| refuse(code, format!("{nick} is taken")))?;
        match self.hold(nick, key, bound.is_none()).await {
            Ok(floors) => {
                self.hub().listen(self.id, floors);
                Ok(())
            }
            Err(refusal) => {
                self.hub().disconnect(self.id);
                Err(refusal)
            }
        }
    }

    /// `nick` (plain text: `/nick NAME`): another nick for this user, in place. Every
    /// connection of its nick here takes it, keeping its rooms but its old nick's
    /// direct-message rooms; each is told `renamed`. The new nick must be free, and not bound
    /// to a key other than the user's: a user with a key binds it to the key, as at `hello`
    /// (the old nick stays bound too: taking it back with `nick` reaches its direct
    /// messages). A refusal leaves the old nick in force.
    pub(super) async fn rename(&mut self, nick: &str) -> Result<(), Failure> {
        if self.claims.is_some() {
            refuse(
                ErrorCode::Unauthorized,
                "your nick is your token's: it cannot change (connect with a token for another nick)",
            )?;
        }
        if !valid_nick(nick) {
            refuse(
                ErrorCode::BadNick,
                "a nick is 1 to 32 letters, digits, - or _",
            )?;
        }
        let Some((me, key)) = self.hub().nick_and_key(self.id) else {
            return Err(Refusal(ErrorCode::HelloFirst, "say hello first".into()).into());
        };
        if me == nick {
            let same = ServerMsg::Renamed {
                from: me.clone(),
                to: me,
            };
            self.hub().send_each(&[self.id], &same);
            return Ok(());
        }
        // Its own nick in another case is its already (the hub checks nobody shares it).
        let own = nick_key(&me) == nick_key(nick);
        let mut bound = None;
        if !own {
            bound = self.nick_binding(nick).await?;
            if let Some(hash) = &bound
                && !key.as_deref().is_some_and(|key| key_matches(key, hash))
            {
                return Err(bound_to_a_key(nick).into());
            }
            if !self.claim(nick, key.as_deref()).await? {
                refuse(ErrorCode::NickTaken, format!("{nick} is taken"))?;
            }
            // Asked before the nick is taken, so that a refusal leaves the old one in force.
            if let Ok(Some((reason, secs))) = self.chat.directory.banned(nick).await {
                refuse(
                    ErrorCode::Forbidden,
                    format!("{nick} is banned for {secs} s more: {reason}"),
                )?;
            }
        }
        let at = crate::clock::now_ms();
        let renamed = self
            .hub()
            .rename(self.id, nick)
            .or_else(|code| refuse(code, format!("{nick} is taken")))?;
        let mut floors = Floors::default();
        if !own {
            // The user has let go of its old nick: if the new one turns out not to be its own
            // after all (bound meanwhile), this connection ends (the others keep the nick
            // until they next say hello).
            match self.hold(nick, key.as_deref(), bound.is_none()).await {
                Ok(held) => {
                    for conn in &renamed.conns {
                        self.hub().listen(*conn, held.clone());
                    }
                    floors = held;
                }
                Err(Refusal(_, why)) => return Err(Failure::Fatal(Error::Policy(why))),
            }
            if self
                .current
                .as_deref()
                .is_some_and(|room| room.starts_with('@'))
            {
                self.current = None;
            }
            if self.known {
                self.carry_read_state(&renamed.old, nick).await?;
            }
        }
        // The user's connections on the other processes follow (best effort: one that missed
        // it keeps the old nick, still the user's, until it next says hello).
        if let Err(err) = self
            .chat
            .directory
            .renamed(&renamed.old, nick, at, &floors)
            .await
        {
            warn!(cause = %err, "a rename not passed on to the other processes");
        }
        // Held now: a nick banned meanwhile ends the connection, as at hello.
        self.refuse_banned(nick).await.map_err(Failure::Fatal)?;
        let msg = ServerMsg::Renamed {
            from: renamed.old,
            to: nick.to_owned(),
        };
        self.hub().send_each(&renamed.conns, &msg);
        Ok(())
    }

    /// A known user's rooms and how far it read them move with it to its new nick: every room
    /// the old nick remembered (joined on any connection, or away), but its direct-message
    /// rooms, which stay the old nick's. Read positions never move back: a room the new nick
    /// remembered already keeps the further of the two. Remembered under the new nick before
    /// it is forgotten under the old, so that a failure between leaves it under both.
    async fn carry_read_state(&self, old: &str, nick: &str) -> Result<(), Failure> {
        let store = &self.chat.store;
        let rooms = store.inbox(old, Vec::new()).await.map_err(unavailable)?;
        for room in rooms.into_iter().filter(|r| !r.room.starts_with('@')) {
            let read_seq = room.state.read_seq;
            for change in [
                Membership::Remember { last_seq: read_seq },
                Membership::Read { seq: read_seq },
            ] {
                store
                    .membership(nick, &room.room, change)
                    .await
                    .map_err(unavailable)?;
            }
            store
                .membership(old, &room.room, Membership::Forget)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// On an open server, reserves `nick` for connections with `key` (in a cluster, on every
    /// process; a token's nick is its holder's everywhere: nothing to reserve). False: taken.
    pub(super) async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool, Refusal> {
        if self.chat.config.auth.is_some() {
            return Ok(true);
        }
        self.chat.directory.claim(nick, key).await.map_err(|err| {
            warn!(cause = %err, "cannot reserve a nick");
            Refusal(
                ErrorCode::Internal,
                "cannot reserve the nick now; retry".into(),
            )
        })
    }

    /// The hash of the key `nick` is bound to, if any.
    pub(super) async fn nick_binding(&self, nick: &str) -> Result<Option<String>, Refusal> {
        let store = &self.chat.store;
        store
            .nick_binding(&nick_key(nick))
            .await
            .map_err(|err| cannot_check(&err))
    }

    /// The nick this connection now holds is its own: bound to its key — bound to it now if
    /// `unbound` and it has one — or, without a key, to none. Returns where its reading of
    /// the nick's direct-message rooms starts.
    async fn hold(&self, nick: &str, key: Option<&str>, unbound: bool) -> Result<Floors, Refusal> {
        let bind = match key {
            Some(key) if unbound => Some(hash_key(key).ok_or_else(|| {
                Refusal(
                    ErrorCode::Internal,
                    "cannot bind the nick now; retry".into(),
                )
            })?),
            _ => None,
        };
        let holding = self
            .chat
            .store
            .take_nick(&nick_key(nick), bind)
            .await
            .map_err(|err| cannot_check(&err))?;
        match (&holding.key_hash, key) {
            // Bound to none (an operator may have just taken a binding away: the next hello
            // with the key binds it).
            (None, _) => {}
            (Some(hash), Some(key)) if key_matches(key, hash) => {}
            (Some(_), _) => return Err(bound_to_a_key(nick)),
        }
        Ok(Floors::new(holding.floors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_kept_salted_and_hashed_and_only_it_matches() {
        let one = hash_key("alice's key").unwrap();
        let two = hash_key("alice's key").unwrap();
        assert_ne!(
            one, two,
            "salted: the same key is kept differently each time"
        );
        assert!(!one.contains("alice"), "{one}");
        assert!(one.starts_with("hmac-sha256:"), "{one}");
        for hash in [&one, &two] {
            assert!(key_matches("alice's key", hash));
            assert!(!key_matches("alice's key ", hash));
            assert!(!key_matches("", hash));
        }
        for garbage in [
            "",
            "alice's key",
            "hmac-sha256:zz:zz",
            "md5:00:00",
            &one[..20],
        ] {
            assert!(!key_matches("alice's key", garbage), "{garbage}");
        }
    }
}
