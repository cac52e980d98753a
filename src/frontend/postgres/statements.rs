//! What the session's statements write, as they pass from the client to the primary.
//!
//! Query ('Q') and Parse ('P') messages are classified (a prepared statement once, at
//! Parse) and decided by the policy the current transaction started with; the session's
//! search_path is followed through the startup parameters and SET/RESET statements so that
//! unqualified names resolve as the server will resolve them. A statement the policy refuses
//! is replaced by one that makes the primary raise the refusal: the error then reaches the
//! client in its place in the stream, with PostgreSQL's own transaction semantics (it aborts
//! the transaction like any error), even when the client pipelines.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::boundaries::{mentions_chain, Boundaries};
use super::effects::{
    has_transaction_control, is_commit, is_copy_from_stdin, may_change_bounded, may_change_sync, replicated_ddl, single_control,
    writes_rows,
};
use super::refusal::refusal_query_after;
pub(crate) use super::refusal::{raise_statement, refusal_parse, refusal_query};
use super::relay::{Flow, SessionState};
use super::replication::{Admit, Replication};
use super::search_path::{parse_search_path, search_path_option, substitute_user};
use crate::classify::{Classification, Kind, SearchPath, SessionChange, TxControl};
use crate::policy::Policy;
use crate::protocol::postgres::startup::StartupMessage;
use crate::replicate::{Refusal, Router};

/// A session's statement tracking, owned by the client-to-primary pump.
pub struct Statements {
    router: Arc<Router>,
    /// The session user, substituted for `$user` in search paths.
    user: String,
    /// The search_path the session started with (RESET goes back to it).
    initial_path: SearchPath,
    /// The session-level search_path.
    path: SearchPath,
    /// A `SET LOCAL search_path` in force until the transaction ends.
    local_path: Option<SearchPath>,
    /// Where the client's transactions end (also while it pipelines).
    bounds: Boundaries,
    /// The policy the current transaction started with.
    tx_policy: Option<Arc<Policy>>,
    /// A statement that may change a sync table was sent in the current transaction: its
    /// COMMIT is held while replies are still owed (the capture trigger's notice may be in
    /// one of them).
    tx_may_sync: bool,
    /// A statement that may change a bounded table was sent in the current transaction (see
    /// [`may_change_bounded`]): while some bounded table's budget is spent, its COMMIT is held
    /// and checked against the tables the transaction's captured changes touch.
    tx_may_bounded: bool,
    /// The extended-protocol messages since the last Sync.
    group: Group,
    /// Named prepared statements that need classifying ("" is the unnamed one).
    prepared: HashMap<String, Prepared>,
    /// Replica health and lag, for the admission of writes to sync and bounded tables.
    replication: Arc<Replication>,
}

/// What the coordinator needs of a prepared statement when a Bind runs it.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: Arc<str>,
    pub classification: Arc<Classification>,
    /// A `COPY … FROM STDIN`: its Execute makes the primary wait for the client's data.
    pub copy_in: bool,
}

/// What the Binds of one extended-protocol group (up to its Sync) ran, so the Sync that ends
/// an implicit transaction is held only when that transaction may have changed a sync table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// A Bind ran a statement that may change a sync table.
    pub may_sync: bool,
    /// A Bind ran a statement that may change a bounded table (see [`may_change_bounded`]).
    pub may_bounded: bool,
    /// A Bind ran BEGIN (after any COMMIT/ROLLBACK of the group): a block is open at the Sync.
    pub began: bool,
    /// A Bind ran COMMIT or ROLLBACK (after any BEGIN of the group).
    pub ended: bool,
    /// A Bind ran `COPY … FROM STDIN`: the primary ignores Syncs until the client's CopyDone
    /// or CopyFail, so only a Sync after that ends the group (holding an earlier one would
    /// wait for replies that need the client's data).
    pub copy_in: bool,
    /// The client's CopyDone or CopyFail of that COPY was forwarded.
    pub copy_done: bool,
}

