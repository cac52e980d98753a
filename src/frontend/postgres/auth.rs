//! Authentication: relayed to the primary (the default), or done by the proxy itself for
//! the users listed in `[[users]]`, which then logs in upstream with the primary URL's
//! credentials. Either way the session ends this phase at the primary's ReadyForQuery, with
//! the client holding the proxy's own cancel key.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

use super::cancel::{CancelKey, CancelRegistry, UpstreamKey};
use super::conn::{Conn, MAX_STARTUP_FRAME};
use super::SessionError;
use crate::config::{DbUrl, User};
use crate::protocol::postgres::message::{self, ErrorMessage};
use crate::protocol::postgres::scram::{ScramError, ScramServer};
use crate::protocol::postgres::startup::StartupMessage;

/// Authentication request codes (the first word of an 'R' message).
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const AUTH_GSS_CONTINUE: i32 = 8;

/// Relay the client's own authentication exchange with the primary. The primary judges the
/// credentials; the proxy only removes SASL mechanisms with channel binding (`-PLUS`), which
/// cannot succeed through a relay: the client would bind to the proxy's TLS certificate and
/// the primary to its own.
pub async fn passthrough(client: &mut Conn, server: &mut Conn, startup: &[u8]) -> Result<(), SessionError> {
    server.send(startup).await?;
    // A server message read while waiting on both sides (GSS), to be handled next.
    let mut next = None;
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => server.read_frame(MAX_STARTUP_FRAME).await?,
        };
        match frame.tag {
            b'R' => {
                let (code, rest) =
                    message::auth_code(frame.body()).ok_or(SessionError::UpstreamProtocol("short authentication message"))?;
                if code == AUTH_SASL {
                    let usable: Vec<&str> = message::sasl_mechanisms(rest).into_iter().filter(|m| !m.ends_with("-PLUS")).collect();
                    let mut out = BytesMut::new();
                    message::auth_sasl(&mut out, &usable);
                    client.send(&out).await?;
                } else {
                    client.send(&frame.raw).await?;
                }
                match code {
                    AUTH_OK => return Ok(()),
                    AUTH_SASL_FINAL => {}
                    // A GSS continuation may be the server's last word (mutual
                    // authentication ends with one, then AuthenticationOk without waiting):
                    // take whichever side speaks first. Both reads keep partial bytes in
                    // their buffers, so the one that loses the race loses nothing.
                    AUTH_GSS_CONTINUE => {
                        tokio::select! {
                            answer = client.read_frame(MAX_STARTUP_FRAME) => {
                                let answer = answer?;
                                if answer.tag != b'p' {
                                    return Err(SessionError::Closed);
                                }
                                server.send(&answer.raw).await?;
                            }
                            frame = server.read_frame(MAX_STARTUP_FRAME) => next = Some(frame?),
                        }
                    }
                    // Every other request (cleartext, md5, SASL steps, GSS/SSPI) is answered
                    // by one password-type message from the client.
                    _ => {
                        let answer = client.read_frame(MAX_STARTUP_FRAME).await?;
                        // libpq hangs up this way when it must first prompt for a password.
                        if answer.tag == b'X' {
                            return Err(SessionError::Closed);
                        }
                        if answer.tag != b'p' {
                            return Err(SessionError::Refused(ErrorMessage::fatal(
                                "08P01",
                                format!(
                                    "expected password response, got message type {}",
                                    crate::protocol::postgres::frame::printable(answer.tag)
                                ),
                            )));
                        }
                        server.send(&answer.raw).await?;
                    }
                }
            }
            b'E' => {
                client.send(&frame.raw).await?;
                return Err(SessionError::Forwarded);
            }
            // NegotiateProtocolVersion and notices may precede authentication.
            _ => client.send(&frame.raw).await?,
        }
    }
}

