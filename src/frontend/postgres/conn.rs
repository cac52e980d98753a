//! A connection with a receive buffer, for the message-at-a-time startup phase.
//!
//! During startup and authentication the proxy reads whole messages one by one. After it,
//! the relay takes the stream and whatever is left in the buffer (a client may pipeline its
//! first query behind the startup packet) with [`Conn::into_parts`].

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SessionError;
use crate::net::Stream;
use crate::protocol::postgres::frame::{Header, HEADER_LEN};
use crate::protocol::postgres::startup::{self, StartupPacket};

/// Largest message accepted during startup and authentication (a SASL exchange or a
/// ParameterStatus is far smaller).
pub const MAX_STARTUP_FRAME: u32 = 64 * 1024;

/// One side of a session while it is read message by message.
pub struct Conn {
    pub stream: Stream,
    buf: BytesMut,
}

/// A whole tagged message as received: the tag, and the full frame bytes (header included)
/// so it can be forwarded unchanged.
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn { stream, buf: BytesMut::with_capacity(1024) }
    }

    /// True when the peer has sent bytes the proxy has not consumed yet.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }

    async fn fill(&mut self) -> Result<(), SessionError> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await.map_err(SessionError::Io)?;
        if n == 0 {
            return Err(SessionError::Closed);
        }
        Ok(())
    }

    /// Read one untagged startup-phase packet.
    pub async fn read_startup(&mut self) -> Result<(StartupPacket, Bytes), SessionError> {
        loop {
            if let Some(len) = startup::packet_len(&self.buf).map_err(SessionError::Protocol)? {
                if self.buf.len() >= len {
                    let raw = self.buf.split_to(len).freeze();
                    let packet = startup::parse(&raw).map_err(SessionError::Protocol)?;
                    return Ok((packet, raw));
                }
            }
            self.fill().await?;
        }
    }

    /// Read one whole tagged message of at most `max` bytes.
    pub async fn read_frame(&mut self, max: u32) -> Result<Frame, SessionError> {
        loop {
            if let Some(h) = Header::parse(&self.buf, max).map_err(SessionError::Protocol)? {
                if self.buf.len() >= h.frame_len() {
                    let raw = self.buf.split_to(h.frame_len()).freeze();
                    return Ok(Frame { tag: h.tag, raw });
                }
                self.buf.reserve(h.frame_len() - self.buf.len());
            }
            self.fill().await?;
        }
    }

    /// Write and flush.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream.write_all(bytes).await.map_err(SessionError::Io)?;
        self.stream.flush().await.map_err(SessionError::Io)
    }
}
