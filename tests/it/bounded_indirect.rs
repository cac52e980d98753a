//! Bounded admission of writes that name no bounded table (decision 0024): a PL/pgSQL function
//! called by `SELECT f()`, a trigger on a local table. Classification sees a read or a write
//! to a local table; the capture trigger sees the rows, and capgate admits the transaction's
//! COMMIT (or the end of its autocommit statement) against the bounded tables they touch.
//! Through the capgate process, against the shared two-site bed, the replica behind a fault
//! link of the test's own.

use std::time::Duration;

use crate::async_mode::{async_proxy, drained, replica_status, shipping};
use crate::replication::{on_both, own_link, primary_rows, replica_rows, verify_equal_for, wait_until};
use crate::support::{connect, sqlstate};

/// The bounded refusal as a client sees it: 55000, naming the table and the budget.
fn assert_bounded_refusal(e: &tokio_postgres::Error, what: &str) {
    assert_eq!(sqlstate(e), "55000", "{what}: {e:?}");
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("public.bi_bounded") && msg.contains("max_lag") && msg.contains("\"b\""), "{what}: {msg}");
}

/// The session still answers, outside a transaction.
async fn answers(app: &tokio_postgres::Client, what: &str) {
    let row = app.query_one("SELECT 41 + 1", &[]).await.unwrap_or_else(|e| panic!("after {what}: {e:?}"));
    assert_eq!(row.get::<_, i32>(0), 42, "after {what}");
    app.batch_execute("BEGIN; ROLLBACK").await.unwrap_or_else(|e| panic!("after {what}, the session is not idle: {e:?}"));
}

#[tokio::test]
async fn writes_inside_functions_and_triggers_are_admitted_against_the_bounded_budget() {
    let _one = crate::replication::exclusive().await;
    let site = "bi_site";
    on_both(
        "DROP TABLE IF EXISTS bi_bounded, bi_local, bi_async CASCADE; \
         CREATE TABLE bi_bounded (id int PRIMARY KEY, v text); \
         CREATE TABLE bi_local (id int PRIMARY KEY, v text); \
         CREATE TABLE bi_async (id int PRIMARY KEY, v text); \
         CREATE OR REPLACE FUNCTION bi_write(p_id int, p_v text) RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO bi_bounded VALUES (p_id, p_v); RETURN p_id; END $$; \
         CREATE OR REPLACE FUNCTION bi_copy() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO bi_bounded VALUES (NEW.id, 'from the trigger: ' || NEW.v); RETURN NULL; END $$; \
         CREATE TRIGGER bi_copy AFTER INSERT ON bi_local FOR EACH ROW EXECUTE FUNCTION bi_copy()",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.bi_async\"\nmode = \"async\"\n\
                  [[table]]\nmatch = \"public.bi_bounded\"\nmode = \"bounded\"\nmax_lag = \"1s\"\non_partition = \"fail\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;

    // Within budget (once the lag is measured), a function's write commits and ships.
    let mut id = 0;
    wait_until("SELECT bi_write() to be accepted", Duration::from_secs(30), async || {
        id += 1;
        match app.query_one("SELECT bi_write($1, 'within budget')", &[&id]).await {
            Ok(row) => row.get::<_, i32>(0) == id,
            Err(e) => {
                assert_bounded_refusal(&e, "SELECT bi_write() before the lag is measured");
                false
            }
        }
    })
    .await;
    let accepted = id;
    app.batch_execute("INSERT INTO bi_local VALUES (500, 'within budget')").await.unwrap();
    drained(site, admin).await;
    assert_eq!(
        replica_rows("SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM bi_bounded").await,
        vec![format!("{accepted}:within budget,500:from the trigger: within budget")],
        "both indirect writes reached the replica (the ones refused before the lag was measured never committed)"
    );

    // Cut the replica; direct writes to the bounded table are accepted until its lag passes
    // max_lag, then refused.
    link.blackhole();
    id = 100;
    wait_until("a direct bounded write to be refused", Duration::from_secs(90), async || {
        id += 1;
        match app.execute("INSERT INTO bi_bounded VALUES ($1, 'direct, during the cut')", &[&id]).await {
            Ok(_) => false,
            Err(e) => {
                assert_bounded_refusal(&e, "a direct write");
                true
            }
        }
    })
    .await;
    wait_until("/status to show the lag", Duration::from_secs(30), async || {
        replica_status(admin).await["pending_rows"].as_u64().unwrap_or(0) > 0
    })
    .await;

    // Over budget: every way of writing the table indirectly is refused, nothing of it is
    // on the primary, and the session goes on.
    // 1. Autocommit, simple protocol.
    let e = app.batch_execute("SELECT bi_write(1001, 'refused')").await.unwrap_err();
    assert_bounded_refusal(&e, "simple SELECT bi_write()");
    answers(&app, "simple SELECT bi_write()").await;
    // 2. Autocommit, extended protocol, twice in a row (a held Sync must not hang the next).
    for n in [1002, 1003] {
        let e = app.query_one("SELECT bi_write($1, 'refused')", &[&n]).await.unwrap_err();
        assert_bounded_refusal(&e, "extended SELECT bi_write()");
        answers(&app, "extended SELECT bi_write()").await;
    }
    // Pipelined: three calls sent before any answer, each refused in its place.
    let ids = [1010i32, 1011, 1012];
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = ids.iter().map(|id| [id as _]).collect();
    let (a, b, c) = tokio::join!(
        app.query_one("SELECT bi_write($1, 'pipelined')", &params[0]),
        app.query_one("SELECT bi_write($1, 'pipelined')", &params[1]),
        app.query_one("SELECT bi_write($1, 'pipelined')", &params[2]),
    );
    for r in [a, b, c] {
        assert_bounded_refusal(&r.expect_err("a pipelined call over budget"), "pipelined SELECT bi_write()");
    }
    answers(&app, "pipelined calls").await;
    // 3. An explicit transaction: refused at COMMIT, with the async write beside it.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO bi_async VALUES (1004, 'rolled back with it')").await.unwrap();
    app.query_one("SELECT bi_write($1, 'refused at commit')", &[&1004i32]).await.unwrap();
    let e = app.batch_execute("COMMIT").await.unwrap_err();
    assert_bounded_refusal(&e, "COMMIT (simple)");
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("COMMIT")), "{e:?}");
    answers(&app, "a refused COMMIT").await;
    // 4. The same with a prepared COMMIT (extended protocol).
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("SELECT bi_write(1005, 'refused at a prepared commit')").await.unwrap();
    let e = app.execute("COMMIT", &[]).await.unwrap_err();
    assert_bounded_refusal(&e, "COMMIT (extended)");
    answers(&app, "a refused prepared COMMIT").await;
    // 5. A trigger on a local table, simple and extended.
    let e = app.batch_execute("INSERT INTO bi_local VALUES (1006, 'refused')").await.unwrap_err();
    assert_bounded_refusal(&e, "a local table's trigger (simple)");
    answers(&app, "a local table's trigger (simple)").await;
    let e = app.execute("INSERT INTO bi_local VALUES ($1, 'refused')", &[&1007i32]).await.unwrap_err();
    assert_bounded_refusal(&e, "a local table's trigger (extended)");
    answers(&app, "a local table's trigger (extended)").await;
    // A read or a local write without triggers is not touched.
    app.batch_execute("CREATE TEMPORARY TABLE bi_scratch (id int)").await.unwrap();
    app.execute("INSERT INTO bi_scratch VALUES ($1)", &[&1i32]).await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM bi_bounded WHERE id > 1000").await, vec!["0"]);
    assert_eq!(primary_rows("SELECT count(*) FROM bi_local WHERE id > 1000").await, vec!["0"]);
    assert_eq!(primary_rows("SELECT count(*) FROM bi_async WHERE id > 1000").await, vec!["0"]);

    // Healed: accepted again once the lag is back under the budget, and shipped.
    link.restore();
    drained(site, admin).await;
    let mut after = 2000;
    wait_until("SELECT bi_write() to be accepted again", Duration::from_secs(60), async || {
        after += 1;
        match app.batch_execute(&format!("SELECT bi_write({after}, 'after')")).await {
            Ok(()) => true,
            Err(e) => {
                assert_bounded_refusal(&e, "SELECT bi_write() after the heal");
                false
            }
        }
    })
    .await;
    app.batch_execute("BEGIN; INSERT INTO bi_local VALUES (3000, 'after'); COMMIT").await.unwrap();
    drained(site, admin).await;
    assert_eq!(replica_rows(&format!("SELECT count(*) FROM bi_bounded WHERE id IN ({after}, 3000)")).await, vec!["2"]);
    verify_equal_for(site, &["public.bi_bounded", "public.bi_async"]).await;
}

