//! A replica whose site takes writes of its own (decision 0028): a table entering
//! replication with rows there is never emptied by a copy; it is halted, made equal by the
//! operator, and adopted without a copy, after which exactly the primary's later changes ship.

use super::*;

/// `public.t` on the replica carries capgate's capture trigger, as the replica site's own
/// capgate would install it: that site takes writes of its own.
async fn captured_on_the_replica(env: &Env) {
    install_primary(&env.replica).await.expect("capgate schema on the replica's site");
    let sql = "SELECT capgate.install_capture('public.t'::regclass, 'async', 'public.t')";
    env.replica.execute(sql, &[]).await.expect("capture trigger on the replica's table");
}

/// Waits until `public.t` is halted; why.
async fn halted_why(shipper: &Shipper) -> String {
    until("public.t halted", || shipper.stats().halted().contains_key("public.t")).await;
    shipper.stats().halted()["public.t"].clone()
}

#[tokio::test]
async fn rows_of_a_writing_replica_are_never_copied_over_and_an_adopted_table_ships_what_follows() {
    let env = env("ship_writing", KV, &[]).await;
    env.primary.batch_execute("INSERT INTO t VALUES (1, 'primary'), (2, 'primary')").await.expect("primary rows");
    env.replica.batch_execute("INSERT INTO t VALUES (2, 'replica'), (3, 'replica')").await.expect("replica rows");
    captured_on_the_replica(&env).await;
    env.capture("public.t").await;
    // Not configured as taking writes: the trigger on the replica's table is what tells.
    let config = env.config();
    assert!(!config.replica_takes_writes);
    let shipper = Shipper::start(config);
    let why = halted_why(&shipper).await;
    for said in ["public.t", "replica `b`", "holds 2 rows", "capgate_capture", "capgate verify", "--table public.t --adopt"] {
        assert!(why.contains(said), "{said:?} in: {why}");
    }
    let replica_rows = [r#"{"k":2,"v":"replica"}"#, r#"{"k":3,"v":"replica"}"#];
    assert_eq!(Env::rows(&env.replica, "t").await, replica_rows, "nothing of the replica's rows lost");

    // An ordinary resume copies again: refused again, the rows still there.
    shipper.resume("public.t", PATIENCE).await.expect("resume");
    halted_why(&shipper).await;
    assert_eq!(Env::rows(&env.replica, "t").await, replica_rows);
    // A primary write while the table is halted, then the operator's repair: the replica
    // gets the primary's rows (by hand, the way an operator merges two sites' rows).
    env.primary.batch_execute("INSERT INTO t VALUES (10, 'while halted')").await.expect("write while halted");
    env.replica
        .batch_execute(
            "INSERT INTO t VALUES (1, 'primary'), (10, 'while halted'); UPDATE t SET v = 'primary' WHERE k = 2; DELETE FROM t WHERE k = 3",
        )
        .await
        .expect("repair");
    assert_eq!(Env::rows(&env.primary, "t").await, Env::rows(&env.replica, "t").await);

    // Adopted: no copy, and only what the primary commits from now on ships (a change from
    // before — the insert of 10 — would meet the repaired row as insert_exists and halt).
    shipper.adopt("public.t", PATIENCE).await.expect("adopt");
    let again = shipper.adopt("public.t", PATIENCE).await.expect_err("adopting a copied table");
    assert!(again.contains("not halted"), "{again}");
    let unknown = shipper.adopt("public.nothing", PATIENCE).await.expect_err("adopting a table not captured");
    assert!(unknown.contains("not captured as async"), "{unknown}");
    env.primary
        .batch_execute("INSERT INTO t VALUES (11, 'after'); UPDATE t SET v = 'primary again' WHERE k = 1; DELETE FROM t WHERE k = 2")
        .await
        .expect("writes after the adoption");
    env.converged(None, "t", &shipper).await;
    assert!(env.conflicts().await.is_empty(), "{:?}", env.conflicts().await);
    let tables = shipper.stats().tables();
    assert_eq!(tables.get("public.t").map(|t| t.state), Some(TableState::Copied), "{tables:?}");
    assert_eq!(shipper.stats().changes.load(Ordering::Relaxed), 3, "exactly the three changes after the adoption");
    env.verify(&["public.t"]).await;
}

#[tokio::test]
async fn an_empty_table_on_a_writing_replica_is_still_copied() {
    let env = env("ship_writing_empty", KV, &[]).await;
    env.primary.batch_execute("INSERT INTO t SELECT g, 'p' || g FROM generate_series(1, 50) g").await.expect("primary rows");
    env.capture("public.t").await;
    let mut config = env.config();
    config.replica_takes_writes = true;
    let shipper = Shipper::start(config);
    copied(&shipper, "public.t").await;
    env.primary.batch_execute("UPDATE t SET v = v || '!' WHERE k <= 5").await.expect("writes after the copy");
    env.converged(None, "t", &shipper).await;
    assert!(shipper.stats().halted().is_empty());
    assert!(env.conflicts().await.is_empty());
}

#[tokio::test]
async fn a_writing_replica_holding_the_primarys_rows_is_taken_in_as_it_is() {
    let env = env("ship_writing_equal", KV, &[]).await;
    let seed = "INSERT INTO t SELECT g, 'same ' || g FROM generate_series(1, 300) g";
    env.primary.batch_execute(seed).await.expect("primary rows");
    env.replica.batch_execute(seed).await.expect("the same rows on the replica");
    captured_on_the_replica(&env).await;
    env.capture("public.t").await;
    let versions = "SELECT count(DISTINCT xmin::text)::text || ':' || min(xmin::text) FROM t";
    let before: String = env.replica.query_one(versions, &[]).await.expect("row versions").get(0);
    let shipper = Shipper::start(env.config());
    copied(&shipper, "public.t").await;
    let after: String = env.replica.query_one(versions, &[]).await.expect("row versions").get(0);
    assert_eq!(before, after, "the replica's rows were kept, not deleted and loaded again");
    env.primary.batch_execute("UPDATE t SET v = 'changed' WHERE k <= 3; DELETE FROM t WHERE k = 300").await.expect("writes");
    env.converged(None, "t", &shipper).await;
    assert!(env.conflicts().await.is_empty(), "{:?}", env.conflicts().await);
    assert_eq!(shipper.stats().changes.load(Ordering::Relaxed), 4);
}
