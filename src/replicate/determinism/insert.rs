//! Column defaults: what an INSERT (or `UPDATE … SET c = DEFAULT`, or MERGE) leaves to the
//! table's defaults, and how the determinism rewrite pins or reports them.
//!
//! A default is evaluated on each side by that side's server, so a time-dependent one
//! differs and a sequence gives each side its own number. Time defaults are pinned by adding
//! the column with the pinned expression; sequence and identity defaults are reported as
//! generated keys for the coordinator.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, Insert, InsertOverriding, Merge, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, TableFactor, TableObject, Update,
};
use sqlparser::parser::Parser;

use super::functions::parse_expr;
use super::{GeneratedKey, Rewriter};
use crate::classify::{fold, parts, resolve, ColumnDefault, DefaultKind, Dialect, TableName};

/// `DEFAULT` in a VALUES row or a SET clause.
fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

impl Rewriter<'_, '_, '_> {
    fn table_of(&self, name: &ObjectName) -> Option<TableName> {
        resolve(self.cx.dialect, name, self.cx.path, self.cx.catalog)
    }

    /// The pinned form of a time-dependent default, or a refusal naming it.
    fn pinned_default(&mut self, table: &TableName, d: &ColumnDefault) -> ControlFlow<(), Option<Expr>> {
        let what = |f: &str| format!("{f} (the default of {table}.{})", d.column);
        let refused = match parse_expr(self.cx.dialect, &d.expr) {
            None => d.expr.clone(),
            Some(mut e) => match self.standalone(&mut e) {
                Ok(()) => return ControlFlow::Continue(Some(e)),
                Err(f) => f,
            },
        };
        // Allowed by the policy: left to the default, evaluated on each side.
        self.refuse(what(&refused), Some(table))?;
        ControlFlow::Continue(None)
    }

    fn column_ident(&self, column: &str) -> Ident {
        match self.cx.dialect {
            Dialect::Postgres => Ident::with_quote('"', column),
            Dialect::MySql => Ident::with_quote('`', column),
        }
    }

    pub(super) fn insert(&mut self, insert: &mut Insert) -> ControlFlow<()> {
        let TableObject::TableName(name) = &insert.table else {
            return ControlFlow::Continue(());
        };
        let Some(table) = self.table_of(name) else {
            return ControlFlow::Continue(());
        };
        let defaults = self.cx.catalog.defaults(&table).to_vec();
        if defaults.is_empty() {
            return ControlFlow::Continue(());
        }
        let given: Vec<Option<String>> = insert.columns.iter().map(|c| parts(self.cx.dialect, c).and_then(|mut p| p.pop())).collect();
        let no_column_list = given.is_empty() && insert.source.is_some();
        let rows = match insert.source.as_deref().map(|q| q.body.as_ref()) {
            Some(SetExpr::Values(v)) => Some(v.rows.len()),
            None => Some(1),
            Some(_) => None,
        };
        let mut added: Vec<(Ident, Expr)> = Vec::new();
        for d in &defaults {
            let at = given.iter().position(|g| g.as_deref() == Some(d.column.as_str()));
            // OVERRIDING USER VALUE: the identity's given values are ignored, every row
            // takes the sequence's.
            let overridden = at.is_some() && d.kind == DefaultKind::Identity && insert.overriding == Some(InsertOverriding::User);
            let explicit = overridden || at.is_some_and(|i| values_rows(insert).iter().any(|r| r.get(i).is_some_and(is_default)));
            let omitted = at.is_none() && !no_column_list;
            if !(omitted || explicit || no_column_list) {
                continue;
            }
            match d.kind {
                DefaultKind::Sequence | DefaultKind::Identity => {
                    self.out.generated_keys.push(GeneratedKey {
                        statement: self.index,
                        table: table.clone(),
                        column: d.column.clone(),
                        kind: d.kind,
                        default: d.expr.clone(),
                        rows,
                    });
                }
                DefaultKind::Volatile => {
                    let Some(pinned) = self.pinned_default(&table, d)? else {
                        continue;
                    };
                    if self.cx.dialect == Dialect::MySql {
                        continue; // SET TIMESTAMP pins it (set by pinned_default).
                    }
                    if no_column_list {
                        let what = format!(
                            "an INSERT without a column list (name the columns so capgate can pin {}, the default of {table}.{})",
                            d.expr, d.column
                        );
                        self.refuse(what, Some(&table))?;
                        continue;
                    }
                    if let Some(i) = at {
                        for row in values_rows_mut(insert) {
                            if let Some(cell) = row.get_mut(i).filter(|c| is_default(c)) {
                                *cell = pinned.clone();
                            }
                        }
                        self.changed = true;
                    } else {
                        added.push((self.column_ident(&d.column), pinned));
                    }
                }
            }
        }
        if !added.is_empty() {
            self.add_columns(insert, added, &table)?;
        }
        ControlFlow::Continue(())
    }

    /// Add columns with their values to every row the INSERT makes.
    fn add_columns(&mut self, insert: &mut Insert, added: Vec<(Ident, Expr)>, table: &TableName) -> ControlFlow<()> {
        let exprs: Vec<Expr> = added.iter().map(|(_, e)| e.clone()).collect();
        match insert.source.as_deref_mut() {
            None => {
                // DEFAULT VALUES
                let list: Vec<String> = exprs.iter().map(Expr::to_string).collect();
                let Some(q) = self.parse_query(&format!("VALUES ({})", list.join(", "))) else {
                    return self.refuse("DEFAULT VALUES".to_owned(), Some(table));
                };
                insert.source = Some(Box::new(q));
            }
            Some(q) => match q.body.as_mut() {
                SetExpr::Values(v) => {
                    for row in v.rows.iter_mut() {
                        row.extend(exprs.iter().cloned());
                    }
                }
                SetExpr::Select(s) => {
                    s.projection.extend(exprs.iter().cloned().map(SelectItem::UnnamedExpr));
                }
                _ => {
                    // UNION, a parenthesised query …: select from it.
                    let list: Vec<String> = exprs.iter().map(Expr::to_string).collect();
                    let text = format!("SELECT capgate_src.*, {} FROM ({q}) AS capgate_src", list.join(", "));
                    let Some(wrapped) = self.parse_query(&text) else {
                        return self.refuse("an INSERT source capgate cannot extend".to_owned(), Some(table));
                    };
                    *q = wrapped;
                }
            },
        }
        for (ident, _) in added {
            insert.columns.push(ObjectName(vec![ObjectNamePart::Identifier(ident)]));
        }
        self.changed = true;
        ControlFlow::Continue(())
    }

    fn parse_query(&self, text: &str) -> Option<Query> {
        let d = self.cx.dialect.parser_dialect();
        let mut p = Parser::new(d.as_ref()).try_with_sql(text).ok()?;
        p.parse_query().ok().map(|b| *b)
    }

    /// `UPDATE t SET c = DEFAULT`: a time default is pinned, a sequence default refused.
    pub(super) fn update_defaults(&mut self, u: &mut Update) -> ControlFlow<()> {
        let TableFactor::Table { name, .. } = &u.table.relation else {
            return ControlFlow::Continue(());
        };
        let Some(table) = self.table_of(name) else {
            return ControlFlow::Continue(());
        };
        let defaults = self.cx.catalog.defaults(&table).to_vec();
        for a in u.assignments.iter_mut() {
            if !is_default(&a.value) {
                continue;
            }
            let column = match &a.target {
                sqlparser::ast::AssignmentTarget::ColumnName(n) => n.0.last().and_then(|p| p.as_ident()).map(|i| fold(self.cx.dialect, i)),
                _ => None,
            };
            let Some(d) = column.and_then(|c| defaults.iter().find(|d| d.column == c)) else {
                continue;
            };
            match d.kind {
                DefaultKind::Sequence | DefaultKind::Identity => {
                    let what = format!("SET {} = DEFAULT ({}, the default of {table}.{})", d.column, d.expr, d.column);
                    self.refuse(what, Some(&table))?;
                }
                DefaultKind::Volatile => {
                    if let Some(pinned) = self.pinned_default(&table, d)? {
                        if self.cx.dialect == Dialect::Postgres {
                            a.value = pinned;
                            self.changed = true;
                        }
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// MERGE's INSERT actions may leave columns to their defaults; not rewritten yet, so a
    /// MERGE into a table with such defaults is refused.
    pub(super) fn merge(&mut self, m: &mut Merge) -> ControlFlow<()> {
        let TableFactor::Table { name, .. } = &m.table else {
            return ControlFlow::Continue(());
        };
        let Some(table) = self.table_of(name) else {
            return ControlFlow::Continue(());
        };
        if let Some(d) = self.cx.catalog.defaults(&table).first() {
            let what =
                format!("MERGE into a table with a generated or time-dependent default ({}, the default of {table}.{})", d.expr, d.column);
            return self.refuse(what, Some(&table));
        }
        ControlFlow::Continue(())
    }
}

/// The VALUES rows of an INSERT (empty for other sources).
fn values_rows(insert: &Insert) -> Vec<&Vec<Expr>> {
    match insert.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(v)) => v.rows.iter().map(|r| &r.content).collect(),
        _ => Vec::new(),
    }
}

fn values_rows_mut(insert: &mut Insert) -> Vec<&mut Vec<Expr>> {
    match insert.source.as_deref_mut().map(|q| q.body.as_mut()) {
        Some(SetExpr::Values(v)) => v.rows.iter_mut().map(|r| &mut r.content).collect(),
        _ => Vec::new(),
    }
}
