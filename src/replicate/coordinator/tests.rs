//! Every path of a sync commit, on values.

use super::*;

fn replicas(available: &[bool]) -> Vec<ReplicaView> {
    available
        .iter()
        .enumerate()
        .map(|(i, &a)| ReplicaView {
            name: format!("r{i}"),
            available: a,
            state: if a { "healthy".into() } else { "partitioned (no heartbeat for 3s)".into() },
        })
        .collect()
}

fn changes(on_partition: OnPartition, available: &[bool]) -> Event {
    Event::Changes {
        tables: vec!["public.acct".into()],
        changes: Some(Arc::from(r#"[{"op":"I"}]"#)),
        on_partition,
        quorum: None,
        replicas: replicas(available),
    }
}

/// The changes of a table whose rule says `quorum = k`.
fn quorum_changes(k: usize, on_partition: OnPartition, available: &[bool]) -> Event {
    match changes(on_partition, available) {
        Event::Changes { tables, changes, on_partition, replicas, .. } => {
            Event::Changes { tables, changes, on_partition, quorum: Some(k), replicas }
        }
        other => other,
    }
}

fn ok(replica: usize) -> Event {
    Event::Prepared { replica, result: Ok(()) }
}

fn down(replica: usize) -> Event {
    Event::Prepared { replica, result: Err(PrepareFailure::Unavailable("timed out after 2s".into())) }
}

fn refusal(actions: &[Action]) -> &Refusal {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Refuse(r) => Some(r),
            _ => None,
        })
        .expect("a refusal")
}

#[test]
fn the_happy_path_prepares_everywhere_then_commits_then_finishes() {
    let (mut c, first) = SyncCommit::start("g1".into(), false);
    assert_eq!(first, Action::ReadChanges { gid: "g1".into(), stream: false });
    let a = c.on(changes(OnPartition::Fail, &[true, true]));
    assert_eq!(a, vec![Action::Prepare { replicas: vec![0, 1], gid: "g1".into(), changes: Arc::from(r#"[{"op":"I"}]"#), record: false }]);
    assert!(c.on(Event::Prepared { replica: 1, result: Ok(()) }).is_empty(), "waits for every replica");
    assert_eq!(c.on(Event::Prepared { replica: 0, result: Ok(()) }), vec![Action::CommitPrimary]);
    assert_eq!(c.on(Event::PrimaryDone { committed: true }), vec![Action::Finish { commit: true, replicas: vec![0, 1], gid: "g1".into() }]);
    assert!(c.is_done());
}

#[test]
fn nothing_left_to_replicate_commits_plainly() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    let a =
        c.on(Event::Changes { tables: vec![], changes: None, on_partition: OnPartition::Fail, quorum: None, replicas: replicas(&[false]) });
    assert_eq!(a, vec![Action::CommitPlain], "even with a replica down: there is nothing to send it");
}

#[test]
fn a_partitioned_replica_refuses_at_once_with_fail() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    let a = c.on(changes(OnPartition::Fail, &[true, false]));
    assert_eq!(a.len(), 1, "nothing was prepared, nothing to finish: {a:?}");
    let r = refusal(&a);
    assert_eq!(r.code, UNAVAILABLE);
    for needle in ["\"r1\"", "partitioned", "public.acct", "sync", "on_partition = \"fail\"", "nothing was committed"] {
        assert!(r.message.contains(needle), "{needle} not in {}", r.message);
    }
    assert!(r.hint.contains("async or bounded"));
}

#[test]
fn block_waits_and_then_prepares_or_refuses() {
    let block = OnPartition::Block { timeout: Duration::from_secs(5) };
    let (mut c, _) = SyncCommit::start("g".into(), false);
    assert_eq!(c.on(changes(block, &[false])), vec![Action::WaitAvailable { timeout: Duration::from_secs(5) }]);
    assert!(matches!(c.on(Event::Availability(replicas(&[true])))[0], Action::Prepare { .. }));

    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(block, &[false]));
    let a = c.on(Event::Availability(replicas(&[false])));
    assert!(refusal(&a).message.contains("waited 5s"), "{a:?}");
    assert!(c.is_done());
}

#[test]
fn one_failed_prepare_refuses_and_rolls_back_every_branch() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true, true]));
    c.on(Event::Prepared { replica: 0, result: Ok(()) });
    let a = c.on(Event::Prepared { replica: 1, result: Err(PrepareFailure::Unavailable("timed out after 2s".into())) });
    assert_eq!(refusal(&a).code, UNAVAILABLE);
    assert!(refusal(&a).message.contains("timed out after 2s"));
    assert_eq!(a.last(), Some(&Action::Finish { commit: false, replicas: vec![0, 1], gid: "g".into() }));
}

