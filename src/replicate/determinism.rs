//! Deterministic statements: the text capgate sends to the primary AND to every replica, so
//! that a replayed statement makes the same rows everywhere (DESIGN.md, "determinism").
//!
//! Protocol-neutral: it takes SQL text, a [`Dialect`], the session's [`SearchPath`], the
//! [`Catalog`] and the values capgate pinned for this statement ([`Pins`]), and knows nothing
//! of wire messages. It never guesses: what it cannot make deterministic is refused with a
//! [`NotDeterministic`] that names the function and the table, unless the caller's policy
//! allows it for that table (`nondeterministic = "allow"`), in which case the construct is
//! left as it is and reported in [`Deterministic::allowed`] for the log.
//!
//! What is done:
//! - PostgreSQL time functions (`now()`, `current_timestamp`, `current_date`, `current_time`,
//!   `localtimestamp`, `localtime`, `transaction_timestamp()`, `statement_timestamp()`,
//!   `clock_timestamp()`, `timeofday()`) become casts of ONE `timestamptz` literal, the
//!   caller's [`Pins::timestamp`]: `'2026-11-25 08:00:00.123456+00'::TIMESTAMPTZ`, `…::DATE`,
//!   `…::TIME WITH TIME ZONE` … The date and time forms are casts rather than literals
//!   because PostgreSQL computes them in the session's TimeZone; capgate runs the replayed
//!   statement with the same TimeZone. To keep `now()`'s meaning (transaction start), pass
//!   the same pins for every statement of a transaction.
//! - Columns an INSERT leaves to a time-dependent default (catalog [`DefaultKind::Volatile`]
//!   whose expression only involves time functions) are added to the INSERT with the pinned
//!   expression — also under INSERT … SELECT, DEFAULT VALUES and an explicit `DEFAULT`.
//! - Columns an INSERT leaves to a sequence or identity default are reported in
//!   [`Deterministic::generated_keys`]; the statement is not changed for them (see
//!   "Generated keys" below for what the caller does with them).
//! - PostgreSQL's special inputs `'now'`, `'today'`, `'tomorrow'`, `'yesterday'` are pinned
//!   where their type is written (`'now'::timestamptz`, `date 'today'`); an untyped `'now'`
//!   given to a timestamp column is NOT seen (that needs column types in the catalog).
//! - `current_user` / `session_user` become the literal [`Pins::user`] when given.
//! - MySQL: time functions are not rewritten; [`Deterministic::set_timestamp`] tells the
//!   caller to send `SET TIMESTAMP = …` before the statement on every side, as MySQL's own
//!   statement-based replication does.
//!
//! What is refused: random values (`random()`, `gen_random_uuid()`, `uuid_generate_v4()` …),
//! transaction ids and connection facts (`txid_current()`, `pg_backend_pid()` …), explicit
//! sequence calls (`nextval`, `setval`, `currval`, `lastval`), volatile user functions (from
//! the catalog), LIMIT without ORDER BY inside a write, a volatile default that is not a time
//! function, an INSERT without a column list into a table with a time-dependent default
//! (the omitted columns cannot be known), MERGE into a table with such defaults.
//!
//! Generated keys (functions in `determinism/keys.rs`; pure text, the coordinator and the
//! outbox run them): for each [`GeneratedKey`] the primary's values must reach the replica.
//! - [`preallocate_sql`]: with `rows = Some(n)` (INSERT … VALUES, n rows; DEFAULT VALUES is
//!   one) the coordinator runs, on the primary inside the client's transaction,
//!   `SELECT pg_catalog.nextval(<seq>) FROM pg_catalog.generate_series(1, n) AS capgate_g(i)
//!   ORDER BY capgate_g.i` — one column, n values in allocation order. `<seq>` is the
//!   `'…'::regclass` literal of the `nextval(…)` default (a default that is not a plain
//!   `nextval` call is refused), or for identity columns
//!   `pg_get_serial_sequence('"schema"."table"', 'column')`.
//! - [`with_generated_keys`] (one statement, the text [`statement_text`] picks for
//!   [`GeneratedKey::statement`]) or [`apply_generated_keys`] (the whole text, others kept byte
//!   for byte): what is sent to BOTH sides — each key column added to the column list with
//!   row i given the i-th value as a literal, or its `DEFAULT` cells replaced when it is
//!   listed; `DEFAULT VALUES` becomes a VALUES row; identity columns get
//!   `OVERRIDING SYSTEM VALUE` (an `OVERRIDING USER VALUE`, whose given identity values the
//!   primary would ignore, is reported as a key for every row and becomes it). ON CONFLICT,
//!   RETURNING and placeholders are kept; an INSERT in a data-modifying CTE is found.
//! - [`advance_sequence_sql`]: run on the replica after applying; moves the replica's
//!   sequence past the furthest value the primary handed out and never back (compares with
//!   `pg_sequence_last_value`, or the start of a sequence never used; descending sequences
//!   too), so a failover continues without collisions.
//!
//! Not done here: `rows = None` (INSERT … SELECT) is refused by [`preallocate_sql`] and
//! [`with_generated_keys`]; carrying those rows needs the primary to run the statement with
//! `RETURNING <column>` and the replica to get an INSERT … VALUES of the returned rows. An
//! INSERT without a column list cannot be given its keys (the column's position is not
//! known) and is refused. The sequence names of `nextval('…'::regclass)` defaults are as the
//! catalog loader's session printed them: an unqualified one is resolved along the
//! search_path of the session that runs the SQL.
//!
//! Statements with nothing to rewrite come back byte-identical (borrowed, not re-printed);
//! in a text with several statements only the rewritten ones are re-printed (sqlparser's
//! `to_string()`), the others and everything between them are kept byte for byte.
//! Parameter placeholders (`$1` …) are kept as they are.

