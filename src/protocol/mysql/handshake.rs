//! The connection phase: the server's greeting (Handshake v10), the client's SSLRequest and
//! HandshakeResponse41.
//!
//! A relay reads these to adjust capabilities on each leg and to learn the user, the
//! database and the authentication plugin; it patches the capability bytes in place and
//! forwards everything else as it came.

use super::{caps, lenenc_bytes, nul_str, PacketError};

fn malformed(what: &'static str) -> PacketError {
    PacketError::Malformed { what }
}

/// A server greeting (Handshake v10 payload), with the offsets of the parts a relay patches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The payload as received.
    pub raw: Vec<u8>,
    pub server_version: String,
    /// The server's thread id for this connection (what `KILL` names).
    pub connection_id: u32,
    /// Capabilities, MariaDB's extended ones in the high 32 bits.
    pub caps: u64,
    /// The authentication nonce (both parts, without the trailing NUL).
    pub nonce: Vec<u8>,
    /// The default authentication plugin.
    pub plugin: String,
    /// Offsets of the low and high capability words and of MariaDB's extended word.
    caps_low_at: usize,
    caps_high_at: usize,
    ext_at: usize,
    nonce1_at: usize,
    /// Where the second part of the nonce starts (the plugin name follows it).
    nonce2_at: usize,
}

impl Greeting {
    pub fn parse(payload: &[u8]) -> Result<Greeting, PacketError> {
        let bad = || malformed("server greeting");
        if payload.first() != Some(&10) {
            return Err(malformed("server greeting (not protocol version 10)"));
        }
        let (version, n) = nul_str(&payload[1..]).ok_or_else(bad)?;
        let mut at = 1 + n;
        let u32_at = |at: usize| payload.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let u16_at = |at: usize| payload.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let connection_id = u32_at(at).ok_or_else(bad)?;
        at += 4;
        let nonce1_at = at;
        let mut nonce = payload.get(at..at + 8).ok_or_else(bad)?.to_vec();
        at += 9;
        let caps_low_at = at;
        let low = u16_at(at).ok_or_else(bad)?;
        at += 2;
        // charset, status
        at += 3;
        let caps_high_at = at;
        let high = u16_at(at).ok_or_else(bad)?;
        at += 2;
        let mut caps = u64::from(low) | u64::from(high) << 16;
        let nonce_len = usize::from(*payload.get(at).ok_or_else(bad)?);
        at += 1 + 6;
        let ext_at = at;
        if caps & caps::CLIENT_MYSQL == 0 {
            caps |= u64::from(u32_at(at).ok_or_else(bad)?) << 32;
        }
        at += 4;
        let nonce2_at = at;
        if caps & caps::SECURE_CONNECTION != 0 {
            let nonce2_len = nonce_len.saturating_sub(8).max(13);
            let part = payload.get(at..at + nonce2_len).ok_or_else(bad)?;
            // The part ends with a NUL that is not part of the nonce.
            let part = part.strip_suffix(&[0]).unwrap_or(part);
            nonce.extend_from_slice(part);
            at += nonce2_len;
        }
        let mut plugin = String::new();
        if caps & caps::PLUGIN_AUTH != 0 && at < payload.len() {
            // Some servers omit the final NUL.
            let rest = &payload[at..];
            let name = nul_str(rest).map(|(s, _)| s).unwrap_or(rest);
            plugin = String::from_utf8_lossy(name).into_owned();
        }
        Ok(Greeting {
            raw: payload.to_vec(),
            server_version: String::from_utf8_lossy(version).into_owned(),
            connection_id,
            caps,
            nonce,
            plugin,
            caps_low_at,
            caps_high_at,
            ext_at,
            nonce1_at,
            nonce2_at,
        })
    }

    /// The greeting with capabilities `caps` instead of the server's (the extended word only
    /// when the server speaks MariaDB's dialect).
    pub fn with_caps(&self, caps: u64) -> Vec<u8> {
        let mut out = self.raw.clone();
        out[self.caps_low_at..self.caps_low_at + 2].copy_from_slice(&(caps as u16).to_le_bytes());
        out[self.caps_high_at..self.caps_high_at + 2].copy_from_slice(&((caps >> 16) as u16).to_le_bytes());
        if self.caps & caps::CLIENT_MYSQL == 0 {
            out[self.ext_at..self.ext_at + 4].copy_from_slice(&((caps >> 32) as u32).to_le_bytes());
        }
        out
    }