#[test]
fn a_conflict_is_recorded_and_refused_as_divergence() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true]));
    let detail = r#"{"kind":"update_differs","tbl":"public.acct"}"#.to_owned();
    let a = c.on(Event::Prepared { replica: 0, result: Err(PrepareFailure::Conflict(detail.clone())) });
    assert_eq!(a[0], Action::Conflict { replica: "r0".into(), detail });
    let r = refusal(&a);
    assert_eq!(r.code, DIVERGED);
    assert!(r.message.contains("update_differs") && r.hint.contains("capgate verify"), "{r:?}");
}

#[test]
fn a_misconfigured_replica_is_not_called_a_partition() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true]));
    let a = c.on(Event::Prepared { replica: 0, result: Err(PrepareFailure::Misconfigured("max_prepared_transactions is 0".into())) });
    let r = refusal(&a);
    assert!(r.message.contains("not set up") && r.message.contains("max_prepared_transactions"), "{r:?}");
    assert!(r.hint.contains("configuration problem, not a partition"));
}

#[test]
fn the_primary_not_committing_rolls_the_branches_back() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true]));
    c.on(Event::Prepared { replica: 0, result: Ok(()) });
    assert_eq!(c.on(Event::PrimaryDone { committed: false }), vec![Action::Finish { commit: false, replicas: vec![0], gid: "g".into() }]);
}

#[test]
fn no_replicas_commits_on_the_primary_alone() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    assert_eq!(c.on(changes(OnPartition::Fail, &[])), vec![Action::CommitPrimary]);
}

#[test]
fn reading_the_changes_can_fail() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    let a = c.on(Event::ChangesFailed("relation \"capgate.sync_changes\" does not exist".into()));
    assert!(refusal(&a).message.contains("capgate.sync_changes"));
}

#[test]
fn an_event_out_of_place_refuses_and_rolls_back_what_may_be_prepared() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true]));
    let a = c.on(Event::PrimaryDone { committed: true });
    assert!(matches!(a[0], Action::Refuse(_)));
    assert_eq!(a[1], Action::Finish { commit: false, replicas: vec![0], gid: "g".into() });
}

