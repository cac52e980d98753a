//! Authentication: relayed to the primary (the default), or done by capgate itself for the
//! users in `[[users]]`, which then logs in upstream with the primary URL's credentials.
//!
//! Pass-through: the client answers the primary's nonce and the primary judges, whatever the
//! plugin (mysql_native_password, MariaDB's ed25519, caching_sha2_password's fast path and
//! its RSA exchange); a wrong password gets the primary's own error. One exception: when the
//! client's leg is TLS and the primary's is not, a client asked for its cleartext password
//! (caching_sha2_password's full authentication, mysql_clear_password, PAM's dialog) would send it to
//! capgate in the clear-text form meant for a secure channel, and capgate would have to carry
//! it over plain TCP. It never does: the login is refused, naming the remedy.
//!
//! Sequence ids: the legs count differently (TLS on one leg adds a packet), so every packet
//! is re-numbered for the leg it is sent on.

use super::conn::{Conn, MAX_HANDSHAKE_PACKET};
use super::handshake::Opened;
use super::SessionError;
use crate::config::{DbUrl, User};
use crate::protocol::mysql::auth::{asks_for_cleartext, native_scramble, native_verify};
use crate::protocol::mysql::errors;
use crate::protocol::mysql::handshake::{set_client_caps, Response, FIXED_LEN};

const NATIVE: &str = "mysql_native_password";

/// The next sequence id on each leg.
struct Seqs {
    client: u8,
    server: u8,
}

/// An AuthSwitchRequest payload.
fn auth_switch(plugin: &str, nonce: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(plugin.len() + nonce.len() + 3);
    p.push(0xfe);
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p.extend_from_slice(nonce);
    p.push(0);
    p
}

/// The response the primary gets: the client's, with the primary leg's capabilities.
fn server_response(o: &Opened) -> Vec<u8> {
    let mut raw = o.response_raw.clone();
    set_client_caps(&mut raw, o.server_caps);
    raw
}

/// Relay the client's own authentication. `seq` is kept at the next client sequence id.
pub async fn passthrough(client: &mut Conn, o: &mut Opened, seq: &mut u8) -> Result<(), SessionError> {
    let mut s = Seqs { client: o.client_seq.wrapping_add(1), server: o.server_seq };
    let first = if o.client_nonce != o.greeting.nonce {
        // The client answered capgate's nonce (capgate greets with its own when it has
        // [[users]]): ask again with the primary's plugin and nonce.
        client.send_packet(s.client, &auth_switch(&o.greeting.plugin, &o.greeting.nonce)).await?;
        let answer = client.read(MAX_HANDSHAKE_PACKET).await?;
        s.client = answer.seq.wrapping_add(1);
        let mut r = o.response.clone();
        r.caps = o.server_caps;
        r.auth = answer.payload;
        r.plugin = Some(o.greeting.plugin.clone());
        let mut fixed = o.response_raw[..FIXED_LEN].to_vec();
        set_client_caps(&mut fixed, o.server_caps);
        r.build(&fixed)
    } else {
        server_response(o)
    };
    o.server.send_packet(s.server, &first).await?;
    s.server = s.server.wrapping_add(1);
    loop {
        *seq = s.client;
        let p = o.server.read(MAX_HANDSHAKE_PACKET).await?;
        s.server = p.seq.wrapping_add(1);
        if asks_for_cleartext(&p.payload) && o.client_tls && !o.server_tls {
            return Err(SessionError::refused(
                errors::ACCESS_DENIED,
                format!(
                    "capgate will not send the password of '{}' in clear text over the unencrypted connection to the primary: \
                     set sslmode=require (or stricter) in [primary].url",
                    o.response.user
                ),
            ));
        }
        client.send_packet(s.client, &p.payload).await?;
        s.client = s.client.wrapping_add(1);
        match p.payload.first() {
            Some(0x00) => {
                o.status = login_status(&p.payload);
                return Ok(());
            }
            Some(0xff) => return Err(SessionError::Forwarded),
            // caching_sha2_password's fast-auth success: the OK follows.
            Some(0x01) if p.payload == [0x01, 0x03] => {}
            _ => {
                let answer = client.read(MAX_HANDSHAKE_PACKET).await?;
                o.server.send_packet(s.server, &answer.payload).await?;
                s.client = answer.seq.wrapping_add(1);
                s.server = s.server.wrapping_add(1);
            }
        }
    }
}