    /// The greeting with capabilities `caps`, a nonce of capgate's own (20 bytes) and
    /// `mysql_native_password` as the plugin: capgate authenticates the client itself.
    pub fn with_own_nonce(&self, caps: u64, nonce: &[u8; 20]) -> Vec<u8> {
        let mut out = self.with_caps(caps | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH);
        out[self.nonce1_at..self.nonce1_at + 8].copy_from_slice(&nonce[..8]);
        // auth_plugin_data_len: 20 bytes and the NUL.
        out[self.caps_high_at + 2] = 21;
        out.truncate(self.nonce2_at);
        out.extend_from_slice(&nonce[8..]);
        out.push(0);
        out.extend_from_slice(b"mysql_native_password\0");
        out
    }
}

/// The fixed part every HandshakeResponse41 and SSLRequest starts with.
pub const FIXED_LEN: usize = 32;

/// Whether a client's first packet is an SSLRequest: the fixed part alone, with CLIENT_SSL.
pub fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == FIXED_LEN && client_caps(payload).is_some_and(|c| c & caps::SSL != 0)
}

/// The capabilities of an SSLRequest or HandshakeResponse41 (MariaDB's extended ones when
/// the client cleared CLIENT_MYSQL).
pub fn client_caps(payload: &[u8]) -> Option<u64> {
    let low = u64::from(u32::from_le_bytes(payload.get(..4)?.try_into().ok()?));
    let ext = if low & caps::CLIENT_MYSQL == 0 { u64::from(u32::from_le_bytes(payload.get(28..32)?.try_into().ok()?)) << 32 } else { 0 };
    Some(low | ext)
}

/// Write capabilities into the fixed part of an SSLRequest or HandshakeResponse41.
pub fn set_client_caps(payload: &mut [u8], caps: u64) {
    if payload.len() >= FIXED_LEN {
        payload[..4].copy_from_slice(&(caps as u32).to_le_bytes());
        if caps & caps::CLIENT_MYSQL == 0 {
            payload[28..32].copy_from_slice(&((caps >> 32) as u32).to_le_bytes());
        }
    }
}

/// A HandshakeResponse41, as far as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub caps: u64,
    pub user: String,
    /// The authentication data for `plugin` (a scramble, a signature …).
    pub auth: Vec<u8>,
    pub database: Option<String>,
    pub plugin: Option<String>,
    /// The connection attributes block as sent (lenenc length included), if any.
    pub attrs: Option<Vec<u8>>,
}

