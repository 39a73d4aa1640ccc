//! The server: one port for every mode. The accept loop (axum on hyper) answers plain HTTP
//! (`/healthz`, a page on `/`) and upgrades WebSocket requests on any path; each upgraded
//! connection runs the mode's [`Handler`] on its own task.
//!
//! Limits and shutdown live here, the same for every handler: limits per source address (429
//! past them, see `server/per_ip.rs`), a semaphore permit per WebSocket (503 when none is
//! left), and a two-phase stop — cancel every connection (each closes with 1001), then wait for
//! them, at most `shutdown_timeout`.

mod listen;
mod per_ip;
mod timed;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, Response, StatusCode, Version};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::ConnectionConfig;
use crate::connection::{Asset, Connection, Handler, serve_connection};
use crate::metrics;
use crate::shown::Shown;
use crate::transport::{BoxedTransport, ReadAhead};
use crate::{Error, Result};
pub use listen::{Listen, serve};
use per_ip::PerIp;
use timed::TimedWrites;
use upgrade::{NotUpgrade, UpgradeRequest, text_response};

/// The largest HTTP request head (request line and headers) read; a larger one gets 431. A
/// WebSocket handshake needs a few hundred bytes; a browser's cookies a few KiB.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// The highest `connect_rate_per_ip` taken: a rate past it limits nothing (0 says so plainly),
/// and its burst, twice the rate, stays well inside a `u32`.
pub const MAX_CONNECT_RATE_PER_IP: u32 = 1_000_000;

/// Settings of the server layer, shared by every mode.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most WebSocket connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// How long a graceful shutdown may take before the remaining connections are dropped.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send its HTTP request head (the WebSocket handshake).
    pub handshake_timeout: Duration,
    /// Most TCP connections still in their handshake (TLS and the HTTP request head) at once;
    /// more are answered 503 and closed at once. Each may hold up to
    /// [`MAX_REQUEST_HEAD_BYTES`] until its head is read.
    pub max_handshakes: usize,
    /// Most WebSocket connections open at once from one IP address; more get 429, so one
    /// address cannot take every connection. 0: no limit (a loopback benchmark, or a server
    /// behind a reverse proxy, where every client has the proxy's address).
    pub max_connections_per_ip: usize,
    /// New WebSocket connections a second from one IP address, sustained, in bursts of up to
    /// twice as many; faster ones get 429. 0: no limit (as above).
    pub connect_rate_per_ip: u32,
    /// Limits and timers of each connection.
    pub connection: ConnectionConfig,
    /// Browser origins allowed to open a WebSocket (`https://chat.example.org`). Empty: only
    /// the server's own origin (its scheme, and the request's `Host`, compared exactly); a
    /// list: exactly those (the `Host` header is not trusted: DNS rebinding); `["*"]`: any. A
    /// request with another `Origin` gets 403; one without an `Origin` (not a browser) is not
    /// affected. See [`ServerConfig::origin_policy`].
    pub allowed_origins: Vec<String>,
    /// Serve `wss://` (and `https://`) with this certificate; see [`tls_config`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS configuration (rustls with ring) from a PEM certificate chain and a PEM private key;
