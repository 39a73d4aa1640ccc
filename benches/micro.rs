//! Micro-benchmarks of the hot paths: decoding a client's request, encoding a server message,
//! fanning one message out to a room, and durable appends into the SQLite store.
//! Run: `cargo bench --bench micro` (figures in BENCHMARKS.md).
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nanachat::chat::bench_support::FanoutRoom;
use nanachat::protocol::{ChatMessage, ServerMsg, parse_client};
use nanachat::store::{Append, SqliteStore, Store};

fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    let say = r#"{"type":"say","room":"lobby","text":"hello there, this is a message of about a hundred bytes, give or take a few","cid":"c-42"}"#;
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode say", |b| {
        b.iter(|| parse_client(black_box(say)).unwrap())
    });
    let msg = ServerMsg::Message(ChatMessage::said(
        "lobby",
        42,
        "nana",
        "hello there, this is a message of about a hundred bytes, give or take a few",
        1_764_000_000_000,
    ));
    g.bench_function("encode message", |b| b.iter(|| black_box(&msg).to_json()));
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let text = "x".repeat(100);
    for members in [10, 1000] {
        let mut room = FanoutRoom::new(members);
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::from_parameter(members), &text, |b, text| {
            b.iter(|| room.deliver(text));
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("nanachat-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(SqliteStore::open(&dir).unwrap());
    const BATCH: u64 = 5_000;
    g.throughput(Throughput::Elements(BATCH));
    // Many senders at once, as a busy server has: group commit makes one transaction of them.
    g.bench_function("durable appends, 5000 concurrent", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let appends: Vec<_> = (0..BATCH)
                    .map(|i| {
                        store.append(Append::say(
                            &format!("room{}", i % 8),
                            "nana",
                            &"x".repeat(100),
                            None,
                        ))
                    })
                    .collect();
                for a in appends {
                    a.await.unwrap();
                }
            })
        });
    });
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, protocol, fanout, store);
criterion_main!(benches);
