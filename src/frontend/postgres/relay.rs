//! The relay loop: after startup, every byte the client sends goes to the primary and every
//! byte the primary sends goes to the client, as the original frames.
//!
//! Two pumps run concurrently, one per direction: a single loop that blocks writing to one
//! side while that side is blocked writing to it would deadlock on pipelined traffic. Each
//! pump reads what is available, walks it with a [`FrameCursor`] (only a few small frames
//! are looked at whole), and writes the batch out with one write. Nothing is re-encoded.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};

use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use super::replies::Hidden;
use crate::net::buffers::{self, ReadReady};
use crate::protocol::postgres::frame::{FrameCursor, FrameError, Step};

/// Receive buffer size for each direction: large enough that a pgbench round trip is one
/// read. A pump holds its buffer only while bytes are in it (`net::buffers`).
const READ_CHUNK: usize = crate::net::buffers::READ_CHUNK;

/// The most a pump reserves at once while a frame it must see whole arrives.
const MAX_RESERVE: usize = 1 << 20;

/// What the session knows about its state, shared by both pumps and the session loop.
#[derive(Debug)]
pub struct SessionState {
    /// The last ReadyForQuery status: `I` idle, `T` in a transaction, `E` in a failed one.
    pub tx_status: AtomicU8,
    /// Messages sent by the client that will each be answered by one ReadyForQuery (Query,
    /// Sync, FunctionCall) and have not been yet.
    pub pending: AtomicI64,
    /// Replies to messages the proxy itself inserted, which the client must not see.
    pub hidden: Mutex<Hidden>,
    /// Extended-protocol messages were sent since the last Sync: work may be in flight even
    /// with no ReadyForQuery owed (a client using Flush).
    pub extended_open: AtomicBool,
    /// The client pump held a frame for the coordinator: the server pump stops once every
    /// reply owed has been delivered. Both pumps are polled by the session's one task, which
    /// polls the server pump right after setting this, so no wake-up is needed to see it.
    pub holding: AtomicBool,
    /// The current transaction captured a change to a sync table (the capture trigger's
    /// hidden INFO notice was seen, decision 0009): its commit must be coordinated. Cleared
    /// when the transaction ends (ReadyForQuery `I`).
    pub sync_pending: AtomicBool,
    /// Client messages seen, for the idle-session timeout to tell a quiet session.
    pub client_frames: AtomicU64,
}

impl Default for SessionState {
    fn default() -> SessionState {
        SessionState::new()
    }
}

impl SessionState {
    pub fn new() -> SessionState {
        SessionState {
            tx_status: AtomicU8::new(b'I'),
            pending: AtomicI64::new(0),
            hidden: Mutex::default(),
            extended_open: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            sync_pending: AtomicBool::new(false),
            client_frames: AtomicU64::new(0),
        }
    }

    /// Replies to forwarded messages are still to come.
    pub fn owed(&self) -> bool {
        self.hidden.lock().unwrap_or_else(|p| p.into_inner()).owed()
    }

    /// Whether the primary is skipping messages up to the next Sync after an error in the
    /// current extended-protocol group.
    pub fn group_failed(&self) -> bool {
        self.hidden.lock().unwrap_or_else(|p| p.into_inner()).group_failed
    }

    /// The coordinator made the primary raise an error inside the current extended-protocol
    /// group (a refusal at a held Bind) and read it itself: the primary now skips every
    /// message up to the Sync, so none of them is owed a reply.
    pub fn fail_group(&self) {
        self.hidden.lock().unwrap_or_else(|p| p.into_inner()).group_failed = true;
    }

    /// Idle between transactions with nothing in flight: the session can be closed without
    /// interrupting anything.
    pub fn is_idle(&self) -> bool {
        self.tx_status.load(Ordering::Acquire) == b'I'
            && self.pending.load(Ordering::Acquire) <= 0
            && !self.extended_open.load(Ordering::Acquire)
    }
}

/// Whether a pump goes on after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Forward everything up to and including this frame, then stop.
    Stop,
    /// Send these bytes instead of this (whole, inspected) frame, then go on.
    Replace(BytesMut),
    /// Forward everything before this (whole, inspected) frame, then these bytes (e.g. a
    /// Flush, so the replies owed arrive), then stop with the frame still at the front of
    /// the buffer: the coordinator takes over from it.
    Hold(BytesMut),
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The reading side closed its connection.
    Eof,
    /// The frame callback asked to stop.
    Stopped,
    /// The frame callback asked to hold a frame (it is at the front of [`Pump::buffer`]).
    Held,
    /// `stop_reading` said so while the pump waited to read: stopped at a frame boundary with
    /// everything stepped written out.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One direction of the relay.