/// a missing or unreadable file is a configuration error that names it.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|err| Error::file("read a certificate from", cert, err))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| Error::file("read a private key from", key, err))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| Error::Config(format!("TLS: {err}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|err| Error::Config(format!("TLS certificate and key do not fit: {err}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            max_connections_per_ip: 1000,
            connect_rate_per_ip: 100,
            connection: ConnectionConfig::default(),
            allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Checks the values once, at start.
    pub fn validate(&self) -> Result<()> {
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(Error::Config(format!(
                "max connections must be from 1 to {}",
                Semaphore::MAX_PERMITS
            )));
        }
        if self.max_handshakes == 0 || self.max_handshakes > Semaphore::MAX_PERMITS {
            return Err(Error::Config(format!(
                "max handshakes must be from 1 to {}",
                Semaphore::MAX_PERMITS
            )));
        }
        if self.connect_rate_per_ip > MAX_CONNECT_RATE_PER_IP {
            return Err(Error::Config(format!(
                "connect rate per IP must be from 0 (no limit) to {MAX_CONNECT_RATE_PER_IP}"
            )));
        }
        if self.handshake_timeout.is_zero() || self.shutdown_timeout.is_zero() {
            return Err(Error::Config(
                "handshake and shutdown timeouts must be above 0".into(),
            ));
        }
        let any = self.allowed_origins.iter().any(|o| o == "*");
        if any && self.allowed_origins.len() > 1 {
            return Err(Error::Config(
                "allowed origin '*' lets every page in: list nothing beside it".into(),
            ));
        }
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|o| !any && normal_origin(o).is_none())
        {
            return Err(Error::Config(format!(
                "'{bad}' is not an origin: expected SCHEME://HOST[:PORT], e.g. https://chat.example.org, or '*' for any"
            )));
        }
        self.connection.validate()
    }

    /// The policy in force, in words, for the log at start.
    pub fn origin_policy(&self) -> String {
        match self.allowed_origins.as_slice() {
            [] => "browser pages from the server's own origin only (scheme, host and port as the \
                   page was reached; list origins with --allowed-origin, or '*' for any)"
                .into(),
            [any] if any == "*" => "browser pages from any origin ('*')".into(),
            list => format!("browser pages from {} only", list.join(", ")),
        }
    }

    /// Whether a browser page from `origin` may connect, the request naming `host` in its
    /// `Host` header: see [`ServerConfig::allowed_origins`].
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if matches!(self.allowed_origins.as_slice(), [any] if any == "*") {
            return true; // even "null": a sandboxed page, a file
        }
        let Some(origin) = normal_origin(origin) else {
            return false; // "null", or not an origin at all
        };
        match self.allowed_origins.as_slice() {
            [any] if any == "*" => true,
            // The server's own pages (the browser client) are same-origin: the same scheme
            // and the authority the request was sent to.
            [] => host.is_some_and(|host| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                normal_origin(&format!("{scheme}://{host}")).as_ref() == Some(&origin)
            }),
            list => list
                .iter()
                .any(|o| normal_origin(o).as_ref() == Some(&origin)),
        }
    }
}

/// Client text quoted in a refusal (its body and its log line): control characters escaped
/// ([`Shown`]), and cut after 200 characters — an 8 KB header is not echoed back whole.
fn quoted(text: &str) -> String {
    const MOST: usize = 200;
    match text.char_indices().nth(MOST) {
        Some((at, _)) => format!("{}…", Shown(&text[..at])),
        None => Shown(text).to_string(),
    }
}

