//! Captured statements back into plain SQL: each `$n` placeholder replaced by a literal of
//! its bound value, so a batch of statements travels as ONE simple query (one round trip,
//! no per-statement Parse/Bind, and every value is visible in the conflict record).
//!
//! Literals are dollar-quoted with a tag that does not occur in the value, so their meaning
//! does not depend on `standard_conforming_strings`, and cast to the type the primary bound
//! (`CAST($cg$42$cg$ AS integer)`); text-format values are passed through as the client sent
//! them. Binary-format values are decoded for the common scalar types; anything else is an
//! error the shipper reports rather than a guess.
//!
//! Pure functions, no I/O: unit-tested on strings and byte slices.

/// `value` as a dollar-quoted string constant.
pub fn quote(value: &str) -> String {
    let mut n = 0usize;
    loop {
        let tag = if n == 0 { "$cg$".to_owned() } else { format!("$cg{n}$") };
        // The constant ends at the first `tag` after the opening one, so it must not occur
        // in `value` nor straddle its end.
        let joined = format!("{value}{tag}");
        if joined.find(&tag) == Some(value.len()) {
            return format!("{tag}{value}{tag}");
        }
        n += 1;
    }
}

/// The literal of one parameter: `type_name` is `format_type(oid, NULL)` on the primary
/// (None for an unspecified type: the literal stays untyped, as the client's was).
pub fn param_literal(type_oid: u32, type_name: Option<&str>, binary: bool, value: Option<&[u8]>) -> Result<String, String> {
    let Some(value) = value else {
        return Ok(match type_name {
            Some(t) => format!("CAST(NULL AS {t})"),
            None => "NULL".to_owned(),
        });
    };
    let text = if binary {
        decode_binary(type_oid, value)?
    } else {
        std::str::from_utf8(value).map_err(|_| format!("a text parameter of type {type_oid} is not valid UTF-8"))?.to_owned()
    };
    Ok(match type_name {
        Some(t) => format!("CAST({} AS {t})", quote(&text)),
        None => quote(&text),
    })
}

