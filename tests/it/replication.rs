//! Sync (two-phase commit) and async (outbox) replication through the proxy, against a real
//! primary and a real replica behind the fault link. Each test uses its own tables and ends
//! by comparing what it wrote on both sites (`capgate verify`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capgate::config::Config;
use capgate::testbed::link::Link;
use capgate::testbed::sites::TwoSites;
use capgate::verify::{self, Limits, Selection, TableName};

use crate::support::{connect, scratch, sqlstate, Proxy};

/// The replication tests run one at a time: they share the bed's replica, where a slow or
/// cut test's prepared transactions and lock waits would otherwise delay the others past
/// their bounded waits on a 2-core machine.
pub(crate) async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(())).lock().await
}

/// One two-site bed for every test of this module.
pub(crate) fn bed() -> &'static TwoSites {
    static BED: OnceLock<TwoSites> = OnceLock::new();
    BED.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

/// The same DDL on both sites (a DBA creates tables on every site; capgate replicates rows).
pub(crate) async fn on_both(sql: &str) {
    let b = bed();
    for url in [b.a_primary_url(), b.b_replica_url_direct()] {
        connect(&url).await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A link of the test's own in front of the bed's replica, so tests cut their own.
pub(crate) fn own_link() -> Link {
    Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, bed().b_replica().port()))).expect("start link")
}

/// A proxy for site A with `policy` (TOML), replicating to site B through `link`; the
/// capgate schema is installed on the primary first. Returns once capgate has seen the replica
/// healthy: until its first connection through the link is up, a sync write is refused as if
/// the replica were cut off (under load that first connection took longer than the 500 ms
/// `partition_latency`, and the first write was refused with 55000).
pub(crate) async fn proxy(name: &str, policy: &str, link: &Link, replica_extra: &str) -> Proxy {
    let client = connect(&bed().a_primary_url()).await;
    capgate::store::postgres::primary::install_primary(&client).await.unwrap();
    let dir = scratch(name);
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let b = bed();
    let replica_url = format!("postgres://postgres@127.0.0.1:{}/postgres", link.addr().port());
    let text = format!(
        "site = \"a\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\nrecovery_grace = \"5s\"\n\n[primary]\nurl = \"{}?sslmode=disable\"\n\n[[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable&connect_timeout=2\"\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\n{replica_extra}\n",
        dir.join("policy.toml").display(),
        b.a_primary_url(),
        replica_url
    );
    let p = Proxy::start_config(&text, &dir);
    crate::quorum::state_is(p.admin.expect("the admin listener is configured"), "b", "healthy").await;
    p
}

/// Rows of `sql` as text, on one site.
pub(crate) async fn rows(url: &str, sql: &str) -> Vec<String> {
    let client = connect(url).await;
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect()
}

pub(crate) async fn primary_rows(sql: &str) -> Vec<String> {
    rows(&bed().a_primary_url(), sql).await
}

pub(crate) async fn replica_rows(sql: &str) -> Vec<String> {
    rows(&bed().b_replica_url_direct(), sql).await
}

/// `capgate verify` on `tables`: panics with the report unless they are identical. First
/// waits (bounded) for the replica to settle: COMMIT PREPARED runs after the client's COMMIT
/// returned, or, after a fault, from capgate's recovery.
pub(crate) async fn verify_equal(tables: &[&str]) {
    verify_equal_for("a", tables).await
}

/// [`verify_equal`] as site `site` sees it (its replica's applied position is the consistent
/// point).
pub(crate) async fn verify_equal_for(site: &str, tables: &[&str]) {
    replica_settled().await;
    let b = bed();
    let text = format!(
        "site = \"{site}\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\n",
        b.a_primary_url(),
        b.b_replica_url_direct()
    );
    let config = Config::parse(&text, Path::new("/tmp/replication-verify.toml")).unwrap();
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let selection = Selection::Replicated(Box::new(move |t: &TableName| names.contains(&format!("{}.{}", t.schema, t.name))));
    let report = verify::run(&config, &selection, Limits { chunk_rows: 1000, max_differences: 20 }).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{}", report.render());
}