/// Why a frame is handed to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A commit point of a transaction that may hold sync changes.
    Commit,
    /// A write that may change a sync table, maybe outside a transaction block.
    Autocommit,
    /// DDL on a replicated table (captured in the change stream, in its transaction).
    Ddl,
    /// A write that must wait for a replica (on_partition = "block") before it may run.
    Admission,
    /// The Sync ending a group that may have changed a sync table: it commits when the group
    /// ran outside a transaction block (an implicit transaction).
    Sync(Group),
}

impl Statements {
    pub fn new(router: Arc<Router>, replication: Arc<Replication>, startup: &StartupMessage) -> Statements {
        let user = startup.get("user").unwrap_or_default().to_owned();
        let configured = startup.get("search_path").map(str::to_owned).or_else(|| startup.get("options").and_then(search_path_option));
        let initial_path = parse_search_path(configured.as_deref().unwrap_or("\"$user\", public"), &user);
        Statements {
            router,
            user,
            path: initial_path.clone(),
            initial_path,
            local_path: None,
            bounds: Boundaries::default(),
            tx_policy: None,
            tx_may_sync: false,
            tx_may_bounded: false,
            group: Group::default(),
            prepared: HashMap::new(),
            replication,
        }
    }

    /// Whether the coordinator must take over at this whole client frame (a Query, Bind or
    /// Sync), before it is forwarded, and why. Only the group and transaction flags are
    /// recorded here; the coordinator routes the frame again.
    pub fn hold(&mut self, state: &SessionState, tag: u8, frame: &[u8]) -> Option<Hold> {
        let body = &frame[5..];
        let policy = self.policy();
        if !policy.replicates_anything() {
            return None;
        }
        match tag {
            b'Q' => {
                let sql = cstr(body)?;
                if !crate::replicate::needs_classification(&policy, sql) {
                    return None;
                }
                let route = self.router.route(sql, self.search_path(), &policy);
                if route.refusal.is_some() {
                    return None;
                }
                if is_commit(&route.classification) {
                    return self.commit_needs_hold(state, &policy).then_some(Hold::Commit);
                }
                let may = may_change_sync(&route, &policy);
                self.tx_may_sync |= may;
                let bounded = may_change_bounded(&route, &policy);
                self.tx_may_bounded |= bounded;
                if let Admit::Wait { .. } = self.replication.admit(&route.decisions, writes_rows(&route.classification)) {
                    return Some(Hold::Admission);
                }
                if replicated_ddl(&route, sql) {
                    return Some(Hold::Ddl);
                }
                let in_block = state.pending.load(Ordering::Acquire) <= 0 && state.tx_status.load(Ordering::Acquire) != b'I';
                if in_block || has_transaction_control(&route.classification) {
                    return None;
                }
                // The lags are looked at only for an autocommit statement that may change a
                // bounded table.
                (may || (bounded && self.replication.bounded_at_risk(&policy))).then_some(Hold::Autocommit)
            }
            b'B' => {
                let (_portal, rest) = split_cstr(body)?;
                let name = cstr(rest)?;
                let p = self.prepared.get(name)?;
                let classification = p.classification.clone();
                if p.copy_in {
                    self.group.copy_in = true;
                    self.group.copy_done = false;
                }
                match single_control(&classification) {
                    Some(TxControl::Begin) => {
                        self.group.began = true;
                        self.group.ended = false;
                    }
                    Some(TxControl::Commit) | Some(TxControl::Rollback) | Some(TxControl::PrepareTransaction(_)) => {
                        self.group.ended = true;
                        self.group.began = false;
                    }
                    _ => {}
                }
                if is_commit(&classification) {
                    return self.commit_needs_hold(state, &policy).then_some(Hold::Commit);
                }
                let rows = writes_rows(&classification);
                let route = crate::replicate::Route { decisions: policy.decide(&classification), classification, refusal: None };
                // Noted before admission: a Bind held to wait for a replica still makes its
                // group's Sync a commit point to coordinate (else an autocommit write admitted
                // after the wait commits uncoordinated, refused with CGS01).
                if may_change_sync(&route, &policy) {
                    self.tx_may_sync = true;
                    self.group.may_sync = true;
                }
                if may_change_bounded(&route, &policy) {
                    self.tx_may_bounded = true;
                    self.group.may_bounded = true;
                }
                if !matches!(self.replication.admit(&route.decisions, rows), Admit::Go) {
                    return Some(Hold::Admission);
                }
                None
            }
            b'S' => {
                if self.group.copy_in && !self.group.copy_done {
                    return None;
                }
                let group = std::mem::take(&mut self.group);
                let bounded = group.may_bounded && self.replication.bounded_at_risk(&policy);
                if !(group.may_sync || bounded) || group.began {
                    return None;
                }
                // Known to stay inside a transaction block after this Sync: nothing commits.
                let in_block = state.pending.load(Ordering::Acquire) <= 0 && state.tx_status.load(Ordering::Acquire) != b'I';
                (!in_block && !group.ended).then_some(Hold::Sync(group))
            }
            _ => None,
        }
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail went to the primary).
    pub fn copy_ended(&mut self) {
        self.group.copy_done = true;
    }

