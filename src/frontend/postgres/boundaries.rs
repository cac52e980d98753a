//! Where the client's transactions end, followed on the client's side of the relay.
//!
//! What belongs to one transaction — the policy it started with, a `SET LOCAL search_path`,
//! whether it may have changed a sync table — must end with it. The primary's ReadyForQuery
//! says when a transaction ended, but a pipelining client sends the next transaction's
//! statements before that reply arrives, and a reply that does arrive may close a transaction
//! the client left long ago. So the end is predicted from what the client sends (a Query or a
//! Sync outside a block ends its implicit transaction; COMMIT, ROLLBACK and PREPARE
//! TRANSACTION end a block), and the primary's status is taken as the truth whenever nothing
//! is in flight, which is the case for every client that waits for its answers.
//!
//! A prediction is wrong only when an error stops a Query before its BEGIN, COMMIT or
//! ROLLBACK runs. Inside a block that an error aborted every statement fails until the
//! ROLLBACK anyway; the other cases are corrected as soon as the pipeline drains.

use std::sync::atomic::Ordering;

use super::relay::SessionState;
use crate::classify::{Classification, Kind, TxControl};

/// The client side's view of its transaction, as of the last message it sent.
#[derive(Debug, Default)]
pub struct Boundaries {
    /// An explicit transaction block is open after what the client has sent.
    block: bool,
    /// The messages sent so far ended their transaction: the next message begins a new one.
    ended: bool,
}

impl Boundaries {
    /// A client message (Query, Parse, Bind, Close, Sync, FunctionCall) is about to be
    /// handled: true when it begins a new transaction, so per-transaction state must go.
    /// Called once per message, before anything else looks at it.
    pub fn message(&mut self, state: &SessionState) -> bool {
        let settled = state.pending.load(Ordering::Acquire) <= 0 && !state.extended_open.load(Ordering::Acquire);
        if settled {
            // Every message sent has been answered: the primary's status is the truth.
            let status = state.tx_status.load(Ordering::Acquire);
            self.block = status != b'I';
            self.ended = status == b'I';
        }
        std::mem::take(&mut self.ended)
    }

    /// A Query was sent that runs `ran`'s statements (`None`: it runs no transaction
    /// control as far as capgate knows, e.g. it was refused or not classified). `chain`: its
    /// text mentions AND CHAIN, after which a block stays open.
    pub fn query(&mut self, ran: Option<&Classification>, chain: bool) {
        for control in ran.iter().flat_map(|c| &c.statements).filter_map(|s| match &s.kind {
            Kind::Transaction(t) => Some(t),
            _ => None,
        }) {
            self.control(control, chain);
        }
        if !self.block {
            self.ended = true;
        }
    }

    /// A Bind runs a prepared statement that is transaction control.
    pub fn bind(&mut self, control: &TxControl, chain: bool) {
        self.control(control, chain);
    }

    /// A Sync was sent: outside a block it ends the implicit transaction of its group.
    pub fn sync(&mut self) {
        if !self.block {
            self.ended = true;
        }
    }

    fn control(&mut self, control: &TxControl, chain: bool) {
        match control {
            TxControl::Begin => self.block = true,
            TxControl::Commit | TxControl::Rollback | TxControl::PrepareTransaction(_) => self.block = chain,
            _ => {}
        }
    }
}

/// Whether a statement's text asks for AND CHAIN (a new transaction opens at once).
pub fn mentions_chain(sql: &str) -> bool {
    sql.len() < 256 && sql.to_ascii_uppercase().contains("CHAIN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::StatementClass;

    fn tx(controls: &[TxControl]) -> Classification {
        Classification { statements: controls.iter().map(|c| StatementClass::of_kind(Kind::Transaction(c.clone()))).collect() }
    }

    /// BEGIN, SET LOCAL, COMMIT and a SELECT sent in one go: the SELECT begins a new
    /// transaction although no reply has arrived; the SET LOCAL does not.
    #[test]
    fn pipelined_queries_end_their_transactions_without_replies() {
        let state = SessionState::new();
        let mut b = Boundaries::default();
        let mut starts = Vec::new();
        for (sent, controls) in [(0, vec![TxControl::Begin]), (1, vec![]), (2, vec![TxControl::Commit]), (3, vec![])] {
            starts.push(b.message(&state));
            // The message is counted as in flight once it is forwarded.
            state.pending.store(sent + 1, Ordering::Release);
            b.query(Some(&tx(&controls)), false);
        }
        assert_eq!(starts, [true, false, false, true]);
    }

    /// Replies that arrive for an earlier transaction do not end the block open now.
    #[test]
    fn a_late_idle_reply_does_not_end_the_open_block() {
        let state = SessionState::new();
        let mut b = Boundaries::default();
        assert!(b.message(&state));
        state.pending.store(1, Ordering::Release);
        b.query(None, false); // an autocommit statement
        assert!(b.message(&state));
        state.pending.store(2, Ordering::Release);
        b.query(Some(&tx(&[TxControl::Begin])), false);
        // Its idle ReadyForQuery arrives while BEGIN is still in flight.
        crate::frontend::postgres::relay::set_status(&state, b'I');
        state.pending.store(1, Ordering::Release);
        assert!(!b.message(&state), "the block just begun was ended by an old reply");
        // Once everything is answered the primary's word counts: here, in a block.
        state.tx_status.store(b'T', Ordering::Release);
        state.pending.store(0, Ordering::Release);
        assert!(!b.message(&state));
    }

    /// An extended-protocol group ends its implicit transaction at the Sync, not before; a
    /// block begun by a bound BEGIN survives it; AND CHAIN keeps the block.
    #[test]
    fn syncs_and_bound_transaction_control() {
        let state = SessionState::new();
        let mut b = Boundaries::default();
        assert!(b.message(&state));
        state.extended_open.store(true, Ordering::Release);
        assert!(!b.message(&state));
        b.sync();
        assert!(b.message(&state), "the Sync ended the implicit transaction");
        b.bind(&TxControl::Begin, false);
        b.sync();
        assert!(!b.message(&state));
        b.bind(&TxControl::Commit, true);
        b.sync();
        assert!(!b.message(&state), "COMMIT AND CHAIN keeps a block open");
        b.bind(&TxControl::Commit, false);
        b.sync();
        assert!(b.message(&state));
    }
}
