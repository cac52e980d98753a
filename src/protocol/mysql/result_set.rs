//! A text-protocol result set that capgate writes itself, as the reply to a COM_QUERY the
//! primary never saw (the admin SQL commands): the column count, the column definitions,
//! the rows, and the terminator carrying the session's status flags. No I/O.
//!
//! The column definitions are `mysql_common`'s own `Column` packets. What it does not cover
//! is framed here as the client negotiated it: with `CLIENT_DEPRECATE_EOF` no EOF follows
//! the definitions and the rows end with an OK packet whose header is 0xFE; without it, EOF
//! packets do both; with MariaDB's `EXTENDED_METADATA` each definition carries an (empty)
//! extended type block before its fixed-length fields. A NULL value is the 0xFB byte.

use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::WriteMysqlExt;
use mysql_common::packets::Column;
use mysql_common::proto::MySerialize;

use super::{packet, put_lenenc_int};

/// `utf8mb4_general_ci`: the character set of every text capgate writes.
pub const UTF8MB4: u16 = 45;
/// `binary`: the character set of numbers.
pub const BINARY: u16 = 63;

/// The status flags a result set capgate writes may carry: the session's state (transaction,
/// autocommit, read-only transaction, how strings are quoted), never the flags that describe
/// one statement's own reply (more results, a cursor, a changed session state …).
pub const SESSION_FLAGS: u16 = super::status::IN_TRANS
    | super::status::AUTOCOMMIT
    | super::status::NO_BACKSLASH_ESCAPES
    | IN_TRANS_READONLY
    | super::status::ANSI_QUOTES;

/// SERVER_STATUS_IN_TRANS_READONLY.
const IN_TRANS_READONLY: u16 = 0x2000;

/// How the client's connection frames a result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// CLIENT_DEPRECATE_EOF was negotiated.
    pub deprecate_eof: bool,
    /// MariaDB's MARIADB_CLIENT_EXTENDED_METADATA was negotiated.
    pub extended_metadata: bool,
}

/// What a column holds, for its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// A BIGINT.
    Int,
    /// A DOUBLE shown with `decimals` digits after the point.
    Float {
        decimals: u8,
    },
}

/// The definition of a column named `name` holding `kind`; `width`: the longest value in
/// characters (what a client may use to size its display).
pub fn column(name: &str, kind: Kind, width: usize) -> Column {
    let width = u32::try_from(width.max(1)).unwrap_or(u32::MAX);
    let number = ColumnFlags::NUM_FLAG | ColumnFlags::BINARY_FLAG;
    let c = Column::new(match kind {
        Kind::Text => ColumnType::MYSQL_TYPE_VAR_STRING,
        Kind::Int => ColumnType::MYSQL_TYPE_LONGLONG,
        Kind::Float { .. } => ColumnType::MYSQL_TYPE_DOUBLE,
    })
    .with_name(name.as_bytes())
    .with_org_name(name.as_bytes());
    match kind {
        Kind::Text => c.with_character_set(UTF8MB4).with_column_length(width.saturating_mul(4)),
        Kind::Int => c.with_character_set(BINARY).with_flags(number).with_column_length(20),
        Kind::Float { decimals } => c.with_character_set(BINARY).with_flags(number).with_column_length(22).with_decimals(decimals),
    }
}

/// The whole result set, packets with headers, sequence ids from 1. `status`: the session's
/// flags (only [`SESSION_FLAGS`] are kept).
pub fn text_result_set(columns: &[Column], rows: &[Vec<Option<String>>], status: u16, framing: Framing) -> Vec<u8> {
    let status = status & SESSION_FLAGS;
    let mut out = Vec::new();
    let mut payload = Vec::new();
    put_lenenc_int(&mut payload, columns.len() as u64);
    let mut seq = packet::write(&mut out, 1, &payload);
    for c in columns {
        payload.clear();
        c.serialize(&mut payload);
        if framing.extended_metadata {
            // An empty extended type block, between the names and the 13 fixed-length bytes
            // (0x0C and the twelve it announces).
            let at = payload.len().saturating_sub(13);
            payload.insert(at, 0);
        }
        seq = packet::write(&mut out, seq, &payload);
    }
    if !framing.deprecate_eof {
        seq = packet::write(&mut out, seq, &eof(status));
    }
    for row in rows {
        payload.clear();
        for value in row {
            match value {
                // Writing to a Vec cannot fail.
                Some(text) => drop(payload.write_lenenc_str(text.as_bytes())),
                None => payload.push(0xfb),
            }
        }
        seq = packet::write(&mut out, seq, &payload);
    }
    let end = if framing.deprecate_eof { ok_terminator(status) } else { eof(status) };
    packet::write(&mut out, seq, &end);
    out
}

