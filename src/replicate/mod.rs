//! Replication decisions, protocol-neutral: for each statement a front end relays, what it
//! writes (from [`crate::classify`]) and what the policy says about each written table (from
//! [`crate::policy`]). The front ends' coordinators act on these decisions: two-phase commit
//! for `sync` tables, shipping for `async` and `bounded` ones.
//!
//! Nothing here may know a wire protocol: the PostgreSQL and MySQL front ends both call
//! [`Router::route`] with SQL text and the session's search path.

pub mod apply;
pub mod coordinator;
pub mod recovery;
pub mod shipper;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::classify::{Catalog, Classification, Classifier, Dialect, Kind, SearchPath};
use crate::policy::{Decision, Mode, Policy, PolicyHandle, UnknownAction};

/// How many classifications the shared cache keeps.
const CACHE_CAPACITY: usize = 20_000;

/// The verdict on one query string.
#[derive(Debug, Clone)]
pub struct Route {
    pub classification: Arc<Classification>,
    /// One per table written, each with its mode and the rule that chose it.
    pub decisions: Vec<Decision>,
    /// Set when the statement must not be relayed (policy `unknown = "refuse"`).
    pub refusal: Option<Refusal>,
}

impl Route {
    /// The written tables whose mode is not `local`.
    pub fn replicated(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.mode != Mode::Local)
    }
}

/// Why a statement is refused, in words a DBA and an application developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE-like code; the front end maps it to its protocol.
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

/// Counters a front end exposes (later: as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Statements whose written tables could not be determined, relayed anyway.
    pub unknown_relayed: AtomicU64,
    /// The same, refused by policy.
    pub unknown_refused: AtomicU64,
}

/// Classification plus policy, shared by every session of a front end.
pub struct Router {
    classifier: Classifier,
    policy: Arc<PolicyHandle>,
    /// The database's own facts (functions, tables, defaults), replaced when reloaded.
    base: RwLock<Arc<Catalog>>,
    /// `base` plus the policy's `[[function]]` entries, for the policy version it was built
    /// with.
    merged: RwLock<(u64, u64, Arc<Catalog>)>,
    /// Woken after DDL, so whoever maintains the catalog reloads it.
    stale: tokio::sync::Notify,
    pub counters: Counters,
}

impl Router {
    pub fn new(dialect: Dialect, policy: Arc<PolicyHandle>, base: Catalog) -> Router {
        let base = Arc::new(base);
        let merged = Router::merge(&base, &policy.current());
        Router {
            classifier: Classifier::new(dialect, CACHE_CAPACITY),
            merged: RwLock::new((policy.current().version, base.generation(), Arc::new(merged))),
            base: RwLock::new(base),
            policy,
            stale: tokio::sync::Notify::new(),
            counters: Counters::default(),
        }
    }

    /// Say that the database's schema may have changed (a DDL statement went through).
    pub fn mark_stale(&self) {
        self.stale.notify_one();
    }

    /// Wait until [`Router::mark_stale`] is called.
    pub async fn stale(&self) {
        self.stale.notified().await
    }

    fn merge(base: &Catalog, policy: &Policy) -> Catalog {
        let mut c = base.clone();
        policy.add_functions_to(&mut c);
        c
    }

    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.policy
    }

    /// Replace the database facts (after DDL, or when the first load completes).
    pub fn set_catalog(&self, catalog: Catalog) {
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }

    /// The catalog for `policy`: the database's facts plus the policy's functions.
    pub fn catalog(&self, policy: &Policy) -> Arc<Catalog> {
        let base = self.base.read().unwrap_or_else(|p| p.into_inner()).clone();
        {
            let merged = self.merged.read().unwrap_or_else(|p| p.into_inner());
            if merged.0 == policy.version && merged.1 == base.generation() {
                return merged.2.clone();
            }
        }
        let fresh = Arc::new(Router::merge(&base, policy));
        *self.merged.write().unwrap_or_else(|p| p.into_inner()) = (policy.version, base.generation(), fresh.clone());
        fresh
    }

    /// Classify `sql` as the session would run it and decide each written table under
    /// `policy` (the one the session's transaction started with).
    pub fn route(&self, sql: &str, path: &SearchPath, policy: &Policy) -> Route {
        let catalog = self.catalog(policy);
        let classification = self.classifier.classify(sql, path, &catalog);
        let decisions = policy.decide(&classification);
        let refusal = classification.unknown_reason().and_then(|reason| self.unknown(reason, sql, policy));
        if classification.statements.iter().any(|s| matches!(s.kind, Kind::Ddl)) {
            self.mark_stale();
        }
        Route { classification, decisions, refusal }
    }
}

