//! The backend's HTTP API, under `/api/v1/` on the chat's own port (`--api-key-file`): post,
//! page, edit and delete messages, list rooms and members, read a user's inbox, disconnect and
//! ban a user, mint tokens. Every write goes through the same store and directory as the
//! WebSocket protocol's, so an API message takes the room's next seq, is delivered to members
//! (on every process of a cluster), replayed after `since` and deduplicated by `cid`.
//!
//! One rule for every answer: JSON; an error is `{"code", "message"}` with the protocol's codes
//! where they fit (`docs/api.md`, `docs/openapi.json`). Requests are read here, not by axum's
//! extractors, so that a malformed, oversized or mistyped body gets that rule too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::history::count_reactions;
use super::session::{Inner, Settled, settle, text_refusal};
use super::types::{chat_message, dm_pair, inbox_entry, valid_nick, valid_room};
use crate::auth::{Audience, Claims, Moderates};
use crate::protocol::{ErrorCode, InboxEntry, MAX_CID_BYTES, RoomInfo};
use crate::store::{Append, MAX_PAGE, Op, Page, Store};
use crate::{Error, Result};

/// The OpenAPI 3.1 document of this API, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The longest a minted token may live: 30 days.
const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

/// The longest ban: a year.
const MAX_BAN_SECONDS: u64 = 365 * 24 * 3600;

/// The API keys a server accepts (`--api-key-file`: one per line), re-read on SIGHUP. Kept as
/// SHA-256 digests and compared in constant time; never logged.
#[derive(Debug)]
pub struct ApiKeys {
    file: PathBuf,
    digests: RwLock<Vec<[u8; 32]>>,
}

impl ApiKeys {
    /// Reads the keys in `file`: one per line, blank lines and `#` comments skipped; at least
    /// one, each of 16 characters or more.
    pub fn from_file(file: &Path) -> Result<Self> {
        let keys = Self {
            file: file.to_owned(),
            digests: RwLock::new(Vec::new()),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// The file the keys are read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Reads the file again; on an error the keys in force stay. How many keys it holds.
    pub fn reload(&self) -> Result<usize> {
        let text = crate::config::SecretFile {
            holds: "API key",
            reading: "read",
        }
        .read_text(&self.file)?;
        let mut digests = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < 16 {
                return Err(Error::Config(format!(
                    "{}: line {}: an API key has at least 16 characters",
                    self.file.display(),
                    n + 1
                )));
            }
            digests.push(digest(key));
        }
        if digests.is_empty() {
            return Err(Error::Config(format!(
                "{}: no API key in it (one per line)",
                self.file.display()
            )));
        }
        let count = digests.len();
        *self.digests.write().unwrap_or_else(|p| p.into_inner()) = digests;
        Ok(count)
    }

    /// Whether `key` is one of the keys, compared in constant time (digests of equal length,
    /// every byte of every key looked at).
    fn allows(&self, key: &str) -> bool {
        let presented = digest(key);
        let digests = self.digests.read().unwrap_or_else(|p| p.into_inner());
        digests.iter().fold(false, |found, d| {
            let diff = d
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (diff == 0)
        })
    }
}

fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An answer that is not a success: a status, a code and a sentence.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

type Answer = std::result::Result<Response, Refusal>;

fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn bad(code: ErrorCode, message: impl Into<String>) -> Refusal {
    let status = match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NoSuchMessage => StatusCode::NOT_FOUND,
        ErrorCode::CidReused | ErrorCode::MessageDeleted | ErrorCode::Unchanged => {
            StatusCode::CONFLICT
        }
        ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    refusal(status, code.as_str(), message)
}

fn unavailable(err: Error) -> Refusal {
    tracing::warn!(cause = %err, "api: the store or broker failed");
    bad(
        ErrorCode::Internal,
        "the store or the broker did not answer; retry",
    )
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message });
        (self.status, json_body(&body)).into_response()
    }
}