pub struct Pump {
    buf: BytesMut,
    cursor: FrameCursor,
    /// Set while a write is in progress: if the pump is dropped then, the peer may have
    /// received part of a frame and nothing more may be written to it.
    mid_write: bool,
}

impl Pump {
    /// A pump that starts with bytes already received (`leftover` from the startup phase).
    pub fn new(leftover: BytesMut, max_frame: u32) -> Pump {
        Pump { buf: leftover, cursor: FrameCursor::new(max_frame), mid_write: false }
    }

    /// Bytes received and not yet forwarded; after [`End::Held`] or [`End::Interrupted`] they
    /// start at a frame boundary.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// True when the destination has received only whole frames, so the proxy may add one of
    /// its own (an error before closing).
    pub fn clean(&self) -> bool {
        !self.mid_write && self.cursor.at_boundary()
    }

    /// Write the first `n` buffered bytes and drop them from the buffer.
    async fn write<W: AsyncWrite + Unpin + ?Sized>(&mut self, writer: &mut W, n: usize) -> Result<(), PumpError> {
        if n > 0 {
            self.mid_write = true;
            writer.write_all(&self.buf[..n]).await?;
            writer.flush().await?;
            self.mid_write = false;
            self.buf.advance(n);
        }
        Ok(())
    }

    /// Relay from `reader` to `writer` until EOF, an error, or `on_frame` says stop.
    /// `inspect(tag)` selects the frames `on_frame` gets whole (`Some(frame)`); for every other
    /// frame it is called once at its first byte with `None`. `stop_reading` is asked each time the
    /// pump is polled while it waits to read at a frame boundary: true ends it there (it
    /// wakes nothing: the caller polls the pump after changing what it says).
    pub async fn run<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        inspect: impl Fn(u8) -> bool,
        mut on_frame: impl FnMut(u8, Option<&[u8]>) -> Flow,
        stop_reading: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Result<End, PumpError>
    where
        R: ReadReady + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            let mut forward = 0;
            let mut stop = false;
            let mut held: Option<BytesMut> = None;
            while forward < self.buf.len() && !stop {
                let step = match self.cursor.step(&self.buf[forward..], &inspect) {
                    Ok(step) => step,
                    Err(e) => {
                        // Whole, valid frames before the bad one still reach the peer, as
                        // they would reach PostgreSQL before it read the bad one.
                        self.write(writer, forward).await?;
                        return Err(e.into());
                    }
                };
                match step {
                    Step::Pass { n, tag } => {
                        if let Some(tag) = tag {
                            stop = on_frame(tag, None) == Flow::Stop;
                        }
                        forward += n;
                    }
                    Step::Whole { tag, len } => match on_frame(tag, Some(&self.buf[forward..forward + len])) {
                        Flow::Continue => forward += len,
                        Flow::Stop => {
                            forward += len;
                            stop = true;
                        }
                        Flow::Hold(extra) => {
                            held = Some(extra);
                            stop = true;
                        }
                        Flow::Replace(bytes) => {
                            // What came before the frame goes first, then the replacement.
                            self.write(writer, forward).await?;
                            self.buf.advance(len);
                            forward = 0;
                            self.mid_write = true;
                            writer.write_all(&bytes).await?;
                            writer.flush().await?;
                            self.mid_write = false;
                        }
                    },
                    Step::NeedMore { total } => {
                        // Grow with the bytes that actually arrive: a header claiming 1 GB
                        // must not reserve 1 GB before a single body byte is sent.
                        let have = self.buf.len() - forward;
                        self.buf.reserve(total.saturating_sub(have).min(MAX_RESERVE));
                        break;
                    }
                }
            }
            self.write(writer, forward).await?;
            if let Some(extra) = held {
                if !extra.is_empty() {
                    self.mid_write = true;
                    writer.write_all(&extra).await?;
                    writer.flush().await?;
                    self.mid_write = false;
                }
                return Ok(End::Held);
            }
            if stop {
                return Ok(End::Stopped);
            }
            // An empty buffer is given back while the pump waits (`buffers::read_buf`).
            if !self.buf.is_empty() && self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
            // Everything stepped is written: the only safe place to be stopped from outside.
            let read = match stop_reading {
                Some(stop) if self.cursor.at_boundary() => {
                    let buf = &mut self.buf;
                    let read = std::future::poll_fn(|cx| {
                        if stop() {
                            return std::task::Poll::Ready(None);
                        }
                        // Reading into `buf` is cancel-safe.
                        buffers::poll_read_buf(reader, buf, cx).map(Some)
                    });
                    match read.await {
                        Some(r) => r?,
                        None => return Ok(End::Interrupted),
                    }
                }
                _ => buffers::read_buf(reader, &mut self.buf).await?,
            };
            if read == 0 {
                return Ok(End::Eof);
            }
        }
    }
}

