//! The HTTP → WebSocket upgrade, done by hand on hyper's upgrade API.
//!
//! axum's `WebSocketUpgrade` would hand us its own `WebSocket` type, with its own message type;
//! doing the (short) upgrade ourselves gives every mode, server and client, the same
//! tokio-tungstenite stream and therefore one [`Connection`](crate::connection::Connection) type.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that asked for a WebSocket, checked, with what is needed to answer and upgrade it.
pub(crate) struct UpgradeRequest {
    accept: String,
    on_upgrade: OnUpgrade,
    offered: Vec<String>,
}

/// Why a request is not a WebSocket upgrade we can take.
pub(crate) enum NotUpgrade {
    /// An ordinary HTTP request: let the router answer it.
    Plain,
    /// It asked for a WebSocket but got the handshake wrong: answer with this response.
    Refused(Box<Response<Body>>),
}

impl UpgradeRequest {
    /// Checks the handshake headers of `req` (RFC 6455 §4.2.1).
    pub(crate) fn from_request(req: &mut Request<Body>) -> Result<Self, NotUpgrade> {
        let headers = req.headers();
        if !header_has_token(headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade::Plain);
        }
        if req.method() != Method::GET || req.version() != Version::HTTP_11 {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade must be an HTTP/1.1 GET\n",
            ));
        }
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "missing 'Connection: upgrade'\n",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            let mut response = refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version: use 13\n",
            );
            if let NotUpgrade::Refused(r) = &mut response {
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return Err(response);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key\n",
            ));
        };
        // RFC 6455 §4.2.1: the key is 16 random bytes, base64-encoded (24 characters).
        let key_ok = data_encoding::BASE64
            .decode(key.as_bytes())
            .is_ok_and(|k| k.len() == 16);
        if !key_ok {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is not 16 bytes in base64\n",
            ));
        }
        let accept = derive_accept_key(key.as_bytes());
        let offered: Vec<String> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this connection cannot be upgraded\n",
            ));
        };
        Ok(Self {
            accept,
            on_upgrade,
            offered,
        })
    }

    /// The first of `supported` that the client offered.
    pub(crate) fn choose(&self, supported: &'static [&'static str]) -> Option<&'static str> {
        supported
            .iter()
            .copied()
            .find(|s| self.offered.iter().any(|o| o == s))
    }

    /// The `101 Switching Protocols` answer, and the future that yields the upgraded transport.
    pub(crate) fn accept(self, subprotocol: Option<&'static str>) -> (Response<Body>, OnUpgrade) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&self.accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(p) = subprotocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        (response, self.on_upgrade)
    }
}

/// A plain-text error response.
pub(crate) fn text_response(
    status: StatusCode,
    text: impl Into<std::borrow::Cow<'static, str>>,
) -> Response<Body> {
    let text: std::borrow::Cow<'static, str> = text.into();
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn refuse(status: StatusCode, text: &'static str) -> NotUpgrade {
    NotUpgrade::Refused(Box::new(text_response(status, text)))
}

/// Whether a comma-separated header contains `token`, case-insensitively.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
