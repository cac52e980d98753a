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
        replicas: replicas(available),
    }
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
    let (mut c, first) = SyncCommit::start("g1".into());
    assert_eq!(first, Action::ReadChanges { gid: "g1".into() });
    let a = c.on(changes(OnPartition::Fail, &[true, true]));
    assert_eq!(a, vec![Action::Prepare { replicas: vec![0, 1], gid: "g1".into(), changes: Arc::from(r#"[{"op":"I"}]"#) }]);
    assert!(c.on(Event::Prepared { replica: 1, result: Ok(()) }).is_empty(), "waits for every replica");
    assert_eq!(c.on(Event::Prepared { replica: 0, result: Ok(()) }), vec![Action::CommitPrimary]);
    assert_eq!(c.on(Event::PrimaryDone { committed: true }), vec![Action::Finish { commit: true, replicas: vec![0, 1], gid: "g1".into() }]);
    assert!(c.is_done());
}

#[test]
fn nothing_left_to_replicate_commits_plainly() {
    let (mut c, _) = SyncCommit::start("g".into());
    let a = c.on(Event::Changes { tables: vec![], changes: None, on_partition: OnPartition::Fail, replicas: replicas(&[false]) });
    assert_eq!(a, vec![Action::CommitPlain], "even with a replica down: there is nothing to send it");
}

#[test]
fn a_partitioned_replica_refuses_at_once_with_fail() {
    let (mut c, _) = SyncCommit::start("g".into());
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
    let (mut c, _) = SyncCommit::start("g".into());
    assert_eq!(c.on(changes(block, &[false])), vec![Action::WaitAvailable { timeout: Duration::from_secs(5) }]);
    assert!(matches!(c.on(Event::Availability(replicas(&[true])))[0], Action::Prepare { .. }));

    let (mut c, _) = SyncCommit::start("g".into());
    c.on(changes(block, &[false]));
    let a = c.on(Event::Availability(replicas(&[false])));
    assert!(refusal(&a).message.contains("waited 5s"), "{a:?}");
    assert!(c.is_done());
}

#[test]
fn one_failed_prepare_refuses_and_rolls_back_every_branch() {
    let (mut c, _) = SyncCommit::start("g".into());
    c.on(changes(OnPartition::Fail, &[true, true]));
    c.on(Event::Prepared { replica: 0, result: Ok(()) });
    let a = c.on(Event::Prepared { replica: 1, result: Err(PrepareFailure::Unavailable("timed out after 2s".into())) });
    assert_eq!(refusal(&a).code, UNAVAILABLE);
    assert!(refusal(&a).message.contains("timed out after 2s"));
    assert_eq!(a.last(), Some(&Action::Finish { commit: false, replicas: vec![0, 1], gid: "g".into() }));
}

#[test]
fn a_conflict_is_recorded_and_refused_as_divergence() {
    let (mut c, _) = SyncCommit::start("g".into());
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
    let (mut c, _) = SyncCommit::start("g".into());
    c.on(changes(OnPartition::Fail, &[true]));
    let a = c.on(Event::Prepared { replica: 0, result: Err(PrepareFailure::Misconfigured("max_prepared_transactions is 0".into())) });
    let r = refusal(&a);
    assert!(r.message.contains("not set up") && r.message.contains("max_prepared_transactions"), "{r:?}");
    assert!(r.hint.contains("configuration problem, not a partition"));
}

#[test]
fn the_primary_not_committing_rolls_the_branches_back() {
    let (mut c, _) = SyncCommit::start("g".into());
    c.on(changes(OnPartition::Fail, &[true]));
    c.on(Event::Prepared { replica: 0, result: Ok(()) });
    assert_eq!(c.on(Event::PrimaryDone { committed: false }), vec![Action::Finish { commit: false, replicas: vec![0], gid: "g".into() }]);
}

#[test]
fn no_replicas_commits_on_the_primary_alone() {
    let (mut c, _) = SyncCommit::start("g".into());
    assert_eq!(c.on(changes(OnPartition::Fail, &[])), vec![Action::CommitPrimary]);
}

#[test]
fn reading_the_changes_can_fail() {
    let (mut c, _) = SyncCommit::start("g".into());
    let a = c.on(Event::ChangesFailed("relation \"capgate.sync_changes\" does not exist".into()));
    assert!(refusal(&a).message.contains("capgate.sync_changes"));
}

#[test]
fn an_event_out_of_place_refuses_and_rolls_back_what_may_be_prepared() {
    let (mut c, _) = SyncCommit::start("g".into());
    c.on(changes(OnPartition::Fail, &[true]));
    let a = c.on(Event::PrimaryDone { committed: true });
    assert!(matches!(a[0], Action::Refuse(_)));
    assert_eq!(a[1], Action::Finish { commit: false, replicas: vec![0], gid: "g".into() });
}
