//! One parsed statement → its [`StatementClass`]: the kind from the statement's type, the
//! tables from a [`Walker`] plus the statement types whose tables sqlparser's visitor misses
//! (COPY, DROP, TRUNCATE, ALTER … RENAME, LOCK, VACUUM, CREATE INDEX …).

use sqlparser::ast::{
    AlterTableOperation, CopySource, Expr, ObjectName, ObjectType, RenameTableNameKind, Reset, Set, Statement, Use, Value,
};

use super::names;
use super::walk::{Ctx, Walker};
use super::{Dialect, Kind, SessionChange, StatementClass, TxControl};

/// Classify one parsed statement.
pub(super) fn classify(ctx: &Ctx, stmt: &Statement) -> StatementClass {
    let mut w = Walker::new(ctx);
    let kind = match stmt {
        // A MySQL stored program's body runs when it is called or fired, not now: the
        // definition changes no rows (a trigger changes its table's behaviour).
        Statement::CreateTrigger(t) if ctx.dialect == Dialect::MySql => {
            w.target(&t.table_name);
            return finish(Kind::Ddl, w);
        }
        Statement::CreateProcedure { .. } | Statement::CreateFunction(_) if ctx.dialect == Dialect::MySql => {
            return StatementClass::of_kind(Kind::Ddl);
        }
        Statement::Query(_) => Kind::Read,
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_) => Kind::Write,
        Statement::Copy { source, to, .. } => match source {
            CopySource::Table { table_name, .. } if !*to => {
                w.target(table_name);
                Kind::Write
            }
            CopySource::Table { table_name, .. } => {
                w.touched(table_name);
                Kind::Read
            }
            CopySource::Query(_) => Kind::Read,
        },
        Statement::Truncate(t) => {
            t.table_names.iter().for_each(|n| w.target(&n.name));
            Kind::Write
        }
        Statement::RefreshMaterializedView(r) => {
            w.target(&r.name);
            Kind::Write
        }
        Statement::LoadData { table_name, .. } => {
            w.target(table_name);
            Kind::Write
        }
        Statement::Drop { temporary: true, names, .. } if ctx.dialect == Dialect::MySql => {
            // MySQL's temporary tables belong to the session: nothing to replicate.
            names.iter().for_each(|n| w.skip_name(n));
            Kind::Ddl
        }
        Statement::Drop { object_type, names, table, .. } => {
            if matches!(
                object_type,
                ObjectType::Table | ObjectType::View | ObjectType::MaterializedView | ObjectType::Sequence | ObjectType::ForeignTable
            ) {
                names.iter().for_each(|n| w.target(n));
            }
            if let Some(t) = table {
                w.target(t);
            }
            Kind::Ddl
        }
        Statement::AlterTable(a) => {
            w.target(&a.name);
            for op in &a.operations {
                if let AlterTableOperation::RenameTable { table_name: RenameTableNameKind::As(new) | RenameTableNameKind::To(new) } = op {
                    renamed(&mut w, ctx, &a.name, new);
                }
            }
            Kind::Ddl
        }
        Statement::RenameTable(renames) => {
            for r in renames {
                w.target(&r.old_name);
                w.target(&r.new_name);
            }
            Kind::Ddl
        }
        Statement::CreateTable(c) if c.temporary && ctx.dialect == Dialect::MySql => {
            // MySQL's temporary tables belong to the session (in its current database, hiding
            // a table of the same name): nothing to replicate.
            w.skip_name(&c.name);
            Kind::Ddl
        }
        Statement::CreateTable(c) if c.temporary && c.name.0.len() == 1 => {
            // Temporary tables live in the session's own pg_temp schema: never replicated.
            w.skip_name(&c.name);
            if let Some(name) = names::parts(ctx.dialect, &c.name).and_then(|mut p| p.pop()) {
                w.acc.write(names::TableName::new("pg_temp", name));
            }
            Kind::Ddl
        }
        Statement::CreateTable(c) => {
            w.target(&c.name);
            if let Some(sqlparser::ast::CreateTableLikeKind::Plain(like) | sqlparser::ast::CreateTableLikeKind::Parenthesized(like)) =
                &c.like
            {
                w.touched(&like.name);
            }
            Kind::Ddl
        }
        Statement::CreateView(v) => {
            w.target(&v.name);
            Kind::Ddl
        }
        Statement::CreateIndex(i) => {
            w.target(&i.table_name);
            Kind::Ddl
        }
        Statement::CreateSequence { name, .. } => {
            w.target(name);
            Kind::Ddl
        }
        Statement::AlterView(v) => {
            w.target(&v.name);
            Kind::Ddl
        }
        Statement::Lock(l) => {
            l.tables.iter().for_each(|t| w.touched(&t.name));
            w.acc.locking = true;
            Kind::Utility
        }
        Statement::LockTables { tables } => {
            for t in tables {
                if let Some(t) = w.resolve(&ObjectName::from(vec![t.table.clone()])) {
                    w.acc.read(t);
                }
            }
            w.acc.locking = true;
            Kind::Utility
        }
        Statement::UnlockTables => Kind::Utility,
        Statement::Vacuum(v) => {
            if let Some(t) = &v.table_name {
                w.touched(t);
            }
            Kind::Utility
        }
        Statement::Analyze(a) => {
            if let Some(t) = &a.table_name {
                w.touched(t);
            }
            Kind::Utility
        }
        Statement::Call(f) => {
            let args = match &f.args {
                sqlparser::ast::FunctionArguments::List(l) => l.args.as_slice(),
                _ => &[],
            };
            super::functions::procedure(ctx, &mut w.acc, &f.name, args);
            Kind::Utility
        }
        Statement::Explain { analyze, statement, .. } => return explain(ctx, *analyze, statement),
        Statement::Execute { .. } => {
            Kind::Unknown("EXECUTE of a statement prepared with SQL PREPARE: its text is not in this statement".to_owned())
        }
        Statement::StartTransaction { .. } => Kind::Transaction(TxControl::Begin),
        Statement::Commit { .. } => Kind::Transaction(TxControl::Commit),
        Statement::Rollback { savepoint: Some(s), .. } => Kind::Transaction(TxControl::RollbackTo(names::fold(ctx.dialect, s))),
        Statement::Rollback { .. } => Kind::Transaction(TxControl::Rollback),
        Statement::Savepoint { name } => Kind::Transaction(TxControl::Savepoint(names::fold(ctx.dialect, name))),
        Statement::ReleaseSavepoint { name } => Kind::Transaction(TxControl::Release(names::fold(ctx.dialect, name))),
        Statement::Set(set) => Kind::Session(session_set(ctx, set)),
        Statement::Reset(r) => Kind::Session(match &r.reset {
            Reset::ALL => SessionChange::ResetAll,
            Reset::ConfigurationParameter(n) if is_search_path(ctx, n) => SessionChange::ResetSearchPath,
            _ => SessionChange::Other,
        }),
        Statement::Discard { object_type } => Kind::Session(match object_type {
            sqlparser::ast::DiscardObject::ALL => SessionChange::Discard,
            _ => SessionChange::Other,
        }),
        Statement::Use(u) => match u {
            Use::Schema(n) | Use::Database(n) | Use::Object(n) => match names::parts(ctx.dialect, n) {
                Some(parts) => Kind::Session(SessionChange::SearchPath { schemas: parts, local: false }),
                None => Kind::Session(SessionChange::Other),
            },
            _ => Kind::Session(SessionChange::Other),
        },
        // PostgreSQL's DEALLOCATE also drops statements prepared with Parse; MySQL's only the
        // SQL-level ones (COM_STMT_PREPARE statements are closed by COM_STMT_CLOSE).
        Statement::Deallocate { name, .. } if ctx.dialect == Dialect::Postgres => {
            Kind::Session(SessionChange::Deallocate(match name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                true => None,
                false => Some(names::fold(ctx.dialect, name)),
            }))
        }
        Statement::Prepare { .. }
        | Statement::Deallocate { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Flush { .. }
        | Statement::Kill { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowCatalogs { .. }
        | Statement::ExplainTable { .. } => Kind::Utility,
        s if is_ddl(s) => Kind::Ddl,
        s => Kind::Unknown(format!("statement type not classified: {}", first_words(s))),
    };
    // A DECLARE … CURSOR or PREPARE body is walked only for what it reads; its writes happen
    // when it runs (EXECUTE is `unknown`).
    if !matches!(stmt, Statement::Prepare { .. }) {
        w.walk(stmt);
    }
    finish(kind, w)
}

