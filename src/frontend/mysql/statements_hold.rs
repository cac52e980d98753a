//! Part of `super` (statements.rs): which statements capgate holds, carries or refuses while
//! MySQL replicas are configured — a query that may write a sync table or commits
//! implicitly (decisions 0016, 0027, 0031), a `TRUNCATE` of a replicated table (decision
//! 0029) — and how the session's `LOCK TABLES` state follows the queries.

use super::*;
use crate::frontend::mysql::ddl::Judged;

impl Statements {
    /// A query `sql` (classified as `c`, its statements' texts `texts`, tables resolving
    /// against `path`; `text`: its text, when it is valid UTF-8) while MySQL replicas are
    /// configured: refused, held, or (None) forwarded as it came.
    pub(super) fn replicated_query(
        &mut self,
        sql: &[u8],
        text: Option<&str>,
        c: &Classification,
        texts: &[&str],
        path: &SearchPath,
    ) -> Option<Verdict> {
        let policy = self.policy();
        // Partition maintenance that changes a replicated table's rows fires no trigger.
        if let Some(message) = crate::frontend::mysql::partitions::refusal(texts, path, &policy) {
            return Some(Self::refuse(errors::NOT_SUPPORTED, &message));
        }
        // DDL of a replicated table is carried to the replicas (decision 0040), or refused;
        // inside a multi-statement query it must run as a part of its own.
        let mut in_parts = None;
        match crate::frontend::mysql::ddl::judge(c, texts, &policy, self.locked_tables, false) {
            Some(Judged::Carry(target)) => return Some(Verdict::Hold(Hold::CarryDdl(target).into())),
            Some(Judged::Refuse(message)) => return Some(Self::refuse(errors::NOT_SUPPORTED, &message)),
            Some(Judged::InParts(message)) => in_parts = Some(message),
            None => {}
        }
        let cut = |hold: Hold| match (&in_parts, &hold) {
            (Some(message), Hold::Split(parts)) if !parts.iter().any(|p| p.carry.is_some()) => Self::refuse(errors::NOT_SUPPORTED, message),
            (Some(message), hold) if !matches!(hold, Hold::Split(_)) => Self::refuse(errors::NOT_SUPPORTED, message),
            _ => Verdict::Hold(hold.into()),
        };
        // A TRUNCATE of a replicated table alone is carried (decision 0029); anywhere else in
        // a query it is refused.
        if let Some(d) = implicit::truncate_alone(c, texts).map(|t| policy.decide_table(t)).filter(|d| d.mode != Mode::Local) {
            return Some(self.carry_truncate(&d, &format!("`{}`", texts[0])));
        }
        if let Some(message) = implicit::truncates_replicated(c, texts, path, &policy) {
            return Some(Self::refuse(errors::NOT_SUPPORTED, &message));
        }
        let locked = self.locked_tables;
        if !policy.has_sync() {
            // Followed all the same: a TRUNCATE under LOCK TABLES cannot be carried.
            self.locked_tables = implicit::locks_tables(texts, locked);
            // Nothing to coordinate; DDL is still held, for the capture triggers (`hold_for`),
            // and the writes after it in the same query wait for them.
            let commits = implicit::any_commits(c, texts, locked);
            let hold = self.hold_for(c, commits)?;
            return Some(cut(self.split(hold, text, c, texts, path, &policy, locked)));
        }
        if let Some(message) = implicit::commit_mid_query(c, texts, &policy, locked) {
            return Some(Self::refuse(errors::NOT_SUPPORTED, &message));
        }
        if c.statements.len() > 1 && c.statements.iter().any(|s| s.kind == Kind::Transaction(TxControl::Commit)) {
            return Some(Self::refuse(
                errors::NOT_SUPPORTED,
                "capgate: COMMIT must be sent as a statement of its own while sync tables are replicated (capgate \
                 coordinates each COMMIT with the replicas); split the query",
            ));
        }
        if c.statements.iter().any(|s| matches!(s.kind, Kind::Transaction(TxControl::XaStart(_)))) {
            return Some(Self::refuse(
                errors::NOT_SUPPORTED,
                "capgate: application XA transactions are not supported while sync tables are replicated (capgate \
                 commits them on every site with XA itself); use BEGIN ... COMMIT",
            ));
        }
        let commits = implicit::any_commits(c, texts, locked);
        self.locked_tables = implicit::locks_tables(texts, locked);
        // LOAD DATA LOCAL needs the client's file contents mid-reply: not held (outside a
        // transaction the capture trigger refuses it; inside one the COMMIT is held).
        let hold = self.hold_for(c, commits).filter(|_| !is_load_local(sql))?;
        let hold = autocommit_hold(hold, sets_autocommit_alone(c, texts));
        // LOCK TABLES of a sync table also locks what capgate's commits write (decision 0031).
        let rewritten =
            text.filter(|_| self.mariadb).and_then(|t| crate::frontend::mysql::locks::with_capgate_tables(t, c, texts, &policy));
        let hold = self.split(hold, rewritten.as_deref().or(text), c, texts, path, &policy, locked);
        let payload = rewritten.map(|t| [&[crate::protocol::mysql::com::QUERY][..], t.as_bytes()].concat());
        match cut(hold) {
            Verdict::Hold(held) => Some(Verdict::Hold(Held { hold: held.hold, payload })),
            refused => Some(refused),
        }
    }

