//! Determinism tests: each time function pinned, defaults added, generated keys reported,
//! every refusal with its message, and untouched text returned byte for byte.

mod keys;
mod refusals;

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::classify::{ColumnDefault, FunctionInfo, Volatility};

/// 2026-11-25 08:00:00.123456 UTC
pub(super) const LIT: &str = "'2026-11-25 08:00:00.123456+00'";

pub(super) fn instant() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_795_593_600_123_456)
}

fn default(column: &str, kind: DefaultKind, expr: &str) -> ColumnDefault {
    ColumnDefault { column: column.into(), kind, expr: expr.into() }
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for t in ["orders", "events", "plain", "tokens", "audit"] {
        c.add_table(&TableName::new("public", t));
    }
    c.set_defaults(
        TableName::new("public", "orders"),
        vec![
            default("id", DefaultKind::Sequence, "nextval('orders_id_seq'::regclass)"),
            default("created_at", DefaultKind::Volatile, "now()"),
        ],
    );
    c.set_defaults(
        TableName::new("public", "events"),
        vec![
            default("id", DefaultKind::Identity, "generated always as identity"),
            default("at", DefaultKind::Volatile, "CURRENT_TIMESTAMP"),
            default("day", DefaultKind::Volatile, "(now() AT TIME ZONE 'utc'::text)::date"),
        ],
    );
    c.set_defaults(TableName::new("public", "tokens"), vec![default("token", DefaultKind::Volatile, "gen_random_uuid()")]);
    c.set_defaults(TableName::new("public", "audit"), vec![default("updated_at", DefaultKind::Volatile, "clock_timestamp()")]);
    let volatile = FunctionInfo { volatility: Volatility::Volatile, writes: Some(vec![]) };
    c.add_function("public", "next_code", volatile);
    let stable = FunctionInfo { volatility: Volatility::Stable, writes: None };
    c.add_function("public", "price_of", stable);
    c
}

pub(super) fn run_with<'s>(
    sql: &'s str,
    dialect: Dialect,
    pins: &Pins,
    allow: &dyn Fn(&TableName) -> bool,
) -> Result<Deterministic<'s>, NotDeterministic> {
    let cat = catalog();
    let path = SearchPath::default();
    let cx = Context { dialect, path: &path, catalog: &cat, pins, allow };
    make_deterministic(sql, &cx)
}

pub(super) fn det(sql: &str) -> Deterministic<'_> {
    run_with(sql, Dialect::Postgres, &Pins::at(instant()), &|_| false).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(super) fn rw(sql: &str) -> String {
    det(sql).sql.into_owned()
}

pub(super) fn refused(sql: &str) -> NotDeterministic {
    match run_with(sql, Dialect::Postgres, &Pins::at(instant()), &|_| false) {
        Ok(d) => panic!("accepted: {sql} -> {}", d.sql),
        Err(e) => e,
    }
}

pub(super) fn tz() -> String {
    format!("{LIT}::TIMESTAMPTZ")
}

// --- the literal ---

#[test]
fn literal_is_utc_with_microseconds() {
    assert_eq!(timestamptz_literal(instant()), LIT);
    assert_eq!(timestamptz_literal(UNIX_EPOCH), "'1970-01-01 00:00:00.000000+00'");
    assert_eq!(timestamptz_literal(UNIX_EPOCH + Duration::from_secs(951_782_400)), "'2000-02-29 00:00:00.000000+00'");
}

#[test]
fn literal_before_the_epoch() {
    let t = UNIX_EPOCH - Duration::from_micros(1);
    assert_eq!(timestamptz_literal(t), "'1969-12-31 23:59:59.999999+00'");
}

// --- each time function ---

#[test]
fn now_is_pinned() {
    assert_eq!(rw("UPDATE plain SET t = now() WHERE id = 1"), format!("UPDATE plain SET t = {} WHERE id = 1", tz()));
}

#[test]
fn current_timestamp_is_pinned() {
    assert_eq!(rw("UPDATE plain SET t = current_timestamp"), format!("UPDATE plain SET t = {}", tz()));
}

#[test]
fn current_timestamp_keeps_its_precision() {
    assert_eq!(rw("UPDATE plain SET t = current_timestamp(3)"), format!("UPDATE plain SET t = {}(3)", tz()));
}

#[test]
fn current_date_is_the_pinned_instant_as_a_date() {
    assert_eq!(rw("UPDATE plain SET d = current_date"), format!("UPDATE plain SET d = {}::DATE", tz()));
}

#[test]
fn current_time_is_a_time_with_time_zone() {
    assert_eq!(rw("UPDATE plain SET t = current_time"), format!("UPDATE plain SET t = {}::TIME WITH TIME ZONE", tz()));
}

#[test]
fn localtimestamp_is_a_timestamp_without_zone() {
    assert_eq!(rw("UPDATE plain SET t = localtimestamp"), format!("UPDATE plain SET t = {}::TIMESTAMP", tz()));
}

#[test]
fn localtime_is_a_time() {
    assert_eq!(rw("UPDATE plain SET t = localtime"), format!("UPDATE plain SET t = {}::TIME", tz()));
}

