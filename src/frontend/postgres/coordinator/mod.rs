//! The coordinator: takes a session over from the streaming relay at one held frame — a
//! commit point of a transaction with sync changes, an autocommit write that may change a
//! sync table, DDL on a replicated table, a write waiting for a replica — acts, and hands the
//! session straight back (decisions 0008 and 0009).
//!
//! With row capture, everything a transaction writes is recorded by the primary's capture
//! triggers whatever the SQL; the coordinator only has to stand at the commit point:
//!
//! - a COMMIT (simple or prepared) or the Sync that ends an implicit extended-protocol
//!   transaction: when the transaction holds sync changes, the two-phase commit of
//!   [`commit`] runs before the commit point reaches the primary;
//! - an autocommit Query that may change a sync table commits by itself in PostgreSQL, so
//!   capgate runs it inside a `BEGIN` of its own and commits it itself (the client sees the
//!   statement's replies and an idle ReadyForQuery, as from one PostgreSQL);
//! - DDL on a replicated table: recorded in the change stream just before it runs, in its
//!   transaction (a CREATE TABLE a rule matches also gets its capture triggers there);
//! - a write to a sync (bounded) table while a replica is partitioned (over its lag budget)
//!   and the table says `on_partition = "block"`: it waits, then runs or is refused.
//!
//! Replies to capgate's own statements never reach the client; the relay's bookkeeping is
//! kept exactly, so streaming resumes where the coordinator stops.

mod bounded;
mod commit;
mod wire;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::effects::{is_commit, may_change_bounded, may_change_sync, replicated_ddl, writes_rows};
use super::relay::SessionState;
use super::statements::{cstr, raise_statement, refusal_parse, split_cstr, Hold, Statements};
use super::{SessionError, Shared};
use crate::classify::Kind;
use crate::policy::Mode;
use crate::replicate::Route;
use crate::store::postgres::capture::CaptureMode;
use crate::store::postgres::twophase::{dollar_quote, quote};
/// Also used by the MySQL front end's sync commit (to move to `replicate` with the next refactor).
use commit::CommitPoint;
use wire::Wire;

pub use wire::read_frame;

/// How the coordinator ended.
pub enum Exit {
    /// Back to streaming.
    Resume,
    /// The client closed the session.
    Closed,
}

/// One held frame's worth of coordination.
pub struct Coordinator<'a, CR, CW, SR, SW> {
    shared: &'a Shared,
    statements: &'a mut Statements,
    wire: Wire<'a, CR, CW, SR, SW>,
}