/// An EOF packet: header, no warnings, `status`.
fn eof(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![0xfe, 0, 0, s[0], s[1]]
}

/// The OK packet that ends a result set under CLIENT_DEPRECATE_EOF: header 0xFE, no rows
/// affected, no insert id, `status`, no warnings (and no info: nothing follows).
fn ok_terminator(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![0xfe, 0, 0, s[0], s[1], 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::response::{Event, Reply, Tracker};
    use crate::protocol::mysql::rows::text_rows;
    use crate::protocol::mysql::{lenenc_bytes, status};
    use mysql_common::proto::MyDeserialize;

    fn table() -> (Vec<Column>, Vec<Vec<Option<String>>>) {
        let columns = vec![column("name", Kind::Text, 5), column("rows", Kind::Int, 3), column("lag_s", Kind::Float { decimals: 3 }, 5)];
        let long = "x".repeat(300);
        let rows = vec![vec![Some("east".into()), Some("12".into()), None], vec![Some(long), None, Some("0.250".into())]];
        (columns, rows)
    }

    /// The logical packets' payloads of `bytes`, checking that the sequence ids count up from 1.
    fn payloads(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut want = 1u8;
        while !bytes.is_empty() {
            let l = packet::logical(bytes, usize::MAX).expect("frame").expect("whole");
            assert_eq!(l.seq, want, "sequence ids");
            out.push(l.payload(bytes).into_owned());
            want = want.wrapping_add(1);
            bytes = &bytes[l.bytes..];
        }
        out
    }

    #[test]
    fn every_framing_is_read_back_whole_with_the_sessions_status() {
        let (columns, rows) = table();
        let want: Vec<Vec<Option<Vec<u8>>>> = rows.iter().map(|r| r.iter().map(|v| v.clone().map(String::into_bytes)).collect()).collect();
        let session = status::IN_TRANS | status::AUTOCOMMIT | status::SESSION_STATE_CHANGED | status::MORE_RESULTS_EXISTS;
        for deprecate_eof in [false, true] {
            for extended_metadata in [false, true] {
                let framing = Framing { deprecate_eof, extended_metadata };
                let bytes = text_result_set(&columns, &rows, session, framing);
                assert_eq!(text_rows(&bytes, deprecate_eof).expect("rows"), want, "{framing:?}");
                let packets = payloads(&bytes);
                assert_eq!(packets.len(), 1 + 3 + usize::from(!deprecate_eof) + 2 + 1, "{framing:?}");
                // The relay's own tracker (a client library's walk) finds the end and the
                // flags: the transaction is still open, nothing else is claimed.
                let mut tracker = Tracker::new(Reply::ResultSets, deprecate_eof, false);
                let mut done = None;
                for p in &packets {
                    if let Event::Done(outcome) = tracker.feed(p) {
                        done = Some(outcome);
                    }
                }
                let outcome = done.unwrap_or_else(|| panic!("no end found under {framing:?}"));
                assert_eq!(outcome.status, Some(status::IN_TRANS | status::AUTOCOMMIT), "{framing:?}");
                // The definitions read back as mysql_common reads them (without extended
                // metadata, which it does not parse), with the name and type.
                if !extended_metadata {
                    let def = Column::deserialize((), &mut mysql_common::io::ParseBuf(&packets[2])).expect("definition");
                    assert_eq!((def.name_str().as_ref(), def.column_type()), ("rows", ColumnType::MYSQL_TYPE_LONGLONG));
                } else {
                    // The names, then the empty extended block, then 0x0C.
                    let mut at = 0;
                    for _ in 0..6 {
                        at += lenenc_bytes(&packets[1][at..]).expect("name").1;
                    }
                    assert_eq!(&packets[1][at..at + 2], &[0x00, 0x0c]);
                }
            }
        }
    }
}
