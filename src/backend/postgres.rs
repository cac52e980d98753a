//! Connections from capgate to a PostgreSQL server (the primary, a replica): TCP or a Unix
//! socket, then TLS when the URL asks for it. The relay uses the raw [`Stream`]; capgate's own
//! work on a server (verify, replication) uses a tokio-postgres client over the same stream
//! ([`Upstream::client`]), so TLS is configured in one place.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{DbUrl, SslMode};
use crate::net::{tls, Stream};
use crate::protocol::postgres::startup::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE};

/// Why the primary could not be reached. Reported to the client as SQLSTATE 08006 with the
/// primary's address, and logged.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server does not accept TLS, but the URL says sslmode=require or stricter")]
    TlsRefused,
    /// The same when the URL wrote no sslmode and capgate's replica default asked for TLS.
    #[error(
        "the server does not accept TLS; the replica URL gives no sslmode, and links between sites default to \
         sslmode=verify-full: turn on ssl on the replica (with a certificate the URL's sslrootcert, or the \
         system's roots, trust), or write sslmode=disable in the URL to send replication unencrypted knowingly"
    )]
    TlsRefusedByDefault,
    #[error("unexpected answer {0:#04x} to the TLS request")]
    BadTlsAnswer(u8),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// What the proxy needs to reach one database.
#[derive(Clone)]
pub struct Upstream {
    pub url: DbUrl,
    /// `None` for sslmode=disable.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    pub fn new(url: DbUrl) -> Result<Upstream, tls::TlsError> {
        let tls = tls::client_config(&url)?;
        Ok(Upstream { url, tls })
    }

    async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let timeout = self.url.connect_timeout;
        let tcp =
            tokio::time::timeout(timeout, TcpStream::connect(self.url.address())).await.map_err(|_| UpstreamError::Timeout(timeout))??;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn unix(&self, path: &std::path::Path) -> Result<UnixStream, UpstreamError> {
        let timeout = self.url.connect_timeout;
        Ok(tokio::time::timeout(timeout, UnixStream::connect(path)).await.map_err(|_| UpstreamError::Timeout(timeout))??)
    }

    /// Open a connection, negotiating TLS as the URL's sslmode says (never over a Unix
    /// socket, as libpq). The whole of it — TCP, the TLS request and handshake — is bounded
    /// by the URL's `connect_timeout`: a server that accepts and then says nothing must not
    /// hang the caller.
    pub async fn connect(&self) -> Result<Stream, UpstreamError> {
        let timeout = self.url.connect_timeout;
        tokio::time::timeout(timeout, self.connect_unbounded()).await.map_err(|_| UpstreamError::Timeout(timeout))?
    }

    async fn connect_unbounded(&self) -> Result<Stream, UpstreamError> {
        if let Some(path) = self.url.unix_socket() {
            return Ok(Stream::Unix(self.unix(&path).await?));
        }
        let mut tcp = self.tcp().await?;
        let Some(config) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8u32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await?;
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let name = tls::server_name(&self.url.host)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let stream = connector.connect(name, tcp).await?;
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
            }
            b'N' if self.url.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' if self.url.sslmode_implied => Err(UpstreamError::TlsRefusedByDefault),
            b'N' => Err(UpstreamError::TlsRefused),
            other => Err(UpstreamError::BadTlsAnswer(other)),
        }
    }

    /// A tokio-postgres client logged in with the URL's credentials, over a stream opened by
    /// [`Upstream::connect`]. The connection task is spawned; it ends when the client drops.
    pub async fn client(&self, application_name: &str) -> Result<tokio_postgres::Client, UpstreamError> {
        Ok(self.client_with_task(application_name).await?.0)
    }

    /// As [`Upstream::client`], also returning the connection task, for callers that must
    /// end it themselves: a client dropped while a query hangs on a silent partition
    /// leaves its task (and socket) waiting for that reply, possibly for minutes.
    pub async fn client_with_task(
        &self,
        application_name: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), UpstreamError> {
        let stream = self.connect().await?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(self.url.user.as_deref().unwrap_or("postgres"))
            .dbname(self.url.dbname.as_deref().or(self.url.user.as_deref()).unwrap_or("postgres"))
            .application_name(application_name)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(p) = &self.url.password {
            config.password(p);
        }
        let timeout = self.url.connect_timeout;
        let (client, connection) = tokio::time::timeout(timeout, config.connect_raw(stream, tokio_postgres::NoTls))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
        Ok((client, task))
    }

    /// Send a CancelRequest for the backend `pid`/`secret`. Like libpq, over plain TCP; the
    /// server never answers it.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> Result<(), UpstreamError> {
        let mut packet = Vec::with_capacity(12 + secret.len());
        packet.extend_from_slice(&(12 + secret.len() as u32).to_be_bytes());
        packet.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(secret);
        let mut stream = match self.url.unix_socket() {
            Some(path) => Stream::Unix(self.unix(&path).await?),
            None => Stream::Plain(self.tcp().await?),
        };
        stream.write_all(&packet).await?;
        // Wait for the server to close: the cancel has then been delivered.
        let mut sink = [0u8; 1];
        let _ = tokio::time::timeout(self.url.connect_timeout, stream.read(&mut sink)).await;
        Ok(())
    }
}

/// The server's own message for a database error (with its SQLSTATE), or the client-side
/// error's text: what a log line or a DBA-facing message should quote.
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