mod functions;
mod insert;
mod keys;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::ops::ControlFlow;
use std::time::SystemTime;

use sqlparser::ast::{Expr, Query, Statement, VisitMut, VisitorMut};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::classify::{classify, is_dml, limited_without_order, Catalog, DefaultKind, Dialect, Kind, SearchPath, TableName};

pub use functions::{timestamptz_literal, unix_seconds};
pub use keys::{advance_sequence_sql, apply_generated_keys, preallocate_sql, statement_text, with_generated_keys};

/// SQLSTATE of a refusal: feature_not_supported.
pub const SQLSTATE: &str = "0A000";

/// The values capgate chose for one statement (or one transaction), sent to every side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// The instant every time function of the statement stands for (UTC; microseconds kept).
    pub timestamp: SystemTime,
    /// The session's user, for `current_user` / `session_user` (the replica's session runs
    /// as capgate's replication user). `None`: those are refused.
    pub user: Option<String>,
}

impl Pins {
    /// Pin the instant only.
    pub fn at(timestamp: SystemTime) -> Pins {
        Pins { timestamp, user: None }
    }
}

/// What the caller needs besides the text.
pub struct Context<'a> {
    pub dialect: Dialect,
    pub path: &'a SearchPath,
    pub catalog: &'a Catalog,
    pub pins: &'a Pins,
    /// Whether the policy allows non-deterministic writes to a table
    /// ([`crate::policy::Policy::allows_nondeterministic`]).
    pub allow: &'a dyn Fn(&TableName) -> bool,
}

/// The deterministic form of a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deterministic<'s> {
    /// The text to send to the primary and to the replicas. Borrowed when nothing changed.
    pub sql: Cow<'s, str>,
    /// Columns whose values come from a sequence or identity on the primary: the caller must
    /// carry the primary's values to the replicas (see the module header).
    pub generated_keys: Vec<GeneratedKey>,
    /// MySQL: send `SET TIMESTAMP = <unix_seconds(pins.timestamp)>` before the statement on
    /// every side (and reset it after).
    pub set_timestamp: bool,
    /// Non-deterministic constructs left in place because the table's policy allows them;
    /// the caller logs them.
    pub allowed: Vec<NotDeterministic>,
}