impl<'a, CR, CW, SR, SW> Coordinator<'a, CR, CW, SR, SW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    pub fn new(
        shared: &'a Shared,
        state: &'a SessionState,
        statements: &'a mut Statements,
        client: (&'a mut CR, &'a mut CW, &'a mut BytesMut),
        server: (&'a mut SR, &'a mut SW, &'a mut BytesMut),
    ) -> Self {
        let wire = Wire::new(state, client, server, shared.config.max_message_size);
        Coordinator { shared, statements, wire }
    }

    /// Handle the held frame (at the front of the client buffer), then return.
    pub async fn run(mut self, hold: Hold) -> Result<Exit, SessionError> {
        let Some(frame) = self.wire.client_frame().await? else { return Ok(Exit::Closed) };
        match (frame[0], hold) {
            (b'Q', _) => self.query(frame).await?,
            (b'B', Hold::Commit) => {
                let bounded = self.bounded_check_due();
                self.commit_at(CommitPoint::Bind(frame), bounded).await?
            }
            (b'B', _) => self.bind(frame).await?,
            (b'P', _) => self.parse(frame).await?,
            // The Sync commits only an implicit transaction: the group ran no transaction
            // control, and the session was idle when it began.
            (b'S', Hold::Sync(group)) if !group.began && !group.ended && self.status() == b'I' => {
                let policy = self.statements.tx_policy();
                let bounded = group.may_bounded && self.statements.replication().bounded_at_risk(&policy);
                self.commit_at(CommitPoint::Sync(frame), bounded).await?
            }
            _ => self.wire.forward(&frame).await?,
        }
        self.wire.flush_client().await?;
        Ok(Exit::Resume)
    }

    fn state(&self) -> &SessionState {
        self.wire.state
    }

    fn status(&self) -> u8 {
        self.state().tx_status.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the transaction holds sync changes that a commit here must coordinate.
    fn sync_pending(&self) -> bool {
        self.state().sync_pending.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn query(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let Some(sql) = cstr(&frame[5..]).map(str::to_owned) else { return self.wire.forward(&frame).await };
        let route = self.statements.route_query(&sql);
        if let Some(refusal) = &route.refusal {
            let replacement = self.statements.refused_query(&sql, &route.classification, refusal);
            return self.refuse_query(replacement).await;
        }
        if is_commit(&route.classification) {
            let bounded = self.bounded_check_due();
            return self.commit_at(CommitPoint::Query(frame), bounded).await;
        }
        if let Some(refusal) =
            self.statements.replication().clone().admit_waiting(&route.decisions, writes_rows(&route.classification)).await
        {
            let replacement = self.statements.refused_query(&sql, &route.classification, &refusal);
            return self.refuse_query(replacement).await;
        }
        let ddl = replicated_ddl(&route, &sql);
        let policy = self.statements.tx_policy();
        let may_sync = may_change_sync(&route, &policy);
        let bounded = may_change_bounded(&route, &policy) && self.statements.replication().bounded_at_risk(&policy);
        let wrap = self.status() == b'I'
            && (may_sync || ddl || bounded)
            && !route.classification.statements.iter().any(|s| matches!(s.kind, Kind::Transaction(_)));
        if !wrap {
            if ddl && self.status() == b'T' {
                self.capture_ddl(&sql, &route).await?;
            }
            self.wire.forward(&frame).await?;
            if ddl && self.status() == b'T' {
                let outcome = self.wire.relay_until_ready().await?;
                if !outcome.error && outcome.status == b'T' {
                    self.install_capture(&route).await?;
                }
                self.wire.ready(outcome.status);
            }
            return Ok(());
        }
        // Autocommit: inside capgate's own BEGIN, committed (two-phase if it changed a sync
        // table) before the client sees an idle ReadyForQuery.
        if let Err(e) = self.wire.own_query("BEGIN").await? {
            super::relay::client_frame(self.wire.state, b'Q');
            self.wire.out.extend_from_slice(&e);
            self.wire.ready(b'I');
            return Ok(());
        }
        if ddl {
            self.capture_ddl(&sql, &route).await?;
        }
        self.wire.forward(&frame).await?;
        let outcome = self.wire.relay_until_ready().await?;
        match outcome.status {
            b'T' if !outcome.error => {
                if ddl {
                    self.install_capture(&route).await?;
                }
                if bounded {
                    if let Some(refusal) = bounded::refusal(self.shared, &policy, &mut self.wire, false).await? {
                        return commit::refuse(&mut self.wire, Some(CommitPoint::Wrapped), &refusal).await;
                    }
                }
                if self.sync_pending() {
                    let policy = self.statements.tx_policy();
                    return commit::run(self.shared, &policy, &mut self.wire, CommitPoint::Wrapped).await;
                }
                if let Err(e) = self.wire.own_query("COMMIT").await? {
                    self.wire.out.extend_from_slice(&e);
                }
            }
            b'I' => {}
            _ => {
                let _ = self.wire.own_query("ROLLBACK").await?;
            }
        }
        self.wire.ready(b'I');
        Ok(())
    }

    /// A Bind held for admission: wait for the replica (or refuse inside the group).
    async fn bind(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let decisions = {
            let body = &frame[5..];
            let name = split_cstr(body).and_then(|(_, rest)| cstr(rest)).unwrap_or_default().to_owned();
            let policy = self.statements.tx_policy();
            self.statements.prepared(&name).map(|p| (policy.decide(&p.classification), writes_rows(&p.classification))).unwrap_or_default()
        };
        if let Some(refusal) = self.statements.replication().clone().admit_waiting(&decisions.0, decisions.1).await {
            if !self.state().group_failed() {
                if let Err(e) = self.wire.own_extended(&raise_statement(&refusal)).await? {
                    self.wire.out.extend_from_slice(&e);
                    // The client's Bind, Execute … up to its Sync are skipped from here: the
                    // Sync must not wait for their replies (it hung the session).
                    self.state().fail_group();
                }
            }
        }
        self.wire.forward(&frame).await
    }

    /// Whether the current transaction's commit is checked for the bounded tables it changed
    /// (see [`bounded`]).
    fn bounded_check_due(&mut self) -> bool {
        let policy = self.statements.tx_policy();
        self.statements.bounded_check_due(&policy)
    }

    /// A Parse of `COPY … FROM STDIN` held to wait for a replica: after the wait it is
    /// refused in place (the refusal reaches the client as the Parse's error, before any Bind,
    /// so its COPY never starts), or goes on as the streaming relay would send it.
    async fn parse(&mut self, frame: BytesMut) -> Result<(), SessionError> {
        let decisions = self.statements.copy_waits(&frame).unwrap_or_default();
        let refusal = self.statements.replication().clone().admit_waiting(&decisions, true).await;
        super::relay::client_frame(self.wire.state, b'P');
        let flow = self.statements.on_frame(self.wire.state, b'P', &frame);
        match (flow, refusal) {
            // Refused at the Parse itself (bookkept there).
            (super::relay::Flow::Replace(bytes), _) => self.wire.send_server(&bytes).await,
            (_, Some(refusal)) => {
                self.state().hidden.lock().unwrap_or_else(|p| p.into_inner()).own_parse_and_bind_replacing_parse();
                self.wire.send_server(&refusal_parse(&refusal)).await
            }
            (_, None) => self.wire.send_server(&frame).await,
        }
    }

    /// A commit point: refused when `bounded` (the check is due) and a bounded table the
    /// transaction changed is over its budget; two-phase when the transaction holds sync
    /// changes; else as it came.
    async fn commit_at(&mut self, point: CommitPoint, bounded: bool) -> Result<(), SessionError> {
        let plain = match &point {
            CommitPoint::Query(_) | CommitPoint::Bind(_) => self.status() != b'T' || self.state().group_failed(),
            CommitPoint::Sync(_) => self.state().group_failed(),
            CommitPoint::Wrapped => false,
        };
        if bounded && !plain {
            let policy = self.statements.tx_policy();
            if let Some(refusal) = bounded::refusal(self.shared, &policy, &mut self.wire, point.extended()).await? {
                return commit::refuse(&mut self.wire, Some(point), &refusal).await;
            }
        }
        if plain || !self.sync_pending() {
            return match point {
                CommitPoint::Query(f) | CommitPoint::Bind(f) | CommitPoint::Sync(f) => self.wire.forward(&f).await,
                CommitPoint::Wrapped => Ok(()),
            };
        }
        let policy = self.statements.tx_policy();
        commit::run(self.shared, &policy, &mut self.wire, point).await
    }

    /// Answer a Query with `replacement` ([`Statements::refused_query`]): the statements
    /// before the refused one, then capgate's refusal raised by the primary (so it has
    /// PostgreSQL's own transaction semantics).
    async fn refuse_query(&mut self, replacement: BytesMut) -> Result<(), SessionError> {
        super::relay::client_frame(self.wire.state, b'Q');
        self.wire.send_server(&replacement).await
    }

    /// Record a DDL statement on a replicated table in the change stream, in its transaction.
    async fn capture_ddl(&mut self, sql: &str, route: &Route) -> Result<(), SessionError> {
        let Some((table, mode)) = ddl_target(route) else { return Ok(()) };
        let own = format!(
            "SELECT capgate.capture_ddl({}, {}, {}, pg_catalog.current_setting('search_path'))",
            dollar_quote(sql),
            quote(mode.as_str()),
            quote(&table)
        );
        if let Err(e) = self.wire.own_query(&own).await? {
            tracing::warn!("capgate could not record DDL on {table}: {}", wire::error_text(&e));
        }
        Ok(())
    }

    /// After a CREATE TABLE that a rule matches (or DDL that renamed a table): its capture
    /// triggers, in the same transaction, so no write to it can commit uncaptured.
    async fn install_capture(&mut self, route: &Route) -> Result<(), SessionError> {
        let created = route.classification.statements.iter().any(|s| matches!(s.kind, Kind::Ddl));
        if !created {
            return Ok(());
        }
        for d in &route.decisions {
            let Some(mode) = CaptureMode::of(&d.mode) else { continue };
            let table = d.table.to_string();
            let own = format!(
                "SELECT capgate.install_capture(c.oid::regclass, {}, {}) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'capgate_capture')",
                quote(mode.as_str()),
                quote(&table),
                quote(&d.table.schema),
                quote(&d.table.name)
            );
            match self.wire.own_query(&own).await? {
                // Known from now on: the table's writes are admitted (if the transaction rolls
                // back, the next capture round corrects this within seconds, and a write to a
                // table that does not exist fails by itself).
                Ok(_) => self.shared.replication.capture.note_installed(d.table.clone(), mode),
                Err(e) => tracing::warn!("capgate could not install the capture trigger on {table}: {}", wire::error_text(&e)),
            }
        }
        Ok(())
    }
}

/// The replicated table a DDL statement changes, and how its changes are captured.
fn ddl_target(route: &Route) -> Option<(String, CaptureMode)> {
    route.decisions.iter().find_map(|d| match d.mode {
        Mode::Local => None,
        m => CaptureMode::of(&m).map(|c| (d.table.to_string(), c)),
    })
}
