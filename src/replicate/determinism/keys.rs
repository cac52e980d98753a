//! Generated keys: how the primary's sequence and identity values reach the replicas.
//!
//! [`make_deterministic`](super::make_deterministic) reports, for each INSERT, the columns it
//! leaves to a sequence or identity ([`GeneratedKey`]). The coordinator then:
//!
//! 1. runs [`preallocate_sql`] on the PRIMARY, inside the client's transaction: one column,
//!    `rows` values, in allocation order;
//! 2. sends [`with_generated_keys`] (one statement) or [`apply_generated_keys`] (the whole
//!    text) to BOTH sides: the statement with row i given the i-th value;
//! 3. after applying on a replica, runs [`advance_sequence_sql`] there, so that the replica's
//!    sequence is past every value the primary handed out (a failover then continues without
//!    collisions) — never moving it back.
//!
//! Everything here is pure text in, text out; nothing is run. The SQL made is PostgreSQL's.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Insert, InsertOverriding, ObjectName,
    ObjectNamePart, Query, SetExpr, Statement, TableObject, Value, VisitMut, VisitorMut,
};
use sqlparser::parser::Parser;

use super::functions::parse_expr;
use super::{pieces, GeneratedKey, NotDeterministic};
use crate::classify::{parts, DefaultKind, Dialect, TableName};

/// The `index`-th statement (0-based, as [`GeneratedKey::statement`] counts) of a text, without
/// the whitespace and comments around it. `None` past the last statement.
pub fn statement_text(sql: &str, dialect: Dialect, index: usize) -> Option<&str> {
    pieces(dialect, sql).into_iter().nth(index).map(|r| &sql[r])
}

/// The query that pre-allocates the key's values on the primary: one `bigint` column, one
/// row per VALUES row, in allocation order (`ORDER BY` the series: PostgreSQL evaluates a
/// volatile target after the sort). Sequence defaults name their sequence
/// (`nextval('…'::regclass)`); identity columns find theirs with `pg_get_serial_sequence`.
///
/// Refused: a key without a row count (INSERT … SELECT) and a sequence default that is not a
/// plain `nextval(…)` call.
pub fn preallocate_sql(key: &GeneratedKey) -> Result<String, NotDeterministic> {
    let Some(n) = key.rows else {
        return Err(refusal(
            key,
            format!(
                "{} (the {} of {}.{}) in an INSERT … SELECT (capgate pre-allocates keys only for INSERT … VALUES; list the rows in VALUES or give {} explicitly)",
                shown_default(key),
                kind_name(key.kind),
                key.table,
                key.column,
                key.column
            ),
        ));
    };
    let seq = sequence_regclass(key)?;
    Ok(format!("SELECT pg_catalog.nextval({seq}) FROM pg_catalog.generate_series(1, {n}) AS capgate_g(i) ORDER BY capgate_g.i"))
}

/// The query that moves the replica's sequence for `key` forward so that its next value
/// comes after `max_value` — the furthest value the primary handed out (the last of
/// [`preallocate_sql`]'s values; for a descending sequence, the smallest). It never moves the
/// sequence back: nothing happens when the sequence is already past it (its
/// `pg_sequence_last_value`, or its start when never used). Returns one row (`setval`'s
/// result) when it moved, none otherwise.
///
/// The sequence is found as [`preallocate_sql`] finds it; a sequence default that cannot be
/// read falls back to `pg_get_serial_sequence` (the sequence a serial column owns).
pub fn advance_sequence_sql(key: &GeneratedKey, max_value: i64) -> String {
    let seq = sequence_regclass(key).unwrap_or_else(|_| serial_sequence(key));
    format!(
        "SELECT pg_catalog.setval(q.seq, {max_value}) FROM (SELECT s.seqrelid::pg_catalog.regclass AS seq, s.seqincrement AS inc, s.seqstart AS start, pg_catalog.pg_sequence_last_value(s.seqrelid) AS last FROM pg_catalog.pg_sequence s WHERE s.seqrelid = {seq}) q \
         WHERE CASE WHEN q.inc > 0 THEN CASE WHEN q.last IS NULL THEN {max_value} >= q.start ELSE {max_value} > q.last END \
         ELSE CASE WHEN q.last IS NULL THEN {max_value} <= q.start ELSE {max_value} < q.last END END"
    )
}

