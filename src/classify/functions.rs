//! Function calls: which may write (and what), which are non-deterministic.
//!
//! Built-ins are known here; everything else is asked of the [`Catalog`]. A function this
//! module cannot vouch for never passes as harmless: it makes the statement `unknown`.

use sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, ObjectName, Value};
use sqlparser::parser::Parser;

use super::catalog::Volatility;
use super::names::{self, TableName};
use super::walk::{Acc, Ctx};
use super::Dialect;

/// What a built-in function means for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    /// Immutable or stable and the same on every site: nothing to report.
    Pure,
    /// Writes no table but gives a different answer on another site or at another time.
    Nondeterministic,
    /// Volatile but writes no table and its result does not end up in data (sleep, locks,
    /// settings, notifications).
    Harmless,
    /// `nextval` / `setval`: a write to the sequence named by the first argument.
    SequenceWrite,
    /// `currval` / `lastval`: reads this session's sequence state.
    SequenceRead,
    /// Writes something the classifier cannot name (large objects).
    Unnamed,
}

/// Built-ins of the dialect, by lower-case name, called with `nargs` arguments.
fn builtin(dialect: Dialect, name: &str, nargs: usize) -> Option<Builtin> {
    match dialect {
        Dialect::Postgres => pg_builtin(name),
        Dialect::MySql => super::mysql::builtin(name, nargs),
    }
}

