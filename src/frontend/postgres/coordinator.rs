//! The coordinator: takes a session over from the streaming relay when it writes a
//! replicated table, and hands it back once the transaction has ended.
//!
//! While it holds the session it relays one client message at a time and reads the
//! primary's replies before going on, so it can act between them:
//!
//! - `sync` tables: the statement runs on the primary first, then — when the primary
//!   succeeded — on every replica inside one replica transaction per client transaction
//!   (primary first: sending both at once would let two transactions take the same row
//!   locks in opposite orders on the two sites, a deadlock neither database can see). At
//!   COMMIT: `PREPARE TRANSACTION` on the replicas, the decision record inside the primary
//!   transaction, the primary's COMMIT, then `COMMIT PREPARED` off the client's critical path.
//!   If a replica fails, the primary transaction is made to fail in the statement's place (the
//!   primary raises the error), so nothing commits anywhere.
//! - `async` and `bounded` tables: after the primary executed the statement, its outbox row
//!   is inserted in the same transaction; the ordering step runs just before COMMIT.
//! - An autocommit statement (or extended-protocol group) is wrapped in a transaction capgate
//!   opens and commits, hidden from the client, so the same guarantees hold; a sync autocommit
//!   statement costs one round trip to each replica (`BEGIN; stmt; PREPARE TRANSACTION`).
//!
//! Replies to capgate's own statements never reach the client; the session's bookkeeping
//! ([`SessionState`]) is kept exactly as the streaming relay keeps it, so streaming resumes
//! seamlessly.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;
use tracing::{debug, warn};

use super::relay::{self, Flow, SessionState};
use super::statements::{cstr, raise_statement, refusal_query, split_cstr, Prepared, Statements};
use super::{SessionError, Shared};
use crate::classify::{Dialect, Kind, TxControl};
use crate::policy::{Decision, Mode, OnPartition};
use crate::protocol::postgres::message::{write_frame, ErrorMessage, Severity};
use crate::protocol::postgres::FrameError;
use crate::replicate::determinism::{self, Pins};
use crate::replicate::outbox::capture::ORDER_SQL;
use crate::replicate::outbox::literal;
use crate::replicate::outbox::{Capture, Param, ParamFormat};
use crate::replicate::Refusal;
use crate::sites::postgres::PgConnector;
use crate::sites::Pooled;

/// SQLSTATE of a write refused or rolled back because a replica could not take part
/// (partitioned, too slow, failed): object_not_in_prerequisite_state.
pub const UNAVAILABLE: &str = "55000";

/// The statement and portal names capgate uses for its own extended-protocol messages.
const OWN: &str = "capgate_own";

/// How the coordinator ended.
pub enum Exit {
    /// The session is idle again: the streaming relay takes over.
    Resume,
    /// The client closed the session (Terminate or end of stream).
    Closed,
}

/// One replica's side of a client transaction.
struct ReplicaTx {
    conn: Pooled<PgConnector>,
    /// Savepoints created on the replica, in order.
    savepoints: Vec<String>,
    /// BEGIN was sent.
    open: bool,
    /// The gid `PREPARE TRANSACTION` succeeded with.
    prepared: Option<String>,
}

/// A client transaction that wrote replicated tables.
struct Txn {
    /// capgate opened it around an autocommit statement or group, and commits it.
    wrapped: bool,
    pins: Pins,
    replicas: Vec<ReplicaTx>,
    /// Outbox inserts of the transaction's async and bounded writes, run together with the
    /// ordering step just before COMMIT (one round trip, whatever their number).
    captures: Vec<String>,
    /// Savepoints and how many captures existed when each was set: ROLLBACK TO drops the
    /// captures made after it.
    marks: Vec<(String, usize)>,
    /// The sync tables written, for messages.
    sync_tables: Vec<String>,
    started: Instant,
}

impl Txn {
    fn new(wrapped: bool) -> Txn {
        Txn {
            wrapped,
            pins: Pins::at(SystemTime::now()),
            replicas: Vec::new(),
            captures: Vec::new(),
            marks: Vec::new(),
            sync_tables: Vec::new(),
            started: Instant::now(),
        }
    }

    fn has_work(&self) -> bool {
        !self.captures.is_empty() || !self.replicas.is_empty()
    }

    /// What runs on the primary just before its COMMIT: the outbox inserts, the decision
    /// record of the two-phase commit, the ordering step.
    fn before_commit(&self, gid: &str, site: &str) -> Vec<String> {
        let mut out = self.captures.clone();
        if self.replicas.iter().any(|r| r.prepared.is_some()) {
            out.push(decision_sql(gid, site));
        }
        if !self.captures.is_empty() {
            out.push(ORDER_SQL.to_owned());
        }
        out
    }

    /// Follow a savepoint statement for the captures.
    fn savepoint(&mut self, upper: &str, name: &str) {
        if upper.starts_with("SAVEPOINT") {
            self.marks.push((name.to_owned(), self.captures.len()));
        } else if upper.starts_with("RELEASE") {
            if let Some(i) = self.marks.iter().position(|(n, _)| n == name) {
                self.marks.truncate(i);
            }
        } else {
            match self.marks.iter().rposition(|(n, _)| n == name) {
                Some(i) => {
                    self.captures.truncate(self.marks[i].1);
                    self.marks.truncate(i + 1);
                }
                // Set before the first replicated write: everything captured goes.
                None => {
                    self.captures.clear();
                    self.marks.clear();
                }
            }
        }
    }
}

/// A bound portal of a prepared statement that writes.
struct Portal {
    statement: String,
    params: Vec<Param>,
    /// The result format codes the client asked for.
    result_formats: Vec<u16>,
}

/// Which message carries the statement being coordinated.
enum Carrier {
    /// A Query message with this text.
    Simple(String),
    /// An Execute message (whole frame) of a portal of this prepared statement.
    Extended { execute: BytesMut, prepared: Prepared, params: Vec<Param>, result_formats: Vec<u16> },
}

impl Carrier {
    fn sql(&self) -> &str {
        match self {
            Carrier::Simple(sql) => sql,
            Carrier::Extended { prepared, .. } => &prepared.sql,
        }
    }
}

/// One primary reply frame: tag and whole frame.
type Frame = (u8, BytesMut);

pub struct Coordinator<'a, CR, CW, SR, SW> {
    shared: &'a Shared,
    state: &'a SessionState,
    statements: &'a mut Statements,
    client_rd: &'a mut CR,
    client_wr: &'a mut CW,
    server_rd: &'a mut SR,
    server_wr: &'a mut SW,
    cbuf: &'a mut BytesMut,
    sbuf: &'a mut BytesMut,
    max: u32,
    txn: Option<Txn>,
    portals: HashMap<String, Portal>,
    /// The primary skips messages up to the next Sync (an error in this extended group).
    group_failed: bool,
    /// The client ran BEGIN in the current extended group (the status byte says idle).
    group_began: bool,
    /// Bytes for the client, written before any wait.
    out: BytesMut,
}