/// Rewrite ONE statement (the text of `key.statement`, see [`statement_text`]) so that each
/// key's column gets its pre-allocated values: row i of the INSERT's VALUES gets the i-th
/// value as a literal. A column the INSERT does not list is added to the column list; a
/// listed column has its `DEFAULT` cells replaced (other cells are kept). `DEFAULT VALUES`
/// becomes a VALUES row of the keys. Identity columns get `OVERRIDING SYSTEM VALUE` (an
/// `OVERRIDING USER VALUE` becomes it, with every cell of the identity column replaced, as
/// the primary would have ignored them). ON CONFLICT, RETURNING, aliases and placeholders
/// are kept; the statement is re-printed (sqlparser's `to_string()`).
///
/// The INSERT may be nested (`WITH … INSERT`, a data-modifying CTE): each key goes to the one
/// INSERT into its table. Refused: INSERT … SELECT, an INSERT without a column list (the
/// column's position is not known), rows of a length other than the column list's, a count
/// of values other than the rows', a key whose table the statement does not insert into (or
/// inserts into twice), explicit values mixed with `DEFAULT` in a `GENERATED ALWAYS` identity
/// column, and a statement that does not parse.
pub fn with_generated_keys(sql_statement: &str, keys: &[(GeneratedKey, Vec<i64>)], dialect: Dialect) -> Result<String, NotDeterministic> {
    let Some((first, _)) = keys.first() else {
        return Ok(sql_statement.to_owned());
    };
    let d = dialect.parser_dialect();
    let mut stmts = match Parser::parse_sql(d.as_ref(), sql_statement) {
        Ok(s) if s.len() == 1 => s,
        _ => {
            return Err(refusal(
                first,
                format!(
                    "{} (the {} of {}.{}) in a statement capgate cannot parse",
                    shown_default(first),
                    kind_name(first.kind),
                    first.table,
                    first.column
                ),
            ))
        }
    };
    let mut v = KeyWriter { dialect, keys, matched: vec![0; keys.len()], error: None };
    let _ = stmts[0].visit(&mut v);
    if let Some(e) = v.error {
        return Err(e);
    }
    for ((key, _), n) in keys.iter().zip(&v.matched) {
        if *n != 1 {
            let why = if *n == 0 { "does not insert into" } else { "inserts more than once into" };
            return Err(refusal(
                key,
                format!(
                    "{} (the {} of {}.{}): the statement {why} {}",
                    shown_default(key),
                    kind_name(key.kind),
                    key.table,
                    key.column,
                    key.table
                ),
            ));
        }
    }
    Ok(stmts[0].to_string())
}

/// [`with_generated_keys`] over a whole text: each statement named by a key
/// ([`GeneratedKey::statement`]) is rewritten with its keys; the other statements and
/// everything between them are kept byte for byte.
pub fn apply_generated_keys(sql: &str, keys: &[(GeneratedKey, Vec<i64>)], dialect: Dialect) -> Result<String, NotDeterministic> {
    if keys.is_empty() {
        return Ok(sql.to_owned());
    }
    let ranges = pieces(dialect, sql);
    let mut out = String::with_capacity(sql.len() + 32 * keys.len());
    let mut at = 0;
    let mut indexes: Vec<usize> = keys.iter().map(|(k, _)| k.statement).collect();
    indexes.sort_unstable();
    indexes.dedup();
    for index in indexes {
        let mine: Vec<(GeneratedKey, Vec<i64>)> = keys.iter().filter(|(k, _)| k.statement == index).cloned().collect();
        let Some(range) = ranges.get(index) else {
            let key = &mine[0].0;
            return Err(refusal(key, format!("the generated keys of statement {index}, which the text does not have")));
        };
        let new = with_generated_keys(&sql[range.clone()], &mine, dialect)?;
        out.push_str(&sql[at..range.start]);
        out.push_str(&new);
        at = range.end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// Finds the INSERTs of the keys' tables and rewrites them.
struct KeyWriter<'k> {
    dialect: Dialect,
    keys: &'k [(GeneratedKey, Vec<i64>)],
    /// INSERTs found per key.
    matched: Vec<usize>,
    error: Option<NotDeterministic>,
}

impl VisitorMut for KeyWriter<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &mut Statement) -> ControlFlow<()> {
        let Statement::Insert(insert) = stmt else {
            return ControlFlow::Continue(());
        };
        let TableObject::TableName(name) = &insert.table else {
            return ControlFlow::Continue(());
        };
        let Some(target) = parts(self.dialect, name) else {
            return ControlFlow::Continue(());
        };
        let mine: Vec<&(GeneratedKey, Vec<i64>)> = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| names_table(&target, &k.table))
            .map(|(i, kv)| {
                self.matched[i] += 1;
                kv
            })
            .collect();
        if mine.is_empty() {
            return ControlFlow::Continue(());
        }
        match rewrite_insert(insert, &mine, self.dialect) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// Whether the folded parts of an INSERT's target name `table` (an unqualified name is