/// Authenticate the client at the proxy with SCRAM-SHA-256 against `user`'s verifier. On a
/// wrong password the client gets exactly PostgreSQL's error (28P01).
pub async fn proxy(client: &mut Conn, user: &User) -> Result<(), SessionError> {
    let failed =
        || SessionError::Refused(ErrorMessage::fatal("28P01", format!("password authentication failed for user \"{}\"", user.name)));
    let mut out = BytesMut::new();
    message::auth_sasl(&mut out, &[SCRAM_SHA_256]);
    client.send(&out).await?;

    let initial = expect_password(client).await?;
    let body = initial.body();
    let mech_end = body.iter().position(|&b| b == 0).ok_or_else(|| malformed("SASLInitialResponse"))?;
    if &body[..mech_end] != SCRAM_SHA_256.as_bytes() {
        return Err(SessionError::Refused(ErrorMessage::fatal("28000", "client selected an invalid SASL authentication mechanism")));
    }
    let data = body.get(mech_end + 5..).ok_or_else(|| malformed("SASLInitialResponse"))?;
    let mut scram = ScramServer::new(user.verifier.clone());
    let server_first = scram.client_first(data).map_err(|e| scram_error(e, &failed))?;
    out.clear();
    message::auth_sasl_step(&mut out, AUTH_SASL_CONTINUE, &server_first);
    client.send(&out).await?;

    let response = expect_password(client).await?;
    let server_final = scram.client_final(response.body()).map_err(|e| scram_error(e, &failed))?;
    out.clear();
    message::auth_sasl_step(&mut out, AUTH_SASL_FINAL, &server_final);
    client.send(&out).await
}

fn scram_error(e: ScramError, failed: &dyn Fn() -> SessionError) -> SessionError {
    match e {
        ScramError::InvalidProof => failed(),
        other => SessionError::Refused(ErrorMessage::fatal("08P01", format!("malformed SCRAM message: {other}"))),
    }
}

fn malformed(what: &str) -> SessionError {
    SessionError::Refused(ErrorMessage::fatal("08P01", format!("malformed {what} message")))
}

async fn expect_password(client: &mut Conn) -> Result<super::conn::Frame, SessionError> {
    let frame = client.read_frame(MAX_STARTUP_FRAME).await?;
    if frame.tag != b'p' {
        return Err(malformed("password"));
    }
    Ok(frame)
}

/// Log in to the primary as the URL's user, for a client the proxy authenticated itself.
/// The client's other startup parameters (application_name, options, DateStyle …) are kept;
/// its database is used when it named one, else the URL's.
/// For a session capgate authenticates itself: tell a client that asked for a newer minor
/// version of protocol 3 or for protocol options (`_pq_.*`) that the session speaks 3.0
/// without them, as PostgreSQL does with NegotiateProtocolVersion before authentication.
/// capgate's upstream login for such a session speaks 3.0 ([`login_upstream`]), so the client
/// must not assume more.
pub async fn negotiate_protocol(client: &mut Conn, startup: &StartupMessage) -> Result<(), SessionError> {
    let options: Vec<&str> = startup.params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_.")).collect();
    if startup.minor == 0 && options.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    message::negotiate_protocol_version(&mut out, 3 << 16, &options);
    client.send(&out).await
}

