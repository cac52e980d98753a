//! Async and bounded replication (row images, decision 0009) through the proxy, against the
//! real primary and replica of the shared two-site bed, each test behind a fault link of its
//! own.
//!
//! Each test runs its own proxy under its own `site` name, one test at a time (the
//! replication lock): a replica starts a new origin with a copy of the async tables and then
//! ships from there, and only the running test's proxy ships. Each test ends, once the queue
//! has drained, with `capgate verify` on its tables.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use capgate::testbed::link::Link;

use crate::replication::{bed, on_both, own_link, primary_rows, replica_rows, verify_equal_for, wait_until};
use crate::support::{connect, scratch, sqlstate, Proxy};

/// A proxy for site `site` replicating to the bed's replica through `link`, with an admin
/// listener; the capgate schema is installed on the primary first.
pub(crate) async fn async_proxy(site: &str, policy: &str, link: &Link) -> Proxy {
    async_proxy_with(site, policy, link, "").await
}

/// [`async_proxy`] with more keys (`replica_keys`, TOML lines) in the replica's section.
async fn async_proxy_with(site: &str, policy: &str, link: &Link, replica_keys: &str) -> Proxy {
    let client = connect(&bed().a_primary_url()).await;
    capgate::store::postgres::primary::install_primary(&client).await.unwrap();
    let dir = scratch(site);
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let replica_url = format!("postgres://postgres@127.0.0.1:{}/postgres", link.addr().port());
    let text = format!(
        "site = \"{site}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\n\n[primary]\nurl = \"{}?sslmode=disable\"\n\n[[replicas]]\nname = \"b\"\nurl = \"{replica_url}?sslmode=disable&connect_timeout=2\"\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\n{replica_keys}",
        dir.join("policy.toml").display(),
        bed().a_primary_url(),
    );
    Proxy::start_config(&text, &dir)
}

