//! The policy on MySQL sessions: rules match `database.table`; writes to replicated tables
//! are relayed and counted until MySQL replication exists; refusals are ERR packets in their
//! place in the reply stream.

use std::sync::atomic::Ordering;

use mysql_async::prelude::*;

use super::raw::Raw;
use super::support::{connect, error_code, primary, MyProxy};

const POLICY: &str = "default = \"local\"\nunknown = \"refuse\"\n\
                      [[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n\
                      [[table]]\nmatch = \"shop.cart_*\"\nmode = \"async\"\n";

fn proxy_with_policy(name: &str) -> MyProxy {
    let dir = crate::support::scratch(name);
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n",
        primary().port()
    );
    MyProxy::start_config(&text, &dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_to_replicated_tables_are_counted_by_database_and_table() {
    let proxy = proxy_with_policy("mysql-policy-count");
    primary()
        .sql(
            "CREATE DATABASE IF NOT EXISTS shop; CREATE TABLE IF NOT EXISTS shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, v INT);
              CREATE TABLE IF NOT EXISTS shop.cart_items (id INT PRIMARY KEY AUTO_INCREMENT, v INT);
              CREATE TABLE IF NOT EXISTS shop.notes (id INT PRIMARY KEY AUTO_INCREMENT, v INT)",
        )
        .unwrap();
    let counted = || proxy.shared.counters.unreplicated_writes.load(Ordering::Relaxed);
    let mut c = connect(&proxy.url("capgate", None, "")).await;
    c.query_drop("INSERT INTO shop.orders (v) VALUES (1)").await.unwrap();
    assert_eq!(counted(), 1, "a qualified write to a sync table");
    c.query_drop("INSERT INTO shop.notes (v) VALUES (1)").await.unwrap();
    assert_eq!(counted(), 1, "a local table is not counted");
    // Unqualified names resolve against the current database (USE, then COM_INIT_DB).
    c.query_drop("USE shop").await.unwrap();
    c.query_drop("UPDATE cart_items SET v = v + 1").await.unwrap();
    assert_eq!(counted(), 2, "cart_items in shop after USE");
    c.query_drop("USE mysql").await.unwrap();
    c.query_drop("CREATE TEMPORARY TABLE orders (x INT)").await.unwrap();
    c.query_drop("INSERT INTO orders VALUES (1)").await.unwrap();
    assert_eq!(counted(), 2, "mysql.orders is not shop.orders");
    c.reset().await.unwrap();
    // Prepared writes count at each execution.
    let mut c = connect(&proxy.url("capgate", None, "shop")).await;
    let insert = c.prep("INSERT INTO orders (v) VALUES (?)").await.unwrap();
    for v in 0..3 {
        c.exec_drop(&insert, (v,)).await.unwrap();
    }
    assert_eq!(counted(), 5);
    let rows: Vec<i32> = c.query("SELECT v FROM shop.orders ORDER BY id").await.unwrap();
    assert_eq!(rows, vec![1, 0, 1, 2], "the writes reached the primary");
    // MariaDB's pipelined prepare-and-execute: statement id 0xFFFFFFFF runs the statement
    // just sent for preparing, before its PREPARE_OK came back.
    let mut raw = Raw::login(proxy.addr);
    let mut batch = Vec::new();
    capgate::protocol::mysql::packet::write(&mut batch, 0, b"\x16INSERT INTO shop.orders (v) VALUES (7)");
    capgate::protocol::mysql::packet::write(&mut batch, 0, &[0x17, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 0]);
    raw.send(&batch);
    assert_eq!(raw.recv().expect("prepare ok").payload[0], 0);
    let executed = raw.recv().expect("execute reply");
    assert_eq!(executed.payload[0], 0, "{}", executed.text());
    assert_eq!(counted(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_reports_mysql_sessions_and_the_policy() {
    let dir = crate::support::scratch("mysql-admin");
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let text = format!(
        "site = \"tacoma\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n",
        primary().port()
    );
    let proxy = MyProxy::start_config(&text, &dir);
    let admin = proxy.admin.expect("admin listener");
    let _a = connect(&proxy.url("capgate", None, "")).await;
    let _b = connect(&proxy.url("capgate", None, "")).await;
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status["site"].as_str(), status["client_connections"].as_u64()), (Some("tacoma"), Some(2)), "{status}");
    assert_eq!(status["policy_version"].as_u64(), Some(1));
    let (code, metrics) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/metrics", None)).await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("capgate_client_connections 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_errors_in_their_place_and_the_session_goes_on() {
    let proxy = proxy_with_policy("mysql-policy-refuse");
    let mut c = connect(&proxy.url("capgate", None, "mysql")).await;
    // A function capgate does not know: what it writes cannot be told.
    let err = c.query_drop("SELECT shop_mystery_function(1)").await.unwrap_err();
    assert_eq!(error_code(&err), 1235, "{err}");
    let message = err.to_string();
    assert!(message.contains("shop_mystery_function") && message.contains("unknown = \"refuse\""), "{message}");
    let err = c.prep("SELECT shop_mystery_function(?)").await.unwrap_err();
    assert_eq!(error_code(&err), 1235, "refused at prepare time: {err}");
    // Inside a transaction the transaction stays open, as after any MySQL error.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("SELECT shop_mystery_function(2)").await.unwrap_err();
    let open: Option<i32> = c.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(open, Some(1));
    c.query_drop("ROLLBACK").await.unwrap();

    // Pipelined: three queries sent at once, the middle one refused; the answers come in order.
    let mut raw = Raw::login(proxy.addr);
    let mut batch = Raw::query_packet("SELECT 'one'");
    batch.extend(Raw::query_packet("SELECT shop_mystery_function(3)"));
    batch.extend(Raw::query_packet("SELECT 'three'"));
    raw.send(&batch);
    let first = raw.reply();
    let second = raw.reply();
    let third = raw.reply();
    assert!(first.iter().any(|p| p.text().contains("one")), "{first:?}");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].code(), Some(1235));
    assert_eq!(second[0].seq, 1);
    assert!(third.iter().any(|p| p.text().contains("three")), "{third:?}");
    assert_eq!(raw.value("SELECT 40 + 2"), "42");
}

/// Keys built for PostgreSQL only are refused on a MySQL site, at start and at a reload (the
/// old policy stays), rather than silently not doing what they say.
#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_is_refused_at_start_and_at_a_reload() {
    let dir = crate::support::scratch("mysql-policy-quorum");
    let quorum = "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\nquorum = 1\n";
    std::fs::write(dir.join("policy.toml"), quorum).unwrap();
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n",
        primary().port()
    );
    let config = capgate::config::Config::parse(&text, &dir.join("capgate.toml")).expect("config");
    let refused = match capgate::frontend::mysql::Server::bind(std::sync::Arc::new(config)).await {
        Ok(_) => panic!("capgate started with a quorum on a MySQL site"),
        Err(e) => e.to_string(),
    };
    for words in ["policy.toml:2: table[1].quorum: quorum = 1 for \"shop.orders\"", "PostgreSQL-only", "remove quorum"] {
        assert!(refused.contains(words), "{words:?} missing from: {refused}");
    }

    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let proxy = tokio::task::spawn_blocking(move || MyProxy::start_config(&text, &dir)).await.unwrap();
    let handle = proxy.shared.router.policy();
    let file = crate::support::scratch("mysql-policy-quorum").join("policy.toml");
    std::fs::write(&file, quorum).unwrap();
    // (The file watcher may try it too, and is refused alike.)
    let err = handle.reload().expect_err("the reload is refused");
    assert!(err.to_string().contains("table[1].quorum"), "{err}");
    let kept = handle.current();
    let patterns: Vec<&str> = kept.rules.iter().map(|r| r.pattern_text.as_str()).collect();
    assert_eq!(patterns, ["shop.orders", "shop.cart_*"], "the policy in force stays");
    assert!(kept.rules.iter().all(|r| !matches!(r.mode, capgate::policy::Mode::Sync { quorum: Some(_), .. })));
}

