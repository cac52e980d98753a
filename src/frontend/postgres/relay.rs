//! The relay loop: after startup, every byte the client sends goes to the primary and every
//! byte the primary sends goes to the client, as the original frames.
//!
//! Two pumps run concurrently, one per direction: a single loop that blocks writing to one
//! side while that side is blocked writing to it would deadlock on pipelined traffic. Each
//! pump reads what is available, walks it with a [`FrameCursor`] (only a few small frames
//! are looked at whole), and writes the batch out with one write. Nothing is re-encoded.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::postgres::frame::{FrameCursor, FrameError, Step};

/// Receive buffer size for each direction. Large enough that a pgbench round trip is one
/// read; an idle session's memory is dominated by these two buffers.
const READ_CHUNK: usize = 8 * 1024;

/// What the session knows about its state, shared by both pumps and the session loop.
#[derive(Debug, Default)]
pub struct SessionState {
    /// The last ReadyForQuery status: `I` idle, `T` in a transaction, `E` in a failed one.
    pub tx_status: AtomicU8,
    /// Messages sent by the client that will each be answered by one ReadyForQuery (Query,
    /// Sync, FunctionCall) and have not been yet.
    pub pending: AtomicI64,
}

impl SessionState {
    pub fn new() -> SessionState {
        SessionState { tx_status: AtomicU8::new(b'I'), pending: AtomicI64::new(0) }
    }

    /// Idle between transactions with nothing in flight: the session can be closed without
    /// interrupting anything.
    pub fn is_idle(&self) -> bool {
        self.tx_status.load(Ordering::Acquire) == b'I' && self.pending.load(Ordering::Acquire) <= 0
    }
}

/// Whether a pump goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Forward everything up to and including this frame, then stop.
    Stop,
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The reading side closed its connection.
    Eof,
    /// The frame callback asked to stop.
    Stopped,
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
        let mut buf = leftover;
        buf.reserve(READ_CHUNK);
        Pump { buf, cursor: FrameCursor::new(max_frame), mid_write: false }
    }

    /// True when the destination has received only whole frames, so the proxy may add one of
    /// its own (an error before closing).
    pub fn clean(&self) -> bool {
        !self.mid_write && self.cursor.at_boundary()
    }

    /// Relay from `reader` to `writer` until EOF, an error, or `on_frame` says stop.
    /// `inspect(tag)` selects the frames `on_frame` gets whole (`Some(frame)`); for every other
    /// frame it is called once at its first byte with `None`.
    pub async fn run<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        inspect: impl Fn(u8) -> bool,
        mut on_frame: impl FnMut(u8, Option<&[u8]>) -> Flow,
    ) -> Result<End, PumpError>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            let mut forward = 0;
            let mut stop = false;
            while forward < self.buf.len() && !stop {
                match self.cursor.step(&self.buf[forward..], &inspect)? {
                    Step::Pass { n, tag } => {
                        if let Some(tag) = tag {
                            stop = on_frame(tag, None) == Flow::Stop;
                        }
                        forward += n;
                    }
                    Step::Whole { tag, len } => {
                        stop = on_frame(tag, Some(&self.buf[forward..forward + len])) == Flow::Stop;
                        forward += len;
                    }
                    Step::NeedMore { total } => {
                        let have = self.buf.len() - forward;
                        self.buf.reserve(total.saturating_sub(have));
                        break;
                    }
                }
            }
            if forward > 0 {
                self.mid_write = true;
                writer.write_all(&self.buf[..forward]).await?;
                writer.flush().await?;
                self.mid_write = false;
                self.buf.advance(forward);
            }
            if stop {
                return Ok(End::Stopped);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
            if reader.read_buf(&mut self.buf).await? == 0 {
                return Ok(End::Eof);
            }
        }
    }
}

/// Client → primary: counts the messages that will be answered by a ReadyForQuery, and
/// stops after Terminate.
pub fn client_inspect(tag: u8) -> bool {
    tag == b'X'
}

pub fn client_frame(state: &SessionState, tag: u8) -> Flow {
    match tag {
        b'Q' | b'S' | b'F' => {
            state.pending.fetch_add(1, Ordering::AcqRel);
            Flow::Continue
        }
        b'X' => Flow::Stop,
        _ => Flow::Continue,
    }
}

/// Primary → client: follows ReadyForQuery to know the transaction state.
pub fn server_inspect(tag: u8) -> bool {
    tag == b'Z'
}

pub fn server_frame(state: &SessionState, tag: u8, frame: Option<&[u8]>, stop_when_idle: &dyn Fn() -> bool) -> Flow {
    if let (b'Z', Some(frame)) = (tag, frame) {
        if let Some(&status) = frame.get(5) {
            state.tx_status.store(status, Ordering::Release);
        }
        state.pending.fetch_sub(1, Ordering::AcqRel);
        if stop_when_idle() && state.is_idle() {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Shared session state handle.
pub type State = Arc<SessionState>;
