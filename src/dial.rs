//! Opening a WebSocket from our side (the demo client, the Autobahn client, later the terminal
//! client and the load generator): resolve, connect, handshake — each under a timeout — and wrap
//! the result in the same [`Connection`] the server uses.

use std::time::Duration;

use http::Uri;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionConfig;
use crate::connection::Connection;
use crate::transport::{BoxedTransport, ReadAhead};
use crate::{Error, Result};

/// How long resolving, connecting and the handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked `ws://` URL: what to connect to and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    host: String,
    port: u16,
}

impl Target {
    /// Parses and checks a URL; the error is one line fit for a user.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|err| Error::Config(format!("bad URL '{url}': {err}")))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(Error::Config(format!(
                    "bad URL '{url}': wss:// (TLS) is not supported yet"
                )));
            }
            _ => {
                return Err(Error::Config(format!(
                    "bad URL '{url}': expected ws://HOST[:PORT][/PATH]"
                )));
            }
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("bad URL '{url}': no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self { uri, host, port })
    }

    /// The URL as given.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
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
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|err| {
                Error::Io(std::io::Error::new(
                    err.kind(),
                    format!("cannot connect to {}: {err}", target.uri),
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().ok();
        let mut request = target.uri.clone().into_client_request()?;
        if let Some(p) = subprotocol {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(p),
            );
        }
        let transport: BoxedTransport = Box::new(ReadAhead::new(tcp, Vec::new()));
        let (socket, response) = tokio_tungstenite::client_async_with_config(
            request,
            transport,
            Some(config.websocket_config()),
        )
        .await?;
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
        for bad in [
            "localhost:8765",
            "http://x",
            "ws://",
            "wss://x",
            "not a url",
        ] {
            let err = Target::parse(bad).expect_err(bad).to_string();
            assert!(err.starts_with("bad URL"), "{bad}: {err}");
        }
    }
}
