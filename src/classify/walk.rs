//! One walk over a parsed statement: the tables it reads and writes, the functions it calls,
//! its non-deterministic parts.
//!
//! Built on sqlparser's `Visitor`, which reaches every subquery and expression, with the two
//! things `visit_relations` gets wrong fixed here: a name that refers to a CTE in scope is not
//! a table, and a write target (or a table function's name) is not a read.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FromTable, FunctionArguments, LimitClause, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor,
    TableObject, Visit, Visitor,
};

use super::catalog::Catalog;
use super::functions;
use super::names::{self, SearchPath, TableName};
use super::Dialect;

/// What the walk needs to resolve names: it never changes during one classification.
pub(super) struct Ctx<'a> {
    pub dialect: Dialect,
    pub path: &'a SearchPath,
    pub catalog: &'a Catalog,
}

impl Ctx<'_> {
    /// The parser dialect for this text: MySQL's follows the session's `sql_mode`.
    pub fn parser_dialect(&self) -> Box<dyn sqlparser::dialect::Dialect> {
        match self.dialect {
            Dialect::Postgres => self.dialect.parser_dialect(),
            Dialect::MySql => super::mysql::parser_dialect(self.path.sql_mode()),
        }
    }
}

/// MySQL without a current database: the server refuses the name (error 1046).
fn no_database(name: &dyn std::fmt::Display) -> String {
    format!("no database selected: `{name}` names no database and the session has no current database (USE one, or qualify the name)")
}

/// What the walk found, in the order found, without duplicates.
#[derive(Debug, Default)]
pub(super) struct Acc {
    pub writes: Vec<TableName>,
    pub reads: Vec<TableName>,
    pub nondeterministic: Vec<String>,
    /// The first reason the statement's effect cannot be determined.
    pub unknown: Option<String>,
    /// The statement has FOR UPDATE / FOR SHARE somewhere: its reads are also locks.
    pub locking: bool,
    /// `SELECT … INTO new_table` creates a table.
    pub creates: bool,
}

impl Acc {
    pub fn write(&mut self, t: TableName) {
        if !self.writes.contains(&t) {
            self.writes.push(t);
        }
    }
    pub fn read(&mut self, t: TableName) {
        if !self.reads.contains(&t) {
            self.reads.push(t);
        }
    }
    pub fn nondeterministic(&mut self, what: String) {
        if !self.nondeterministic.contains(&what) {
            self.nondeterministic.push(what);
        }
    }
    pub fn unknown(&mut self, reason: String) {
        self.unknown.get_or_insert(reason);
    }
}

/// The visitor's state.
pub(super) struct Walker<'a> {
    ctx: &'a Ctx<'a>,
    pub acc: Acc,
    /// Names (by address in this AST) that are not reads: write targets, table functions.
    skip: HashSet<*const ObjectName>,
    /// CTE names visible at the current point, innermost query last.
    ctes: Vec<Vec<String>>,
    /// How many INSERT/UPDATE/DELETE/MERGE statements enclose the current point.
    dml_depth: usize,
}