/// PostgreSQL's `pg_catalog` functions.
fn pg_builtin(name: &str) -> Option<Builtin> {
    use Builtin::*;
    Some(match name {
        "now" | "current_timestamp" | "current_date" | "current_time" | "localtimestamp" | "localtime"
        | "clock_timestamp" | "statement_timestamp" | "transaction_timestamp" | "timeofday" | "random"
        | "random_normal" | "gen_random_uuid" | "uuid_generate_v1" | "uuid_generate_v1mc" | "uuid_generate_v4"
        | "uuidv4" | "uuidv7" | "txid_current" | "txid_current_if_assigned" | "pg_current_xact_id"
        // The session and the server.
        | "pg_backend_pid" | "inet_client_addr" | "inet_client_port" | "inet_server_addr" | "current_user"
        | "session_user" | "user" | "pg_postmaster_start_time" | "gen_random_bytes" => Nondeterministic,
        "pg_sleep" | "pg_sleep_for" | "pg_sleep_until" | "set_config" | "pg_notify"
        // Advisory locks.
        | "pg_advisory_lock" | "pg_advisory_lock_shared" | "pg_advisory_unlock" | "pg_advisory_unlock_shared"
        | "pg_advisory_unlock_all" | "pg_advisory_xact_lock" | "pg_advisory_xact_lock_shared" | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" | "pg_try_advisory_xact_lock" | "pg_try_advisory_xact_lock_shared"
        | "pg_cancel_backend" | "pg_terminate_backend" | "setseed" => Harmless,
        "nextval" | "setval" => SequenceWrite,
        "currval" | "lastval" => SequenceRead,
        "lo_import" | "lo_create" | "lo_creat" | "lo_unlink" | "lo_from_bytea" | "lo_put" | "lowrite" => Unnamed,
        // Aggregates, window functions, string, number, date, array, JSON and catalog helpers
        // that ORMs and people commonly write. All immutable or stable in pg_proc.
        "count" | "sum" | "avg" | "min" | "max" | "coalesce" | "nullif" | "greatest" | "least" | "lower"
        | "upper" | "length" | "char_length" | "character_length" | "octet_length" | "substring" | "substr"
        | "trim" | "btrim" | "ltrim" | "rtrim" | "concat" | "concat_ws" | "replace" | "position" | "strpos"
        | "left" | "right" | "lpad" | "rpad" | "split_part" | "regexp_replace" | "regexp_matches"
        | "regexp_match" | "regexp_split_to_array" | "initcap" | "reverse" | "repeat" | "translate"
        | "to_char" | "to_date" | "to_timestamp" | "to_number" | "date_trunc" | "date_part" | "date_bin"
        | "extract" | "age" | "make_date" | "make_time" | "make_timestamp" | "make_timestamptz" | "make_interval"
        | "justify_days" | "justify_hours" | "justify_interval" | "isfinite" | "abs" | "round" | "ceil"
        | "ceiling" | "floor" | "trunc" | "mod" | "power" | "pow" | "sqrt" | "exp" | "ln" | "log" | "sign"
        | "div" | "width_bucket" | "array_agg" | "string_agg" | "json_agg" | "jsonb_agg" | "json_object_agg"
        | "jsonb_object_agg" | "json_build_object" | "jsonb_build_object" | "json_build_array"
        | "jsonb_build_array" | "row_to_json" | "to_json" | "to_jsonb" | "array_to_json" | "jsonb_set"
        | "jsonb_insert" | "jsonb_strip_nulls" | "jsonb_pretty" | "jsonb_typeof" | "json_typeof"
        | "jsonb_extract_path" | "jsonb_extract_path_text" | "json_extract_path" | "json_extract_path_text"
        | "jsonb_array_length" | "json_array_length" | "jsonb_array_elements" | "jsonb_array_elements_text"
        | "json_array_elements" | "json_array_elements_text" | "jsonb_each" | "jsonb_each_text" | "json_each"
        | "json_each_text" | "jsonb_object_keys" | "json_object_keys" | "jsonb_path_query"
        | "jsonb_path_exists" | "jsonb_to_record" | "jsonb_to_recordset" | "json_populate_record" | "unnest"
        | "array_length" | "array_position" | "array_positions" | "array_remove" | "array_append"
        | "array_prepend" | "array_cat" | "array_dims" | "array_lower" | "array_upper" | "array_to_string"
        | "string_to_array" | "cardinality" | "generate_series" | "generate_subscripts" | "row_number"
        | "rank" | "dense_rank" | "lag" | "lead" | "first_value" | "last_value" | "nth_value" | "ntile"
        | "percent_rank" | "cume_dist" | "percentile_cont" | "percentile_disc" | "mode" | "bool_and"
        | "bool_or" | "every" | "bit_and" | "bit_or" | "stddev" | "stddev_pop" | "stddev_samp" | "variance"
        | "var_pop" | "var_samp" | "corr" | "md5" | "sha224" | "sha256" | "sha384" | "sha512" | "encode"
        | "decode" | "digest" | "hmac" | "crypt" | "format" | "quote_ident" | "quote_literal"
        | "quote_nullable" | "to_tsvector" | "to_tsquery" | "plainto_tsquery" | "phraseto_tsquery"
        | "websearch_to_tsquery" | "ts_rank" | "ts_rank_cd" | "ts_headline" | "setweight" | "similarity"
        | "word_similarity" | "pg_typeof" | "version" | "current_database" | "current_schema"
        | "current_schemas" | "current_catalog" | "current_setting" | "current_role" | "has_table_privilege"
        | "has_schema_privilege" | "has_database_privilege" | "pg_table_is_visible" | "pg_get_indexdef"
        | "pg_get_constraintdef" | "pg_get_expr" | "pg_get_serial_sequence" | "pg_get_userbyid"
        | "format_type" | "obj_description" | "col_description" | "pg_relation_size" | "pg_total_relation_size"
        | "pg_size_pretty" | "pg_is_in_recovery" | "pg_encoding_to_char" | "array_fill" | "num_nonnulls"
        | "num_nulls" | "chr" | "ascii" | "bit_length" | "starts_with" | "overlay" | "to_hex" | "int4range"
        | "int8range" | "numrange" | "tsrange" | "tstzrange" | "daterange" | "lower_inc" | "upper_inc"
        | "isempty" | "point" | "box" | "circle" | "st_distance" | "st_dwithin" | "st_makepoint"
        | "st_setsrid" | "st_asgeojson" | "json_object" | "json_array" | "char" | "cast" | "convert" | "any"
        // Parsed as functions in some positions.
        | "all" | "exists" => Pure,
        _ => return None,
    })
}

/// Classify one call of `name` with `args` (`has_parens` false for SQL value functions such
/// as `current_timestamp`).
pub(super) fn call(ctx: &Ctx, acc: &mut Acc, name: &ObjectName, has_parens: bool, args: &[FunctionArg]) {
    routine(ctx, acc, name, has_parens, args, false)
}

/// Classify `CALL name(args)`: procedures share no names with built-in functions.
pub(super) fn procedure(ctx: &Ctx, acc: &mut Acc, name: &ObjectName, args: &[FunctionArg]) {
    routine(ctx, acc, name, true, args, true)
}

