//! The order `capgate.apply_changes` applies a page in (`src/replicate/apply/order.sql`,
//! decision 0026): where a table's operations alternate, its changes go in few runs grouped
//! by generation, and every row still sees its own changes in capture order; a unique value
//! or an excluded range freed and taken again across rows, which that grouping would apply in
//! the wrong order, applies in capture order instead; a table whose keys change, or whose key
//! prints differently with the writer's settings, keeps capture order.

use std::time::Duration;

use capgate::replicate::apply::{self, ApplyMode};
use serde_json::json;

use crate::apply::{bed, list};

/// How many runs (`capgate.apply_run` calls) applying `changes` in one transaction took, and
/// the replica's rows are then the origin's.
async fn runs(b: &crate::apply::Bed, name: &str, changes: &[String], mode: ApplyMode) -> i64 {
    b.db.batch_execute("SET track_functions = 'pl'; BEGIN").await.expect("begin");
    let on_conflict = apply::on_conflict_json([], "halt");
    apply::apply_changes(&b.db, name, &list(changes), mode, &on_conflict, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let calls: i64 = b
        .db
        .query_one("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions WHERE schemaname = 'capgate' AND funcname = 'apply_run'", &[])
        .await
        .expect("function stats")
        .get(0);
    b.db.batch_execute("COMMIT; RESET track_functions").await.expect("commit");
    calls
}

#[tokio::test]
async fn alternating_inserts_and_hot_updates_apply_in_two_runs_in_each_rows_order() {
    let b = bed("order_mix", "CREATE TABLE t (k int PRIMARY KEY, v int NOT NULL DEFAULT 0)").await;
    let setup = b.capture("t", "INSERT INTO t VALUES (1, 0), (2, 0)").await;
    b.apply_ok(&setup, "halt").await;
    // 60 inserts of new rows, each followed by an increment of one of two hot rows: 120
    // changes whose operation alternates at every change.
    let mut changes = Vec::new();
    for i in 0..60 {
        changes.extend(b.capture("t", &format!("INSERT INTO t VALUES ({}, {i})", 100 + i)).await);
        changes.extend(b.capture("t", &format!("UPDATE t SET v = v + 1 WHERE k = {}", 1 + i % 2)).await);
    }
    assert_eq!(changes.len(), 120);
    assert_eq!(runs(&b, "order_mix", &changes, ApplyMode::Async).await, 2, "one run of inserts and one of updates");
    b.same("t").await;

    // One row's whole life in a page, among other rows' changes: inserted, updated, deleted,
    // inserted again and updated, while a hot row is incremented between each step.
    let mut life = Vec::new();
    for sql in [
        "INSERT INTO t VALUES (500, 1)",
        "UPDATE t SET v = 2 WHERE k = 500",
        "DELETE FROM t WHERE k = 500",
        "INSERT INTO t VALUES (500, 3)",
        "UPDATE t SET v = v * 10 WHERE k = 500",
        "DELETE FROM t WHERE k = 100",
    ] {
        life.extend(b.capture("t", sql).await);
        life.extend(b.capture("t", "UPDATE t SET v = v + 1 WHERE k = 1").await);
    }
    runs(&b, "order_mix", &life, ApplyMode::Sync).await;
    b.same("t").await;
    assert!(b.replica_rows("t").await.contains(&r#"{"k":500,"v":30}"#.to_owned()));
}

#[tokio::test]
async fn a_unique_value_or_a_range_freed_and_taken_again_across_rows_applies_in_capture_order() {
    // Row 2 takes a value and gives it up; row 1 then takes it. Grouped by generation, row 1's
    // update (its first change) would go before row 2's insert (its first) and take the value
    // first: the insert would fail on the unique index, or the exclusion constraint.
    let cases = [
        ("CREATE TABLE t (k int PRIMARY KEY, u text UNIQUE, v int NOT NULL DEFAULT 0)", ["'w'", "'x'", "'v'"]),
        (
            "CREATE TABLE t (k int PRIMARY KEY, u int4range, v int NOT NULL DEFAULT 0, EXCLUDE USING gist (u WITH &&))",
            ["'[20,25)'", "'[1,5)'", "'[10,15)'"],
        ),
    ];
    for (i, (ddl, [first, taken, other])) in cases.into_iter().enumerate() {
        for (mode, side) in [(ApplyMode::Async, "a"), (ApplyMode::Sync, "s")] {
            let name = format!("order_uq{i}_{side}");
            let b = bed(&name, ddl).await;
            b.apply_ok(&b.capture("t", &format!("INSERT INTO t VALUES (1, {first})")).await, "halt").await;
            let mut changes = b.capture("t", &format!("INSERT INTO t VALUES (2, {taken})")).await;
            changes.extend(b.capture("t", &format!("UPDATE t SET u = {other} WHERE k = 2")).await);
            changes.extend(b.capture("t", &format!("UPDATE t SET u = {taken} WHERE k = 1")).await);
            changes.extend(b.capture("t", "UPDATE t SET v = 7 WHERE k = 2").await);
            runs(&b, &name, &changes, mode).await;
            b.same("t").await;
            assert!(b.recorded().await.is_empty(), "{name}: no conflict");
        }
    }
}

#[tokio::test]
async fn a_key_whose_text_depends_on_the_writers_settings_keeps_capture_order() {
    // A timestamptz prints in the writing session's TimeZone: the same row's key as two
    // texts. Grouped by text, the update (another "row") would go first and find nothing.
    let b = bed("order_tz", "CREATE TABLE t (k int, ts timestamptz, v int NOT NULL DEFAULT 0, PRIMARY KEY (k, ts))").await;
    b.db.batch_execute("INSERT INTO p_order_tz.t VALUES (1, '2026-12-04 11:00:00+00', 0), (2, '2026-12-04 11:00:00+00', 0)")
        .await
        .expect("origin rows");
    b.db.batch_execute("UPDATE p_order_tz.t SET v = 1 WHERE k = 1").await.expect("origin update");
    let paris = json!({"k": 1, "ts": "2026-12-04 12:00:00+01", "v": 0});
    let utc = |v: i32| json!({"k": 1, "ts": "2026-12-04 11:00:00+00", "v": v});
    let other = json!({"k": 2, "ts": "2026-12-04 11:00:00+00", "v": 0});
    let changes =
        vec![b.change("t", "I", None, Some(paris)), b.change("t", "I", None, Some(other)), b.change("t", "U", Some(utc(0)), Some(utc(1)))];
    assert_eq!(runs(&b, "order_tz", &changes, ApplyMode::Async).await, 2, "capture order: the inserts, then the update");
    b.same("t").await;
    assert!(b.recorded().await.is_empty(), "no conflict");
}

#[tokio::test]
async fn a_table_whose_keys_change_keeps_capture_order() {
    let b = bed("order_key", "CREATE TABLE t (k int PRIMARY KEY, v int NOT NULL DEFAULT 0)").await;
    let mut changes = b.capture("t", "INSERT INTO t VALUES (1, 1)").await;
    // An update of the key (the test's capture diffs rows by key, so this one is made here).
    b.db.batch_execute("UPDATE p_order_key.t SET k = 2 WHERE k = 1").await.expect("origin update");
    changes.push(b.change("t", "U", Some(json!({"k": 1, "v": 1})), Some(json!({"k": 2, "v": 1}))));
    changes.extend(b.capture("t", "INSERT INTO t VALUES (1, 5)").await);
    changes.extend(b.capture("t", "UPDATE t SET v = v + 1 WHERE k = 1").await);
    assert_eq!(runs(&b, "order_key", &changes, ApplyMode::Async).await, 4, "a run per alternation, as captured");
    b.same("t").await;
}