pub async fn login_upstream(server: &mut Conn, url: &DbUrl, client_startup: &StartupMessage) -> Result<(), SessionError> {
    let user = url.user.clone().unwrap_or_default();
    let password = url.password.clone().unwrap_or_default();
    let database = client_startup.get("database").map(str::to_owned).or_else(|| url.dbname.clone()).unwrap_or_else(|| user.clone());
    let mut params = vec![("user".to_owned(), user.clone()), ("database".to_owned(), database)];
    // Protocol options were answered to the client by `negotiate_protocol` (none is
    // supported); the upstream login speaks 3.0 without them.
    params.extend(client_startup.params.iter().filter(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_.")).cloned());
    let (key, value) = crate::protocol::postgres::startup::SESSION_MARKER;
    params.push((key.to_owned(), value.to_owned()));
    let startup = StartupMessage { major: 3, minor: 0, params };
    server.send(&startup.encode()).await?;

    let mut scram: Option<ScramSha256> = None;
    let mut out = BytesMut::new();
    loop {
        let frame = server.read_frame(MAX_STARTUP_FRAME).await?;
        out.clear();
        match frame.tag {
            b'R' => {
                let (code, rest) =
                    message::auth_code(frame.body()).ok_or(SessionError::UpstreamProtocol("short authentication message"))?;
                match code {
                    AUTH_OK => return Ok(()),
                    AUTH_CLEARTEXT => frontend::password_message(password.as_bytes(), &mut out).map_err(SessionError::Io)?,
                    AUTH_MD5 => {
                        let salt: [u8; 4] =
                            rest.get(..4).and_then(|s| s.try_into().ok()).ok_or(SessionError::UpstreamProtocol("short md5 salt"))?;
                        let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut out).map_err(SessionError::Io)?;
                    }
                    AUTH_SASL => {
                        if !message::sasl_mechanisms(rest).contains(&SCRAM_SHA_256) {
                            return Err(SessionError::UpstreamProtocol("primary offers no SCRAM-SHA-256"));
                        }
                        let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out).map_err(SessionError::Io)?;
                        scram = Some(s);
                    }
                    AUTH_SASL_CONTINUE => {
                        let s = scram.as_mut().ok_or(SessionError::UpstreamProtocol("SASL continue without SASL"))?;
                        s.update(rest).map_err(|_| SessionError::UpstreamProtocol("bad SCRAM server-first message"))?;
                        frontend::sasl_response(s.message(), &mut out).map_err(SessionError::Io)?;
                    }
                    AUTH_SASL_FINAL => {
                        let mut s = scram.take().ok_or(SessionError::UpstreamProtocol("SASL final without SASL"))?;
                        s.finish(rest).map_err(|_| SessionError::UpstreamProtocol("primary's SCRAM signature is wrong"))?;
                        continue;
                    }
                    _ => return Err(SessionError::UpstreamProtocol("primary asks for an authentication method capgate cannot answer")),
                }
                server.send(&out).await?;
            }
            b'E' => {
                let fields = message::error_fields(frame.body());
                let text = fields.iter().find(|(c, _)| *c == b'M').map(|(_, m)| m.as_str()).unwrap_or("error");
                return Err(SessionError::Refused(
                    ErrorMessage::fatal("08006", format!("capgate could not log in to the primary as \"{user}\": {text}"))
                        .with_hint("check the user and password in [primary].url of the capgate configuration"),
                ));
            }
            _ => {}
        }
    }
}

/// Relay the rest of the startup (ParameterStatus, BackendKeyData, notices) up to and
/// including the first ReadyForQuery, swapping the primary's cancel key for the proxy's.
pub async fn finish_startup(client: &mut Conn, server: &mut Conn, cancels: &CancelRegistry) -> Result<Option<CancelKey>, SessionError> {
    let mut out = BytesMut::with_capacity(512);
    let mut key = None;
    loop {
        let frame = server.read_frame(MAX_STARTUP_FRAME).await?;
        match frame.tag {
            b'K' => {
                let body = frame.body();
                let pid = i32::from_be_bytes(
                    body.get(..4).and_then(|b| b.try_into().ok()).ok_or(SessionError::UpstreamProtocol("short BackendKeyData"))?,
                );
                let registered = cancels.register(UpstreamKey { pid, secret: body[4..].to_vec() });
                message::backend_key_data(&mut out, registered.pid, &registered.secret);
                key = Some(registered);
            }
            b'E' => {
                out.extend_from_slice(&frame.raw);
                client.send(&out).await?;
                return Err(SessionError::Forwarded);
            }
            b'Z' => {
                out.extend_from_slice(&frame.raw);
                client.send(&out).await?;
                return Ok(key);
            }
            _ => out.extend_from_slice(&frame.raw),
        }
    }
}
