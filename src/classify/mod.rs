//! Statement classification: what a query string does, statement by statement — its kind,
//! the tables it writes and reads (schema-qualified), its non-deterministic parts — so the
//! policy can decide per written table how to replicate.
//!
//! Protocol-neutral: it takes SQL text, a [`Dialect`], the session's [`SearchPath`] and a
//! [`Catalog`] snapshot, and knows nothing of wire messages, sessions or connections. It must
//! never guess: a statement whose effect it cannot determine is [`Kind::Unknown`] with the
//! reason, never a silent read.
//!
//! ```
//! use capgate::classify::{Catalog, Classifier, Dialect, SearchPath};
//! let classifier = Classifier::new(Dialect::Postgres, 10_000);
//! let c = classifier.classify("UPDATE Orders SET paid = now() WHERE id = 1", &SearchPath::default(), &Catalog::new());
//! assert_eq!(c.statements[0].kind.name(), "write");
//! assert_eq!(c.statements[0].writes[0].to_string(), "public.orders");
//! assert_eq!(c.statements[0].nondeterministic, ["now()"]);
//! ```
//!
//! # The MySQL dialect
//!
//! The same API and result types; what the MySQL front end passes in differs:
//!
//! - **The current database** takes the search_path's place: [`SearchPath::database`] with
//!   the session's database (from the login packet, COM_INIT_DB, `USE` — reported as
//!   [`SessionChange::SearchPath`] — and session tracking). Unqualified names resolve to it;
//!   without one they are `unknown` (the server refuses them with error 1046). A table's
//!   "schema" is its database: `shop.orders`, matched by policy rules such as `shop.cart_*`.
//!   Names keep their case unless the server folds them (`lower_case_table_names` 1 or 2:
//!   [`Catalog::set_table_names_lower_case`]).
//! - **The `sql_mode` flags that change tokenizing** ([`SqlMode`]: ANSI_QUOTES,
//!   NO_BACKSLASH_ESCAPES) ride on the path ([`SearchPath::with_sql_mode`]), from the OK
//!   packets' status flags (MariaDB: 0x8000 and 0x200) or session tracking of `sql_mode`
//!   ([`SqlMode::from_sql_mode`]). They decide where a statement ends and whether `"…"` names
//!   a table, so they are part of the cache key.
//! - **Stored routines**: [`mysql::add_routines`] takes the rows of
//!   `information_schema.ROUTINES` ([`mysql::ROUTINES_QUERY`]) and records what each procedure and function writes,
//!   read from its body; `CALL p()` then writes those tables, or is `unknown` (dynamic SQL,
//!   a hidden body) until the policy's `[[function]]` names them. Mark the catalog complete
//!   ([`Catalog::set_complete`]) when every routine of the primary was loaded.
//! - Prepared statements (COM_STMT_PREPARE) are classified by their text like any other;
//!   `BEGIN`, `COMMIT`, `XA START` … prepared this way are [`Kind::Transaction`] as when sent
//!   as text, with XA as [`TxControl::XaStart`], [`TxControl::XaEnd`],
//!   [`TxControl::PrepareTransaction`], [`TxControl::CommitPrepared`] and
//!   [`TxControl::RollbackPrepared`]. Transaction state itself is best followed from the
//!   server's status flags: MySQL also commits implicitly (DDL, `SET autocommit = 1`, LOCK
//!   TABLES), which classification reports as what those statements are.
//!
//! ```
//! use capgate::classify::{classify, Catalog, Dialect, SearchPath, SqlMode};
//! let session = SearchPath::database(Some("shop")).with_sql_mode(SqlMode::from_sql_mode("ANSI_QUOTES"));
//! let c = classify(Dialect::MySql, r#"UPDATE "cart" c JOIN `Orders` o ON o.id = c.order_id SET c.qty = 0"#, &session, &Catalog::new());
//! assert_eq!(c.statements[0].writes[0].to_string(), "shop.cart");
//! assert_eq!(c.statements[0].reads[0].to_string(), "shop.\"Orders\"");
//! ```

mod cache;
mod catalog;
mod fallback;
mod functions;
pub mod mysql;
mod names;
mod shape;
mod split;
mod statement;
mod walk;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use sqlparser::parser::Parser;

