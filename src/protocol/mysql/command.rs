//! Client commands: what a command packet is, what reply it gets, and the `KILL` statement
//! (a session may only kill its own connections, so the relay must read it).

use super::com;
use super::response::Reply;

/// A view of one command packet's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Quit,
    InitDb(&'a [u8]),
    Query(&'a [u8]),
    FieldList,
    Statistics,
    ProcessKill(u32),
    Ping,
    ChangeUser,
    Prepare(&'a [u8]),
    Execute {
        statement: u32,
    },
    SendLongData {
        statement: u32,
    },
    Close {
        statement: u32,
    },
    Reset {
        statement: u32,
    },
    SetOption,
    Fetch {
        statement: u32,
    },
    ResetConnection,
    BulkExecute,
    /// Anything else (COM_DEBUG, COM_REFRESH, COM_BINLOG_DUMP …, or garbage): relayed, and
    /// the server answers it.
    Other(u8),
    /// An empty packet.
    Empty,
}

impl<'a> Command<'a> {
    pub fn parse(payload: &'a [u8]) -> Command<'a> {
        let Some((&code, rest)) = payload.split_first() else { return Command::Empty };
        let id = || rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let with_id = |f: fn(u32) -> Command<'a>| id().map(f).unwrap_or(Command::Other(code));
        match code {
            com::QUIT => Command::Quit,
            com::INIT_DB => Command::InitDb(rest),
            com::QUERY => Command::Query(rest),
            com::FIELD_LIST => Command::FieldList,
            com::STATISTICS => Command::Statistics,
            com::PROCESS_KILL => with_id(Command::ProcessKill),
            com::PING => Command::Ping,
            com::CHANGE_USER => Command::ChangeUser,
            com::STMT_PREPARE => Command::Prepare(rest),
            com::STMT_EXECUTE => with_id(|statement| Command::Execute { statement }),
            com::STMT_SEND_LONG_DATA => with_id(|statement| Command::SendLongData { statement }),
            com::STMT_CLOSE => with_id(|statement| Command::Close { statement }),
            com::STMT_RESET => with_id(|statement| Command::Reset { statement }),
            com::SET_OPTION => Command::SetOption,
            com::STMT_FETCH => with_id(|statement| Command::Fetch { statement }),
            com::RESET_CONNECTION => Command::ResetConnection,
            com::STMT_BULK_EXECUTE => Command::BulkExecute,
            other => Command::Other(other),
        }
    }

    /// The reply this command gets from the server.
    pub fn reply(&self) -> Reply {
        match self {
            Command::Quit | Command::SendLongData { .. } | Command::Close { .. } => Reply::Nothing,
            Command::Query(_) | Command::Execute { .. } => Reply::ResultSets,
            Command::Prepare(_) => Reply::Prepare,
            Command::Fetch { .. } => Reply::Rows,
            Command::FieldList => Reply::FieldList,
            Command::Statistics => Reply::Any,
            Command::SetOption => Reply::Eof,
            Command::ChangeUser => Reply::Auth,
            // An empty packet or an unknown command gets an ERR; COM_DEBUG an EOF: one packet.
            Command::Other(_) | Command::Empty => Reply::Any,
            _ => Reply::Ok,
        }
    }
}

/// A `KILL` statement, as far as ownership needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// `KILL [HARD|SOFT] [CONNECTION|QUERY] <thread id>`
    Thread(u64),
    /// `KILL … USER name`, `KILL QUERY ID n`, or a target that is not a number: capgate cannot
    /// tell whose connections it names.
    Other,
}

/// Whether `sql` is a KILL statement, and what it kills. Leading comments and whitespace are
/// skipped, so a comment cannot hide a KILL.
pub fn parse_kill(sql: &[u8]) -> Option<Kill> {
    // Most statements are rejected on their first bytes, without a copy.
    let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
    let head = &sql[start..];
    let maybe = head.get(..4).is_some_and(|w| w.eq_ignore_ascii_case(b"kill")) || matches!(head.first(), Some(b'/' | b'#' | b'-'));
    if !maybe {
        return None;
    }
    let text = String::from_utf8_lossy(sql);
    let text = skip_comments(&text);
    let mut words = text.split(|c: char| c.is_whitespace() || c == ';').filter(|w| !w.is_empty());
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut word = words.next();
    for optional in ["hard", "soft", "connection", "query"] {
        if word.is_some_and(|w| w.eq_ignore_ascii_case(optional)) {
            word = words.next();
        }
    }
    let target = match word {
        Some(w) => w.trim_matches(|c| c == '(' || c == ')'),
        None => return Some(Kill::Other),
    };
    match (target.parse::<u64>(), words.next()) {
        (Ok(id), None) => Some(Kill::Thread(id)),
        _ => Some(Kill::Other),
    }
}

/// `text` after leading whitespace and comments (`/* … */`, `-- …`, `# …`).
pub fn skip_comments(text: &str) -> &str {
    let mut t = text.trim_start();
    loop {
        if let Some(rest) = t.strip_prefix("/*") {
            // MySQL's executable comments (`/*! … */`) run their contents: not skipped.
            if rest.starts_with('!') || rest.starts_with("M!") {
                return t;
            }
            t = rest.find("*/").map(|i| rest[i + 2..].trim_start()).unwrap_or("");
        } else if t.starts_with("-- ") || t.starts_with('#') {
            t = t.find('\n').map(|i| t[i + 1..].trim_start()).unwrap_or("");
        } else {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_their_replies() {
        assert_eq!(Command::parse(b"\x03SELECT 1"), Command::Query(b"SELECT 1"));
        assert_eq!(Command::parse(b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00"), Command::Execute { statement: 5 });
        assert_eq!(Command::parse(b"\x17\x05"), Command::Other(0x17), "short execute");
        assert_eq!(Command::parse(b"\x0c\x2a\x00\x00\x00"), Command::ProcessKill(42));
        assert_eq!(Command::parse(b""), Command::Empty);
        assert_eq!(Command::parse(b"\x19\x01\x00\x00\x00").reply(), Reply::Nothing);
        assert_eq!(Command::parse(b"\x16SELECT ?").reply(), Reply::Prepare);
        assert_eq!(Command::parse(b"\x1b\x00\x00").reply(), Reply::Eof);
        assert_eq!(Command::parse(b"\x99").reply(), Reply::Any);
    }

    #[test]
    fn kill_statements() {
        assert_eq!(parse_kill(b"KILL 12"), Some(Kill::Thread(12)));
        assert_eq!(parse_kill(b"  kill query 12;"), Some(Kill::Thread(12)));
        assert_eq!(parse_kill(b"KILL HARD CONNECTION 7"), Some(Kill::Thread(7)));
        assert_eq!(parse_kill(b"/* hidden */ KILL 7"), Some(Kill::Thread(7)));
        assert_eq!(parse_kill(b"-- x\nKILL 7"), Some(Kill::Thread(7)));
        assert_eq!(parse_kill(b"KILL USER app"), Some(Kill::Other));
        assert_eq!(parse_kill(b"KILL QUERY ID 9"), Some(Kill::Other));
        assert_eq!(parse_kill(b"KILL 1+1"), Some(Kill::Other));
        assert_eq!(parse_kill(b"SELECT 'KILL 1'"), None);
        assert_eq!(parse_kill(b"killjoy"), None);
    }
}
