//! The coordinator's I/O: both legs of a held session, read and written one frame at a time,
//! with the streaming relay's bookkeeping kept exactly ([`relay::client_frame`],
//! [`relay::server_frame`]), and capgate's own statements on the primary whose replies the
//! client never sees.
//!
//! capgate's own statements: a simple Query between client Queries; inside an
//! extended-protocol group (before the client's Sync) a named statement and portal of its own
//! (closed after use), so the client's unnamed statement and portal are never touched.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::super::relay::{self, Flow, SessionState};
use super::super::SessionError;
use crate::protocol::postgres::message::{error_fields, write_frame};
use crate::protocol::postgres::FrameError;

/// The statement and portal names capgate uses for its own extended-protocol messages.
const OWN: &str = "capgate_own";

/// One whole frame: its tag and its bytes (header included).
pub type Frame = (u8, BytesMut);

/// The rows of capgate's own statement, each a list of text columns (None: NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// A held session's two legs.
pub struct Wire<'a, CR, CW, SR, SW> {
    pub state: &'a SessionState,
    client_rd: &'a mut CR,
    client_wr: &'a mut CW,
    server_rd: &'a mut SR,
    server_wr: &'a mut SW,
    cbuf: &'a mut BytesMut,
    sbuf: &'a mut BytesMut,
    /// The largest frame a client may send.
    max: u32,
    /// Bytes for the client, written at the next [`Wire::flush_client`].
    pub out: BytesMut,
}