/// taken to be it: classification resolved it along the search_path).
fn names_table(target: &[String], table: &TableName) -> bool {
    match target {
        [name] => *name == table.name,
        [.., schema, name] => *name == table.name && *schema == table.schema,
        [] => false,
    }
}

/// Give one INSERT its keys' values.
fn rewrite_insert(insert: &mut Insert, keys: &[&(GeneratedKey, Vec<i64>)], dialect: Dialect) -> Result<(), NotDeterministic> {
    let first = &keys[0].0;
    let what = |key: &GeneratedKey, why: &str| {
        refusal(key, format!("{} (the {} of {}.{}) {why}", shown_default(key), kind_name(key.kind), key.table, key.column))
    };
    let identity = dialect == Dialect::Postgres && keys.iter().any(|(k, _)| k.kind == DefaultKind::Identity);
    let user_value = insert.overriding == Some(InsertOverriding::User);
    let given: Vec<Option<String>> = insert.columns.iter().map(|c| parts(dialect, c).and_then(|mut p| p.pop())).collect();

    // MySQL `INSERT … SET c = v`: one row of assignments.
    if !insert.assignments.is_empty() {
        for (key, values) in keys {
            let [value] = values.as_slice() else {
                return Err(what(key, &format!("given {} values for one row", values.len())));
            };
            let at = insert.assignments.iter_mut().find(|a| match &a.target {
                AssignmentTarget::ColumnName(n) => parts(dialect, n).and_then(|mut p| p.pop()).as_deref() == Some(key.column.as_str()),
                _ => false,
            });
            match at {
                Some(a) if is_default(&a.value) => a.value = number(*value),
                Some(_) => {}
                None => insert
                    .assignments
                    .push(Assignment { target: AssignmentTarget::ColumnName(object_name(dialect, &key.column)), value: number(*value) }),
            }
        }
        return Ok(());
    }

    let default_values = insert.source.is_none();
    if default_values {
        if !given.is_empty() {
            return Err(what(first, "in an INSERT with columns but no source"));
        }
        let mut row = Vec::new();
        for (key, values) in keys {
            let [value] = values.as_slice() else {
                return Err(what(key, &format!("given {} values for DEFAULT VALUES (one row)", values.len())));
            };
            row.push(number(*value).to_string());
        }
        let Some(q) = parse_query(dialect, &format!("VALUES ({})", row.join(", "))) else {
            return Err(what(first, "in DEFAULT VALUES"));
        };
        insert.source = Some(Box::new(q));
        for (key, _) in keys {
            insert.columns.push(object_name(dialect, &key.column));
        }
    } else {
        let Some(SetExpr::Values(v)) = insert.source.as_deref_mut().map(|q| q.body.as_mut()) else {
            return Err(what(first, "in an INSERT … SELECT (capgate pre-allocates keys only for INSERT … VALUES)"));
        };
        let all_empty = v.rows.iter().all(|r| r.content.is_empty());
        if given.is_empty() && !all_empty {
            return Err(what(
                first,
                &format!("in an INSERT without a column list (the position of {} is not known; name the columns)", first.column),
            ));
        }
        if let Some(r) = v.rows.iter().find(|r| r.content.len() != given.len()) {
            let why = format!("in an INSERT whose VALUES row has {} values for {} columns", r.content.len(), given.len());
            return Err(what(first, &why));
        }
        let mut added = Vec::new();
        for (key, values) in keys {
            if values.len() != v.rows.len() {
                let why = format!("given {} values for {} rows", values.len(), v.rows.len());
                return Err(what(key, &why));
            }
            let at = given.iter().position(|g| g.as_deref() == Some(key.column.as_str()));
            let Some(i) = at else {
                for (row, value) in v.rows.iter_mut().zip(values) {
                    row.content.push(number(*value));
                }
                added.push(object_name(dialect, &key.column));
                continue;
            };
            let own = key.kind == DefaultKind::Identity && user_value;
            let mut explicit = false;
            for (row, value) in v.rows.iter_mut().zip(values) {
                let cell = &mut row.content[i];
                if own || is_default(cell) {
                    *cell = number(*value);
                } else {
                    explicit = true;
                }
            }
            if explicit
                && key.kind == DefaultKind::Identity
                && insert.overriding.is_none()
                && key.default.to_ascii_lowercase().contains("always")
            {
                return Err(what(
                    key,
                    "mixed with explicit values (GENERATED ALWAYS refuses them; OVERRIDING SYSTEM VALUE would accept them)",
                ));
            }
        }
        insert.columns.extend(added);
    }
    if identity {
        insert.overriding = Some(InsertOverriding::System);
    }
    Ok(())
}

