//! The untagged packets a client may send before the regular protocol starts: SSLRequest,
//! GSSENCRequest, CancelRequest and the StartupMessage itself.

use super::frame::FrameError;

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: u32 = 10_000;

pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Protocol 3.0; minor versions above 0 are negotiated by the primary, not by the proxy.
pub const PROTOCOL_MAJOR_3: u32 = 3;

/// A parsed startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// Cancel the query running on the backend with this key. The secret is 4 bytes in
    /// protocol 3.0 and up to 256 bytes in 3.2.
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and the parameters (user, database, options, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order sent. Values are bytes as sent; PostgreSQL takes them as text in
    /// the client encoding, so they are kept as lossless `String`s where valid UTF-8 and
    /// rejected otherwise only when the proxy must read them (user, database).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Encode as sent on the wire (used when logging in upstream with other credentials).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&((self.major as u32) << 16 | self.minor as u32).to_be_bytes());
        for (k, v) in &self.params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// The name and value of the startup parameter capgate adds to every session it relays to the
/// primary: the capture triggers tell capgate's sessions (whose sync changes capgate
/// coordinates) from everyone else's (decision 0009). A value given at startup is also the
/// value `RESET ALL` and `DISCARD ALL` return to.
pub const SESSION_MARKER: (&str, &str) = ("capgate.session", "on");

/// A raw StartupMessage (as received, length word included) with one more parameter placed
/// last, where the server reads it after any of the same name the client sent. Built from the
/// raw bytes so nothing else the client sent changes.
pub fn with_parameter(raw: &[u8], key: &str, value: &str) -> Vec<u8> {
    // length, version, pairs, and the final NUL.
    let body = raw.get(4..raw.len().saturating_sub(1)).unwrap_or_default();
    let len = 4 + body.len() + key.len() + value.len() + 3;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(body);
    for part in [key, value] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

/// The length of the startup packet at the front of `buf`, if its length word is there.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(word) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(FrameError::StartupLength(len));
    }
    Ok(Some(len as usize))
}

/// Parse one whole startup packet (exactly `packet_len` bytes).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, FrameError> {
    if packet.len() < 8 {
        return Err(FrameError::StartupLength(packet.len() as u32));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let rest = &packet[8..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(FrameError::StartupLayout("cancel request key has the wrong length"));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupPacket::Cancel { pid, secret: rest[4..].to_vec() })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            Ok(StartupPacket::Startup(StartupMessage { major, minor, params: parse_params(rest)? }))
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut rest)?;
        if key.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        params.push((key, value));
    }
    if !rest.is_empty() {
        return Err(FrameError::StartupLayout("bytes after the terminating zero"));
    }
    Ok(params)
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, FrameError> {
    let end = rest.iter().position(|&b| b == 0).ok_or(FrameError::StartupLayout("missing terminating zero in parameters"))?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| FrameError::StartupLayout("parameter is not valid UTF-8"))?.to_owned();
    *rest = &rest[end + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let m = StartupMessage { major: 3, minor: 0, params: vec![("user".into(), "app".into()), ("database".into(), "db".into())] };
        let bytes = m.encode();
        assert_eq!(packet_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(parse(&bytes).unwrap(), StartupPacket::Startup(m));
    }

    #[test]
    fn special_requests() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse(&ssl).unwrap(), StartupPacket::SslRequest);
        let mut cancel = vec![0, 0, 0, 16];
        cancel.extend(CANCEL_REQUEST_CODE.to_be_bytes());
        cancel.extend(42i32.to_be_bytes());
        cancel.extend([1, 2, 3, 4]);
        assert_eq!(parse(&cancel).unwrap(), StartupPacket::Cancel { pid: 42, secret: vec![1, 2, 3, 4] });
    }

    #[test]
    fn bad_packets() {
        assert!(packet_len(&[0, 0, 0, 3]).is_err());
        assert!(packet_len(&[0x7f, 0, 0, 0]).is_err());
        let mut p = vec![0, 0, 0, 13, 0, 3, 0, 0];
        p.extend(b"user"); // no terminator
        p.push(b'x');
        assert!(parse(&p).is_err());
    }

    #[test]
    fn a_parameter_is_added_last() {
        let m =
            StartupMessage { major: 3, minor: 2, params: vec![("user".into(), "app".into()), ("capgate.session".into(), "off".into())] };
        let out = with_parameter(&m.encode(), SESSION_MARKER.0, SESSION_MARKER.1);
        let mut want = m.clone();
        want.params.push(("capgate.session".into(), "on".into()));
        assert_eq!(packet_len(&out).unwrap(), Some(out.len()));
        assert_eq!(parse(&out).unwrap(), StartupPacket::Startup(want));
    }
}
