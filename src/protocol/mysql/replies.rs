//! Whole replies changed before capgate hands them to the client: the final status flags of a
//! statement capgate ran inside a transaction of its own, and two replies joined into the one
//! multi-result reply the client's query would have had (capgate ran the query in two parts).
//! No I/O; the bytes are the replies' packets with their headers, as the relay received them.

use super::{lenenc_int, status};

/// Where the final packet of `reply` starts (after its header) and its length, when every
/// packet is whole.
fn last_packet(reply: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    let mut last = None;
    while let Some(header) = reply.get(at..at + 4) {
        let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if reply.len() < at + 4 + len {
            return None;
        }
        last = Some((at + 4, len));
        at += 4 + len;
    }
    last
}

/// Where the status flags of the final packet of `reply` are, when it is an OK or EOF packet
/// (not an ERR, a row or a LOCAL INFILE request).
fn final_status_at(reply: &[u8], deprecate_eof: bool) -> Option<usize> {
    let (start, len) = last_packet(reply)?;
    let payload = &reply[start..start + len];
    let offset = match payload.first() {
        Some(0x00) => ok_status_offset(payload),
        Some(0xfe) if deprecate_eof => ok_status_offset(payload),
        Some(0xfe) if len < 9 => Some(3),
        _ => None,
    };
    offset.filter(|o| o + 2 <= len).map(|o| start + o)
}

/// Where an OK packet's status flags are: after the header byte and two length-encoded ints.
fn ok_status_offset(payload: &[u8]) -> Option<usize> {
    let (_, a) = lenenc_int(payload.get(1..)?)?;
    let (_, b) = lenenc_int(payload.get(1 + a..)?)?;
    Some(1 + a + b)
}

/// Whether `reply` ends with an OK or EOF packet: no error stopped it (a multi-statement
/// query stops at its first error, which ends the reply).
pub fn ends_well(reply: &[u8], deprecate_eof: bool) -> bool {
    final_status_at(reply, deprecate_eof).is_some()
}

/// Set the flags `set` and clear the flags `clear` in the status of the final OK or EOF packet
/// of `reply`. Nothing changes if the last packet is neither (an ERR).
pub fn set_final_status(reply: &mut [u8], deprecate_eof: bool, set: u16, clear: u16) {
    if let Some(at) = final_status_at(reply, deprecate_eof) {
        let status = (u16::from_le_bytes([reply[at], reply[at + 1]]) | set) & !clear;
        reply[at..at + 2].copy_from_slice(&status.to_le_bytes());
    }
}

/// The reply of a query run as two (`first`, then `second`), as one multi-result reply: the
/// final packet of `first` says more results follow, and `second`'s sequence ids go on from
/// `first`'s. `first` alone when it does not end with an OK or EOF packet ([`ends_well`]): an
/// ERR ends the query there, and `second` must not have run.
pub fn join(mut first: Vec<u8>, second: &[u8], deprecate_eof: bool) -> Vec<u8> {
    if !ends_well(&first, deprecate_eof) {
        return first;
    }
    set_final_status(&mut first, deprecate_eof, status::MORE_RESULTS_EXISTS, 0);
    let Some((last, _)) = last_packet(&first) else { return first };
    let mut seq = first[last - 1].wrapping_add(1);
    let at = first.len();
    first.extend_from_slice(second);
    let mut k = at;
    while let Some(header) = first.get(k..k + 4) {
        let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        first[k + 3] = seq;
        seq = seq.wrapping_add(1);
        k += 4 + len;
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::packet;

    fn reply(first_seq: u8, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            packet::write(&mut out, first_seq + i as u8, p);
        }
        out
    }

    #[test]
    fn final_status_is_set_and_cleared() {
        // OK: affected 1, insert id 0, status IN_TRANS (0x01), warnings 0.
        let mut ok = reply(1, &[b"\x00\x01\x00\x01\x00\x00\x00"]);
        set_final_status(&mut ok, false, status::AUTOCOMMIT, status::IN_TRANS);
        assert_eq!(&ok[4..], b"\x00\x01\x00\x02\x00\x00\x00");
        // A result set ending with EOF.
        let mut rows = reply(1, &[b"\x01", b"\x03def", b"\xfe\x00\x00\x23\x00", b"\x011", b"\xfe\x00\x00\x21\x00"]);
        set_final_status(&mut rows, false, 0, status::IN_TRANS);
        assert_eq!(&rows[rows.len() - 5..], b"\xfe\x00\x00\x20\x00");
        let mut err = packet::err(1, (1062, "23000"), "Duplicate entry");
        let before = err.clone();
        set_final_status(&mut err, true, status::AUTOCOMMIT, 0);
        assert_eq!(err, before);
    }

    #[test]
    fn two_replies_join_into_one() {
        // `CREATE …` (OK, seq 1), then `UPDATE …` run apart (OK, seq 1 again), or refused.
        let first = reply(1, &[b"\x00\x00\x00\x02\x00\x00\x00"]);
        let second = reply(1, &[b"\x00\x01\x00\x02\x00\x00\x00"]);
        let joined = join(first.clone(), &second, true);
        assert_eq!(joined, reply(1, &[b"\x00\x00\x00\x0a\x00\x00\x00", b"\x00\x01\x00\x02\x00\x00\x00"]));
        let refused = packet::err(1, (1180, "55000"), "refused");
        let joined = join(first, &refused, true);
        assert_eq!(joined[joined.len() - refused.len() + 3], 2, "the ERR takes the next sequence id");
        // A first part that failed ends the query.
        let failed = packet::err(1, (1064, "42000"), "syntax");
        assert_eq!(join(failed.clone(), &second, true), failed);
        // A result set first, several packets second.
        let first = reply(1, &[b"\x01", b"\x03def", b"\x011", b"\xfe\x00\x00\x02\x00\x00\x00"]);
        let second = reply(1, &[b"\x01", b"\x03def", b"\x012", b"\xfe\x00\x00\x02\x00\x00\x00"]);
        let joined = join(first, &second, true);
        let mut packets = Vec::new();
        let mut at = 0;
        while at < joined.len() {
            let len = usize::from(joined[at]);
            packets.push((joined[at + 3], joined[at + 4..at + 4 + len].to_vec()));
            at += 4 + len;
        }
        assert_eq!(packets.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(packets[3].1, b"\xfe\x00\x00\x0a\x00\x00\x00", "more results follow the first");
        assert_eq!(packets[7].1, b"\xfe\x00\x00\x02\x00\x00\x00");
    }
}