/// `ALTER TABLE s.a RENAME TO b`: the new name keeps the old one's schema.
fn renamed(w: &mut Walker, ctx: &Ctx, old: &sqlparser::ast::ObjectName, new: &sqlparser::ast::ObjectName) {
    let Some(old_t) = w.resolve(old) else { return };
    match names::parts(ctx.dialect, new) {
        Some(mut p) if p.len() == 1 => {
            if let Some(name) = p.pop() {
                w.acc.write(names::TableName { schema: old_t.schema, name });
            }
        }
        _ => w.target(new),
    }
}

/// Combine the statement type's kind with what the walk found.
fn finish(kind: Kind, w: Walker) -> StatementClass {
    let acc = w.acc;
    let kind = match kind {
        Kind::Read | Kind::Utility if acc.creates => Kind::Ddl,
        Kind::Read | Kind::Utility if !acc.writes.is_empty() => Kind::Write,
        k => k,
    };
    let kind = match (kind, acc.unknown) {
        (k @ (Kind::Transaction(_) | Kind::Session(_) | Kind::Unknown(_)), _) => k,
        (_, Some(reason)) => Kind::Unknown(reason),
        (k, None) => k,
    };
    let locks = if acc.locking { acc.reads.clone() } else { Vec::new() };
    StatementClass { kind, writes: acc.writes, reads: acc.reads, locks, nondeterministic: acc.nondeterministic }
}