impl Deterministic<'_> {
    /// Whether the text differs from the input.
    pub fn rewritten(&self) -> bool {
        matches!(self.sql, Cow::Owned(_))
    }
}

/// One column whose value the primary generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// Which statement of the text (0-based).
    pub statement: usize,
    pub table: TableName,
    pub column: String,
    /// Sequence (serial, `nextval` default) or identity.
    pub kind: DefaultKind,
    /// The default as the catalog shows it (names the sequence).
    pub default: String,
    /// Rows of an INSERT … VALUES (`None` for INSERT … SELECT and unknown counts).
    pub rows: Option<usize>,
}

/// A construct that cannot be made deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotDeterministic {
    /// `random()`, `public.f()`, `LIMIT without ORDER BY`, `gen_random_uuid() (the default of
    /// public.t.id)` …
    pub function_or_construct: String,
    /// The replicated table the statement writes (None when it cannot be told).
    pub table: Option<TableName>,
    /// Which statement of the text (0-based).
    pub statement: usize,
}

impl NotDeterministic {
    /// What to do about it, for the error's HINT.
    pub fn hint(&self) -> String {
        let rule = match &self.table {
            Some(t) => format!("on the policy rule for {t}"),
            None => "on the table's policy rule".to_owned(),
        };
        format!("compute the value in the application and pass it as a parameter ($1), or set nondeterministic = \"allow\" {rule} to accept different values on the replicas knowingly (each use is then logged)")
    }
}

impl fmt::Display for NotDeterministic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = match &self.table {
            Some(t) => t.to_string(),
            None => "a replicated table".to_owned(),
        };
        write!(
            f,
            "capgate refused this write to {table}: {} cannot be made deterministic, so the replicas would get different rows than the primary; {}",
            self.function_or_construct,
            self.hint()
        )
    }
}

impl std::error::Error for NotDeterministic {}

/// Make `sql` deterministic (see the module header).
pub fn make_deterministic<'s>(sql: &'s str, cx: &Context<'_>) -> Result<Deterministic<'s>, NotDeterministic> {
    let mut out = Deterministic { sql: Cow::Borrowed(sql), generated_keys: Vec::new(), set_timestamp: false, allowed: Vec::new() };
    let literal = timestamptz_literal(cx.pins.timestamp);
    let mut replacements: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for (index, range) in pieces(cx.dialect, sql).into_iter().enumerate() {
        let piece = &sql[range.clone()];
        if let Some(text) = statement(piece, index, cx, &literal, &mut out)? {
            replacements.push((range, text));
        }
    }
    if !replacements.is_empty() {
        let mut text = String::with_capacity(sql.len() + 64);
        let mut at = 0;
        for (range, new) in replacements {
            text.push_str(&sql[at..range.start]);
            text.push_str(&new);
            at = range.end;
        }
        text.push_str(&sql[at..]);
        out.sql = Cow::Owned(text);
    }
    Ok(out)
}