impl<'a, CR, CW, SR, SW> Wire<'a, CR, CW, SR, SW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    pub fn new(
        state: &'a SessionState,
        client: (&'a mut CR, &'a mut CW, &'a mut BytesMut),
        server: (&'a mut SR, &'a mut SW, &'a mut BytesMut),
        max: u32,
    ) -> Self {
        Wire {
            state,
            client_rd: client.0,
            client_wr: client.1,
            cbuf: client.2,
            server_rd: server.0,
            server_wr: server.1,
            sbuf: server.2,
            max,
            out: BytesMut::new(),
        }
    }

    /// The next whole frame from the client (None: it closed the connection).
    pub async fn client_frame(&mut self) -> Result<Option<BytesMut>, SessionError> {
        read_frame(self.client_rd, self.cbuf, self.max).await
    }

    /// The next whole frame from the primary.
    pub async fn server_frame(&mut self) -> Result<Frame, SessionError> {
        match read_frame(self.server_rd, self.sbuf, u32::MAX).await? {
            Some(f) => Ok((f[0], f)),
            None => Err(SessionError::Closed),
        }
    }

    pub async fn send_server(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.server_wr.write_all(bytes).await.map_err(SessionError::Io)?;
        self.server_wr.flush().await.map_err(SessionError::Io)
    }

    /// Forward a client frame as it is, with the relay's bookkeeping.
    pub async fn forward(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        relay::client_frame(self.state, frame[0]);
        self.send_server(frame).await
    }

    pub async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.client_wr.write_all(&self.out).await.map_err(SessionError::Io)?;
            self.client_wr.flush().await.map_err(SessionError::Io)?;
            self.out.clear();
        }
        Ok(())
    }

    /// A reply from the primary to the client, bookkept as the streaming relay does (hidden
    /// replies dropped, the sync notice noted); COPY FROM STDIN hands the floor to the client
    /// until its CopyDone or CopyFail. Returns the reply's tag when the client sees it.
    pub async fn pass(&mut self, tag: u8, frame: BytesMut) -> Result<Option<u8>, SessionError> {
        if let Flow::Replace(_) = relay::server_frame(self.state, tag, Some(&frame), &|| false) {
            return Ok(None);
        }
        self.out.extend_from_slice(&frame);
        if tag == b'G' {
            self.flush_client().await?;
            self.copy_in().await?;
        } else if self.out.len() > 64 * 1024 {
            self.flush_client().await?;
        }
        Ok(Some(tag))
    }

    /// Relay replies up to a completion of the current message (CommandComplete,
    /// EmptyQueryResponse, PortalSuspended or an error). Returns the last frame.
    pub async fn relay_until_complete(&mut self) -> Result<Frame, SessionError> {
        loop {
            let (tag, frame) = self.server_frame().await?;
            let kept = frame.clone();
            self.pass(tag, frame).await?;
            if matches!(tag, b'C' | b'I' | b's' | b'E') {
                return Ok((tag, kept));
            }
        }
    }

    /// Replies to a forwarded Query or Sync up to its ReadyForQuery, which is NOT passed on
    /// nor bookkept (the caller decides the status the client sees). Returns whether an
    /// error came, the last CommandComplete, and the ReadyForQuery status.
    pub async fn relay_until_ready(&mut self) -> Result<Outcome, SessionError> {
        let mut outcome = Outcome::default();
        loop {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'Z' => {
                    outcome.status = frame.get(5).copied().unwrap_or(b'I');
                    return Ok(outcome);
                }
                b'E' => outcome.error = true,
                b'C' => outcome.tag = Some(command_tag(&frame)),
                _ => {}
            }
            self.pass(tag, frame).await?;
        }
    }

    /// Drop the last frame held for the client if it is a CommandComplete (the statement it
    /// completes did not commit after all).
    pub fn drop_last_completion(&mut self) {
        let mut at = 0;
        let mut last = None;
        while at + 5 <= self.out.len() {
            let len = u32::from_be_bytes([self.out[at + 1], self.out[at + 2], self.out[at + 3], self.out[at + 4]]) as usize;
            last = Some(at);
            at += 1 + len;
        }
        if let Some(start) = last.filter(|&start| self.out[start] == b'C' && at == self.out.len()) {
            self.out.truncate(start);
        }
    }

    /// The client sees ReadyForQuery with `status` in place of the one the primary sent
    /// (bookkept as if the primary had sent it).
    pub fn ready(&mut self, status: u8) {
        relay::ready_for_query(self.state, status);
        self.out.put_slice(&[b'Z', 0, 0, 0, 5, status]);
    }

    /// Client COPY data to the primary until CopyDone or CopyFail.
    async fn copy_in(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(frame) = self.client_frame().await? else { return Err(SessionError::Closed) };
            let tag = frame[0];
            relay::client_frame(self.state, tag);
            self.server_wr.write_all(&frame).await.map_err(SessionError::Io)?;
            if matches!(tag, b'c' | b'f') {
                self.server_wr.flush().await.map_err(SessionError::Io)?;
                return Ok(());
            }
        }
    }

    /// Run capgate's own simple query; its replies are not shown (except ParameterStatus and
    /// notifications, which belong to the session). Returns every row
    /// (NULL as None), or the primary's ErrorResponse frame (which may be shown to the client
    /// as it is).
    pub async fn own_query(&mut self, sql: &str) -> Result<Result<Rows, BytesMut>, SessionError> {
        self.send_server(&query_bytes(sql)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'D' => rows.push(data_row(&frame)),
                b'E' => error = Some(frame),
                b'Z' => return Ok(error.map_or(Ok(rows), Err)),
                b'A' | b'S' => self.out.extend_from_slice(&frame),
                b'N' if relay::is_sync_notice(&frame) => self.state.sync_pending.store(true, std::sync::atomic::Ordering::Release),
                _ => {}
            }
        }
    }

    /// Run capgate's own statement inside the current extended group (with a Flush); its
    /// replies are not shown. An error leaves the primary skipping to the client's Sync.
    pub async fn own_extended(&mut self, sql: &str) -> Result<Result<Rows, BytesMut>, SessionError> {
        let mut bytes = own_statement(sql);
        bytes.extend_from_slice(&FLUSH);
        self.send_server(&bytes).await?;
        let mut rows = Vec::new();
        // CloseComplete, ParseComplete, BindComplete, CommandComplete, CloseComplete.
        let mut seen = 0;
        while seen < 5 {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'3' | b'1' | b'2' | b'C' | b'I' => seen += 1,
                b'D' => rows.push(data_row(&frame)),
                b'E' => return Ok(Err(frame)),
                b'A' | b'S' => self.out.extend_from_slice(&frame),
                _ => {}
            }
        }
        Ok(Ok(rows))
    }
}

