//! Opening the listening socket: resolving HOST:PORT, the listen backlog, SO_REUSEPORT, and the
//! open-files limit a server of many connections needs. Kept apart from the accept loop, which
//! takes any bound listener (tests pass one on port 0).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connection::Handler;
use crate::{Error, Result};

use super::ServerConfig;

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// HOST:PORT (port 0 picks a free one).
    pub addr: String,
    /// Share the port with other processes (SO_REUSEPORT): the kernel spreads new connections
    /// over them.
    pub reuse_port: bool,
}

impl Listen {
    /// Listening on `addr` alone.
    pub fn on(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            reuse_port: false,
        }
    }

    /// The host and port of HOST:PORT, checked (the host is not looked up).
    pub fn host_port(&self) -> Result<(&str, u16)> {
        let addr = &self.addr;
        let bad = || Error::Config(format!("bad address '{addr}': expected HOST:PORT"));
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port: u16 = match port.parse() {
            Ok(port) => port,
            // Digits, but no TCP port: say which rule it breaks (0 picks a free one).
            Err(_) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(Error::Config(format!(
                    "bad address '{addr}': port {port} is out of range (1–65535, or 0 for a free one)"
                )));
            }
            Err(_) => return Err(bad()),
        };
        Ok((host, port))
    }

    /// Resolves HOST:PORT and binds the first address that works.
    pub async fn bind(&self) -> Result<TcpListener> {
        let addr = &self.addr;
        let (host, port) = self.host_port()?;
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| Error::Config(format!("bad address '{addr}': {err}")))?
            .collect();
        // Prefer IPv4 for names like `localhost`, as most clients try it.
        addrs.sort_by_key(|a| !a.is_ipv4());
        let mut last = None;
        for candidate in addrs {
            match listen_on(candidate, self.reuse_port) {
                Ok(listener) => return Ok(listener),
                Err(err) => last = Some(err),
            }
        }
        let err = last.unwrap_or_else(|| std::io::Error::other("no address to bind"));
        let hint = match err.kind() {
            std::io::ErrorKind::AddrInUse if !self.reuse_port => {
                " (another server is there; several nanachat processes share a port with --reuse-port)"
            }
            _ => "",
        };
        Err(Error::Io(std::io::Error::new(
            err.kind(),
            format!("cannot listen on {addr}: {err}{hint}"),
        )))
    }
}

/// Binds `listen` and serves the handler `make_handler` makes until `shutdown` is cancelled.
/// The handler is made once the address is bound, so that a bad address touches nothing (no
/// store opened, no broker dialled).
pub async fn serve<H: Handler>(
    listen: &Listen,
    config: ServerConfig,
    make_handler: impl AsyncFnOnce() -> Result<H>,
    shutdown: CancellationToken,
) -> Result<()> {
    raise_open_files_limit(config.max_connections);
    let listener = listen.bind().await?;
    let handler = make_handler().await?;
    super::run(listener, config, handler, shutdown.cancelled_owned()).await
}

/// Connections the kernel may hold for us before we accept them. A crowd reconnecting at once
/// (a resume storm) overflows a short queue, and every dropped SYN costs its client a
/// one-second retry; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen_on(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the open-files soft limit to the hard limit; warns when `max_connections` sockets
/// would not fit under it.
fn raise_open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < max_connections + 64 => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below max connections: connections beyond it will fail"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open-files limit"),
    }
}
