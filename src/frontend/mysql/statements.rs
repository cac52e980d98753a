//! What the session's commands do, as they pass from the client to the primary: each
//! command is queued with the reply it will get; statements are classified and decided by
//! the policy the current transaction started with (tables resolve against the current
//! database); `KILL` may only name a connection of the same user.
//!
//! With MySQL replicas configured, a COMMIT is held for the sync commit (`super::hold`);
//! async and bounded tables are captured on the primary and shipped later, and a write to a
//! bounded table is refused while a replica is over the table's `max_lag` (decision 0021).
//! Without replicas, a write to a replicated table is logged and counted. A statement the policy refuses
//! (`unknown = "refuse"`) gets an ERR in its place, and the session goes on: MySQL keeps the
//! transaction open after an error, and so does capgate. An admin command (`SHOW CAPGATE …`)
//! is not forwarded at all: capgate answers it (`super::admin_sql`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::warn;

use super::relay::{After, Flow, Pending, Prepared};
use super::sync::ReplicaSlot;
use super::truncate::Target;
use super::Shared;
use super::{admin_sql, implicit};
use crate::classify::{Classification, Kind, SearchPath, TxControl};
use crate::policy::{Decision, Mode, Policy};
use crate::protocol::mysql::command::{parse_kill, Command, Kill};
use crate::protocol::mysql::response::{Reply, Tracker};
use crate::protocol::mysql::{errors, packet, status};

// The decisions that hold, carry or refuse a statement for sync replication (a child module:
// it reads the tracker's own fields).
#[path = "statements_hold.rs"]
mod hold_rules;

/// What the client pump does with a client packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Data for the command in progress (file contents, an authentication answer): forward.
    Data,
    /// A command, queued with its reply: forward. `quit`: it was COM_QUIT.
    Forward { quit: bool },
    /// A command, queued with its reply: forward this payload in its place (capgate changed
    /// its text: `super::locks`).
    Rewritten(Vec<u8>),
    /// Not forwarded; this ERR is the reply, in its turn.
    Refuse(Vec<u8>),
    /// Not forwarded; the session ends with this ERR.
    Fatal(Vec<u8>),
    /// An admin command (`SHOW CAPGATE …`): not forwarded; capgate answers it once every
    /// earlier reply is in (`super::admin_sql`).
    Admin(String),
    /// A commit point capgate may have to coordinate while sync tables are replicated: not
    /// forwarded as it is; the client pump decides once every earlier reply is in
    /// (`super::hold`).
    Hold(Held),
}

/// A held command, and the payload capgate sends in its place when it changed the text
/// (`super::locks`).
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub hold: Hold,
    pub payload: Option<Vec<u8>>,
}

impl From<Hold> for Held {
    fn from(hold: Hold) -> Held {
        Held { hold, payload: None }
    }
}

/// Why a command is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A COMMIT.
    Commit,
    /// A statement that commits an open transaction implicitly (BEGIN): the transaction's
    /// sync changes are coordinated first.
    ImplicitCommit,
    /// `SET autocommit = 1`: like [`Hold::ImplicitCommit`] when autocommit is off; with it
    /// on (a transaction opened by BEGIN) it commits nothing and goes on as it came.
    AutocommitOn,
    /// DDL: commits implicitly too, and may change what is captured: the capture triggers are
    /// reconciled before the client gets the reply.
    Ddl,
    /// A statement that may write a sync table: outside a transaction in autocommit mode,
    /// capgate runs it in a transaction of its own and coordinates that.
    Autocommit,
    /// DDL of an async or bounded table capgate carries to the replicas in capture order
    /// (`super::ddl`, decision 0040): the open transaction is committed (coordinated when
    /// sync tables are replicated) as the DDL would, then the DDL runs and is recorded.
    CarryDdl(super::ddl::Target),
    /// A TRUNCATE of a replicated table: commits the open transaction (coordinated), then
    /// capgate carries it in place of the statement (`super::truncate`, decision 0029).
    Truncate(Target),
    /// A multi-statement query capgate runs in parts (`super::parts`): a write to a replicated
    /// table after DDL runs once the capture triggers follow the DDL, and a write to a sync
    /// table after a statement that commits implicitly runs, in autocommit mode, as
    /// [`Hold::Autocommit`] would run it. The client gets the parts' replies as one.
    Split(Vec<super::parts::Part>),
}