/// `DEFAULT` in a VALUES row or a SET clause.
fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

fn number(v: i64) -> Expr {
    Expr::value(Value::Number(v.to_string(), false))
}

/// A column name as the dialect quotes it, always quoted (it is the stored name).
fn object_name(dialect: Dialect, column: &str) -> ObjectName {
    let q = match dialect {
        Dialect::Postgres => '"',
        Dialect::MySql => '`',
    };
    ObjectName(vec![ObjectNamePart::Identifier(Ident::with_quote(q, column))])
}

fn parse_query(dialect: Dialect, text: &str) -> Option<Query> {
    let d = dialect.parser_dialect();
    let mut p = Parser::new(d.as_ref()).try_with_sql(text).ok()?;
    p.parse_query().ok().map(|b| *b)
}

/// The key's sequence as a `regclass` expression.
fn sequence_regclass(key: &GeneratedKey) -> Result<String, NotDeterministic> {
    match key.kind {
        DefaultKind::Identity => Ok(serial_sequence(key)),
        DefaultKind::Sequence => match nextval_sequence(&key.default) {
            Some(seq) => Ok(format!("{}::pg_catalog.regclass", literal(&seq))),
            None => Err(refusal(
                key,
                format!(
                    "{} (the default of {}.{}: not a plain nextval() call, so its sequence is not known)",
                    key.default, key.table, key.column
                ),
            )),
        },
        DefaultKind::Volatile => {
            Err(refusal(key, format!("{} (the default of {}.{}: not a sequence)", key.default, key.table, key.column)))
        }
    }
}

/// `pg_get_serial_sequence` for the key's column: identity columns and owned (serial)
/// sequences. The table is passed fully quoted (it is parsed as a name); the column is taken
/// literally.
fn serial_sequence(key: &GeneratedKey) -> String {
    let table = format!("{}.{}", quote_ident(&key.table.schema), quote_ident(&key.table.name));
    format!("pg_catalog.pg_get_serial_sequence({}, {})::pg_catalog.regclass", literal(&table), literal(&key.column))
}

/// The sequence a `nextval('…'::regclass)` default names, as the text of its regclass
/// literal (`public."Items_id_seq"`). Accepts surrounding parentheses and casts, and
/// `pg_catalog.nextval`; anything else (`'A-' || nextval(…)`) is `None`.
fn nextval_sequence(default: &str) -> Option<String> {
    let mut e = parse_expr(Dialect::Postgres, default)?;
    let f = loop {
        match e {
            Expr::Nested(inner) => e = *inner,
            Expr::Cast { expr, .. } => e = *expr,
            Expr::Function(f) => break f,
            _ => return None,
        }
    };
    let name: Vec<&Ident> = f.name.0.iter().filter_map(|p| p.as_ident()).collect();
    let is = |i: &Ident, s: &str| match i.quote_style {
        None => i.value.eq_ignore_ascii_case(s),
        Some(_) => i.value == s,
    };
    let named = match name.as_slice() {
        [n] => is(n, "nextval"),
        [s, n] => is(s, "pg_catalog") && is(n, "nextval"),
        _ => false,
    };
    if !named || name.len() != f.name.0.len() {
        return None;
    }
    let FunctionArguments::List(list) = f.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice() else {
        return None;
    };
    let mut arg = arg.clone();
    loop {
        match arg {
            Expr::Nested(inner) => arg = *inner,
            Expr::Cast { expr, .. } => arg = *expr,
            Expr::Value(v) => {
                return match v.value {
                    Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s),
                    _ => None,
                }
            }
            _ => return None,
        }
    }
}

/// A PostgreSQL string literal of `s`, readable whatever `standard_conforming_strings` is.
fn literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// An identifier, always double-quoted.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn kind_name(kind: DefaultKind) -> &'static str {
    match kind {
        DefaultKind::Identity => "identity",
        DefaultKind::Sequence => "sequence default",
        DefaultKind::Volatile => "default",
    }
}

/// The default as shown in messages (identity columns have no default text in the catalog).
fn shown_default(key: &GeneratedKey) -> String {
    match (key.kind, key.default.is_empty()) {
        (DefaultKind::Identity, true) => "GENERATED AS IDENTITY".to_owned(),
        _ => key.default.clone(),
    }
}

fn refusal(key: &GeneratedKey, what: String) -> NotDeterministic {
    NotDeterministic { function_or_construct: what, table: Some(key.table.clone()), statement: key.statement }
}