/// Authenticate a `[[users]]` user with capgate's own nonce, then log in to the primary with
/// the URL's credentials. `seq` is kept at the next client sequence id.
pub async fn proxy(client: &mut Conn, o: &mut Opened, user: &User, url: &DbUrl, peer: &str, seq: &mut u8) -> Result<(), SessionError> {
    let mut next = o.client_seq.wrapping_add(1);
    let mut answer = o.response.auth.clone();
    if o.response.plugin.as_deref().is_some_and(|p| p != NATIVE) {
        client.send_packet(next, &auth_switch(NATIVE, &o.client_nonce)).await?;
        let a = client.read(MAX_HANDSHAKE_PACKET).await?;
        next = a.seq.wrapping_add(1);
        answer = a.payload;
    }
    *seq = next;
    let accepted = user.mysql_native.is_some_and(|stored| native_verify(&stored, &o.client_nonce, &answer));
    if !accepted {
        return Err(SessionError::refused(
            errors::ACCESS_DENIED,
            format!(
                "Access denied for user '{}'@'{peer}' (using password: {})",
                o.response.user,
                if answer.is_empty() { "NO" } else { "YES" }
            ),
        ));
    }
    let password = url.password.as_deref().unwrap_or("");
    let mut login = Response {
        caps: o.server_caps,
        user: url.user.clone().unwrap_or_default(),
        auth: native_scramble(password, &o.greeting.nonce),
        database: o.response.database.clone().or_else(|| url.dbname.clone()),
        plugin: Some(NATIVE.to_owned()),
        attrs: o.response.attrs.clone(),
    };
    if login.database.is_some() {
        login.caps |= crate::protocol::mysql::caps::CONNECT_WITH_DB;
    }
    let mut fixed = o.response_raw[..FIXED_LEN].to_vec();
    set_client_caps(&mut fixed, login.caps);
    let mut server_seq = o.server_seq;
    o.server.send_packet(server_seq, &login.build(&fixed)).await?;
    loop {
        let p = o.server.read(MAX_HANDSHAKE_PACKET).await?;
        server_seq = p.seq.wrapping_add(1);
        match p.payload.first() {
            Some(0x00) => {
                o.status = login_status(&p.payload);
                client.send_packet(next, &p.payload).await?;
                return Ok(());
            }
            Some(0xfe) if p.payload[1..].starts_with(b"mysql_native_password\0") => {
                let nonce = p.payload[1 + NATIVE.len() + 1..].strip_suffix(&[0]).unwrap_or(&p.payload[NATIVE.len() + 2..]);
                o.server.send_packet(server_seq, &native_scramble(password, nonce)).await?;
            }
            _ => {
                let reason = crate::protocol::mysql::response::parse_err(&p.payload)
                    .map(|e| format!("{} ({})", e.message, e.code))
                    .unwrap_or_else(|| "it asked for an authentication method capgate does not speak (only mysql_native_password)".into());
                return Err(SessionError::refused(
                    errors::ACCESS_DENIED,
                    format!("capgate could not log in to the primary as [primary].url's user: {reason}"),
                ));
            }
        }
    }
}

/// The status flags of the OK that ends a login (0 if it cannot be read).
fn login_status(ok: &[u8]) -> u16 {
    crate::protocol::mysql::response::parse_ok(ok, false).map_or(0, |ok| ok.status)
}
