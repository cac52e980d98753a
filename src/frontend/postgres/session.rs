//! One client session from accept to close: TLS and startup negotiation, the primary
//! connection, authentication, then the relay.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::auth;
use super::conn::Conn;
use super::coordinator::{Coordinator, Exit};
use super::relay::{self, End, Flow, Pump, SessionState};
use super::statements::Statements;
use super::{SessionError, Shared, UpstreamError};
use crate::config::TlsMode;
use crate::frontend::limits::{LimitCounters, LIMITS};
use crate::frontend::listener::Refusal;
use crate::net::Stream;
use crate::protocol::postgres::message::ErrorMessage;
use crate::protocol::postgres::startup::{StartupMessage, StartupPacket};

/// The first byte of a TLS handshake record: a client using PostgreSQL 17's direct TLS
/// negotiation starts with it instead of an SSLRequest.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a refused connection may take to send its startup packet before it is closed
/// without being told: ample for a client that is sending one, short enough that an idle
/// connection does not keep the reserve descriptor (and every later client's refusal) waiting.
const REFUSED_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the startup phase produced.
enum Opening {
    /// A CancelRequest was handled; the connection is done.
    Cancelled,
    Startup {
        conn: Conn,
        message: StartupMessage,
        raw: bytes::Bytes,
    },
}

/// Serve one accepted connection until it ends. Refused sessions (over `max_connections`, or
/// capgate out of file descriptors) only get their startup read so they can be told 53300
/// properly (cancel requests are still honoured).
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, refusal: Option<Refusal>, shutdown: watch::Receiver<bool>) {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = tcp.set_nodelay(true);
    let mut client: Option<Conn> = None;
    let result = run(&shared, tcp, refusal, shutdown, &mut client).await;
    if let Err(SessionError::AuthTimeout) = &result {
        LimitCounters::count(&LIMITS.startup_timeouts);
    }
    match result {
        Ok(()) => debug!(%peer, "session ended"),
        Err(e) => {
            match &e {
                SessionError::Closed | SessionError::Forwarded => debug!(%peer, "session ended: {e}"),
                SessionError::Io(_) => debug!(%peer, "session ended: {e}"),
                _ => warn!(%peer, "session ended: {e}"),
            }
            if let (Some(conn), Some(msg)) = (client.as_mut(), e.client_message(&shared.config.site, &shared.primary.url.address())) {
                let _ = conn.send(&msg.to_bytes()).await;
            }
        }
    }
}

async fn run(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    refusal: Option<Refusal>,
    shutdown: watch::Receiver<bool>,
    slot: &mut Option<Conn>,
) -> Result<(), SessionError> {
    // One deadline for everything from accept to ReadyForQuery. A refused connection may hold
    // the descriptor kept in reserve: it gets only a short while to send its startup.
    let wait = match refusal {
        Some(_) => shared.config.authentication_timeout.min(REFUSED_STARTUP_WAIT),
        None => shared.config.authentication_timeout,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let opened = tokio::time::timeout_at(deadline, open(shared, tcp, slot)).await.map_err(|_| SessionError::AuthTimeout)??;
    let Opening::Startup { conn, message, raw } = opened else { return Ok(()) };
    *slot = Some(conn);
    let client = slot.as_mut().expect("just set");
    match refusal {
        Some(Refusal::MaxConnections) => {
            return Err(SessionError::Refused(
                ErrorMessage::fatal("53300", "sorry, too many clients already")
                    .with_detail(format!("capgate serves at most {} sessions (max_connections)", shared.config.max_connections)),
            ))
        }
        Some(Refusal::NoDescriptors) => return Err(SessionError::Refused(no_descriptors())),
        None => {}
    }
    if shared.config.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) && !client.stream.is_tls() {
        return Err(SessionError::Refused(
            ErrorMessage::fatal("28000", "capgate requires TLS: connect with sslmode=require or stricter")
                .with_hint("the [tls] mode of this capgate is `require`"),
        ));
    }
    if message.get("user").is_none_or(str::is_empty) {
        return Err(SessionError::Refused(ErrorMessage::fatal("28000", "no PostgreSQL user name specified in startup packet")));
    }
    let user = message.get("user").unwrap_or_default().to_owned();

    let (server, key) = tokio::time::timeout_at(deadline, async {
        let proxy_user = shared.config.users.iter().find(|u| u.name == user);
        if let Some(u) = proxy_user {
            auth::negotiate_protocol(client, &message).await?;
            auth::proxy(client, u).await?;
        }
        let mut server = Conn::new(shared.primary.connect().await.map_err(upstream_error)?);
        match proxy_user {
            Some(_) => {
                auth::login_upstream(&mut server, &shared.primary.url, &message).await?;
                let mut ok = BytesMut::new();
                crate::protocol::postgres::message::auth_ok(&mut ok);
                client.send(&ok).await?;
            }
            None => {
                let (key, value) = crate::protocol::postgres::startup::SESSION_MARKER;
                let marked = crate::protocol::postgres::startup::with_parameter(&raw, key, value);
                auth::passthrough(client, &mut server, &marked).await?
            }
        }
        let key = auth::finish_startup(client, &mut server, &shared.cancels).await?;
        Ok::<_, SessionError>((server, key))
    })
    .await
    .map_err(|_| SessionError::AuthTimeout)??;
    info!(%user, database = message.get("database").unwrap_or(&user), tls = client.stream.is_tls(), "session started");

    let client = slot.take().expect("set above");
    let result = relay(shared, client, server, &message, shutdown).await;
    drop(key);
    result
}

