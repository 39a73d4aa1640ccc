//! Opening a WebSocket from our side (the demo client, the Autobahn client, later the terminal
//! client and the load generator): resolve, connect, handshake — each under a timeout — and wrap
//! the result in the same [`Connection`] the server uses.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionConfig;
use crate::connection::Connection;
use crate::gate::CloseGate;
use crate::transport::{BoxedTransport, ReadAhead};
use crate::{Error, Result};

/// How long resolving, connecting and the handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked `ws://` or `wss://` URL: what to connect to and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    host: String,
    port: u16,
    /// For `wss://`: the TLS settings (trust roots).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// The host to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses and checks a URL; the error is one line fit for a user. A `wss://` URL trusts the
    /// platform's root certificates (see [`Target::with_ca_file`] for a private CA).
    pub fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|err| Error::Config(format!("bad URL '{url}': {err}")))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(Error::Config(format!(
                    "bad URL '{url}': expected ws://HOST[:PORT][/PATH] or wss://…"
                )));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("bad URL '{url}': no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = match given_port(&uri) {
            None if secure => 443,
            None => 80,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(port_out_of_range(url, text)),
            },
        };
        let tls = secure.then(|| tls_config(platform_roots()));
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    /// Also trusts the CA certificates in the PEM file `path` (a private CA). Only for `wss://`.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Self> {
        if self.tls.is_none() {
            return Err(Error::Config("--ca-file is for wss:// URLs".into()));
        }
        let doing = "read the CA certificates in";
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| Error::file(doing, path, err))?;
        if certs.is_empty() {
            return Err(Error::file(doing, path, "no certificate in it"));
        }
        let mut roots = platform_roots();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| Error::file(doing, path, err))?;
        }
        self.tls = Some(tls_config(roots));
        Ok(self)
    }

    /// The URL as given.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// The port written in `uri`'s authority, as written (`http` drops one that is no `u16`).
fn given_port(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    let after_host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_port,
    };
    after_host
        .rsplit_once(':')
        .map(|(_, port)| port)
        .filter(|port| !port.is_empty())
}

/// The TLS handshake with `target` failed: a server that answered in plain text is a wrong
/// URL (exit 2, with the `ws://` one to try), anything else a failed handshake.
fn tls_failed(target: &Target, err: &std::io::Error) -> Error {
    let plain = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| {
            matches!(
                inner,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        });
    if !plain {
        return Error::Handshake(format!("TLS with {} failed: {err}", target.uri));
    }
    let uri = &target.uri;
    // The same place: a port left to wss://'s default (443) is written out, as ws:// has 80.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let port = match given_port(uri) {
        Some(_) => String::new(),
        None => format!(":{}", target.port),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Error::Config(format!(
        "the server at {uri} does not speak TLS here; try ws://{authority}{port}{path}"
    ))
}

/// Most bytes a [`Tap`] keeps: enough for a refusal's head and its one-line body.
const TAP_BYTES: usize = 4096;

/// A transport that keeps a copy of the first bytes read ([`TAP_BYTES`]): what an HTTP
/// refusal of the handshake said (above TLS: the plain text).
struct Tap<T> {
    inner: T,
    seen: Arc<Mutex<Vec<u8>>>,
    full: bool,
}