impl<'a, CR, CW, SR, SW> Coordinator<'a, CR, CW, SR, SW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a Shared,
        state: &'a SessionState,
        statements: &'a mut Statements,
        client: (&'a mut CR, &'a mut CW, &'a mut BytesMut),
        server: (&'a mut SR, &'a mut SW, &'a mut BytesMut),
    ) -> Self {
        Coordinator {
            max: shared.config.max_message_size,
            shared,
            state,
            statements,
            client_rd: client.0,
            client_wr: client.1,
            cbuf: client.2,
            server_rd: server.0,
            server_wr: server.1,
            sbuf: server.2,
            txn: None,
            portals: HashMap::new(),
            group_failed: false,
            group_began: false,
            out: BytesMut::new(),
        }
    }

    /// Relay message by message until the session is idle with no replicated work open.
    pub async fn run(mut self) -> Result<Exit, SessionError> {
        let result = self.run_inner().await;
        // Whatever happened, a replica transaction must not stay open: roll it back (a
        // prepared one is left to recovery, which knows whether the primary committed).
        if let Some(txn) = self.txn.take() {
            release(txn, false);
        }
        result
    }

    async fn run_inner(&mut self) -> Result<Exit, SessionError> {
        // The held frame is handled first, whatever the state.
        let mut first = true;
        loop {
            if !first && self.txn.is_none() && self.state.is_idle() && !self.state.owed() {
                self.flush_client().await?;
                return Ok(Exit::Resume);
            }
            first = false;
            let Some(frame) = read_frame(self.client_rd, self.cbuf, self.max).await? else {
                return Ok(Exit::Closed);
            };
            let tag = frame[0];
            match tag {
                b'Q' => self.query(frame).await?,
                b'E' => self.execute(frame).await?,
                b'S' => self.sync(frame).await?,
                b'B' => {
                    self.bind(&frame);
                    self.forward_client(tag, &frame).await?;
                }
                b'P' | b'C' | b'F' => {
                    relay::client_frame(self.state, tag);
                    let bytes = match self.statements.on_frame(self.state, tag, &frame) {
                        Flow::Replace(bytes) => bytes,
                        _ => frame,
                    };
                    self.server_wr.write_all(&bytes).await.map_err(SessionError::Io)?;
                    if tag == b'F' {
                        self.relay_replies().await?;
                    }
                }
                b'H' => {
                    self.forward_client(tag, &frame).await?;
                    self.relay_replies().await?;
                }
                b'X' => {
                    let _ = self.server_wr.write_all(&frame).await;
                    return Ok(Exit::Closed);
                }
                _ => self.forward_client(tag, &frame).await?,
            }
            self.flush_client().await?;
        }
    }

    /// Forward a client frame as it is, with the relay's bookkeeping.
    async fn forward_client(&mut self, tag: u8, frame: &[u8]) -> Result<(), SessionError> {
        relay::client_frame(self.state, tag);
        self.server_wr.write_all(frame).await.map_err(SessionError::Io)
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.client_wr.write_all(&self.out).await.map_err(SessionError::Io)?;
            self.client_wr.flush().await.map_err(SessionError::Io)?;
            self.out.clear();
        }
        Ok(())
    }

    async fn send_server(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.server_wr.write_all(bytes).await.map_err(SessionError::Io)?;
        self.server_wr.flush().await.map_err(SessionError::Io)
    }

    async fn server_frame(&mut self) -> Result<Frame, SessionError> {
        match read_frame(self.server_rd, self.sbuf, u32::MAX).await? {
            Some(f) => Ok((f[0], f)),
            None => Err(SessionError::Closed),
        }
    }

    /// Relay the primary's replies to the client until every reply owed has arrived.
    async fn relay_replies(&mut self) -> Result<(), SessionError> {
        while self.state.owed() {
            let (tag, frame) = self.server_frame().await?;
            self.pass_reply(tag, frame).await?;
        }
        Ok(())
    }

    /// One reply from the primary to the client, with the relay's bookkeeping; COPY FROM
    /// STDIN hands the floor to the client until its CopyDone or CopyFail.
    async fn pass_reply(&mut self, tag: u8, frame: BytesMut) -> Result<(), SessionError> {
        let extended = self.state.hidden.lock().unwrap_or_else(|p| p.into_inner()).front_is_extended();
        if let Flow::Replace(_) = relay::server_frame(self.state, tag, Some(&frame), &|| false) {
            return Ok(());
        }
        match tag {
            b'E' if extended => self.group_failed = true,
            b'Z' => {
                self.group_failed = false;
                self.group_began = false;
                self.after_ready();
            }
            _ => {}
        }
        self.out.extend_from_slice(&frame);
        if tag == b'G' {
            self.flush_client().await?;
            self.copy_in().await?;
        } else if self.out.len() > 64 * 1024 {
            self.flush_client().await?;
        }
        Ok(())
    }

    /// Client COPY data to the primary until CopyDone or CopyFail.
    async fn copy_in(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(frame) = read_frame(self.client_rd, self.cbuf, self.max).await? else {
                return Err(SessionError::Closed);
            };
            let tag = frame[0];
            self.forward_client(tag, &frame).await?;
            if matches!(tag, b'c' | b'f') {
                self.server_wr.flush().await.map_err(SessionError::Io)?;
                return Ok(());
            }
        }
    }

    /// After a ReadyForQuery: a transaction that ended without capgate's commit (rolled
    /// back, or aborted) releases its replicas.
    fn after_ready(&mut self) {
        let status = self.state.tx_status.load(std::sync::atomic::Ordering::Acquire);
        if status == b'I' {
            if let Some(txn) = self.txn.take() {
                release(txn, false);
            }
        }
    }

    fn status(&self) -> u8 {
        self.state.tx_status.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Remember a Bind's portal when its statement writes (for the Execute).
    fn bind(&mut self, frame: &[u8]) {
        let body = &frame[5..];
        let Some((portal, rest)) = split_cstr(body) else { return };
        let Some((statement, rest)) = split_cstr(rest) else { return };
        let Some(p) = self.statements.prepared(statement) else {
            self.portals.remove(portal);
            return;
        };
        let types = p.param_types.clone();
        match parse_bind_params(rest, &types) {
            Some((params, result_formats)) => {
                self.portals.insert(portal.to_owned(), Portal { statement: statement.to_owned(), params, result_formats });
            }
            None => {
                self.portals.remove(portal);
            }
        }
    }

    // ----- simple protocol -------------------------------------------------------------

    async fn query(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let Some(sql) = cstr(&frame[5..]).map(str::to_owned) else {
            // Not UTF-8: the statement tracker decides (refuses or relays).
            relay::client_frame(self.state, b'Q');
            let bytes = match self.statements.on_frame(self.state, b'Q', &frame) {
                Flow::Replace(b) => b,
                _ => frame,
            };
            self.send_server(&bytes).await?;
            return self.relay_replies().await;
        };
        let route = self.statements.route_query(self.state, &sql);
        if let Some(refusal) = &route.refusal {
            relay::client_frame(self.state, b'Q');
            self.send_server(&refusal_query(refusal)).await?;
            return self.relay_replies().await;
        }
        let replicated: Vec<Decision> = route.replicated().cloned().collect();
        let single = route.classification.statements.len() == 1;
        let control = match route.classification.statements.first().map(|s| &s.kind) {
            Some(Kind::Transaction(c)) if single => Some(c.clone()),
            _ => None,
        };
        if let (Some(control), true) = (control, self.txn.is_some()) {
            return self.control(Carrier::Simple(sql), control).await;
        }
        if replicated.is_empty() || self.status() == b'E' {
            return self.plain_query(&frame).await;
        }
        if !single {
            let tables = names(&replicated);
            let refusal = Refusal {
                code: "0A000",
                message: format!("capgate refused this query string: it holds several statements and writes the replicated table(s) {tables}; capgate coordinates a replicated write one statement at a time"),
                hint: "send each statement as its own query (most drivers do), or use the extended protocol".into(),
            };
            return self.refuse(&Carrier::Simple(sql), refusal).await;
        }
        self.write(Carrier::Simple(sql), replicated).await
    }

    async fn plain_query(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        relay::client_frame(self.state, b'Q');
        self.send_server(frame).await?;
        self.relay_replies().await
    }

    // ----- extended protocol -----------------------------------------------------------

    async fn execute(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let portal = cstr(&frame[5..]).unwrap_or_default().to_owned();
        let found = self.portals.get(&portal).map(|p| (p.statement.clone(), p.params.clone(), p.result_formats.clone()));
        let Some((statement, params, result_formats)) = found else {
            return self.forward_client(b'E', &frame).await;
        };
        let Some((prepared, decisions)) = self.statements.decide_prepared(self.state, &statement) else {
            return self.forward_client(b'E', &frame).await;
        };
        let control = match prepared.classification.statements.first().map(|s| &s.kind) {
            Some(Kind::Transaction(c)) if prepared.classification.statements.len() == 1 => Some(c.clone()),
            _ => None,
        };
        if control == Some(TxControl::Begin) {
            self.group_began = true;
        }
        if self.group_failed {
            return self.forward_client(b'E', &frame).await;
        }
        if let (Some(control), true) = (control, self.txn.is_some()) {
            return self.control(Carrier::Extended { execute: frame, prepared, params, result_formats }, control).await;
        }
        let replicated: Vec<Decision> = decisions.into_iter().filter(|d| d.mode != Mode::Local).collect();
        if replicated.is_empty() || self.status() == b'E' {
            return self.forward_client(b'E', &frame).await;
        }
        let mut prepared = prepared;
        let mut params = params;
        if prepared.param_types.len() < params.len() || prepared.param_types.contains(&0) {
            // Drivers often leave the types to the server: ask it (once per statement).
            self.send_server(&flush()).await?;
            self.relay_replies().await?;
            if self.group_failed {
                return self.forward_client(b'E', &frame).await;
            }
            if let Some(types) = self.describe_params(&statement).await? {
                self.statements.set_param_types(&statement, types.clone());
                prepared.param_types = types;
            }
        }
        for (i, p) in params.iter_mut().enumerate() {
            if p.type_oid == 0 {
                p.type_oid = prepared.param_types.get(i).copied().unwrap_or(0);
            }
        }
        self.write(Carrier::Extended { execute: frame, prepared, params, result_formats }, replicated).await
    }

    async fn sync(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let wrapped = self.txn.as_ref().is_some_and(|t| t.wrapped);
        if !wrapped {
            self.forward_client(b'S', &frame).await?;
            return self.relay_replies().await;
        }
        // capgate opened this transaction for the group: commit it (or roll it back) before
        // the client's Sync, so the client sees the group's outcome as from one PostgreSQL.
        let mut failure = None;
        if !self.group_failed {
            // Collect the replies to what the client sent since the write.
            self.send_server(&flush()).await?;
            self.relay_replies().await?;
        }
        if !self.group_failed {
            failure = self.commit_wrapped_extended().await?;
        }
        relay::client_frame(self.state, b'S');
        self.send_server(&frame).await?;
        // Read to the ReadyForQuery ourselves: its status may need changing.
        loop {
            let (tag, f) = self.server_frame().await?;
            if tag != b'Z' {
                self.pass_reply(tag, f).await?;
                continue;
            }
            let mut status = f.get(5).copied().unwrap_or(b'I');
            if status != b'I' {
                // Our transaction is still open (failed): end it.
                let _ = self.own_simple("ROLLBACK").await?;
                status = b'I';
            }
            if let Some(msg) = failure.take() {
                msg.encode(&mut self.out);
            }
            relay::ready_for_query(self.state, status);
            self.group_failed = false;
            self.group_began = false;
            write_ready(&mut self.out, status);
            self.after_ready();
            return Ok(());
        }
    }

    /// The commit of a transaction capgate opened for an extended-protocol group, before
    /// the client's Sync. `Some(error)` when it could not commit (the primary's transaction
    /// is then failed or rolled back; the error goes to the client before ReadyForQuery).
    async fn commit_wrapped_extended(&mut self) -> Result<Option<ErrorMessage>, SessionError> {
        let Some(mut txn) = self.txn.take() else { return Ok(None) };
        let gid = self.shared.replication.next_gid();
        if let Err(msg) = self.prepare_replicas(&mut txn, &gid).await {
            self.txn = Some(txn);
            return Ok(Some(msg));
        }
        let mut statements = txn.before_commit(&gid, &self.shared.replication.site);
        statements.push("COMMIT".to_owned());
        let failed = self.own_extended_batch(&statements).await?.err();
        match failed {
            None => {
                self.committed(txn);
                Ok(None)
            }
            Some(e) => {
                release(txn, false);
                Ok(Some(e))
            }
        }
    }

    // ----- the replicated write --------------------------------------------------------

    async fn write(&mut self, carrier: Carrier, decisions: Vec<Decision>) -> Result<(), SessionError> {
        let policy = self.statements.tx_policy(self.state);
        let replicas = !self.shared.replication.sites.is_empty();
        if let Some(refusal) = self.admission(&decisions).await {
            return self.refuse(&carrier, refusal).await;
        }
        let sync: Vec<&Decision> = decisions.iter().filter(|d| matches!(d.mode, Mode::Sync { .. })).collect();
        let capture = decisions.iter().any(|d| matches!(d.mode, Mode::Async { .. } | Mode::Bounded { .. }));
        let pins = self.txn.as_ref().map(|t| t.pins.clone()).unwrap_or_else(|| Pins::at(SystemTime::now()));
        // The same text for the primary and the replicas. Most writes have nothing to pin:
        // the classification (which lists every non-deterministic part, defaults included)
        // and a scan for PostgreSQL's special time strings and user functions say so without
        // parsing again.
        let classification = match &carrier {
            Carrier::Simple(sql) => self.statements.router().route(sql, self.statements.search_path(), &policy).classification,
            Carrier::Extended { prepared, .. } => prepared.classification.clone(),
        };
        let made = if !classification.statements.iter().any(|s| !s.nondeterministic.is_empty()) && !mentions_time_or_user(carrier.sql()) {
            Ok((carrier.sql().to_owned(), Vec::new(), false))
        } else {
            let catalog = self.statements.router().catalog(&policy);
            let allow = |t: &crate::classify::TableName| policy.allows_nondeterministic(t);
            let cx = determinism::Context {
                dialect: Dialect::Postgres,
                path: self.statements.search_path(),
                catalog: &catalog,
                pins: &pins,
                allow: &allow,
            };
            determinism::make_deterministic(carrier.sql(), &cx).map(|det| {
                for a in &det.allowed {
                    warn!(construct = %a.function_or_construct, table = ?a.table.as_ref().map(|t| t.to_string()), "non-deterministic write allowed by the policy (nondeterministic = \"allow\"): the replicas may get different values");
                }
                let rewritten = det.rewritten();
                (det.sql.into_owned(), det.generated_keys, rewritten)
            })
        };
        let sql = match made {
            Err(nd) => {
                let refusal = Refusal { code: determinism::SQLSTATE, message: nd.to_string(), hint: nd.hint() };
                return self.refuse(&carrier, refusal).await;
            }
            Ok((sql, keys, rewritten)) => (sql, keys, rewritten),
        };
        let (sql, keys, mut rewritten) = sql;
        // Generated keys: the primary allocates them now; both sides get them as literals.
        let mut advance = Vec::new();
        let sql = if keys.is_empty() {
            sql
        } else {
            let mut assigned = Vec::new();
            for key in &keys {
                let values = match determinism::preallocate_sql(key) {
                    Ok(q) => match self.own_values(&q, matches!(carrier, Carrier::Extended { .. })).await? {
                        Ok(v) if !v.is_empty() => v,
                        Ok(_) => {
                            let refusal = Refusal {
                                code: determinism::SQLSTATE,
                                message: format!(
                                    "capgate refused this write to {}: no sequence found for column {}",
                                    key.table, key.column
                                ),
                                hint: "check the column's default".into(),
                            };
                            return self.refuse(&carrier, refusal).await;
                        }
                        Err(e) => {
                            return self.refuse(&carrier, Refusal { code: UNAVAILABLE, message: e.message, hint: String::new() }).await
                        }
                    },
                    Err(nd) => {
                        return self
                            .refuse(&carrier, Refusal { code: determinism::SQLSTATE, message: nd.to_string(), hint: nd.hint() })
                            .await
                    }
                };
                if let Some(max) = values.iter().max() {
                    advance.push(determinism::advance_sequence_sql(key, *max));
                }
                assigned.push((key.clone(), values));
            }
            match determinism::apply_generated_keys(&sql, &assigned, Dialect::Postgres) {
                Ok(text) => {
                    rewritten = true;
                    text
                }
                Err(nd) => {
                    return self.refuse(&carrier, Refusal { code: determinism::SQLSTATE, message: nd.to_string(), hint: nd.hint() }).await
                }
            }
        };
        // The text the replicas run and the outbox keeps: parameters inlined as literals.
        let (replica_sql, _params) = match &carrier {
            Carrier::Simple(_) => (sql.clone(), Vec::new()),
            Carrier::Extended { params, .. } => match inline_params(&sql, params) {
                Ok(text) => (text, params.clone()),
                Err(e) => {
                    let refusal = Refusal {
                        code: "0A000",
                        message: format!(
                            "capgate refused this prepared write to {}: a parameter cannot be carried to the replicas ({e})",
                            names(&decisions)
                        ),
                        hint: "send the parameter in text format, or make the table local in the policy".into(),
                    };
                    return self.refuse(&carrier, refusal).await;
                }
            },
        };
        let status = self.status();
        let wrap = status == b'I' && !self.group_began && (replicas && (!sync.is_empty() || capture));
        if self.txn.is_none() {
            let mut t = Txn::new(wrap);
            t.pins = pins;
            self.txn = Some(t);
        }
        // 1. The primary.
        let replies = match &carrier {
            Carrier::Simple(_) => {
                relay::client_frame(self.state, b'Q');
                let mut bytes = BytesMut::new();
                if wrap {
                    query_frame(&mut bytes, "BEGIN");
                }
                query_frame(&mut bytes, &sql);
                self.send_server(&bytes).await?;
                if wrap {
                    let _ = self.own_simple_reply().await?;
                }
                self.collect_until_ready().await?
            }
            Carrier::Extended { execute, .. } => {
                // Replies to what the client sent before this Execute come first (and must
                // not be mistaken for the replies to capgate's own statements).
                self.send_server(&flush()).await?;
                self.relay_replies().await?;
                if self.group_failed {
                    self.txn = None;
                    return self.forward_client(b'E', execute).await;
                }
                if wrap {
                    if let Err(e) = self.own_extended("BEGIN").await? {
                        // Could not even begin: tell the client in the statement's place.
                        self.txn = None;
                        self.group_failed = true;
                        e.encode(&mut self.out);
                        return Ok(());
                    }
                }
                if rewritten {
                    // The text differs from what the client prepared (pinned time, generated
                    // keys): run capgate's own statement with the client's parameters and
                    // result formats in the Execute's place.
                    let Carrier::Extended { params, result_formats, .. } = &carrier else { unreachable!() };
                    let bytes = substitute_execute(&sql, params, result_formats);
                    self.send_server(&bytes).await?;
                    self.collect_substitute().await?
                } else {
                    relay::client_frame(self.state, b'E');
                    let mut bytes = BytesMut::from(&execute[..]);
                    bytes.extend_from_slice(&flush());
                    self.send_server(&bytes).await?;
                    self.collect_execute().await?
                }
            }
        };
        let primary_error = replies.iter().any(|(t, _)| *t == b'E');
        if primary_error || !replicas {
            return self.deliver(&carrier, replies, wrap && primary_error).await;
        }
        let rows = replies.iter().rev().find(|(t, _)| *t == b'C').and_then(|(_, f)| row_count(f));
        // 2. The replicas (sync).
        if !sync.is_empty() {
            let autocommit_simple = wrap && matches!(carrier, Carrier::Simple(_));
            let tables: Vec<String> = sync.iter().map(|d| d.table.to_string()).collect();
            let mut txn = self.txn.take().unwrap_or_else(|| Txn::new(wrap));
            for t in &tables {
                if !txn.sync_tables.contains(t) {
                    txn.sync_tables.push(t.clone());
                }
            }
            let gid = self.shared.replication.next_gid();
            let mut text = replica_sql.clone();
            for a in &advance {
                text.push_str(";\n");
                text.push_str(a);
            }
            let result = self.replicate(&mut txn, &text, rows, if autocommit_simple { Some(&gid) } else { None }, &tables).await;
            self.txn = Some(txn);
            if let Err(msg) = result {
                return self.undo(&carrier, wrap, msg).await;
            }
            if autocommit_simple {
                if capture {
                    let insert = capture_sql(&self.shared.replication.site, &replica_sql, &decisions, rows);
                    if let Some(t) = self.txn.as_mut() {
                        t.captures.push(insert);
                    }
                }
                return self.finish_autocommit(&carrier, replies, gid).await;
            }
        }
        // 3. The outbox (async, bounded): the insert waits for COMMIT.
        if capture {
            let insert = capture_sql(&self.shared.replication.site, &replica_sql, &decisions, rows);
            if let Some(t) = self.txn.as_mut() {
                t.captures.push(insert);
            }
            if wrap && matches!(carrier, Carrier::Simple(_)) {
                return self.finish_autocommit(&carrier, replies, String::new()).await;
            }
        }
        self.deliver(&carrier, replies, false).await
    }

    /// A Simple autocommit statement capgate wrapped: commit (decision record, ordering
    /// step, COMMIT) and show the client the statement's replies with an idle status.
    async fn finish_autocommit(&mut self, carrier: &Carrier, replies: Vec<Frame>, gid: String) -> Result<(), SessionError> {
        let Some(txn) = self.txn.take() else { return self.deliver(carrier, replies, false).await };
        let mut statements = txn.before_commit(&gid, &self.shared.replication.site);
        statements.push("COMMIT".to_owned());
        let sql = statements.join(";\n");
        match self.own_simple(&sql).await? {
            Ok(()) => {
                self.committed(txn);
                self.deliver_as(replies, Some(b'I')).await
            }
            Err(e) => {
                // The COMMIT failed: the primary rolled back; so do the replicas.
                let _ = self.own_simple("ROLLBACK").await?;
                release(txn, false);
                self.error_ready(e, b'I').await
            }
        }
    }

    /// The primary accepted the statement but capgate must not let it commit (a replica
    /// failed, the outbox insert failed): fail it in the statement's place.
    async fn undo(&mut self, carrier: &Carrier, wrap: bool, error: ErrorMessage) -> Result<(), SessionError> {
        match carrier {
            Carrier::Simple(_) if wrap => {
                let _ = self.own_simple("ROLLBACK").await?;
                if let Some(txn) = self.txn.take() {
                    release(txn, false);
                }
                self.error_ready(error, b'I').await
            }
            Carrier::Simple(_) => {
                // The primary raises the error: its transaction is aborted, as by any error.
                self.send_server(&raise_query(&error)).await?;
                let replies = self.collect_until_ready().await?;
                self.deliver(carrier, replies, false).await
            }
            Carrier::Extended { .. } => {
                self.raise_extended(&error).await?;
                Ok(())
            }
        }
    }

    /// Refuse a statement before the primary runs it.
    async fn refuse(&mut self, carrier: &Carrier, refusal: Refusal) -> Result<(), SessionError> {
        debug!(code = refusal.code, "{}", refusal.message);
        match carrier {
            Carrier::Simple(_) => {
                relay::client_frame(self.state, b'Q');
                self.send_server(&refusal_query(&refusal)).await?;
                self.relay_replies().await
            }
            Carrier::Extended { .. } => {
                // Earlier messages of the group first.
                self.send_server(&flush()).await?;
                self.relay_replies().await?;
                if !self.group_failed {
                    let error = ErrorMessage::new(Severity::Error, refusal.code, refusal.message).with_hint(refusal.hint);
                    self.raise_extended(&error).await?;
                }
                Ok(())
            }
        }
    }

    /// Make the primary raise `error` inside the current extended group (so it skips to the
    /// Sync, as after any error) and show the error to the client.
    async fn raise_extended(&mut self, error: &ErrorMessage) -> Result<(), SessionError> {
        let refusal = Refusal { code: error.code, message: error.message.clone(), hint: error.hint.clone().unwrap_or_default() };
        let mut bytes = own_execute(&raise_statement(&refusal));
        bytes.extend_from_slice(&flush());
        self.send_server(&bytes).await?;
        let mut seen = 0;
        while seen < 5 {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'3' | b'1' | b'2' => seen += 1,
                b'E' => {
                    self.out.extend_from_slice(&frame);
                    break;
                }
                b'N' | b'C' => {}
                _ => self.out.extend_from_slice(&frame),
            }
        }
        self.group_failed = true;
        Ok(())
    }

    /// Whether the write may go ahead: partitions for sync tables, lag for bounded ones.
    async fn admission(&mut self, decisions: &[Decision]) -> Option<Refusal> {
        let replication = self.shared.replication.clone();
        for d in decisions {
            match d.mode {
                Mode::Sync { on_partition } => {
                    for site in replication.sites.iter() {
                        let view = site.health();
                        if view.state().is_available() {
                            continue;
                        }
                        let refused = match on_partition {
                            OnPartition::Fail => true,
                            OnPartition::Block { timeout } => {
                                self.flush_client().await.ok()?;
                                view.wait_available(timeout).await.is_err()
                            }
                        };
                        if refused {
                            let s = view.status();
                            return Some(Refusal {
                                code: UNAVAILABLE,
                                message: format!(
                                    "capgate refused this write to {}: replica \"{}\" is {} ({}), and the table is sync with on_partition = \"{}\"; nothing was written",
                                    d.table,
                                    site.name(),
                                    s.state,
                                    s.last_error.as_deref().unwrap_or("no recent heartbeat"),
                                    partition_name(on_partition)
                                ),
                                hint: "retry when the link to the replica heals; or, if availability matters more than consistency for this table, make it async or bounded in the policy".into(),
                            });
                        }
                    }
                }
                Mode::Bounded { max_lag, on_partition, .. } => {
                    for site in replication.sites.iter() {
                        let name = site.name().to_owned();
                        let over = |r: &super::replication::Replication| r.over_budget(&name, &d.table.to_string(), max_lag);
                        let mut lag = over(&replication);
                        if lag.is_some() {
                            if let OnPartition::Block { timeout } = on_partition {
                                self.flush_client().await.ok()?;
                                let until = Instant::now() + timeout;
                                while lag.is_some() && Instant::now() < until {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    lag = over(&replication);
                                }
                            }
                        }
                        if let Some(seconds) = lag {
                            let behind = if seconds.is_finite() {
                                format!("is {seconds:.1} s behind")
                            } else {
                                "has a lag capgate cannot measure now (its shipper is not running here yet)".to_owned()
                            };
                            return Some(Refusal {
                                code: UNAVAILABLE,
                                message: format!(
                                    "capgate refused this write to {}: replica \"{}\" {behind}, over the table's budget max_lag = {:?} (mode bounded, on_partition = \"{}\")",
                                    d.table,
                                    name,
                                    max_lag,
                                    partition_name(on_partition)
                                ),
                                hint: "retry once the replica has caught up (see capgate's /status), or raise max_lag / make the table async in the policy".into(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Run the statement on every replica inside the transaction's replica transaction
    /// (opened on first use); with `prepare`, also BEGIN and PREPARE in the same round trip.
    async fn replicate(
        &mut self,
        txn: &mut Txn,
        sql: &str,
        rows: Option<u64>,
        prepare: Option<&str>,
        tables: &[String],
    ) -> Result<(), ErrorMessage> {
        let replication = self.shared.replication.clone();
        let deadline = replication.deadline;
        self.flush_client().await.map_err(|e| unavailable(&tables.join(", "), "-", &e.to_string()))?;
        for (i, site) in replication.sites.iter().enumerate() {
            if txn.replicas.len() <= i {
                let conn =
                    site.pool().checkout(deadline).await.map_err(|e| unavailable(&tables.join(", "), site.name(), &e.to_string()))?;
                txn.replicas.push(ReplicaTx { conn, savepoints: Vec::new(), open: false, prepared: None });
            }
            let r = &mut txn.replicas[i];
            let fresh = !r.open;
            let mut text = String::new();
            if fresh {
                text.push_str("BEGIN;\n");
            }
            text.push_str(sql);
            if let Some(gid) = prepare {
                text.push_str(&format!(";\nPREPARE TRANSACTION {}", literal::quote(gid)));
            }
            let conn = &r.conn;
            let result = conn.run("replicated statement", deadline, conn.simple_query(&text)).await;
            match result {
                Ok(messages) => {
                    r.open = true;
                    if let Some(gid) = prepare {
                        r.prepared = Some(gid.to_owned());
                    }
                    let counts: Vec<u64> = messages
                        .iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::CommandComplete(n) => Some(*n),
                            _ => None,
                        })
                        .collect();
                    let index = usize::from(fresh);
                    let got = counts.get(index).copied();
                    if let (Some(want), Some(got)) = (rows, got) {
                        if want != got {
                            return Err(ErrorMessage::new(Severity::Error, UNAVAILABLE, format!(
                                "capgate rolled back this write to {}: it changed {want} row(s) on the primary but {got} on replica \"{}\"; the sites have diverged",
                                tables.join(", "), site.name()
                            )).with_hint("run capgate verify on the table to find the rows that differ, repair them, then retry"));
                        }
                    }
                }
                Err(e) => {
                    if let Some(gid) = prepare {
                        // The PREPARE may still happen after capgate gave up (the replica
                        // was waiting for a lock): no decision will ever be written for this
                        // gid, so roll it back as soon as it exists rather than leave its
                        // locks to recovery.
                        abort_undecided(site.pool().clone(), gid.to_owned(), deadline);
                    }
                    if e.is_deadline() {
                        // The replica may still be working on it (waiting for a lock): cancel
                        // it, so it does not complete (and PREPARE) after capgate gave up.
                        let token = r.conn.cancel_token();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(5), token.cancel_query(tokio_postgres::NoTls)).await;
                        });
                    }
                    return Err(unavailable(&tables.join(", "), site.name(), &e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// PREPARE TRANSACTION on every replica of `txn`.
    async fn prepare_replicas(&mut self, txn: &mut Txn, gid: &str) -> Result<(), ErrorMessage> {
        let deadline = self.shared.replication.deadline;
        self.flush_client().await.map_err(|e| unavailable(&txn.sync_tables.join(", "), "-", &e.to_string()))?;
        let sql = format!("PREPARE TRANSACTION {}", literal::quote(gid));
        for (i, r) in txn.replicas.iter_mut().enumerate().filter(|(_, r)| r.prepared.is_none() && r.open) {
            let conn = &r.conn;
            match conn.run("PREPARE TRANSACTION", deadline, conn.simple_query(&sql)).await {
                Ok(_) => r.prepared = Some(gid.to_owned()),
                Err(e) => {
                    if let Some(site) = self.shared.replication.sites.iter().nth(i) {
                        abort_undecided(site.pool().clone(), gid.to_owned(), deadline);
                    }
                    return Err(unavailable(&txn.sync_tables.join(", "), r.conn.replica(), &e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// The primary committed: finish the replicas off the critical path.
    fn committed(&mut self, txn: Txn) {
        if !txn.captures.is_empty() {
            self.shared.replication.wake_shippers();
        }
        if !txn.replicas.is_empty() {
            metrics::histogram!("capgate_sync_commit_seconds").record(txn.started.elapsed().as_secs_f64());
        }
        release(txn, true);
    }

    /// BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO, COMMIT, ROLLBACK inside a transaction with
    /// replicated work.
    async fn control(&mut self, carrier: Carrier, control: TxControl) -> Result<(), SessionError> {
        match control {
            TxControl::Commit => self.commit(carrier).await,
            TxControl::Savepoint(name) | TxControl::Release(name) | TxControl::RollbackTo(name) => {
                // The primary first; then the replicas, where the savepoint is known there.
                let replies = match &carrier {
                    Carrier::Simple(_) => {
                        let frame = query_bytes(carrier.sql());
                        relay::client_frame(self.state, b'Q');
                        self.send_server(&frame).await?;
                        self.collect_until_ready().await?
                    }
                    Carrier::Extended { execute, .. } => {
                        self.send_server(&flush()).await?;
                        self.relay_replies().await?;
                        relay::client_frame(self.state, b'E');
                        let mut bytes = BytesMut::from(&execute[..]);
                        bytes.extend_from_slice(&flush());
                        self.send_server(&bytes).await?;
                        self.collect_execute().await?
                    }
                };
                if replies.iter().any(|(t, _)| *t == b'E') {
                    return self.deliver(&carrier, replies, false).await;
                }
                let upper = carrier.sql().trim().to_ascii_uppercase();
                let result = match self.txn.take() {
                    Some(mut txn) => {
                        txn.savepoint(&upper, &name);
                        let r = self.savepoint_on_replicas(&mut txn, &upper, &name).await;
                        self.txn = Some(txn);
                        r
                    }
                    None => Ok(()),
                };
                match result {
                    Ok(()) => self.deliver(&carrier, replies, false).await,
                    Err(e) => self.undo(&carrier, false, e).await,
                }
            }
            _ => {
                // BEGIN (a warning), ROLLBACK, two-phase statements: as they are; the
                // ReadyForQuery that ends the transaction releases the replicas.
                match carrier {
                    Carrier::Simple(sql) => self.plain_query(&query_bytes(&sql)).await,
                    Carrier::Extended { execute, .. } => self.forward_client(b'E', &execute).await,
                }
            }
        }
    }

    async fn savepoint_on_replicas(&mut self, txn: &mut Txn, upper: &str, name: &str) -> Result<(), ErrorMessage> {
        let deadline = self.shared.replication.deadline;
        let tables = txn.sync_tables.join(", ");
        for r in txn.replicas.iter_mut() {
            let known = r.savepoints.iter().position(|s| s == name);
            let sql = if upper.starts_with("SAVEPOINT") {
                r.savepoints.push(name.to_owned());
                format!("SAVEPOINT {}", quote_ident(name))
            } else if upper.starts_with("RELEASE") {
                match known {
                    Some(i) => {
                        r.savepoints.truncate(i);
                        format!("RELEASE SAVEPOINT {}", quote_ident(name))
                    }
                    // Created before the replica joined: everything the replica made since
                    // is released with it.
                    None if !r.savepoints.is_empty() => {
                        let first = r.savepoints[0].clone();
                        r.savepoints.clear();
                        format!("RELEASE SAVEPOINT {}", quote_ident(&first))
                    }
                    None => continue,
                }
            } else {
                match known {
                    Some(i) => {
                        r.savepoints.truncate(i + 1);
                        format!("ROLLBACK TO SAVEPOINT {}", quote_ident(name))
                    }
                    // Created before the replica joined: all the replica's work goes.
                    None => {
                        r.savepoints.clear();
                        "ROLLBACK".to_owned()
                    }
                }
            };
            let conn = &r.conn;
            if let Err(e) = conn.run("savepoint", deadline, conn.simple_query(&sql)).await {
                return Err(unavailable(&tables, r.conn.replica(), &e.to_string()));
            }
            if sql == "ROLLBACK" {
                r.open = false;
            }
        }
        Ok(())
    }

    /// The client's COMMIT of a transaction with replicated work.
    async fn commit(&mut self, carrier: Carrier) -> Result<(), SessionError> {
        let Some(mut txn) = self.txn.take() else {
            return match carrier {
                Carrier::Simple(sql) => self.plain_query(&query_bytes(&sql)).await,
                Carrier::Extended { execute, .. } => self.forward_client(b'E', &execute).await,
            };
        };
        if let Carrier::Extended { .. } = carrier {
            self.send_server(&flush()).await?;
            self.relay_replies().await?;
        }
        if self.status() == b'E' || self.group_failed || !txn.has_work() {
            // PostgreSQL answers ROLLBACK; the ReadyForQuery releases the replicas.
            self.txn = Some(txn);
            return match carrier {
                Carrier::Simple(sql) => self.plain_query(&query_bytes(&sql)).await,
                Carrier::Extended { execute, .. } => self.forward_client(b'E', &execute).await,
            };
        }
        let gid = self.shared.replication.next_gid();
        if let Err(e) = self.prepare_replicas(&mut txn, &gid).await {
            release(txn, false);
            return match carrier {
                Carrier::Simple(_) => {
                    relay::client_frame(self.state, b'Q');
                    let _ = self.own_simple("ROLLBACK").await?;
                    self.error_ready(e, b'I').await
                }
                Carrier::Extended { .. } => {
                    self.raise_extended(&e).await?;
                    Ok(())
                }
            };
        }
        let before = txn.before_commit(&gid, &self.shared.replication.site);
        let replies = match &carrier {
            Carrier::Simple(sql) => {
                relay::client_frame(self.state, b'Q');
                let mut bytes = BytesMut::new();
                if !before.is_empty() {
                    query_frame(&mut bytes, &before.join(";\n"));
                }
                query_frame(&mut bytes, sql);
                self.send_server(&bytes).await?;
                let own = if before.is_empty() { Ok(()) } else { self.own_simple_reply().await? };
                let replies = self.collect_until_ready().await?;
                if let Err(e) = own {
                    release(txn, false);
                    return self.error_ready(e, b'I').await;
                }
                replies
            }
            Carrier::Extended { execute, .. } => {
                if let Err(e) = self.own_extended_batch(&before).await? {
                    release(txn, false);
                    e.encode(&mut self.out);
                    self.group_failed = true;
                    return Ok(());
                }
                relay::client_frame(self.state, b'E');
                let mut bytes = BytesMut::from(&execute[..]);
                bytes.extend_from_slice(&flush());
                self.send_server(&bytes).await?;
                self.collect_execute().await?
            }
        };
        let ok = replies.iter().any(|(t, f)| *t == b'C' && f.get(5..11) == Some(b"COMMIT"));
        if ok {
            self.committed(txn);
        } else {
            release(txn, false);
        }
        self.deliver(&carrier, replies, false).await
    }

    // ----- primary I/O -----------------------------------------------------------------

    /// Run capgate's own query (a Query, or inside an extended group its own statement) and
    /// return the first column of its rows.
    async fn own_values(&mut self, sql: &str, extended: bool) -> Result<Result<Vec<i64>, ErrorMessage>, SessionError> {
        if extended {
            let mut bytes = own_execute(sql);
            bytes.extend_from_slice(&flush());
            self.send_server(&bytes).await?;
        } else {
            self.send_server(&query_bytes(sql)).await?;
        }
        let mut values = Vec::new();
        let mut error = None;
        let mut units = 0;
        loop {
            let (tag, frame) = self.server_frame().await?;
            if extended && matches!(tag, b'1' | b'2' | b'3' | b'C') {
                units += 1;
                if units == 5 {
                    return Ok(Ok(values));
                }
                continue;
            }
            if extended && tag == b'E' {
                self.group_failed = true;
                return Ok(Err(error_from(&frame)));
            }
            match tag {
                b'D' => {
                    let body = &frame[5..];
                    if body.len() >= 6 {
                        let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                        if len > 0 {
                            if let Some(v) =
                                body.get(6..6 + len as usize).and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| t.parse().ok())
                            {
                                values.push(v);
                            }
                        }
                    }
                }
                b'E' => error = Some(error_from(&frame)),
                b'Z' => return Ok(error.map_or(Ok(values), Err)),
                b'A' | b'S' => self.out.extend_from_slice(&frame),
                _ => {}
            }
        }
    }

    /// Replies to a substitute execution: its own Close/Parse/Bind completions hidden, the
    /// rows and the CommandComplete (or the error) kept for the client.
    async fn collect_substitute(&mut self) -> Result<Vec<Frame>, SessionError> {
        let mut replies = Vec::new();
        let mut closes = 0;
        loop {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'1' | b'2' => {}
                b'3' => {
                    closes += 1;
                    if closes == 2 {
                        return Ok(replies);
                    }
                }
                b'E' => {
                    self.group_failed = true;
                    replies.push((tag, frame));
                    return Ok(replies);
                }
                _ => replies.push((tag, frame)),
            }
        }
    }

    /// The parameter types of a prepared statement, from the primary (Describe, hidden).
    async fn describe_params(&mut self, statement: &str) -> Result<Option<Vec<u32>>, SessionError> {
        let mut bytes = BytesMut::new();
        write_frame(&mut bytes, b'D', |b| {
            b.put_u8(b'S');
            b.put_slice(statement.as_bytes());
            b.put_u8(0);
        });
        bytes.extend_from_slice(&flush());
        self.send_server(&bytes).await?;
        let mut types = None;
        loop {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b't' => {
                    let body = &frame[5..];
                    let n = body.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
                    types = Some(
                        (0..n)
                            .filter_map(|i| body.get(2 + 4 * i..6 + 4 * i))
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    );
                }
                b'T' | b'n' => return Ok(types),
                b'E' => {
                    self.group_failed = true;
                    self.out.extend_from_slice(&frame);
                    return Ok(None);
                }
                b'A' | b'S' | b'N' => self.out.extend_from_slice(&frame),
                _ => {}
            }
        }
    }

    /// Replies to a Query up to and including its ReadyForQuery, not yet bookkept.
    async fn collect_until_ready(&mut self) -> Result<Vec<Frame>, SessionError> {
        let mut replies = Vec::new();
        loop {
            let (tag, frame) = self.server_frame().await?;
            let done = tag == b'Z';
            if tag == b'G' {
                // COPY FROM STDIN cannot be coordinated: CopyFail ends it with an error.
                let mut fail = BytesMut::new();
                write_frame(&mut fail, b'f', |b| {
                    b.put_slice(b"capgate: COPY into a replicated table is not supported; use INSERT");
                    b.put_u8(0);
                });
                self.send_server(&fail).await?;
                continue;
            }
            replies.push((tag, frame));
            if done {
                return Ok(replies);
            }
        }
    }

    /// Replies to an Execute (sent with a Flush) up to its completion, bookkept.
    async fn collect_execute(&mut self) -> Result<Vec<Frame>, SessionError> {
        let mut replies = Vec::new();
        loop {
            let (tag, frame) = self.server_frame().await?;
            if tag == b'G' {
                let mut fail = BytesMut::new();
                write_frame(&mut fail, b'f', |b| {
                    b.put_slice(b"capgate: COPY into a replicated table is not supported; use INSERT");
                    b.put_u8(0);
                });
                self.send_server(&fail).await?;
                continue;
            }
            let _ = relay::server_frame(self.state, tag, Some(&frame), &|| false);
            let done = matches!(tag, b'C' | b'I' | b's' | b'E');
            if tag == b'E' {
                self.group_failed = true;
            }
            replies.push((tag, frame));
            if done {
                return Ok(replies);
            }
        }
    }

    /// Show the client a statement's replies. Simple protocol: the ReadyForQuery is bookkept
    /// here; with `rollback`, capgate's own transaction is rolled back first and the client
    /// sees an idle status.
    async fn deliver(&mut self, carrier: &Carrier, replies: Vec<Frame>, rollback: bool) -> Result<(), SessionError> {
        if rollback {
            if let Carrier::Simple(_) = carrier {
                let _ = self.own_simple("ROLLBACK").await?;
                if let Some(txn) = self.txn.take() {
                    release(txn, false);
                }
                return self.deliver_as(replies, Some(b'I')).await;
            }
        }
        self.deliver_as(replies, None).await
    }

    async fn deliver_as(&mut self, replies: Vec<Frame>, status: Option<u8>) -> Result<(), SessionError> {
        for (tag, frame) in replies {
            if tag == b'Z' {
                let s = status.unwrap_or_else(|| frame.get(5).copied().unwrap_or(b'I'));
                relay::ready_for_query(self.state, s);
                write_ready(&mut self.out, s);
                self.group_failed = false;
                self.group_began = false;
                self.after_ready();
            } else {
                self.out.extend_from_slice(&frame);
            }
        }
        // Extended replies were bookkept as they arrived.
        self.flush_client().await
    }

    /// An error and a ReadyForQuery for the client in place of a Query's replies.
    async fn error_ready(&mut self, error: ErrorMessage, status: u8) -> Result<(), SessionError> {
        error.encode(&mut self.out);
        relay::ready_for_query(self.state, status);
        write_ready(&mut self.out, status);
        self.after_ready();
        self.flush_client().await
    }

    /// Run capgate's own simple query on the primary; its replies are not shown.
    async fn own_simple(&mut self, sql: &str) -> Result<Result<(), ErrorMessage>, SessionError> {
        self.send_server(&query_bytes(sql)).await?;
        self.own_simple_reply().await
    }

    /// Read the replies to one own Query (sent earlier) to its ReadyForQuery.
    async fn own_simple_reply(&mut self) -> Result<Result<(), ErrorMessage>, SessionError> {
        let mut error = None;
        loop {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'E' => error = Some(error_from(&frame)),
                b'Z' => return Ok(error.map_or(Ok(()), Err)),
                b'A' | b'S' => self.out.extend_from_slice(&frame),
                _ => {}
            }
        }
    }

    /// Several of capgate's own statements inside the current extended group, sent at once;
    /// the first error stops them (the server skips the rest).
    async fn own_extended_batch(&mut self, statements: &[String]) -> Result<Result<(), ErrorMessage>, SessionError> {
        if statements.is_empty() {
            return Ok(Ok(()));
        }
        let mut bytes = BytesMut::new();
        for sql in statements {
            bytes.extend_from_slice(&own_execute(sql));
        }
        bytes.extend_from_slice(&flush());
        self.send_server(&bytes).await?;
        let mut seen = 0;
        while seen < 5 * statements.len() {
            let (tag, frame) = self.server_frame().await?;
            match tag {
                b'3' | b'1' | b'2' | b'C' | b'I' => seen += 1,
                b'E' => {
                    self.group_failed = true;
                    return Ok(Err(error_from(&frame)));
                }
                b'A' | b'S' => self.out.extend_from_slice(&frame),
                _ => {}
            }
        }
        Ok(Ok(()))
    }

    /// Run capgate's own statement inside the current extended group (named statement and
    /// portal of capgate's own, with a Flush); its replies are not shown. An error leaves the
    /// primary skipping to the Sync.
    async fn own_extended(&mut self, sql: &str) -> Result<Result<(), ErrorMessage>, SessionError> {
        self.own_extended_batch(&[sql.to_owned()]).await
    }
}

/// End a transaction's replica side: `COMMIT PREPARED` after the primary committed, or
/// ROLLBACK / `ROLLBACK PREPARED` otherwise; in the background, each bounded by a deadline.
/// A failure is left to recovery (the decision record says what to do).
fn release(txn: Txn, commit: bool) {
    for r in txn.replicas {
        if !r.open && r.prepared.is_none() {
            continue;
        }
        tokio::spawn(async move {
            let deadline = Duration::from_secs(10);
            let conn = r.conn;
            let (verb, sql) = match &r.prepared {
                Some(gid) if commit => ("COMMIT PREPARED", format!("COMMIT PREPARED {}", literal::quote(gid))),
                Some(gid) => ("ROLLBACK PREPARED", format!("ROLLBACK PREPARED {}", literal::quote(gid))),
                None => ("ROLLBACK", "ROLLBACK".to_owned()),
            };
            if let Err(e) = conn.run(verb, deadline, conn.simple_query(&sql)).await {
                warn!("{verb} on replica \"{}\" failed ({e}); recovery resolves it from the decision record", conn.replica());
                conn.mark_broken();
            }
        });
    }
}

/// `ROLLBACK PREPARED gid` for a PREPARE capgate gave up on (so no decision record exists
/// or ever will): retried for a while in the background, since the PREPARE may complete late.
/// Presumed abort makes this always safe; recovery would do the same after `recovery_grace`.
fn abort_undecided(pool: crate::sites::Pool<PgConnector>, gid: String, deadline: Duration) {
    tokio::spawn(async move {
        let sql = format!("ROLLBACK PREPARED {}", literal::quote(&gid));
        let until = Instant::now() + deadline * 4;
        while Instant::now() < until {
            if let Ok(conn) = pool.checkout(deadline).await {
                match conn.run("ROLLBACK PREPARED", deadline, conn.simple_query(&sql)).await {
                    Ok(_) => {
                        debug!(gid = %gid, "rolled back a transaction prepared after capgate gave up on it");
                        return;
                    }
                    Err(e) if e.to_string().contains("does not exist") => {}
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Whether a statement may hold something only the determinism rewriter sees: `'now'`,
/// `'today'` … typed literals, time keywords, `current_user` and the like.
fn mentions_time_or_user(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    ["now", "today", "tomorrow", "yesterday", "current_", "localtime", "user", "timestamp", "timeofday"].iter().any(|w| lower.contains(w))
}

fn partition_name(p: OnPartition) -> &'static str {
    match p {
        OnPartition::Fail => "fail",
        OnPartition::Block { .. } => "block",
    }
}

fn names(decisions: &[Decision]) -> String {
    let mut v: Vec<String> = decisions.iter().map(|d| d.table.to_string()).collect();
    v.dedup();
    v.join(", ")
}

fn unavailable(tables: &str, replica: &str, why: &str) -> ErrorMessage {
    ErrorMessage::new(
        Severity::Error,
        UNAVAILABLE,
        format!("capgate rolled back this write to {tables}: replica \"{replica}\" could not take part ({why}); the tables are sync, so nothing was committed anywhere"),
    )
    .with_hint("retry when the replica is reachable again; if availability matters more than consistency for these tables, make them async or bounded in the policy")
}

fn error_from(frame: &[u8]) -> ErrorMessage {
    let fields = crate::protocol::postgres::message::error_fields(&frame[5..]);
    let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
    let message = get(b'M').unwrap_or_else(|| "unknown error".into());
    let code: &'static str = match get(b'C').as_deref() {
        Some("40001") => "40001",
        Some("40P01") => "40P01",
        Some("23505") => "23505",
        Some("23503") => "23503",
        Some("57014") => "57014",
        _ => "XX000",
    };
    let mut e = ErrorMessage::new(Severity::Error, code, format!("capgate: {message}"));
    if let Some(d) = get(b'D') {
        e = e.with_detail(d);
    }
    e
}

fn decision_sql(gid: &str, site: &str) -> String {
    format!("INSERT INTO capgate.decisions (gid, origin) VALUES ({}, {})", literal::quote(gid), literal::quote(site))
}

/// The outbox insert for one write; the session's meaningful settings are read on the
/// primary in the same statement.
fn capture_sql(site: &str, statement: &str, decisions: &[Decision], rows: Option<u64>) -> String {
    let mut tables: Vec<String> =
        decisions.iter().filter(|d| matches!(d.mode, Mode::Async { .. } | Mode::Bounded { .. })).map(|d| d.table.to_string()).collect();
    tables.dedup();
    let capture = Capture {
        origin: site.to_owned(),
        statement: statement.to_owned(),
        params: Vec::new(),
        settings: Vec::new(),
        tables,
        row_count: rows,
    };
    capture.insert_sql_with_session_settings()
}

fn row_count(frame: &[u8]) -> Option<u64> {
    let tag = cstr(&frame[5..])?;
    let mut words = tag.split_whitespace();
    let verb = words.next()?;
    if !matches!(verb, "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY") {
        return None;
    }
    words.last()?.parse().ok()
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn query_frame(out: &mut BytesMut, sql: &str) {
    write_frame(out, b'Q', |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
}

fn query_bytes(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    query_frame(&mut b, sql);
    b
}

fn raise_query(error: &ErrorMessage) -> BytesMut {
    let refusal = Refusal { code: error.code, message: error.message.clone(), hint: error.hint.clone().unwrap_or_default() };
    refusal_query(&refusal)
}

fn flush() -> [u8; 5] {
    [b'H', 0, 0, 0, 4]
}

fn write_ready(out: &mut BytesMut, status: u8) {
    out.put_slice(&[b'Z', 0, 0, 0, 5, status]);
}

/// Close, Parse, Bind, Execute and Close of capgate's own statement and portal (5 replies:
/// CloseComplete, ParseComplete, BindComplete, CommandComplete, CloseComplete — or an error
/// that ends them).
fn own_execute(sql: &str) -> BytesMut {
    own_statement(sql, &[], &[])
}

/// capgate's own statement `sql` run with the client's parameters and result formats (Close,
/// Parse, Bind, Execute, Close, Flush).
fn substitute_execute(sql: &str, params: &[Param], result_formats: &[u16]) -> BytesMut {
    let mut out = own_statement(sql, params, result_formats);
    out.extend_from_slice(&flush());
    out
}

/// Close, Parse, Bind (with `params` and `result_formats`), Execute and Close of capgate's
/// own named statement and portal.
fn own_statement(sql: &str, params: &[Param], result_formats: &[u16]) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
    });
    write_frame(&mut out, b'P', |b| {
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
        b.put_u16(params.len() as u16);
        for p in params {
            b.put_u32(p.type_oid);
        }
    });
    write_frame(&mut out, b'B', |b| {
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
        b.put_u16(params.len() as u16);
        for p in params {
            b.put_u16(p.format.code() as u16);
        }
        b.put_u16(params.len() as u16);
        for p in params {
            match &p.value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.put_u16(result_formats.len() as u16);
        for f in result_formats {
            b.put_u16(*f);
        }
    });
    write_frame(&mut out, b'E', |b| {
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
        b.put_u32(0);
    });
    write_frame(&mut out, b'C', |b| {
        b.put_u8(b'P');
        b.put_slice(OWN.as_bytes());
        b.put_u8(0);
    });
    out
}

/// The parameters and result formats of a Bind (after its portal and statement names).
fn parse_bind_params(mut b: &[u8], types: &[u32]) -> Option<(Vec<Param>, Vec<u16>)> {
    let nf = read_u16(&mut b)? as usize;
    let mut formats = Vec::with_capacity(nf);
    for _ in 0..nf {
        formats.push(read_u16(&mut b)?);
    }
    let np = read_u16(&mut b)? as usize;
    let mut params = Vec::with_capacity(np);
    for i in 0..np {
        if b.len() < 4 {
            return None;
        }
        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        b.advance(4);
        let value = if len < 0 {
            None
        } else {
            let len = len as usize;
            if b.len() < len {
                return None;
            }
            let v = b[..len].to_vec();
            b.advance(len);
            Some(v)
        };
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        params.push(Param {
            type_oid: types.get(i).copied().unwrap_or(0),
            format: if format == 1 { ParamFormat::Binary } else { ParamFormat::Text },
            value,
        });
    }
    let nr = read_u16(&mut b)? as usize;
    let mut results = Vec::with_capacity(nr);
    for _ in 0..nr {
        results.push(read_u16(&mut b)?);
    }
    Some((params, results))
}

fn read_u16(b: &mut &[u8]) -> Option<u16> {
    if b.len() < 2 {
        return None;
    }
    let v = u16::from_be_bytes([b[0], b[1]]);
    b.advance(2);
    Some(v)
}

/// The statement with its parameters inlined as typed literals.
fn inline_params(sql: &str, params: &[Param]) -> Result<String, String> {
    let literals = params
        .iter()
        .map(|p| {
            let name = tokio_postgres::types::Type::from_oid(p.type_oid).map(|t| t.name().to_owned());
            literal::param_literal(p.type_oid, name.as_deref(), p.format == ParamFormat::Binary, p.value.as_deref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    literal::inline(sql, &literals)
}

/// Read one whole frame (tag, length, body) from `buf`, reading more from `rd` as needed.
pub async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut, max: u32) -> Result<Option<BytesMut>, SessionError> {
    loop {
        if buf.len() >= 5 {
            let tag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(SessionError::Protocol(FrameError::TooShort { tag, len }));
            }
            if len > max {
                return Err(SessionError::Protocol(FrameError::TooLong { tag, len, max }));
            }
            let total = 1 + len as usize;
            if buf.len() >= total {
                return Ok(Some(buf.split_to(total)));
            }
            buf.reserve((total - buf.len()).min(1 << 20));
        } else {
            buf.reserve(8 * 1024);
        }
        if rd.read_buf(buf).await.map_err(SessionError::Io)? == 0 {
            return Ok(None);
        }
    }
}