pub use catalog::{Catalog, ColumnDefault, DefaultKind, FunctionInfo, Volatility};
pub use mysql::SqlMode;
pub use names::{fold, parts, resolve, SearchPath, TableName};
pub use shape::blank_numbers;
pub use split::statement_ends;

/// The SQL dialect: how text is parsed and how unquoted identifiers are folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL: unquoted identifiers fold to lower case; `"…"` quotes.
    Postgres,
    /// MySQL / MariaDB: identifiers keep their case; `` `…` `` quotes; the "schema" of a table
    /// is its database.
    MySql,
}

impl Dialect {
    /// `postgres` or `mysql` (as on the command line).
    pub fn parse(s: &str) -> Option<Dialect> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// The parser dialect for text in the server's default mode (MySQL: see [`SqlMode`]).
    pub(crate) fn parser_dialect(self) -> Box<dyn sqlparser::dialect::Dialect> {
        match self {
            Dialect::Postgres => Box::new(sqlparser::dialect::PostgreSqlDialect {}),
            Dialect::MySql => Box::new(sqlparser::dialect::MySqlDialect {}),
        }
    }
}

/// What kind of statement this is, as replication cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Reads only (SELECT, also SELECT … FOR UPDATE: a lock is not a write).
    Read,
    /// Changes rows: INSERT, UPDATE, DELETE, MERGE, COPY FROM, TRUNCATE, a SELECT with a
    /// data-modifying CTE or a call to a function that writes, `nextval`.
    Write,
    /// Changes definitions: CREATE, ALTER, DROP, COMMENT, GRANT … (`writes` lists the tables
    /// whose definition changes).
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, savepoints, two-phase commit.
    Transaction(TxControl),
    /// SET, RESET, DISCARD, USE.
    Session(SessionChange),
    /// Changes no rows: EXPLAIN, SHOW, LISTEN/NOTIFY, VACUUM, ANALYZE, LOCK, PREPARE, cursors.
    Utility,
    /// The effect cannot be determined; the policy's `unknown` decides. The reason names what
    /// was not understood.
    Unknown(String),
}

impl Kind {
    /// The name used in `capgate explain` and its JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Ddl => "ddl",
            Kind::Transaction(_) => "transaction",
            Kind::Session(_) => "session",
            Kind::Utility => "utility",
            Kind::Unknown(_) => "unknown",
        }
    }
}

/// Which transaction-control statement; the front end tracks transaction state with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT name
    Savepoint(String),
    /// RELEASE [SAVEPOINT] name
    Release(String),
    /// ROLLBACK TO [SAVEPOINT] name
    RollbackTo(String),
    /// PREPARE TRANSACTION 'gid' (MySQL: XA PREPARE xid)
    PrepareTransaction(String),
    /// COMMIT PREPARED 'gid' (MySQL: XA COMMIT xid; `XA COMMIT xid ONE PHASE` is `Commit`)
    CommitPrepared(String),
    /// ROLLBACK PREPARED 'gid' (MySQL: XA ROLLBACK xid, of a prepared or a not yet
    /// prepared branch)
    RollbackPrepared(String),
    /// MySQL: XA START xid / XA BEGIN xid — a transaction the client will prepare itself.
    /// MySQL's xids are given in one SQL spelling: `'gtrid'`, `'gtrid','bqual'` or
    /// `'gtrid','bqual',formatID`, binary parts as `X'…'`.
    XaStart(String),
    /// MySQL: XA END xid — the branch takes no more statements (IDLE).
    XaEnd(String),
}

/// What a session statement changes that classification depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// SET [LOCAL] search_path TO … (MySQL: USE db). Schemas as stored: identifiers folded,
    /// string literals exact, `$user` kept for the front end to substitute.
    SearchPath { schemas: Vec<String>, local: bool },
    /// RESET search_path, SET search_path TO DEFAULT.
    ResetSearchPath,
    /// RESET ALL.
    ResetAll,
    /// DISCARD ALL (resets the search_path and deallocates prepared statements); the other
    /// DISCARD forms are `Other`.
    Discard,
    /// DEALLOCATE [PREPARE] name (`Some`, folded as an identifier) or ALL (`None`): prepared
    /// statements made with Parse are deallocated by it too.
    Deallocate(Option<String>),
    /// Any other setting.
    Other,
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementClass {
    pub kind: Kind,
    /// Tables (and sequences) whose rows — or, for DDL, definitions — the statement changes.
    pub writes: Vec<TableName>,
    /// Tables it reads (CTE names excluded; write targets excluded unless read elsewhere).
    pub reads: Vec<TableName>,
    /// Tables it locks: reads of a statement with FOR UPDATE/SHARE (all of them), LOCK TABLE.
    pub locks: Vec<TableName>,
    /// What makes it give different results on another site: `now()`, `current_timestamp`,
    /// `random()`, `nextval()`, `public.f()` (a volatile user function), `LIMIT without
    /// ORDER BY`, `<default expr> (default of schema.table.column)`.
    pub nondeterministic: Vec<String>,
}