/// Client → primary: Query, Parse, Bind, Close and FunctionCall are read whole to classify
/// them (a Bind says which prepared statement runs next); Sync, which may commit an implicit
/// transaction; Terminate to stop. Every other frame (Execute, COPY data …) streams through.
pub fn client_inspect(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'C' | b'F' | b'X' | b'S')
}

pub fn client_frame(state: &SessionState, tag: u8) -> Flow {
    state.client_frames.fetch_add(1, Ordering::Relaxed);
    let (mut uncount, mut ignored_sync) = (0, false);
    if matches!(tag, b'P' | b'B' | b'E' | b'S' | b'Q' | b'F' | b'd' | b'c' | b'f') {
        (uncount, ignored_sync) = state.hidden.lock().unwrap_or_else(|p| p.into_inner()).client(tag);
    }
    if uncount > 0 {
        state.pending.fetch_sub(uncount as i64, Ordering::AcqRel);
    }
    match tag {
        b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => state.extended_open.store(true, Ordering::Release),
        b'S' => state.extended_open.store(false, Ordering::Release),
        _ => {}
    }
    match tag {
        b'S' if ignored_sync => Flow::Continue,
        b'Q' | b'S' | b'F' => {
            state.pending.fetch_add(1, Ordering::AcqRel);
            Flow::Continue
        }
        b'X' => Flow::Stop,
        _ => Flow::Continue,
    }
}

/// Primary → client: follows ReadyForQuery to know the transaction state; ParseComplete and
/// BindComplete (5 bytes each) to hide the replies to the proxy's own messages; the other
/// small frames that complete a client message, so the coordinator can take over at a frame
/// boundary once every reply owed has been delivered; notices, for the capture trigger's.
pub fn server_inspect(tag: u8) -> bool {
    matches!(tag, b'Z' | b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'n' | b'T' | b'E' | b'N' | b'G')
}

/// The SQLSTATE of the INFO notice a capture trigger raises at a transaction's first change to
/// a sync table (decision 0009). capgate hides it from the client.
pub const SYNC_CHANGE_NOTICE: &str = "CGS00";

/// Whether a NoticeResponse frame is the capture trigger's sync notice.
pub fn is_sync_notice(frame: &[u8]) -> bool {
    let body = frame.get(5..).unwrap_or_default();
    crate::protocol::postgres::message::error_fields(body).iter().any(|(c, v)| *c == b'C' && v == SYNC_CHANGE_NOTICE)
}

