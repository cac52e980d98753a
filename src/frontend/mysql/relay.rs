//! The relay loop: after authentication, every command goes to the primary and every reply
//! to the client, as the original packets.
//!
//! Two pumps run concurrently, one per direction (a client may pipeline commands; one loop
//! blocked writing to a side that is blocked writing to it would deadlock). They share a
//! [`Flow`]: the client pump queues, for each command it forwards, a [`Tracker`] for its reply
//! (or capgate's own reply, for a command it refuses); the server pump walks the primary's
//! packets through the tracker at the front of the queue, so it knows where each reply ends,
//! the final status flags (transaction state), the current database from session tracking,
//! a prepared statement's id, and when the client's next packets are LOAD DATA LOCAL file
//! contents rather than commands.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::statements::{Statements, Verdict};
use crate::classify::Classification;
use crate::net::buffers::{self, ReadReady};
use crate::protocol::mysql::packet::{self, Header, HEADER_LEN, MAX_PAYLOAD};
use crate::protocol::mysql::response::{Event, Outcome, Tracker};
use crate::protocol::mysql::{status, PacketError};

/// Receive buffer size for each direction; a pump holds its buffer only while bytes are in
/// it (`net::buffers`).
const READ_CHUNK: usize = crate::net::buffers::READ_CHUNK;

/// What the two pumps share about the session.
#[derive(Debug, Default)]
pub struct Flow {
    /// Replies owed to the client, oldest first.
    pub queue: VecDeque<Pending>,
    /// The client's next packets are data for the current command, not commands: LOAD DATA
    /// LOCAL file contents up to an empty packet (`Some(true)`), or one authentication answer
    /// (`Some(false)`).
    pub client_data: Option<bool>,
    /// The status flags of the last complete reply that carried them.
    pub status: u16,
    /// The current database (`USE`, COM_INIT_DB, session tracking).
    pub schema: Option<String>,
    /// Prepared statements by the primary's statement id.
    pub prepared: HashMap<u32, Prepared>,
    /// A COM_CHANGE_USER succeeded for this user.
    pub changed_user: Option<String>,
    /// The bytes of the reply to capgate's own command being received (see
    /// [`Pending::Capgate`]), and whether the packet being walked belongs to it.
    captured: Vec<u8>,
    capturing: bool,
}

impl Flow {
    /// Nothing is owed and no transaction is open: the session can be closed without
    /// interrupting anything.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.client_data.is_none() && self.status & status::IN_TRANS == 0
    }
}

/// What the policy layer keeps of a prepared statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its classification, when the policy needed one at prepare time.
    pub classification: Option<Arc<Classification>>,
    /// It commits an open transaction implicitly (`super::implicit`): its executions are
    /// held like the text statement would be.
    pub implicit_commit: bool,
    /// It is a `SET autocommit = 1` (any spelling, `implicit::enables_autocommit`): its
    /// executions commit only when autocommit was off, so they are held as
    /// `Hold::AutocommitOn`, as the text statement is (inside `BEGIN` with autocommit on it
    /// commits nothing, and a later ROLLBACK must still roll back).
    pub autocommit_on: bool,
    /// It is a `TRUNCATE` alone, of this table: when the policy replicates the table, its
    /// executions are carried as the text statement would be (decision 0029).
    pub truncate: Option<crate::classify::TableName>,
    /// It is `LOCK TABLES` (`Some(true)`) or `UNLOCK TABLES` (`Some(false)`): its executions
    /// change whether the session holds table locks, as the text statement does (`UNLOCK
    /// TABLES` then commits, and capgate must not open a transaction of its own with `BEGIN`
    /// under the locks).
    pub locks: Option<bool>,
}

/// One reply owed to the client.
#[derive(Debug)]
pub enum Pending {
    /// From the primary, followed by this tracker; `after` is applied when it is complete.
    Reply { tracker: Tracker, after: After },
    /// capgate's own reply (an ERR for a refused command), sent when its turn comes.
    Own(Vec<u8>),
    /// The reply to a command capgate sent on the session's connection itself (the sync
    /// commit's statements, or the client's COMMIT it holds): not forwarded, but handed,
    /// whole, to whoever waits on `reply`.
    Capgate { tracker: Tracker, reply: tokio::sync::oneshot::Sender<Vec<u8>> },
}

/// What a successful reply changes in the session.
#[derive(Debug, Clone)]
pub enum After {
    Nothing,
    /// COM_STMT_PREPARE: record the statement under the id the primary gives it.
    Prepared(Prepared),
    /// COM_INIT_DB or `USE`: this database is now current.
    Database(String),
    /// COM_RESET_CONNECTION: the primary dropped every prepared statement.
    Reset,
    /// COM_CHANGE_USER: the session now belongs to this user, with no prepared statements.
    User(String),
}