/// The refusal of a client capgate has no file descriptors for.
fn no_descriptors() -> ErrorMessage {
    ErrorMessage::fatal("53300", "sorry, too many clients already")
        .with_detail("capgate has run out of file descriptors")
        .with_hint("raise capgate's open-file limit (ulimit -n, systemd LimitNOFILE) or lower max_connections")
}

/// A failed connection to the primary. When capgate itself is out of descriptors (the
/// client's socket took the last one), the client is told that, as the accept loop would
/// have, rather than that the primary is unreachable.
fn upstream_error(e: UpstreamError) -> SessionError {
    match &e {
        UpstreamError::Io(io) if crate::frontend::listener::out_of_descriptors(io) => SessionError::Refused(no_descriptors()),
        _ => SessionError::Upstream(e),
    }
}

/// TLS negotiation and the startup packet (or a cancel request).
async fn open(shared: &Shared, tcp: TcpStream, slot: &mut Option<Conn>) -> Result<Opening, SessionError> {
    let mut tcp = Some(tcp);
    let mut conn: Option<Conn> = None;
    // Direct TLS (PostgreSQL 17+): the client starts the handshake without asking.
    if let (Some(acceptor), Some(t)) = (&shared.tls, &tcp) {
        let mut first = [0u8; 1];
        if t.peek(&mut first).await.map_err(SessionError::Io)? == 1 && first[0] == TLS_HANDSHAKE {
            let stream = acceptor.accept(tcp.take().expect("present")).await.map_err(SessionError::Io)?;
            // PostgreSQL 17 requires ALPN `postgresql` on direct TLS (a client offering another
            // protocol was already refused in the handshake), so that a TLS connection meant
            // for another service cannot be replayed against the database.
            let alpn = stream.get_ref().1.alpn_protocol().is_some();
            conn = Some(Conn::new(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream)))));
            if !alpn {
                *slot = conn;
                return Err(SessionError::Refused(ErrorMessage::fatal(
                    "08P01",
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                )));
            }
        }
    }
    let mut conn = match conn {
        Some(c) => c,
        None => Conn::new(Stream::Plain(tcp.take().expect("present"))),
    };
    loop {
        let (packet, raw) = match conn.read_startup().await {
            Ok(p) => p,
            Err(e) => {
                *slot = Some(conn);
                return Err(e);
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if conn.has_buffered() => {
                // Bytes sent before the answer would be read as if encrypted (CVE-2021-23214).
                *slot = Some(conn);
                return Err(SessionError::Refused(ErrorMessage::fatal("08P01", "received unencrypted data after SSL request")));
            }
            StartupPacket::SslRequest => match (&shared.tls, conn.stream) {
                (Some(acceptor), Stream::Plain(t)) => {
                    let mut t = t;
                    tokio::io::AsyncWriteExt::write_all(&mut t, b"S").await.map_err(SessionError::Io)?;
                    let stream = acceptor.accept(t).await.map_err(SessionError::Io)?;
                    conn = Conn::new(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))));
                }
                (_, stream) => {
                    conn = Conn::new(stream);
                    conn.send(b"N").await?;
                }
            },
            // GSSAPI encryption is not offered; the client falls back to TLS or plain text.
            StartupPacket::GssEncRequest => conn.send(b"N").await?,
            StartupPacket::Cancel { pid, secret } => {
                if let Some(key) = shared.cancels.lookup(pid, &secret) {
                    if let Err(e) = shared.primary.cancel(key.pid, &key.secret).await {
                        warn!("cancel request could not reach the primary: {e}");
                    }
                } else {
                    debug!("cancel request for an unknown session ignored");
                }
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup(message) => {
                if message.major != 3 {
                    *slot = Some(conn);
                    return Err(SessionError::Refused(ErrorMessage::fatal(
                        "0A000",
                        format!("unsupported frontend protocol {}.{}: server supports 3.0 to 3.2", message.major, message.minor),
                    )));
                }
                return Ok(Opening::Startup { conn, message, raw });
            }
        }
    }
}