    /// A commit point is held when the transaction captured a sync change, or may have and
    /// the reply that would say so has not arrived; or when it may have changed a bounded
    /// table while some bounded table's budget is spent.
    fn commit_needs_hold(&self, state: &SessionState, policy: &Policy) -> bool {
        let sync = policy.has_sync() && (state.sync_pending.load(Ordering::Acquire) || (self.tx_may_sync && state.owed()));
        sync || self.bounded_check_due(policy)
    }

    /// Whether the current transaction's commit must be checked for the bounded tables it
    /// changed: it ran a statement that may change one, and some bounded table's budget is
    /// spent (or a lag is not measured) now. The check costs a round trip to the primary, so
    /// a transaction that cannot be refused never pays it.
    pub fn bounded_check_due(&self, policy: &Policy) -> bool {
        self.tx_may_bounded && self.replication.bounded_at_risk(policy)
    }

    /// A prepared statement by name.
    pub fn prepared(&self, name: &str) -> Option<&Prepared> {
        self.prepared.get(name)
    }

    /// Route a Query's text as [`Statements::on_frame`] does, returning the whole verdict
    /// (the coordinator acts on it).
    pub fn route_query(&mut self, sql: &str) -> crate::replicate::Route {
        let policy = self.policy();
        let route = self.router.route(sql, self.search_path(), &policy);
        self.after(&route.classification);
        self.bounds.query(route.refusal.is_none().then_some(&route.classification), mentions_chain(sql));
        route
    }

    /// The policy the current transaction runs under.
    pub fn tx_policy(&mut self) -> Arc<Policy> {
        self.policy()
    }

    /// Replica health and lag.
    pub fn replication(&self) -> &Arc<Replication> {
        &self.replication
    }

    /// The router (catalog, counters).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The search_path statements are resolved against now.
    pub fn search_path(&self) -> &SearchPath {
        self.local_path.as_ref().unwrap_or(&self.path)
    }

