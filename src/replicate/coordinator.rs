//! The sync commit, as a state machine without I/O (decision 0009), shared by every front end.
//!
//! A front end holds a transaction's commit point (its COMMIT, or the end of an autocommit
//! statement) when the transaction captured changes to sync tables, and drives a
//! [`SyncCommit`]: it performs each [`Action`] on the primary or the replicas and feeds the
//! outcome back as an [`Event`]. Every decision — refuse, wait for a partition to heal,
//! prepare, commit, abort — and every message the client sees is made here, so each
//! interleaving (a replica failing mid-prepare, a conflict, a primary that cannot commit) is
//! a unit test on values.
//!
//! The order is fixed: (1) read the transaction's sync changes on the primary, which also
//! writes the decision record inside the primary transaction; (2) apply them and PREPARE on
//! every available replica, in parallel, one round trip each; (3) only when the quorum
//! prepared (every replica, unless the tables' rule says `quorum = k`), let the primary
//! commit; (4) COMMIT PREPARED (or ROLLBACK PREPARED) off the critical path. A primary that
//! did not commit leaves no decision record, so recovery rolls back any branch this process
//! could not (presumed abort).
//!
//! Under a quorum (decision 0017) the primary also writes the changes to the change stream,
//! tagged with the gid: a replica outside the quorum gets them from the stream, in commit
//! order; a replica whose branch committed records the gid, and the stream skips it there.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::TableName;
use crate::policy::{Mode, OnPartition, Policy};
use crate::replicate::Refusal;

/// SQLSTATE of a commit refused because a replica could not take part (partitioned, too slow,
/// failed): object_not_in_prerequisite_state.
pub const UNAVAILABLE: &str = "55000";

/// SQLSTATE of a commit refused because a replica's rows already differ from the primary's.
pub const DIVERGED: &str = "CGC01";

/// SQLSTATE of a commit refused because its rows were locked at another site by a transaction
/// that waits for this site's rows in turn (a cross-site deadlock; this one yielded):
/// deadlock_detected, which drivers and ORMs retry.
pub const LOCK_CONFLICT: &str = "40P01";

/// SQLSTATE of a commit refused because a replica is not set up to take part (no prepared
/// transactions, no capgate schema, a privilege missing): a configuration error.
pub const MISCONFIGURED: &str = "55000";

/// One replica as the front end sees it when the changes are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub name: String,
    /// Whether its health state lets a write go to it now.
    pub available: bool,
    /// Its health state and last error, for messages (`partitioned (no heartbeat for 3 s)`).
    pub state: String,
}

/// Why one replica could not prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareFailure {
    /// Cut off, too slow, or its connection failed: a partition as far as the client goes.
    Unavailable(String),
    /// Its rows already differ (the conflict as JSON, from the replica's apply function).
    Conflict(String),
    /// A row was locked there longer than this site may wait: most likely a transaction of
    /// that site waiting for this one's rows (a cross-site deadlock, which this site yields).
    LockConflict(String),
    /// The replica cannot take part until a DBA changes it (the reason says what).
    Misconfigured(String),
}

/// What the front end does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read (and remove) the transaction's sync changes on the primary, writing the decision
    /// record `gid` inside the transaction, and, with `stream`, copying the changes to the
    /// change stream tagged with `gid`; answer with [`Event::Changes`].
    ReadChanges { gid: String, stream: bool },
    /// Nothing to coordinate (the changes were rolled back to a savepoint): let the commit
    /// point through as it came.
    CommitPlain,
    /// Wait up to `timeout` for enough replicas (the quorum) to be available; answer with
    /// [`Event::Availability`].
    WaitAvailable { timeout: Duration },
    /// Apply the changes and PREPARE `gid` on each listed replica (indexes into the replica
    /// list given with the changes), in parallel; answer each with [`Event::Prepared`] as it
    /// ends (a quorum commit goes on before the slower ones answer). With `record`, each
    /// branch also records `gid` as applied, so the change stream skips it there.
    Prepare { replicas: Vec<usize>, gid: String, changes: Arc<str>, record: bool },
    /// These replicas are outside the quorum (not available, failed, or not answered yet):
    /// the transaction reaches them through the change stream; they show as behind until it
    /// has. Comes just before [`Action::CommitPrimary`].
    Streamed { replicas: Vec<usize> },
    /// Let the primary commit (forward the client's commit point); answer with
    /// [`Event::PrimaryDone`].
    CommitPrimary,
    /// Roll the primary transaction back and tell the client this error in place of its
    /// commit; then [`Action::Finish`] follows if anything was prepared.
    Refuse(Refusal),
    /// Record a conflict found on `replica` (its JSON), for the conflict log and metrics.
    Conflict { replica: String, detail: String },
    /// Commit (or roll back) `gid` on these replicas, off the client's critical path, each once
    /// its PREPARE has ended (a replica outside a quorum may still be preparing: its branch is
    /// committed when it prepares, the stream skipping it there). A branch whose PREPARE may
    /// still complete (it timed out) is included: rolling back a gid that never prepared is
    /// harmless, and one that prepares late must not keep its locks until recovery.
    Finish { commit: bool, replicas: Vec<usize>, gid: String },
}