impl<T> Tap<T> {
    fn new(inner: T, seen: &Arc<Mutex<Vec<u8>>>) -> Self {
        Self {
            inner,
            seen: seen.clone(),
            full: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.full {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = &buf.filled()[before..];
            let room = TAP_BYTES.saturating_sub(seen.len());
            seen.extend_from_slice(&fresh[..fresh.len().min(room)]);
            let full = seen.len() >= TAP_BYTES;
            drop(seen);
            self.full = full;
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The server answered the handshake with an HTTP refusal (`status`, and `body`: a nanachat
/// server's says why in one line): one sentence that names what was refused. What the user
/// gave — a token, an origin — is theirs to change (exit 2); a limit or a busy server is a
/// failure of the moment (exit 1).
fn http_refusal(target: &Target, status: http::StatusCode, body: &[u8]) -> Error {
    // The URL without its query: a token there is not for the screen.
    let uri = target.uri();
    let uri = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("ws"),
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    );
    let why = String::from_utf8_lossy(body);
    let why: String = why
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim_matches('"')
        .chars()
        .take(200)
        .collect();
    let why = crate::shown::escaped(&why).into_owned();
    let because = |fallback: &str| {
        if why.is_empty() {
            fallback.to_owned()
        } else {
            why.clone()
        }
    };
    match status.as_u16() {
        401 if target.uri().query().is_some_and(|q| q.contains("token=")) => {
            Error::Config(format!(
                "the server at {uri} refused the token in the URL ({}): get a valid one \
                 (`nanachat token --sub NICK`, or ask its operator) and connect again",
                because("no reason given")
            ))
        }
        401 => Error::Config(format!(
            "the server at {uri} wants a token before the connection ({}): get one \
             (`nanachat token --sub NICK`, or ask its operator) and give it with --token",
            because("no reason given")
        )),
        403 => Error::Config(format!(
            "the server at {uri} refused this client ({}): a proxy or the server's \
             --allowed-origin stands in the way; ask its operator",
            because("forbidden")
        )),
        429 => Error::Handshake(format!(
            "the server at {uri} refused the connection: {}; close some of this machine's \
             connections to it, or wait a moment and connect again",
            because("too many connections from this address")
        )),
        503 => Error::Handshake(format!(
            "the server at {uri} cannot take a connection now ({}); try again in a moment",
            because("busy or shutting down")
        )),
        _ => {
            let reason = if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            };
            Error::Handshake(format!(
                "the server at {uri} answered HTTP {status}{reason}, not a WebSocket: is the URL \
                 right?"
            ))
        }
    }
}

/// A URL whose port is not one TCP has.
fn port_out_of_range(url: &str, port: &str) -> Error {
    Error::Config(format!(
        "bad URL '{url}': port {port} is out of range (1–65535)"
    ))
}

/// The platform's trusted roots (what the system's TLS trusts); a missing store is just empty.
pub(crate) fn platform_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

pub(crate) fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects to `target` and completes the WebSocket handshake.
pub async fn connect(
    target: &Target,
    config: &ConnectionConfig,
    shutdown: CancellationToken,
) -> Result<Connection> {
    connect_with(target, config, shutdown, None).await
}

/// Connects asking for `subprotocol`; the server must agree to it.
pub async fn connect_with(
    target: &Target,
    config: &ConnectionConfig,
    shutdown: CancellationToken,
    subprotocol: Option<&'static str>,
) -> Result<Connection> {
    connect_from(target, config, shutdown, subprotocol, None).await
}

/// Like [`connect_with`], from a chosen local address (a load generator spreads its
/// connections over 127.0.0.2, 127.0.0.3, … to have more ports than one address gives).
pub async fn connect_from(
    target: &Target,
    config: &ConnectionConfig,
    shutdown: CancellationToken,
    subprotocol: Option<&'static str>,
    source: Option<IpAddr>,
) -> Result<Connection> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let cannot = |err: std::io::Error| {
            Error::Io(std::io::Error::new(
                err.kind(),
                format!("cannot connect to {}: {err}", target.uri),
            ))
        };
        let tcp = match source {
            None => TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(cannot)?,
            Some(source) => {
                let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await
                    .map_err(cannot)?
                    .find(|a| a.is_ipv4() == source.is_ipv4())
                    .ok_or_else(|| {
                        Error::Config(format!("{} has no address like {source}", target.uri))
                    })?;
                let socket = if source.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(cannot)?;
                socket.bind(SocketAddr::new(source, 0)).map_err(cannot)?;
                socket.connect(addr).await.map_err(cannot)?
            }
        };
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().ok();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let transport: BoxedTransport = match &target.tls {
            None => Box::new(ReadAhead::new(Tap::new(tcp, &answer), Vec::new())),
            Some(tls) => {
                let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                    Error::Config(format!("'{}' is not a valid TLS server name", target.host))
                })?;
                let stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| tls_failed(target, &err))?;
                Box::new(ReadAhead::new(Tap::new(stream, &answer), Vec::new()))
            }
        };
        let mut request = target.uri.clone().into_client_request()?;
        if let Some(p) = subprotocol {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(p),
            );
        }
        let (socket, response) = tokio_tungstenite::client_async_with_config(
            request,
            CloseGate::client(transport),
            Some(config.websocket_config()),
        )
        .await
        .map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                // The body the server sent with its head, as far as it was read (the gate
                // hands the handshake the head alone).
                let seen = answer.lock().unwrap_or_else(PoisonError::into_inner);
                let body = seen
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(&[][..], |end| &seen[end + 4..]);
                http_refusal(target, response.status(), body)
            }
            other => Error::from(other),
        })?;
        if let Some(p) = subprotocol {
            let agreed = response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL);
            if agreed.and_then(|v| v.to_str().ok()) != Some(p) {
                return Err(Error::Handshake(format!(
                    "{} does not speak {p}: is it a nanachat server?",
                    target.uri
                )));
            }
        }
        Ok(Connection::new(socket, peer, config, shutdown).with_subprotocol(subprotocol))
    })
    .await
    .map_err(|_| Error::Handshake(format!("timed out connecting to {}", target.uri)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_with_a_clear_error() {
        let t = Target::parse("ws://localhost:8765").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 8765));
        let t = Target::parse("ws://[::1]/chat").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        let t = Target::parse("wss://example.org/chat").expect("valid");
        assert_eq!((t.port, t.tls.is_some()), (443, true));
        let t = Target::parse("ws://[::1]:9000/chat").expect("valid");
        assert_eq!(t.port, 9000);
        for bad in [
            "ws://127.0.0.1:99999",
            "ws://[::1]:65536/chat",
            "wss://host:0",
        ] {
            let err = Target::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("out of range (1–65535)"), "{bad}: {err}");
        }
        for bad in ["localhost:8765", "http://x", "ws://", "wss://", "not a url"] {
            let err = Target::parse(bad).expect_err(bad).to_string();
            assert!(err.starts_with("bad URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_plain_answer_to_tls_names_the_ws_url_of_the_same_place() {
        let plain = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            )
        };
        for (url, try_url) in [
            ("wss://example.org/chat", "ws://example.org:443/chat"),
            ("wss://example.org:8765", "ws://example.org:8765/"),
            ("wss://[::1]:9000/a?b=c", "ws://[::1]:9000/a?b=c"),
        ] {
            let err = tls_failed(&Target::parse(url).expect(url), &plain());
            assert_eq!(err.exit_code(), 2, "{url}");
            let said = err.to_string();
            assert!(said.contains("does not speak TLS here"), "{said}");
            assert!(said.ends_with(&format!("try {try_url}")), "{said}");
        }
        let other = std::io::Error::other("certificate expired");
        let err = tls_failed(&Target::parse("wss://example.org").expect("valid"), &other);
        assert_eq!(err.exit_code(), 1);
    }
}