/// The shared state and the signals between the two pumps. Both pumps are polled by the
/// session's one task, the server pump right after the client pump (`session.rs`, a biased
/// `select!`), so what the client pump queues is seen without a wake-up: the server pump
/// checks `own_queued` each time it is polled while it waits to read, instead of registering
/// with a `Notify` at every read (two lock round trips per read; the PostgreSQL relay dropped
/// the same pattern, docs/performance.md).
#[derive(Debug, Default)]
pub struct SessionState {
    flow: Mutex<Flow>,
    /// The client pump queued an own reply since the server pump last walked the queue.
    own_queued: AtomicBool,
    /// A held command or an admin answer waits for the reply queue to empty (`drained`).
    drain_waiting: AtomicBool,
    /// Wakes the client pump when the server pump emptied the reply queue while
    /// `drain_waiting` (a held COMMIT waits for every earlier reply).
    drained: tokio::sync::Notify,
    /// The server pump is writing to the client: if it is stopped now, the client may hold
    /// part of a packet, and capgate must not add one of its own.
    pub writing: std::sync::atomic::AtomicBool,
}

impl SessionState {
    pub fn lock(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue capgate's own reply, sent when its turn comes. Called from the client pump: the
    /// server pump, polled next by the same task, sees it.
    pub fn push_own(&self, bytes: Vec<u8>) {
        let mut flow = self.lock();
        flow.queue.push_back(Pending::Own(bytes));
        self.own_queued.store(true, Ordering::Release);
    }

    /// Wait until every reply queued so far has reached the client.
    pub async fn wait_drained(&self) {
        self.drain_waiting.store(true, Ordering::Release);
        while !self.lock().queue.is_empty() {
            self.drained.notified().await;
        }
        self.drain_waiting.store(false, Ordering::Release);
    }
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The reading side closed its connection.
    Eof,
    /// The client sent COM_QUIT (forwarded).
    Quit,
    /// capgate ends the session; the client is to be told this ERR packet.
    Refused(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("{0}")]
    Packet(#[from] PacketError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the client stopped in the middle of a packet for {0:?}")]
    Stalled(Duration),
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    if !bytes.is_empty() {
        w.write_all(bytes).await?;
        w.flush().await?;
    }
    Ok(())
}

/// Client → primary. Whole logical packets of at most `max` bytes; a client that stops
/// mid-packet for `stall` is cut off (the primary never saw the partial packet, so its own
/// read timeout cannot apply).
pub async fn client_pump<R, W>(
    rd: &mut R,
    server: &mut W,
    buf: &mut BytesMut,
    state: &SessionState,
    statements: &mut Statements,
    max: usize,
    stall: Duration,
) -> Result<End, PumpError>
where
    R: ReadReady + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    loop {
        let (mut start, mut at) = (0, 0);
        let mut quit = false;
        while !quit {
            let l = match packet::logical(&buf[at..], max) {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    write_flush(server, &buf[start..at]).await?;
                    buf.advance(at);
                    return Err(e.into());
                }
            };
            let verdict = {
                let mut flow = state.lock();
                match flow.client_data {
                    Some(until_empty) => {
                        if !until_empty || l.payload_len == 0 {
                            flow.client_data = None;
                        }
                        Verdict::Data
                    }
                    None => statements.on_command(&mut flow, &l.payload(&buf[at..at + l.bytes])),
                }
            };
            match verdict {
                Verdict::Data => at += l.bytes,
                Verdict::Forward { quit: q } => {
                    at += l.bytes;
                    quit = q;
                }
                Verdict::Rewritten(payload) => {
                    write_flush(server, &buf[start..at]).await?;
                    let mut out = Vec::new();
                    packet::write(&mut out, l.seq, &payload);
                    write_flush(server, &out).await?;
                    at += l.bytes;
                    start = at;
                }
                Verdict::Refuse(err) => {
                    write_flush(server, &buf[start..at]).await?;
                    at += l.bytes;
                    start = at;
                    state.push_own(err);
                }
                Verdict::Hold(held) => {
                    write_flush(server, &buf[start..at]).await?;
                    let payload = held.payload.unwrap_or_else(|| l.payload(&buf[at..at + l.bytes]).into_owned());
                    at += l.bytes;
                    start = at;
                    // Boxed, as is the admin answer below: their futures are several KiB, and
                    // held inline they would size every idle session's task.
                    Box::pin(super::hold::held(state, server, statements, &payload, held.hold)).await?;
                }
                Verdict::Admin(sql) => {
                    write_flush(server, &buf[start..at]).await?;
                    at += l.bytes;
                    start = at;
                    Box::pin(super::admin_sql::answer(state, statements, &sql)).await;
                }
                Verdict::Fatal(err) => {
                    write_flush(server, &buf[start..at]).await?;
                    buf.advance(at + l.bytes);
                    return Ok(End::Refused(err));
                }
            }
        }
        write_flush(server, &buf[start..at]).await?;
        buf.advance(at);
        if quit {
            return Ok(End::Quit);
        }
        if let Some(h) = Header::parse(buf) {
            buf.reserve((HEADER_LEN + h.len).saturating_sub(buf.len()).min(1 << 20));
        } else if !buf.is_empty() && buf.capacity() - buf.len() < 512 {
            buf.reserve(READ_CHUNK);
        }
        let n = if buf.is_empty() {
            // Waits without a buffer (given back to the pool) until the client sends.
            buffers::read_buf(rd, buf).await?
        } else {
            tokio::time::timeout(stall, rd.read_buf(buf)).await.map_err(|_| PumpError::Stalled(stall))??
        };
        if n == 0 {
            return Ok(End::Eof);
        }
    }
}

