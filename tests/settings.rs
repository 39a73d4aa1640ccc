//! Every setting of `serve` and `connect` has one name, and works under it in all three places:
//! as a flag (`--max-text-chars`), a variable (`NANACHAT_MAX_TEXT_CHARS`) and a config-file key
//! (`max_text_chars`). The test walks the commands' arguments as clap sees them, so an option
//! added later without a sample here fails it; `--check-config` prints the values in force.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use clap::CommandFactory;
use common::nanachat;
use nanachat::cli::Cli;

/// A scratch directory with a secret, a certificate and its key.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nanachat-settings-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        common::write_secret(&dir.join("secret"), "0123456789abcdef0123\n");
        std::fs::write(dir.join("token"), "tok\n").unwrap();
        common::write_secret(&dir.join("hook-secret"), "whsec-0123456789abcdef\n");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One option's sample: the value as typed, as a TOML value, the line `--check-config` must
/// print, and flags it needs beside it.
struct Sample {
    typed: String,
    toml: String,
    printed: String,
    with: Vec<String>,
}

fn sample(typed: &str, toml: &str, printed: &str) -> Sample {
    Sample {
        typed: typed.into(),
        toml: toml.into(),
        printed: printed.into(),
        with: Vec::new(),
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn serve_sample(key: &str, files: &Files) -> Option<Sample> {
    let path = |name: &str| {
        let p = files.path(name);
        sample(&p, &quoted(&p), &quoted(&p))
    };
    let text = |v: &str| sample(v, &quoted(v), &quoted(v));
    let number = |v: &str| sample(v, v, v);
    Some(match key {
        "addr" => text("0.0.0.0:9"),
        "data_dir" => text("/var/lib/nanachat-test"),
        "memory" | "reuse_port" => number("true"),
        "store" => sample(
            "postgres://nana:pw@db/chat",
            "\"postgres://nana:pw@db/chat\"",
            "\"postgres://nana:***@db/chat\"",
        ),
        "broker" => Sample {
            with: vec!["--store".into(), "postgres://db/chat".into()],
            ..text("redis://cache:6379/")
        },
        "store_ca_file" => Sample {
            with: vec![
                "--store".into(),
                "postgres://db/chat?sslmode=verify-full".into(),
            ],
            ..path("cert.pem")
        },
        "broker_ca_file" => Sample {
            with: vec![
                "--store".into(),
                "postgres://db/chat".into(),
                "--broker".into(),
                "rediss://cache:6380/".into(),
            ],
            ..path("cert.pem")
        },
        "log_format" => text("json"),
        "auth_secret" => sample(
            "0123456789abcdef0123",
            "\"0123456789abcdef0123\"",
            "\"***\"",
        ),
        "auth_secret_file" => path("secret"),
        // A line of 16 characters or more: an API key.
        "api_key_file" => path("secret"),
        "token_issuer" => Sample {
            with: vec!["--auth-secret-file".into(), files.path("secret")],
            ..text("https://auth.example.org")
        },
        "token_audience" => Sample {
            with: vec!["--auth-secret-file".into(), files.path("secret")],
            ..text("chat")
        },
        "token_grace" => text("45s"),
        "tls_cert" => Sample {
            with: vec!["--tls-key".into(), files.path("key.pem")],
            ..path("cert.pem")
        },
        "tls_key" => Sample {
            with: vec!["--tls-cert".into(), files.path("cert.pem")],
            ..path("key.pem")
        },
        "max_text_chars" => number("123"),
        "rate" => number("7"),
        "burst" => number("8"),
        "max_rooms" => number("9"),
        "presence_limit" => number("11"),
        "room_ttl" => text("90s"),
        "max_connections" => number("77"),
        "max_handshakes" => number("33"),
        "max_connections_per_ip" => number("44"),
        "connect_rate_per_ip" => number("55"),
        "heartbeat" => text("3s"),
        "retention_age" => text("30d"),
        "retention_messages" => number("1000"),
        "shutdown_timeout" => text("4s"),
        "handshake_timeout" => text("5s"),
        "ping_interval" => text("2s"),
        "idle_timeout" => text("90s"),
        "max_message_bytes" => text("16KiB"),
        "max_frame_bytes" => text("8KiB"),
        "read_buffer_bytes" => text("1KiB"),
        "outbox_bytes" => text("2MiB"),
        "write_timeout" => text("7s"),
        "webhook_url" => Sample {
            with: vec!["--webhook-secret-file".into(), files.path("hook-secret")],
            ..sample(
                "http://hooks.example/in?token=abc",
                "[\"http://hooks.example/in?token=abc\"]",
                "[\"http://hooks.example/in?token=***\"]",
            )
        },
        "webhook_secret_file" => Sample {
            with: vec!["--webhook-url".into(), "http://hooks.example/in".into()],
            ..path("hook-secret")
        },
        "webhook_max_age" => text("12h"),
        "webhook_timeout" => text("3s"),
        "allowed_origin" => sample(
            "https://a.example",
            "[\"https://a.example\"]",
            "[\"https://a.example\"]",
        ),
        _ => return None,
    })
}

fn connect_sample(key: &str, files: &Files) -> Option<Sample> {
    let text = |v: &str| sample(v, &quoted(v), &quoted(v));
    let yes = || sample("true", "true", "true");
    Some(match key {
        "url" => text("ws://127.0.0.1:1"),
        "nick" => text("nana"),
        "join" => sample("ops", "[\"ops\"]", "[\"ops\"]"),
        "json" | "raw" | "no_reconnect" => yes(),
        "send_every" => text("2s"),
        "ca_file" => {
            let p = files.path("cert.pem");
            Sample {
                with: vec!["wss://127.0.0.1:1".into()],
                ..sample(&p, &quoted(&p), &quoted(&p))
            }
        }
        "token" => sample("tok", "\"tok\"", "\"***\""),
        "token_file" => {
            let p = files.path("token");
            sample(&p, &quoted(&p), &quoted(&p))
        }
        "key_file" => {
            let p = files.path("key");
            sample(&p, &quoted(&p), &quoted(&p))
        }
        "log_format" => text("json"),
        _ => return None,
    })
}

/// Runs `nanachat <command> --check-config` with the option given one way; returns stdout.
fn check(command: &str, args: &[String], env: Option<(&str, &str)>, file: Option<&Path>) -> Output {
    let mut cmd = nanachat();
    cmd.arg(command).arg("--check-config").args(args);
    if let Some(file) = file {
        cmd.arg("--config").arg(file);
    }
    cmd.env_remove("NANACHAT_NICK")
        .env_remove("NANACHAT_TOKEN")
        .env_remove("NANACHAT_KEY_FILE");
    if let Some((key, value)) = env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

/// One way to give an option: its name, the arguments, a variable, a config file.
type Way<'a> = (
    &'a str,
    Vec<String>,
    Option<(&'a str, &'a str)>,
    Option<&'a Path>,
);

/// Walks every option of `command` (and the global ones), trying each as a flag, a variable
/// and a file key.
fn every_option_in_three_places(
    command: &str,
    samples: impl Fn(&str) -> Option<Sample>,
    files: &Files,
) {
    let mut cli = Cli::command();
    cli.build();
    let sub = cli.find_subcommand(command).unwrap();
    let mut walked = 0;
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        if ["config", "check_config", "help", "version"].contains(&id) {
            continue;
        }
        let sample = samples(id).unwrap_or_else(|| panic!("no sample for option {id}: add one"));
        let env = format!("NANACHAT_{}", id.to_ascii_uppercase());
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(env.as_str()),
            "{id}"
        );
        let expect = format!("\n{id} = {}\n", sample.printed);
        let flag = match arg.get_long() {
            Some(long) => {
                assert_eq!(long, id.replace('_', "-"), "{id}");
                let bool_flag = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
                if bool_flag {
                    vec![format!("--{long}={}", sample.typed)]
                } else {
                    vec![format!("--{long}"), sample.typed.clone()]
                }
            }
            None => vec![sample.typed.clone()], // positional
        };
        let file = files.dir.join(format!("{command}-{id}.toml"));
        std::fs::write(&file, format!("{id} = {}\n", sample.toml)).unwrap();
        let ways: [Way<'_>; 3] = [
            ("flag", [flag, sample.with.clone()].concat(), None, None),
            (
                "variable",
                sample.with.clone(),
                Some((&env, &sample.typed)),
                None,
            ),
            ("file key", sample.with.clone(), None, Some(&file)),
        ];
        for (way, args, env, file) in ways {
            let out = check(command, &args, env, file);
            let stdout = format!("\n{}", String::from_utf8_lossy(&out.stdout));
            assert!(
                out.status.success() && stdout.contains(&expect),
                "{command} {id} as a {way}: exit {:?}, stdout {stdout}, stderr {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        walked += 1;
    }
    assert!(walked >= 9, "walked only {walked} options of {command}");
}

#[test]
fn every_serve_option_is_a_flag_a_variable_and_a_file_key() {
    let files = Files::new("serve");
    every_option_in_three_places("serve", |key| serve_sample(key, &files), &files);
}

#[test]
fn every_connect_option_is_a_flag_a_variable_and_a_file_key() {
    let files = Files::new("connect");
    every_option_in_three_places("connect", |key| connect_sample(key, &files), &files);
}

#[test]
fn unknown_keys_are_refused_with_the_list_of_valid_ones() {
    let files = Files::new("unknown");
    for (command, valid) in [("serve", "max_text_chars"), ("connect", "send_every")] {
        let file = files.dir.join(format!("{command}.toml"));
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let out = check(command, &[], None, Some(&file));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains("unknown key `colour`") && stderr.contains(valid),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn flag_beats_variable_beats_file_beats_default() {
    let files = Files::new("order");
    let file = files.dir.join("serve.toml");
    std::fs::write(&file, "rate = 3\nburst = 4\nmax_rooms = 5\n").unwrap();
    let out = nanachat()
        .args(["serve", "--check-config", "--rate", "1", "--config"])
        .arg(&file)
        .env("NANACHAT_RATE", "2")
        .env("NANACHAT_BURST", "6")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "rate = 1",
        "burst = 6",
        "max_rooms = 5",
        "max_text_chars = 4000",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
}

#[test]
fn a_choice_on_the_command_line_overrides_the_other_side_of_it_in_the_file() {
    let files = Files::new("choices");
    let file = files.dir.join("serve.toml");
    std::fs::write(
        &file,
        "memory = true\nauth_secret = \"0123456789abcdef0123\"\n",
    )
    .unwrap();
    let out = nanachat()
        .args(["serve", "--check-config", "--store", "postgres://db/chat"])
        .arg("--auth-secret-file")
        .arg(files.path("secret"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["memory = false", "store = \"postgres://db/chat\""] {
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    assert!(!stdout.contains("auth_secret = "), "{stdout}");

    // A token given on the command line, either way, wins over the file's, either way.
    let token_file = files.path("token");
    for (file_says, flag) in [
        (
            "token = \"from-the-file\"\n".to_owned(),
            vec!["--token-file".to_owned(), token_file.clone()],
        ),
        (
            format!("token_file = {token_file:?}\n"),
            vec!["--token".to_owned(), "tok".to_owned()],
        ),
    ] {
        let file = files.dir.join("connect.toml");
        std::fs::write(&file, &file_says).unwrap();
        let out = check("connect", &flag, None, Some(&file));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file_says}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (given, dropped) = if flag[0] == "--token" {
            ("token = \"***\"", "token_file = ")
        } else {
            ("token_file = ", "token = ")
        };
        assert!(stdout.lines().any(|l| l.starts_with(given)), "{stdout}");
        assert!(!stdout.lines().any(|l| l.starts_with(dropped)), "{stdout}");
    }
}

#[test]
fn no_secret_is_shown_by_help_check_config_or_errors() {
    let secret_url = "postgres://nana:hunter2@db/chat?password=hunter2";
    let help = nanachat()
        .args(["serve", "--help"])
        .env("NANACHAT_STORE", secret_url)
        .env("NANACHAT_BROKER", "redis://:hunter2@cache/")
        .output()
        .unwrap();
    let check = nanachat()
        .args(["serve", "--check-config", "--store", secret_url])
        .output()
        .unwrap();
    let bad = nanachat()
        .args([
            "serve",
            "--check-config",
            "--store",
            "host=db password=hunter2",
        ])
        .output()
        .unwrap();
    let connect = nanachat()
        .args([
            "connect",
            "--check-config",
            "ws://ann:hunter2@h:1/?token=hunter2",
        ])
        .output()
        .unwrap();
    for out in [help, check, bad, connect] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("hunter2"), "{all}");
    }
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    for args in [
        ["--addr", "garbage"],
        ["--addr", "127.0.0.1:99999"],
        ["--store", "postgres://u@localhost:notaport/db"],
        ["--read-buffer-bytes", "100000GiB"],
        ["--max-message-bytes", "2GiB"],
        ["--connect-rate-per-ip", "2000000"],
    ] {
        let out = nanachat()
            .args(["serve", "--check-config"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    let out = nanachat()
        .args([
            "serve",
            "--check-config",
            "--store",
            "postgres://db/c",
            "--broker",
            "http://x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// 0 lifts a per-address limit; what is not a count is a usage error, one line, exit 2.
#[test]
fn per_ip_limits_take_0_and_refuse_what_is_not_a_count() {
    let args = [
        "--max-connections-per-ip",
        "0",
        "--connect-rate-per-ip",
        "0",
    ]
    .map(String::from);
    let out = check("serve", &args, None, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["max_connections_per_ip = 0", "connect_rate_per_ip = 0"] {
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    for flag in ["--max-connections-per-ip", "--connect-rate-per-ip"] {
        for bad in ["-1", "abc", "1.5"] {
            let out = check("serve", &[format!("{flag}={bad}")], None, None);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag}={bad}: {stderr}");
            let errors: Vec<_> = stderr
                .lines()
                .filter(|l| l.starts_with("nanachat:"))
                .collect();
            assert!(
                errors.len() == 1 && errors[0].contains(bad) && errors[0].contains(flag),
                "{flag}={bad}: {stderr}"
            );
        }
    }
}

#[test]
fn a_bad_file_is_one_line_that_says_what_was_expected() {
    let files = Files::new("bad-file");
    let file = files.dir.join("serve.toml");
    for (text, expect) in [
        ("heartbeat = false\n", "expected a duration"),
        ("max_message_bytes = -5\n", "not a size"),
        ("max_frame_bytes = [1]\n", "expected a size"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = check("serve", &[], None, Some(&file));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.lines().count() == 1 && stderr.contains(expect),
            "{text}: {stderr}"
        );
    }
    // Not a settings file at all: refused at 1 MiB instead of read to the end.
    let out = check("serve", &[], None, Some(Path::new("/dev/zero")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("larger than 1MiB"), "{stderr}");
}

#[test]
fn help_shows_every_default() {
    let out = nanachat().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for shown in [
        "[default: 127.0.0.1:8765]",
        "[default: 20]",
        "[default: 40]",
        "[default: 25s]",
        "[default: 4000]",
        "[default: 20s]",
        "[default: 64KiB]",
        "[default: 10000]",
    ] {
        assert!(help.contains(shown), "{shown} missing from serve --help");
    }
}
