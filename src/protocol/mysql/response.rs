//! Server replies: OK, ERR and EOF views, and the [`Tracker`] that follows one command's reply
//! packet by packet and says where it ends.
//!
//! Why a relay needs this: the protocol has no reply-length framing. To know when a session
//! is between commands (to answer in order, to follow transaction state from the final
//! status flags, to learn a prepared statement's id, to know that the client's next packets
//! are LOAD DATA file contents), the relay must walk the reply as a client library does:
//! result sets of column definitions and rows, MORE_RESULTS_EXISTS chains, DEPRECATE_EOF's
//! OK terminators. Only the first physical packet of each logical packet is looked at.

use super::{lenenc_bytes, lenenc_int, status, MAX_PAYLOAD};

/// An OK packet (header 0x00, or 0xFE when it ends a result set under DEPRECATE_EOF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// The current database, when session tracking reported a change of it.
    pub schema: Option<String>,
}

/// Read an OK packet; `session_track` is whether CLIENT_SESSION_TRACK was negotiated.
pub fn parse_ok(payload: &[u8], session_track: bool) -> Option<OkPacket> {
    if !matches!(payload.first(), Some(0x00 | 0xfe)) {
        return None;
    }
    let mut at = 1;
    let (affected_rows, n) = lenenc_int(payload.get(at..)?)?;
    at += n;
    let (last_insert_id, n) = lenenc_int(payload.get(at..)?)?;
    at += n;
    let status = u16::from_le_bytes(payload.get(at..at + 2)?.try_into().ok()?);
    let warnings = payload.get(at + 2..at + 4).map(|w| u16::from_le_bytes([w[0], w[1]])).unwrap_or(0);
    at += 4;
    let mut schema = None;
    if session_track && at < payload.len() && status & status::SESSION_STATE_CHANGED != 0 {
        if let Some((_info, n)) = lenenc_bytes(&payload[at..]) {
            at += n;
            if let Some((mut block, _)) = payload.get(at..).and_then(lenenc_bytes) {
                while let Some((&kind, rest)) = block.split_first() {
                    let Some((data, n)) = lenenc_bytes(rest) else { break };
                    // SESSION_TRACK_SCHEMA: the data is the database name, length-encoded.
                    if kind == 1 {
                        schema = lenenc_bytes(data).map(|(s, _)| String::from_utf8_lossy(s).into_owned());
                    }
                    block = &rest[n..];
                }
            }
        }
    }
    Some(OkPacket { affected_rows, last_insert_id, status, warnings, schema })
}

/// An ERR packet's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

pub fn parse_err(payload: &[u8]) -> Option<ErrPacket> {
    if payload.first() != Some(&0xff) {
        return None;
    }
    let code = u16::from_le_bytes(payload.get(1..3)?.try_into().ok()?);
    let (sqlstate, message) = match payload.get(3) {
        Some(b'#') => (String::from_utf8_lossy(payload.get(4..9)?).into_owned(), payload.get(9..).unwrap_or_default()),
        _ => ("HY000".to_owned(), payload.get(3..).unwrap_or_default()),
    };
    Some(ErrPacket { code, sqlstate, message: String::from_utf8_lossy(message).into_owned() })
}

/// The status flags of an EOF packet (0xFE, warnings, status).
fn eof_status(payload: &[u8]) -> Option<u16> {
    (payload.first() == Some(&0xfe)).then(|| payload.get(3..5).map(|s| u16::from_le_bytes([s[0], s[1]])))?
}

/// What kind of reply a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA: none.
    Nothing,
    /// One OK or ERR packet (COM_PING, COM_INIT_DB, COM_STMT_RESET, COM_RESET_CONNECTION …).
    Ok,
    /// One EOF or ERR packet (COM_SET_OPTION).
    Eof,
    /// One packet of any content (COM_STATISTICS's text).
    Any,
    /// Result sets, possibly several (COM_QUERY, COM_STMT_EXECUTE), or a LOAD DATA LOCAL
    /// request.
    ResultSets,
    /// COM_STMT_PREPARE's PREPARE_OK and definitions.
    Prepare,
    /// COM_STMT_FETCH: rows and a terminator.
    Rows,
    /// COM_FIELD_LIST: column definitions and a terminator.
    FieldList,
    /// COM_CHANGE_USER: an authentication exchange.
    Auth,
}

