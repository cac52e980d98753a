//! Packet framing: a 3-byte little-endian payload length and a sequence id, then the payload.
//! A payload of 16 MiB − 1 bytes or more is split into physical packets of exactly
//! [`MAX_PAYLOAD`] bytes, the last one shorter (possibly empty); together they form one
//! logical packet.
//!
//! The functions here never panic on short or hostile input: a buffer that does not yet hold
//! what is asked for gives `None` (read more), an impossible one gives a [`PacketError`].

use std::borrow::Cow;

/// Bytes in a packet header.
pub const HEADER_LEN: usize = 4;

/// The largest payload of one physical packet; a packet this long is continued by the next.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

/// Why a byte stream cannot be read as packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a packet of {len} bytes is larger than the {max} bytes allowed (max_message_size)")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
}

/// A physical packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length, 0 to [`MAX_PAYLOAD`].
    pub len: usize,
    /// The sequence id.
    pub seq: u8,
}

impl Header {
    /// The header at the start of `buf`, if four bytes are there.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        Some(Header { len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16, seq: h[3] })
    }

    /// Whether the next physical packet continues this one's payload.
    pub fn continued(&self) -> bool {
        self.len == MAX_PAYLOAD
    }
}

/// Where a whole logical packet sits at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logical {
    /// Bytes it takes in the buffer, headers included.
    pub bytes: usize,
    /// The payload length, without headers.
    pub payload_len: usize,
    /// The first packet's sequence id.
    pub seq: u8,
}

impl Logical {
    /// The payload: borrowed when it is one physical packet, joined otherwise.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> Cow<'a, [u8]> {
        let first = Header::parse(buf).map(|h| h.len).unwrap_or(0);
        if first == self.payload_len {
            return Cow::Borrowed(&buf[HEADER_LEN..HEADER_LEN + first]);
        }
        let mut out = Vec::with_capacity(self.payload_len);
        let mut at = 0;
        while at < self.bytes {
            let Some(h) = Header::parse(&buf[at..]) else { break };
            out.extend_from_slice(&buf[at + HEADER_LEN..at + HEADER_LEN + h.len]);
            at += HEADER_LEN + h.len;
        }
        Cow::Owned(out)
    }
}

/// The whole logical packet at the start of `buf`, or `None` when more bytes are needed.
/// A payload longer than `max` is an error as soon as its headers show it.
pub fn logical(buf: &[u8], max: usize) -> Result<Option<Logical>, PacketError> {
    let mut at = 0;
    let mut payload_len = 0usize;
    let mut seq = None;
    loop {
        let Some(h) = Header::parse(&buf[at..]) else { return Ok(None) };
        seq.get_or_insert(h.seq);
        payload_len += h.len;
        if payload_len > max {
            return Err(PacketError::TooLarge { len: payload_len, max });
        }
        if buf.len() < at + HEADER_LEN + h.len {
            return Ok(None);
        }
        at += HEADER_LEN + h.len;
        if !h.continued() {
            return Ok(Some(Logical { bytes: at, payload_len, seq: seq.unwrap_or(0) }));
        }
    }
}

/// Append `payload` as one logical packet starting at sequence id `seq`, split as the
/// protocol requires; returns the next sequence id.
pub fn write(out: &mut Vec<u8>, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.push(seq);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// An ERR packet (protocol 4.1 form, with SQLSTATE) as a whole packet with sequence id `seq`.
pub fn err(seq: u8, (code, sqlstate): (u16, &str), message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + message.len());
    payload.push(0xff);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    payload.extend_from_slice(&state);
    payload.extend_from_slice(message.as_bytes());
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN);
    write(&mut out, seq, &payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_packet_and_short_buffers() {
        let mut buf = Vec::new();
        assert_eq!(write(&mut buf, 7, b"\x03SELECT 1"), 8);
        assert_eq!(Header::parse(&buf), Some(Header { len: 9, seq: 7 }));
        let l = logical(&buf, 100).unwrap().unwrap();
        assert_eq!((l.bytes, l.payload_len, l.seq), (13, 9, 7));
        assert_eq!(&*l.payload(&buf), b"\x03SELECT 1");
        for cut in 0..buf.len() {
            assert_eq!(logical(&buf[..cut], 100).unwrap(), None, "{cut}");
        }
        assert_eq!(logical(&buf, 5), Err(PacketError::TooLarge { len: 9, max: 5 }));
    }

    #[test]
    fn sixteen_mib_payloads_continue() {
        // Exactly MAX_PAYLOAD bytes: a full packet and an empty one.
        let payload = vec![b'x'; MAX_PAYLOAD];
        let mut buf = Vec::new();
        assert_eq!(write(&mut buf, 0, &payload), 2);
        assert_eq!(buf.len(), MAX_PAYLOAD + 2 * HEADER_LEN);
        let l = logical(&buf, usize::MAX).unwrap().unwrap();
        assert_eq!((l.bytes, l.payload_len), (buf.len(), MAX_PAYLOAD));
        assert_eq!(l.payload(&buf).len(), MAX_PAYLOAD);
        // The continuation not there yet: incomplete, not an error.
        assert_eq!(logical(&buf[..MAX_PAYLOAD + HEADER_LEN], usize::MAX).unwrap(), None);
        // Longer: three packets, joined in order.
        let mut payload = vec![b'a'; MAX_PAYLOAD];
        payload.extend(vec![b'b'; MAX_PAYLOAD]);
        payload.extend_from_slice(b"tail");
        let mut buf = Vec::new();
        assert_eq!(write(&mut buf, 254, &payload), 1, "sequence ids wrap");
        let l = logical(&buf, usize::MAX).unwrap().unwrap();
        assert_eq!(l.payload(&buf), payload);
        // A header claiming more than allowed fails before the body arrives.
        assert!(matches!(logical(&buf[..HEADER_LEN], 1024), Err(PacketError::TooLarge { .. })));
    }

    #[test]
    fn err_packets_carry_code_and_sqlstate() {
        let e = err(1, (1040, "08004"), "Too many connections");
        assert_eq!(Header::parse(&e).unwrap(), Header { len: e.len() - 4, seq: 1 });
        assert_eq!(&e[4..7], &[0xff, 0x10, 0x04]);
        assert_eq!(&e[7..13], b"#08004");
        assert!(e.ends_with(b"Too many connections"));
    }
}
