//! One client session from accept to close: greeting, TLS and authentication (bounded by
//! `authentication_timeout`), then the relay until either side ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::conn::Conn;
use super::relay::{self, End, PumpError, SessionState};
use super::statements::Statements;
use super::{auth, handshake, SessionError, Shared};
use crate::frontend::listener::Refusal;
use crate::net::Stream;
use crate::protocol::mysql::response::parse_ok;
use crate::protocol::mysql::{com, errors, packet};

/// Serve one accepted connection until it ends. A refused session (over `max_connections`,
/// or capgate out of file descriptors) is told 1040 Too many connections instead of a
/// greeting, as the server itself does.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, refusal: Option<Refusal>, shutdown: watch::Receiver<bool>) {
    let peer = tcp.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "?".into());
    let _ = tcp.set_nodelay(true);
    let mut client = Some(Conn::new(Stream::Plain(tcp)));
    if refusal.is_some() {
        if let Some(c) = client.as_mut() {
            let _ = c.send(&packet::err(0, errors::TOO_MANY_CONNECTIONS, "Too many connections")).await;
        }
        return;
    }
    // The sequence id an error sent to the client now must carry.
    let mut seq = 0u8;
    match run(&shared, &mut client, &mut seq, &peer, shutdown).await {
        Ok(()) => debug!(%peer, "session ended"),
        Err(e) => {
            match &e {
                SessionError::Closed | SessionError::Forwarded | SessionError::Io(_) => debug!(%peer, "session ended: {e}"),
                _ => warn!(%peer, "session ended: {e}"),
            }
            if let (Some(conn), Some(err)) = (client.as_mut(), client_error(&e, &shared, seq)) {
                let _ = conn.send(&err).await;
            }
        }
    }
}

/// The ERR packet the client is told for `e`, if any.
fn client_error(e: &SessionError, shared: &Shared, seq: u8) -> Option<Vec<u8>> {
    let site = &shared.config.site;
    let primary = shared.primary.url.address();
    Some(match e {
        SessionError::Closed | SessionError::Io(_) | SessionError::Forwarded => return None,
        SessionError::Packet(p) => packet::err(seq, errors::BAD_HANDSHAKE, &format!("Bad handshake: {p}")),
        SessionError::UpstreamProtocol(what) => packet::err(
            seq,
            errors::PRIMARY_UNREACHABLE,
            &format!("capgate: the primary of site \"{site}\" at {primary} broke the protocol: {what}"),
        ),
        SessionError::Upstream(u) => packet::err(
            seq,
            errors::PRIMARY_UNREACHABLE,
            &format!(
                "capgate: cannot connect to the primary of site \"{site}\" at {primary}: {u} (check that it is running and that \
                 [primary].url in the capgate configuration is right)"
            ),
        ),
        SessionError::AuthTimeout => {
            packet::err(seq, errors::READ_TIMEOUT, "Got timeout reading communication packets (authentication_timeout)")
        }
        SessionError::Refused { code, message } => packet::err(seq, *code, message),
    })
}

async fn run(
    shared: &Arc<Shared>,
    client: &mut Option<Conn>,
    seq: &mut u8,
    peer: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let deadline = tokio::time::Instant::now() + shared.config.authentication_timeout;
    let login = async {
        let mut opened = handshake::open(shared, client, seq).await?;
        let conn = client.as_mut().ok_or(SessionError::Closed)?;
        let proxy_user = shared.config.users.iter().find(|u| u.name == opened.response.user);
        match proxy_user {
            Some(u) => auth::proxy(conn, &mut opened, u, &shared.primary.url, peer, seq).await?,
            None => auth::passthrough(conn, &mut opened, seq).await?,
        }
        Ok::<_, SessionError>(opened)
    };
    // Boxed: the login's future is larger than the relay's, and held inline it would size the
    // session's task for as long as the session lives.
    let opened = tokio::time::timeout_at(deadline, Box::pin(login)).await.map_err(|_| SessionError::AuthTimeout)??;
    let user = opened.response.user.clone();
    let thread = opened.greeting.connection_id;
    info!(%user, %peer, thread, database = opened.response.database.as_deref().unwrap_or(""), tls = opened.client_tls, "session started");
    let _registered = shared.threads.register(thread, &user);
    let own_auth = !shared.config.users.is_empty();
    let mariadb = opened.greeting.server_version.contains("MariaDB");
    let mut statements = Statements::new(shared.clone(), user, thread, opened.server_caps, own_auth, mariadb);
    let state = SessionState::default();
    if let Some(db) = &opened.response.database {
        state.lock().schema = Some(db.clone());
    }
    // Until the first reply, the session's flags are the login's (capgate answers an admin
    // command with them).
    state.lock().status = opened.status;
    let mut server = opened.server;
    if shared.sync.is_some() {
        // Mark the primary connection as a capgate client session: its sync changes are kept
        // for the coordinator at COMMIT (decision 0015). One packet; an OK (or, for a primary
        // without @-variables, an error that only means sync writes will be refused). The
        // OK's status flags are the session's until the client's first reply: whether
        // autocommit is on decides how a first statement that writes a sync table is held.
        server.send_packet(0, &super::hold::session_marker()).await?;
        let reply = server.read(shared.config.max_message_size as usize).await?;
        match parse_ok(&reply.payload, false) {
            Some(ok) if reply.payload.first() == Some(&0x00) => state.lock().status = ok.status,
            _ => warn!("cannot mark the session on the primary; its writes to sync tables will be refused"),
        }
    }
    let conn = client.take().ok_or(SessionError::Closed)?;
    relay_until_end(shared, conn, server, &state, &mut statements, shutdown).await
}