    /// `hold`, or [`Hold::Split`] when the query `text` (a statement that commits implicitly
    /// among others) must run in parts (`super::parts`).
    #[allow(clippy::too_many_arguments)]
    fn split(
        &self,
        hold: Hold,
        text: Option<&str>,
        c: &Classification,
        texts: &[&str],
        path: &SearchPath,
        policy: &Policy,
        locked: bool,
    ) -> Hold {
        match hold {
            Hold::Ddl | Hold::ImplicitCommit if self.multi_statements => {
                text.and_then(|t| crate::frontend::mysql::parts::parts(t, path, c, texts, policy, locked)).map_or(hold, Hold::Split)
            }
            hold => hold,
        }
    }

    /// The primary is MariaDB (its greeting says so).
    pub(in crate::frontend::mysql) fn mariadb(&self) -> bool {
        self.mariadb
    }

    /// Whether the session holds `LOCK TABLES` locks (as far as its text queries tell).
    pub(in crate::frontend::mysql) fn locked_tables(&self) -> bool {
        self.locked_tables
    }

    /// The hold that carries a TRUNCATE of `d`'s table (decision 0029), or its refusal under
    /// `LOCK TABLES` (capgate's transaction would release the session's locks, and its
    /// change log is not among the locked tables). `what` names the statement.
    pub(super) fn carry_truncate(&mut self, d: &Decision, what: &str) -> Verdict {
        if self.locked_tables {
            return Self::refuse(
                errors::NOT_SUPPORTED,
                &format!(
                    "capgate refused {what}: {} is replicated (mode {}, rule {}) and capgate carries a TRUNCATE in a transaction \
                     of its own, which cannot run while this session holds LOCK TABLES; nothing was run. UNLOCK TABLES first",
                    d.table,
                    d.mode.name(),
                    d.rule
                ),
            );
        }
        Verdict::Hold(Hold::Truncate(Target { table: d.table.clone(), mode: d.mode.name(), rule: d.rule.to_string() }).into())
    }

    /// Whether a statement must be held while tables are replicated: with sync tables a
    /// COMMIT, an implicit commit or a possible sync write (decision 0016); with async and
    /// bounded tables only, DDL (its capture triggers reconciled after it, decision 0031).
    /// `commits`: it commits an open transaction implicitly ([`implicit::commits_implicitly`]).
    pub(super) fn hold_for(&mut self, c: &Classification, commits: bool) -> Option<Hold> {
        if self.slots.is_empty() {
            return None;
        }
        let policy = self.policy();
        if !policy.has_sync() {
            // DDL may drop or replace a replicated table's capture triggers (a dump's `DROP
            // TABLE` and `CREATE TABLE`): they are reconciled before the client gets the reply,
            // or the writes after it would go uncaptured.
            return (commits && has_ddl(c) && policy.ships_async()).then_some(Hold::Ddl);
        }
        if is_commit(c) {
            return Some(Hold::Commit);
        }
        // DDL (but a temporary table's) commits, and may change what is captured.
        if commits && has_ddl(c) {
            return Some(Hold::Ddl);
        }
        if commits {
            return Some(Hold::ImplicitCommit);
        }
        let may_write_sync = c.statements.iter().any(|s| matches!(s.kind, Kind::Unknown(_)))
            || policy.decide(c).iter().any(|d| matches!(d.mode, Mode::Sync { .. }));
        may_write_sync.then_some(Hold::Autocommit)
    }
}
