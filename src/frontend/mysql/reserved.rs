//! capgate's own user variables on the MySQL port (`@capgate_session`, `@capgate_apply`,
//! `@capgate_truncate` …): the capture triggers on the primary read them, so a client must
//! not set them through capgate.

/// Whether `sql` names a user variable `@capgate_…` in any spelling (`@capgate_x`,
/// ``@`capgate_x` ``, `@'capgate_x'`, `@"capgate_x"`, any case). The capture triggers trust
/// these variables (`@capgate_apply` skips capture, `@capgate_truncate` records a TRUNCATE):
/// a client setting one through capgate could keep its writes from the replicas or empty a
/// replica's table. (A statement text built at run time and run by SQL `PREPARE … FROM @s`
/// is not seen here.)
pub fn names_capgate_variable(sql: &[u8]) -> bool {
    const NAME: &[u8] = b"capgate_";
    sql.iter().enumerate().any(|(i, &b)| {
        if b != b'@' {
            return false;
        }
        let rest = &sql[i + 1..];
        let rest = match rest.first() {
            Some(b'`' | b'\'' | b'"') => &rest[1..],
            _ => rest,
        };
        rest.len() >= NAME.len() && rest[..NAME.len()].eq_ignore_ascii_case(NAME)
    })
}

#[cfg(test)]
mod tests {
    use super::names_capgate_variable;

    #[test]
    fn every_spelling_of_capgates_variables_is_seen() {
        for sql in [
            "SET @capgate_apply = 1",
            "set @CAPGATE_TRUNCATE:=5",
            "SELECT @`capgate_session`",
            "SET @'capgate_x' = 1",
            "SELECT 1 INTO @\"Capgate_y\"",
        ] {
            assert!(names_capgate_variable(sql.as_bytes()), "{sql}");
        }
        for sql in ["SET @capgate = 1", "SELECT 'capgate_apply'", "INSERT INTO capgate_log VALUES (1)", "SET @app_capgate_x = 1"] {
            assert!(!names_capgate_variable(sql.as_bytes()), "{sql}");
        }
    }
}