/// Byte ranges of the statements of `sql`, split at top-level semicolons found by the
/// dialect's tokenizer (so semicolons in strings, comments and dollar quotes do not split).
/// Ranges holding only whitespace and comments are dropped. A text the tokenizer rejects is
/// one piece.
fn pieces(dialect: Dialect, sql: &str) -> Vec<std::ops::Range<usize>> {
    let d = dialect.parser_dialect();
    let Ok(tokens) = Tokenizer::new(d.as_ref(), sql).tokenize_with_location() else {
        return whole(sql);
    };
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let col = usize::try_from(column).ok()?.checked_sub(1)?;
        match sql[start..].char_indices().nth(col) {
            Some((i, _)) => Some(start + i),
            None => Some(sql.len()),
        }
    };
    // Each piece runs from its first to its last token that is neither whitespace nor a
    // comment, so what surrounds a re-printed statement stays as it was.
    let mut out = Vec::new();
    let mut piece: Option<std::ops::Range<usize>> = None;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => out.extend(piece.take()),
            Token::Whitespace(_) => {}
            _ => {
                let (Some(s), Some(e)) = (offset(t.span.start.line, t.span.start.column), offset(t.span.end.line, t.span.end.column))
                else {
                    return whole(sql);
                };
                match &mut piece {
                    Some(p) => p.end = e.max(p.end),
                    None => piece = Some(s..e.max(s)),
                }
            }
        }
    }
    out.extend(piece);
    out
}

/// The whole text as one piece.
fn whole(sql: &str) -> Vec<std::ops::Range<usize>> {
    let all = 0..sql.len();
    vec![all]
}

/// One statement: `Some(new text)` when rewritten.
fn statement(
    piece: &str,
    index: usize,
    cx: &Context<'_>,
    literal: &str,
    out: &mut Deterministic<'_>,
) -> Result<Option<String>, NotDeterministic> {
    let class = classify(cx.dialect, piece, cx.path, cx.catalog);
    let Some(class) = class.statements.first() else {
        return Ok(None);
    };
    // Reads, session and transaction statements run on the primary only; DDL is replayed
    // as written (a literal would change a DEFAULT for good). Every write is parsed and
    // walked, even when classification saw nothing non-deterministic: it does not report
    // `SET c = DEFAULT`, `'now'::timestamptz`, or anything in a statement it could not parse.
    if !matches!(class.kind, Kind::Write | Kind::Unknown(_)) {
        return Ok(None);
    }
    let d = cx.dialect.parser_dialect();
    let mut stmts = match Parser::parse_sql(d.as_ref(), piece) {
        Ok(s) if s.len() == 1 => s,
        // Unknown anyway: the policy's `unknown` decides, not this.
        _ if matches!(class.kind, Kind::Unknown(_)) => return Ok(None),
        _ => {
            let e = NotDeterministic {
                function_or_construct: "a write capgate cannot parse (so cannot check)".to_owned(),
                table: class.writes.iter().find(|t| !(cx.allow)(t)).cloned(),
                statement: index,
            };
            if e.table.is_none() && !class.writes.is_empty() {
                out.allowed.push(NotDeterministic { table: class.writes.first().cloned(), ..e });
                return Ok(None);
            }
            return Err(e);
        }
    };
    let writes = class.writes.clone();
    let mut rw = Rewriter { cx, literal, index, writes: &writes, dml_depth: 0, changed: false, error: None, out };
    let Some(stmt) = stmts.first_mut() else {
        return Ok(None);
    };
    let _ = stmt.visit(&mut rw);
    if let Some(e) = rw.error {
        return Err(e);
    }
    Ok(rw.changed.then(|| stmt.to_string()))
}

/// The walk over one statement.
struct Rewriter<'r, 'c, 's> {
    cx: &'r Context<'c>,
    /// The pinned instant as a quoted PostgreSQL literal.
    literal: &'r str,
    /// The statement's index in the text.
    index: usize,
    /// The tables the statement writes (from classification), for messages and `allow`.
    writes: &'r [TableName],
    /// INSERT/UPDATE/DELETE/MERGE statements around the current point.
    dml_depth: usize,
    changed: bool,
    /// The first refusal; the walk stops there.
    error: Option<NotDeterministic>,
    out: &'r mut Deterministic<'s>,
}