impl Response {
    pub fn parse(payload: &[u8]) -> Result<Response, PacketError> {
        let bad = || malformed("handshake response");
        let caps = client_caps(payload).ok_or_else(bad)?;
        if caps & caps::PROTOCOL_41 == 0 {
            return Err(malformed("handshake response (protocol 4.1 is required)"));
        }
        let mut at = FIXED_LEN;
        let rest = payload.get(at..).ok_or_else(bad)?;
        let (user, n) = nul_str(rest).ok_or_else(bad)?;
        at += n;
        let rest = payload.get(at..).ok_or_else(bad)?;
        let (auth, n) = if caps & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
            lenenc_bytes(rest).ok_or_else(bad)?
        } else if caps & caps::SECURE_CONNECTION != 0 {
            let len = usize::from(*rest.first().ok_or_else(bad)?);
            (rest.get(1..1 + len).ok_or_else(bad)?, 1 + len)
        } else {
            nul_str(rest).ok_or_else(bad)?
        };
        at += n;
        let mut database = None;
        if caps & caps::CONNECT_WITH_DB != 0 && at < payload.len() {
            let (db, n) = nul_str(&payload[at..]).ok_or_else(bad)?;
            database = Some(String::from_utf8_lossy(db).into_owned()).filter(|d| !d.is_empty());
            at += n;
        }
        let mut plugin = None;
        if caps & caps::PLUGIN_AUTH != 0 && at < payload.len() {
            let (p, n) = nul_str(&payload[at..]).ok_or_else(bad)?;
            plugin = Some(String::from_utf8_lossy(p).into_owned());
            at += n;
        }
        let mut attrs = None;
        if caps & caps::CONNECT_ATTRS != 0 && at < payload.len() {
            let (_, n) = lenenc_bytes(&payload[at..]).ok_or_else(bad)?;
            attrs = Some(payload[at..at + n].to_vec());
        }
        Ok(Response {
            caps,
            user: String::from_utf8(user.to_vec()).map_err(|_| malformed("handshake response (user name not UTF-8)"))?,
            auth: auth.to_vec(),
            database,
            plugin,
            attrs,
        })
    }

    /// A HandshakeResponse41 for capgate's own login: `fixed` (the client's first 32 bytes,
    /// capabilities already set), then this user, auth data, database, plugin and attributes.
    pub fn build(&self, fixed: &[u8]) -> Vec<u8> {
        let mut out = fixed.get(..FIXED_LEN).unwrap_or(fixed).to_vec();
        out.extend_from_slice(self.user.as_bytes());
        out.push(0);
        if self.caps & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
            super::put_lenenc_int(&mut out, self.auth.len() as u64);
        } else {
            out.push(self.auth.len() as u8);
        }
        out.extend_from_slice(&self.auth);
        if self.caps & caps::CONNECT_WITH_DB != 0 {
            out.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if self.caps & caps::PLUGIN_AUTH != 0 {
            out.extend_from_slice(self.plugin.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if self.caps & caps::CONNECT_ATTRS != 0 {
            out.extend_from_slice(self.attrs.as_deref().unwrap_or(&[0]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The greeting MariaDB 10.11.19 sent (see MYSQL.md §4.1), rebuilt byte by byte.
    pub(crate) fn mariadb_greeting() -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"5.5.5-10.11.19-MariaDB-0+deb12u1-log\0");
        g.extend_from_slice(&42u32.to_le_bytes());
        g.extend_from_slice(b"abcdefgh\0");
        g.extend_from_slice(&0xf7feu16.to_le_bytes());
        g.push(45);
        g.extend_from_slice(&2u16.to_le_bytes());
        g.extend_from_slice(&0x81ffu16.to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0; 6]);
        g.extend_from_slice(&0x1du32.to_le_bytes());
        g.extend_from_slice(b"ijklmnopqrst\0");
        g.extend_from_slice(b"mysql_native_password\0");
        g
    }

    #[test]
    fn mariadb_greeting_is_read_and_patched_in_place() {
        let raw = mariadb_greeting();
        let g = Greeting::parse(&raw).unwrap();
        assert_eq!(g.connection_id, 42);
        assert_eq!(g.caps, 0x81ff_f7fe | 0x1d << 32);
        assert_eq!(g.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(g.plugin, "mysql_native_password");
        assert!(g.server_version.contains("MariaDB"));
        let offered = g.caps & !caps::NEVER_OFFERED;
        let patched = Greeting::parse(&g.with_caps(offered)).unwrap();
        assert_eq!(patched.caps, offered);
        assert_eq!(patched.caps >> 32, caps::MARIADB_EXTENDED_METADATA >> 32, "only extended metadata stays");
        assert_eq!(patched.caps & caps::COMPRESS, 0);
        assert_eq!((patched.nonce, patched.plugin), (g.nonce.clone(), g.plugin.clone()));
        let own = Greeting::parse(&g.with_own_nonce(offered, b"ABCDEFGHIJKLMNOPQRST")).unwrap();
        assert_eq!(own.nonce, b"ABCDEFGHIJKLMNOPQRST");
        assert_eq!((own.plugin.as_str(), own.connection_id), ("mysql_native_password", 42));
    }

    #[test]
    fn garbage_greetings_are_errors() {
        let raw = mariadb_greeting();
        for cut in 0..raw.len() - 25 {
            assert!(Greeting::parse(&raw[..cut]).is_err(), "{cut}");
        }
        assert!(Greeting::parse(b"\xffnot a greeting").is_err());
    }

    #[test]
    fn handshake_response_round_trip() {
        let c = caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::PLUGIN_AUTH_LENENC_DATA
            | caps::CONNECT_WITH_DB
            | caps::CONNECT_ATTRS
            | caps::MARIADB_EXTENDED_METADATA;
        let mut fixed = vec![0u8; FIXED_LEN];
        set_client_caps(&mut fixed, c);
        let r = Response {
            caps: c,
            user: "app".into(),
            auth: vec![1; 20],
            database: Some("shop".into()),
            plugin: Some("mysql_native_password".into()),
            attrs: Some(vec![4, 1, b'a', 1, b'b']),
        };
        let bytes = r.build(&fixed);
        assert_eq!(Response::parse(&bytes).unwrap(), r);
        assert!(!is_ssl_request(&bytes));
        let mut ssl = fixed.clone();
        set_client_caps(&mut ssl, c | caps::SSL);
        assert!(is_ssl_request(&ssl));
        for cut in FIXED_LEN..bytes.len() - 5 {
            // Cut inside user, auth data or database: an error, never a panic.
            let _ = Response::parse(&bytes[..cut]);
        }
        assert!(Response::parse(b"garbage").is_err());
        assert!(Response::parse(&[0u8; 40]).is_err(), "no PROTOCOL_41");
    }
}