/// EXPLAIN runs nothing; EXPLAIN ANALYZE runs its statement.
fn explain(ctx: &Ctx, analyze: bool, inner: &Statement) -> StatementClass {
    let inner = classify(ctx, inner);
    if analyze {
        return inner;
    }
    let mut reads = inner.reads;
    for t in inner.writes {
        if !reads.contains(&t) {
            reads.push(t);
        }
    }
    StatementClass { kind: Kind::Utility, writes: Vec::new(), reads, locks: Vec::new(), nondeterministic: Vec::new() }
}

/// PostgreSQL's `search_path` (MySQL has no such setting: its current database changes
/// with `USE`).
fn is_search_path(ctx: &Ctx, name: &sqlparser::ast::ObjectName) -> bool {
    ctx.dialect == Dialect::Postgres
        && names::parts(ctx.dialect, name).is_some_and(|p| p.len() == 1 && p[0].eq_ignore_ascii_case("search_path"))
}

fn session_set(ctx: &Ctx, set: &Set) -> SessionChange {
    let Set::SingleAssignment { scope, variable, values, .. } = set else {
        return SessionChange::Other;
    };
    if !is_search_path(ctx, variable) {
        return SessionChange::Other;
    }
    let local = matches!(scope, Some(sqlparser::ast::ContextModifier::Local));
    let mut schemas = Vec::new();
    for v in values {
        match v {
            Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") => {
                return SessionChange::ResetSearchPath
            }
            Expr::Identifier(i) => schemas.push(names::fold(ctx.dialect, i)),
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => schemas.push(s.clone()),
                _ => return SessionChange::Other,
            },
            _ => return SessionChange::Other,
        }
    }
    SessionChange::SearchPath { schemas, local }
}

fn is_ddl(s: &Statement) -> bool {
    let words = first_words(s);
    ["CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "RENAME"].iter().any(|k| words.starts_with(k))
}

/// The first two words of the statement's SQL text, for messages.
fn first_words(s: &Statement) -> String {
    s.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_ascii_uppercase()
}