#[test]
fn transaction_statement_and_clock_timestamp_are_pinned() {
    let out = rw("UPDATE plain SET a = transaction_timestamp(), b = statement_timestamp(), c = clock_timestamp()");
    assert_eq!(out, format!("UPDATE plain SET a = {0}, b = {0}, c = {0}", tz()));
}

#[test]
fn timeofday_becomes_text_of_the_pinned_instant() {
    let out = rw("UPDATE plain SET s = timeofday()");
    assert_eq!(out, format!("UPDATE plain SET s = to_char({}, 'Dy Mon DD HH24:MI:SS.US YYYY TZ')", tz()));
}

#[test]
fn pg_catalog_qualified_now_is_pinned() {
    assert_eq!(rw("UPDATE plain SET t = pg_catalog.now()"), format!("UPDATE plain SET t = {}", tz()));
}

#[test]
fn upper_case_names_are_pinned() {
    assert_eq!(rw("UPDATE plain SET t = NOW()"), format!("UPDATE plain SET t = {}", tz()));
}

#[test]
fn every_occurrence_gets_the_same_instant() {
    let out = rw("UPDATE plain SET a = now(), b = now() + interval '1 day', c = current_timestamp WHERE t < now()");
    assert_eq!(out.matches(LIT).count(), 4, "{out}");
    assert!(!out.to_lowercase().contains("now()"), "{out}");
}

#[test]
fn special_time_inputs_with_a_type_are_pinned() {
    let out = rw("UPDATE plain SET a = 'now'::timestamptz, b = CAST('today' AS date), c = timestamp 'tomorrow', d = 'Yesterday'::date");
    assert_eq!(
        out,
        format!(
            "UPDATE plain SET a = {0}::TIMESTAMPTZ, b = {0}::DATE::DATE, c = ({0}::DATE + 1)::TIMESTAMP, d = ({0}::DATE - 1)::DATE",
            tz()
        )
    );
    let sql = "UPDATE plain SET note = 'now'::text, t = '2020-01-01'::timestamptz";
    assert_eq!(det(sql).sql, sql);
}

// --- where they hide ---

#[test]
fn time_functions_in_subqueries() {
    let out = rw("DELETE FROM plain WHERE id IN (SELECT id FROM events WHERE at < now() - interval '1 hour')");
    assert!(out.contains(&format!("at < {} - INTERVAL '1 hour'", tz())), "{out}");
}

#[test]
fn time_functions_in_insert_select() {
    let out = rw("INSERT INTO plain (id, t) SELECT id, now() FROM events");
    assert_eq!(out, format!("INSERT INTO plain (id, t) SELECT id, {} FROM events", tz()));
}

#[test]
fn time_functions_in_function_arguments() {
    let out = rw("UPDATE plain SET d = date_trunc('day', now()), e = coalesce(e, localtimestamp)");
    assert!(out.contains(&format!("date_trunc('day', {})", tz())), "{out}");
    assert!(out.contains(&format!("coalesce(e, {}::TIMESTAMP)", tz())), "{out}");
}

#[test]
fn on_conflict_do_update_is_pinned() {
    let out = rw("INSERT INTO plain (id, t) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET t = now()");
    assert_eq!(out.matches(LIT).count(), 2, "{out}");
}

#[test]
fn returning_is_pinned() {
    let out = rw("UPDATE plain SET x = 1 RETURNING id, now() AS at");
    assert!(out.ends_with(&format!("RETURNING id, {} AS at", tz())), "{out}");
}

#[test]
fn data_modifying_ctes_are_pinned() {
    let out =
        rw("WITH moved AS (DELETE FROM plain WHERE t < now() RETURNING *) INSERT INTO audit (id, updated_at) SELECT id, now() FROM moved");
    assert_eq!(out.matches(LIT).count(), 2, "{out}");
}

#[test]
fn multi_row_values_are_pinned() {
    let out = rw("INSERT INTO plain (id, t) VALUES (1, now()), (2, now()), (3, current_date)");
    assert_eq!(out.matches(LIT).count(), 3, "{out}");
}

// --- defaults ---

#[test]
fn omitted_time_default_is_added() {
    let d = det("INSERT INTO orders (id, item) VALUES (1, 'pen')");
    assert_eq!(d.sql, format!("INSERT INTO orders (id, item, \"created_at\") VALUES (1, 'pen', {})", tz()));
    assert!(d.generated_keys.is_empty());
}

#[test]
fn omitted_default_in_every_row() {
    let out = rw("INSERT INTO orders (id) VALUES (1), (2)");
    assert_eq!(out, format!("INSERT INTO orders (id, \"created_at\") VALUES (1, {0}), (2, {0})", tz()));
}

#[test]
fn omitted_default_under_insert_select() {
    let out = rw("INSERT INTO orders (id, item) SELECT id, name FROM plain WHERE id > $1");
    assert_eq!(out, format!("INSERT INTO orders (id, item, \"created_at\") SELECT id, name, {} FROM plain WHERE id > $1", tz()));
}

