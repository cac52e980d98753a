//! The connection phase up to authentication: the primary's greeting relayed (capabilities
//! adjusted, or capgate's own nonce when it authenticates `[[users]]` itself), TLS towards the
//! client (terminated at capgate) and towards the primary (as the URL's `sslmode` says), and
//! the client's HandshakeResponse41 read.
//!
//! Capabilities: the client is offered the primary's own minus what the relay cannot carry
//! (see [`caps::NEVER_OFFERED`]), with CLIENT_SSL when capgate has a certificate. The primary
//! leg gets exactly what the client chose within that offer, so DEPRECATE_EOF, FOUND_ROWS,
//! SESSION_TRACK and MULTI_STATEMENTS are the client's own on both legs; CLIENT_SSL there is
//! capgate's own choice.

use super::conn::{Conn, MAX_HANDSHAKE_PACKET};
use super::{SessionError, Shared};
use crate::config::TlsMode;
use crate::net::Stream;
use crate::protocol::mysql::handshake::{is_ssl_request, set_client_caps, Greeting, Response, FIXED_LEN};
use crate::protocol::mysql::{caps, errors, packet};

/// Both legs after the client's HandshakeResponse41, before authentication.
pub struct Opened {
    pub server: Conn,
    pub greeting: Greeting,
    /// The nonce the client was given: the primary's, or capgate's own.
    pub client_nonce: Vec<u8>,
    /// The client's response as sent.
    pub response: Response,
    pub response_raw: Vec<u8>,
    /// The sequence id of the client's response (1, or 2 after TLS).
    pub client_seq: u8,
    /// Capabilities of the primary leg (the client's choice within the offer, CLIENT_SSL as
    /// negotiated with the primary).
    pub server_caps: u64,
    /// The sequence id the primary expects for the response (1, or 2 after TLS).
    pub server_seq: u8,
    pub client_tls: bool,
    pub server_tls: bool,
    /// The status flags of the primary's OK that ended the login (autocommit, as the
    /// server's default has it): the session's flags until its first reply.
    pub status: u16,
}

/// Greet the client and read its response; connect to the primary (TLS as configured).
/// `client` may be replaced by its TLS upgrade. `seq` is kept at the next sequence id an
/// error to the client must carry.
pub async fn open(shared: &Shared, client: &mut Option<Conn>, seq: &mut u8) -> Result<Opened, SessionError> {
    let mut server = Conn::new(shared.primary.connect().await.map_err(SessionError::Upstream)?);
    let first = server.read(MAX_HANDSHAKE_PACKET).await?;
    let conn = client.as_mut().ok_or(SessionError::Closed)?;
    if first.payload.first() == Some(&0xff) {
        // The primary refuses connections (too many, host blocked): the client gets its words.
        conn.send_packet(0, &first.payload).await?;
        return Err(SessionError::Forwarded);
    }
    let greeting = Greeting::parse(&first.payload).map_err(|_| SessionError::UpstreamProtocol("the greeting cannot be read"))?;
    let mut offered = greeting.caps & !caps::NEVER_OFFERED & !caps::SSL;
    if shared.tls.is_some() {
        offered |= caps::SSL;
    }
    let own_nonce = (!shared.config.users.is_empty()).then(crate::protocol::mysql::auth::nonce);
    let payload = match &own_nonce {
        Some(nonce) => greeting.with_own_nonce(offered, nonce),
        None => greeting.with_caps(offered),
    };
    conn.send_packet(0, &payload).await?;
    *seq = 1;

    let mut packet = conn.read_exact(MAX_HANDSHAKE_PACKET).await?;
    *seq = packet.seq.wrapping_add(1);
    if is_ssl_request(&packet.payload) {
        let Some(acceptor) = &shared.tls else {
            return Err(SessionError::refused(errors::BAD_HANDSHAKE, "Bad handshake: TLS was not offered"));
        };
        let conn = client.take().ok_or(SessionError::Closed)?;
        if conn.has_buffered() {
            return Err(SessionError::refused(errors::BAD_HANDSHAKE, "Bad handshake: data sent before the TLS handshake"));
        }
        let Stream::Plain(tcp) = conn.stream else { return Err(SessionError::Closed) };
        let tls = acceptor.accept(tcp).await.map_err(SessionError::Io)?;
        *client = Some(Conn::new(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))));
        packet = client.as_mut().ok_or(SessionError::Closed)?.read(MAX_HANDSHAKE_PACKET).await?;
        *seq = packet.seq.wrapping_add(1);
    }
    let client_tls = client.as_ref().is_some_and(|c| c.stream.is_tls());
    if shared.config.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) && !client_tls {
        return Err(SessionError::refused(
            errors::SECURE_TRANSPORT_REQUIRED,
            "Connections using insecure transport are prohibited: capgate's [tls] mode is `require` (connect with --ssl / sslMode=REQUIRED)",
        ));
    }
    let response = Response::parse(&packet.payload).map_err(|_| SessionError::refused(errors::BAD_HANDSHAKE, "Bad handshake"))?;

    let server_tls = shared.primary.use_tls(greeting.caps & caps::SSL != 0).map_err(SessionError::Upstream)?;
    let mut server_caps = response.caps & (offered | caps::CLIENT_MYSQL) & greeting.caps & !caps::SSL;
    let mut server_seq = 1;
    if server_tls {
        server_caps |= caps::SSL;
        let mut request = packet.payload[..FIXED_LEN].to_vec();
        set_client_caps(&mut request, server_caps);
        let mut bytes = Vec::with_capacity(FIXED_LEN + 4);
        packet::write(&mut bytes, 1, &request);
        let (stream, _) = server.into_parts();
        server = Conn::new(shared.primary.start_tls(stream, &bytes).await.map_err(SessionError::Upstream)?);
        server_seq = 2;
    }
    Ok(Opened {
        server,
        client_nonce: own_nonce.map(|n| n.to_vec()).unwrap_or_else(|| greeting.nonce.clone()),
        greeting,
        response,
        response_raw: packet.payload,
        client_seq: packet.seq,
        server_caps,
        server_seq,
        client_tls,
        server_tls,
        status: 0,
    })
}