/// A session's command tracking, owned by the client pump.
pub struct Statements {
    shared: Arc<Shared>,
    /// The user the client authenticated as (changed by COM_CHANGE_USER).
    user: String,
    /// The primary's thread id of this session.
    thread: u32,
    /// Negotiated on both legs; the reply trackers need them.
    deprecate_eof: bool,
    session_track: bool,
    /// MariaDB's extended column metadata: capgate's own result sets must carry it too.
    extended_metadata: bool,
    /// capgate authenticated the client itself (or greeted with its own nonce): a
    /// COM_CHANGE_USER cannot be relayed.
    own_auth: bool,
    /// The policy the current transaction started with.
    tx_policy: Option<Arc<Policy>>,
    /// The last statement sent for preparing: MariaDB's execute of statement id 0xFFFFFFFF
    /// runs it, possibly before its PREPARE_OK has arrived.
    last_prepare: Option<Prepared>,
    /// The session sent `LOCK TABLES` and no `UNLOCK TABLES` since: only then does `UNLOCK
    /// TABLES` commit an open transaction, and capgate must not open a transaction of its own
    /// with `BEGIN`, which would release the locks (tracked while sync tables are replicated).
    locked_tables: bool,
    /// The session may send several statements in one query (CLIENT_MULTI_STATEMENTS, or
    /// COM_SET_OPTION): only then may capgate run a query in two parts.
    multi_statements: bool,
    /// The primary is MariaDB (its greeting says so): `LOCK TABLES … WRITE CONCURRENT` exists.
    mariadb: bool,
    /// This session's replica connections for sync commits (empty: no MySQL replicas).
    pub(super) slots: Vec<Arc<ReplicaSlot>>,
}

impl Statements {
    pub fn new(shared: Arc<Shared>, user: String, thread: u32, caps: u64, own_auth: bool, mariadb: bool) -> Statements {
        use crate::protocol::mysql::caps as c;
        Statements {
            user,
            thread,
            deprecate_eof: caps & c::DEPRECATE_EOF != 0,
            session_track: caps & c::SESSION_TRACK != 0,
            extended_metadata: caps & c::MARIADB_EXTENDED_METADATA != 0,
            own_auth,
            tx_policy: None,
            last_prepare: None,
            locked_tables: false,
            multi_statements: caps & c::MULTI_STATEMENTS != 0,
            mariadb,
            slots: shared.sync.as_ref().map(|s| s.slots()).unwrap_or_default(),
            shared,
        }
    }

