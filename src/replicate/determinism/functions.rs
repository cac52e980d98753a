//! One function call, seen by the determinism rewrite: a time function to pin, a call that can
//! never be made deterministic, or a call that is fine as it is.
//!
//! Kept apart from the statement walk so the lists of names can be read (and reviewed) in one
//! place. Names are compared as the dialect stores them (PostgreSQL folds unquoted names to
//! lower case; MySQL function names are case-insensitive).

use std::time::{SystemTime, UNIX_EPOCH};

use sqlparser::ast::{Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Value};
use sqlparser::parser::Parser;

use crate::classify::{parts, Catalog, Dialect, SearchPath, TableName, Volatility};

/// What to do with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    /// Not a source of difference between sites (or someone else's business, such as an
    /// unknown function, which the policy's `unknown` decides).
    Keep,
    /// A time function: replace the call with this expression (PostgreSQL).
    Pin(Box<Expr>),
    /// A time function on MySQL: pinned by `SET TIMESTAMP` before the statement, not by
    /// rewriting (MySQL's own statement-based replication does the same).
    SessionTimestamp,
    /// Cannot be made deterministic; the text names the call as the user wrote it.
    Refuse(String),
}

/// Which time value a PostgreSQL time function stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    /// now(), current_timestamp, transaction_timestamp(), statement_timestamp(),
    /// clock_timestamp(): `timestamptz`.
    Timestamptz,
    /// current_date: the date in the session's time zone.
    Date,
    /// current_time: `time with time zone`.
    TimeTz,
    /// localtimestamp: `timestamp` (no zone) in the session's time zone.
    Timestamp,
    /// localtime: `time` in the session's time zone.
    Time,
    /// timeofday(): text.
    Text,
}

fn time_kind(name: &str) -> Option<TimeKind> {
    Some(match name {
        "now" | "current_timestamp" | "transaction_timestamp" | "statement_timestamp" | "clock_timestamp" => TimeKind::Timestamptz,
        "current_date" => TimeKind::Date,
        "current_time" => TimeKind::TimeTz,
        "localtimestamp" => TimeKind::Timestamp,
        "localtime" => TimeKind::Time,
        "timeofday" => TimeKind::Text,
        _ => return None,
    })
}

/// PostgreSQL built-ins whose result differs per site or per call and that no literal can
/// stand for (a random value, a transaction id, a connection's own facts, a sequence step).
fn refused_builtin(name: &str) -> bool {
    matches!(
        name,
        "random"
            | "random_normal"
            | "gen_random_uuid"
            | "gen_random_bytes"
            | "uuidv4"
            | "uuidv7"
            | "txid_current"
            | "txid_current_if_assigned"
            | "pg_current_xact_id"
            | "pg_current_xact_id_if_assigned"
            | "pg_backend_pid"
            | "inet_client_addr"
            | "inet_client_port"
            | "inet_server_addr"
            | "inet_server_port"
            | "pg_postmaster_start_time"
            | "pg_conf_load_time"
            | "nextval"
            | "setval"
            | "currval"
            | "lastval"
    )
}

/// Extension functions (uuid-ossp, pgcrypto) that live in whatever schema the extension was
/// installed in: refused by name in any schema.
fn refused_extension(name: &str) -> bool {
    matches!(name, "uuid_generate_v1" | "uuid_generate_v1mc" | "uuid_generate_v4" | "gen_random_uuid" | "gen_random_bytes" | "gen_salt")
}

/// MySQL server functions that cannot be pinned (SET TIMESTAMP does not reach them).
fn refused_mysql(name: &str) -> bool {
    matches!(
        name,
        "rand"
            | "uuid"
            | "uuid_short"
            | "sysdate"
            | "connection_id"
            | "last_insert_id"
            | "random_bytes"
            | "current_user"
            | "user"
            | "session_user"
            | "system_user"
    )
}

/// MySQL time functions that `SET TIMESTAMP` pins.
fn mysql_time(name: &str) -> bool {
    matches!(
        name,
        "now"
            | "current_timestamp"
            | "localtime"
            | "localtimestamp"
            | "curdate"
            | "current_date"
            | "curtime"
            | "current_time"
            | "utc_timestamp"
            | "utc_date"
            | "utc_time"
            | "unix_timestamp"
    )
}

/// The call as a DBA recognises it: `now()`, `current_timestamp`, `public.f()`.
fn shown(schema: Option<&str>, name: &str, f: &Function) -> String {
    let parens = !matches!(f.args, FunctionArguments::None);
    let base = match schema {
        Some(s) => TableName::new(s, name).to_string(),
        None => name.to_owned(),
    };
    if parens {
        format!("{base}()")
    } else {
        base
    }
}

