//! A whole text-protocol reply read as rows: what capgate needs of the replies to its own
//! queries on a client's primary connection (the sync changes read at COMMIT). No I/O; the
//! bytes are the reply's packets with their headers, as the relay received them.

use super::response::{parse_err, ErrPacket};
use super::{lenenc_bytes, lenenc_int, MAX_PAYLOAD};

/// One row: each column's text, or None for NULL.
pub type Row = Vec<Option<Vec<u8>>>;

/// Why a reply could not be read as rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsError {
    #[error("{} ({})", .0.message, .0.code)]
    Server(ErrPacket),
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// The logical packets of `reply` (continuations joined).
fn packets(mut reply: &[u8]) -> Result<Vec<Vec<u8>>, RowsError> {
    let mut out = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    while !reply.is_empty() {
        let header = reply.get(..4).ok_or(RowsError::Malformed("a packet header is cut short"))?;
        let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let body = reply.get(4..4 + len).ok_or(RowsError::Malformed("a packet is cut short"))?;
        current.get_or_insert_with(Vec::new).extend_from_slice(body);
        if len < MAX_PAYLOAD {
            out.extend(current.take());
        }
        reply = &reply[4 + len..];
    }
    out.extend(current);
    Ok(out)
}

/// The rows of the first result set of a COM_QUERY reply (an OK without a result set gives
/// none; an ERR is the error). `deprecate_eof`: as negotiated on the connection.
pub fn text_rows(reply: &[u8], deprecate_eof: bool) -> Result<Vec<Row>, RowsError> {
    let packets = packets(reply)?;
    let mut it = packets.iter();
    let first = it.next().ok_or(RowsError::Malformed("an empty reply"))?;
    match first.first() {
        Some(0xff) => return Err(RowsError::Server(parse_err(first).ok_or(RowsError::Malformed("a bad ERR packet"))?)),
        Some(0x00) => return Ok(Vec::new()),
        _ => {}
    }
    let (columns, _) = lenenc_int(first).ok_or(RowsError::Malformed("no column count"))?;
    for _ in 0..columns {
        it.next().ok_or(RowsError::Malformed("a column definition is missing"))?;
    }
    if !deprecate_eof {
        it.next().ok_or(RowsError::Malformed("the EOF after the definitions is missing"))?;
    }
    let mut rows = Vec::new();
    for p in it {
        match p.first() {
            Some(0xff) => return Err(RowsError::Server(parse_err(p).ok_or(RowsError::Malformed("a bad ERR packet"))?)),
            Some(0xfe) if p.len() < 9 || deprecate_eof && p.len() < MAX_PAYLOAD => return Ok(rows),
            _ => {}
        }
        let mut at = 0;
        let mut row = Vec::new();
        for _ in 0..columns {
            if p.get(at) == Some(&0xfb) {
                row.push(None);
                at += 1;
                continue;
            }
            let (value, n) = p.get(at..).and_then(lenenc_bytes).ok_or(RowsError::Malformed("a row is cut short"))?;
            row.push(Some(value.to_vec()));
            at += n;
        }
        rows.push(row);
    }
    Err(RowsError::Malformed("the result set has no terminator"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::packet;

    fn reply(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            packet::write(&mut out, i as u8 + 1, p);
        }
        out
    }

    #[test]
    fn rows_with_nulls_under_both_terminators() {
        let def: &[u8] = b"\x03def";
        let row: &[u8] = b"\x011\xfb\x03abc";
        let eof: &[u8] = b"\xfe\x00\x00\x02\x00";
        let classic = reply(&[b"\x03", def, def, def, eof, row, eof]);
        let want = vec![vec![Some(b"1".to_vec()), None, Some(b"abc".to_vec())]];
        assert_eq!(text_rows(&classic, false), Ok(want.clone()));
        let ok_end: &[u8] = b"\xfe\x00\x00\x02\x00\x00\x00";
        assert_eq!(text_rows(&reply(&[b"\x03", def, def, def, row, ok_end]), true), Ok(want));
    }

    #[test]
    fn errors_and_short_replies() {
        let err = packet::err(1, (1146, "42S02"), "Table 'capgate.sync_changes' doesn't exist");
        assert!(matches!(text_rows(&err, true), Err(RowsError::Server(e)) if e.code == 1146));
        assert_eq!(text_rows(&reply(&[b"\x00\x00\x00\x02\x00\x00\x00"]), true), Ok(vec![]));
        assert_eq!(text_rows(&reply(&[b"\x01", b"\x03def"]), true), Err(RowsError::Malformed("the result set has no terminator")));
        assert_eq!(text_rows(&[1, 0], true), Err(RowsError::Malformed("a packet header is cut short")));
    }
}