pub fn server_frame(state: &SessionState, tag: u8, frame: Option<&[u8]>, stop_when_idle: &dyn Fn() -> bool) -> Flow {
    if let (b'N', Some(frame)) = (tag, frame) {
        if is_sync_notice(frame) {
            state.sync_pending.store(true, Ordering::Release);
            return Flow::Replace(BytesMut::new());
        }
        return Flow::Continue;
    }
    if matches!(tag, b'1' | b'2' | b'Z' | b'3' | b'E' | b'C' | b'I' | b's' | b'T' | b'n' | b'G') {
        let mut hidden = state.hidden.lock().unwrap_or_else(|p| p.into_inner());
        let hide = hidden.server(tag);
        let settled = !hidden.owed();
        let discarded = std::mem::take(&mut hidden.discarded);
        drop(hidden);
        if discarded > 0 {
            state.pending.fetch_sub(i64::from(discarded), Ordering::AcqRel);
        }
        if hide {
            return Flow::Replace(BytesMut::new());
        }
        // The coordinator waits for this pump to deliver every reply owed, then takes over.
        if settled && tag != b'Z' && state.holding.load(Ordering::Acquire) {
            return Flow::Stop;
        }
    }
    if let (b'Z', Some(frame)) = (tag, frame) {
        if let Some(&status) = frame.get(5) {
            set_status(state, status);
        }
        state.pending.fetch_sub(1, Ordering::AcqRel);
        if stop_when_idle() && state.is_idle() {
            return Flow::Stop;
        }
        if state.holding.load(Ordering::Acquire) && !state.owed() {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Record a transaction status from a ReadyForQuery.
pub fn set_status(state: &SessionState, status: u8) {
    state.tx_status.store(status, Ordering::Release);
    if status == b'I' {
        state.sync_pending.store(false, Ordering::Release);
    }
}

/// The bookkeeping of a ReadyForQuery that the coordinator consumed itself (it may show the
/// client a different status than the primary's, e.g. after committing a transaction it
/// opened around an autocommit statement).
pub fn ready_for_query(state: &SessionState, status: u8) {
    state.hidden.lock().unwrap_or_else(|p| p.into_inner()).server(b'Z');
    set_status(state, status);
    state.pending.fetch_sub(1, Ordering::AcqRel);
}

/// Shared session state handle.
pub type State = Arc<SessionState>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed the bookkeeping what a client sends and what the primary answers.
    fn exchange(state: &SessionState, client: &[u8], server: &[u8]) {
        for &tag in client {
            client_frame(state, tag);
        }
        for &tag in server {
            let frame = [tag, 0, 0, 0, 5, b'I'];
            server_frame(state, tag, server_inspect(tag).then_some(&frame[..]), &|| false);
        }
    }

    /// A Query sent after an extended-protocol message that fails, before the Sync, is
    /// discarded by PostgreSQL with everything else up to the Sync: one ErrorResponse and one
    /// ReadyForQuery in all. The session must then be idle with nothing owed.
    #[test]
    fn a_query_discarded_after_an_extended_error_is_not_owed() {
        let state = SessionState::new();
        exchange(&state, b"PBEQS", b"EZ");
        assert!(!state.owed(), "replies still owed: {:?}", state.hidden.lock().map(|h| h.units.clone()));
        assert_eq!(state.pending.load(Ordering::Acquire), 0);
        assert!(state.is_idle());
        // And the next exchange is followed normally.
        exchange(&state, b"Q", b"TDCZ");
        assert!(!state.owed() && state.is_idle());
        // A FunctionCall is discarded the same way.
        exchange(&state, b"PFS", b"EZ");
        assert!(!state.owed() && state.is_idle());
    }

    /// A COPY FROM STDIN whose Bind fails (capgate refuses it, or the transaction is
    /// aborted): tokio-postgres then sends CopyFail and a second Sync, and the primary answers
    /// both Syncs. Neither was ignored in copy-in mode, so both are owed a ReadyForQuery.
    /// (Counting the first as ignored left the session one ReadyForQuery short: capgate then
    /// took statements for idle or in a transaction wrongly, found by the chaos suite.)
    #[test]
    fn a_copy_that_never_started_leaves_its_syncs_counted() {
        let state = SessionState::new();
        exchange(&state, b"BES", b"E");
        exchange(&state, b"fS", b"ZZ");
        assert!(!state.owed(), "replies still owed: {:?}", state.hidden.lock().map(|h| h.units.clone()));
        assert_eq!(state.pending.load(Ordering::Acquire), 0);
        // A COPY that started ignores the Sync sent with its Execute: one ReadyForQuery in all,
        // whether data came or the client failed it at once.
        exchange(&state, b"BES", b"2G");
        exchange(&state, b"ddcS", b"CZ");
        assert!(!state.owed() && state.is_idle());
        assert_eq!(state.pending.load(Ordering::Acquire), 0);
        exchange(&state, b"BES", b"2G");
        exchange(&state, b"fS", b"EZ");
        assert!(!state.owed() && state.is_idle());
        assert_eq!(state.pending.load(Ordering::Acquire), 0);
    }

    /// A Query before the extended group is answered before the error and is not discarded.
    #[test]
    fn a_query_before_a_failing_group_keeps_its_reply() {
        let state = SessionState::new();
        exchange(&state, b"QPBES", b"TDCZEZ");
        assert!(!state.owed() && state.is_idle());
    }
}
