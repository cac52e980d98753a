//! The MySQL / MariaDB client-server protocol, without I/O: packet framing (16 MiB
//! continuation packets included), the handshake (v10 greeting, SSLRequest,
//! HandshakeResponse41), OK/ERR/EOF views, command views, the response tracker that tells a
//! relay where each reply ends, and the result sets capgate answers with itself. Everything
//! works on byte slices; the front end owns the sockets and forwards the original bytes, so
//! these views decode only what routing needs.
//!
//! Why not `mysql_common`'s types for the relay: its `PacketCodec` checks sequence ids (a
//! relay must pass a client's wrong id to the server, which answers it), and its handshake
//! types re-encode what they parse; a relay changes a few capability bits in place and
//! forwards the rest untouched. Where capgate writes a reply of its own, its column
//! definitions are `mysql_common`'s ([`result_set`]).

pub mod auth;
pub mod command;
pub mod handshake;
pub mod packet;
pub mod replies;
pub mod response;
pub mod result_set;
pub mod rows;

pub use packet::{PacketError, MAX_PAYLOAD};

/// Capability flags (the low 32 bits are MySQL's; MariaDB's extended ones are bits 32–63).
pub mod caps {
    /// Set by MySQL servers; MariaDB clears it to say the 4 filler bytes hold extended flags.
    pub const CLIENT_MYSQL: u64 = 1;
    pub const FOUND_ROWS: u64 = 1 << 1;
    pub const CONNECT_WITH_DB: u64 = 1 << 3;
    pub const COMPRESS: u64 = 1 << 5;
    pub const LOCAL_FILES: u64 = 1 << 7;
    pub const PROTOCOL_41: u64 = 1 << 9;
    pub const SSL: u64 = 1 << 11;
    pub const TRANSACTIONS: u64 = 1 << 13;
    pub const SECURE_CONNECTION: u64 = 1 << 15;
    pub const MULTI_STATEMENTS: u64 = 1 << 16;
    pub const MULTI_RESULTS: u64 = 1 << 17;
    pub const PS_MULTI_RESULTS: u64 = 1 << 18;
    pub const PLUGIN_AUTH: u64 = 1 << 19;
    pub const CONNECT_ATTRS: u64 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u64 = 1 << 21;
    pub const SESSION_TRACK: u64 = 1 << 23;
    pub const DEPRECATE_EOF: u64 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const ZSTD_COMPRESSION: u64 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u64 = 1 << 27;
    pub const MULTI_FACTOR_AUTH: u64 = 1 << 28;
    pub const MARIADB_PROGRESS: u64 = 1 << 32;
    pub const MARIADB_STMT_BULK_OPERATIONS: u64 = 1 << 34;
    pub const MARIADB_EXTENDED_METADATA: u64 = 1 << 35;
    pub const MARIADB_CACHE_METADATA: u64 = 1 << 36;

    /// What capgate never offers a client: compressed framing (not implemented), query
    /// attributes and optional metadata (they change packet layouts the relay reads), a
    /// second authentication factor, and every MariaDB extension but extended metadata
    /// (progress packets look like errors, bulk executes escape classification, cached
    /// metadata changes the execute reply). Everything else is the server's own offer.
    pub const NEVER_OFFERED: u64 = COMPRESS
        | ZSTD_COMPRESSION
        | QUERY_ATTRIBUTES
        | OPTIONAL_RESULTSET_METADATA
        | MULTI_FACTOR_AUTH
        | (!0u64 << 32 & !MARIADB_EXTENDED_METADATA);
}

/// Server status flags, in every OK and EOF packet.
pub mod status {
    pub const IN_TRANS: u16 = 0x0001;
    pub const AUTOCOMMIT: u16 = 0x0002;
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const CURSOR_EXISTS: u16 = 0x0040;
    pub const NO_BACKSLASH_ESCAPES: u16 = 0x0200;
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;
    /// MariaDB only: `sql_mode` has ANSI_QUOTES.
    pub const ANSI_QUOTES: u16 = 0x8000;
}

