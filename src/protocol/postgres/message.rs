//! Messages the proxy sends itself, and views of the few server messages it reads.
//!
//! The proxy speaks for itself only when it must: an error of its own (connection refused,
//! too many clients, a policy refusal), its own authentication exchange when `[[users]]` is
//! configured, and its own cancel key. Everything else is the primary's bytes.

use bytes::{BufMut, BytesMut};

/// Severity of an ErrorResponse the proxy builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error the proxy reports in PostgreSQL's own format, so drivers surface it normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorMessage {
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> ErrorMessage {
        ErrorMessage { severity, code, message: message.into(), detail: None, hint: None }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> ErrorMessage {
        ErrorMessage::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorMessage {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorMessage {
        self.hint = Some(hint.into());
        self
    }

    /// Encode as an ErrorResponse ('E') frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut fields: Vec<(u8, &str)> =
            vec![(b'S', self.severity.as_str()), (b'V', self.severity.as_str()), (b'C', self.code), (b'M', &self.message)];
        if let Some(d) = &self.detail {
            fields.push((b'D', d));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h));
        }
        write_frame(out, b'E', |body| {
            for (code, value) in fields {
                body.put_u8(code);
                put_cstr(body, value);
            }
            body.put_u8(0);
        });
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

/// Write one tagged frame whose body is produced by `body`, fixing up the length word.
pub fn write_frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside a message would end the field early; the proxy's own texts never hold one,
    // but text that came from elsewhere (a table name) is cut there rather than corrupting
    // the frame.
    let s = s.split('\0').next().unwrap_or_default();
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    write_frame(out, b'R', |b| b.put_i32(0));
}

/// AuthenticationSASL listing `mechanisms`.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    write_frame(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12) with `data`.
pub fn auth_sasl_step(out: &mut BytesMut, code: i32, data: &[u8]) {
    write_frame(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

/// NegotiateProtocolVersion: the newest protocol version the proxy speaks for this session
/// (`major << 16 | minor`, as in a startup packet) and the protocol options (`_pq_.*` startup
/// parameters) it does not support.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest: i32, unsupported: &[&str]) {
    write_frame(out, b'v', |b| {
        b.put_i32(newest);
        b.put_i32(unsupported.len() as i32);
        for option in unsupported {
            put_cstr(b, option);
        }
    });
}

/// BackendKeyData with the proxy's own key.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: &[u8]) {
    write_frame(out, b'K', |b| {
        b.put_i32(pid);
        b.put_slice(secret);
    });
}

/// A result column the proxy describes itself (admin commands): its name and type OID
/// (25 text, 20 int8, 701 float8), always in text format.
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: u32,
}

/// RowDescription for `columns`, all sent in text format.
pub fn row_description(out: &mut BytesMut, columns: &[Column<'_>]) {
    write_frame(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c.name);
            b.put_u32(0); // no table
            b.put_i16(0); // no column number
            b.put_u32(c.type_oid);
            b.put_i16(if c.type_oid == 25 { -1 } else { 8 });
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values (`None`: NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    write_frame(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CommandComplete with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    write_frame(out, b'C', |b| put_cstr(b, tag));
}

/// ReadyForQuery with the transaction status (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    write_frame(out, b'Z', |b| b.put_u8(status));
}

/// Parsed body of an Authentication ('R') message: the request code and the rest.
pub fn auth_code(body: &[u8]) -> Option<(i32, &[u8])> {
    let code = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    Some((code, &body[4..]))
}

/// The mechanism names of an AuthenticationSASL body (after the code).
pub fn sasl_mechanisms(rest: &[u8]) -> Vec<&str> {
    rest.split(|&b| b == 0).take_while(|m| !m.is_empty()).filter_map(|m| std::str::from_utf8(m).ok()).collect()
}

/// The fields of an ErrorResponse or NoticeResponse body, for logging and tests.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// Encode the body of a password-type ('p') message sent by the proxy upstream is done by
/// `postgres_protocol::message::frontend`; this is the one the proxy reads from clients.
pub fn password_body(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::super::frame::frames;
    use super::*;

    #[test]
    fn error_response_layout() {
        let e = ErrorMessage::fatal("53300", "sorry, too many clients already").with_hint("raise max_connections");
        let bytes = e.to_bytes();
        let (tag, body) = frames(&bytes).next().unwrap().unwrap();
        assert_eq!(tag, b'E');
        let f = error_fields(body);
        assert!(f.contains(&(b'C', "53300".into())));
        assert!(f.contains(&(b'S', "FATAL".into())));
        assert!(f.contains(&(b'H', "raise max_connections".into())));
    }

    #[test]
    fn sasl_listing() {
        let mut out = BytesMut::new();
        auth_sasl(&mut out, &["SCRAM-SHA-256"]);
        let (_, body) = frames(&out).next().unwrap().unwrap();
        let (code, rest) = auth_code(body).unwrap();
        assert_eq!(code, 10);
        assert_eq!(sasl_mechanisms(rest), vec!["SCRAM-SHA-256"]);
    }
}