    fn refuse(code: (u16, &'static str), message: &str) -> Verdict {
        Verdict::Refuse(packet::err(1, code, message))
    }

    /// Decide about one command packet (a whole logical payload) and queue its reply.
    pub fn on_command(&mut self, flow: &mut Flow, payload: &[u8]) -> Verdict {
        if let Some(user) = flow.changed_user.take() {
            self.shared.threads.set_user(self.thread, &user);
            self.user = user;
        }
        if flow.status & status::IN_TRANS == 0 {
            self.tx_policy = None;
        }
        let command = Command::parse(payload);
        let mut after = After::Nothing;
        let mut rewritten = None;
        match command {
            Command::Query(sql) | Command::Prepare(sql) if super::reserved::names_capgate_variable(sql) => {
                return Self::refuse(
                    errors::SPECIFIC_ACCESS_DENIED,
                    "capgate: user variables named @capgate_… are capgate's own (its capture triggers read them to tell \
                     capgate's sessions apart); a client may not set or read them. Rename the variable",
                );
            }
            Command::Query(sql) => {
                match admin_sql::find(sql, flow.status) {
                    Some(admin_sql::Found::Alone(text)) => return Verdict::Admin(text),
                    Some(admin_sql::Found::Mixed) => return Verdict::Refuse(admin_sql::mixed_refusal()),
                    Some(admin_sql::Found::Prepared) => return Verdict::Refuse(admin_sql::sql_prepare_refusal()),
                    None => {}
                }
                if let Some(kill) = parse_kill(sql) {
                    if let Some(refusal) = self.kill(kill) {
                        return refusal;
                    }
                }
                if let Some(db) = use_database(sql) {
                    after = After::Database(db);
                }
                match self.route(flow, sql, true) {
                    Err(refusal) => return refusal,
                    Ok(Some(c)) if !self.slots.is_empty() => {
                        let text = String::from_utf8_lossy(sql);
                        let path = SearchPath::new(flow.schema.iter().cloned());
                        let texts = implicit::statement_texts(&text, &path, &c);
                        // Only a text capgate read as it is may be changed or cut.
                        let exact = matches!(text, std::borrow::Cow::Borrowed(_)).then_some(text.as_ref());
                        if let Some(verdict) = self.replicated_query(sql, exact, &c, &texts, &path) {
                            return verdict;
                        }
                    }
                    Ok(_) => {}
                }
            }
            Command::Prepare(sql) if admin_sql::find(sql, flow.status).is_some() => return Verdict::Refuse(admin_sql::prepare_refusal()),
            Command::Prepare(sql) => match self.route(flow, sql, false) {
                Ok(classification) => {
                    let (mut implicit_commit, mut autocommit_on, mut truncate, mut locks) = (false, false, None, None);
                    if let Some(c) = classification.as_ref().filter(|_| !self.slots.is_empty()) {
                        let text = String::from_utf8_lossy(sql);
                        let path = SearchPath::new(flow.schema.iter().cloned());
                        let texts = implicit::statement_texts(&text, &path, c);
                        if let Some(message) = implicit::truncates_replicated(c, &texts, &path, &self.policy()) {
                            return Self::refuse(errors::NOT_SUPPORTED, &message);
                        }
                        if let Some(message) = super::partitions::refusal(&texts, &path, &self.policy()) {
                            return Self::refuse(errors::NOT_SUPPORTED, &message);
                        }
                        if let Some(super::ddl::Judged::Refuse(message)) = super::ddl::judge(c, &texts, &self.policy(), false, true) {
                            return Self::refuse(errors::NOT_SUPPORTED, &message);
                        }
                        implicit_commit = implicit::any_commits(c, &texts, false);
                        autocommit_on = sets_autocommit_alone(c, &texts);
                        truncate = implicit::truncate_alone(c, &texts).cloned();
                        locks = implicit::lock_change(&texts);
                        // A prepared LOCK TABLES of a sync table is changed as the text one.
                        let exact = matches!(text, std::borrow::Cow::Borrowed(_)).then_some(text.as_ref());
                        let policy = self.policy();
                        rewritten = exact
                            .filter(|_| self.mariadb && policy.has_sync())
                            .and_then(|t| super::locks::with_capgate_tables(t, c, &texts, &policy))
                            .map(|t| [&[crate::protocol::mysql::com::STMT_PREPARE][..], t.as_bytes()].concat());
                    }
                    let prepared = Prepared { classification, implicit_commit, autocommit_on, truncate, locks };
                    self.last_prepare = Some(prepared.clone());
                    after = After::Prepared(prepared);
                }
                Err(refusal) => return refusal,
            },
            Command::Execute { statement } => {
                let prepared = match statement {
                    u32::MAX => self.last_prepare.clone(),
                    id => flow.prepared.get(&id).cloned(),
                };
                if let Some(Prepared { classification: Some(c), implicit_commit, autocommit_on, truncate, locks }) = prepared {
                    // A prepared TRUNCATE alone is carried like the text one, by the policy of
                    // this execution.
                    if let Some(table) = truncate.filter(|_| !self.slots.is_empty()) {
                        let d = self.policy().decide_table(&table);
                        if d.mode != Mode::Local {
                            if let Some(refusal) = self.admit(std::slice::from_ref(&d), true) {
                                return refusal;
                            }
                            return self.carry_truncate(&d, "the prepared TRUNCATE");
                        }
                    }
                    // UNLOCK TABLES commits only while tables are locked.
                    let implicit_commit = implicit_commit || (locks == Some(false) && self.locked_tables);
                    if let Some(locked) = locks.filter(|_| !self.slots.is_empty()) {
                        self.locked_tables = locked;
                    }
                    if let Some(hold) = self.hold_for(&c, implicit_commit) {
                        return Verdict::Hold(autocommit_hold(hold, autocommit_on).into());
                    }
                    let policy = self.policy();
                    let decisions = policy.decide(&c);
                    if let Some(refusal) = self.admit(&decisions, !has_ddl(&c)) {
                        return refusal;
                    }
                    self.count(&decisions);
                }
            }
            Command::Close { statement } => {
                flow.prepared.remove(&statement);
            }
            // COM_SET_OPTION: MYSQL_OPTION_MULTI_STATEMENTS_ON (0) or _OFF (1).
            Command::SetOption => {
                if let Some(&[a, b]) = payload.get(1..3) {
                    self.multi_statements = u16::from_le_bytes([a, b]) == 0;
                }
            }
            Command::InitDb(db) => after = After::Database(String::from_utf8_lossy(db).into_owned()),
            Command::ResetConnection => {
                self.locked_tables = false;
                after = After::Reset;
            }
            Command::ChangeUser => {
                if self.own_auth {
                    return Verdict::Fatal(packet::err(
                        1,
                        errors::NOT_SUPPORTED,
                        "capgate: COM_CHANGE_USER is not supported when capgate authenticates clients itself ([[users]]): reconnect instead",
                    ));
                }
                self.locked_tables = false;
                let user = payload.get(1..).and_then(crate::protocol::mysql::nul_str).map(|(u, _)| String::from_utf8_lossy(u).into_owned());
                after = After::User(user.unwrap_or_default());
            }
            Command::ProcessKill(id) => {
                if let Some(refusal) = self.kill(Kill::Thread(u64::from(id))) {
                    return refusal;
                }
            }
            Command::BulkExecute => {
                return Self::refuse(errors::UNKNOWN_COMMAND, "Unknown command: capgate does not offer COM_STMT_BULK_EXECUTE");
            }
            _ => {}
        }
        let reply = command.reply();
        if reply != Reply::Nothing {
            flow.queue.push_back(Pending::Reply { tracker: Tracker::new(reply, self.deprecate_eof, self.session_track), after });
        }
        match rewritten {
            Some(payload) => Verdict::Rewritten(payload),
            None => Verdict::Forward { quit: command == Command::Quit },
        }
    }

    /// A tracker for the reply of a command of kind `reply` on this session's connection.
    pub(super) fn tracker(&self, reply: Reply) -> Tracker {
        Tracker::new(reply, self.deprecate_eof, self.session_track)
    }

    pub(super) fn deprecate_eof(&self) -> bool {
        self.deprecate_eof
    }

    /// How a result set capgate writes itself is framed on this session.
    pub(super) fn framing(&self) -> crate::protocol::mysql::result_set::Framing {
        crate::protocol::mysql::result_set::Framing { deprecate_eof: self.deprecate_eof, extended_metadata: self.extended_metadata }
    }

    /// The user the session belongs to now.
    pub(super) fn user(&self) -> &str {
        &self.user
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(super) fn policy(&mut self) -> Arc<Policy> {
        self.tx_policy.get_or_insert_with(|| self.shared.router.policy().current()).clone()
    }

    /// Classify and decide a statement text: its classification when the policy needed one,
    /// or the refusal. `run`: the statement runs now (a query, not a prepare), so its writes
    /// are counted.
    fn route(&mut self, flow: &Flow, sql: &[u8], run: bool) -> Result<Option<Arc<Classification>>, Verdict> {
        let policy = self.policy();
        if !policy.can_decide() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(sql);
        let path = SearchPath::new(flow.schema.iter().cloned());
        let route = match std::str::from_utf8(sql) {
            Ok(_) => self.shared.router.route(&text, &path, &policy),
            Err(_) => {
                let refusal = self.shared.router.unknown("the statement text is not valid UTF-8", &text, &policy);
                if let Some(r) = refusal {
                    return Err(Self::refuse(errors::NOT_SUPPORTED, &format!("{} ({})", r.message, r.hint)));
                }
                return Ok(None);
            }
        };
        if let Some(r) = &route.refusal {
            return Err(Self::refuse(errors::NOT_SUPPORTED, &format!("{} (hint: {})", r.message, r.hint)));
        }
        if run {
            if let Some(refusal) = self.admit(&route.decisions, !has_ddl(&route.classification)) {
                return Err(refusal);
            }
            self.count(&route.decisions);
        }
        Ok(Some(route.classification))
    }

    /// Whether the writes of `decisions` may run now: when they write rows (`rows`: not
    /// DDL), the tables' capture triggers must already record as the policy says (right
    /// after a reload they may not, and such a write would reach the primary alone); a
    /// bounded table's oldest pending change must be within its `max_lag` on every replica
    /// (and its lag known). The refusal names the table, the policy and the remedy.
    fn admit(&mut self, decisions: &[Decision], rows: bool) -> Option<Verdict> {
        if rows {
            if let Some(refusal) = self.capture_ready(decisions) {
                return Some(refusal);
            }
        }
        let fleet = self.shared.shipping.get()?;
        decisions.iter().find_map(|d| {
            let Mode::Bounded { max_lag, .. } = d.mode else { return None };
            let (replica, lag) = fleet.over_budget(&d.table.to_string(), max_lag)?;
            let behind =
                if lag.is_finite() { format!("is {lag:.1} s behind on it") } else { "has a lag capgate cannot measure now".into() };
            Some(Self::refuse(
                errors::REPLICA_BEHIND,
                &format!(
                    "capgate refused this write to {}: replica \"{replica}\" {behind}, over the table's budget max_lag = {max_lag:?} \
                     (mode bounded, rule {}); retry once the replica has caught up (see capgate's /status), or raise max_lag / \
                     make the table async in the policy",
                    d.table, d.rule
                ),
            ))
        })
    }

    /// The refusal of a write to a table whose capture triggers do not yet follow the policy
    /// in force (a reload made it replicated, or changed it between sync and async; the
    /// triggers follow within a fraction of a second).
    fn capture_ready(&mut self, decisions: &[Decision]) -> Option<Verdict> {
        let policy = self.policy();
        decisions.iter().find_map(|d| {
            let version = self.shared.capture_pending(&policy, d)?;
            Some(Self::refuse(
                errors::CAPTURE_NOT_READY,
                &format!(
                    "capgate refused this write to {} (mode {}, rule {}): its capture triggers on the primary still follow policy \
                     version {version}, and a write now would not be replicated; nothing was written. capgate installs them \
                     within a second of a policy reload: retry (if this lasts, capgate's log says why they cannot be installed)",
                    d.table,
                    d.mode.name(),
                    d.rule
                ),
            ))
        })
    }

    /// Count (and log, sparingly) writes to replicated tables that reach the primary only
    /// (no replicas configured, or no shipper running for async and bounded tables).
    fn count(&self, decisions: &[Decision]) {
        let sync_replicated = !self.slots.is_empty();
        let shipped = self.shared.shipping.get().is_some();
        let replicated = |m: &Mode| match m {
            Mode::Local => true,
            Mode::Sync { .. } => sync_replicated,
            Mode::Async { .. } | Mode::Bounded { .. } => shipped,
        };
        for d in decisions.iter().filter(|d| !replicated(&d.mode)) {
            let n = self.shared.counters.unreplicated_writes.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n % 1000 == 0 {
                warn!(
                    table = %d.table,
                    mode = d.mode.name(),
                    rule = %d.rule,
                    count = n,
                    "write to a replicated table relayed to the primary only: no replica is configured"
                );
            }
        }
    }

    /// `None` when the KILL may go on; the refusal when it names a connection that is not
    /// this user's.
    fn kill(&self, kill: Kill) -> Option<Verdict> {
        match kill {
            Kill::Thread(id) => {
                let own = u32::try_from(id).is_ok_and(|id| id == self.thread || self.shared.threads.owned_by(id, &self.user));
                (!own).then(|| Self::refuse(errors::NO_SUCH_THREAD, &format!("Unknown thread id: {id}")))
            }
            Kill::Other => Some(Self::refuse(
                errors::NOT_SUPPORTED,
                "capgate relays KILL [CONNECTION | QUERY] <thread id> only (a session may kill its own user's connections): \
                 KILL USER and KILL QUERY ID are not supported",
            )),
        }
    }
}

/// A COMMIT alone (COMMIT, COMMIT WORK, `XA COMMIT … ONE PHASE` is not the client's to send
/// here): where a transaction's sync changes are coordinated.
fn is_commit(c: &Classification) -> bool {
    matches!(c.statements.as_slice(), [one] if one.kind == Kind::Transaction(TxControl::Commit))
}

/// Whether `c` is one statement, `texts[0]`, that turns autocommit on: it commits an open
/// transaction only when autocommit was off, which the status flags tell once it is held.
/// In a multi-statement query the flags of the moment are unknown.
fn sets_autocommit_alone(c: &Classification, texts: &[&str]) -> bool {
    matches!((c.statements.as_slice(), texts), ([_], [text]) if implicit::enables_autocommit(text))
}

/// The hold of a statement held as `hold`: [`Hold::AutocommitOn`] instead of
/// [`Hold::ImplicitCommit`] when it is a `SET autocommit = 1` alone (`autocommit_on`), for
/// a query and for an execution of a prepared statement alike.
fn autocommit_hold(hold: Hold, autocommit_on: bool) -> Hold {
    if hold == Hold::ImplicitCommit && autocommit_on {
        Hold::AutocommitOn
    } else {
        hold
    }
}

/// Whether a statement of `c` is DDL (it writes no rows).
fn has_ddl(c: &Classification) -> bool {
    c.statements.iter().any(|s| s.kind == Kind::Ddl)
}

/// Whether `sql` is a `LOAD DATA LOCAL` statement.
fn is_load_local(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_uppercase();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    words.len() == 3 && words[0] == "LOAD" && words[1] == "DATA" && words[2] == "LOCAL"
}

/// The database a `USE db` statement selects (backticks removed), if `sql` is one.
fn use_database(sql: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(sql).ok()?.trim();
    let (word, rest) = text.split_once(|c: char| c.is_whitespace())?;
    if !word.eq_ignore_ascii_case("use") {
        return None;
    }
    let name = rest.trim().trim_end_matches(';').trim();
    let name = match name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
        Some(quoted) => quoted.replace("``", "`"),
        None => name.to_owned(),
    };
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::use_database;

    #[test]
    fn use_statements() {
        assert_eq!(use_database(b"USE shop").as_deref(), Some("shop"));
        assert_eq!(use_database(b"  use `my``db`;").as_deref(), Some("my`db"));
        assert_eq!(use_database(b"USER"), None);
        assert_eq!(use_database(b"SELECT 1"), None);
    }
}