/// `on_partition = "block"`: a function's write over budget waits `partition_timeout` at its
/// COMMIT, then is refused the same way (and the session goes on).
#[tokio::test]
async fn a_blocking_bounded_table_written_by_a_function_waits_then_is_refused_at_commit() {
    let _one = crate::replication::exclusive().await;
    let site = "bi_block_site";
    on_both(
        "DROP TABLE IF EXISTS bi_block CASCADE; \
         CREATE TABLE bi_block (id int PRIMARY KEY, v text); \
         CREATE OR REPLACE FUNCTION bi_block_write(p_id int) RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO bi_block VALUES (p_id, 'from a function'); RETURN p_id; END $$",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.bi_block\"\nmode = \"bounded\"\nmax_lag = \"1s\"\n\
                  on_partition = \"block\"\npartition_timeout = \"2s\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;
    // Within budget, once the lag is measured.
    let mut first = 0;
    wait_until("SELECT bi_block_write() to be accepted", Duration::from_secs(30), async || {
        first += 1;
        app.query_one("SELECT bi_block_write($1)", &[&first]).await.is_ok()
    })
    .await;
    drained(site, admin).await;

    link.blackhole();
    let mut id = 100;
    wait_until("a direct write to be refused after its wait", Duration::from_secs(90), async || {
        id += 1;
        match app.execute("INSERT INTO bi_block VALUES ($1, 'direct')", &[&id]).await {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                true
            }
        }
    })
    .await;
    for (what, result) in [
        ("simple", app.batch_execute("SELECT bi_block_write(1001)").await.map(|_| ())),
        ("extended", app.query_one("SELECT bi_block_write($1)", &[&1002i32]).await.map(|_| ())),
    ] {
        let e = result.expect_err("a function's write over budget");
        assert_eq!(sqlstate(&e), "55000", "{what}: {e:?}");
        let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(msg.contains("public.bi_block") && msg.contains("on_partition = \"block\"") && msg.contains("waited"), "{what}: {msg}");
        answers(&app, what).await;
    }
    assert_eq!(primary_rows("SELECT count(*) FROM bi_block WHERE id > 1000").await, vec!["0"]);
    link.restore();
    drained(site, admin).await;
    verify_equal_for(site, &["public.bi_block"]).await;
}