#[test]
fn a_quorum_commits_once_k_replicas_prepared_and_streams_the_rest() {
    let (mut c, first) = SyncCommit::start("q".into(), true);
    assert_eq!(first, Action::ReadChanges { gid: "q".into(), stream: true });
    let a = c.on(quorum_changes(1, OnPartition::Fail, &[true, true, true]));
    assert_eq!(a, vec![Action::Prepare { replicas: vec![0, 1, 2], gid: "q".into(), changes: Arc::from(r#"[{"op":"I"}]"#), record: true }]);
    assert_eq!(c.on(ok(2)), vec![Action::Streamed { replicas: vec![0, 1] }, Action::CommitPrimary], "the nearest one is enough");
    assert!(c.on(ok(0)).is_empty(), "a late answer changes nothing now");
    assert_eq!(
        c.on(Event::PrimaryDone { committed: true }),
        vec![Action::Finish { commit: true, replicas: vec![0, 1, 2], gid: "q".into() }]
    );
    assert!(c.on(down(1)).is_empty(), "nor after the end");
    assert!(c.is_done());
}

#[test]
fn a_quorum_of_two_waits_for_the_second_and_survives_one_failure() {
    let (mut c, _) = SyncCommit::start("q".into(), true);
    c.on(quorum_changes(2, OnPartition::Fail, &[true, true, true]));
    assert!(c.on(down(0)).is_empty(), "two may still prepare");
    assert!(c.on(ok(1)).is_empty(), "one of two");
    assert_eq!(c.on(ok(2)), vec![Action::Streamed { replicas: vec![0] }, Action::CommitPrimary]);
}

#[test]
fn a_quorum_that_can_no_longer_be_reached_refuses_and_rolls_back() {
    let (mut c, _) = SyncCommit::start("q".into(), true);
    c.on(quorum_changes(2, OnPartition::Fail, &[true, true, true]));
    assert!(c.on(down(0)).is_empty());
    let a = c.on(Event::Prepared { replica: 2, result: Err(PrepareFailure::Conflict(r#"{"kind":"update_differs"}"#.into())) });
    assert_eq!(refusal(&a).code, UNAVAILABLE, "the first failure names the refusal: {a:?}");
    assert!(a.contains(&Action::Conflict { replica: "r2".into(), detail: r#"{"kind":"update_differs"}"#.into() }));
    assert_eq!(
        a.last(),
        Some(&Action::Finish { commit: false, replicas: vec![0, 1, 2], gid: "q".into() }),
        "replica 1 still preparing is rolled back"
    );
    assert!(c.is_done());
}

#[test]
fn a_replica_behind_on_the_rows_misses_the_quorum_without_refusing() {
    // Its old images do not match (it has not applied an earlier commit from the stream yet):
    // the stream brings it this one too, after the earlier one.
    let (mut c, _) = SyncCommit::start("q".into(), true);
    c.on(quorum_changes(1, OnPartition::Fail, &[true, true]));
    assert!(c.on(Event::Prepared { replica: 0, result: Err(PrepareFailure::Conflict("{}".into())) }).is_empty());
    assert_eq!(c.on(ok(1)), vec![Action::Streamed { replicas: vec![0] }, Action::CommitPrimary]);
}

#[test]
fn partition_refusal_counts_healthy_replicas_against_the_quorum() {
    // One of three down, quorum 2: prepared on the two others only.
    let (mut c, _) = SyncCommit::start("q".into(), true);
    let a = c.on(quorum_changes(2, OnPartition::Fail, &[true, false, true]));
    assert_eq!(a, vec![Action::Prepare { replicas: vec![0, 2], gid: "q".into(), changes: Arc::from(r#"[{"op":"I"}]"#), record: true }]);
    c.on(ok(0));
    assert_eq!(c.on(ok(2)), vec![Action::Streamed { replicas: vec![1] }, Action::CommitPrimary]);
    assert_eq!(c.on(Event::PrimaryDone { committed: true }), vec![Action::Finish { commit: true, replicas: vec![0, 2], gid: "q".into() }]);

    // Two of three down, quorum 2: refused at once under `fail`…
    let (mut c, _) = SyncCommit::start("q".into(), true);
    let a = c.on(quorum_changes(2, OnPartition::Fail, &[false, false, true]));
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(refusal(&a).message.contains("\"r0\" is partitioned"), "{a:?}");

    // …waited for under `block`, and prepared once enough are back.
    let block = OnPartition::Block { timeout: Duration::from_secs(5) };
    let (mut c, _) = SyncCommit::start("q".into(), true);
    assert_eq!(c.on(quorum_changes(2, block, &[false, false, true])), vec![Action::WaitAvailable { timeout: Duration::from_secs(5) }]);
    let a = c.on(Event::Availability(replicas(&[false, true, true])));
    assert!(matches!(&a[0], Action::Prepare { replicas, .. } if *replicas == vec![1, 2]), "{a:?}");
}

#[test]
fn without_the_stream_a_quorum_still_requires_every_replica() {
    // The changes were not written to the stream (a policy reloaded in between): leaving a
    // replica out would lose them there.
    let (mut c, _) = SyncCommit::start("q".into(), false);
    let a = c.on(quorum_changes(1, OnPartition::Fail, &[true, false]));
    assert!(matches!(a[..], [Action::Refuse(_)]), "{a:?}");
    let (mut c, _) = SyncCommit::start("q".into(), false);
    c.on(quorum_changes(1, OnPartition::Fail, &[true, true]));
    assert!(c.on(ok(0)).is_empty(), "waits for the other one");
    assert_eq!(c.on(ok(1)), vec![Action::CommitPrimary]);
}

#[test]
fn a_quorum_above_the_replicas_requires_them_all() {
    let (mut c, _) = SyncCommit::start("q".into(), true);
    c.on(quorum_changes(5, OnPartition::Fail, &[true, true]));
    assert!(c.on(ok(0)).is_empty());
    assert_eq!(c.on(ok(1)), vec![Action::CommitPrimary]);
}

#[test]
fn a_cross_site_lock_conflict_is_a_retryable_deadlock() {
    let (mut c, _) = SyncCommit::start("g".into(), false);
    c.on(changes(OnPartition::Fail, &[true]));
    let a =
        c.on(Event::Prepared { replica: 0, result: Err(PrepareFailure::LockConflict("canceling statement due to lock timeout".into())) });
    let r = refusal(&a);
    assert_eq!(r.code, "40P01", "drivers retry deadlock_detected");
    assert!(r.message.contains("\"r0\"") && r.message.contains("public.acct") && r.message.contains("yields"), "{r:?}");
    assert!(r.hint.contains("retry"));
    assert_eq!(a.last(), Some(&Action::Finish { commit: false, replicas: vec![0], gid: "g".into() }));
}

#[test]
fn the_strictest_on_partition_wins() {
    let text = "[[table]]\nmatch = \"public.f\"\nmode = \"sync\"\n[[table]]\nmatch = \"public.b*\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"3s\"\n[[table]]\nmatch = \"public.c*\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"9s\"\n";
    let policy = Policy::parse(text, std::path::Path::new("p.toml")).unwrap();
    let t = |v: &[&str]| strictest_on_partition(&policy, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(t(&["public.b1"]), OnPartition::Block { timeout: Duration::from_secs(3) });
    assert_eq!(t(&["public.b1", "public.f"]), OnPartition::Fail);
    assert_eq!(t(&["public.c1", "public.b1"]), OnPartition::Block { timeout: Duration::from_secs(3) }, "the shortest wait");
    assert_eq!(t(&["public.local"]), OnPartition::Fail, "a table no longer sync refuses rather than waits");
}