impl Router {
    /// Apply the policy's `unknown` action to a statement whose written tables cannot be
    /// determined (`reason` says why): count it, log it, and say whether to refuse it.
    pub fn unknown(&self, reason: &str, sql: &str, policy: &Policy) -> Option<Refusal> {
        match policy.unknown {
            UnknownAction::Relay => {
                let n = self.counters.unknown_relayed.fetch_add(1, Ordering::Relaxed) + 1;
                // The first ten, then one in a thousand: a hot statement must not flood the
                // log. The text itself only at debug level: it may hold secrets.
                if n <= 10 || n % 1000 == 0 {
                    tracing::warn!(
                        reason,
                        count = n,
                        "cannot tell which tables a statement writes; relaying it (policy unknown = \"relay\")"
                    );
                }
                tracing::debug!(reason, statement = %abbreviate(sql), "unknown statement relayed");
                None
            }
            UnknownAction::Refuse => {
                self.counters.unknown_refused.fetch_add(1, Ordering::Relaxed);
                Some(Refusal {
                    code: "0A000",
                    message: format!(
                        "capgate refused this statement: cannot tell which tables it writes ({reason}); the policy (version {}) says unknown = \"refuse\"",
                        policy.version
                    ),
                    hint: "name what the function writes in a [[function]] entry of the policy, rewrite the statement, or set unknown = \"relay\"".into(),
                })
            }
        }
    }
}

/// Whether a statement must be classified. Under a policy that cannot decide anything (see
/// [`Policy::can_decide`]), only statements that change the session's search_path are
/// followed (cheaply recognised by their first word: SET, RESET, DISCARD), and transaction
/// control (BEGIN, START, COMMIT, END, ROLLBACK, ABORT), so that a policy loaded later resolves
/// names right and applies from the next transaction on, also under pipelining. This keeps parsing off the hot path of
/// deployments that do not replicate yet — and of simple-protocol workloads, whose texts differ
/// by their literals and so miss the classification cache.
pub fn needs_classification(policy: &Policy, sql: &str) -> bool {
    if policy.can_decide() {
        return true;
    }
    let first: String = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(8)
        .collect();
    matches!(first.to_ascii_lowercase().as_str(), "set" | "reset" | "discard" | "begin" | "start" | "commit" | "end" | "rollback" | "abort")
}

/// The first 200 characters of a statement, for log lines.
pub fn abbreviate(sql: &str) -> String {
    let trimmed = sql.trim();
    match trimmed.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(policy: &str) -> Router {
        let policy = Policy::parse(policy, Path::new("policy.toml")).unwrap();
        Router::new(Dialect::Postgres, Arc::new(PolicyHandle::fixed(policy)), Catalog::new())
    }

    #[test]
    fn only_session_statements_are_classified_when_nothing_can_be_decided() {
        let idle = Policy::default();
        assert!(!needs_classification(&idle, "SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
        assert!(needs_classification(&idle, "  set search_path = app"));
        assert!(needs_classification(&idle, "RESET ALL"));
        let refuse = Policy { unknown: UnknownAction::Refuse, ..Policy::default() };
        assert!(needs_classification(&refuse, "SELECT 1"));
    }

    #[test]
    fn decisions_follow_the_policy() {
        let r = router("default = \"local\"\n[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n");
        let p = r.policy().current();
        let route = r.route("UPDATE orders SET paid = true; INSERT INTO audit VALUES (1)", &SearchPath::default(), &p);
        let modes: Vec<_> = route.decisions.iter().map(|d| (d.table.to_string(), d.mode.name())).collect();
        assert_eq!(modes, vec![("public.orders".to_owned(), "sync"), ("public.audit".to_owned(), "local")]);
        assert_eq!(route.replicated().count(), 1);
        assert!(route.refusal.is_none());
    }

    #[test]
    fn unknown_statements_are_refused_only_when_the_policy_says_so() {
        let sql = "SELECT my_volatile_fn()";
        let relay = router("unknown = \"relay\"\n");
        assert!(relay.route(sql, &SearchPath::default(), &relay.policy().current()).refusal.is_none());
        assert_eq!(relay.counters.unknown_relayed.load(Ordering::Relaxed), 1);
        let refuse = router("unknown = \"refuse\"\n");
        let refusal = refuse.route(sql, &SearchPath::default(), &refuse.policy().current()).refusal.unwrap();
        assert!(refusal.message.contains("my_volatile_fn"), "{}", refusal.message);
    }

    #[test]
    fn policy_functions_reach_the_catalog() {
        let r = router("[[table]]\nmatch = \"public.accounts\"\nmode = \"sync\"\n[[function]]\nname = \"public.transfer\"\nwrites = [\"public.accounts\"]\n");
        let route = r.route("SELECT public.transfer(1, 2, 10)", &SearchPath::default(), &r.policy().current());
        assert!(route.refusal.is_none());
        assert_eq!(route.decisions[0].table.to_string(), "public.accounts");
        assert_eq!(route.decisions[0].mode.name(), "sync");
    }
}
