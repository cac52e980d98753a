//! The checks `capgate check-config --connect` runs against a site's live servers, one line
//! per check, whatever their protocol: each protocol's module (`postgres_checks`,
//! `mysql_checks`) says what its servers must offer; docs/before-you-replicate.md explains
//! each check and its remedy.

use std::fmt;

use crate::classify::TableName;
use crate::config::{Config, Scheme};
use crate::policy::{Mode, Policy};

/// Every check on the primary and each replica of `config`, in order, one per line.
pub async fn check_all(config: &Config, policy: &Policy) -> Vec<Check> {
    match config.primary.url.scheme {
        Scheme::MySql => super::mysql_checks::check_all(config, policy).await,
        _ => super::postgres_checks::check_all(config, policy).await,
    }
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works, but something will bite later (a table without a primary key …).
    Warn,
    /// Replication through this server will fail until fixed.
    Fail,
}

/// One check of one server: `[ok] replica b: max_prepared_transactions = 100`.
#[derive(Debug, Clone)]
pub struct Check {
    /// `primary` or `replica NAME`.
    pub server: String,
    pub outcome: Outcome,
    pub message: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        write!(f, "[{tag}] {}: {}", self.server, self.message)
    }
}

/// Collects the checks of one server.
pub(super) struct Checks {
    pub(super) server: String,
    pub(super) out: Vec<Check>,
}

impl Checks {
    pub(super) fn add(&mut self, outcome: Outcome, message: impl Into<String>) {
        self.out.push(Check { server: self.server.clone(), outcome, message: message.into() });
    }
}

/// Whether any rule (or the default) makes tables `sync`: only then do replicas need
/// two-phase commit (`max_prepared_transactions` on PostgreSQL, `XA RECOVER` on MySQL).
pub(super) fn uses_sync(policy: &Policy) -> bool {
    matches!(policy.default, Mode::Sync { .. }) || policy.rules.iter().any(|r| matches!(r.mode, Mode::Sync { .. }))
}

/// Rules that name one table exactly, for a table the primary does not have: a typo, or a
/// table still to be created.
pub(super) fn dangling_rules(c: &mut Checks, policy: &Policy, tables: &[TableName]) {
    for rule in &policy.rules {
        if let (Some(schema), Some(name)) = (rule.pattern.schema.literal(), rule.pattern.table.literal()) {
            let t = TableName::new(schema, name);
            if rule.mode != Mode::Local && !tables.contains(&t) {
                c.add(
                    Outcome::Warn,
                    format!("policy rule \"{}\" (line {}) names {t}, which does not exist here yet", rule.pattern_text, rule.line),
                );
            }
        }
    }
}
