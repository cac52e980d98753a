//! What replaces a statement capgate refuses: statements that make the primary raise the
//! refusal as an ERROR, so that it reaches the client in its place in the stream, with
//! PostgreSQL's own transaction semantics (it aborts the transaction like any error), even
//! when the client pipelines.

use bytes::{BufMut, BytesMut};

use crate::protocol::postgres::message::write_frame;
use crate::replicate::Refusal;

/// A statement that makes the primary raise `refusal` as an ERROR.
pub(crate) fn raise_statement(refusal: &Refusal) -> String {
    // Inside the $capgate$-quoted body only that exact tag could end it early.
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''").replace("$capgate$", "$ capgate$"));
    format!(
        "DO $capgate$ BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}, HINT = {}; END $capgate$",
        lit(refusal.code),
        lit(&refusal.message),
        lit(&refusal.hint)
    )
}

/// A Query frame raising the refusal.
pub(crate) fn refusal_query(refusal: &Refusal) -> BytesMut {
    refusal_query_after("", refusal)
}

/// A Query frame running `kept` (whole statements, each ending with `;`) and then raising
/// the refusal.
pub(crate) fn refusal_query_after(kept: &str, refusal: &Refusal) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, b'Q', |b| {
        if !kept.is_empty() {
            b.put_slice(kept.as_bytes());
            b.put_u8(b' ');
        }
        b.put_slice(raise_statement(refusal).as_bytes());
        b.put_u8(0);
    });
    out
}

/// What replaces a refused Parse: Parse, Bind and Execute of an unnamed statement that
/// raises the refusal. The primary answers with the ErrorResponse where the client expects
/// its ParseComplete, then — as after any extended-protocol error — ignores the client's
/// following messages (its Bind, Describe, Execute of the refused statement) up to Sync. The
/// error thus arrives in order, the named statement is not created (as when a Parse fails),
/// and an open transaction is aborted, all exactly as PostgreSQL does for a failing Parse.
pub(crate) fn refusal_parse(refusal: &Refusal) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, b'P', |b| {
        b.put_u8(0);
        b.put_slice(raise_statement(refusal).as_bytes());
        b.put_u8(0);
        b.put_u16(0);
    });
    write_frame(&mut out, b'B', |b| {
        b.put_u8(0); // unnamed portal
        b.put_u8(0); // unnamed statement
        b.put_u16(0); // no parameter formats
        b.put_u16(0); // no parameters
        b.put_u16(0); // no result formats
    });
    write_frame(&mut out, b'E', |b| {
        b.put_u8(0);
        b.put_u32(0);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_statement_is_one_safe_literal() {
        let r = Refusal { code: "0A000", message: "it's $capgate$ bad, pass $1".into(), hint: "fix".into() };
        let s = raise_statement(&r);
        assert!(s.contains("MESSAGE = 'it''s $ capgate$ bad, pass $1'"), "{s}");
    }
}
