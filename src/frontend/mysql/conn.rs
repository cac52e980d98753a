//! A connection with a receive buffer, for the packet-at-a-time connection phase (greeting,
//! TLS, authentication). The relay then takes the stream and whatever is left in the buffer
//! with [`Conn::into_parts`].

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SessionError;
use crate::net::Stream;
use crate::protocol::mysql::packet::{self, Header, HEADER_LEN};

/// Largest packet accepted during the connection phase (a handshake response with many
/// connection attributes, an RSA public key) — far below what a hostile header may claim.
pub const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// One side of a session while it is read packet by packet.
pub struct Conn {
    pub stream: Stream,
    buf: BytesMut,
}

/// A whole logical packet: its first sequence id and its payload.
pub struct Packet {
    pub seq: u8,
    pub payload: Vec<u8>,
}

fn eof_is_closed(e: std::io::Error) -> SessionError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SessionError::Closed
    } else {
        SessionError::Io(e)
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn { stream, buf: BytesMut::with_capacity(1024) }
    }

    /// True when the peer sent bytes not consumed yet.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Read one whole packet of at most `max` payload bytes.
    pub async fn read(&mut self, max: usize) -> Result<Packet, SessionError> {
        loop {
            if let Some(l) = packet::logical(&self.buf, max).map_err(SessionError::Packet)? {
                let payload = l.payload(&self.buf).into_owned();
                let _ = self.buf.split_to(l.bytes);
                return Ok(Packet { seq: l.seq, payload });
            }
            if let Some(h) = Header::parse(&self.buf) {
                self.buf.reserve((HEADER_LEN + h.len).saturating_sub(self.buf.len()).min(max));
            }
            if self.stream.read_buf(&mut self.buf).await.map_err(SessionError::Io)? == 0 {
                return Err(SessionError::Closed);
            }
        }
    }

    /// Read one packet without reading past it: the client's first packet, which may be an
    /// SSLRequest directly followed by the TLS ClientHello (MySQL sends no answer to an
    /// SSLRequest, so clients start TLS at once). Bytes past the packet must stay in the socket
    /// for the TLS acceptor.
    pub async fn read_exact(&mut self, max: usize) -> Result<Packet, SessionError> {
        if !self.buf.is_empty() {
            return self.read(max).await;
        }
        let mut head = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut head).await.map_err(eof_is_closed)?;
        let h = Header::parse(&head).ok_or(SessionError::Closed)?;
        if h.len > max || h.continued() {
            return Err(SessionError::Packet(packet::PacketError::TooLarge { len: h.len, max }));
        }
        let mut payload = vec![0u8; h.len];
        self.stream.read_exact(&mut payload).await.map_err(eof_is_closed)?;
        Ok(Packet { seq: h.seq, payload })
    }

    /// Write and flush whole packets.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream.write_all(bytes).await.map_err(SessionError::Io)?;
        self.stream.flush().await.map_err(SessionError::Io)
    }

    /// Write `payload` as one packet with sequence id `seq`.
    pub async fn send_packet(&mut self, seq: u8, payload: &[u8]) -> Result<(), SessionError> {
        let mut out = Vec::with_capacity(payload.len() + HEADER_LEN);
        packet::write(&mut out, seq, payload);
        self.send(&out).await
    }
}