fn routine(ctx: &Ctx, acc: &mut Acc, name: &ObjectName, has_parens: bool, args: &[FunctionArg], procedure: bool) {
    let Some(mut parts) = names::parts(ctx.dialect, name) else {
        acc.unknown(format!("cannot name the function {name}"));
        return;
    };
    let Some(mut fname) = parts.pop() else { return };
    // MySQL routine names are case-insensitive (identifiers keep their case).
    if ctx.dialect == Dialect::MySql {
        fname = fname.to_lowercase();
    }
    let schema = parts.pop();
    let shown = |n: &str| {
        if has_parens {
            format!("{n}()")
        } else {
            n.to_owned()
        }
    };
    let builtin_schema = match ctx.dialect {
        Dialect::Postgres => schema.is_none() || schema.as_deref() == Some("pg_catalog"),
        Dialect::MySql => schema.is_none(),
    };
    if builtin_schema && !procedure {
        if let Some(b) = builtin(ctx.dialect, &fname, args.len()) {
            match b {
                Builtin::Pure | Builtin::Harmless => {}
                Builtin::Nondeterministic => acc.nondeterministic(shown(&fname)),
                Builtin::SequenceRead => acc.nondeterministic(shown(&fname)),
                Builtin::SequenceWrite => {
                    acc.nondeterministic(shown(&fname));
                    match args.first().and_then(|a| sequence_arg(ctx, a)) {
                        Some(seq) => acc.write(seq),
                        None => acc.unknown(format!("{fname}() with a sequence name that is not a literal")),
                    }
                }
                Builtin::Unnamed => acc.unknown(format!("{fname}() writes large objects, which are not replicated")),
            }
            return;
        }
    }
    let candidates: Vec<String> = match schema {
        Some(s) => vec![s],
        None => ctx.path.schemas().to_vec(),
    };
    let found = candidates.iter().find_map(|s| ctx.catalog.function(s, &fname).map(|info| (s, info)));
    let what = if procedure { "procedure" } else { "function" };
    match found {
        Some((_, info)) if info.volatility != Volatility::Volatile => {}
        Some((s, info)) => {
            acc.nondeterministic(format!("{}()", TableName::new(s.as_str(), fname.as_str())));
            match &info.writes {
                Some(tables) => tables.iter().cloned().for_each(|t| acc.write(t)),
                None => acc.unknown(format!(
                    "calls the volatile {what} {}(), which may write any table; name the tables it writes in the policy's [[function]]",
                    TableName::new(s.as_str(), fname.as_str())
                )),
            }
        }
        None if ctx.catalog.is_complete() => {}
        None => {
            let shown = match candidates.first() {
                Some(s) if name.0.len() > 1 || (procedure && ctx.dialect == Dialect::MySql) => {
                    format!("{}()", TableName::new(s.as_str(), fname.as_str()))
                }
                _ => format!("{fname}()"),
            };
            let built_in = if procedure { "" } else { "not a known built-in and " };
            acc.unknown(format!("calls {shown}, which is {built_in}not in the catalog: it may write; name it in the policy's [[function]]"))
        }
    }
}

/// The sequence `nextval` and `setval` write: PostgreSQL names it in a string
/// (`nextval('seq')`), MariaDB as a name (`NEXTVAL(seq)`).
fn sequence_arg(ctx: &Ctx, arg: &FunctionArg) -> Option<TableName> {
    match ctx.dialect {
        Dialect::Postgres => literal(arg).and_then(|s| sequence_name(ctx, s)),
        Dialect::MySql => {
            let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg else {
                return None;
            };
            let idents = match e {
                Expr::Identifier(i) => vec![i.clone()],
                Expr::CompoundIdentifier(v) => v.clone(),
                _ => return None,
            };
            let name = ObjectName(idents.into_iter().map(sqlparser::ast::ObjectNamePart::Identifier).collect());
            names::resolve(ctx.dialect, &name, ctx.path, ctx.catalog)
        }
    }
}

/// The string in `nextval('seq')` or `nextval('seq'::regclass)`.
fn literal(arg: &FunctionArg) -> Option<&str> {
    let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg else {
        return None;
    };
    let mut e = e;
    while let Expr::Cast { expr, .. } = e {
        e = expr;
    }
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// A regclass literal such as `'public."Order_seq"'`, parsed with the dialect's own parser
/// (so quoting and folding are the same as for names in SQL text).
fn sequence_name(ctx: &Ctx, text: &str) -> Option<TableName> {
    let dialect = ctx.parser_dialect();
    let mut parser = Parser::new(dialect.as_ref()).try_with_sql(text).ok()?;
    let name = parser.parse_object_name(false).ok()?;
    names::resolve(ctx.dialect, &name, ctx.path, ctx.catalog)
}