/// A policy file written in two parts with a pause between them (a slow editor, a script
/// writing rule by rule) is never the policy in force, although its first part parses (the
/// rules before the cut only): the file watcher takes a changed file once it has held still
/// for a whole poll. Had it taken the first part, `shop.cart_*` would have been `local` — on a
/// MySQL site with replicas its capture triggers removed at once — until the next poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_file_caught_half_written_never_becomes_the_policy_in_force() {
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let proxy = proxy_with_policy("mysql-policy-halves");
    let file = crate::support::scratch("mysql-policy-halves").join("policy.toml");
    let cart = capgate::classify::TableName::new("shop", "cart_items");
    // What a user would check, sampled all along: the mode the router gives shop.cart_items.
    let shared = proxy.shared.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, cart) = (stop.clone(), cart.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let policy = shared.router.policy().current();
                let mode = policy.decide_table(&cart).mode.name().to_owned();
                if seen.last() != Some(&(policy.version, mode.clone())) {
                    seen.push((policy.version, mode));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    let cut = POLICY.find("[[table]]\nmatch = \"shop.cart_*\"").expect("the cart rule");
    let rounds = 6;
    for round in 1..=rounds {
        let mut f = std::fs::File::create(&file).expect("open the policy file");
        f.write_all(&POLICY.as_bytes()[..cut]).expect("first part");
        f.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(600)).await;
        f.write_all(format!("{}# round {round}\n", &POLICY[cut..]).as_bytes()).expect("second part");
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(20);
        while shared_version(&proxy) < 1 + round {
            assert!(Instant::now() < deadline, "round {round}: the whole file was never taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().expect("sampler");
    assert!(seen.iter().all(|(_, mode)| mode == "async"), "shop.cart_items was not async in some policy in force: {seen:?}");
    assert_eq!(shared_version(&proxy), 1 + rounds, "one reload per whole file, none for a first part: {seen:?}");
}

fn shared_version(proxy: &MyProxy) -> u64 {
    proxy.shared.router.policy().current().version
}