/// A plain HTTP/1.1 GET of the admin listener's `/status`, as JSON.
async fn status(admin: SocketAddr) -> serde_json::Value {
    let text = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    let code = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    assert_eq!(code, "200", "{text}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// The one replica's entry of `/status`.
pub(crate) async fn replica_status(admin: SocketAddr) -> serde_json::Value {
    let v = status(admin).await;
    let r = v["replicas"][0].clone();
    assert_eq!(r["name"], "b", "{v}");
    r
}

/// Changes committed on the primary that `site`'s replica has not applied yet (every change
/// when it has applied nothing).
async fn not_applied(site: &str) -> i64 {
    let applied = replica_rows(&format!("SELECT coalesce((SELECT snapshot::text FROM capgate.applied WHERE origin = '{site}'), '')")).await;
    let snapshot = applied.first().cloned().unwrap_or_default();
    let sql = if snapshot.is_empty() {
        "SELECT count(*) FROM capgate.changes".to_owned()
    } else {
        format!("SELECT count(*) FROM capgate.changes WHERE NOT pg_visible_in_snapshot(xid, '{snapshot}'::pg_snapshot)")
    };
    primary_rows(&sql).await[0].parse().unwrap()
}

/// Wait (bounded) until the replica has applied everything committed so far, and the proxy's
/// `/status` says nothing is pending.
pub(crate) async fn drained(site: &str, admin: SocketAddr) {
    wait_until(&format!("the replica to apply every change for {site}"), Duration::from_secs(120), async || not_applied(site).await == 0)
        .await;
    wait_until("/status to show no pending rows", Duration::from_secs(30), async || replica_status(admin).await["pending_rows"] == 0).await;
}

/// Wait (bounded) until `site`'s shipper holds its lock and runs.
pub(crate) async fn shipping(admin: SocketAddr) {
    let start = std::time::Instant::now();
    loop {
        let r = replica_status(admin).await;
        if r["shipping"].as_str().is_some_and(|s| s.starts_with("running")) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the shipper never ran: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn async_writes_of_every_kind_reach_the_replica_and_rolled_back_ones_never_do() {
    let _one = crate::replication::exclusive().await;
    let site = "as_basic_site";
    on_both(
        "DROP TABLE IF EXISTS as_item; \
         CREATE TABLE as_item (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0), note text)",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_item\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;

    // Autocommit, simple protocol.
    app.batch_execute("INSERT INTO as_item VALUES (1, 10, 'one')").await.unwrap();
    // Autocommit, extended protocol with parameters.
    let n = app.execute("INSERT INTO as_item VALUES ($1, $2, $3)", &[&2i32, &20i32, &"two"]).await.unwrap();
    assert_eq!(n, 1);
    let n = app.execute("UPDATE as_item SET qty = qty + $1 WHERE id = $2", &[&5i32, &1i32]).await.unwrap();
    assert_eq!(n, 1);
    // A multi-statement transaction mixing both protocols, with a savepoint rolled back to
    // (its captured rows go with it).
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO as_item VALUES (3, 30, 'three')").await.unwrap();
    app.execute("UPDATE as_item SET qty = qty - $1 WHERE id = $2", &[&7i32, &2i32]).await.unwrap();
    app.batch_execute("SAVEPOINT s1").await.unwrap();
    app.batch_execute("INSERT INTO as_item VALUES (4, 40, 'rolled back to savepoint')").await.unwrap();
    app.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    app.batch_execute("UPDATE as_item SET note = 'three, committed' WHERE id = 3").await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    // A transaction through tokio-postgres's Transaction (extended statements inside).
    {
        let mut c = connect(&p.url("postgres", "postgres")).await;
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO as_item VALUES ($1, $2, $3)", &[&5i32, &50i32, &"five"]).await.unwrap();
        tx.execute("DELETE FROM as_item WHERE id = $1", &[&1i32]).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Rolled back: never shipped.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO as_item VALUES (90, 1, 'rolled back')").await.unwrap();
    app.execute("UPDATE as_item SET qty = 999 WHERE id = $1", &[&2i32]).await.unwrap();
    app.batch_execute("ROLLBACK").await.unwrap();
    // An error mid-transaction: COMMIT is a ROLLBACK, nothing shipped either.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO as_item VALUES (91, 1, 'aborted')").await.unwrap();
    let e = app.batch_execute("UPDATE as_item SET qty = -1 WHERE id = 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    app.batch_execute("COMMIT").await.unwrap();
    // Autocommit statement that fails on the primary: nothing captured.
    let e = app.execute("INSERT INTO as_item VALUES ($1, $2, $3)", &[&2i32, &1i32, &"duplicate"]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505");

    drained(site, admin).await;
    let want_items = vec!["2|13|two".to_owned(), "3|30|three, committed".to_owned(), "5|50|five".to_owned()];
    assert_eq!(primary_rows("SELECT id, qty, note FROM as_item ORDER BY id").await, want_items);
    assert_eq!(replica_rows("SELECT id, qty, note FROM as_item ORDER BY id").await, want_items);
    verify_equal_for(site, &["public.as_item"]).await;
}

/// `ship_interval` batches by time (decision 0037): while changes keep coming, a range starts
/// at most once per interval, so writes spread over a few seconds arrive in a few ranges
/// (back to back, each write would be a range of its own), and every one of them arrives.
#[tokio::test]
async fn writes_arriving_steadily_ship_in_one_range_per_ship_interval() {
    let _one = crate::replication::exclusive().await;
    let site = "as_interval_site";
    on_both("DROP TABLE IF EXISTS as_tick; CREATE TABLE as_tick (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())").await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_tick\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy_with(site, policy, &link, "ship_interval = \"1s\"\n").await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    drained(site, admin).await;
    let ranges = || async { replica_status(admin).await["shipper"]["ranges"].as_u64().expect("ranges in /status") };
    let before = ranges().await;
    let app = connect(&p.url("postgres", "postgres")).await;
    let began = std::time::Instant::now();
    for id in 0..40 {
        app.execute("INSERT INTO as_tick (id) VALUES ($1)", &[&id]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drained(site, admin).await;
    let (shipped_in, elapsed) = (ranges().await - before, began.elapsed().as_secs_f64());
    // Ranges start at least 1 s apart: over `elapsed` seconds, at most one per second and
    // one more (the first starts at once).
    assert!(shipped_in >= 1 && shipped_in as f64 <= elapsed.floor() + 1.0, "{shipped_in} ranges in {elapsed:.1} s");
    assert_eq!(replica_rows("SELECT count(*) FROM as_tick").await, vec!["40".to_owned()]);
    verify_equal_for(site, &["public.as_tick"]).await;
}

#[tokio::test]
async fn concurrent_clients_on_a_hot_row_replay_in_commit_order() {
    let _one = crate::replication::exclusive().await;
    let site = "as_hot_site";
    on_both(
        "DROP TABLE IF EXISTS as_hot, as_log; \
         CREATE TABLE as_hot (id int PRIMARY KEY, v bigint NOT NULL); \
         CREATE TABLE as_log (who int, i int, n bigint NOT NULL, PRIMARY KEY (who, i)); \
         INSERT INTO as_hot VALUES (1, 0)",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_hot\"\nmode = \"async\"\n[[table]]\nmatch = \"public.as_log\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;

    // Concurrent clients on one hot row: each transaction bumps it and logs the value it saw;
    // replayed in another order, the log's `n` would differ on the replica.
    const CLIENTS: i32 = 4;
    const ROUNDS: i32 = 50;
    let mut tasks = Vec::new();
    for who in 0..CLIENTS {
        let url = p.url("postgres", "postgres");
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..ROUNDS {
                let round = async {
                    match (who % 2, i % 3) {
                        // Simple protocol, explicit transaction.
                        (0, 0 | 1) => {
                            async {
                                c.batch_execute("BEGIN").await?;
                                c.batch_execute("UPDATE as_hot SET v = v + 1 WHERE id = 1").await?;
                                c.batch_execute(&format!("INSERT INTO as_log (who, i, n) SELECT {who}, {i}, v FROM as_hot WHERE id = 1"))
                                    .await?;
                                c.batch_execute("COMMIT").await
                            }
                            .await
                        }
                        // Extended protocol inside an explicit transaction.
                        (1, 0 | 1) => {
                            async {
                                c.batch_execute("BEGIN").await?;
                                c.execute("UPDATE as_hot SET v = v + $1 WHERE id = $2", &[&1i64, &1i32]).await?;
                                c.execute(
                                    "INSERT INTO as_log (who, i, n) SELECT $1::int, $2::int, v FROM as_hot WHERE id = 1",
                                    &[&who, &i],
                                )
                                .await?;
                                c.batch_execute("COMMIT").await
                            }
                            .await
                        }
                        // Autocommit: two separately committed statements.
                        _ => {
                            async {
                                c.execute("UPDATE as_hot SET v = v + $1 WHERE id = 1", &[&1i64]).await?;
                                c.batch_execute(&format!("INSERT INTO as_log (who, i, n) VALUES ({who}, {i}, -1)")).await
                            }
                            .await
                        }
                    }
                };
                tokio::time::timeout(Duration::from_secs(60), round)
                    .await
                    .unwrap_or_else(|_| panic!("client {who} round {i}: no answer within 60 s"))
                    .unwrap_or_else(|e| panic!("client {who} round {i}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    drained(site, admin).await;
    let total = (CLIENTS * ROUNDS).to_string();
    assert_eq!(primary_rows("SELECT v FROM as_hot").await, vec![total.clone()]);
    assert_eq!(replica_rows("SELECT v FROM as_hot").await, vec![total]);
    let log = "SELECT who, i, n FROM as_log ORDER BY who, i";
    let on_primary = primary_rows(log).await;
    assert_eq!(on_primary.len(), (CLIENTS * ROUNDS) as usize);
    assert_eq!(replica_rows(log).await, on_primary, "the log's values depend on commit order");
    verify_equal_for(site, &["public.as_hot", "public.as_log"]).await;
}

/// An autocommit statement WITHOUT parameters through the extended protocol (what
/// `client.execute(sql, &[])` sends: Bind, Execute, Sync of a prepared statement).
#[tokio::test]
async fn an_autocommit_extended_write_without_parameters_is_replicated() {
    let _one = crate::replication::exclusive().await;
    let site = "as_noparam_site";
    on_both("DROP TABLE IF EXISTS as_noparam; CREATE TABLE as_noparam (id int PRIMARY KEY, v int NOT NULL); INSERT INTO as_noparam VALUES (1, 0)").await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_noparam\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(20), app.execute("UPDATE as_noparam SET v = v + 1 WHERE id = 1", &[]))
            .await
            .expect("a parameterless extended UPDATE on an async table got no answer within 20 s")
            .unwrap();
        assert_eq!(n, 1);
    }
    drained(site, admin).await;
    assert_eq!(replica_rows("SELECT v FROM as_noparam").await, vec!["3"]);
    verify_equal_for(site, &["public.as_noparam"]).await;
}

#[tokio::test]
async fn async_accepts_while_cut_off_and_bounded_is_refused_until_lag_recovers() {
    let _one = crate::replication::exclusive().await;
    let site = "as_cut_site";
    on_both(
        "DROP TABLE IF EXISTS as_cut, bd_cut; \
         CREATE TABLE as_cut (id int PRIMARY KEY, v text); \
         CREATE TABLE bd_cut (id int PRIMARY KEY, v text)",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_cut\"\nmode = \"async\"\n\
                  [[table]]\nmatch = \"public.bd_cut\"\nmode = \"bounded\"\nmax_lag = \"1s\"\non_partition = \"fail\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;

    // Before the cut: both accepted (a bounded table waits for the first lag measurement).
    app.batch_execute("INSERT INTO as_cut VALUES (1, 'before')").await.unwrap();
    wait_until("a bounded write to be accepted", Duration::from_secs(30), async || {
        match app.execute("INSERT INTO bd_cut VALUES ($1, $2)", &[&1i32, &"before"]).await {
            Ok(_) => true,
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                false
            }
        }
    })
    .await;
    drained(site, admin).await;

    link.blackhole();
    // Async writes keep being accepted; the queue and the lag grow.
    let mut next = 2;
    for _ in 0..5 {
        app.execute("INSERT INTO as_cut VALUES ($1, 'during')", &[&next]).await.unwrap();
        next += 1;
    }
    wait_until("/status to show pending rows and a lag", Duration::from_secs(30), async || {
        let r = replica_status(admin).await;
        r["pending_rows"].as_u64().unwrap_or(0) > 0 && r["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let first = replica_status(admin).await["lag_seconds"].as_f64().unwrap();
    wait_until("the lag to grow", Duration::from_secs(30), async || {
        replica_status(admin).await["lag_seconds"].as_f64().unwrap_or(0.0) > first
    })
    .await;

    // The bounded table: refused once the lag passes max_lag, with 55000 naming the table;
    // the async table still accepts meanwhile.
    let mut bounded_id = 2;
    wait_until("a bounded write to be refused", Duration::from_secs(90), async || {
        bounded_id += 1;
        match app.execute("INSERT INTO bd_cut VALUES ($1, 'during')", &[&bounded_id]).await {
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                let msg = e.as_db_error().unwrap().message().to_owned();
                assert!(msg.contains("public.bd_cut") && msg.contains("\"b\"") && msg.contains("max_lag"), "{msg}");
                true
            }
            Ok(_) => false,
        }
    })
    .await;
    // Simple protocol too, and inside a transaction.
    let e = app.batch_execute("INSERT INTO bd_cut VALUES (1000, 'refused simple')").await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO as_cut VALUES (1000, 'in the refused transaction')").await.unwrap();
    let e = app.batch_execute("INSERT INTO bd_cut VALUES (1001, 'refused in a transaction')").await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    app.batch_execute("ROLLBACK").await.unwrap();
    for _ in 0..5 {
        app.batch_execute(&format!("INSERT INTO as_cut VALUES ({next}, 'while bounded is refused')")).await.unwrap();
        next += 1;
    }
    let r = replica_status(admin).await;
    assert!(r["pending_rows"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(primary_rows("SELECT count(*) FROM bd_cut WHERE id >= 1000").await, vec!["0"]);
    assert_eq!(primary_rows("SELECT count(*) FROM as_cut WHERE id = 1000").await, vec!["0"]);

    link.restore();
    drained(site, admin).await;
    // Accepted again once the lag is back under the budget.
    wait_until("bounded writes to be accepted again", Duration::from_secs(60), async || {
        bounded_id += 1;
        match app.execute("INSERT INTO bd_cut VALUES ($1, 'after')", &[&bounded_id]).await {
            Ok(_) => true,
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                false
            }
        }
    })
    .await;
    app.batch_execute(&format!("INSERT INTO as_cut VALUES ({next}, 'after')")).await.unwrap();
    drained(site, admin).await;
    assert_eq!(
        replica_rows("SELECT count(*) FROM as_cut").await,
        vec![(next).to_string()],
        "every accepted async write arrived (ids 1..={next})"
    );
    verify_equal_for(site, &["public.as_cut", "public.bd_cut"]).await;
}

#[tokio::test]
async fn a_conflict_is_recorded_and_shipping_goes_on() {
    let _one = crate::replication::exclusive().await;
    let site = "as_conf_site";
    on_both(
        "DROP TABLE IF EXISTS as_conf; \
         CREATE TABLE as_conf (id int PRIMARY KEY, v text)",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_conf\"\nmode = \"async\"\non_conflict = \"skip\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO as_conf VALUES (1, 'one'), (2, 'two')").await.unwrap();
    drained(site, admin).await;
    assert_eq!(replica_rows("SELECT count(*) FROM as_conf").await, vec!["2"]);

    // Somebody deletes a row on the replica behind capgate's back; then the primary's update
    // of it finds nothing there.
    connect(&bed().b_replica_url_direct()).await.batch_execute("DELETE FROM as_conf WHERE id = 1").await.unwrap();
    let n = app.execute("UPDATE as_conf SET v = $1 WHERE id = $2", &[&"changed", &1i32]).await.unwrap();
    assert_eq!(n, 1);
    app.batch_execute("INSERT INTO as_conf VALUES (3, 'after the conflict')").await.unwrap();
    drained(site, admin).await;

    let conflicts = replica_rows(&format!(
        "SELECT tbl, op, kind, old->>'v', new->>'v', replica_row IS NULL, resolution FROM capgate.conflicts WHERE origin = '{site}' ORDER BY id"
    ))
    .await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let fields: Vec<&str> = conflicts[0].split('|').collect();
    assert_eq!(
        &fields[..6],
        &["public.as_conf", "U", "update_missing", "one", "changed", "t"],
        "both row images, no replica row: {conflicts:?}"
    );
    assert!(fields[6].starts_with("skip"), "{conflicts:?}");
    let r = replica_status(admin).await;
    assert_eq!(r["conflicts"], 1, "{r}");
    assert!(!r["shipping"].as_str().unwrap_or_default().contains("halted"), "skip must not halt: {r}");
    // Shipping went on past the conflict.
    assert_eq!(replica_rows("SELECT id, v FROM as_conf ORDER BY id").await, vec!["2|two", "3|after the conflict"]);
    app.batch_execute("INSERT INTO as_conf VALUES (4, 'later')").await.unwrap();
    drained(site, admin).await;
    assert_eq!(replica_rows("SELECT count(*) FROM as_conf WHERE id = 4").await, vec!["1"]);

    // Repair the replica as an operator would, then the sites agree.
    let row = primary_rows("SELECT v FROM as_conf WHERE id = 1").await;
    assert_eq!(row, vec!["changed"]);
    connect(&bed().b_replica_url_direct()).await.batch_execute("INSERT INTO as_conf VALUES (1, 'changed')").await.unwrap();
    verify_equal_for(site, &["public.as_conf"]).await;
}

/// The same with parameters whose types the client gave in its Parse (`prepare_typed`), so
/// the proxy needs not ask the server for them.
#[tokio::test]
async fn an_autocommit_extended_write_with_typed_parameters_is_replicated() {
    let _one = crate::replication::exclusive().await;
    let site = "as_typed_site";
    on_both(
        "DROP TABLE IF EXISTS as_typed; CREATE TABLE as_typed (id int PRIMARY KEY, v int NOT NULL); INSERT INTO as_typed VALUES (1, 0)",
    )
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.as_typed\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let app = connect(&p.url("postgres", "postgres")).await;
    let stmt = app
        .prepare_typed(
            "UPDATE as_typed SET v = v + $1 WHERE id = $2",
            &[tokio_postgres::types::Type::INT4, tokio_postgres::types::Type::INT4],
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(20), app.execute(&stmt, &[&2i32, &1i32]))
            .await
            .expect("an extended UPDATE with typed parameters on an async table got no answer within 20 s")
            .unwrap();
        assert_eq!(n, 1);
    }
    drained(site, admin).await;
    assert_eq!(replica_rows("SELECT v FROM as_typed").await, vec!["6"]);
    verify_equal_for(site, &["public.as_typed"]).await;
}

/// A new origin ships a sync table's writes made around capgate from the snapshot its capture
/// trigger was installed in (issue 11): a change queued before — by an earlier life of the
/// table, never shipped — is not sent to a replica whose rows never had it (it halted the
/// table with `update_differs`), and a write made since is.
#[tokio::test]
async fn a_new_origin_ships_a_sync_table_from_where_its_capture_began() {
    let _one = crate::replication::exclusive().await;
    let schema = |v: i32| {
        format!(
            "DROP TABLE IF EXISTS public.born_again; CREATE TABLE public.born_again (id int PRIMARY KEY, v int NOT NULL); \
             INSERT INTO public.born_again VALUES (1, {v})"
        )
    };
    let primary = connect(&bed().a_primary_url()).await;
    primary
        .batch_execute("DO $$ BEGIN IF to_regclass('capgate.changes') IS NOT NULL THEN DELETE FROM capgate.changes; END IF; END $$")
        .await
        .unwrap();
    on_both(&schema(0)).await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.born_again\"\nmode = \"sync\"\n";
    let captured = "SELECT count(*) FROM pg_trigger WHERE tgname = 'capgate_capture' AND tgrelid = 'public.born_again'::regclass";
    {
        let link = own_link();
        let _earlier = async_proxy("born_again_earlier", policy, &link).await;
        wait_until("the capture trigger", Duration::from_secs(30), async || primary_rows(captured).await == ["1"]).await;
    }
    // Around capgate, with no capgate running: queued, never shipped. Then the table starts
    // a new life, equal on both sites.
    primary.batch_execute("UPDATE public.born_again SET v = 1").await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM capgate.changes WHERE tbl = 'public.born_again'").await, ["1"]);
    on_both(&schema(5)).await;

    let site = "born_again_new";
    let link = own_link();
    let _proxy = async_proxy(site, policy, &link).await;
    wait_until("the capture trigger", Duration::from_secs(30), async || primary_rows(captured).await == ["1"]).await;
    primary.batch_execute("UPDATE public.born_again SET v = v + 2").await.unwrap();
    let shipped = "SELECT v FROM public.born_again";
    wait_until("the write around capgate to reach the replica", Duration::from_secs(60), async || replica_rows(shipped).await == ["7"])
        .await;
    let state = replica_rows(&format!("SELECT state FROM capgate.tables WHERE origin = '{site}' AND tbl = 'public.born_again'")).await;
    assert_eq!(state, ["copied"]);
    let conflicts = replica_rows(&format!("SELECT kind FROM capgate.conflicts WHERE origin = '{site}'")).await;
    assert!(conflicts.is_empty(), "the earlier life's change was shipped: {conflicts:?}");
    verify_equal_for(site, &["public.born_again"]).await;
    primary.execute("DELETE FROM capgate.changes WHERE tbl = 'public.born_again'", &[]).await.unwrap();
    on_both("DROP TABLE public.born_again").await;
}