/// Primary → client: physical packets walked through the reply queue and forwarded in
/// batches; capgate's own replies are written when their turn comes.
pub async fn server_pump<R, W>(rd: &mut R, client: &mut W, buf: &mut BytesMut, state: &SessionState) -> Result<End, PumpError>
where
    R: ReadReady + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    // The previous physical packet was full: this one continues its payload.
    let mut continuing = false;
    loop {
        let (mut start, mut at) = (0, 0);
        loop {
            // Walk every whole packet under one lock; stop early when capgate's own reply is
            // due, write what came before it and the reply, and go on.
            let mut own = None;
            let mut flush = false;
            {
                let mut flow = state.lock();
                state.own_queued.store(false, Ordering::Relaxed);
                loop {
                    if matches!(flow.queue.front(), Some(Pending::Own(_))) {
                        if let Some(Pending::Own(bytes)) = flow.queue.pop_front() {
                            own = Some(bytes);
                        }
                        break;
                    }
                    let Some(h) = Header::parse(&buf[at..]) else { break };
                    if buf.len() < at + HEADER_LEN + h.len {
                        break;
                    }
                    let mine = if continuing { flow.capturing } else { matches!(flow.queue.front(), Some(Pending::Capgate { .. })) };
                    if mine && start < at {
                        // The client's bytes before capgate's reply go out first.
                        flush = true;
                        break;
                    }
                    flow.capturing = mine;
                    if mine {
                        flow.captured.extend_from_slice(&buf[at..at + HEADER_LEN + h.len]);
                    }
                    if !continuing {
                        follow(&mut flow, &buf[at + HEADER_LEN..at + HEADER_LEN + h.len]);
                    }
                    continuing = h.len == MAX_PAYLOAD;
                    at += HEADER_LEN + h.len;
                    if mine {
                        start = at;
                    }
                }
                if flow.queue.is_empty() && state.drain_waiting.load(Ordering::Acquire) {
                    state.drained.notify_one();
                }
            }
            if own.is_none() && !flush {
                break;
            }
            write_marked(state, client, &buf[start..at]).await?;
            if let Some(own) = own {
                write_marked(state, client, &own).await?;
            }
            start = at;
        }
        write_marked(state, client, &buf[start..at]).await?;
        buf.advance(at);
        if let Some(h) = Header::parse(buf) {
            buf.reserve((HEADER_LEN + h.len).saturating_sub(buf.len()).min(1 << 20));
        } else if !buf.is_empty() && buf.capacity() - buf.len() < 512 {
            buf.reserve(READ_CHUNK);
        }
        // An own reply queued while this pump waits ends the wait (see `SessionState`).
        let read = std::future::poll_fn(|cx| {
            if state.own_queued.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            buffers::poll_read_buf(rd, buf, cx).map(Some)
        });
        if let Some(n) = read.await {
            if n? == 0 {
                return Ok(End::Eof);
            }
        }
    }
}

async fn write_marked<W: AsyncWrite + Unpin + ?Sized>(state: &SessionState, w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    state.writing.store(true, Ordering::Release);
    write_flush(w, bytes).await?;
    state.writing.store(false, Ordering::Release);
    Ok(())
}

/// Follow one reply packet (the first physical packet of a logical one).
fn follow(flow: &mut Flow, payload: &[u8]) {
    let (Some(Pending::Reply { tracker, .. }) | Some(Pending::Capgate { tracker, .. })) = flow.queue.front_mut() else {
        // Nothing owed: the primary speaks unasked (an error before it closes the
        // connection). Forwarded as it is.
        return;
    };
    match tracker.feed(payload) {
        Event::Continue => {}
        Event::ClientData { until_empty } => flow.client_data = Some(until_empty),
        Event::Done(outcome) => match flow.queue.pop_front() {
            Some(Pending::Reply { after, .. }) => apply(flow, outcome, after),
            Some(Pending::Capgate { reply, .. }) => {
                apply(flow, outcome, After::Nothing);
                flow.capturing = false;
                let _ = reply.send(std::mem::take(&mut flow.captured));
            }
            _ => {}
        },
    }
}

fn apply(flow: &mut Flow, outcome: Outcome, after: After) {
    if let Some(s) = outcome.status {
        flow.status = s;
    }
    if let Some(db) = outcome.schema {
        flow.schema = Some(db).filter(|d| !d.is_empty());
    }
    if outcome.error.is_some() {
        return;
    }
    match after {
        After::Nothing => {}
        After::Prepared(p) => {
            if let Some(id) = outcome.statement_id {
                flow.prepared.insert(id, p);
            }
        }
        After::Database(db) => flow.schema = Some(db),
        After::Reset => flow.prepared.clear(),
        After::User(user) => {
            flow.prepared.clear();
            flow.changed_user = Some(user);
        }
    }
}