impl StatementClass {
    pub(crate) fn of_kind(kind: Kind) -> StatementClass {
        StatementClass { kind, writes: Vec::new(), reads: Vec::new(), locks: Vec::new(), nondeterministic: Vec::new() }
    }

    /// The same tables with `kind`, unless the statement is already `unknown`.
    pub(crate) fn with_kind(mut self, kind: Kind) -> StatementClass {
        if !matches!(self.kind, Kind::Unknown(_)) {
            self.kind = kind;
        }
        self
    }
}

/// The classification of a whole query string (one simple-protocol Query message may hold
/// several statements; an extended-protocol Parse holds one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    pub statements: Vec<StatementClass>,
}

impl Classification {
    /// Every table any statement writes, each once, in order of first appearance.
    pub fn writes(&self) -> Vec<&TableName> {
        let mut out: Vec<&TableName> = Vec::new();
        for t in self.statements.iter().flat_map(|s| &s.writes) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// The first `unknown` statement's reason, if any.
    pub fn unknown_reason(&self) -> Option<&str> {
        self.statements.iter().find_map(|s| match &s.kind {
            Kind::Unknown(r) => Some(r.as_str()),
            _ => None,
        })
    }
}

/// Classify `sql` without the cache.
pub fn classify(dialect: Dialect, sql: &str, path: &SearchPath, catalog: &Catalog) -> Classification {
    let ctx = walk::Ctx { dialect, path, catalog };
    let parser_dialect = ctx.parser_dialect();
    let statements = match Parser::parse_sql(parser_dialect.as_ref(), sql) {
        Ok(stmts) if dialect == Dialect::MySql && stmts.iter().any(mysql::misparsed) => {
            fallback::classify_pieces(&ctx, sql, "misread by the parser")
        }
        Ok(stmts) => stmts.iter().map(|s| statement::classify(&ctx, s)).collect(),
        Err(e) => fallback::classify_pieces(&ctx, sql, &e.to_string()),
    };
    Classification { statements }
}

/// A classifier with a bounded cache, shared by every session of a front end
/// (`Arc<Classifier>` or a `static`). Cheap on a hit: one scan and one hash of the text (and a
/// copy of it when it holds numbers), one short lock.
pub struct Classifier {
    /// Fixed for the classifier's life: one front end speaks one dialect.
    dialect: Dialect,
    /// Results by (dialect, catalog generation, search_path, text).
    cache: cache::Cache,
}

impl Classifier {
    /// `capacity` bounds the number of cached classifications (0 disables the cache).
    pub fn new(dialect: Dialect, capacity: usize) -> Classifier {
        Classifier { dialect, cache: cache::Cache::new(capacity) }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Classify `sql` as run with `path` against `catalog`; repeated texts, and texts that
    /// differ from a cached one only in their numbers ([`blank_numbers`]), come from the
    /// cache. Statements longer than 64 KiB are classified but not cached.
    pub fn classify(&self, sql: &str, path: &SearchPath, catalog: &Catalog) -> Arc<Classification> {
        if sql.len() > 64 * 1024 {
            return Arc::new(classify(self.dialect, sql, path, catalog));
        }
        let shape = blank_numbers(sql, "?");
        let key = cache::KeyRef { dialect: self.dialect, generation: catalog.generation(), path, sql: &shape };
        if let Some(hit) = self.cache.get(&key) {
            return hit;
        }
        let result = Arc::new(classify(self.dialect, sql, path, catalog));
        // An `unknown` result's reason may quote this text's numbers: file it under the text.
        let key = match result.unknown_reason() {
            Some(_) => cache::KeyRef { sql, ..key },
            None => key,
        };
        self.cache.insert(&key, result.clone());
        result
    }

    /// How many classifications are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
