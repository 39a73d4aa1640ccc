//! The HTTP API under `/api/v1/`, against a real server on loopback with a real SQLite file,
//! real WebSocket members and raw HTTP/1.1 requests: a posted message reaches members, is
//! durable and idempotent; moderation takes the room's seq; a disconnect closes every
//! connection and a ban holds; every route answers as `docs/openapi.json` says; and bad input
//! of every kind gets a JSON error while the server goes on serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::client::{Client, roomy};
use common::{TestServer, http_json as call, within};
use futures_util::StreamExt;
use nanachat::auth::Auth;
use nanachat::chat::{ApiKeys, Chat, ChatConfig};
use nanachat::server::ServerConfig;
use nanachat::store::SqliteStore;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "test-api-key-0123456789";

fn key_file(name: &str, keys: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("nanachat-api-keys-{name}-{}", std::process::id()));
    common::write_secret(&path, keys);
    path
}

async fn server(name: &str, auth: Option<Auth>) -> TestServer {
    let dir = std::env::temp_dir().join(format!("nanachat-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir).unwrap();
    let keys = ApiKeys::from_file(&key_file(name, &format!("# the test's\n{KEY}\n"))).unwrap();
    let config = ChatConfig {
        api_keys: Some(Arc::new(keys)),
        auth,
        ..roomy()
    };
    let server = ServerConfig::default();
    let max = server.connection.max_message_bytes;
    TestServer::start(server, Chat::new(store, config, max)).await
}

fn addr(server: &TestServer) -> SocketAddr {
    server.url().trim_start_matches("ws://").parse().unwrap()
}

const AUTH: (&str, &str) = ("Authorization", "Bearer test-api-key-0123456789");
const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    call(addr, method, path, &[AUTH, JSON], bytes.as_bytes()).await
}

/// Reads until a frame of type `kind` with this seq.
async fn event(c: &mut Client, kind: &str, seq: u64) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == kind && v["seq"] == seq {
            return v;
        }
    }
}

#[tokio::test]
async fn the_api_answers_only_with_a_key_and_documents_itself() {
    let server = server("keys", None).await;
    let at = addr(&server);
    let (status, body) = call(at, "GET", "/api/v1/rooms", &[], b"").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let wrong = ("Authorization", "Bearer test-api-key-0123456788");
    let (status, body) = call(at, "GET", "/api/v1/rooms", &[wrong], b"").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let basic = ("Authorization", "Basic dGVzdA==");
    assert_eq!(call(at, "GET", "/api/v1/rooms", &[basic], b"").await.0, 401);
    let (status, doc) = call(at, "GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(nanachat::chat::OPENAPI).unwrap()
    );
    server.stop().await.unwrap();
}