impl<'a> Walker<'a> {
    pub fn new(ctx: &'a Ctx<'a>) -> Walker<'a> {
        Walker { ctx, acc: Acc::default(), skip: HashSet::new(), ctes: Vec::new(), dml_depth: 0 }
    }

    /// Walk `stmt`; the results are in `self.acc`.
    pub fn walk(&mut self, stmt: &Statement) {
        let _ = stmt.visit(self);
    }

    pub fn dialect(&self) -> Dialect {
        self.ctx.dialect
    }

    /// Resolve a name, or note that it cannot be.
    pub fn resolve(&mut self, name: &ObjectName) -> Option<TableName> {
        let t = names::resolve(self.ctx.dialect, name, self.ctx.path, self.ctx.catalog);
        if t.is_none() {
            let reason = match self.ctx.dialect {
                Dialect::MySql if name.0.len() == 1 && self.ctx.path.schemas().is_empty() => no_database(name),
                _ => format!("cannot resolve the name {name}"),
            };
            self.acc.unknown(reason);
        }
        t
    }

    /// `name` is written by the statement (and so not reported as read).
    pub fn target(&mut self, name: &ObjectName) {
        self.skip.insert(name as *const ObjectName);
        if let Some(t) = self.resolve(name) {
            self.acc.write(t);
        }
    }

    /// `name` is not a read (the caller records it).
    pub fn skip_name(&mut self, name: &ObjectName) {
        self.skip.insert(name as *const ObjectName);
    }

    /// `name` is touched by a utility statement or locked; reported as read, visited once.
    pub fn touched(&mut self, name: &ObjectName) {
        self.skip.insert(name as *const ObjectName);
        if let Some(t) = self.resolve(name) {
            self.acc.read(t);
        }
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        if name.0.len() != 1 {
            return false;
        }
        let Some(parts) = names::parts(self.ctx.dialect, name) else {
            return false;
        };
        self.ctes.iter().rev().any(|scope| scope.iter().any(|c| Some(c) == parts.first()))
    }

    fn dml_target_of_table_factor(&mut self, tf: &TableFactor) {
        if let TableFactor::Table { name, .. } = tf {
            self.target(name);
        }
    }

    fn insert_defaults(&mut self, insert: &sqlparser::ast::Insert, table: &TableName) {
        let defaults = self.ctx.catalog.defaults(table);
        if defaults.is_empty() {
            return;
        }
        let given: Vec<String> =
            insert.columns.iter().filter_map(|c| names::parts(self.ctx.dialect, c).and_then(|mut p| p.pop())).collect();
        let explicit_default = |col: &str| -> bool {
            let Some(i) = given.iter().position(|g| g == col) else {
                return false;
            };
            let Some(SetExpr::Values(v)) = insert.source.as_deref().map(|q| q.body.as_ref()) else {
                return false;
            };
            v.rows.iter().any(|row| {
                matches!(row.get(i), Some(Expr::Identifier(id)) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
            })
        };
        for d in defaults {
            // Without a column list we cannot tell which values are given: report every
            // default (the conservative answer).
            if given.is_empty() || !given.contains(&d.column) || explicit_default(&d.column) {
                let what = format!("{} (default of {}.{})", d.expr, table, d.column);
                self.acc.nondeterministic(what);
            }
        }
    }
}

/// A query with LIMIT/FETCH and no ORDER BY: which rows it picks is up to each server.
/// Shared with the determinism rewriter, which refuses the same construct.
pub(crate) fn limited_without_order(q: &Query) -> bool {
    let limited = match &q.limit_clause {
        Some(LimitClause::LimitOffset { limit, .. }) => limit.is_some(),
        Some(LimitClause::OffsetCommaLimit { .. }) => true,
        None => false,
    };
    (limited || q.fetch.is_some()) && q.order_by.is_none()
}

/// INSERT, UPDATE, DELETE or MERGE: the statements inside which a LIMIT without ORDER BY
/// decides which rows are written.
pub(crate) fn is_dml(stmt: &Statement) -> bool {
    matches!(stmt, Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_))
}