#[test]
fn omitted_default_under_a_union_wraps_the_source() {
    let out = rw("INSERT INTO orders (id) SELECT 1 UNION ALL SELECT 2");
    assert_eq!(
        out,
        format!("INSERT INTO orders (id, \"created_at\") SELECT capgate_src.*, {} FROM (SELECT 1 UNION ALL SELECT 2) AS capgate_src", tz())
    );
}

#[test]
fn default_values_get_the_pinned_columns() {
    let d = det("INSERT INTO events DEFAULT VALUES");
    assert!(d.sql.starts_with("INSERT INTO events (\"at\", \"day\") VALUES ("), "{}", d.sql);
    assert_eq!(d.sql.matches(LIT).count(), 2, "{}", d.sql);
    assert_eq!(d.generated_keys.len(), 1);
    assert_eq!(d.generated_keys[0].rows, Some(1));
}

#[test]
fn an_expression_default_is_pinned_whole() {
    let out = rw("INSERT INTO events (at) VALUES ($1)");
    assert_eq!(out, format!("INSERT INTO events (at, \"day\") VALUES ($1, ({} AT TIME ZONE 'utc'::TEXT)::DATE)", tz()));
}

#[test]
fn explicit_default_keyword_is_replaced() {
    let out = rw("INSERT INTO orders (id, created_at) VALUES (1, DEFAULT), (2, '2020-01-01')");
    assert_eq!(out, format!("INSERT INTO orders (id, created_at) VALUES (1, {}), (2, '2020-01-01')", tz()));
}

#[test]
fn update_set_default_is_pinned() {
    let out = rw("UPDATE audit SET updated_at = DEFAULT WHERE id = 3");
    assert_eq!(out, format!("UPDATE audit SET updated_at = {} WHERE id = 3", tz()));
}

#[test]
fn given_columns_leave_the_statement_untouched() {
    let sql = "INSERT INTO orders (id, created_at)   VALUES ($1, $2)";
    let d = det(sql);
    assert_eq!(d.sql, sql);
    assert!(!d.rewritten());
}

#[test]
fn sequence_keys_are_reported_with_the_row_count() {
    let d = det("INSERT INTO orders (item, created_at) VALUES ('a', $1), ('b', $2)");
    assert!(!d.rewritten());
    assert_eq!(
        d.generated_keys,
        vec![GeneratedKey {
            statement: 0,
            table: TableName::new("public", "orders"),
            column: "id".into(),
            kind: DefaultKind::Sequence,
            default: "nextval('orders_id_seq'::regclass)".into(),
            rows: Some(2),
        }]
    );
}

#[test]
fn identity_keys_under_insert_select_have_no_row_count() {
    let d = det("INSERT INTO events (at, day) SELECT t, d FROM plain");
    assert_eq!(d.generated_keys.len(), 1);
    assert_eq!(
        (d.generated_keys[0].column.as_str(), d.generated_keys[0].kind, d.generated_keys[0].rows),
        ("id", DefaultKind::Identity, None)
    );
}

#[test]
fn insert_without_a_column_list_reports_keys_and_refuses_time_defaults() {
    let e = refused("INSERT INTO orders VALUES (1, 'pen', now())");
    assert!(e.function_or_construct.contains("without a column list"), "{e}");
    assert!(e.to_string().contains("public.orders"), "{e}");
}

// --- byte-identical passthrough ---

#[test]
fn deterministic_statements_come_back_byte_identical() {
    for sql in [
        "update  plain set x = x + 1   where id = $1 -- comment",
        "INSERT INTO plain (id, t) VALUES (1, '2020-01-01'::timestamptz)",
        "DELETE FROM plain WHERE id IN (SELECT id FROM plain ORDER BY id LIMIT 10)",
        "SELECT random(), now()",
        "SET search_path TO public",
        "BEGIN; SELECT 1; COMMIT",
        "",
        "  ;  ; ",
    ] {
        let d = det(sql);
        assert!(matches!(d.sql, Cow::Borrowed(s) if s == sql), "{sql}");
    }
}

#[test]
fn only_rewritten_statements_are_reprinted() {
    let sql = "select  1 ;\nUPDATE plain SET t = now() WHERE note = 'a;b' ;  insert into plain (id) values (2);";
    let out = rw(sql);
    assert_eq!(out, format!("select  1 ;\nUPDATE plain SET t = {} WHERE note = 'a;b' ;  insert into plain (id) values (2);", tz()));
}

#[test]
fn placeholders_are_kept() {
    let out = rw("UPDATE plain SET t = now(), x = $1 WHERE id = $2");
    assert_eq!(out, format!("UPDATE plain SET t = {}, x = $1 WHERE id = $2", tz()));
}

#[test]
fn statement_index_is_reported() {
    let d = det("SELECT 1; INSERT INTO orders (item, created_at) VALUES ('a', $1)");
    assert_eq!(d.generated_keys[0].statement, 1);
    let e = refused("UPDATE plain SET x = 1; UPDATE plain SET y = random()");
    assert_eq!(e.statement, 1);
}