/// Every operation of the document answers with one of the statuses it documents (given a
/// room, a seq and a nick that exist), and every route the server has is in the document.
#[tokio::test]
async fn every_documented_route_answers_as_documented() {
    let server = server("openapi", Some(Auth::new(b"0123456789abcdef0123").unwrap())).await;
    let at = addr(&server);
    let doc: Value = serde_json::from_str(nanachat::chat::OPENAPI).unwrap();
    let (status, _) = api(
        at,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(json!({"text": "first", "cid": "c0"})),
    )
    .await;
    assert_eq!(status, 200);
    let bodies = [
        (
            "post",
            "/rooms/{room}/messages",
            json!({"text": "hi", "cid": "c1"}),
        ),
        (
            "patch",
            "/rooms/{room}/messages/{seq}",
            json!({"text": "edited"}),
        ),
        (
            "post",
            "/users/{nick}/disconnect",
            json!({"reason": "test"}),
        ),
        ("post", "/tokens", json!({"sub": "nana", "ttl": 60})),
    ];
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let url = format!(
                "/api/v1{}",
                path.replace("{room}", "lobby")
                    .replace("{seq}", "1")
                    .replace("{nick}", "nana")
            );
            let body = bodies
                .iter()
                .find(|(m, p, _)| m == method && p == path)
                .map(|(_, _, b)| b.clone());
            let (status, answer) = api(at, &method.to_uppercase(), &url, body).await;
            let documented = operation["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path}: {status} is not documented ({answer})"
            );
            // Without a key, every operation but the document itself is 401, as documented.
            let secured = operation.get("security").is_none();
            let (bare, _) = call(at, &method.to_uppercase(), &url, &[], b"").await;
            if secured {
                assert_eq!(bare, 401, "{method} {path} without a key");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 11, "every route of the server is documented");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_posted_message_reaches_members_once_is_durable_and_idempotent() {
    let server = server("post", None).await;
    let at = addr(&server);
    let mut mochi = Client::hello(&server.url(), "mochi").await;
    mochi.join("lobby").await;
    let post = |text: &str, cid: &str, from: Option<&str>| {
        let mut body = json!({"text": text, "cid": cid});
        if let Some(from) = from {
            body["from"] = json!(from);
        }
        api(at, "POST", "/api/v1/rooms/lobby/messages", Some(body))
    };
    let (status, stored) = post("welcome, everyone", "w1", None).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["duplicate"], false);
    let seq = stored["seq"].as_u64().unwrap();
    let got = event(&mut mochi, "message", seq).await;
    assert_eq!(
        (got["from"].as_str(), got["text"].as_str()),
        (Some("~system"), Some("welcome, everyone"))
    );
    // The same request again: the same seq, nothing delivered twice.
    let (status, again) = post("welcome, everyone", "w1", None).await;
    assert_eq!(
        (status, again["seq"].as_u64(), again["duplicate"].as_bool()),
        (200, Some(seq), Some(true))
    );
    // Another text under the same cid: refused, nothing stored.
    let (status, reused) = post("something else", "w1", None).await;
    assert_eq!((status, reused["code"].as_str()), (409, Some("cid_reused")));
    // A bot with a name of its own, replying; then a member's message: the next seq after
    // the bot's, so neither the duplicate nor the refusal took one.
    let bot = post("i am a bot", "b1", Some("~weather")).await.1;
    let bot_seq = bot["seq"].as_u64().unwrap();
    assert_eq!(bot_seq, seq + 1);
    let reply = api(
        at,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(json!({"text": "re", "cid": "r1", "from": "nana", "reply_to": seq})),
    )
    .await
    .1;
    let reply_seq = reply["seq"].as_u64().unwrap();
    assert_eq!(
        event(&mut mochi, "message", bot_seq).await["from"],
        "~weather"
    );
    assert_eq!(
        event(&mut mochi, "message", reply_seq).await["reply_to"],
        seq
    );
    // Nobody may connect as a system sender.
    let mut impostor = Client::raw(&server.url()).await;
    impostor
        .send(json!({"type": "hello", "nick": "~system"}))
        .await;
    assert_eq!(impostor.error().await["code"], "bad_nick");
    // Read back through the API, as they stand.
    let (status, page) = api(at, "GET", "/api/v1/rooms/lobby/messages?limit=10", None).await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [seq, bot_seq, reply_seq]);
    let (_, after) = api(
        at,
        "GET",
        &format!("/api/v1/rooms/lobby/messages?after={seq}&limit=1"),
        None,
    )
    .await;
    assert_eq!(after["messages"][0]["seq"], bot_seq);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn moderation_through_the_api_takes_the_rooms_seq() {
    let server = server("moderate", None).await;
    let at = addr(&server);
    let mut nana = Client::hello_with_key(&server.url(), "nana", Some("nana-key-0123456789")).await;
    nana.join("lobby").await;
    nana.say("lobby", "a rude message", "n1").await;
    let said = event(&mut nana, "message", 1).await;
    assert_eq!(said["text"], "a rude message");
    let (status, edit) = api(
        at,
        "PATCH",
        "/api/v1/rooms/lobby/messages/1",
        Some(json!({"text": "[removed by a moderator]", "from": "~mod", "cid": "e1"})),
    )
    .await;
    assert_eq!(status, 200, "{edit}");
    let edited = event(&mut nana, "edit", edit["seq"].as_u64().unwrap()).await;
    assert_eq!(
        (edited["target"].as_u64(), edited["from"].as_str()),
        (Some(1), Some("~mod"))
    );
    // Retried: the same seq.
    let again = api(
        at,
        "PATCH",
        "/api/v1/rooms/lobby/messages/1",
        Some(json!({"text": "[removed by a moderator]", "from": "~mod", "cid": "e1"})),
    )
    .await
    .1;
    assert_eq!(again["seq"], edit["seq"]);
    let (status, deleted) = api(at, "DELETE", "/api/v1/rooms/lobby/messages/1?cid=d1", None).await;
    assert_eq!(status, 200, "{deleted}");
    let gone = event(&mut nana, "delete", deleted["seq"].as_u64().unwrap()).await;
    assert_eq!(gone["target"], 1);
    let (_, page) = api(at, "GET", "/api/v1/rooms/lobby/messages", None).await;
    let first = &page["messages"][0];
    assert_eq!(
        (
            first["seq"].as_u64(),
            first["deleted"].as_bool(),
            first["text"].as_str()
        ),
        (Some(1), Some(true), Some(""))
    );
    // Refusals, each with its documented code; no seq taken by any.
    let (status, body) = api(
        at,
        "PATCH",
        "/api/v1/rooms/lobby/messages/1",
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("message_deleted"))
    );
    let (status, body) = api(at, "DELETE", "/api/v1/rooms/lobby/messages/99", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("no_such_message"))
    );
    let (status, body) = api(
        at,
        "DELETE",
        &format!("/api/v1/rooms/lobby/messages/{}", edit["seq"]),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("no_such_message")),
        "an event is not a message"
    );
    nana.say("lobby", "still here", "n2").await;
    let next = deleted["seq"].as_u64().unwrap() + 1;
    assert_eq!(
        event(&mut nana, "message", next).await["text"],
        "still here"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rooms_members_and_inbox() {
    let server = server("lists", None).await;
    let at = addr(&server);
    let mut a = Client::hello_with_key(&server.url(), "alice", Some("alice-key-0123456789")).await;
    let mut b = Client::hello(&server.url(), "bob").await;
    for room in ["garden", "lobby"] {
        a.join(room).await;
    }
    b.join("lobby").await;
    let (status, rooms) = api(at, "GET", "/api/v1/rooms", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "garden", "members": 1}, {"room": "lobby", "members": 2}])
    );
    assert_eq!(rooms["next"], Value::Null);
    let (_, page) = api(at, "GET", "/api/v1/rooms?limit=1", None).await;
    assert_eq!(
        (page["rooms"][0]["room"].as_str(), page["next"].as_str()),
        (Some("garden"), Some("garden"))
    );
    let (_, page) = api(at, "GET", "/api/v1/rooms?limit=1&after=garden", None).await;
    assert_eq!(
        (page["rooms"][0]["room"].as_str(), page["next"].as_str()),
        (Some("lobby"), None)
    );
    let (_, members) = api(at, "GET", "/api/v1/rooms/lobby/members", None).await;
    assert_eq!(members["members"], json!(["alice", "bob"]));
    b.say("lobby", "hello alice", "b1").await;
    event(&mut a, "message", 1).await;
    let (status, inbox) = api(at, "GET", "/api/v1/users/alice/inbox", None).await;
    assert_eq!(status, 200, "{inbox}");
    let lobby = inbox["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "lobby")
        .unwrap()
        .clone();
    assert_eq!(
        (lobby["last_seq"].as_u64(), lobby["unread"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(lobby["last"]["text"], "hello alice");
    server.stop().await.unwrap();
}

/// Reads until the connection is closed; its close code and reason.
async fn closed_with(c: &mut Client) -> (u16, String) {
    loop {
        match within("a close", c.ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("closed without a frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_disconnect_closes_every_connection_and_a_ban_holds_until_it_ends() {
    let auth = Auth::new(b"0123456789abcdef0123").unwrap();
    let server = server("ban", Some(auth.clone())).await;
    let at = addr(&server);
    // A token minted by the API is one the server takes.
    let (status, minted) = api(
        at,
        "POST",
        "/api/v1/tokens",
        Some(json!({"sub": "troll", "ttl": 600, "rooms": ["lobby"]})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(
        auth.verify(&token, nanachat::auth::now_secs())
            .unwrap()
            .may_join("lobby")
    );
    let hello = |token: String| {
        let url = server.url();
        async move {
            let mut c = Client::raw(&url).await;
            c.send(json!({"type": "hello", "nick": "troll", "token": token}))
                .await;
            c
        }
    };
    let mut one = hello(token.clone()).await;
    one.expect("welcome").await;
    let mut two = hello(token.clone()).await;
    two.expect("welcome").await;
    let (status, done) = api(
        at,
        "POST",
        "/api/v1/users/troll/disconnect",
        Some(json!({"reason": "spam", "ban_seconds": 2})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["closed_here"], 2);
    for c in [&mut one, &mut two] {
        assert_eq!(closed_with(c).await, (4004, "spam".to_owned()));
    }
    // Banned: a new connection is closed with 4004 and the reason.
    let mut back = hello(token.clone()).await;
    let (code, reason) = closed_with(&mut back).await;
    assert_eq!(code, 4004);
    assert!(
        reason.contains("banned") && reason.contains("spam"),
        "{reason}"
    );
    // Until it ends.
    within("the ban ends", async {
        loop {
            let mut c = hello(token.clone()).await;
            if let Some(Ok(Message::Text(t))) = within("an answer", c.ws.next()).await
                && t.as_str().contains("\"welcome\"")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    // A disconnect without a ban: closed, and back at once.
    let mut three = hello(token.clone()).await;
    three.expect("welcome").await;
    api(
        at,
        "POST",
        "/api/v1/users/troll/disconnect",
        Some(json!({"reason": "bye"})),
    )
    .await;
    assert_eq!(closed_with(&mut three).await.0, 4004);
    hello(token).await.expect("welcome").await;
    server.stop().await.unwrap();
}

/// What is wrong, the path, the headers, the body; the status and code it must get.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    u16,
    &'static str,
);

/// The method, what is wrong, the path, the headers, the body; the status and code it must get.
type MethodCase = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static [u8],
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_a_json_error_and_the_server_keeps_serving() {
    let server = server("bad", None).await;
    let at = addr(&server);
    let post = "/api/v1/rooms/lobby/messages";
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            post,
            vec![AUTH, JSON],
            b"{\"text\": ".to_vec(),
            400,
            "bad_message",
        ),
        (
            "an unknown field",
            post,
            vec![AUTH, JSON],
            br#"{"text":"a","cid":"c","colour":"red"}"#.to_vec(),
            400,
            "bad_message",
        ),
        (
            "no cid",
            post,
            vec![AUTH, JSON],
            br#"{"text":"a"}"#.to_vec(),
            400,
            "bad_message",
        ),
        (
            "a cid too long",
            post,
            vec![AUTH, JSON],
            format!(r#"{{"text":"a","cid":"{}"}}"#, "c".repeat(65)).into_bytes(),
            400,
            "bad_message",
        ),
        (
            "empty text",
            post,
            vec![AUTH, JSON],
            br#"{"text":"  ","cid":"c"}"#.to_vec(),
            400,
            "bad_message",
        ),
        (
            "text too long",
            post,
            vec![AUTH, JSON],
            format!(r#"{{"text":"{}","cid":"c"}}"#, "x".repeat(4001)).into_bytes(),
            400,
            "text_too_long",
        ),
        (
            "a body too large",
            post,
            vec![AUTH, JSON],
            vec![b' '; 70_000],
            413,
            "too_large",
        ),
        (
            "the wrong content type",
            post,
            vec![AUTH, ("Content-Type", "text/plain")],
            br#"{"text":"a","cid":"c"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            post,
            vec![AUTH],
            br#"{"text":"a","cid":"c"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "a bad room",
            "/api/v1/rooms/no%20spaces/messages",
            vec![AUTH, JSON],
            br#"{"text":"a","cid":"c"}"#.to_vec(),
            400,
            "bad_room",
        ),
        (
            "a bad sender",
            post,
            vec![AUTH, JSON],
            br#"{"text":"a","cid":"c","from":"~"}"#.to_vec(),
            400,
            "bad_nick",
        ),
        (
            "a sender with spaces",
            post,
            vec![AUTH, JSON],
            br#"{"text":"a","cid":"c","from":"a b"}"#.to_vec(),
            400,
            "bad_nick",
        ),
        (
            "a bad nick",
            "/api/v1/users/no!/inbox",
            vec![AUTH],
            vec![],
            400,
            "bad_nick",
        ),
        (
            "a bad seq",
            "/api/v1/rooms/lobby/messages/zero",
            vec![AUTH, JSON],
            br#"{"text":"a"}"#.to_vec(),
            400,
            "bad_message",
        ),
        (
            "an unknown route",
            "/api/v1/nothing",
            vec![AUTH],
            vec![],
            404,
            "not_found",
        ),
        (
            "an unknown query parameter",
            "/api/v1/rooms/lobby/messages?befor=3",
            vec![AUTH],
            vec![],
            400,
            "bad_message",
        ),
        (
            "a query not a number",
            "/api/v1/rooms/lobby/messages?before=x",
            vec![AUTH],
            vec![],
            400,
            "bad_message",
        ),
        (
            "both before and after",
            "/api/v1/rooms/lobby/messages?before=3&after=1",
            vec![AUTH],
            vec![],
            400,
            "bad_message",
        ),
        (
            "a token with no secret to sign it",
            "/api/v1/tokens",
            vec![AUTH, JSON],
            br#"{"sub":"nana","ttl":60}"#.to_vec(),
            409,
            "no_token_secret",
        ),
        (
            "a ban without a reason",
            "/api/v1/users/nana/disconnect",
            vec![AUTH, JSON],
            br#"{"reason":""}"#.to_vec(),
            400,
            "bad_message",
        ),
    ];
    for (what, path, headers, body, status, code) in cases {
        let method = if what.starts_with("an unknown route")
            || path.contains('?')
            || path.ends_with("/inbox")
        {
            "GET"
        } else if path.contains("/messages/") {
            "PATCH"
        } else {
            "POST"
        };
        let (got, answer) = call(at, method, path, &headers, &body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
    }
    // From an attack on the docs: arguments where the route takes none were ignored (a ban
    // in the query was no ban; an edit's cid in the query made a retry a second edit).
    let more: [MethodCase; 9] = [
        (
            "POST",
            "a query where the route takes none",
            "/api/v1/rooms/lobby/messages?from=alice",
            vec![AUTH, JSON],
            br#"{"text":"a","cid":"c"}"#,
            400,
            "bad_message",
        ),
        (
            "PATCH",
            "an edit's cid in the query",
            "/api/v1/rooms/lobby/messages/1?cid=e1",
            vec![AUTH, JSON],
            br#"{"text":"a"}"#,
            400,
            "bad_message",
        ),
        (
            "POST",
            "a ban in the query",
            "/api/v1/users/nana/disconnect?ban_seconds=60",
            vec![AUTH, JSON],
            br#"{"reason":"x"}"#,
            400,
            "bad_message",
        ),
        (
            "DELETE",
            "a body on a DELETE",
            "/api/v1/rooms/lobby/messages/1",
            vec![AUTH, JSON],
            br#"{"cid":"d1"}"#,
            400,
            "bad_message",
        ),
        (
            "GET",
            "a body on a GET",
            "/api/v1/rooms",
            vec![AUTH, JSON],
            b"{}",
            400,
            "bad_message",
        ),
        (
            "POST",
            "a ban of 0 seconds",
            "/api/v1/users/nana/disconnect",
            vec![AUTH, JSON],
            br#"{"reason":"x","ban_seconds":0}"#,
            400,
            "bad_message",
        ),
        (
            "GET",
            "a path that is not UTF-8",
            "/api/v1/rooms/%C3/messages",
            vec![AUTH],
            b"",
            400,
            "bad_message",
        ),
        (
            "GET",
            "two Authorization headers",
            "/api/v1/rooms",
            vec![AUTH, AUTH],
            b"",
            401,
            "unauthorized",
        ),
        (
            "PUT",
            "a method the route does not take",
            "/api/v1/rooms",
            vec![AUTH],
            b"",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, what, path, headers, body, status, code) in more {
        let (got, answer) = call(at, method, path, &headers, body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
    }
    // The scheme in any case, and a tab after it.
    for auth in [
        "bearer test-api-key-0123456789",
        "BEARER\ttest-api-key-0123456789",
    ] {
        let (got, answer) = call(at, "GET", "/api/v1/rooms", &[("Authorization", auth)], b"").await;
        assert_eq!(got, 200, "{auth}: {answer}");
    }
    // Nothing of that was stored; the server serves on.
    let (_, page) = api(at, "GET", "/api/v1/rooms/lobby/messages", None).await;
    assert_eq!(page["messages"], json!([]));
    let mut nana = Client::hello(&server.url(), "nana").await;
    nana.join("lobby").await;
    let (status, _) = api(at, "POST", post, Some(json!({"text": "fine", "cid": "ok"}))).await;
    assert_eq!(status, 200);
    assert_eq!(event(&mut nana, "message", 1).await["text"], "fine");
    server.stop().await.unwrap();
}

/// The key file is re-read on SIGHUP: a key added works, a key taken out stops working; a
/// file that cannot be used leaves the keys in force.
#[test]
fn api_keys_are_re_read_on_sighup() {
    let dir = std::env::temp_dir().join(format!("nanachat-api-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    common::write_secret(&keys, "old-key-0123456789abc\n");
    let server = common::serve_child_with(
        &dir.join("data"),
        "127.0.0.1:0",
        100,
        &["--api-key-file", keys.to_str().unwrap()],
    );
    let url = server.listening_url();
    let at: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = |key: &'static str| {
        runtime.block_on(async move {
            let auth = format!("Bearer {key}");
            call(at, "GET", "/api/v1/rooms", &[("Authorization", &auth)], b"")
                .await
                .0
        })
    };
    assert_eq!(status("old-key-0123456789abc"), 200);
    assert_eq!(status("new-key-0123456789abc"), 403);
    common::write_secret(&keys, "new-key-0123456789abc\n");
    server.signal("HUP");
    runtime.block_on(within("the new key works", async {
        while status_async(at, "new-key-0123456789abc").await != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }));
    assert_eq!(status("old-key-0123456789abc"), 403);
    // Too short a key: refused, and the keys in force stay.
    common::write_secret(&keys, "short\n");
    server.signal("HUP");
    server.wait_stderr("cannot re-read");
    assert_eq!(status("new-key-0123456789abc"), 200);
}

async fn status_async(at: SocketAddr, key: &str) -> u16 {
    let auth = format!("Bearer {key}");
    call(at, "GET", "/api/v1/rooms", &[("Authorization", &auth)], b"")
        .await
        .0
}

#[test]
fn a_bad_key_file_is_one_clear_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("nanachat-api-badfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (contents, says) in [
        ("short\n", "at least 16 characters"),
        ("# nothing but a comment\n\n", "no API key"),
    ] {
        let keys = dir.join("keys");
        common::write_secret(&keys, contents);
        let out = common::nanachat()
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--memory",
                "--api-key-file",
            ])
            .arg(&keys)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("short"), "a key is never shown: {stderr}");
    }
}

/// A ban holds for a plain-text connection too: taking the nick with `/nick` ends it (4004).
#[tokio::test]
async fn a_banned_nick_cannot_be_taken_by_a_plain_text_rename() {
    let server = server("plain-ban", None).await;
    let at = addr(&server);
    let (status, _) = api(
        at,
        "POST",
        "/api/v1/users/Troll/disconnect",
        Some(json!({"reason": "spam", "ban_seconds": 60})),
    )
    .await;
    assert_eq!(status, 200);
    let mut plain = common::peer(&server.url()).await;
    within("the welcome line", async {
        while let Some(Ok(m)) = plain.next().await {
            if m.to_text().unwrap_or_default().contains("joined") {
                break;
            }
        }
    })
    .await;
    futures_util::SinkExt::send(&mut plain, Message::text("/nick troll"))
        .await
        .unwrap();
    // Refused before the nick is taken: the guest keeps its own nick and its connection.
    let refusal = next_line_where(&mut plain, "the refusal", |t| t.starts_with('!')).await;
    assert!(
        refusal.contains("forbidden") && refusal.contains("banned"),
        "{refusal}"
    );
    futures_util::SinkExt::send(&mut plain, Message::text("still here"))
        .await
        .unwrap();
    let echo = next_line_where(&mut plain, "its own line", |t| t.contains("still here")).await;
    assert!(echo.contains("guest-"), "said as its old nick: {echo}");
    drop(plain);
    server.stop().await.unwrap();
}

/// The next text frame of a plain-text connection that `wanted` picks.
async fn next_line_where(
    plain: &mut common::Peer,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    within(what, async {
        loop {
            match plain.next().await {
                Some(Ok(Message::Text(t))) if wanted(t.as_str()) => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("no {what}: {other:?}"),
            }
        }
    })
    .await
}

/// From an attack on the docs: a client without a key that sent a head with a large
/// `Content-Length` and then stalled held its connection (and a handshake slot) for good;
/// 1,024 of them locked everyone out. The key is checked before the body is read, and a
/// body that does not come in time is 408.
#[tokio::test]
async fn a_stalled_body_is_refused_at_once_without_a_key_and_in_time_with_one() {
    let dir = std::env::temp_dir().join(format!("nanachat-api-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = ApiKeys::from_file(&key_file("stall", &format!("{KEY}\n"))).unwrap();
    let config = ChatConfig {
        api_keys: Some(Arc::new(keys)),
        ..roomy()
    };
    let server = ServerConfig {
        handshake_timeout: std::time::Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let max = server.connection.max_message_bytes;
    let store = SqliteStore::open(&dir).unwrap();
    let server = TestServer::start(server, Chat::new(store, config, max)).await;
    let at = addr(&server);
    let stalled = |auth: Option<&'static str>| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(at).await.unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/v1/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let n = within("an answer to a stalled body", tcp.read(&mut answer))
            .await
            .unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let started = std::time::Instant::now();
    let answer = stalled(None).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(900),
        "answered at once"
    );
    let answer = stalled(Some("Bearer test-api-key-0123456789")).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    server.stop().await.unwrap();
}

/// From an attack on the docs: clients that asked for a large page and never read it held the
/// answer and a handshake slot for as long as they liked (1,100 of them: 503 for everyone,
/// 1.7 GB). An answer nobody reads is cut off after the write timeout.
#[tokio::test]
async fn an_answer_nobody_reads_is_cut_off_after_the_write_timeout() {
    let dir = std::env::temp_dir().join(format!("nanachat-api-noread-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = ApiKeys::from_file(&key_file("noread", &format!("{KEY}\n"))).unwrap();
    let config = ChatConfig {
        api_keys: Some(Arc::new(keys)),
        max_text_chars: 16_000,
        ..roomy()
    };
    let mut server = ServerConfig::default();
    server.connection.write_timeout = std::time::Duration::from_secs(1);
    server.connection.max_message_bytes = 1 << 20;
    server.connection.max_frame_bytes = 1 << 20;
    server.connection.outbox_bytes = 4 << 20;
    server.connection.validate().unwrap();
    let max = server.connection.max_message_bytes;
    let store = SqliteStore::open(&dir).unwrap();
    let server = TestServer::start(server, Chat::new(store, config, max)).await;
    let at = addr(&server);
    // 200 messages of 64 KB: a page of about 13 MB, more than both sockets' buffers hold.
    let text = "😀".repeat(16_000);
    for i in 0..200 {
        let body = json!({"text": text, "cid": format!("c{i}")});
        assert_eq!(
            api(at, "POST", "/api/v1/rooms/big/messages", Some(body))
                .await
                .0,
            200
        );
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(at).await.unwrap();
    let head = format!(
        "GET /api/v1/rooms/big/messages?limit=200 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {KEY}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Not reading, for three times the write timeout.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let read = within("the cut", tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got[..got.len().min(400)]).into_owned();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        read.is_err() || got.len() < length,
        "the whole answer ({} bytes) waited for a client that did not read",
        got.len()
    );
    // The others are served.
    assert_eq!(api(at, "GET", "/api/v1/rooms", None).await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_ban_is_lifted_and_a_new_ban_replaces_the_old() {
    let server = server("unban", None).await;
    let at = addr(&server);
    let ban = |seconds: u64| {
        api(
            at,
            "POST",
            "/api/v1/users/troll/disconnect",
            Some(json!({"reason": "spam", "ban_seconds": seconds})),
        )
    };
    let hello = || async {
        let mut c = Client::raw(&server.url()).await;
        c.send(json!({"type": "hello", "nick": "troll", "key": "troll-key-0123456789"}))
            .await;
        match within("an answer", c.ws.next()).await {
            Some(Ok(Message::Text(t))) => t.as_str().contains("\"welcome\""),
            _ => false,
        }
    };
    assert_eq!(ban(3600).await.0, 200);
    assert!(!hello().await, "banned");
    let (status, lifted) = api(at, "DELETE", "/api/v1/users/troll/ban", None).await;
    assert_eq!((status, lifted["was_banned"].as_bool()), (200, Some(true)));
    assert!(hello().await, "the ban is lifted");
    let (_, again) = api(at, "DELETE", "/api/v1/users/troll/ban", None).await;
    assert_eq!(again["was_banned"], false);
    // A later ban replaces the one in force, shorter or longer.
    assert_eq!(ban(3600).await.0, 200);
    assert_eq!(ban(1).await.0, 200);
    within("the short ban ends", async {
        while !hello().await {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    server.stop().await.unwrap();
}
