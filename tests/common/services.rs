//! Real PostgreSQL and Redis servers for the scale-out tests: each test starts its own, on
//! loopback, in a throw-away directory, and can stop and start them again on the same port.
//! The programs come from Debian's packages (`scripts/setup-services` installs them).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free right now on 127.0.0.1 (for servers that cannot be told port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    listener.local_addr().expect("addr").port()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + super::WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nanachat-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`).
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("NANACHAT_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server is not installed: run scripts/setup-services")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql: run scripts/setup-services")
}

/// A PostgreSQL server of its own; stopped and deleted on drop.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    root: bool,
}

impl Postgres {
    pub fn start() -> Self {
        let dir = scratch("pg");
        let root = is_root();
        let pg = Self {
            dir,
            port: free_port(),
            bin: pg_bin(),
            root,
        };
        if root {
            // PostgreSQL refuses to run as root: its files belong to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "nanachat",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.dir.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        pg.start_again();
        pg
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The URL to give `--store`.
    pub fn url(&self) -> String {
        format!("postgres://nanachat@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (again) on its port and waits until it accepts.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "20", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        wait_until("PostgreSQL accepts", || accepts(self.port));
    }

    /// Restarts the server with TLS on (`ssl = on`), serving this certificate and key (PEM).
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
        if self.root {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        self.stop();
        self.start_again();
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of its own (no persistence); killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// With TLS only: the certificate and key files it serves (PEM).
    tls: Option<(PathBuf, PathBuf)>,
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls: None,
        };
        redis.start_again();
        redis
    }

    /// A Redis that speaks TLS only (`rediss://`), with this certificate and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls: Some((cert.to_owned(), key.to_owned())),
        };
        redis.start_again();
        redis
    }

    /// The URL to give `--broker`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/setup-services");
        self.child = Some(child);
        wait_until("Redis accepts", || accepts(self.port));
    }

    /// Runs one command with `redis-cli`; returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is not installed: run scripts/setup-services");
        assert!(out.status.success(), "redis-cli: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Kills the server: everything it held (pub/sub, keys) is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_until("Redis is down", || !accepts(self.port));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
