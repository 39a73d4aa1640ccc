//! TLS to PostgreSQL with rustls (ring), for `sslmode=require`, `verify-ca` or `verify-full`
//! in the store's URL. nanachat always verifies the server's certificate — its chain against
//! the CA file given (`--store-ca-file`) or the system's roots, and the host name — whatever
//! the mode says (libpq's `require` alone would accept any certificate).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::{Error, Result};

/// Makes a TLS connector per connection; clones share one rustls configuration.
#[derive(Clone)]
pub(crate) struct Rustls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Rustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rustls")
    }
}

impl Rustls {
    /// Verifies servers against `ca` (PEM certificates), or the system's roots without one.
    pub(crate) fn new(ca: Option<&[u8]>) -> Result<Self> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|err| {
                        Error::Config(format!("the store's CA file is not PEM: {err}"))
                    })?;
                    roots.add(cert).map_err(|err| {
                        Error::Config(format!("the store's CA certificate: {err}"))
                    })?;
                }
                if roots.is_empty() {
                    return Err(Error::Config(
                        "the store's CA file holds no certificate".into(),
                    ));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Config(format!("TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Rustls {
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = rustls_pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Connect, Self::Error> {
        Ok(Connect {
            name: ServerName::try_from(domain.to_owned())?,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        })
    }
}

/// One TLS handshake to come.
pub(crate) struct Connect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connect {
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(Stream(Box::new(tls)))
        })
    }
}

/// A TLS stream to PostgreSQL.
pub(crate) struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    crate::transport::write_through!(0);
}

/// `url` with a `sslmode` that tokio-postgres reads (`verify-ca`, `verify-full` become
/// `require`), and whether it asks for TLS.
pub(crate) fn ssl_mode(url: &str) -> (String, bool) {
    let mut tls = false;
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => {
                tls = true;
                "sslmode=require".to_owned()
            }
            _ => pair.to_owned(),
        })
        .collect();
    (format!("{base}?{}", query.join("&")), tls)
}

#[cfg(test)]
mod tests {
    use super::ssl_mode;

    #[test]
    fn the_modes_that_want_tls_are_read_as_require() {
        assert_eq!(
            ssl_mode("postgres://h/db"),
            ("postgres://h/db".into(), false)
        );
        assert_eq!(
            ssl_mode("postgres://h/db?sslmode=verify-full&x=1"),
            ("postgres://h/db?sslmode=require&x=1".into(), true)
        );
        assert_eq!(
            ssl_mode("postgres://h/db?sslmode=disable"),
            ("postgres://h/db?sslmode=disable".into(), false)
        );
    }
}
