//! Which tables a MySQL multi-table UPDATE or DELETE writes.
//!
//! `UPDATE a JOIN b ON … SET b.x = a.y` writes `b` and reads `a`; `DELETE t1 FROM t1 JOIN t2`
//! and `DELETE FROM t1 USING t1 JOIN t2` write `t1` and read `t2`. The written tables are
//! named through the statement's table references — often by alias, as WordPress's
//! `DELETE a, b FROM wp_options a, wp_options b …` does — so each name is looked up among
//! those references, never taken for a table name of its own. A column whose table cannot be
//! told (unqualified, with several tables joined) counts as writing every joined table: a
//! superset, never a silent miss.

use sqlparser::ast::{AssignmentTarget, Delete, FromTable, ObjectName, TableFactor, TableWithJoins, Update};

use crate::classify::names::{self, TableName};
use crate::classify::walk::Walker;

/// One base table among a statement's table references.
struct Ref<'a> {
    /// The name as written in the references (its address marks it as a read or not).
    name: &'a ObjectName,
    /// The alias, when one is declared: the statement must then use it.
    alias: Option<String>,
    /// The table it resolves to.
    table: TableName,
}

/// The base tables of `from`, joins and parenthesized joins included (derived tables and
/// table functions are not write targets; the walk reads what is inside them).
fn refs<'a>(w: &mut Walker, from: &'a [TableWithJoins]) -> Vec<Ref<'a>> {
    let mut out = Vec::new();
    for twj in from {
        collect(w, twj, &mut out);
    }
    out
}

fn collect<'a>(w: &mut Walker, twj: &'a TableWithJoins, out: &mut Vec<Ref<'a>>) {
    for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
        match factor {
            TableFactor::Table { name, alias, args: None, .. } => {
                if let Some(table) = w.resolve(name) {
                    let alias = alias.as_ref().map(|a| a.name.value.clone());
                    out.push(Ref { name, alias, table });
                }
            }
            TableFactor::NestedJoin { table_with_joins, .. } => collect(w, table_with_joins, out),
            _ => {}
        }
    }
}

/// The references a qualifier (`a` in `a.col`, `db.t` in `db.t.col`, or a DELETE target)
/// names: by alias, else by table name (exact, then ignoring case as MySQL does on servers
/// with `lower_case_table_names` set).
fn named<'r, 'a>(refs: &'r [Ref<'a>], qualifier: &[String]) -> Vec<&'r Ref<'a>> {
    let matches = |exact: bool| -> Vec<&'r Ref<'a>> {
        let eq = |a: &str, b: &str| if exact { a == b } else { a.eq_ignore_ascii_case(b) };
        refs.iter()
            .filter(|r| match qualifier {
                [one] => match &r.alias {
                    Some(alias) => eq(alias, one),
                    None => eq(&r.table.name, one),
                },
                [db, table] => r.alias.is_none() && eq(&r.table.schema, db) && eq(&r.table.name, table),
                _ => false,
            })
            .collect()
    };
    let exact = matches(true);
    if exact.is_empty() {
        matches(false)
    } else {
        exact
    }
}

/// Record `r` as written: its table is a target and its name in the references not a read.
fn write(w: &mut Walker, r: &Ref) {
    w.skip_name(r.name);
    w.acc.write(r.table.clone());
}

/// `UPDATE a JOIN b … SET …` (the caller handles the single-table form): the tables the SET
/// list assigns to.
pub(in crate::classify) fn update(w: &mut Walker, update: &Update) {
    let refs = refs(w, std::slice::from_ref(&update.table));
    let columns = update.assignments.iter().flat_map(|a| match &a.target {
        AssignmentTarget::ColumnName(c) => std::slice::from_ref(c),
        AssignmentTarget::Tuple(cs) => cs.as_slice(),
    });
    for column in columns {
        let Some(mut parts) = names::parts(w.dialect(), column) else {
            w.acc.unknown(format!("cannot name the column {column}"));
            continue;
        };
        parts.pop();
        let targets = if parts.is_empty() { refs.iter().collect() } else { named(&refs, &parts) };
        if targets.is_empty() {
            w.acc.unknown(format!("cannot tell which table the column {column} belongs to"));
        }
        for r in targets {
            write(w, r);
        }
    }
}

/// `DELETE t1, t2 FROM …` and `DELETE FROM t1, t2 USING …`: the listed tables, looked up
/// among the references. `false` when `delete` is the single-table form (the caller's).
pub(in crate::classify) fn delete(w: &mut Walker, delete: &Delete) -> bool {
    let from = match &delete.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    let (targets, references): (Vec<&ObjectName>, &[TableWithJoins]) = match (&delete.using, delete.tables.is_empty()) {
        (_, false) => (delete.tables.iter().collect(), from),
        (Some(using), true) => {
            let listed = from.iter().filter_map(|twj| match &twj.relation {
                TableFactor::Table { name, .. } => Some(name),
                _ => None,
            });
            (listed.collect(), using)
        }
        (None, true) => return false,
    };
    let refs = refs(w, references);
    for target in targets {
        let Some(qualifier) = names::parts(w.dialect(), target) else {
            w.target(target);
            continue;
        };
        let found = named(&refs, &qualifier);
        match found.first() {
            // An alias names exactly one reference; a bare table name used twice without
            // aliases is refused by the server, so the first is as good as any.
            Some(r) => {
                w.skip_name(target);
                write(w, r);
            }
            None => w.target(target),
        }
    }
    true
}