/// Where in a reply the tracker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first packet of a (next) result.
    First,
    Columns(u64),
    /// The EOF after column definitions (without DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    PrepareParams {
        left: u64,
        columns: u64,
    },
    PrepareParamsEof {
        columns: u64,
    },
    PrepareColumns(u64),
    PrepareColumnsEof,
}

/// What a reply packet means for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// More reply packets follow.
    Continue,
    /// The client sends next: LOAD DATA LOCAL file contents ending with an empty packet
    /// (`until_empty`), or one authentication answer.
    ClientData { until_empty: bool },
    /// The reply is complete.
    Done(Outcome),
}

/// How a reply ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The final status flags, when the reply carried them.
    pub status: Option<u16>,
    /// The error code, when the reply (or its last result) was an ERR.
    pub error: Option<u16>,
    /// The current database, when session tracking reported a change during the reply.
    pub schema: Option<String>,
    /// COM_STMT_PREPARE: the new statement's id.
    pub statement_id: Option<u32>,
    /// COM_STMT_PREPARE: the number of parameters.
    pub params: u16,
}

/// Follows one command's reply. Feed it the first physical packet's payload of each logical
/// reply packet, in order.
#[derive(Debug, Clone)]
pub struct Tracker {
    reply: Reply,
    phase: Phase,
    deprecate_eof: bool,
    session_track: bool,
    outcome: Outcome,
}

impl Tracker {
    /// A tracker for a reply of kind `reply` under the negotiated DEPRECATE_EOF and
    /// SESSION_TRACK capabilities.
    pub fn new(reply: Reply, deprecate_eof: bool, session_track: bool) -> Tracker {
        let phase = if reply == Reply::Rows { Phase::Rows } else { Phase::First };
        Tracker { reply, phase, deprecate_eof, session_track, outcome: Outcome::default() }
    }

    pub fn reply(&self) -> Reply {
        self.reply
    }

    fn done(&mut self, status: Option<u16>) -> Event {
        if status.is_some() {
            self.outcome.status = status;
        }
        Event::Done(std::mem::take(&mut self.outcome))
    }

    fn error(&mut self, payload: &[u8]) -> Event {
        self.outcome.error = parse_err(payload).map(|e| e.code).or(Some(0));
        self.done(None)
    }

    /// An OK packet: the end, unless more results follow.
    fn ok(&mut self, payload: &[u8]) -> Event {
        let ok = parse_ok(payload, self.session_track);
        let status = ok.as_ref().map(|o| o.status);
        if let Some(schema) = ok.and_then(|o| o.schema) {
            self.outcome.schema = Some(schema);
        }
        self.end_of_result(status)
    }

    fn end_of_result(&mut self, status: Option<u16>) -> Event {
        if status.is_some_and(|s| s & status::MORE_RESULTS_EXISTS != 0) {
            self.outcome.status = status;
            self.phase = Phase::First;
            Event::Continue
        } else {
            self.done(status)
        }
    }

    /// Whether a packet in a row or definition stream is its terminator (EOF, or OK under
    /// DEPRECATE_EOF): 0xFE and shorter than a row starting with an 8-byte length could be.
    fn is_terminator(&self, payload: &[u8]) -> bool {
        payload.first() == Some(&0xfe) && if self.deprecate_eof { payload.len() < MAX_PAYLOAD } else { payload.len() < 9 }
    }

    /// The terminator's status flags, in whichever form it has.
    fn terminator_status(&self, payload: &[u8]) -> (Option<u16>, Option<String>) {
        if self.deprecate_eof {
            match parse_ok(payload, self.session_track) {
                Some(ok) => (Some(ok.status), ok.schema),
                None => (None, None),
            }
        } else {
            (eof_status(payload), None)
        }
    }

