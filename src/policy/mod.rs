//! The per-table policy: which tables are `sync`, `async`, `bounded` or `local`, with their
//! options; what to do with statements whose tables cannot be determined; what user
//! functions write. DBAs edit it (see CONFIG.md, "Policy file").
//!
//! A [`Policy`] is an immutable, validated snapshot with a version number; a
//! [`PolicyHandle`] publishes the current one and reloads it on SIGHUP or when the file
//! changes, keeping the old one when the new file is bad. Decisions take a classification and
//! never look at wire messages: this module must stay free of protocol types.

mod glob;
mod load;
mod reload;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use crate::classify::{Catalog, Classification, Dialect, FunctionInfo, StatementClass, TableName, Volatility};
pub use glob::Pattern;
pub use load::{PolicyError, PolicyProblem};
pub use reload::{PolicyHandle, SiteCheck};

/// How a table's writes reach the other sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not replicated.
    Local,
    /// Committed locally, shipped later through the outbox (AP).
    Async { on_conflict: OnConflict },
    /// Committed on every site atomically (CP); with `quorum = k`, on k replicas atomically
    /// and on the others through the change stream (decision 0017). None: every replica.
    Sync { on_partition: OnPartition, quorum: Option<u32> },
    /// Async while the replica's lag is under `max_lag`, then refused or blocked.
    Bounded { max_lag: Duration, on_partition: OnPartition, on_conflict: OnConflict },
}

impl Mode {
    /// How many of `replicas` must prepare a sync commit of this mode: its `quorum`, at most
    /// every replica (a larger quorum than there are replicas requires them all).
    pub fn quorum_of(&self, replicas: usize) -> usize {
        match self {
            Mode::Sync { quorum: Some(k), .. } => (*k as usize).min(replicas),
            _ => replicas,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Async { .. } => "async",
            Mode::Sync { .. } => "sync",
            Mode::Bounded { .. } => "bounded",
        }
    }
}

/// What a sync (or over-lag bounded) write does when a replica is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPartition {
    /// Refused at once.
    Fail,
    /// Waits up to `timeout` for the link, then refused.
    Block { timeout: Duration },
}

/// What an async apply does when a row change does not fit the replica's row (see
/// `capgate.apply_changes`, decision 0009). Every conflict is recorded whatever is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Keep the replica's row and go on.
    Skip,
    /// Stop shipping this table until an operator resumes it.
    Halt,
    /// Apply the new image anyway (upsert, insert the missing row, delete anyway).
    Overwrite,
    /// The change with the later origin time wins (ties: the greater origin name).
    Latest,
}

impl OnConflict {
    /// As written in the policy file and passed to `capgate.apply_changes`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Skip => "skip",
            OnConflict::Halt => "halt",
            OnConflict::Overwrite => "overwrite",
            OnConflict::Latest => "latest",
        }
    }
}

/// What happens to a statement that may write but whose tables cannot be determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownAction {
    /// Relay it unchanged (logged and counted): unmodified applications keep working.
    Relay,
    /// Answer with an error that names the reason.
    Refuse,
}

/// One `[[table]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The `match` text as written, shown in decisions and `capgate explain`.
    pub pattern_text: String,
    /// The parsed glob.
    pub pattern: Pattern,
    pub mode: Mode,
    /// Line of the rule in the file, for messages (0 when built in code).
    pub line: usize,
}

/// One `[[function]]` entry: a user function and the tables a call writes.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRule {
    pub schema: String,
    pub name: String,
    pub writes: Vec<TableName>,
}

/// A validated policy. Immutable: a reload makes a new one with a higher version.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// 1 for the first policy a handle loads, +1 per successful reload (0: built in code).
    pub version: u64,
    /// Mode of tables no rule matches.
    pub default: Mode,
    pub unknown: UnknownAction,
    /// In file order; the first match wins.
    pub rules: Vec<Rule>,
    pub functions: Vec<FunctionRule>,
    /// Keys that are accepted but no longer do anything (with where they are and why), for
    /// the log and `capgate check-config`.
    pub warnings: Vec<PolicyProblem>,
}

/// The policy when there is no policy file: nothing is replicated.
impl Default for Policy {
    fn default() -> Policy {
        Policy {
            version: 0,
            default: Mode::Local,
            unknown: UnknownAction::Relay,
            rules: Vec::new(),
            functions: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Which rule decided: shown to DBAs, so they can see why a table got its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef {
    /// The `index`-th `[[table]]` (0-based), with its `match` text and line.
    Rule { index: usize, pattern: String, line: usize },
    /// No rule matched: the `default` mode.
    Default,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Rule { pattern, .. } => f.write_str(pattern),
            RuleRef::Default => f.write_str("default"),
        }
    }
}

/// The decision for one written table.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub table: TableName,
    pub mode: Mode,
    pub rule: RuleRef,
}

impl Policy {
    /// Default values for every option, with the given default mode and no rules.
    pub fn with_default(default: Mode) -> Policy {
        Policy { default, ..Policy::default() }
    }