/// What a forwarded Query or Sync ended with.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// An ErrorResponse came.
    pub error: bool,
    /// The last CommandComplete's tag (`COMMIT`, `ROLLBACK`, `INSERT 0 1` …).
    pub tag: Option<String>,
    /// The ReadyForQuery status.
    pub status: u8,
}

pub const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

pub fn query_bytes(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, b'Q', |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
    out
}

/// Close, Parse, Bind, Execute and Close of capgate's own named statement and portal.
fn own_statement(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let name = |b: &mut BytesMut| {
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
    };
    write_frame(&mut out, b'C', |b| {
        b.put_u8(b'S');
        name(b);
    });
    write_frame(&mut out, b'P', |b| {
        name(b);
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
        b.put_u16(0);
    });
    write_frame(&mut out, b'B', |b| {
        name(b);
        name(b);
        b.put_u16(0);
        b.put_u16(0);
        b.put_u16(0);
    });
    write_frame(&mut out, b'E', |b| {
        name(b);
        b.put_u32(0);
    });
    write_frame(&mut out, b'C', |b| {
        b.put_u8(b'P');
        name(b);
    });
    out
}

/// The columns of a DataRow in text format.
fn data_row(frame: &[u8]) -> Vec<Option<String>> {
    let mut b = frame.get(5..).unwrap_or_default();
    let mut out = Vec::new();
    let Some(n) = take(&mut b, 2).map(|x| u16::from_be_bytes([x[0], x[1]])) else { return out };
    for _ in 0..n {
        let Some(len) = take(&mut b, 4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]])) else { break };
        if len < 0 {
            out.push(None);
        } else {
            let Some(v) = take(&mut b, len as usize) else { break };
            out.push(Some(String::from_utf8_lossy(v).into_owned()));
        }
    }
    out
}

fn take<'b>(b: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

/// A CommandComplete's tag.
fn command_tag(frame: &[u8]) -> String {
    let body = frame.get(5..).unwrap_or_default();
    let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// The message of an ErrorResponse frame, for logs and for capgate's own messages.
pub fn error_text(frame: &[u8]) -> String {
    let fields = error_fields(frame.get(5..).unwrap_or_default());
    let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str()).unwrap_or("");
    format!("{} (SQLSTATE {})", get(b'M'), get(b'C'))
}

/// Read one whole frame (tag, length, body) from `buf`, reading more from `rd` as needed.
pub async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut, max: u32) -> Result<Option<BytesMut>, SessionError> {
    loop {
        if buf.len() >= 5 {
            let tag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(SessionError::Protocol(FrameError::TooShort { tag, len }));
            }
            if len > max {
                return Err(SessionError::Protocol(FrameError::TooLong { tag, len, max }));
            }
            let total = 1 + len as usize;
            if buf.len() >= total {
                return Ok(Some(buf.split_to(total)));
            }
            buf.reserve((total - buf.len()).min(1 << 20));
        } else {
            buf.reserve(8 * 1024);
        }
        if rd.read_buf(buf).await.map_err(SessionError::Io)? == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_and_tags_read_back() {
        let mut f = BytesMut::new();
        write_frame(&mut f, b'D', |b| {
            b.put_u16(2);
            b.put_i32(-1);
            b.put_i32(3);
            b.put_slice(b"abc");
        });
        assert_eq!(data_row(&f), vec![None, Some("abc".into())]);
        let mut c = BytesMut::new();
        write_frame(&mut c, b'C', |b| b.put_slice(b"COMMIT\0"));
        assert_eq!(command_tag(&c), "COMMIT");
        assert_eq!(data_row(&[b'D', 0, 0, 0, 6, 0]), Vec::<Option<String>>::new(), "truncated rows do not panic");
    }
}