/// Wait (bounded) until the replica holds no prepared transaction in this database (the other
/// modules' databases have their own): every sync commit the client saw succeed is then
/// committed there too. A sync commit answers the client once the primary committed; the
/// replica's COMMIT PREPARED follows off the client's path, so a replica read right after the
/// client's last commit may not see it yet.
pub(crate) async fn replica_settled() {
    let start = Instant::now();
    loop {
        let left = replica_rows("SELECT gid || ' prepared ' || prepared FROM pg_prepared_xacts WHERE database = current_database()").await;
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "prepared transactions still unresolved on the replica: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (bounded, `timeout`) until `check` holds; `what` names it when it never does.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) const SYNC_POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"public.sy_*\"\nmode = \"sync\"\non_partition = \"fail\"\n";

#[tokio::test]
async fn sync_writes_commit_on_both_sites_or_nowhere() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sy_acct, lo_sync_log; \
         CREATE TABLE sy_acct (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0), note text); \
         CREATE TABLE lo_sync_log (msg text)",
    )
    .await;
    let link = own_link();
    let p = proxy("sync-basic", SYNC_POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;

    // Autocommit, simple protocol.
    app.batch_execute("INSERT INTO sy_acct VALUES (1, 100, 'one')").await.unwrap();
    // Autocommit, extended protocol with binary parameters.
    let n = app.execute("INSERT INTO sy_acct VALUES ($1, $2, $3)", &[&2i32, &200i32, &"two"]).await.unwrap();
    assert_eq!(n, 1);
    // A multi-statement transaction with a local table and a savepoint rolled back to.
    app.batch_execute("BEGIN").await.unwrap();
    app.execute("UPDATE sy_acct SET balance = balance - $1 WHERE id = $2", &[&30i32, &1i32]).await.unwrap();
    app.batch_execute("INSERT INTO lo_sync_log VALUES ('moved 30')").await.unwrap();
    app.batch_execute("SAVEPOINT s1").await.unwrap();
    app.batch_execute("UPDATE sy_acct SET balance = balance + 30 WHERE id = 2").await.unwrap();
    app.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    app.batch_execute("UPDATE sy_acct SET balance = balance + 30 WHERE id = 2").await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    // Several statements in one autocommit Query: one transaction, on both sites.
    app.batch_execute("INSERT INTO sy_acct VALUES (3, 1, 'many'); UPDATE sy_acct SET note = 'many, updated' WHERE id = 3").await.unwrap();
    // A rolled-back transaction leaves nothing anywhere.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO sy_acct VALUES (4, 1, 'rolled back')").await.unwrap();
    app.batch_execute("ROLLBACK").await.unwrap();
    // An error mid-transaction (the CHECK) aborts it like on one PostgreSQL.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("UPDATE sy_acct SET note = 'changed' WHERE id = 2").await.unwrap();
    let e = app.batch_execute("UPDATE sy_acct SET balance = -1 WHERE id = 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = app.batch_execute("UPDATE sy_acct SET note = 'x' WHERE id = 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "in a failed transaction");
    app.batch_execute("COMMIT").await.unwrap();

    let want = vec!["1|70|one".to_owned(), "2|230|two".to_owned(), "3|1|many, updated".to_owned()];
    assert_eq!(primary_rows("SELECT id, balance, note FROM sy_acct ORDER BY id").await, want, "on the primary");
    // The last commit's COMMIT PREPARED may still be on its way (it follows the client's
    // answer): read the replica once it has landed.
    replica_settled().await;
    assert_eq!(replica_rows("SELECT id, balance, note FROM sy_acct ORDER BY id").await, want, "on the replica");
    assert_eq!(replica_rows("SELECT count(*) FROM lo_sync_log").await, vec!["0"], "local tables stay local");
    assert_eq!(primary_rows("SELECT count(*) FROM lo_sync_log").await, vec!["1"]);
    verify_equal(&["public.sy_acct"]).await;
}

#[tokio::test]
async fn sync_writes_are_refused_while_the_replica_is_cut_off() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sy_cut; CREATE TABLE sy_cut (id int PRIMARY KEY, v text)").await;
    let link = own_link();
    let p = proxy("sync-cut", SYNC_POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO sy_cut VALUES (1, 'before')").await.unwrap();
    link.blackhole();
    // Refused (not hung) once capgate sees the partition; reads and local writes go on.
    wait_until("a refusal", Duration::from_secs(20), async || match app.batch_execute("INSERT INTO sy_cut VALUES (2, 'during')").await {
        Err(e) => {
            assert_eq!(sqlstate(&e), "55000", "{e:?}");
            let msg = e.as_db_error().unwrap().message().to_owned();
            assert!(msg.contains("public.sy_cut") && msg.contains("\"b\""), "{msg}");
            true
        }
        Ok(()) => false,
    })
    .await;
    assert_eq!(app.query_one("SELECT count(*) FROM sy_cut", &[]).await.unwrap().get::<_, i64>(0), 1);
    link.restore();
    wait_until("writes to be accepted again", Duration::from_secs(20), async || {
        app.batch_execute("INSERT INTO sy_cut VALUES (3, 'after')").await.is_ok()
    })
    .await;
    assert_eq!(primary_rows("SELECT id FROM sy_cut ORDER BY id").await, vec!["1", "3"]);
    verify_equal(&["public.sy_cut"]).await;
}