/// Relay until either side ends, the client breaks the protocol, or a shutdown finds the
/// session idle.
async fn relay(
    shared: &Shared,
    client: Conn,
    server: Conn,
    startup: &StartupMessage,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let max = shared.config.max_message_size;
    let (client_stream, client_left) = client.into_parts();
    let (server_stream, server_left) = server.into_parts();
    let (mut client_rd, mut client_wr) = client_stream.split();
    let (mut server_rd, mut server_wr) = server_stream.split();
    let mut up = Pump::new(client_left, max);
    // The primary is trusted with any frame size it sends.
    let mut down = Pump::new(server_left, u32::MAX);
    let state = SessionState::new();
    let mut statements = Statements::new(shared.router.clone(), shared.replication.clone(), startup);
    let mut held: Option<super::statements::Hold> = None;
    let user = startup.get("user").unwrap_or_default();
    let stopping = shutdown.clone();
    let stop_when_idle = move || *stopping.borrow();

    let outcome = loop {
        let side = {
            let mut on_client_frame = |tag: u8, frame: Option<&[u8]>| {
                if let Some(frame) = frame {
                    statements.message(&state, tag, frame);
                    let admin = super::admin_sql::is_admin_query(tag, frame);
                    if !admin && matches!(tag, b'Q' | b'B' | b'S') {
                        held = statements.hold(&state, tag, frame);
                    }
                    if tag == b'P' {
                        held = statements.copy_waits(frame).map(|_| super::statements::Hold::Admission);
                    }
                    if admin || held.is_some() {
                        // Replies owed to extended messages come only after a Flush.
                        let mut extra = BytesMut::new();
                        if state.hidden.lock().unwrap_or_else(|p| p.into_inner()).back_is_extended() {
                            extra.extend_from_slice(&[b'H', 0, 0, 0, 4]);
                        }
                        return Flow::Hold(extra);
                    }
                }
                if matches!(tag, b'c' | b'f') {
                    statements.copy_ended();
                }
                let counted = relay::client_frame(&state, tag);
                match frame {
                    Some(frame) if matches!(tag, b'Q' | b'P' | b'C' | b'F') => statements.on_frame(&state, tag, frame),
                    _ => counted,
                }
            };
            // The server pump may be stopped in its read only while the coordinator waits
            // for it and nothing is owed.
            let stop_reading = || state.holding.load(Ordering::Acquire) && !state.owed();
            let client_fut = up.run(&mut client_rd, &mut server_wr, relay::client_inspect, &mut on_client_frame, None);
            let server_fut = down.run(
                &mut server_rd,
                &mut client_wr,
                relay::server_inspect,
                |tag, frame| relay::server_frame(&state, tag, frame, &stop_when_idle),
                Some(&stop_reading),
            );
            tokio::pin!(client_fut, server_fut);
            // In this order, without drawing a random start (the pumps loop by themselves and
            // end only when something happened, so nothing starves).
            let first = tokio::select! {
                biased;
                r = &mut client_fut => Side::Client(r),
                r = &mut server_fut => Side::Server(r),
                _ = wait_idle_shutdown(&mut shutdown, &state) => Side::Shutdown,
                _ = idle_timeout(shared.config.idle_session_timeout, &state) => Side::IdleTimeout,
            };
            match first {
                Side::Client(Ok(End::Held)) => {
                    // Let the server pump deliver every reply owed, then take over.
                    state.holding.store(true, Ordering::Release);
                    // Polled at once: it stops in its read if nothing is owed.
                    let r = server_fut.await;
                    state.holding.store(false, Ordering::Release);
                    match r {
                        Ok(End::Stopped | End::Interrupted | End::Held) => Side::Client(Ok(End::Held)),
                        other => Side::Server(other),
                    }
                }
                other => other,
            }
        };
        if let Side::Client(Ok(End::Held)) = side {
            if let Some(sql) = super::admin_sql::take_held(up.buffer()) {
                let status = state.tx_status.load(Ordering::Acquire);
                // Boxed, as is the coordinator below: their futures are several KiB, and held
                // inline they would size every idle session's task (docs/performance.md).
                Box::pin(super::admin_sql::answer(shared, user, &sql, status, &mut client_wr)).await.map_err(SessionError::Io)?;
                continue;
            }
            let coordinator = Coordinator::new(
                shared,
                &state,
                &mut statements,
                (&mut client_rd, &mut client_wr, up.buffer()),
                (&mut server_rd, &mut server_wr, down.buffer()),
            );
            let hold = held.take().unwrap_or(super::statements::Hold::Commit);
            match Box::pin(coordinator.run(hold)).await {
                Ok(Exit::Resume) => continue,
                Ok(Exit::Closed) => return Ok(()),
                Err(e) => {
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut server_wr, &TERMINATE).await;
                    return Err(e);
                }
            }
        }
        break side;
    };
    let goodbye = |msg: ErrorMessage| async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut client_wr, &msg.to_bytes()).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut client_wr).await;
    };
    match outcome {
        Side::Client(Ok(_)) => Ok(()),
        Side::Client(Err(relay::PumpError::Frame(e))) => {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut server_wr, &TERMINATE).await;
            if down.clean() {
                goodbye(ErrorMessage::fatal("08P01", format!("invalid frontend message: {e}"))).await;
            }
            Err(SessionError::Protocol(e))
        }
        Side::Client(Err(relay::PumpError::Io(e))) => Err(SessionError::Io(e)),
        Side::Server(Ok(End::Stopped | End::Held | End::Interrupted)) | Side::Shutdown => {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut server_wr, &TERMINATE).await;
            if !down.clean() {
                return Ok(());
            }
            goodbye(
                ErrorMessage::fatal("57P01", "terminating connection due to administrator command").with_detail("capgate is shutting down"),
            )
            .await;
            Ok(())
        }
        Side::IdleTimeout => {
            LimitCounters::count(&LIMITS.idle_timeouts);
            let _ = tokio::io::AsyncWriteExt::write_all(&mut server_wr, &TERMINATE).await;
            if down.clean() {
                goodbye(ErrorMessage::fatal("57P05", "terminating connection due to idle-session timeout").with_detail(format!(
                    "capgate closes sessions idle outside a transaction for {:?} (idle_session_timeout)",
                    shared.config.idle_session_timeout.unwrap_or_default()
                )))
                .await;
            }
            Ok(())
        }
        Side::Server(Ok(End::Eof)) => Ok(()),
        Side::Server(Err(e)) => {
            debug!("primary connection failed: {e}");
            Err(SessionError::Closed)
        }
    }
}

/// Terminate ('X'), sent to the primary when the proxy ends a session itself.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

enum Side<T> {
    Client(T),
    Server(T),
    Shutdown,
    IdleTimeout,
}

/// Resolves once the session has been idle outside a transaction, with no client message,
/// for `timeout` (checked every quarter of it, so it closes within 1.25 × `timeout`); never
/// without a timeout.
async fn idle_timeout(timeout: Option<std::time::Duration>, state: &SessionState) {
    let Some(timeout) = timeout else { return std::future::pending().await };
    let step = timeout / 4;
    let mut seen = state.client_frames.load(Ordering::Relaxed);
    let mut quiet = std::time::Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = state.client_frames.load(Ordering::Relaxed);
        if now != seen || !state.is_idle() {
            seen = now;
            quiet = std::time::Duration::ZERO;
            continue;
        }
        quiet += step;
        if quiet >= timeout {
            return;
        }
    }
}

/// Resolves once a shutdown has been requested while the session is idle. A session in a
/// transaction is stopped by the server pump instead, at its next idle ReadyForQuery.
async fn wait_idle_shutdown(shutdown: &mut watch::Receiver<bool>, state: &SessionState) {
    loop {
        if *shutdown.borrow_and_update() && state.is_idle() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
