//! Connections from capgate to a MySQL or MariaDB server (the primary): TCP or a Unix
//! socket, and TLS after the server's greeting when the URL's `sslmode` asks for it (MySQL
//! negotiates TLS inside the protocol: an SSLRequest packet, then the TLS handshake).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::config::{DbUrl, SslMode};
use crate::net::{tls, Stream};

/// Why the primary could not be reached or secured. The client is told with the primary's
/// address.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server does not offer TLS, but the URL says sslmode={0:?}")]
    TlsRefused(SslMode),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// What capgate needs to reach the primary.
#[derive(Clone)]
pub struct Upstream {
    pub url: DbUrl,
    /// `None` for sslmode=disable.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    pub fn new(url: DbUrl) -> Result<Upstream, tls::TlsError> {
        // MySQL servers know no ALPN protocol name: offer none.
        let tls = tls::client_config(&url)?.map(|c| {
            let mut c = (*c).clone();
            c.alpn_protocols.clear();
            Arc::new(c)
        });
        Ok(Upstream { url, tls })
    }

    /// Open the connection (TCP or Unix socket), bounded by the URL's `connect_timeout`.
    pub async fn connect(&self) -> Result<Stream, UpstreamError> {
        let timeout = self.url.connect_timeout;
        let connect = async {
            if let Some(path) = self.url.unix_socket() {
                return Ok::<_, std::io::Error>(Stream::Unix(UnixStream::connect(path).await?));
            }
            let tcp = TcpStream::connect(self.url.address()).await?;
            tcp.set_nodelay(true)?;
            Ok(Stream::Plain(tcp))
        };
        Ok(tokio::time::timeout(timeout, connect).await.map_err(|_| UpstreamError::Timeout(timeout))??)
    }

    /// Whether to ask the server for TLS, given whether its greeting offers it; an error when
    /// the URL requires TLS and the server does not offer it. Never over a Unix socket.
    pub fn use_tls(&self, offered: bool) -> Result<bool, UpstreamError> {
        if self.tls.is_none() || self.url.unix_socket().is_some() {
            return Ok(false);
        }
        match (offered, self.url.sslmode) {
            (true, _) => Ok(true),
            (false, SslMode::Prefer) => Ok(false),
            (false, mode) => Err(UpstreamError::TlsRefused(mode)),
        }
    }

    /// Send `ssl_request` (a whole SSLRequest packet) and run the TLS handshake, bounded by
    /// `connect_timeout`.
    pub async fn start_tls(&self, stream: Stream, ssl_request: &[u8]) -> Result<Stream, UpstreamError> {
        let (Stream::Plain(mut tcp), Some(config)) = (stream, &self.tls) else {
            return Err(UpstreamError::TlsRefused(self.url.sslmode));
        };
        let timeout = self.url.connect_timeout;
        let handshake = async {
            tcp.write_all(ssl_request).await?;
            let name = tls::server_name(&self.url.host)?;
            let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
            Ok::<_, UpstreamError>(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
        };
        tokio::time::timeout(timeout, handshake).await.map_err(|_| UpstreamError::Timeout(timeout))?
    }
}