/// Replaces every `$n` placeholder of `sql` (outside string constants, quoted identifiers
/// and comments) with `(literals[n-1])`.
pub fn inline(sql: &str, literals: &[String]) -> Result<String, String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + literals.iter().map(|l| l.len()).sum::<usize>());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_quoted(b, i, b'\'', is_escape_string(b, i)),
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => {
                let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let after_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] >= 0x80);
                if digits > 0 && !after_ident {
                    let n: usize = sql[i + 1..i + 1 + digits].parse().map_err(|_| format!("bad placeholder at byte {i}"))?;
                    let lit = n
                        .checked_sub(1)
                        .and_then(|k| literals.get(k))
                        .ok_or_else(|| format!("placeholder ${n} has no parameter ({} bound)", literals.len()))?;
                    out.push_str(&sql[copied..i]);
                    out.push('(');
                    out.push_str(lit);
                    out.push(')');
                    i += 1 + digits;
                    copied = i;
                } else if let Some(end) = dollar_quote_end(b, i).filter(|_| !after_ident) {
                    i = end;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Whether the quote at `i` opens an `E'…'` constant (backslash escapes).
fn is_escape_string(b: &[u8], i: usize) -> bool {
    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'))
}

/// The index after the constant or identifier opened at `i`; a doubled quote is part of it.
fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
        } else if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
            } else {
                return j + 1;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(b: &[u8], i: usize) -> usize {
    let (mut depth, mut j) = (0usize, i);
    while j + 1 < b.len() {
        if b[j] == b'/' && b[j + 1] == b'*' {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// If a `$tag$` dollar-quoted constant starts at `i`, the index after it.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    let tag_len = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c >= 0x80).count();
    if b.get(i + 1 + tag_len) != Some(&b'$') || b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    let tag = &b[i..i + tag_len + 2];
    let body = i + tag.len();
    let end = b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p + tag.len());
    Some(end)
}

/// The text form of a binary-format value of a common scalar type.
pub fn decode_binary(oid: u32, v: &[u8]) -> Result<String, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        if v.len() == n {
            Ok(v)
        } else {
            Err(format!("binary value of type {oid} has {} bytes, expected {n}", v.len()))
        }
    };
    let utf8 = |bytes: &[u8]| std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| format!("binary value of type {oid} is not UTF-8"));
    Ok(match oid {
        16 => (if fixed(1)?[0] != 0 { "true" } else { "false" }).to_owned(),
        21 => i16::from_be_bytes(arr(fixed(2)?)).to_string(),
        23 => i32::from_be_bytes(arr(fixed(4)?)).to_string(),
        20 => i64::from_be_bytes(arr(fixed(8)?)).to_string(),
        26 => u32::from_be_bytes(arr(fixed(4)?)).to_string(),
        700 => float(f32::from_be_bytes(arr(fixed(4)?)) as f64, f32::from_be_bytes(arr(v)).to_string()),
        701 => float(f64::from_be_bytes(arr(fixed(8)?)), f64::from_be_bytes(arr(v)).to_string()),
        25 | 1043 | 1042 | 19 | 705 | 114 => utf8(v)?,
        3802 => match v.split_first() {
            Some((1, rest)) => utf8(rest)?,
            _ => return Err("binary jsonb value with an unknown version".into()),
        },
        17 => {
            let mut s = String::with_capacity(2 + v.len() * 2);
            s.push_str("\\x");
            for byte in v {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        2950 => {
            let h: Vec<String> = fixed(16)?.iter().map(|b| format!("{b:02x}")).collect();
            let h = h.concat();
            format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
        }
        1082 => date(i32::from_be_bytes(arr(fixed(4)?))),
        1114 => timestamp(i64::from_be_bytes(arr(fixed(8)?))),
        1184 => {
            let t = timestamp(i64::from_be_bytes(arr(fixed(8)?)));
            if t.contains("infinity") {
                t
            } else {
                format!("{t}+00")
            }
        }
        1700 => numeric(v)?,
        other => return Err(format!("binary parameters of type oid {other} cannot be inlined by the shipper")),
    })
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = v.len().min(N);
    a[..n].copy_from_slice(&v[..n]);
    a
}

/// PostgreSQL spells the special values `NaN`, `Infinity`, `-Infinity`; Rust's shortest
/// round-trip formatting is exact for the rest.
fn float(x: f64, shortest: String) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        (if x > 0.0 { "Infinity" } else { "-Infinity" }).into()
    } else {
        shortest
    }
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian; BC dates get ` BC`).
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => civil(d as i64 + 10_957),
    }
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS.ffffff`.
fn timestamp(us: i64) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let (days, rem) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
            let secs = rem / 1_000_000;
            format!("{} {:02}:{:02}:{:02}.{:06}", civil(days + 10_957), secs / 3600, secs / 60 % 60, secs % 60, rem % 1_000_000)
        }
    }
}

/// Days since 1970-01-01 as a civil date (H. Hinnant's algorithm).
fn civil(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// The binary numeric format: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric(v: &[u8]) -> Result<String, String> {
    let word = |k: usize| v.get(2 * k..2 * k + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or("truncated binary numeric");
    let (ndigits, weight, sign, dscale) = (word(0)? as usize, word(1)? as i16 as i64, word(2)?, word(3)? as usize);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits).map(|k| word(4 + k)).collect::<Result<_, _>>()?;
    let digit = |pos: i64| -> u16 { usize::try_from(pos).ok().and_then(|p| digits.get(p)).copied().unwrap_or(0) };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            let d = digit(k);
            if k == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_picks_a_tag_not_in_the_value() {
        assert_eq!(quote("it's"), "$cg$it's$cg$");
        assert_eq!(quote("a$cg$b"), "$cg1$a$cg$b$cg1$");
        assert_eq!(quote("ends in $cg"), "$cg1$ends in $cg$cg1$");
    }

    #[test]
    fn placeholders_are_replaced_outside_strings_comments_and_identifiers() {
        let lits = vec!["L1".to_owned(), "L2".to_owned()];
        let sql = "UPDATE t SET a = $1, \"b$2\" = '$2' -- $1\n WHERE c = $2 /* $1 /* $2 */ */ AND d = $f$ $1 $f$ AND e$1 = E'\\' $1'";
        let out = inline(sql, &lits).unwrap();
        assert_eq!(
            out,
            "UPDATE t SET a = (L1), \"b$2\" = '$2' -- $1\n WHERE c = (L2) /* $1 /* $2 */ */ AND d = $f$ $1 $f$ AND e$1 = E'\\' $1'"
        );
        assert!(inline("SELECT $3", &lits).unwrap_err().contains("$3"));
        assert_eq!(inline("SELECT 'x''$1', $1", &lits).unwrap(), "SELECT 'x''$1', (L1)");
    }

    #[test]
    fn parameters_become_typed_literals() {
        assert_eq!(param_literal(23, Some("integer"), false, Some(b"42")).unwrap(), "CAST($cg$42$cg$ AS integer)");
        assert_eq!(param_literal(23, Some("integer"), false, None).unwrap(), "CAST(NULL AS integer)");
        assert_eq!(param_literal(0, None, false, Some(b"x")).unwrap(), "$cg$x$cg$");
        assert_eq!(param_literal(23, Some("integer"), true, Some(&7i32.to_be_bytes())).unwrap(), "CAST($cg$7$cg$ AS integer)");
    }

    #[test]
    fn binary_values_decode() {
        assert_eq!(decode_binary(20, &(-5i64).to_be_bytes()).unwrap(), "-5");
        assert_eq!(decode_binary(701, &0.1f64.to_be_bytes()).unwrap(), "0.1");
        assert_eq!(decode_binary(701, &f64::NEG_INFINITY.to_be_bytes()).unwrap(), "-Infinity");
        assert_eq!(decode_binary(17, &[0xde, 0xad]).unwrap(), "\\xdead");
        assert_eq!(decode_binary(1082, &0i32.to_be_bytes()).unwrap(), "2000-01-01");
        assert_eq!(decode_binary(1082, &(-1i32).to_be_bytes()).unwrap(), "1999-12-31");
        let us: i64 = ((366 + 31) * 86_400 + 3_723) * 1_000_000 + 5;
        assert_eq!(decode_binary(1114, &us.to_be_bytes()).unwrap(), "2001-02-01 01:02:03.000005");
        assert_eq!(decode_binary(1184, &0i64.to_be_bytes()).unwrap(), "2000-01-01 00:00:00.000000+00");
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        let mut n = Vec::new();
        for w in [3u16, 1, 0, 3, 1, 2345, 6780] {
            n.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_binary(1700, &n).unwrap(), "12345.678");
        // -0.05 = digits [500], weight -1, dscale 2
        let mut n = Vec::new();
        for w in [1u16, 0xFFFF, 0x4000, 2, 500] {
            n.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_binary(1700, &n).unwrap(), "-0.05");
        assert!(decode_binary(1007, &[]).unwrap_err().contains("1007"));
        assert!(decode_binary(23, &[1]).is_err());
    }
}