impl Rewriter<'_, '_, '_> {
    /// A construct that cannot be made deterministic in a write to `table` (default: the
    /// statement's written tables). Allowed when the policy allows it for every such table.
    fn refuse(&mut self, what: String, table: Option<&TableName>) -> ControlFlow<()> {
        let tables: Vec<&TableName> = match table {
            Some(t) => vec![t],
            None => self.writes.iter().collect(),
        };
        let refused = tables.iter().find(|t| !(self.cx.allow)(t));
        let e = NotDeterministic {
            function_or_construct: what,
            table: refused.or(tables.first()).map(|t| (*t).clone()),
            statement: self.index,
        };
        if refused.is_none() && !tables.is_empty() {
            if !self.out.allowed.contains(&e) {
                self.out.allowed.push(e);
            }
            return ControlFlow::Continue(());
        }
        self.error = Some(e);
        ControlFlow::Break(())
    }

    /// A function call or a pinned value: replace, refuse or keep.
    fn expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some(pinned) = functions::special_time_input(self.cx.dialect, e, self.literal) {
            *e = pinned;
            self.changed = true;
            return ControlFlow::Continue(());
        }
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let user = self.cx.pins.user.as_deref();
        let c = self.cx;
        match functions::call(c.dialect, c.path, c.catalog, f, self.literal, user) {
            functions::Call::Keep => ControlFlow::Continue(()),
            functions::Call::Pin(new) => {
                *e = *new;
                self.changed = true;
                ControlFlow::Continue(())
            }
            functions::Call::SessionTimestamp => {
                self.out.set_timestamp = true;
                ControlFlow::Continue(())
            }
            functions::Call::Refuse(what) => self.refuse(what, None),
        }
    }

    /// Rewrite an expression on its own (a column default): `Err` names what is refused.
    fn standalone(&mut self, e: &mut Expr) -> Result<(), String> {
        let mut inner = ExprOnly { rw: self, refused: None };
        let _ = e.visit(&mut inner);
        match inner.refused {
            Some(what) => Err(what),
            None => Ok(()),
        }
    }
}

/// Walks a default expression: pins time functions, reports the first other
/// non-deterministic call.
struct ExprOnly<'a, 'r, 'c, 's> {
    rw: &'a mut Rewriter<'r, 'c, 's>,
    refused: Option<String>,
}

impl VisitorMut for ExprOnly<'_, '_, '_, '_> {
    type Break = ();

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let c = self.rw.cx;
        let user = c.pins.user.as_deref();
        match functions::call(c.dialect, c.path, c.catalog, f, self.rw.literal, user) {
            functions::Call::Keep => ControlFlow::Continue(()),
            functions::Call::Pin(new) => {
                *e = *new;
                ControlFlow::Continue(())
            }
            functions::Call::SessionTimestamp => {
                self.rw.out.set_timestamp = true;
                ControlFlow::Continue(())
            }
            functions::Call::Refuse(what) => {
                self.refused = Some(what);
                ControlFlow::Break(())
            }
        }
    }
}

impl VisitorMut for Rewriter<'_, '_, '_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &mut Statement) -> ControlFlow<()> {
        match stmt {
            Statement::Insert(insert) => {
                self.dml_depth += 1;
                self.insert(insert)?;
            }
            Statement::Update(u) => {
                self.dml_depth += 1;
                if u.limit.is_some() && u.order_by.is_empty() {
                    self.refuse("UPDATE … LIMIT without ORDER BY".to_owned(), None)?;
                }
                self.update_defaults(u)?;
            }
            Statement::Delete(d) => {
                self.dml_depth += 1;
                if d.limit.is_some() && d.order_by.is_empty() {
                    self.refuse("DELETE … LIMIT without ORDER BY".to_owned(), None)?;
                }
            }
            Statement::Merge(m) => {
                self.dml_depth += 1;
                self.merge(m)?;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, stmt: &mut Statement) -> ControlFlow<()> {
        if is_dml(stmt) {
            self.dml_depth = self.dml_depth.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if self.dml_depth > 0 && limited_without_order(q) {
            return self.refuse("LIMIT without ORDER BY in a write".to_owned(), None);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        self.expr(e)
    }
}