/// Decide one call. `literal` is the pinned instant as PostgreSQL text
/// (`'2026-11-25 08:00:00.123456+00'`), `user` the session user if the caller pinned it.
pub(super) fn call(dialect: Dialect, path: &SearchPath, catalog: &Catalog, f: &Function, literal: &str, user: Option<&str>) -> Call {
    let Some(mut name_parts) = parts(dialect, &f.name) else {
        return Call::Keep;
    };
    let Some(mut name) = name_parts.pop() else {
        return Call::Keep;
    };
    if dialect == Dialect::MySql {
        name.make_ascii_lowercase();
    }
    let schema = name_parts.pop();
    let builtin_scope = schema.is_none() || schema.as_deref() == Some("pg_catalog");
    if dialect == Dialect::MySql {
        if mysql_time(&name) {
            return Call::SessionTimestamp;
        }
        if refused_mysql(&name) {
            return Call::Refuse(shown(None, &name, f));
        }
        return Call::Keep;
    }
    if builtin_scope {
        if let Some(kind) = time_kind(&name) {
            return match pin_time(dialect, kind, precision(f), literal) {
                Some(e) => Call::Pin(Box::new(e)),
                None => Call::Refuse(shown(None, &name, f)),
            };
        }
        if refused_builtin(&name) {
            return Call::Refuse(shown(None, &name, f));
        }
        if matches!(name.as_str(), "current_user" | "session_user" | "user" | "current_role") {
            return match user.and_then(|u| parse_expr(dialect, &format!("{}::name", quote(u)))) {
                Some(e) => Call::Pin(Box::new(e)),
                None => Call::Refuse(shown(None, &name, f)),
            };
        }
    }
    if refused_extension(&name) {
        return Call::Refuse(shown(schema.as_deref(), &name, f));
    }
    let candidates: Vec<String> = match &schema {
        Some(s) => vec![s.clone()],
        None => path.schemas().to_vec(),
    };
    let volatile = candidates
        .iter()
        .find_map(|s| catalog.function(s, &name).filter(|info| info.volatility == Volatility::Volatile).map(|_| s.clone()));
    match volatile {
        Some(s) => Call::Refuse(format!("{}()", TableName::new(s, name.as_str()))),
        None => Call::Keep,
    }
}

/// PostgreSQL's special date/time inputs `'now'`, `'today'`, `'tomorrow'` and
/// `'yesterday'` in an explicit cast (`'now'::timestamptz`, `CAST('today' AS date)`) or a
/// typed literal (`timestamp 'now'`): the pinned instant cast to the same type. An untyped
/// `'now'` given to a timestamp column cannot be seen without column types: not handled.
pub(super) fn special_time_input(dialect: Dialect, e: &Expr, literal: &str) -> Option<Expr> {
    if dialect != Dialect::Postgres {
        return None;
    }
    let (value, data_type) = match e {
        Expr::Cast { expr, data_type, .. } => match expr.as_ref() {
            Expr::Value(v) => (&v.value, data_type),
            _ => return None,
        },
        Expr::TypedString(t) => (&t.value.value, &t.data_type),
        _ => return None,
    };
    let Value::SingleQuotedString(s) = value else {
        return None;
    };
    let ty = data_type.to_string();
    let lower = ty.to_ascii_lowercase();
    if !(lower.starts_with("timestamp") || lower.starts_with("date") || lower.starts_with("time")) {
        return None;
    }
    let base = match s.trim().to_ascii_lowercase().as_str() {
        "now" => format!("{literal}::TIMESTAMPTZ"),
        "today" => format!("{literal}::TIMESTAMPTZ::DATE"),
        "tomorrow" => format!("({literal}::TIMESTAMPTZ::DATE + 1)"),
        "yesterday" => format!("({literal}::TIMESTAMPTZ::DATE - 1)"),
        _ => return None,
    };
    parse_expr(dialect, &format!("{base}::{ty}"))
}

/// `current_timestamp(3)`: the precision, when it is a literal integer.
fn precision(f: &Function) -> Option<u32> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => match &v.value {
            Value::Number(n, _) => n.parse().ok().filter(|p| *p <= 6),
            _ => None,
        },
        _ => None,
    }
}

/// The expression that stands for a time function. Everything is derived from ONE
/// `timestamptz` literal by casts, which PostgreSQL evaluates in the session's time zone:
/// `current_date` is then exactly what it would have been (the date where the session is),
/// provided the replica's session has the same TimeZone — which capgate sets there anyway.
fn pin_time(dialect: Dialect, kind: TimeKind, p: Option<u32>, literal: &str) -> Option<Expr> {
    let typmod = p.map(|p| format!("({p})")).unwrap_or_default();
    let text = match kind {
        TimeKind::Timestamptz => format!("{literal}::TIMESTAMPTZ{typmod}"),
        TimeKind::Date => format!("{literal}::TIMESTAMPTZ::DATE"),
        TimeKind::TimeTz => format!("{literal}::TIMESTAMPTZ::TIME{typmod} WITH TIME ZONE"),
        TimeKind::Timestamp => format!("{literal}::TIMESTAMPTZ::TIMESTAMP{typmod}"),
        TimeKind::Time => format!("{literal}::TIMESTAMPTZ::TIME{typmod}"),
        TimeKind::Text => {
            format!("to_char({literal}::TIMESTAMPTZ, 'Dy Mon DD HH24:MI:SS.US YYYY TZ')")
        }
    };
    parse_expr(dialect, &text)
}

/// Parse an expression capgate itself wrote (so a failure is a bug, reported as a refusal
/// rather than a panic).
pub(super) fn parse_expr(dialect: Dialect, text: &str) -> Option<Expr> {
    let d = dialect.parser_dialect();
    Parser::new(d.as_ref()).try_with_sql(text).and_then(|mut p| p.parse_expr()).ok()
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The instant as a PostgreSQL `timestamptz` literal in UTC with microseconds, quoted:
/// `'2026-11-25 08:00:00.123456+00'`. Instants before 1970 are supported; sub-microsecond
/// parts are dropped (PostgreSQL keeps microseconds).
pub fn timestamptz_literal(t: SystemTime) -> String {
    let micros: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    let secs = micros.div_euclid(1_000_000) as i64;
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("'{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06}+00'", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// The instant as MySQL's `SET TIMESTAMP` value: seconds since the epoch with microseconds.
pub fn unix_seconds(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}.{:06}", d.as_secs(), d.subsec_micros()),
        Err(_) => "0".to_owned(),
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