fn json_body(value: &Value) -> ([(header::HeaderName, HeaderValue); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
}

fn ok(value: Value) -> Answer {
    Ok((StatusCode::OK, json_body(&value)).into_response())
}

/// What every handler of the API shares.
struct Api<S> {
    chat: Arc<Inner<S>>,
    keys: Arc<ApiKeys>,
}

type Shared<S> = State<Arc<Api<S>>>;

/// The API's routes (to be nested under `/api/v1`), or `None` when the server has no API keys.
/// A request's body must be in within `body_timeout` of its head.
pub(super) fn router<S: Store>(chat: &Arc<Inner<S>>, body_timeout: Duration) -> Option<Router> {
    let keys = chat.config.api_keys.clone()?;
    let api = Arc::new(Api {
        chat: chat.clone(),
        keys,
    });
    let limit = chat.max_message_bytes;
    let routes = Router::new()
        .route("/rooms", get(rooms::<S>))
        .route(
            "/rooms/{room}/messages",
            post(post_message::<S>).get(messages::<S>),
        )
        .route(
            "/rooms/{room}/messages/{seq}",
            patch(edit_message::<S>).delete(delete_message::<S>),
        )
        .route("/rooms/{room}/members", get(members::<S>))
        .route("/users/{nick}/inbox", get(inbox::<S>))
        .route("/users/{nick}/disconnect", post(disconnect::<S>))
        .route("/users/{nick}/ban", delete(unban::<S>))
        .route("/tokens", post(mint::<S>))
        // The key first (the layer added last runs first): a stranger's body is never read.
        .route_layer(middleware::from_fn(move |req, next| {
            read_body(limit, body_timeout, req, next)
        }))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorized::<S>))
        // The document describes the API; it holds no secret.
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(api);
    Some(routes)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.to_owned(),
    )
        .into_response()
}

async fn not_found() -> Refusal {
    refusal(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: see /api/v1/openapi.json",
    )
}

async fn wrong_method() -> Refusal {
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method: see /api/v1/openapi.json",
    )
}

/// Reads the whole body before the route's handler runs: one over `limit` bytes (the
/// protocol's frame limit) is refused with 413 before it is all in memory, one that takes
/// longer than `deadline` to come with 408, and a body on a `GET` or `DELETE` (which take
/// none: their arguments are in the path and query) with 400.
async fn read_body(limit: usize, deadline: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a request body is at most {limit} bytes"),
        )
        .into_response()
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not come within {deadline:?} of the request head"),
            )
            .into_response();
        }
    };
    let bodiless =
        parts.method == axum::http::Method::GET || parts.method == axum::http::Method::DELETE;
    if bodiless && !bytes.is_empty() {
        return bad(
            ErrorCode::BadMessage,
            "this route takes no body: its arguments go in the path and the query",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Lets a request on only with `Authorization: Bearer KEY` naming one of the keys.
async fn authorized<S: Store>(State(api): Shared<S>, req: Request, next: Next) -> Response {
    let mut headers = req.headers().get_all(header::AUTHORIZATION).iter();
    let (first, second) = (headers.next(), headers.next());
    if second.is_some() {
        return refusal(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
            "send one Authorization header",
        )
        .into_response();
    }
    // The scheme in any case (RFC 9110 §11.1), then spaces or tabs.
    let presented = first
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once([' ', '\t']))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        None => refusal(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
            "send an API key: Authorization: Bearer KEY",
        )
        .into_response(),
        Some(key) if !api.keys.allows(key) => refusal(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden.as_str(),
            "that is not one of this server's API keys",
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

/// A JSON body of type `T`: `application/json`, no unknown field.
fn body<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> std::result::Result<T, Refusal> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| {
        bad(
            ErrorCode::BadMessage,
            format!("the body is not what this route takes: {err}"),
        )
    })
}

/// The query's `name=value` pairs, percent-decoded.
fn query(raw: Option<String>) -> std::result::Result<Vec<(String, String)>, Refusal> {
    let mut pairs = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = (decode(name), decode(value));
        match decoded {
            (Some(name), Some(value)) => pairs.push((name, value)),
            _ => {
                return Err(bad(
                    ErrorCode::BadMessage,
                    "the query is not percent-encoded UTF-8",
                ));
            }
        }
    }
    Ok(pairs)
}

