//! `nanachat bench` as users run it, against real servers in child processes: every delivery is
//! accounted for, a lossy server is called out, resume storms and connection holds report what
//! they measured, bad options are refused. (What the figures are is for `bench/`, not for tests.)
#![cfg(feature = "bench")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{Proc, nanachat};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `nanachat serve` with room for a benchmark: no message rate to speak of, and no
/// per-address limits (every bench client comes from 127.0.0.1).
fn bench_server(dir: &std::path::Path) -> Proc {
    common::serve_child_with(dir, "127.0.0.1:0", 1_000_000, &common::NO_PER_IP_LIMITS)
}

/// Runs `nanachat bench ARGS --json -q` to the end; returns its exit code and report.
fn bench(args: &[&str]) -> (i32, Value) {
    let mut cmd = nanachat();
    cmd.arg("bench").args(args).args(["--json", "-q"]);
    let mut proc = Proc::spawn("nanachat bench", cmd);
    let status = proc.wait_exit();
    let out: String = proc.stdout_lines().iter().map(|(_, l)| l.clone()).collect();
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|err| panic!("no report ({err}): {out}\nstderr:\n{}", proc.stderr_text()));
    (status.code().unwrap_or(-1), report)
}

fn n(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[test]
fn fanout_accounts_for_every_delivery_from_a_durable_server() {
    let dir = scratch("fanout");
    let server = bench_server(&dir);
    let url = server.listening_url();
    let plot = dir.join("fanout.svg");
    let (code, report) = bench(&[
        "fanout",
        &url,
        "--rooms",
        "2",
        "--receivers",
        "15",
        "--publishers",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "0.2s",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(n(&report, "connected"), 2 * 17);
    assert_eq!(n(&report, "lost"), 0, "{report}");
    assert_eq!(n(&report, "duplicated"), 0, "{report}");
    assert_eq!(n(&report, "errors"), 0, "{report}");
    assert!(n(&report, "acked") > 0, "{report}");
    assert!(n(&report, "deliveries") > 0, "{report}");
    assert!(report["latency"]["p99"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fixed_rate_run_sends_at_that_rate() {
    let server = bench_server(&scratch("rate"));
    let url = server.listening_url();
    let (code, report) = bench(&[
        "fanout",
        &url,
        "--receivers",
        "10",
        "--rate",
        "200",
        "--duration",
        "1.5s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 0, "{report}");
    // 200 msg/s for about 1.5 s to 10 receivers; the drain adds the last acks.
    let acked = n(&report, "acked");
    assert!((250..=400).contains(&acked), "{report}");
    assert_eq!(n(&report, "lost"), 0, "{report}");
}

/// A broadcast server that drops every fifth message: the bench must say so, and fail.
async fn lossy_broadcast(listener: TcpListener) {
    let peers = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (peers, count) = (peers.clone(), count.clone());
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (sink, mut stream) = ws.split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
            let me = {
                let mut peers = peers.lock().await;
                peers.push(tx);
                peers.len() - 1
            };
            tokio::spawn(async move {
                let mut sink = sink;
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if !msg.is_text() {
                    continue;
                }
                let i = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (k, peer) in peers.lock().await.iter().enumerate() {
                    // The sender always gets its echo (its ack); the others miss some.
                    if k == me || i % 5 != 4 {
                        let _ = peer.send(msg.clone());
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_loses_messages_is_called_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(lossy_broadcast(listener));
    let (code, report) = tokio::task::spawn_blocking(move || {
        bench(&[
            "fanout",
            &url,
            "--raw",
            "--receivers",
            "5",
            "--workers",
            "1",
            "--duration",
            "0.5s",
            "--warmup",
            "0s",
        ])
    })
    .await
    .unwrap();
    server.abort();
    assert_eq!(code, 1, "{report}");
    assert!(n(&report, "lost") > 0, "{report}");
}

#[test]
fn a_resume_storm_replays_without_gap_or_repeat() {
    let dir = scratch("resume");
    let server = bench_server(&dir);
    let url = server.listening_url();
    let (code, report) = bench(&[
        "resume",
        &url,
        "--connections",
        "60",
        "--missed",
        "1000",
        "--rate",
        "100",
        "--duration",
        "0.5s",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(n(&report, "lost"), 0, "{report}");
    assert_eq!(n(&report, "duplicated"), 0, "{report}");
    assert_eq!(n(&report, "errors"), 0, "{report}");
    assert!(n(&report, "acked") >= 1000, "{report}");
    assert!(report["resume_seconds"].as_f64().unwrap() > 0.0, "{report}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_and_connect_runs_against_the_echo_server() {
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"])
        .args(common::NO_PER_IP_LIMITS);
    let echo = Proc::spawn("nanachat echo", cmd);
    let url = echo.listening_url();
    let (code, report) = bench(&[
        "echo",
        &url,
        "--raw",
        "--connections",
        "8",
        "--window",
        "4",
        "--duration",
        "0.5s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 0, "{report}");
    assert!(n(&report, "deliveries") > 0, "{report}");
    assert_eq!(n(&report, "lost"), 0, "{report}");
    let pid = echo.pid().to_string();
    let (code, report) = bench(&[
        "connect",
        &url,
        "--raw",
        "--connections",
        "300",
        "--workers",
        "2",
        "--duration",
        "0.3s",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(n(&report, "connected"), 300, "{report}");
    assert!(
        report["server_rss_per_conn_kib"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn bad_options_are_refused_with_one_line_and_code_2() {
    for args in [
        &["fanout", "ws://127.0.0.1:1", "--raw", "--rooms", "2"][..],
        &["fanout", "http://nowhere"][..],
        &["resume", "ws://127.0.0.1:1", "--raw"][..],
        &["echo", "ws://127.0.0.1:1", "--window", "0"][..],
    ] {
        let mut cmd = nanachat();
        cmd.arg("bench").args(args);
        let mut proc = Proc::spawn("nanachat bench", cmd);
        assert_eq!(proc.wait_exit().code(), Some(2), "{args:?}");
        let err = proc.stderr_text();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// The child processes of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` still runs (a zombie, dead but not yet reaped, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn workers_do_not_outlive_a_killed_bench() {
    let server = bench_server(&scratch("orphans"));
    let url = server.listening_url();
    let mut cmd = nanachat();
    cmd.args([
        "bench",
        "fanout",
        &url,
        "--receivers",
        "20",
        "--workers",
        "2",
    ])
    .args(["--rate", "10", "--duration", "60s"]);
    let mut bench = Proc::spawn("nanachat bench", cmd);
    let deadline = std::time::Instant::now() + common::WAIT;
    let workers = loop {
        let workers = children(bench.pid());
        if workers.len() == 2 {
            break workers;
        }
        assert!(std::time::Instant::now() < deadline, "no workers started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    bench.kill();
    let deadline = std::time::Instant::now() + common::WAIT;
    while workers.iter().any(|w| running(*w)) {
        assert!(
            std::time::Instant::now() < deadline,
            "bench workers outlived their parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn receivers_that_stop_reading_cost_the_others_nothing() {
    let dir = scratch("stall");
    let server = bench_server(&dir);
    let url = server.listening_url();
    let (code, report) = bench(&[
        "fanout",
        &url,
        "--receivers",
        "40",
        "--stall",
        "10",
        "--rate",
        "300",
        "--size",
        "2KiB",
        "--duration",
        "1.5s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(n(&report, "stalled"), 4, "{report}");
    // Everyone still reading got everything, whatever became of the four.
    assert_eq!(n(&report, "lost"), 0, "{report}");
    assert_eq!(n(&report, "duplicated"), 0, "{report}");
    assert!(n(&report, "deliveries") >= 36 * 400, "{report}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reaction_burst_reaches_every_member_and_counts_the_commits() {
    let dir = scratch("react");
    let server = bench_server(&dir);
    let url = server.listening_url();
    let (code, report) = bench(&[
        "react",
        &url,
        "--receivers",
        "20",
        "--duration",
        "0.5s",
        "--warmup",
        "0.2s",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(n(&report, "connected"), 20, "{report}");
    // Every member reacted once, and every member got every reaction, its own included.
    assert_eq!(n(&report, "acked"), 20, "{report}");
    assert_eq!(n(&report, "deliveries"), 20 * 20, "{report}");
    assert_eq!(n(&report, "lost"), 0, "{report}");
    assert_eq!(n(&report, "duplicated"), 0, "{report}");
    assert_eq!(n(&report, "errors"), 0, "{report}");
    assert_eq!(report["latency"]["count"], 400, "{report}");
    // The reactions were stored: 20 jobs, in at least one commit (from the server's /metrics).
    assert!(n(&report, "store_jobs") >= 20, "{report}");
    assert!((1..=n(&report, "store_jobs")).contains(&n(&report, "store_commits")));
    assert!(
        report["store_commit_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_run_checks_what_each_query_finds() {
    use common::client::Client;
    let dir = scratch("search");
    let server = bench_server(&dir);
    let url = server.listening_url();
    // A user who remembers two rooms (a key: its rooms are kept), with a few messages in each.
    let mut c = Client::hello_with_key(&url, "finder", Some("k")).await;
    for (room, texts) in [
        (
            "lobby",
            ["the quick brown fox", "a lazy dog", "quick dogs run"],
        ),
        ("games", ["quick chess", "slow go", "dog days"]),
    ] {
        c.join(room).await;
        for (i, text) in texts.iter().enumerate() {
            c.say(room, text, &format!("{room}{i}")).await;
            c.expect("ack").await;
        }
    }
    drop(c);
    let queries = dir.join("queries.jsonl");
    let run = |lines: &'static str| {
        std::fs::write(&queries, lines).unwrap();
        let (url, queries) = (url.clone(), queries.clone());
        tokio::task::spawn_blocking(move || {
            bench(&[
                "search",
                &url,
                "--connections",
                "2",
                "--nick",
                "finder",
                "--key",
                "k",
                "--queries",
                queries.to_str().unwrap(),
                "--duration",
                "0.5s",
                "--warmup",
                "0.1s",
            ])
        })
    };
    let (code, report) = run(concat!(
        r#"{"query":"quick","kind":"common","expect":3}"#,
        "\n",
        r#"{"query":"quick","room":"lobby","kind":"room","expect":2}"#,
        "\n",
        r#"{"query":"dog days","kind":"two","expect":1}"#,
        "\n",
    ))
    .await
    .unwrap();
    assert_eq!(code, 0, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3, "{report}");
    assert!(checks.iter().all(|c| c["wrong"].is_null()), "{report}");
    assert_eq!(checks[1]["found"], 2, "{report}");
    assert!(n(&report, "deliveries") > 0, "{report}");
    let kinds: Vec<&str> = report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[0].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["common", "room", "two"], "{report}");
    // A query that finds other than what the store holds fails the run, and says which.
    let (code, report) = run(r#"{"query":"quick","room":"games","expect":2}"#)
        .await
        .unwrap();
    assert_eq!(code, 1, "{report}");
    assert!(
        report["checks"][0]["wrong"]
            .as_str()
            .unwrap()
            .contains("1 results, 2 expected"),
        "{report}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `nanachat bench ARGS -q` (the table, not JSON) to the end; returns its exit status,
/// the table and stderr.
fn bench_table(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = nanachat();
    cmd.arg("bench").args(args).arg("-q");
    let mut proc = Proc::spawn("nanachat bench", cmd);
    let status = proc.wait_exit();
    let table = proc
        .stdout_lines()
        .iter()
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    (status, table, proc.stderr_text())
}

#[test]
fn a_rate_limited_run_fails_with_a_hint() {
    let dir = scratch("rate-limited");
    // The server's own per-connection limit, as `nanachat serve` starts by default.
    let server = common::serve_child_with(&dir, "127.0.0.1:0", 20, &common::NO_PER_IP_LIMITS);
    let url = server.listening_url();
    let (status, table, stderr) = bench_table(&[
        "fanout",
        &url,
        "--receivers",
        "20",
        "--workers",
        "1",
        "--duration",
        "1s",
        "--warmup",
        "0.2s",
    ]);
    assert!(!status.success(), "{table}{stderr}");
    assert!(stderr.contains("rate_limited"), "{stderr}");
    assert!(
        stderr.contains("--rate") && stderr.contains("--burst"),
        "no hint: {stderr}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_server_fails_at_once_instead_of_waiting_out_the_run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    // Run for a minute: a bench that waits it out is not done within the test's WAIT.
    let (status, _, stderr) =
        bench_table(&["fanout", &url, "--receivers", "20", "--duration", "60s"]);
    assert!(started.elapsed() < common::WAIT, "{stderr}");
    assert!(!status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nanachat:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("no client could connect"), "{stderr}");
    assert!(errors[0].contains("is the server running"), "{stderr}");
}

#[test]
fn a_run_with_nothing_to_measure_shows_n_a_and_fails() {
    // An echo server sends each message back to its sender alone: the clients connect, the
    // receivers get nothing.
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"]);
    let server = Proc::spawn("nanachat echo", cmd);
    let url = server.listening_url();
    let (status, table, stderr) = bench_table(&[
        "fanout",
        &url,
        "--raw",
        "--receivers",
        "3",
        "--workers",
        "1",
        "--duration",
        "0.5s",
        "--warmup",
        "0s",
    ]);
    assert!(!status.success(), "{table}{stderr}");
    let latency = table
        .lines()
        .find(|l| l.trim_start().starts_with("latency ms"))
        .unwrap_or_else(|| panic!("{table}{stderr}"));
    assert!(latency.contains("n/a"), "{table}");
    assert!(!latency.contains("0.00"), "{table}");
    drop(server);
}

/// From an attack on the docs: `bench echo` against a chat server (which answers its frames
/// with errors, echoing none) waited out a 30 s drain and then blamed the server for losing
/// every message. It stops at the first frame that is not an echo and says what it measures.
#[test]
fn bench_echo_against_a_server_that_does_not_echo_says_so_at_once() {
    let dir = scratch("echo-not-echo");
    let server =
        common::serve_child_with(&dir, "127.0.0.1:0", 1_000_000, &common::NO_PER_IP_LIMITS);
    let url = server.listening_url();
    let started = std::time::Instant::now();
    let (status, table, stderr) =
        bench_table(&["echo", &url, "--connections", "5", "--duration", "0.5s"]);
    assert!(started.elapsed() < common::WAIT, "{stderr}");
    assert!(!status.success(), "{table}{stderr}");
    assert!(stderr.contains("no frame came back"), "{stderr}");
    assert!(!stderr.contains("LOST"), "{stderr}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from the terminal attack): `--receivers` was silently ignored by `bench echo`
/// (its clients are `--connections`). An option the scenario does not use is refused at once,
/// exit 2, in one line that says what the scenario uses — one rule for every such option.
#[test]
fn an_option_the_scenario_does_not_use_is_refused_saying_what_it_uses() {
    for (args, flag, uses) in [
        (
            &["echo", "--receivers", "5"][..],
            "--receivers",
            "--connections",
        ),
        (&["connect", "--rate", "10"][..], "--rate", "--connections"),
        (
            &["fanout", "--connections", "5"][..],
            "--connections",
            "--receivers",
        ),
        (&["search", "--missed", "5"][..], "--missed", "--queries"),
        (&["react", "--window", "5"][..], "--window", "--receivers"),
    ] {
        let mut cmd = nanachat();
        // No server: the refusal comes before any connection.
        cmd.arg("bench")
            .arg(args[0])
            .arg("ws://127.0.0.1:1")
            .args(&args[1..]);
        let mut proc = Proc::spawn("nanachat bench", cmd);
        assert_eq!(proc.wait_exit().code(), Some(2), "{args:?}");
        let err = proc.stderr_text();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("does not use {flag}")), "{err}");
        assert!(err.contains(uses), "{err}");
    }
}

/// Issue 19 (from the terminal attack): the table said "N acked, X /s", N counted over the
/// whole run and X a rate over the measured window. Every figure on a line comes from one
/// span, and the line says which.
#[test]
fn each_line_of_the_table_counts_over_the_span_it_names() {
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"])
        .args(common::NO_PER_IP_LIMITS);
    let echo = Proc::spawn("nanachat echo", cmd);
    let url = echo.listening_url();
    let (status, table, stderr) = bench_table(&[
        "echo",
        &url,
        "--raw",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0.5s",
    ]);
    assert!(status.success(), "{table}{stderr}");
    let line = |key: &str| -> String {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("{key}: {table}"))
            .trim_start()
            .trim_start_matches(key)
            .trim()
            .to_owned()
    };
    // `1,234 in 1.0 s (1,234 /s), measured`: the count over the seconds is the rate.
    for key in ["messages", "deliveries"] {
        let said = line(key);
        let (count, rest) = said.split_once(" in ").unwrap_or_else(|| panic!("{said}"));
        let (secs, rest) = rest.split_once(" s (").unwrap_or_else(|| panic!("{said}"));
        let (rate, rest) = rest.split_once(" /s)").unwrap_or_else(|| panic!("{said}"));
        assert_eq!(rest, ", measured", "{said}");
        let num = |t: &str| t.replace(',', "").parse::<f64>().unwrap();
        let (count, secs, rate) = (num(count), num(secs), num(rate));
        assert!(count > 0.0, "{said}");
        assert!(
            (count / secs - rate).abs() <= rate * 0.1 + 1.0,
            "{said}: {count} in {secs} s is not {rate} /s"
        );
    }
    let acked = line("acked");
    assert!(
        acked.ends_with("in the whole run (warm-up and drain too)"),
        "{acked}"
    );
    drop(echo);
}
