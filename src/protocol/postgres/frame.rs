//! Frame boundaries of the regular (tagged) PostgreSQL messages.
//!
//! Every message after startup is `tag: u8, len: u32 (big-endian, counts itself), body`. A
//! relay must know where frames begin and end, but must not hold a whole frame in memory
//! just to forward it: a COPY row or a bytea parameter can be hundreds of megabytes. The
//! [`FrameCursor`] therefore walks a receive buffer and answers, step by step, "forward the
//! next N bytes" for frames nobody needs to look at, and "here is a whole frame" only for the
//! tags the caller asked to inspect. It never panics on short or hostile input: a frame is
//! either complete, incomplete (say how many bytes are needed), or an error.

use thiserror::Error;

/// Size of the tag byte plus the length word.
pub const HEADER_LEN: usize = 5;

/// What is wrong with a frame. Each maps to SQLSTATE 08P01 (protocol violation) when it comes
/// from a client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{}' (a length counts itself, so it is at least 4)", printable(*tag))]
    TooShort { tag: u8, len: u32 },
    #[error("message of type '{}' claims {len} bytes, more than the limit of {max} bytes", printable(*tag))]
    TooLong { tag: u8, len: u32, max: u32 },
    #[error("invalid startup packet length {0}")]
    StartupLength(u32),
    #[error("invalid startup packet layout: {0}")]
    StartupLayout(&'static str),
}

/// A tag byte as something safe to put in a message: the letter if printable, else its code.
pub fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        (tag as char).to_string()
    } else {
        format!("\\x{tag:02x}")
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length word as sent: body length + 4.
    pub len: u32,
}

impl Header {
    /// Parse the header at the front of `buf`; `Ok(None)` when fewer than 5 bytes are there.
    /// `max_len` bounds the length word (a hostile peer claiming 2 GB is refused before a
    /// single body byte is read).
    pub fn parse(buf: &[u8], max_len: u32) -> Result<Option<Header>, FrameError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return Err(FrameError::TooShort { tag, len });
        }
        if len > max_len {
            return Err(FrameError::TooLong { tag, len, max: max_len });
        }
        Ok(Some(Header { tag, len }))
    }

    /// Bytes of the whole frame, tag included.
    pub fn frame_len(&self) -> usize {
        1 + self.len as usize
    }
}

/// One step of walking a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Forward the next `n` bytes untouched (part or all of a frame nobody inspects).
    /// `tag` is set when these bytes begin a new frame, so callers can count frames of a
    /// type without holding them whole.
    Pass { n: usize, tag: Option<u8> },
    /// A whole frame of `len` bytes (tag included) that the caller asked to inspect is at the
    /// front of the buffer.
    Whole { tag: u8, len: usize },
    /// Nothing can be decided until at least `total` bytes are buffered from the current
    /// position.
    NeedMore { total: usize },
}

/// Walks a byte stream of tagged frames, remembering how much of a passed-through frame is
/// still to come across reads.
#[derive(Debug, Clone)]
pub struct FrameCursor {
    /// Bytes of the current pass-through frame not yet seen; 0 at a frame boundary.
    remaining: usize,
    /// Largest length word accepted.
    max_len: u32,
}

impl FrameCursor {
    pub fn new(max_len: u32) -> FrameCursor {
        FrameCursor { remaining: 0, max_len }
    }

    /// True between frames: an error message may be injected here without corrupting the
    /// stream.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Decide what to do with the bytes at the front of `buf`. `inspect(tag)` says whether
    /// frames of that type must be seen whole. Returns a pass of 0 bytes only for an empty `buf`.
    pub fn step(&mut self, buf: &[u8], inspect: impl Fn(u8) -> bool) -> Result<Step, FrameError> {
        if self.remaining > 0 {
            let n = self.remaining.min(buf.len());
            self.remaining -= n;
            return Ok(Step::Pass { n, tag: None });
        }
        if buf.is_empty() {
            return Ok(Step::Pass { n: 0, tag: None });
        }
        let Some(header) = Header::parse(buf, self.max_len)? else {
            return Ok(Step::NeedMore { total: HEADER_LEN });
        };
        let total = header.frame_len();
        if inspect(header.tag) {
            if buf.len() >= total {
                Ok(Step::Whole { tag: header.tag, len: total })
            } else {
                Ok(Step::NeedMore { total })
            }
        } else {
            let n = total.min(buf.len());
            self.remaining = total - n;
            Ok(Step::Pass { n, tag: Some(header.tag) })
        }
    }
}

/// Split a buffer holding whole frames only (e.g. a message built by the proxy, or a frame
/// returned by [`Step::Whole`]) into `(tag, body)` pairs.
pub fn frames(mut buf: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), FrameError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let header = match Header::parse(buf, u32::MAX) {
            Ok(Some(h)) => h,
            Ok(None) => {
                buf = &[];
                return Some(Err(FrameError::TooShort { tag: 0, len: 0 }));
            }
            Err(e) => {
                buf = &[];
                return Some(Err(e));
            }
        };
        let total = header.frame_len();
        if buf.len() < total {
            buf = &[];
            return Some(Err(FrameError::TooShort { tag: header.tag, len: header.len }));
        }
        let body = &buf[HEADER_LEN..total];
        buf = &buf[total..];
        Some(Ok((header.tag, body)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn passes_uninspected_frames_in_pieces() {
        let f = frame(b'd', &[7u8; 100]);
        let mut c = FrameCursor::new(1 << 20);
        assert_eq!(c.step(&f[..3], |_| false), Ok(Step::NeedMore { total: 5 }));
        assert_eq!(c.step(&f[..40], |_| false), Ok(Step::Pass { n: 40, tag: Some(b'd') }));
        assert!(!c.at_boundary());
        assert_eq!(c.step(&f[40..50], |_| false), Ok(Step::Pass { n: 10, tag: None }));
        assert_eq!(c.step(&f[50..], |_| false), Ok(Step::Pass { n: 55, tag: None }));
        assert!(c.at_boundary());
    }

    #[test]
    fn inspected_frames_come_whole() {
        let mut buf = frame(b'Z', b"I");
        buf.extend(frame(b'D', b"xyz"));
        let mut c = FrameCursor::new(1 << 20);
        assert_eq!(c.step(&buf[..5], |t| t == b'Z'), Ok(Step::NeedMore { total: 6 }));
        assert_eq!(c.step(&buf, |t| t == b'Z'), Ok(Step::Whole { tag: b'Z', len: 6 }));
        assert_eq!(c.step(&buf[6..], |t| t == b'Z'), Ok(Step::Pass { n: 8, tag: Some(b'D') }));
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut c = FrameCursor::new(1 << 20);
        assert_eq!(c.step(&[b'Q', 0, 0, 0, 3], |_| true), Err(FrameError::TooShort { tag: b'Q', len: 3 }));
        let two_gb = [b'Q', 0x80, 0, 0, 0];
        assert!(matches!(c.step(&two_gb, |_| false), Err(FrameError::TooLong { .. })));
    }

    #[test]
    fn frames_iterates_and_flags_truncation() {
        let mut buf = frame(b'S', b"a\0b\0");
        buf.extend(frame(b'Z', b"T"));
        let got: Vec<_> = frames(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(b'S', &b"a\0b\0"[..]), (b'Z', &b"T"[..])]);
        assert!(frames(&buf[..buf.len() - 1]).last().unwrap().is_err());
    }
}