fn decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Takes the query parameters `known` allows, refusing any other or any repeated.
fn params<'a>(
    raw: Option<String>,
    known: &[&'a str],
) -> std::result::Result<Vec<(&'a str, String)>, Refusal> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    for (name, value) in query(raw)? {
        let Some(&name) = known.iter().find(|k| **k == name) else {
            return Err(bad(
                ErrorCode::BadMessage,
                match known {
                    [] => format!("unknown query parameter {name:?}: this route takes none"),
                    _ => format!("unknown query parameter {name:?}: this route takes {known:?}"),
                },
            ));
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad(ErrorCode::BadMessage, format!("{name} given twice")));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// A path's parameters, or the JSON refusal for one that is not UTF-8 once decoded.
fn path_of<T>(
    path: std::result::Result<UrlPath<T>, PathRejection>,
) -> std::result::Result<T, Refusal> {
    path.map(|UrlPath(p)| p).map_err(|err| {
        bad(
            ErrorCode::BadMessage,
            format!("the path is not one this route takes: {}", err.body_text()),
        )
    })
}

/// Refuses any query on a route that takes none (an argument sent there would be ignored).
fn no_query(raw: Option<String>) -> std::result::Result<(), Refusal> {
    params(raw, &[]).map(|_| ())
}

fn number(params: &[(&str, String)], name: &str) -> std::result::Result<Option<u64>, Refusal> {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| {
            v.parse::<u64>().map_err(|_| {
                bad(
                    ErrorCode::BadMessage,
                    format!("{name} is a whole number, not {v:?}"),
                )
            })
        })
        .transpose()
}

