//! A policy reload that adds the first async and bounded rules to a MySQL capgate that
//! started with none: no restart. The reload installs the tables' capture triggers and then
//! starts the shippers; a write that comes before the triggers are in place is refused with a
//! clear error rather than committed on the primary alone; every write after it (through
//! capgate, and around it) reaches the replica, and `capgate verify` finds the tables equal.
//!
//! The tables here hold the same rows on both sites before the reload; entering the policy,
//! they are copied to the (one-way) replica all the same (decision 0030).

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::async_ship::{converged, link, servers, setup_both, TURN};
use super::support::{connect, MyProxy};

const BEFORE: &str = "default = \"local\"\n[[table]]\nmatch = \"reloaddb.scratch\"\nmode = \"local\"\n";

const AFTER: &str = "default = \"local\"\n[[table]]\nmatch = \"reloaddb.scratch\"\nmode = \"local\"\n\
    [[table]]\nmatch = \"reloaddb.items\"\nmode = \"async\"\n\
    [[table]]\nmatch = \"reloaddb.cart\"\nmode = \"bounded\"\nmax_lag = \"30s\"\n";

/// `/status` of `admin`.
async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.expect("join");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status JSON")
}

/// Runs `sql` through capgate until it is accepted (bounded); every refusal meanwhile must
/// be the "capture triggers not in place yet" one. Returns how many refusals there were.
async fn until_accepted(c: &mut mysql_async::Conn, sql: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    loop {
        match c.query_drop(sql).await {
            Ok(()) => return refused,
            Err(mysql_async::Error::Server(e)) => {
                assert_eq!((e.code, e.state.as_str()), (1644, "55000"), "{e:?}");
                for word in ["capture triggers", "retry", "nothing was written"] {
                    assert!(e.message.contains(word), "{word:?} missing from: {}", e.message);
                }
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(Instant::now() < deadline, "{sql} was never accepted after the reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_adds_the_first_async_rule_starts_capture_and_shipping_without_a_restart() {
    let _turn = TURN.lock().await;
    // The tables the reload will replicate hold the same rows on both sites already.
    setup_both(
        "DROP DATABASE IF EXISTS reloaddb; CREATE DATABASE reloaddb; USE reloaddb; \
         CREATE TABLE reloaddb.items (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(20)); \
         INSERT INTO reloaddb.items SELECT seq, seq * 2, CONCAT('item ', seq) FROM seq_1_to_200; \
         CREATE TABLE reloaddb.cart (id INT PRIMARY KEY AUTO_INCREMENT, item INT NOT NULL); \
         CREATE TABLE reloaddb.scratch (id INT PRIMARY KEY, v INT)",
    );
    let link = link();
    let dir = crate::support::scratch("mysql-async-reload");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, BEFORE).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nadmin = \"127.0.0.1:0\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\n",
        servers().0.port(),
        link.addr()
    );
    let config = dir.join("capgate.toml");
    std::fs::write(&config, &text).expect("config");
    let p = MyProxy::start_config(&text, &dir);
    let admin = p.admin.expect("admin listener");
    let mut c = connect(&p.url("capgate", None, "reloaddb")).await;

    // No async rule: no shipper, and the local table's writes stay on the primary.
    c.query_drop("INSERT INTO scratch VALUES (1, 1), (2, 2)").await.expect("local write");
    assert!(p.shared.shipping.get().is_none(), "a shipper runs without an async rule");
    assert_eq!(status(admin).await["replicas"][0]["shipping"], "not running");
    let triggers = "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'reloaddb'";
    assert_eq!(servers().0.sql(triggers).expect("triggers"), "0");

    // The reload (the file changed; SIGHUP does the same): the first write to the new async
    // table waits for its triggers (refused meanwhile, never committed unreplicated).
    std::fs::write(&policy, AFTER).expect("policy");
    let written = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(admin).await["policy_version"] != 2 {
        assert!(Instant::now() < deadline, "the policy was never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = written.elapsed();
    let reloaded = Instant::now();
    let refused = until_accepted(&mut c, "INSERT INTO items VALUES (1001, 1, 'after reload')").await;
    let accepted = reloaded.elapsed();
    assert_eq!(servers().0.sql(triggers).expect("triggers"), "6", "three triggers per replicated table");
    assert!(p.shared.shipping.get().is_some(), "the reload did not start the shippers");

    // Writes after the reload: autocommit, a transaction of updates and deletes of rows that
    // were there before, a rolled-back one, a bounded table, and a write around capgate.
    for i in 1002..1050 {
        c.exec_drop("INSERT INTO items VALUES (?, ?, NULL)", (i, i)).await.expect("insert");
    }
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE items SET qty = qty + 100 WHERE id <= 50").await.expect("update");
    c.query_drop("DELETE FROM items WHERE id BETWEEN 150 AND 160").await.expect("delete");
    c.query_drop("COMMIT").await.expect("commit");
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE items SET qty = -1").await.expect("update");
    c.query_drop("ROLLBACK").await.expect("rollback");
    // The bounded table is refused until the new lag monitor has measured the replica.
    until_accepted_bounded(&mut c).await;
    servers().0.sql("UPDATE reloaddb.items SET note = 'around capgate' WHERE id = 7").expect("write around capgate");

    let rows = converged("SELECT id, qty, IFNULL(note, 'NULL') FROM reloaddb.items ORDER BY id").await;
    assert_eq!(rows.lines().count(), 200 - 11 + 49, "{rows}");
    assert!(rows.contains("7\t114\taround capgate") && !rows.contains("\t-1\t"), "{rows}");
    converged("SELECT id, item FROM reloaddb.cart ORDER BY id").await;
    assert_eq!(servers().1.sql("SELECT COUNT(*) FROM reloaddb.scratch").expect("scratch"), "0", "a local table was shipped");
    let doc = status(admin).await;
    assert_eq!(doc["replicas"][0]["shipping"], "running", "{doc:#}");

    // `capgate verify`, as a DBA runs it: the replicated tables are equal.
    let out = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["verify", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run capgate verify");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    let tables: Vec<(&str, &str)> = json["replicas"][0]["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| Some((t["table"].as_str()?, t["status"].as_str()?)))
        .filter(|(t, _)| t.starts_with("reloaddb."))
        .collect();
    assert_eq!(tables, [("reloaddb.cart", "equal"), ("reloaddb.items", "equal")], "{json:#}");
    eprintln!("reload seen {seen:?} after the file changed; {refused} write(s) refused, the first accepted {accepted:?} after");
}

/// A bounded write is accepted once the replica's lag is known and within budget.
async fn until_accepted_bounded(c: &mut mysql_async::Conn) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.query_drop("INSERT INTO cart (item) VALUES (1), (2)").await {
        let mysql_async::Error::Server(s) = &e else { panic!("unexpected error: {e}") };
        assert_eq!((s.code, s.state.as_str()), (1644, "55000"), "{s:?}");
        assert!(Instant::now() < deadline, "bounded writes still refused: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// capgate's primary account lacks PROCESS (it may not read `information_schema.INNODB_TRX`):
/// with an async rule at start, capgate does not start and names the grant and why; with no
/// such rule it starts (sync and local tables do not need it), and a reload that adds one
/// starts the shippers all the same (logging the same words), which ship.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_account_without_process_is_named_at_start_when_tables_ship() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS noprocdb; CREATE DATABASE noprocdb; \
         CREATE TABLE noprocdb.t (id INT PRIMARY KEY, v INT)",
    );
    servers()
        .0
        .sql(
            "DROP USER IF EXISTS 'noproc'@'%'; CREATE USER 'noproc'@'%'; \
             GRANT ALL ON noprocdb.* TO 'noproc'@'%'; GRANT ALL ON capgate.* TO 'noproc'@'%'",
        )
        .expect("user without PROCESS");
    let dir = crate::support::scratch("mysql-noproc");
    let policy = dir.join("policy.toml");
    let async_rule = "default = \"local\"\n[[table]]\nmatch = \"noprocdb.t\"\nmode = \"async\"\n";
    std::fs::write(&policy, async_rule).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"mysql://noproc@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        servers().0.port(),
        servers().1.port()
    );
    let config = capgate::config::Config::parse(&text, &dir.join("capgate.toml")).expect("config");
    let refused = match capgate::frontend::mysql::Server::bind(std::sync::Arc::new(config)).await {
        Ok(_) => panic!("capgate started with an async rule and no PROCESS privilege"),
        Err(e) => e.to_string(),
    };
    for words in ["lacks PROCESS", "GRANT PROCESS ON *.* TO 'noproc'@'%'", "INNODB_TRX", "hole is kept", "restart capgate"] {
        assert!(refused.contains(words), "{words:?} missing from: {refused}");
    }
    let triggers = "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'noprocdb'";
    assert_eq!(servers().0.sql(triggers).expect("triggers"), "0", "nothing was installed");

    // No async rule: it starts. The reload that adds one starts the shippers anyway.
    std::fs::write(&policy, "default = \"local\"\n").expect("policy");
    let p = MyProxy::start_config(&text, &dir);
    assert!(p.shared.shipping.get().is_none());
    std::fs::write(&policy, async_rule).expect("policy");
    let mut c = connect(&p.url("noproc", None, "noprocdb")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while p.shared.shipping.get().is_none() {
        assert!(Instant::now() < deadline, "the reload did not start the shippers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_accepted(&mut c, "INSERT INTO t VALUES (1, 1), (2, 2)").await;
    assert_eq!(converged("SELECT id, v FROM noprocdb.t ORDER BY id").await, "1\t1\n2\t2");
}