    /// The mode of one table: the first rule whose glob matches, else the default.
    pub fn decide_table(&self, table: &TableName) -> Decision {
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.pattern.matches(&table.schema, &table.name) {
                return Decision {
                    table: table.clone(),
                    mode: rule.mode,
                    rule: RuleRef::Rule { index, pattern: rule.pattern_text.clone(), line: rule.line },
                };
            }
        }
        Decision { table: table.clone(), mode: self.default, rule: RuleRef::Default }
    }

    /// One decision per table the statement writes.
    pub fn decide_statement(&self, statement: &StatementClass) -> Vec<Decision> {
        statement.writes.iter().map(|t| self.decide_table(t)).collect()
    }

    /// One decision per table any statement of `classification` writes, each table once.
    /// A transaction that writes a sync and an async table does both.
    pub fn decide(&self, classification: &Classification) -> Vec<Decision> {
        classification.writes().into_iter().map(|t| self.decide_table(t)).collect()
    }

    /// Add the `[[function]]` entries to a catalog (after the primary's own entries, so the
    /// policy's word wins): each is volatile and writes exactly the listed tables.
    pub fn add_functions_to(&self, catalog: &mut Catalog) {
        for f in &self.functions {
            let info = FunctionInfo { volatility: Volatility::Volatile, writes: Some(f.writes.clone()) };
            catalog.add_function(&f.schema, &f.name, info);
        }
    }

    /// A catalog holding only the policy's functions (for `capgate explain` without a
    /// database); MySQL's compares routine names without regard to case.
    pub fn catalog(&self, dialect: Dialect) -> Catalog {
        let mut c = Catalog::new();
        if dialect == Dialect::MySql {
            c.set_routine_names_ignore_case();
        }
        self.add_functions_to(&mut c);
        c
    }

    /// Whether a decision of this policy can change what happens to a statement: some table
    /// is replicated, or unknown statements are refused. When not, front ends need not
    /// classify (beyond following the session's search_path).
    pub fn can_decide(&self) -> bool {
        self.replicates_anything() || self.unknown != UnknownAction::Relay
    }

    /// Log each warning (`file:line: key: message`).
    pub fn log_warnings(&self, file: &str) {
        for w in &self.warnings {
            tracing::warn!("{file}:{}: {}: {}", w.line.unwrap_or(0), w.key, w.message);
        }
    }

    /// Whether any table can be `sync` under this policy: only then can a transaction's
    /// commit need coordinating.
    pub fn has_sync(&self) -> bool {
        matches!(self.default, Mode::Sync { .. }) || self.rules.iter().any(|r| matches!(r.mode, Mode::Sync { .. }))
    }

    /// Whether any table can be `bounded` under this policy: only then can a commit be refused
    /// for a lag budget.
    pub fn has_bounded(&self) -> bool {
        matches!(self.default, Mode::Bounded { .. }) || self.rules.iter().any(|r| matches!(r.mode, Mode::Bounded { .. }))
    }

    /// Whether any table can be `async` or `bounded` under this policy: only then does a
    /// MySQL front end start its shippers.
    pub fn ships_async(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.rules.iter().map(|r| &r.mode))
            .any(|m| matches!(m, Mode::Async { .. } | Mode::Bounded { .. }))
    }

    /// What the policy decides, one line per item, without its layout (comments, spacing,
    /// line numbers, key order): two sites run the same policy when these are equal. Each
    /// site records it on its primary (`capgate.local_site.policy`) and `check-config
    /// --connect` compares it with the other writing sites'.
    pub fn fingerprint(&self) -> String {
        let mut out = format!("default {:?}\nunknown {:?}\n", self.default, self.unknown);
        for r in &self.rules {
            out.push_str(&format!("table {} {:?}\n", r.pattern_text, r.mode));
        }
        for f in &self.functions {
            let writes: Vec<String> = f.writes.iter().map(ToString::to_string).collect();
            out.push_str(&format!("function {}.{} writes {}\n", f.schema, f.name, writes.join(",")));
        }
        out
    }

    /// Whether some sync rule's quorum is below `replicas`: only then do sync commits also write
    /// their changes to the change stream, for the replicas that miss the quorum (decision 0017).
    pub fn streams_sync(&self, replicas: usize) -> bool {
        std::iter::once(&self.default)
            .chain(self.rules.iter().map(|r| &r.mode))
            .any(|m| matches!(m, Mode::Sync { .. }) && m.quorum_of(replicas) < replicas)
    }

    /// Whether any table can be replicated under this policy (e.g. to decide how loudly to
    /// treat `unknown` statements).
    pub fn replicates_anything(&self) -> bool {
        self.default != Mode::Local || self.rules.iter().any(|r| r.mode != Mode::Local)
    }
}

/// Defaults of the rule options (documented in CONFIG.md).
pub const DEFAULT_PARTITION_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(30);
pub const DEFAULT_ON_CONFLICT: OnConflict = OnConflict::Halt;