/// `TABLE name` (SetExpr::Table) names its table as strings, not an ObjectName.
fn table_commands(body: &SetExpr, out: &mut Vec<(Option<String>, String)>) {
    match body {
        SetExpr::Table(t) => {
            if let Some(name) = &t.table_name {
                out.push((t.schema_name.as_ref().map(|s| s.value.clone()), name.value.clone()));
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            table_commands(left, out);
            table_commands(right, out);
        }
        _ => {}
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        match stmt {
            Statement::Insert(insert) => {
                self.dml_depth += 1;
                match &insert.table {
                    TableObject::TableName(name) => {
                        self.target(name);
                        if let Some(t) = names::resolve(self.ctx.dialect, name, self.ctx.path, self.ctx.catalog) {
                            self.insert_defaults(insert, &t);
                        }
                    }
                    _ => self.acc.unknown("INSERT into a table function".to_owned()),
                }
            }
            Statement::Update(update) => {
                self.dml_depth += 1;
                if self.ctx.dialect == Dialect::MySql && !update.table.joins.is_empty() {
                    super::mysql::update_targets(self, update);
                } else {
                    self.dml_target_of_table_factor(&update.table.relation);
                }
                if update.limit.is_some() && update.order_by.is_empty() {
                    self.acc.nondeterministic("LIMIT without ORDER BY".to_owned());
                }
            }
            Statement::Delete(delete) => {
                self.dml_depth += 1;
                if self.ctx.dialect == Dialect::MySql && super::mysql::delete_targets(self, delete) {
                    // A multi-table DELETE: its targets are recorded.
                } else if delete.tables.is_empty() {
                    let from = match &delete.from {
                        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                    };
                    for twj in from {
                        self.dml_target_of_table_factor(&twj.relation);
                    }
                } else {
                    for name in &delete.tables {
                        self.target(name);
                    }
                }
                if delete.limit.is_some() && delete.order_by.is_empty() {
                    self.acc.nondeterministic("LIMIT without ORDER BY".to_owned());
                }
            }
            Statement::Merge(merge) => {
                self.dml_depth += 1;
                self.dml_target_of_table_factor(&merge.table);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        if is_dml(stmt) {
            self.dml_depth = self.dml_depth.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let scope = match &q.with {
            Some(with) => with.cte_tables.iter().map(|c| names::fold(self.ctx.dialect, &c.alias.name)).collect(),
            None => Vec::new(),
        };
        self.ctes.push(scope);
        if !q.locks.is_empty() {
            self.acc.locking = true;
        }
        if self.dml_depth > 0 && limited_without_order(q) {
            self.acc.nondeterministic("LIMIT without ORDER BY".to_owned());
        }
        let mut tables = Vec::new();
        table_commands(&q.body, &mut tables);
        for (schema, name) in tables {
            let t = match (schema, self.ctx.dialect) {
                (Some(s), _) => TableName::new(s, name),
                (None, Dialect::Postgres) => names::resolve_unqualified(name, self.ctx.path, self.ctx.catalog),
                (None, Dialect::MySql) => match self.ctx.path.schemas().first() {
                    Some(db) => TableName::new(db.as_str(), name),
                    None => {
                        self.acc.unknown(no_database(&name));
                        continue;
                    }
                },
            };
            self.acc.read(t);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        // PostgreSQL's SELECT … INTO new_table (MySQL's INTO targets are variables or files).
        if let (Some(into), Dialect::Postgres) = (&select.into, self.ctx.dialect) {
            for target in &into.targets {
                let idents = match target {
                    Expr::Identifier(i) => vec![i.clone()],
                    Expr::CompoundIdentifier(v) => v.clone(),
                    _ => continue,
                };
                let name = ObjectName(idents.into_iter().map(ObjectNamePart::Identifier).collect());
                self.acc.creates = true;
                if let Some(t) = self.resolve(&name) {
                    self.acc.write(t);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Table { name, args: Some(args), .. } => {
                self.skip.insert(name as *const ObjectName);
                functions::call(self.ctx, &mut self.acc, name, true, &args.args);
            }
            TableFactor::Function { name, args, .. } => {
                self.skip.insert(name as *const ObjectName);
                functions::call(self.ctx, &mut self.acc, name, true, args);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        if self.skip.contains(&(name as *const ObjectName)) || self.is_cte(name) {
            return ControlFlow::Continue(());
        }
        if let Some(t) = self.resolve(name) {
            self.acc.read(t);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let (has_parens, args) = match &f.args {
                FunctionArguments::None => (false, &[][..]),
                FunctionArguments::Subquery(_) => (true, &[][..]),
                FunctionArguments::List(l) => (true, l.args.as_slice()),
            };
            functions::call(self.ctx, &mut self.acc, &f.name, has_parens, args);
        }
        ControlFlow::Continue(())
    }
}
