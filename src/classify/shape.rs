//! A statement's shape: its text with the numeric literals blanked out, the key the
//! classification cache files it under.
//!
//! Why: applications that send values inline (pgbench, sysbench, PHP and many other
//! simple-protocol clients) send a new text for every row they touch — `UPDATE
//! pgbench_accounts SET abalance = abalance + -4021 WHERE aid = 6372` — so a cache keyed on the
//! exact text misses every time and each statement is parsed again: in a `sync` pgbench
//! transaction that parse was a third of capgate's own CPU. A number never changes which
//! tables a statement reads or writes, so statements that differ only in their numbers share
//! one classification.
//!
//! Deliberately conservative, since a wrong key would reuse a wrong classification: only
//! data statements (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES, REPLACE) are shaped; strings
//! and quoted identifiers are left as they are (a string may name a table, `nextval('s')`, or a
//! search path, `set_config(…)`); a text with a backslash, a comment or a dollar-quoted string
//! is not shaped at all (their quoting rules differ between dialects and settings, and no
//! scanner here should have to know them).

use std::borrow::Cow;

/// Statements whose numbers are blanked (the first word, ASCII case-insensitive).
const SHAPED: [&str; 7] = ["select", "insert", "update", "delete", "with", "values", "replace"];

/// `sql` with every numeric literal replaced by `blank` (the cache uses `?`); borrowed when
/// there is none, or when the text is not one this scanner shapes (see the module's doc).
pub fn blank_numbers<'a>(sql: &'a str, blank: &str) -> Cow<'a, str> {
    if !shapeable(sql) {
        return Cow::Borrowed(sql);
    }
    let bytes = sql.as_bytes();
    let mut out: Option<String> = None;
    // Bytes of `sql` before `copied` are in `out` already (when it exists).
    let mut copied = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            // A doubled quote inside a quoted run stays inside it: the loop sees the second
            // one as an opening quote again.
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'\'' | b'"' | b'`' => {
                quote = Some(b);
                i += 1;
            }
            b'0'..=b'9' if i == 0 || !continues_word(bytes[i - 1]) => {
                // Not a plain number (MySQL allows a name such as `1t`): leave the text be.
                let Some(len) = number_len(&bytes[i..]) else { return Cow::Borrowed(sql) };
                let end = i + len;
                let o = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                o.push_str(&sql[copied..i]);
                o.push_str(blank);
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&sql[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(sql),
    }
}

/// Whether `sql` is a data statement without the constructs the scanner leaves alone.
fn shapeable(sql: &str) -> bool {
    let start = sql.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '(');
    let word_len = start.bytes().take_while(u8::is_ascii_alphabetic).count();
    let word = &start[..word_len];
    if !SHAPED.iter().any(|w| w.eq_ignore_ascii_case(word)) {
        return false;
    }
    let bytes = sql.as_bytes();
    let dollar_quote = bytes.iter().enumerate().any(|(i, &b)| b == b'$' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
    !(dollar_quote || sql.contains('\\') || sql.contains("--") || sql.contains("/*") || sql.contains('#'))
}

/// The length of the number `bytes` starts with (`12`, `1.5`, `1.`, `2e-3`, `0x1F`), or None
/// when what starts with a digit there runs on into a word (`1t`, `1_000`).
fn number_len(bytes: &[u8]) -> Option<usize> {
    let digits = |from: usize| bytes[from.min(bytes.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut n = digits(0);
    if n == 1 && bytes[0] == b'0' && matches!(bytes.get(1), Some(b'x' | b'X')) {
        n = 2 + bytes[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
    } else {
        if bytes.get(n) == Some(&b'.') {
            n += 1 + digits(n + 1);
        }
        if matches!(bytes.get(n), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(bytes.get(n + 1), Some(b'+' | b'-')));
            let exp = digits(n + 1 + sign);
            if exp == 0 {
                return None;
            }
            n += 1 + sign + exp;
        }
    }
    match bytes.get(n) {
        Some(&c) if continues_word(c) => None,
        _ => Some(n),
    }
}

/// Whether a digit after `prev` belongs to the word before it (an identifier such as `t1`, a
/// parameter such as `$2`, a MySQL variable such as `@v1`) rather than starting a number.
fn continues_word(prev: u8) -> bool {
    prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$' || prev == b'@' || prev >= 0x80
}

#[cfg(test)]
mod tests {
    use super::blank_numbers;

    fn key(sql: &str) -> String {
        blank_numbers(sql, "?").into_owned()
    }

    #[test]
    fn numbers_are_blanked_in_data_statements() {
        assert_eq!(
            key("UPDATE pgbench_accounts SET abalance = abalance + -4021 WHERE aid = 6372;"),
            "UPDATE pgbench_accounts SET abalance = abalance + -? WHERE aid = ?;"
        );
        assert_eq!(key("select c from sbtest1 where id between 5023 and 5122"), "select c from sbtest1 where id between ? and ?");
        assert_eq!(key("INSERT INTO t VALUES (1.5e10, 0x1F, .25, 2e-3, 7.)"), "INSERT INTO t VALUES (?, ?, .?, ?, ?)");
        assert_eq!(key("  (SELECT 1) UNION (SELECT 2)"), "  (SELECT ?) UNION (SELECT ?)");
        assert_eq!(
            key("WITH x AS (DELETE FROM t2 WHERE a = 3 RETURNING *) SELECT * FROM x"),
            "WITH x AS (DELETE FROM t2 WHERE a = ? RETURNING *) SELECT * FROM x"
        );
    }

    #[test]
    fn what_may_name_a_table_is_kept() {
        // Identifiers with digits, parameters, variables, strings and quoted identifiers.
        assert_eq!(key("SELECT * FROM t1 JOIN s2.u_3 ON a = $1 AND b = @v9"), "SELECT * FROM t1 JOIN s2.u_3 ON a = $1 AND b = @v9");
        assert_eq!(
            key("SELECT nextval('seq_2'), \"col 5\", `t 6` FROM t WHERE x = 7"),
            "SELECT nextval('seq_2'), \"col 5\", `t 6` FROM t WHERE x = ?"
        );
        assert_eq!(key("SELECT 'it''s 9', 8"), "SELECT 'it''s 9', ?");
        assert_eq!(key("SELECT * FROM tähti1 WHERE n = 4"), "SELECT * FROM tähti1 WHERE n = ?");
    }

    #[test]
    fn other_statements_and_hard_quoting_are_left_alone() {
        for sql in [
            "SET statement_timeout = 5000",
            "CREATE TABLE t (a numeric(10, 2))",
            "PREPARE TRANSACTION 'gid 1'",
            "SELECT E'a\\'1' FROM t WHERE a = 1",
            "SELECT $q$ 1 $q$ FROM t WHERE a = 1",
            "SELECT 1 -- 2",
            "SELECT /* 1 */ 2",
            "SELECT 1 # MySQL comment",
            "SELECT a FROM t",
            "SELECT * FROM 1t WHERE a = 2",
            "SELECT * FROM db.2t",
            "SELECT 1_000",
        ] {
            assert!(matches!(super::blank_numbers(sql, "?"), std::borrow::Cow::Borrowed(_)), "{sql}");
        }
    }
}
