//! Which of the primary's replies answer which client message, and which of them answer
//! messages capgate itself inserted (and so must not reach the client): the relay's reply
//! bookkeeping, kept apart from the pumps that move the bytes.

use std::collections::VecDeque;

/// Finds, in the primary's replies, the ParseComplete and BindComplete that answer Parse and
/// Bind messages the proxy inserted (to make the primary raise a refusal in the right place)
/// so they can be dropped.
///
/// Replies come in the order of the messages, one ParseComplete per Parse and one
/// BindComplete per Bind — except that after an error the primary skips every message up to
/// the next Sync. So the counts are re-synchronised at every ReadyForQuery with the counts
/// recorded when the message it answers (Sync, Query, FunctionCall) was forwarded.
#[derive(Debug, Default)]
pub struct Hidden {
    parses_sent: u64,
    binds_sent: u64,
    parses_seen: u64,
    binds_seen: u64,
    /// Ordinals (1-based) of the proxy's own Parse and Bind messages.
    parses: Vec<u64>,
    binds: Vec<u64>,
    /// `(parses_sent, binds_sent)` when each ReadyForQuery-answered message was forwarded.
    marks: VecDeque<(u64, u64)>,
    /// Syncs forwarded since the last Execute. If COPY data follows, that Execute started a
    /// COPY FROM STDIN, and PostgreSQL ignores Syncs in copy-in mode: they get no
    /// ReadyForQuery, so they must not be counted.
    syncs_since_execute: u32,
    /// Copy data has been seen since the last Execute (the uncounting is done once).
    copying: bool,
    /// The primary answered the last Execute or Query with CopyInResponse: it is in copy-in
    /// mode. A CopyFail (or CopyDone) without data proves nothing by itself: a client whose
    /// COPY failed at its Bind (tokio-postgres) sends CopyFail and another Sync after the
    /// error, and then the Sync it sent with the Execute was answered, not ignored.
    copy_started: bool,
    /// Client messages whose replies have not all arrived, in order: `P B D E C` (extended
    /// messages, one reply unit each), `S` (a Sync) and `Q` (a Query or FunctionCall: all
    /// until its ReadyForQuery). The coordinator takes over only when this is empty.
    pub(super) units: VecDeque<u8>,
    /// An error answered an extended-protocol message since the last ReadyForQuery: the
    /// primary skips every message up to the next Sync (capgate's own ones too).
    pub(super) group_failed: bool,
    /// Queries and FunctionCalls the server discarded (sent after an extended-protocol error,
    /// before the Sync): they will get no ReadyForQuery, so the caller uncounts them.
    pub(super) discarded: u32,
}

impl Hidden {
    /// A client frame is being forwarded. Returns how many Syncs counted earlier turned out
    /// to be ignored by the server (sent in copy-in mode), and whether this frame is such a
    /// Sync, so the caller's ReadyForQuery count follows.
    pub(super) fn client(&mut self, tag: u8) -> (u32, bool) {
        match tag {
            // After an error the primary skips extended messages up to the Sync: no reply.
            b'P' | b'B' | b'D' | b'E' | b'C' if self.group_failed => {}
            b'P' | b'B' | b'D' | b'E' | b'C' => self.units.push_back(tag),
            b'S' if !self.copying => self.units.push_back(b'S'),
            b'Q' | b'F' => self.units.push_back(b'Q'),
            _ => {}
        }
        match tag {
            b'P' => self.parses_sent += 1,
            b'B' => self.binds_sent += 1,
            b'E' => {
                self.syncs_since_execute = 0;
                self.copying = false;
                self.copy_started = false;
            }
            b'S' if self.copying => return (0, true),
            b'S' => {
                self.syncs_since_execute += 1;
                self.marks.push_back((self.parses_sent, self.binds_sent));
            }
            b'Q' | b'F' => {
                self.syncs_since_execute = 0;
                self.copy_started = false;
                self.marks.push_back((self.parses_sent, self.binds_sent));
            }
            // Only a COPY that started: after an error before it, nothing was ignored.
            b'c' | b'f' if !self.copying && !self.copy_started => self.syncs_since_execute = 0,
            b'd' | b'c' | b'f' if !self.copying => {
                self.copying = tag == b'd';
                self.copy_started = self.copying;
                let ignored = std::mem::take(&mut self.syncs_since_execute);
                for _ in 0..ignored {
                    self.marks.pop_back();
                    if self.units.back() == Some(&b'S') {
                        self.units.pop_back();
                    }
                }
                return (ignored, false);
            }
            b'c' | b'f' => {
                self.copying = false;
                self.copy_started = false;
            }
            _ => {}
        }
        (0, false)
    }

    /// The client's last Parse (already counted) is replaced by a Parse and a Bind of the
    /// proxy's own, whose completions are hidden.
    pub fn own_parse_and_bind_replacing_parse(&mut self) {
        self.binds_sent += 1;
        self.parses.push(self.parses_sent);
        self.binds.push(self.binds_sent);
    }

    /// Whether the newest message still owed a reply is an extended-protocol one: the
    /// server sends its replies only after a Flush (or the Sync that has not come).
    pub fn back_is_extended(&self) -> bool {
        self.units.back().is_some_and(|&u| u != b'S' && u != b'Q')
    }

    /// Whether replies to messages already forwarded are still to come.
    pub fn owed(&self) -> bool {
        !self.units.is_empty()
    }

    /// Follow a reply from the primary through [`Hidden::units`].
    fn answered(&mut self, tag: u8) {
        let front = self.units.front().copied();
        match (tag, front) {
            (b'Z', _) => {
                self.group_failed = false;
                while let Some(u) = self.units.pop_front() {
                    if u == b'S' || u == b'Q' {
                        break;
                    }
                }
            }
            // An error inside an extended-protocol group: the server discards every message up
            // to the Sync — a Query or FunctionCall among them too, which then gets no
            // ReadyForQuery (nor its mark its re-synchronisation).
            (b'E', Some(f)) if f != b'Q' => {
                self.group_failed = true;
                while let Some(&u) = self.units.front().filter(|&&u| u != b'S') {
                    self.units.pop_front();
                    if u == b'Q' {
                        self.marks.pop_front();
                        self.discarded += 1;
                    }
                }
            }
            (b'1', Some(b'P')) | (b'2', Some(b'B')) | (b'3', Some(b'C')) | (b'C' | b'I' | b's', Some(b'E')) | (b'T' | b'n', Some(b'D')) => {
                self.units.pop_front();
            }
            _ => {}
        }
    }

    /// A reply from the primary; true when the client must not see it.
    pub(super) fn server(&mut self, tag: u8) -> bool {
        self.answered(tag);
        match tag {
            b'G' => {
                self.copy_started = true;
                false
            }
            b'1' => {
                self.parses_seen += 1;
                take(&mut self.parses, self.parses_seen)
            }
            b'2' => {
                self.binds_seen += 1;
                take(&mut self.binds, self.binds_seen)
            }
            b'Z' => {
                if let Some((p, b)) = self.marks.pop_front() {
                    self.parses_seen = p;
                    self.binds_seen = b;
                    // Messages skipped after an error never get their completions.
                    self.parses.retain(|&o| o > p);
                    self.binds.retain(|&o| o > b);
                }
                false
            }
            _ => false,
        }
    }
}

fn take(list: &mut Vec<u64>, ordinal: u64) -> bool {
    match list.iter().position(|&o| o == ordinal) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}