/// Command bytes (the first payload byte of a command packet).
pub mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB's array binding; capgate clears the capability that allows it.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// Server error codes capgate sends itself, with their SQLSTATEs.
pub mod errors {
    /// ER_CON_COUNT_ERROR
    pub const TOO_MANY_CONNECTIONS: (u16, &str) = (1040, "08004");
    /// ER_HANDSHAKE_ERROR
    pub const BAD_HANDSHAKE: (u16, &str) = (1043, "08S01");
    /// ER_ACCESS_DENIED_ERROR
    pub const ACCESS_DENIED: (u16, &str) = (1045, "28000");
    /// ER_UNKNOWN_COM_ERROR
    pub const UNKNOWN_COMMAND: (u16, &str) = (1047, "08S01");
    /// ER_NO_SUCH_THREAD
    pub const NO_SUCH_THREAD: (u16, &str) = (1094, "HY000");
    /// ER_NET_PACKET_TOO_LARGE
    pub const PACKET_TOO_LARGE: (u16, &str) = (1153, "08S01");
    /// ER_NET_READ_INTERRUPTED: what a server says to a client that stops sending.
    pub const READ_TIMEOUT: (u16, &str) = (1159, "08S01");
    /// ER_SERVER_SHUTDOWN
    pub const SHUTDOWN: (u16, &str) = (1053, "08S01");
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR ("you need the … privilege"): a user outside
    /// `admin_users` running an admin command; a client naming capgate's own user variables.
    pub const SPECIFIC_ACCESS_DENIED: (u16, &str) = (1227, "42000");
    /// ER_NOT_SUPPORTED_YET: a statement the policy refuses.
    pub const NOT_SUPPORTED: (u16, &str) = (1235, "42000");
    /// ER_SECURE_TRANSPORT_REQUIRED (MySQL 5.7+): `[tls] mode = "require"`.
    pub const SECURE_TRANSPORT_REQUIRED: (u16, &str) = (3159, "HY000");
    /// ER_CONNECT_TO_FOREIGN_DATA_SOURCE ("Unable to connect to foreign data source"): the
    /// primary cannot be reached. Not 2003: clients reject server errors in their own range
    /// (libmariadb reports "malformed packet").
    pub const PRIMARY_UNREACHABLE: (u16, &str) = (1429, "HY000");
    /// ER_SIGNAL_EXCEPTION with SQLSTATE 55000 (object not in prerequisite state, as on
    /// PostgreSQL): a write to a bounded table refused while a replica is over its budget.
    pub const REPLICA_BEHIND: (u16, &str) = (1644, "55000");
    /// The same code and SQLSTATE: a write to a table whose capture triggers a policy reload
    /// is still changing (a fraction of a second).
    pub const CAPTURE_NOT_READY: (u16, &str) = (1644, "55000");
    /// The same code and SQLSTATE: an admin command that ran and failed (`CAPGATE RELOAD` of
    /// a bad policy file, a `CAPGATE VERIFY` that could not run).
    pub const ADMIN_FAILED: (u16, &str) = (1644, "55000");
}

/// A length-encoded integer at the start of `buf`: the value and the bytes it took. `None`
/// when `buf` is too short or starts with 0xFB (NULL) / 0xFF (not an integer).
pub fn lenenc_int(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let wide = |n: usize| -> Option<(u64, usize)> {
        let bytes = buf.get(1..1 + n)?;
        let mut v = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        Some((v, 1 + n))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

/// A length-encoded string at the start of `buf` and the bytes it took.
pub fn lenenc_bytes(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = lenenc_int(buf)?;
    let len = usize::try_from(len).ok()?;
    let s = buf.get(n..n.checked_add(len)?)?;
    Some((s, n + len))
}

/// Append a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xfa => out.push(v as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A NUL-terminated string at the start of `buf` (without the NUL) and the bytes it took
/// (with the NUL). `None` when there is no NUL.
pub fn nul_str(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips() {
        for v in [0u64, 250, 251, 0xffff, 0x1_0000, 0xff_ffff, 0x100_0000, u64::MAX] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            assert_eq!(lenenc_int(&out), Some((v, out.len())), "{v}");
        }
        assert_eq!(lenenc_int(&[0xfb]), None);
        assert_eq!(lenenc_int(&[0xfc, 1]), None, "short");
        assert_eq!(lenenc_bytes(&[3, b'a', b'b', b'c', b'd']), Some((&b"abc"[..], 4)));
        assert_eq!(lenenc_bytes(&[3, b'a']), None);
        assert_eq!(nul_str(b"root\0x"), Some((&b"root"[..], 5)));
    }

    #[test]
    fn never_offered_keeps_extended_metadata_only() {
        assert_eq!(caps::NEVER_OFFERED & caps::MARIADB_EXTENDED_METADATA, 0);
        for bit in [caps::MARIADB_PROGRESS, caps::MARIADB_STMT_BULK_OPERATIONS, caps::MARIADB_CACHE_METADATA, caps::COMPRESS] {
            assert_ne!(caps::NEVER_OFFERED & bit, 0);
        }
        assert_eq!(caps::NEVER_OFFERED & (caps::DEPRECATE_EOF | caps::SESSION_TRACK | caps::MULTI_STATEMENTS | caps::LOCAL_FILES), 0);
    }
}
