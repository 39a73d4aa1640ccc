//! The store's durability promise under a real crash: a child process appends to a SQLite store
//! and reports each message the moment its append returns (the moment the server would ack it);
//! the test kills it with SIGKILL mid-stream, reopens the file, and finds every reported message,
//! with its seq, and seqs that go on with no gap and no reuse.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Proc;
use nanachat::store::{Append, Page, SqliteStore, Store};

const CHILD_DIR: &str = "NANACHAT_STORE_CRASH_CHILD";

/// In the child: append forever, printing `acked <seq> <text>` after each append returns.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return; // Only does something when started by the test below.
    };
    let store = std::sync::Arc::new(SqliteStore::open(&PathBuf::from(dir)).unwrap());
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let text = format!("w{writer}-{i}");
                let appended = store
                    .append(Append::say(
                        "lobby",
                        &format!("w{writer}"),
                        &text,
                        Some(&text),
                    ))
                    .await
                    .unwrap();
                let seq = appended.record().expect("stored").seq;
                println!("acked {seq} {text}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn every_acked_message_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("nanachat-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_child",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_DIR, &dir);
    let mut child = Proc::spawn("store crash child", cmd);
    child.wait_stdout("500 acked appends", |lines| {
        lines
            .iter()
            .filter(|(_, l)| l.starts_with("acked "))
            .count()
            >= 500
    });
    child.kill(); // SIGKILL: no destructor, no flush, no goodbye.
    let acked: Vec<(u64, String)> = child
        .stdout_lines()
        .into_iter()
        .filter_map(|(_, l)| {
            let mut parts = l.strip_prefix("acked ")?.split(' ');
            Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
        })
        .collect();
    assert!(acked.len() >= 500);

    let store = SqliteStore::open(&dir).unwrap();
    let state = store.room_state("lobby").await.unwrap();
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .history("lobby", Page::After(after), 200)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        stored.extend(page);
    }
    // No gap, no reuse: seqs 1..=last_seq, each once.
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=state.last_seq).collect::<Vec<_>>());
    // Every acked message is there, under the seq it was acked with.
    for (seq, text) in &acked {
        let record = &stored[(*seq - 1) as usize];
        assert_eq!(&record.text, text, "seq {seq}");
    }
    // And the room goes on from there.
    let next = store
        .append(Append::say("lobby", "after", "after the crash", None))
        .await
        .unwrap();
    assert_eq!(next.record().expect("stored").seq, state.last_seq + 1);
    let _ = std::fs::remove_dir_all(&dir);
}