    /// The next reply packet.
    pub fn feed(&mut self, payload: &[u8]) -> Event {
        let first = payload.first().copied();
        if first == Some(0xff) && self.reply != Reply::Any {
            return self.error(payload);
        }
        match self.reply {
            Reply::Nothing | Reply::Any => return self.done(None),
            Reply::Ok => return self.ok(payload),
            Reply::Eof => return self.done(eof_status(payload)),
            Reply::Auth => {
                return match first {
                    Some(0x00) => self.ok(payload),
                    // AuthSwitchRequest: the client answers.
                    Some(0xfe) => Event::ClientData { until_empty: false },
                    // caching_sha2_password's fast-auth success: the OK follows.
                    Some(0x01) if payload == [0x01, 0x03] => Event::Continue,
                    _ => Event::ClientData { until_empty: false },
                };
            }
            _ => {}
        }
        match self.phase {
            Phase::First => match first {
                Some(0x00) if self.reply == Reply::Prepare => {
                    let word = |at: usize| payload.get(at..at + 2).map(|b| u64::from(u16::from_le_bytes([b[0], b[1]]))).unwrap_or(0);
                    self.outcome.statement_id = payload.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    let (columns, params) = (word(5), word(7));
                    self.outcome.params = params as u16;
                    self.phase = Phase::PrepareParams { left: params, columns };
                    self.prepare_next()
                }
                Some(0x00) => self.ok(payload),
                Some(0xfb) if self.reply == Reply::ResultSets => Event::ClientData { until_empty: true },
                _ if self.reply == Reply::FieldList => self.definitions_or_end(payload),
                _ => match lenenc_int(payload) {
                    Some((n, _)) if n > 0 => {
                        self.phase = Phase::Columns(n);
                        Event::Continue
                    }
                    _ => self.done(None),
                },
            },
            Phase::Columns(left) => {
                self.phase = match (left - 1, self.deprecate_eof) {
                    (0, true) => Phase::Rows,
                    (0, false) => Phase::ColumnsEof,
                    (n, _) => Phase::Columns(n),
                };
                Event::Continue
            }
            Phase::ColumnsEof => {
                let status = eof_status(payload);
                // A cursor was opened: the rows come with COM_STMT_FETCH.
                if status.is_some_and(|s| s & status::CURSOR_EXISTS != 0) {
                    return self.done(status);
                }
                self.phase = Phase::Rows;
                Event::Continue
            }
            Phase::Rows => {
                if self.is_terminator(payload) {
                    let (status, schema) = self.terminator_status(payload);
                    if schema.is_some() {
                        self.outcome.schema = schema;
                    }
                    self.end_of_result(status)
                } else {
                    Event::Continue
                }
            }
            Phase::PrepareParams { left, columns } => {
                if left > 1 {
                    self.phase = Phase::PrepareParams { left: left - 1, columns };
                    return Event::Continue;
                }
                if !self.deprecate_eof {
                    self.phase = Phase::PrepareParamsEof { columns };
                    return Event::Continue;
                }
                self.phase = Phase::PrepareColumns(columns);
                self.prepare_next()
            }
            Phase::PrepareParamsEof { columns } => {
                self.phase = Phase::PrepareColumns(columns);
                self.prepare_next()
            }
            Phase::PrepareColumns(left) => {
                if left > 1 {
                    self.phase = Phase::PrepareColumns(left - 1);
                    return Event::Continue;
                }
                if self.deprecate_eof {
                    return self.done(None);
                }
                self.phase = Phase::PrepareColumnsEof;
                Event::Continue
            }
            Phase::PrepareColumnsEof => self.done(eof_status(payload)),
        }
    }

    /// After PREPARE_OK or the parameter definitions: skip empty groups (they have no EOF
    /// either), end when nothing is left.
    fn prepare_next(&mut self) -> Event {
        if let Phase::PrepareParams { left: 0, columns } = self.phase {
            self.phase = Phase::PrepareColumns(columns);
        }
        if self.phase == Phase::PrepareColumns(0) {
            return self.done(None);
        }
        Event::Continue
    }

    /// COM_FIELD_LIST: definitions until the terminator.
    fn definitions_or_end(&mut self, payload: &[u8]) -> Event {
        if self.is_terminator(payload) {
            let (status, _) = self.terminator_status(payload);
            return self.done(status);
        }
        Event::Continue
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