/// Run both pumps until one ends, the client breaks the protocol, or a shutdown finds the
/// session idle.
async fn relay_until_end(
    shared: &Shared,
    client: Conn,
    server: Conn,
    state: &SessionState,
    statements: &mut Statements,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let (client_stream, mut client_buf) = client.into_parts();
    let (server_stream, mut server_buf) = server.into_parts();
    let (mut client_rd, mut client_wr) = client_stream.split();
    let (mut server_rd, mut server_wr) = server_stream.split();
    let max = shared.config.max_message_size as usize;
    let stall = shared.config.authentication_timeout;
    let outcome = {
        let up = relay::client_pump(&mut client_rd, &mut server_wr, &mut client_buf, state, statements, max, stall);
        let down = relay::server_pump(&mut server_rd, &mut client_wr, &mut server_buf, state);
        // Biased, in this order: the server pump must be polled after the client pump, so
        // that it sees the own replies the client pump queued without a wake-up
        // (`relay::SessionState`); no random start is drawn per poll either.
        tokio::select! {
            biased;
            r = up => Side::Client(r),
            r = down => Side::Server(r),
            _ = wait_idle_shutdown(&mut shutdown, state) => Side::Shutdown,
        }
    };
    let clean = !state.writing.load(Ordering::Acquire);
    let tell = |err: Vec<u8>| async move {
        if clean {
            let _ = client_wr.write_all(&err).await;
            let _ = client_wr.flush().await;
        }
    };
    let quit = [1, 0, 0, 0, com::QUIT];
    match outcome {
        Side::Client(Ok(End::Quit)) | Side::Server(Ok(_)) => Ok(()),
        Side::Client(Ok(End::Eof)) => {
            let _ = server_wr.write_all(&quit).await;
            Ok(())
        }
        Side::Client(Ok(End::Refused(err))) => {
            let _ = server_wr.write_all(&quit).await;
            tell(err).await;
            Ok(())
        }
        Side::Client(Err(e)) => {
            let _ = server_wr.write_all(&quit).await;
            let message = match &e {
                PumpError::Packet(p) => Some(packet::err(1, errors::PACKET_TOO_LARGE, &format!("Got a packet bigger than allowed: {p}"))),
                PumpError::Stalled(_) => {
                    Some(packet::err(1, errors::READ_TIMEOUT, &format!("Got timeout reading communication packets: {e}")))
                }
                PumpError::Io(_) => None,
            };
            if let Some(m) = message {
                tell(m).await;
            }
            match e {
                PumpError::Io(e) => Err(SessionError::Io(e)),
                other => Err(SessionError::refused(errors::BAD_HANDSHAKE, other.to_string())),
            }
        }
        Side::Server(Err(e)) => {
            debug!("primary connection failed: {e}");
            Err(SessionError::Closed)
        }
        Side::Shutdown => {
            let _ = server_wr.write_all(&quit).await;
            Ok(())
        }
    }
}

enum Side<T> {
    Client(T),
    Server(T),
    Shutdown,
}

/// Resolves once a shutdown has been requested while the session is idle (nothing owed, no
/// transaction open). A session in a transaction is checked again at each change of state.
async fn wait_idle_shutdown(shutdown: &mut watch::Receiver<bool>, state: &SessionState) {
    loop {
        if *shutdown.borrow_and_update() {
            if state.lock().idle() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