fn text_of(params: &[(&str, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.clone())
}

fn check_room(room: &str) -> std::result::Result<(), Refusal> {
    if valid_room(room) {
        Ok(())
    } else {
        Err(bad(
            ErrorCode::BadRoom,
            "a room is 1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn check_nick(nick: &str) -> std::result::Result<(), Refusal> {
    if valid_nick(nick) {
        Ok(())
    } else {
        Err(bad(
            ErrorCode::BadNick,
            "a nick is 1 to 32 letters, digits, - or _",
        ))
    }
}

/// Who an API message or change is from: a nick, or a system sender `~name` (a nick after
/// the `~`) that no user can hold — nicks never have a `~`. `~system` when not told.
fn sender(from: Option<String>) -> std::result::Result<String, Refusal> {
    let from = from.unwrap_or_else(|| "~system".to_owned());
    if valid_nick(from.strip_prefix('~').unwrap_or(&from)) {
        Ok(from)
    } else {
        Err(bad(
            ErrorCode::BadNick,
            "from is a nick (1 to 32 letters, digits, - or _) or a system sender ~NICK",
        ))
    }
}

fn check_cid(cid: Option<&str>) -> std::result::Result<(), Refusal> {
    match cid {
        Some(cid) if cid.is_empty() || cid.len() > MAX_CID_BYTES => Err(bad(
            ErrorCode::BadMessage,
            format!("a cid is 1 to {MAX_CID_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

impl<S: Store> Api<S> {
    fn check_text(&self, text: &str) -> std::result::Result<(), Refusal> {
        match text_refusal(text, self.chat.config.max_text_chars) {
            Some((code, message)) => Err(bad(code, message)),
            None => Ok(()),
        }
    }

    /// Stores an append (a message or a moderator's change) and delivers it as the protocol
    /// does; answers with its seq once it is durable.
    async fn append(&self, append: Append) -> Answer {
        let room = append.room.clone();
        let directory = &self.chat.directory;
        directory
            .open_room(&room, None)
            .await
            .map_err(unavailable)?;
        // Held until delivered, as a session's append (an idle sweep must not drop it).
        directory.hub().begin_append(&room);
        let cid = append.cid.clone();
        let outcome = self.chat.store.append(append).await;
        let answer = match settle(&self.chat, &room, cid.as_deref(), outcome) {
            Settled::Stored { seq, duplicate } => {
                ok(json!({ "room": room, "seq": seq, "duplicate": duplicate }))
            }
            Settled::Refused(code, message) => Err(bad(code, message)),
            Settled::Failed(err) => Err(unavailable(err)),
        };
        directory.hub().end_append(&room);
        answer
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    from: Option<String>,
    text: String,
    cid: String,
    reply_to: Option<u64>,
}

async fn post_message<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let room = path_of(path)?;
    no_query(raw)?;
    check_room(&room)?;
    let new: NewMessage = body(&headers, &bytes)?;
    let from = sender(new.from)?;
    api.check_text(&new.text)?;
    check_cid(Some(&new.cid))?;
    api.append(Append {
        room,
        from,
        text: new.text,
        cid: Some(new.cid),
        op: Op::Say {
            reply_to: new.reply_to,
        },
        moderator: false,
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    from: Option<String>,
    text: String,
    cid: Option<String>,
}

async fn edit_message<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let (room, seq) = path_of(path)?;
    no_query(raw)?;
    check_room(&room)?;
    let target = seq_of(&seq)?;
    let edit: Edit = body(&headers, &bytes)?;
    let from = sender(edit.from)?;
    api.check_text(&edit.text)?;
    check_cid(edit.cid.as_deref())?;
    api.append(Append {
        room,
        from,
        text: edit.text,
        cid: edit.cid,
        op: Op::Edit { target },
        moderator: true,
    })
    .await
}

async fn delete_message<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let (room, seq) = path_of(path)?;
    check_room(&room)?;
    let target = seq_of(&seq)?;
    let params = params(raw, &["from", "cid"])?;
    let from = sender(text_of(&params, "from"))?;
    let cid = text_of(&params, "cid");
    check_cid(cid.as_deref())?;
    api.append(Append {
        room,
        from,
        text: String::new(),
        cid,
        op: Op::Delete { target },
        moderator: true,
    })
    .await
}

fn seq_of(seq: &str) -> std::result::Result<u64, Refusal> {
    seq.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
        bad(
            ErrorCode::BadMessage,
            format!("a seq is a whole number above 0, not {seq:?}"),
        )
    })
}

async fn messages<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let room = path_of(path)?;
    check_room(&room)?;
    let params = params(raw, &["before", "after", "limit"])?;
    let page = match (number(&params, "before")?, number(&params, "after")?) {
        (Some(_), Some(_)) => {
            return Err(bad(ErrorCode::BadMessage, "give before or after, not both"));
        }
        (Some(seq), None) => Page::Before(seq),
        (None, Some(seq)) => Page::After(seq),
        (None, None) => Page::Before(u64::MAX),
    };
    let limit = number(&params, "limit")?
        .map_or(50, |l| l as usize)
        .clamp(1, MAX_PAGE);
    let store = &api.chat.store;
    let epoch = store.room_state(&room).await.map_err(unavailable)?.epoch;
    let records = store
        .messages(&room, page, limit)
        .await
        .map_err(unavailable)?;
    let mut messages: Vec<_> = records.into_iter().map(chat_message).collect();
    count_reactions(&**store, &room, "", &mut messages)
        .await
        .map_err(unavailable)?;
    ok(json!({ "room": room, "epoch": epoch, "messages": messages }))
}

async fn rooms<S: Store>(State(api): Shared<S>, RawQuery(raw): RawQuery) -> Answer {
    let params = params(raw, &["after", "limit"])?;
    let limit = number(&params, "limit")?
        .map_or(100, |l| l as usize)
        .clamp(1, 1000);
    let after = text_of(&params, "after");
    // By name here (the protocol's `rooms` is busiest first): a page goes on after a name,
    // whatever the counts do meanwhile.
    let mut rooms: Vec<RoomInfo> = api
        .chat
        .directory
        .rooms()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(room, members)| RoomInfo { room, members })
        .collect();
    rooms.retain(|r| after.as_ref().is_none_or(|after| r.room > *after));
    let more = rooms.len() > limit;
    rooms.truncate(limit);
    let next = more.then(|| rooms.last().map(|r| r.room.clone())).flatten();
    ok(json!({ "rooms": rooms, "next": next }))
}

async fn members<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let room = path_of(path)?;
    no_query(raw)?;
    check_room(&room)?;
    let nicks = api
        .chat
        .directory
        .room_members(&room)
        .await
        .map_err(unavailable)?;
    ok(json!({ "room": room, "members": nicks }))
}

async fn inbox<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let nick = path_of(path)?;
    no_query(raw)?;
    check_nick(&nick)?;
    let rooms = api
        .chat
        .store
        .inbox(&nick, Vec::new())
        .await
        .map_err(unavailable)?;
    let entries: Vec<InboxEntry> = rooms
        .into_iter()
        // As the protocol's inbox: a direct-message room counts once it has a message.
        .filter(|r| r.last.is_some() || dm_pair(&r.room).is_none())
        .map(inbox_entry)
        .collect();
    ok(json!({ "nick": nick, "rooms": entries }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    reason: String,
    ban_seconds: Option<u64>,
}

async fn disconnect<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let nick = path_of(path)?;
    no_query(raw)?;
    check_nick(&nick)?;
    let ask: Disconnect = body(&headers, &bytes)?;
    // A close frame's reason has room for 123 bytes; the rest would be cut mid-character.
    if ask.reason.trim().is_empty() || ask.reason.len() > 100 {
        return Err(bad(ErrorCode::BadMessage, "a reason is 1 to 100 bytes"));
    }
    let ban = match ask.ban_seconds {
        None => None,
        Some(s) if !(1..=MAX_BAN_SECONDS).contains(&s) => {
            return Err(bad(
                ErrorCode::BadMessage,
                format!(
                    "a ban lasts 1 to {MAX_BAN_SECONDS} seconds (to lift one: DELETE /api/v1/users/NICK/ban)"
                ),
            ));
        }
        Some(s) => Some(Duration::from_secs(s)),
    };
    let closed = api
        .chat
        .directory
        .kick(&nick, &ask.reason, ban)
        .await
        .map_err(unavailable)?;
    tracing::info!(nick = %crate::shown::Shown(&nick), closed, ban = ?ban, "api: disconnected");
    ok(
        json!({ "nick": nick, "closed_here": closed, "banned_seconds": ban.map_or(0, |b| b.as_secs()) }),
    )
}

/// Lifts a ban (whether or not there was one).
async fn unban<S: Store>(
    State(api): Shared<S>,
    path: std::result::Result<UrlPath<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let nick = path_of(path)?;
    no_query(raw)?;
    check_nick(&nick)?;
    let lifted = api.chat.directory.unban(&nick).await.map_err(unavailable)?;
    tracing::info!(nick = %crate::shown::Shown(&nick), lifted, "api: ban lifted");
    ok(json!({ "nick": nick, "was_banned": lifted }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    sub: String,
    ttl: u64,
    rooms: Option<Vec<String>>,
    #[serde(rename = "mod")]
    moderates: Option<Moderates>,
}

async fn mint<S: Store>(
    State(api): Shared<S>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    no_query(raw)?;
    let Some(auth) = &api.chat.config.auth else {
        return Err(refusal(
            StatusCode::CONFLICT,
            "no_token_secret",
            "this server takes no tokens: start it with --auth-secret-file to mint them",
        ));
    };
    let ask: NewToken = body(&headers, &bytes)?;
    check_nick(&ask.sub)?;
    if !(1..=MAX_TOKEN_TTL).contains(&ask.ttl) {
        return Err(bad(
            ErrorCode::BadMessage,
            format!("ttl is 1 to {MAX_TOKEN_TTL} seconds"),
        ));
    }
    for room in ask.rooms.iter().flatten() {
        check_room(room)?;
    }
    if let Some(Moderates::Rooms(rooms)) = &ask.moderates {
        for room in rooms {
            check_room(room)?;
        }
    }
    let exp = crate::auth::now_secs() + ask.ttl;
    let expect = auth.expected();
    let claims = Claims {
        exp: Some(exp),
        iss: expect.issuer.clone(),
        aud: expect.audience.clone().map(Audience::One),
        rooms: ask.rooms,
        moderates: ask.moderates,
        ..Claims::for_nick(ask.sub)
    };
    ok(json!({ "token": auth.mint(&claims), "exp": exp }))
}