/// What the front end observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The transaction's sync changes: the tables, the changes as one JSON array (None: none
    /// left), the strictest `on_partition` and the largest `quorum` of those tables (None:
    /// every replica), and the replicas.
    Changes { tables: Vec<String>, changes: Option<Arc<str>>, on_partition: OnPartition, quorum: Option<usize>, replicas: Vec<ReplicaView> },
    /// The primary could not read the changes (the error text): the transaction cannot commit.
    ChangesFailed(String),
    /// After [`Action::WaitAvailable`]: the replicas now.
    Availability(Vec<ReplicaView>),
    /// One replica's prepare finished.
    Prepared { replica: usize, result: Result<(), PrepareFailure> },
    /// The primary's commit finished: whether it committed.
    PrimaryDone { committed: bool },
}

/// Where a commit is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Reading,
    Waiting,
    Preparing,
    Committing,
    Done,
}

/// Where one replica's branch is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Branch {
    /// No PREPARE was sent (the replica was not available): the stream brings it the changes.
    NotSent,
    /// PREPARE sent, no answer yet.
    Preparing,
    /// The PREPARE's outcome.
    Ended(Result<(), PrepareFailure>),
}

/// One transaction's sync commit.
#[derive(Debug)]
pub struct SyncCommit {
    gid: String,
    phase: Phase,
    /// Whether the primary copies the changes to the change stream (a quorum below every
    /// replica is possible only then).
    stream: bool,
    tables: Vec<String>,
    on_partition: OnPartition,
    /// Replicas that must prepare before the primary commits.
    quorum: usize,
    replicas: Vec<ReplicaView>,
    changes: Option<Arc<str>>,
    /// Per replica.
    branches: Vec<Branch>,
}

impl SyncCommit {
    /// A commit with global transaction id `gid`, and its first action. With `stream` the
    /// primary also writes the changes to the change stream, which is what lets a rule's
    /// `quorum` leave replicas out; without it every replica must prepare.
    pub fn start(gid: String, stream: bool) -> (SyncCommit, Action) {
        let commit = SyncCommit {
            gid: gid.clone(),
            phase: Phase::Reading,
            stream,
            tables: Vec::new(),
            on_partition: OnPartition::Fail,
            quorum: 0,
            replicas: Vec::new(),
            changes: None,
            branches: Vec::new(),
        };
        (commit, Action::ReadChanges { gid, stream })
    }

    pub fn gid(&self) -> &str {
        &self.gid
    }