    /// Handle one whole client frame (`Q`, `P` or `C`, header included).
    pub fn on_frame(&mut self, state: &SessionState, tag: u8, frame: &[u8]) -> Flow {
        let body = &frame[5..];
        match tag {
            b'Q' => {
                // Most statements of a policy that cannot decide anything need no look at all.
                if !crate::replicate::needs_classification_bytes(&self.policy(), body) {
                    self.bounds.query(None, false);
                    return Flow::Continue;
                }
                let refusal = match cstr(body) {
                    Some(sql) => self.route(sql).map(|(refusal, kept)| (refusal, &sql[..kept])),
                    None => {
                        self.bounds.query(None, false);
                        self.undecidable("the query text is not valid UTF-8 (client_encoding other than UTF8)").map(|r| (r, ""))
                    }
                };
                match refusal {
                    Some((refusal, kept)) => Flow::Replace(refusal_query_after(kept, &refusal)),
                    None => Flow::Continue,
                }
            }
            // A fast-path function call names its function by OID and carries no SQL: what it
            // writes cannot be told.
            b'F' => {
                self.bounds.query(None, false);
                match self.undecidable("a fast-path function call (FunctionCall message) cannot be classified") {
                    Some(refusal) => Flow::Replace(refusal_query(&refusal)),
                    None => Flow::Continue,
                }
            }
            b'P' => {
                let Some((name, rest)) = split_cstr(body) else { return Flow::Continue };
                let Some(sql) = cstr(rest) else {
                    return match self.undecidable("the statement text is not valid UTF-8 (client_encoding other than UTF8)") {
                        Some(refusal) => {
                            state.hidden.lock().unwrap_or_else(|p| p.into_inner()).own_parse_and_bind_replacing_parse();
                            Flow::Replace(refusal_parse(&refusal))
                        }
                        None => Flow::Continue,
                    };
                };
                let refusal = if crate::admin::commands::is_admin_command(sql) {
                    Some(super::admin_sql::parse_refusal())
                } else {
                    self.route_prepared(name, sql)
                };
                match refusal {
                    Some(refusal) => {
                        // client_frame already counted the client's Parse, which is not sent:
                        // ours takes its place, plus our Bind.
                        state.hidden.lock().unwrap_or_else(|p| p.into_inner()).own_parse_and_bind_replacing_parse();
                        Flow::Replace(refusal_parse(&refusal))
                    }
                    None => Flow::Continue,
                }
            }
            b'C' => {
                if body.first() == Some(&b'S') {
                    if let Some(name) = body.get(1..).and_then(cstr) {
                        self.prepared.remove(name);
                    }
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    /// A client message (`Q`, `P`, `B`, `C`, `S` or `F`, whole) is about to be handled; call
    /// before anything else looks at it. When it begins a new transaction (see
    /// [`Boundaries`]), that transaction takes the policy in force now, and SET LOCAL ends.
    pub fn message(&mut self, state: &SessionState, tag: u8, frame: &[u8]) {
        if self.bounds.message(state) {
            self.tx_policy = None;
            self.tx_may_sync = false;
            self.tx_may_bounded = false;
            self.local_path = None;
        }
        match tag {
            // Syncs sent during a COPY FROM STDIN are ignored by the primary.
            b'S' if !self.group.copy_in || self.group.copy_done => self.bounds.sync(),
            b'B' => {
                let name = frame.get(5..).and_then(split_cstr).and_then(|(_portal, rest)| cstr(rest));
                if let Some(p) = name.and_then(|n| self.prepared.get(n)) {
                    if let Some(control) = single_control(&p.classification) {
                        self.bounds.bind(&control, mentions_chain(&p.sql));
                    }
                }
            }
            _ => {}
        }
    }

    fn policy(&mut self) -> Arc<Policy> {
        self.tx_policy.get_or_insert_with(|| self.router.policy().current()).clone()
    }

    /// A message whose effect cannot be determined at all: the policy's `unknown` action
    /// applies when the policy could act on it.
    fn undecidable(&mut self, reason: &str) -> Option<Refusal> {
        let policy = self.policy();
        if !policy.can_decide() {
            return None;
        }
        self.router.unknown(reason, "", &policy)
    }

    /// Classify and decide a simple-protocol query; `Some` when it must be refused, with how
    /// many bytes of its text still run before the refusal (see [`Statements::kept`]).
    fn route(&mut self, sql: &str) -> Option<(Refusal, usize)> {
        let policy = self.policy();
        if !crate::replicate::needs_classification(&policy, sql) {
            self.bounds.query(None, false);
            return None;
        }
        let route = self.router.route(sql, self.search_path(), &policy);
        let statements = &route.classification.statements;
        let refusal = match route.refusal {
            Some(r) => Some((r, statements.iter().position(|s| matches!(s.kind, Kind::Unknown(_))).unwrap_or(0))),
            None => match self.replication.admit(&route.decisions, writes_rows(&route.classification)) {
                Admit::Refuse(r) => Some((r, self.first_refused(&policy, &route.classification))),
                _ => None,
            },
        };
        // A refused Query runs no transaction control (what it keeps has none), and what it
        // changes in the session is rolled back by the error.
        self.bounds.query(refusal.is_none().then_some(&route.classification), mentions_chain(sql));
        match refusal {
            Some((r, refused)) => Some((r, self.kept(sql, &route.classification, refused))),
            None => {
                self.after(&route.classification);
                None
            }
        }
    }

    /// What replaces a Query refused with `refusal` after it was routed (`route_query`):
    /// the statements before the refused one (see [`Self::kept`]), then the refusal.
    pub fn refused_query(&mut self, sql: &str, classification: &Classification, refusal: &Refusal) -> BytesMut {
        let statements = &classification.statements;
        let refused = match statements.iter().position(|s| matches!(s.kind, Kind::Unknown(_))) {
            Some(unknown) => unknown,
            None => {
                let policy = self.policy();
                self.first_refused(&policy, classification)
            }
        };
        refusal_query_after(&sql[..self.kept(sql, classification, refused)], refusal)
    }

    /// The first statement of a Query that is not admitted at once on its own (refused, or
    /// made to wait: what runs before a refusal must not have skipped a wait either); 0 when
    /// only the whole is refused.
    fn first_refused(&self, policy: &Policy, classification: &Classification) -> usize {
        classification
            .statements
            .iter()
            .position(|s| {
                let one = Classification { statements: vec![s.clone()] };
                !matches!(self.replication.admit(&policy.decide(&one), writes_rows(&one)), Admit::Go)
            })
            .unwrap_or(0)
    }

    /// How much of a Query refused at its statement `refused` still runs: the statements
    /// before it, whose results the client gets before the error, as from PostgreSQL when a
    /// statement fails. Only when none of them is transaction control: then the error aborts
    /// whatever they changed, and nothing of it commits without capgate's coordination.
    fn kept(&self, sql: &str, classification: &Classification, refused: usize) -> usize {
        let before = classification.statements.get(..refused).unwrap_or_default();
        if before.is_empty() || before.iter().any(|s| matches!(s.kind, Kind::Transaction(_))) {
            return 0;
        }
        match crate::classify::statement_ends(crate::classify::Dialect::Postgres, self.search_path(), sql) {
            Some(ends) if ends.len() == classification.statements.len() => ends.get(refused - 1).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// The same at Parse, remembering the classification under the statement's name.
    fn route_prepared(&mut self, name: &str, sql: &str) -> Option<Refusal> {
        let policy = self.policy();
        if !crate::replicate::needs_classification(&policy, sql) {
            self.prepared.remove(name);
            return None;
        }
        let route = self.router.route(sql, self.search_path(), &policy);
        let copy_in = is_copy_from_stdin(sql);
        self.prepared.insert(name.to_owned(), Prepared { sql: sql.into(), classification: route.classification.clone(), copy_in });
        if route.refusal.is_none() {
            // Session changes take effect when the statement runs; a prepared SET is rare
            // enough to follow at Parse.
            self.after(&route.classification);
        }
        if copy_in && route.refusal.is_none() {
            // Refused here, not at its Bind: a client that sees a COPY's Bind fail still
            // sends CopyFail and a second Sync, whose extra ReadyForQuery tokio-postgres
            // hands to its next request. A refused Parse ends its prepare, before any Bind.
            if let Admit::Refuse(refusal) = self.replication.admit(&route.decisions, writes_rows(&route.classification)) {
                return Some(refusal);
            }
        }
        route.refusal
    }

    /// A Parse of `COPY … FROM STDIN` whose write must wait for a replica (`on_partition =
    /// "block"`): the decisions to wait on, so the coordinator waits at the Parse and a
    /// refusal after the wait is given there too (see [`Self::route_prepared`]).
    pub fn copy_waits(&mut self, frame: &[u8]) -> Option<Vec<crate::policy::Decision>> {
        let sql = frame.get(5..).and_then(split_cstr).and_then(|(_, rest)| cstr(rest))?;
        let policy = self.policy();
        if !is_copy_from_stdin(sql) || !policy.replicates_anything() || !crate::replicate::needs_classification(&policy, sql) {
            return None;
        }
        let route = self.router.route(sql, self.search_path(), &policy);
        if route.refusal.is_some() {
            return None;
        }
        match self.replication.admit(&route.decisions, writes_rows(&route.classification)) {
            Admit::Wait { .. } => Some(route.decisions),
            _ => None,
        }
    }

    /// Follow search_path changes.
    fn after(&mut self, classification: &Classification) {
        for statement in &classification.statements {
            if let Kind::Session(change) = &statement.kind {
                match change {
                    SessionChange::SearchPath { schemas, local: false } => {
                        self.path = substitute_user(schemas, &self.user);
                        self.local_path = None;
                    }
                    SessionChange::SearchPath { schemas, local: true } => self.local_path = Some(substitute_user(schemas, &self.user)),
                    SessionChange::ResetSearchPath | SessionChange::ResetAll => {
                        self.path = self.initial_path.clone();
                        self.local_path = None;
                    }
                    SessionChange::Discard => {
                        // DISCARD ALL also deallocates every prepared statement.
                        self.path = self.initial_path.clone();
                        self.local_path = None;
                        self.prepared.clear();
                    }
                    SessionChange::Deallocate(Some(name)) => {
                        self.prepared.remove(name);
                    }
                    SessionChange::Deallocate(None) => self.prepared.clear(),
                    SessionChange::Other => {}
                }
            }
        }
    }
}

/// The text of a NUL-terminated string at the front of `b`.
pub(crate) fn cstr(b: &[u8]) -> Option<&str> {
    split_cstr(b).map(|(s, _)| s)
}

pub(crate) fn split_cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DEALLOCATE forgets the statements it deallocates (a client naming each statement
    /// anew and deallocating them would otherwise grow the map for the life of the session).
    #[test]
    fn deallocate_forgets_prepared_statements() {
        use crate::classify::{Catalog, Dialect};
        use crate::policy::PolicyHandle;
        let text = "default = \"local\"\n[[table]]\nmatch = \"public.t\"\nmode = \"async\"\n";
        let policy = Policy::parse(text, std::path::Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}"));
        let router = Arc::new(Router::new(Dialect::Postgres, Arc::new(PolicyHandle::fixed(policy)), Catalog::new()));
        let startup = StartupMessage { major: 3, minor: 0, params: vec![("user".into(), "u".into())] };
        let state = SessionState::new();
        let config = crate::config::Config::parse(
            "site = \"t\"\n[primary]\nurl = \"postgres://u@127.0.0.1:1/db\"\n",
            std::path::Path::new("c.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let replication = Arc::new(Replication::with_sites(&config, crate::sites::Sites::new(Vec::new())));
        let mut s = Statements::new(router, replication, &startup);
        let parse = |name: &str| {
            let mut body = format!("{name}\0INSERT INTO t VALUES (1)\0").into_bytes();
            body.extend([0, 0]);
            let mut f = vec![b'P'];
            f.extend((body.len() as u32 + 4).to_be_bytes());
            f.extend(body);
            f
        };
        let query = |sql: &str| {
            let mut f = vec![b'Q'];
            f.extend((sql.len() as u32 + 5).to_be_bytes());
            f.extend(sql.as_bytes());
            f.push(0);
            f
        };
        for name in ["a", "b", "C"] {
            assert_eq!(s.on_frame(&state, b'P', &parse(name)), Flow::Continue);
            assert!(s.prepared(name).is_some(), "{name} not tracked");
        }
        s.on_frame(&state, b'Q', &query("DEALLOCATE a"));
        assert!(s.prepared("a").is_none() && s.prepared("b").is_some());
        // Unquoted names fold to lower case, as PostgreSQL folds them: "C" stays.
        s.on_frame(&state, b'Q', &query("DEALLOCATE PREPARE C"));
        assert!(s.prepared("C").is_some());
        s.on_frame(&state, b'Q', &query("DEALLOCATE \"C\""));
        assert!(s.prepared("C").is_none());
        s.on_frame(&state, b'Q', &query("DEALLOCATE ALL"));
        assert!(s.prepared("b").is_none());
    }
}