/// An origin (`scheme://host[:port]`) in one spelling: scheme and host in lower case, the
/// scheme's default port left out, no trailing slash; `None` if it is not one (a path, a
/// query, userinfo, no host, a port that is not a number).
fn normal_origin(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    // The port follows the last ':' unless that is inside an IPv6 literal (`[::1]`).
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let default = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port.filter(|&p| Some(p) != default) {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// The token of an upgrade request: `Authorization: Bearer TOKEN`, or `?token=TOKEN` in the URL
/// (browsers cannot set headers on a WebSocket).
fn request_token(req: &Request) -> Option<String> {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // RFC 9110 §11.1: the scheme is case-insensitive; one or more spaces follow it.
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    bearer.or_else(|| {
        req.uri().query()?.split('&').find_map(|pair| {
            let value = pair.strip_prefix("token=")?;
            // A JWT is base64url and dots: nothing to percent-decode.
            Some(value.to_owned())
        })
    })
}

struct Shared<H> {
    handler: H,
    /// WebSocket connections accepted since start.
    accepted: AtomicU64,
    /// Upgrades refused because every permit was taken.
    refused: AtomicU64,
    /// Upgrades refused because of their `Origin`.
    refused_origin: AtomicU64,
    /// Upgrades refused by the handler's `authorize`.
    refused_auth: AtomicU64,
    /// TCP connections refused because `max_handshakes` were already in progress.
    refused_handshakes: AtomicU64,
    /// Upgrades refused by a per-address limit.
    refused_per_ip: AtomicU64,
    config: ServerConfig,
    /// The connections open and the connection rate of each source address.
    per_ip: Arc<PerIp>,
    permits: Arc<Semaphore>,
    /// One permit per connection still in its handshake.
    handshakes: Arc<Semaphore>,
    connections: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves `handler` on `listener` until `shutdown` resolves, then closes every connection with
/// 1001 and waits for them (at most `config.shutdown_timeout`).
pub async fn run<H: Handler>(
    listener: TcpListener,
    config: ServerConfig,
    handler: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let shared = Arc::new(Shared {
        handler,
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        refused_origin: AtomicU64::new(0),
        refused_auth: AtomicU64::new(0),
        refused_handshakes: AtomicU64::new(0),
        refused_per_ip: AtomicU64::new(0),
        per_ip: Arc::new(PerIp::new(
            config.max_connections_per_ip,
            config.connect_rate_per_ip,
        )),
        permits: Arc::new(Semaphore::new(config.max_connections)),
        handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
        config,
        connections: TaskTracker::new(),
        shutdown: token.clone(),
    });

    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_page::<H>))
        .route("/readyz", get(readyz::<H>))
        .fallback(upgrade_or_page::<H>)
        .with_state(shared.clone());
    let app = match shared.handler.api(shared.config.handshake_timeout) {
        Some(api) => app.nest_service("/api/v1", api),
        None => app,
    };

    let scheme = if shared.config.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    info!(%addr, "listening on {scheme}://{addr}");
    if shared.handler.assets().iter().any(|a| a.path == "/") {
        let page = if shared.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // A wildcard address is no place a browser can go: name this machine's loopback.
        let mut shown = addr;
        if shown.ip().is_unspecified() {
            shown.set_ip(if shown.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        info!("browser client at {page}://{shown}/");
    }
    info!("origins: {}", shared.config.origin_policy());
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down");
        stop.cancel();
    });
    accept_loop(&listener, &app, &shared).await;

    shared.connections.close();
    let open = shared.connections.len();
    if tokio::time::timeout(shared.config.shutdown_timeout, shared.connections.wait())
        .await
        .is_err()
    {
        warn!(
            left = shared.connections.len(),
            "shutdown timeout: dropping the connections still open"
        );
    }
    shared.handler.drain().await;
    info!(closed = open, "stopped");
    Ok(())
}

/// Accepts TCP connections until shutdown, each served by hyper (HTTP/1.1 with upgrades) on
/// its own tracked task, with a deadline for the request head (slow-loris clients).
async fn accept_loop<H: Handler>(listener: &TcpListener, app: &Router, shared: &Arc<Shared<H>>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(err) => {
                // Out of file descriptors and the like: wait a little, keep serving the rest.
                warn!(cause = %err, "accept failed");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        // Handshakes in progress are counted: each may hold a request head's buffer, and a
        // crowd of unfinished ones must not take the memory real clients need.
        let Ok(handshake) = shared.handshakes.clone().try_acquire_owned() else {
            metrics::bump(&shared.refused_handshakes);
            if shared.config.tls.is_none() {
                let _ = tcp.try_write(TOO_MANY_HANDSHAKES);
            }
            debug!(%peer, "refused: too many handshakes in progress");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // An answer the client does not read is cut off after the write timeout; a WebSocket
        // keeps its own (the deadline is lifted when a request asks for an upgrade).
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let tcp = TimedWrites::new(tcp, shared.config.connection.write_timeout, armed.clone());
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                if req.headers().contains_key(axum::http::header::UPGRADE) {
                    armed.store(false, Ordering::Relaxed);
                }
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    // RFC 9112 §3.2: an HTTP/1.1 request without a Host is answered 400.
                    if req.version() == Version::HTTP_11
                        && !req.headers().contains_key(axum::http::header::HOST)
                    {
                        return Ok(text_response(
                            StatusCode::BAD_REQUEST,
                            "missing Host header (required in HTTP/1.1)\n",
                        ));
                    }
                    app.oneshot(req).await
                }
            });
        let stop = shared.shutdown.clone();
        let http = http.clone();
        match &shared.config.tls {
            None => {
                shared.connections.spawn(async move {
                    serve_http(http, TokioIo::new(tcp), service, peer, stop).await;
                    drop(handshake);
                });
            }
            Some(tls) => {
                // The TLS handshake runs in the connection's own task, under the same deadline
                // as the HTTP request head: a slow or silent client holds up nobody else.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let deadline = shared.config.handshake_timeout;
                shared.connections.spawn(async move {
                    match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_http(http, TokioIo::new(stream), service, peer, stop).await;
                            drop(handshake);
                        }
                        Ok(Err(err)) => debug!(%peer, cause = %err, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// The whole answer to a connection beyond `max_handshakes`, written without waiting.
const TOO_MANY_HANDSHAKES: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: text/plain\r\ncontent-length: 33\r\nconnection: close\r\n\r\n\
too many handshakes in progress\r\n";

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends or the server stops.
async fn serve_http<IO, S>(
    http: http1::Builder,
    io: TokioIo<IO>,
    service: S,
    peer: SocketAddr,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = served {
        debug!(%peer, cause = %err, "http connection ended");
    }
}

/// The content-security policy of every page we serve: our own script, style and WebSocket,
/// nothing inline, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset_response(asset: &Asset) -> Response<Body> {
    use axum::http::{HeaderValue, header};
    let mut response = Response::new(Body::from(asset.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/metrics`: the server's, the connection layer's and the handler's counters.
/// `/readyz`: 200 while the handler can serve (the chat server: its store and broker answer),
/// 503 with what it cannot reach, or while shutting down. `/healthz` is liveness only: a
/// process that answers it should not be restarted for an outage of something else.
async fn readyz<H: Handler>(State(shared): State<Arc<Shared<H>>>) -> Response<Body> {
    if shared.shutdown.is_cancelled() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        );
    }
    match shared.handler.ready().await {
        Ok(()) => text_response(StatusCode::OK, "ready\n"),
        Err(why) => {
            debug!(%why, "not ready");
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
        }
    }
}

async fn metrics_page<H: Handler>(State(shared): State<Arc<Shared<H>>>) -> Response<Body> {
    let mut out = String::new();
    let open = shared.config.max_connections - shared.permits.available_permits();
    metrics::write_all(
        &mut out,
        &[
            (
                "nanachat_connections_open",
                "gauge",
                "WebSocket connections open.",
                open as u64,
            ),
            (
                "nanachat_connections_total",
                "counter",
                "WebSocket connections accepted.",
                shared.accepted.load(Ordering::Relaxed),
            ),
            (
                "nanachat_connections_refused_total",
                "counter",
                "WebSocket upgrades refused: max connections reached.",
                shared.refused.load(Ordering::Relaxed),
            ),
            (
                "nanachat_handshakes_in_progress",
                "gauge",
                "TCP connections still in their handshake (TLS and the HTTP request head).",
                (shared.config.max_handshakes - shared.handshakes.available_permits()) as u64,
            ),
            (
                "nanachat_handshakes_refused_total",
                "counter",
                "TCP connections refused: max handshakes in progress.",
                shared.refused_handshakes.load(Ordering::Relaxed),
            ),
            (
                "nanachat_auth_refused_total",
                "counter",
                "WebSocket upgrades refused: token missing or not valid.",
                shared.refused_auth.load(Ordering::Relaxed),
            ),
            (
                "nanachat_origin_refused_total",
                "counter",
                "WebSocket upgrades refused: origin not allowed.",
                shared.refused_origin.load(Ordering::Relaxed),
            ),
            (
                "nanachat_refused_per_ip_total",
                "counter",
                "WebSocket upgrades refused: max connections or connect rate per address reached.",
                shared.refused_per_ip.load(Ordering::Relaxed),
            ),
            (
                "nanachat_per_ip_addresses",
                "gauge",
                "Source addresses the per-address limits track (connected, or connected lately).",
                shared.per_ip.addresses() as u64,
            ),
        ],
    );
    metrics::write_connection_metrics(&mut out);
    shared.handler.write_metrics(&mut out);
    let mut response = Response::new(Body::from(out));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The fallback route: a WebSocket upgrade on any path, otherwise a short page on `/`.
async fn upgrade_or_page<H: Handler>(
    State(shared): State<Arc<Shared<H>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response<Body> {
    let upgrade = match UpgradeRequest::from_request(&mut req) {
        Ok(upgrade) => upgrade,
        Err(NotUpgrade::Refused(response)) => return *response,
        Err(NotUpgrade::Plain) => {
            let path = req.uri().path();
            return match shared.handler.assets().iter().find(|a| a.path == path) {
                Some(_) if !matches!(*req.method(), Method::GET | Method::HEAD) => {
                    let mut response =
                        text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                    response.headers_mut().insert(
                        axum::http::header::ALLOW,
                        axum::http::HeaderValue::from_static("GET, HEAD"),
                    );
                    response
                }
                Some(asset) => asset_response(asset),
                None => text_response(StatusCode::NOT_FOUND, "not found\n"),
            };
        }
    };
    if req
        .headers()
        .get_all(axum::http::header::HOST)
        .iter()
        .count()
        > 1
    {
        return text_response(StatusCode::BAD_REQUEST, "more than one Host header\n");
    }
    let mut origins = req.headers().get_all(axum::http::header::ORIGIN).iter();
    if let Some(origin) = origins.next() {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("(not text)");
        // A browser sends one Origin; with several, which one is true cannot be told.
        if origins.next().is_some() || !shared.config.origin_allowed(origin, host) {
            metrics::bump(&shared.refused_origin);
            warn!(%peer, origin = %quoted(origin), "refused: origin not allowed");
            return text_response(
                StatusCode::FORBIDDEN,
                format!(
                    "origin not allowed: {} (see --allowed-origin)\n",
                    quoted(origin)
                ),
            );
        }
    }
    if shared.shutdown.is_cancelled() {
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    // Per address first: one address at its limits must not take the server's last permits.
    let slot = match shared.per_ip.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            metrics::bump(&shared.refused_per_ip);
            warn!(%peer, "refused: {refusal}");
            let mut response = text_response(StatusCode::TOO_MANY_REQUESTS, format!("{refusal}\n"));
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(refusal.retry_after_secs()),
            );
            return response;
        }
    };
    let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
        metrics::bump(&shared.refused);
        warn!(%peer, "refused: max connections reached");
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "server full: max connections reached\n",
        );
    };
    let subprotocol = upgrade.choose(shared.handler.subprotocols());
    let token = request_token(&req);
    if let Err(why) = shared.handler.authorize(token.as_deref(), subprotocol) {
        metrics::bump(&shared.refused_auth);
        warn!(%peer, why = %quoted(&why), "refused: not authorized");
        return text_response(StatusCode::UNAUTHORIZED, format!("{}\n", quoted(&why)));
    }
    let (response, on_upgrade) = upgrade.accept(subprotocol);
    metrics::bump(&shared.accepted);
    let task_shared = shared.clone();
    shared.connections.spawn(async move {
        let _permit = permit;
        let _slot = slot;
        let shared = task_shared;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                warn!(%peer, cause = %err, "upgrade failed");
                return;
            }
        };
        // Take the TCP stream back out of hyper's wrapper: one box less per connection. Bytes
        // the client sent right behind its handshake come along.
        let transport: BoxedTransport = match upgraded.downcast::<TokioIo<TimedWrites<TcpStream>>>()
        {
            Ok(parts) => Box::new(ReadAhead::new(
                parts.io.into_inner().into_inner(),
                parts.read_buf.to_vec(),
            )),
            Err(upgraded) => Box::new(ReadAhead::new(TokioIo::new(upgraded), Vec::new())),
        };
        let conn = Box::pin(Connection::accept(
            transport,
            Some(peer),
            &shared.config.connection,
            shared.shutdown.clone(),
        ))
        .await
        .with_subprotocol(subprotocol)
        .with_token(token);
        info!(%peer, subprotocol = subprotocol.unwrap_or("none"), "connected");
        // Boxed at its own size: the task would otherwise be as large as the handshake's state
        // and the connection's together, for as long as the connection lives.
        let ended = Box::pin(serve_connection(&shared.handler, conn)).await;
        info!(%peer, reason = %Shown(&ended), "disconnected");
    });
    response
}