    /// Whether the commit has reached its end (nothing more will be asked).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The actions that follow `event`, in order.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        match (self.phase.clone(), event) {
            (Phase::Reading, Event::Changes { tables, changes, on_partition, quorum, replicas }) => {
                let Some(changes) = changes else {
                    self.phase = Phase::Done;
                    return vec![Action::CommitPlain];
                };
                self.tables = tables;
                self.on_partition = on_partition;
                // Without the stream a replica left out would never get the changes.
                self.quorum = match quorum {
                    Some(k) if self.stream => k.min(replicas.len()),
                    _ => replicas.len(),
                };
                self.changes = Some(changes);
                self.admit(replicas)
            }
            (Phase::Reading, Event::ChangesFailed(e)) => {
                self.phase = Phase::Done;
                vec![Action::Refuse(Refusal {
                    code: UNAVAILABLE,
                    message: format!(
                        "capgate could not read this transaction's changes to sync tables on the primary: {e}; nothing was committed"
                    ),
                    hint: "retry the transaction; if it keeps failing, check capgate's log and the capgate schema on the primary".into(),
                })]
            }
            (Phase::Waiting, Event::Availability(replicas)) => {
                if let Some(r) = self.short_of_quorum(&replicas) {
                    let refusal = self.partitioned(&r);
                    self.phase = Phase::Done;
                    return vec![Action::Refuse(refusal)];
                }
                self.prepare(replicas)
            }
            (Phase::Preparing, Event::Prepared { replica, result }) => {
                if let Some(slot @ Branch::Preparing) = self.branches.get_mut(replica) {
                    *slot = Branch::Ended(result);
                }
                self.after_prepare()
            }
            // A replica outside the quorum answering after the primary was let commit: the
            // Finish that follows (or followed) covers its branch.
            (Phase::Committing | Phase::Done, Event::Prepared { replica, result }) => {
                if let Some(slot @ Branch::Preparing) = self.branches.get_mut(replica) {
                    *slot = Branch::Ended(result);
                }
                Vec::new()
            }
            (Phase::Committing, Event::PrimaryDone { committed }) => {
                self.phase = Phase::Done;
                vec![Action::Finish { commit: committed, replicas: self.sent(), gid: self.gid.clone() }]
            }
            // An event that does not belong to the phase (a front end bug): end safely. The
            // primary has not committed in any phase before Committing.
            (phase, event) => {
                tracing::error!(?phase, ?event, gid = %self.gid, "sync commit: unexpected event; refusing the commit");
                let prepared = self.phase == Phase::Preparing;
                self.phase = Phase::Done;
                let mut out = vec![Action::Refuse(Refusal {
                    code: UNAVAILABLE,
                    message: "capgate lost track of this sync commit; nothing was committed".into(),
                    hint: "retry the transaction; please report this with capgate's log".into(),
                })];
                if prepared {
                    out.push(Action::Finish { commit: false, replicas: self.sent(), gid: self.gid.clone() });
                }
                out
            }
        }
    }

    /// The quorum available: prepare; else refuse or wait as the tables' `on_partition` says.
    fn admit(&mut self, replicas: Vec<ReplicaView>) -> Vec<Action> {
        let Some(down) = self.short_of_quorum(&replicas) else { return self.prepare(replicas) };
        match self.on_partition {
            OnPartition::Fail => {
                self.phase = Phase::Done;
                self.replicas = replicas;
                vec![Action::Refuse(self.partitioned(&down))]
            }
            OnPartition::Block { timeout } => {
                self.phase = Phase::Waiting;
                self.replicas = replicas;
                vec![Action::WaitAvailable { timeout }]
            }
        }
    }

    /// The first replica not available, when fewer than the quorum are.
    fn short_of_quorum(&self, replicas: &[ReplicaView]) -> Option<ReplicaView> {
        let available = replicas.iter().filter(|r| r.available).count();
        if available >= self.quorum {
            return None;
        }
        replicas.iter().find(|r| !r.available).cloned()
    }

    /// Prepare on every available replica (all of them, without a quorum).
    fn prepare(&mut self, replicas: Vec<ReplicaView>) -> Vec<Action> {
        self.branches = replicas.iter().map(|r| if r.available { Branch::Preparing } else { Branch::NotSent }).collect();
        let sent = self.sent();
        self.replicas = replicas;
        if sent.is_empty() {
            return self.after_prepare();
        }
        self.phase = Phase::Preparing;
        let changes = self.changes.clone().unwrap_or_else(|| Arc::from("[]"));
        vec![Action::Prepare { replicas: sent, gid: self.gid.clone(), changes, record: self.stream }]
    }

    /// The replicas a PREPARE was sent to.
    fn sent(&self) -> Vec<usize> {
        self.branches.iter().enumerate().filter(|(_, b)| **b != Branch::NotSent).map(|(i, _)| i).collect()
    }

    /// After each answer: commit once the quorum prepared, refuse once it no longer can,
    /// else wait for more answers.
    fn after_prepare(&mut self) -> Vec<Action> {
        let ok = self.branches.iter().filter(|b| **b == Branch::Ended(Ok(()))).count();
        let waiting = self.branches.iter().filter(|b| **b == Branch::Preparing).count();
        if ok >= self.quorum {
            self.phase = Phase::Committing;
            let behind: Vec<usize> =
                self.branches.iter().enumerate().filter(|(_, b)| **b != Branch::Ended(Ok(()))).map(|(i, _)| i).collect();
            return if behind.is_empty() {
                vec![Action::CommitPrimary]
            } else {
                vec![Action::Streamed { replicas: behind }, Action::CommitPrimary]
            };
        }
        if ok + waiting >= self.quorum {
            return Vec::new();
        }
        let failures: Vec<(usize, PrepareFailure)> = self
            .branches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match b {
                Branch::Ended(Err(e)) => Some((i, e.clone())),
                _ => None,
            })
            .collect();
        self.phase = Phase::Done;
        let Some((first, failure)) = failures.first().cloned() else {
            // Fewer available than the quorum is refused before preparing; kept safe anyway.
            let down = self.replicas.iter().find(|r| !r.available).cloned().unwrap_or_else(|| self.replicas[0].clone());
            return vec![Action::Refuse(self.partitioned(&down))];
        };
        let mut out = Vec::new();
        for (i, f) in &failures {
            if let PrepareFailure::Conflict(detail) = f {
                out.push(Action::Conflict { replica: self.replicas[*i].name.clone(), detail: detail.clone() });
            }
        }
        out.push(Action::Refuse(self.failed(&self.replicas[first], &failure)));
        out.push(Action::Finish { commit: false, replicas: self.sent(), gid: self.gid.clone() });
        out
    }

    fn tables_text(&self) -> String {
        self.tables.join(", ")
    }

    fn partition_text(&self) -> String {
        match self.on_partition {
            OnPartition::Fail => "on_partition = \"fail\"".into(),
            OnPartition::Block { timeout } => format!("on_partition = \"block\", waited {timeout:?}"),
        }
    }

    fn partitioned(&self, r: &ReplicaView) -> Refusal {
        Refusal {
            code: UNAVAILABLE,
            message: format!(
                "capgate refused this commit: replica \"{}\" is {}, and table(s) {} are sync ({}); nothing was committed",
                r.name,
                r.state,
                self.tables_text(),
                self.partition_text()
            ),
            hint: "retry when the link to the replica heals; or, if availability matters more than consistency for these tables, make them async or bounded in the policy".into(),
        }
    }

    fn failed(&self, r: &ReplicaView, failure: &PrepareFailure) -> Refusal {
        match failure {
            PrepareFailure::Unavailable(why) => Refusal {
                code: UNAVAILABLE,
                message: format!(
                    "capgate refused this commit: replica \"{}\" could not prepare it ({why}), and table(s) {} are sync; nothing was committed",
                    r.name,
                    self.tables_text()
                ),
                hint: "retry when the link to the replica heals; or, if availability matters more than consistency for these tables, make them async or bounded in the policy".into(),
            },
            PrepareFailure::Conflict(detail) => Refusal {
                code: DIVERGED,
                message: format!(
                    "capgate refused this commit: on replica \"{}\" the rows of sync table(s) {} already differ from the primary's ({}); nothing was committed",
                    r.name,
                    self.tables_text(),
                    abbreviate(detail)
                ),
                hint: "the sites have diverged: run `capgate verify` on the table, repair the rows it lists, then retry".into(),
            },
            PrepareFailure::LockConflict(why) => Refusal {
                code: LOCK_CONFLICT,
                message: format!(
                    "capgate refused this commit: on replica \"{}\" a row of sync table(s) {} is locked by a transaction there ({why}); \
                     both sites changed the same rows at once and this one yields; nothing was committed",
                    r.name,
                    self.tables_text()
                ),
                hint: "retry the transaction (a deadlock across sites: the other site's transaction goes through)".into(),
            },
            PrepareFailure::Misconfigured(why) => Refusal {
                code: MISCONFIGURED,
                message: format!(
                    "capgate refused this commit: replica \"{}\" is not set up to take part in sync commits ({why}); table(s) {} are sync; nothing was committed",
                    r.name,
                    self.tables_text()
                ),
                hint: "this is a configuration problem, not a partition: fix the replica (see docs/before-you-replicate.md), then retry".into(),
            },
        }
    }
}

/// The first 300 characters of a conflict's JSON, for an error message.
fn abbreviate(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The strictest `on_partition` of `tables` under `policy`: `fail` if any table fails (or is
/// no longer sync), else the shortest `block` timeout.
pub fn strictest_on_partition(policy: &Policy, tables: &[String]) -> OnPartition {
    let mut out: Option<OnPartition> = None;
    for t in tables {
        let mode = TableName::parse(t).map(|name| policy.decide_table(&name).mode);
        let this = match mode {
            Some(Mode::Sync { on_partition, .. }) => on_partition,
            _ => OnPartition::Fail,
        };
        out = Some(match (out, this) {
            (None, x) => x,
            (Some(OnPartition::Fail), _) | (_, OnPartition::Fail) => OnPartition::Fail,
            (Some(OnPartition::Block { timeout: a }), OnPartition::Block { timeout: b }) => OnPartition::Block { timeout: a.min(b) },
        });
    }
    out.unwrap_or(OnPartition::Fail)
}

#[cfg(test)]
mod tests;
