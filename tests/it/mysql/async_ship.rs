//! Async and bounded tables shipped to a MariaDB replica (decision 0021), on a primary and a
//! replica of their own (the shipper ships every change captured on its primary): writes
//! through capgate reach the replica exactly once, also across a cut link and a rolled-back
//! transaction; a bounded table is refused once its budget is spent and accepted again after
//! catch-up; a conflict is logged with both images and skipped; a `halt` conflict stops that
//! table alone (shown halted in `/status`) until `capgate resume` applies its held changes;
//! a conflict inside a merged multi-row INSERT or DELETE is still logged per change;
//! sysbench with every table async leaves both sites with equal checksums.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capgate::testbed::link::Link;
use capgate::testbed::{MariaDb, MariaDbOptions};
use mysql_async::prelude::*;

use super::support::sysbench_figure;
use super::support::{connect, MyProxy};

/// The tests take turns: every shipper ships the one change log of the primary.
pub(super) static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (primary, replica) of these tests.
pub(super) fn servers() -> &'static (MariaDb, MariaDb) {
    static SERVERS: OnceLock<(MariaDb, MariaDb)> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let start = || MariaDb::start(MariaDbOptions::default()).unwrap_or_else(|e| panic!("cannot start MariaDB: {e}"));
        (start(), start())
    })
}

/// capgate in front of the primary, shipping to the replica through `link`, site `west`.
pub(super) fn proxy(name: &str, policy: &str, link: &Link) -> (MyProxy, std::path::PathBuf) {
    let dir = crate::support::scratch(name);
    std::fs::write(dir.join("policy.toml"), policy).expect("policy");
    let conflicts = dir.join("conflicts.jsonl");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nconflict_log = \"{}\"\n\
         admin = \"127.0.0.1:0\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\n",
        conflicts.display(),
        servers().0.port(),
        link.addr()
    );
    (MyProxy::start_config(&text, &dir), conflicts)
}

pub(super) fn link() -> Link {
    Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, servers().1.port()))).expect("link")
}

/// Polls (bounded) until `query` gives the same text on both servers; returns it.
pub(super) async fn converged(query: &str) -> String {
    let (p, r) = servers();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (p.sql(query).expect("primary"), r.sql(query).expect("replica"));
        if a == b {
            return a;
        }
        assert!(Instant::now() < deadline, "the replica never caught up on {query}:\nprimary:\n{a}\nreplica:\n{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn setup_both(sql: &str) {
    let (p, r) = servers();
    p.sql(sql).expect("primary");
    r.sql(sql).expect("replica");
}

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"shipdb.acct\"\nmode = \"async\"\n\
    [[table]]\nmatch = \"shipdb.cart\"\nmode = \"bounded\"\nmax_lag = \"1s\"\n\
    [[table]]\nmatch = \"shipdb.notes\"\nmode = \"async\"\non_conflict = \"skip\"\n\
    [[table]]\nmatch = \"shipdb.ow\"\nmode = \"async\"\non_conflict = \"overwrite\"\n\
    [[table]]\nmatch = \"shipdb.strict\"\nmode = \"async\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn async_writes_reach_the_replica_once_through_cuts_and_bounded_writes_wait_for_catch_up() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS shipdb; CREATE DATABASE shipdb; \
         CREATE TABLE shipdb.acct (id INT PRIMARY KEY, bal INT NOT NULL, note VARCHAR(20)); \
         CREATE TABLE shipdb.cart (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(20)); \
         CREATE TABLE shipdb.notes (id INT PRIMARY KEY, body TEXT); \
         CREATE TABLE shipdb.ow (id INT PRIMARY KEY, body TEXT); CREATE TABLE shipdb.strict (id INT PRIMARY KEY, body TEXT)",
    );
    let link = link();
    let (p, conflict_log) = proxy("mysql-async-ship", POLICY, &link);
    let mut c = connect(&p.url("capgate", None, "shipdb")).await;

    // Autocommit inserts, a transaction of updates and deletes, and a rolled-back one.
    for i in 0..100 {
        c.exec_drop("INSERT INTO acct VALUES (?, ?, ?)", (i, i * 10, format!("n{i}"))).await.expect("insert");
    }
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = bal + 1 WHERE id < 50").await.expect("update");
    c.query_drop("DELETE FROM acct WHERE id >= 90").await.expect("delete");
    c.query_drop("UPDATE acct SET id = 1000 WHERE id = 0").await.expect("key change");
    c.query_drop("COMMIT").await.expect("commit");
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("INSERT INTO acct VALUES (5000, 1, 'rolled back')").await.expect("insert");
    c.query_drop("UPDATE acct SET bal = -1").await.expect("update");
    c.query_drop("ROLLBACK").await.expect("rollback");
    let rows = "SELECT id, bal, IFNULL(note, 'NULL') FROM shipdb.acct ORDER BY id";
    let got = converged(rows).await;
    assert_eq!(got.lines().count(), 90, "{got}");
    assert!(!got.contains("rolled back") && !got.contains("-1"), "{got}");

    // Bounded admission needs the replica's lag measured (the lag monitor reads it from the
    // primary every 250 ms, once the shipper has recorded a position): until then a bounded
    // write is refused as over budget.
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.lag.lag("east").is_none() {
        assert!(Instant::now() < deadline, "the replica's lag was never measured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The replica is cut off: async writes are accepted and wait; a bounded table is refused
    // once its oldest pending change is older than max_lag, naming table, mode and remedy.
    link.refuse(true);
    link.reset();
    for i in 100..150 {
        c.exec_drop("INSERT INTO acct VALUES (?, ?, NULL)", (i, i)).await.expect("async insert while cut");
    }
    c.query_drop("INSERT INTO cart (item) VALUES ('first')").await.expect("bounded write within budget");
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match c.query_drop("INSERT INTO cart (item) VALUES ('more')").await {
            Err(mysql_async::Error::Server(e)) => break e,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(()) => assert!(Instant::now() < deadline, "bounded writes were never refused while the replica was cut off"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((refusal.code, refusal.state.as_str()), (1644, "55000"), "{refusal:?}");
    for word in ["shipdb.cart", "east", "bounded", "max_lag", "retry once the replica has caught up"] {
        assert!(refusal.message.contains(word), "{word:?} missing from: {}", refusal.message);
    }

    // Healed: everything arrives once, and the bounded table takes writes again.
    link.refuse(false);
    link.restore();
    let got = converged(rows).await;
    assert_eq!(got.lines().count(), 140, "{got}");
    converged("SELECT id, item FROM shipdb.cart ORDER BY id").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.query_drop("INSERT INTO cart (item) VALUES ('after')").await {
        assert!(Instant::now() < deadline, "bounded writes still refused after catch-up: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converged("SELECT id, item FROM shipdb.cart ORDER BY id").await;

    // A row changed on the replica alone: the update finds a different row, which is logged
    // with both images and skipped (on_conflict = "skip"); shipping goes on.
    c.query_drop("INSERT INTO notes VALUES (1, 'original'), (2, 'two')").await.expect("notes");
    converged("SELECT id, body FROM shipdb.notes ORDER BY id").await;
    servers().1.sql("UPDATE shipdb.notes SET body = 'edited on the replica' WHERE id = 1").expect("replica edit");
    c.query_drop("UPDATE notes SET body = 'from the primary' WHERE id = 1").await.expect("update");
    c.query_drop("INSERT INTO notes VALUES (3, 'three')").await.expect("insert");
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers().1.sql("SELECT COUNT(*) FROM shipdb.notes").expect("count") != "3" {
        assert!(Instant::now() < deadline, "shipping stopped after a skipped conflict");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = std::fs::read_to_string(&conflict_log).expect("conflict log");
    let line = logged.lines().find(|l| l.contains("shipdb.notes")).unwrap_or_else(|| panic!("no conflict logged: {logged}"));
    let record: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(record["kind"], "update_differs", "{record}");
    assert_eq!(record["resolution"], "skipped", "{record}");
    assert_eq!(record["old"]["body"], "original", "{record}");
    assert_eq!(record["new"]["body"], "from the primary", "{record}");
    assert_eq!(record["replica_row"]["body"], "edited on the replica", "{record}");
    assert_eq!(servers().1.sql("SELECT body FROM shipdb.notes WHERE id = 1").expect("row"), "edited on the replica");
    let stats = p.shared.shipping.get().expect("shipping").shippers["east"].stats().clone();
    assert_eq!(stats.conflicts.load(std::sync::atomic::Ordering::Relaxed), 1, "only the edited row conflicted");
    // The rolled-back transaction's numbers were holes; they are dropped once no older
    // transaction is open on the primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stats.applied_snapshot().is_some_and(|s| s.ends_with("(0 holes)")) {
        assert!(Instant::now() < deadline, "holes never dropped: {:?}", stats.applied_snapshot());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // on_conflict = "overwrite": the replica's row becomes the primary's.
    c.query_drop("INSERT INTO ow VALUES (1, 'a'), (2, 'b')").await.expect("ow");
    converged("SELECT id, body FROM shipdb.ow ORDER BY id").await;
    servers().1.sql("UPDATE shipdb.ow SET body = 'replica' WHERE id = 1; DELETE FROM shipdb.ow WHERE id = 2").expect("edit");
    c.query_drop("UPDATE ow SET body = 'primary' WHERE id IN (1, 2)").await.expect("update");
    assert_eq!(converged("SELECT id, body FROM shipdb.ow ORDER BY id").await, "1\tprimary\n2\tprimary");

    // on_conflict = "halt" (the default): that table stops alone, its changes held; the
    // other tables go on; /status shows it halted with the command that resumes it.
    c.query_drop("INSERT INTO strict VALUES (1, 'a')").await.expect("strict");
    converged("SELECT id, body FROM shipdb.strict").await;
    servers().1.sql("DELETE FROM shipdb.strict").expect("edit");
    c.query_drop("UPDATE strict SET body = 'b'").await.expect("update");
    c.query_drop("INSERT INTO strict VALUES (2, 'held')").await.expect("insert while halted");
    c.query_drop("INSERT INTO acct VALUES (7000, 0, 'after the halt')").await.expect("insert");
    converged("SELECT id, note FROM shipdb.acct WHERE id = 7000").await;
    let strict = halted_in_status(p.admin.expect("admin listener"), "shipdb.strict").await;
    assert!(strict["error"].as_str().is_some_and(|e| e.contains("update_missing") && e.contains("on_conflict = halt")), "{strict}");
    assert_eq!(strict["resume"], "capgate resume --replica east --table shipdb.strict", "{strict}");
    c.query_drop("INSERT INTO acct VALUES (7001, 0, 'still shipping')").await.expect("insert");
    converged("SELECT id, note FROM shipdb.acct WHERE id = 7001").await;
    assert_eq!(servers().1.sql("SELECT COUNT(*) FROM shipdb.strict").expect("count"), "0", "a held change was applied");

    // The halt is the replica's record: a restarted capgate still holds the table.
    drop((c, p, fleet, stats));
    let (p, _) = proxy("mysql-async-ship-restarted", POLICY, &link);
    let mut c = connect(&p.url("capgate", None, "shipdb")).await;
    let admin = p.admin.expect("admin listener");
    halted_in_status(admin, "shipdb.strict").await;
    c.query_drop("INSERT INTO strict VALUES (3, 'held too')").await.expect("insert while halted");
    c.query_drop("INSERT INTO acct VALUES (7002, 0, 'after the restart')").await.expect("insert");
    converged("SELECT id, note FROM shipdb.acct WHERE id = 7002").await;
    assert_eq!(servers().1.sql("SELECT COUNT(*) FROM shipdb.strict").expect("count"), "0", "a held change was applied");

    // `capgate resume` before the row is repaired: refused, the table stays halted. Repaired,
    // it applies the held changes in order and the table ships again.
    let resume = move || {
        let file = std::env::temp_dir().join(format!("capgate-resume-{}.toml", std::process::id()));
        let text =
            format!("site = \"west\"\nadmin = \"{admin}\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n", servers().0.port());
        std::fs::write(&file, text).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_capgate"))
            .args(["resume", "--replica", "east", "--table", "shipdb.strict", "--config"])
            .arg(&file)
            .output()
            .expect("run capgate resume");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (ok, text) = tokio::task::spawn_blocking(resume).await.expect("join");
    assert!(!ok && text.contains("stays halted"), "{text}");
    servers().1.sql("INSERT INTO shipdb.strict VALUES (1, 'a')").expect("repair");
    let (ok, text) = tokio::task::spawn_blocking(resume).await.expect("join");
    assert!(ok && text.contains("shipdb.strict resumed"), "{text}");
    assert_eq!(servers().1.sql("SELECT id, body FROM shipdb.strict ORDER BY id").expect("rows"), "1\tb\n2\theld\n3\theld too");
    c.query_drop("UPDATE strict SET body = 'after' WHERE id = 2").await.expect("update");
    assert_eq!(converged("SELECT id, body FROM shipdb.strict ORDER BY id").await, "1\tb\n2\tafter\n3\theld too");
}

/// Polls `/status` (bounded) until `table` shows halted on the first replica; returns it.
pub(super) async fn halted_in_status(admin: std::net::SocketAddr, table: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.expect("join");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
        let tables = doc["replicas"][0]["tables"].as_array().cloned().unwrap_or_default();
        if let Some(t) = tables.into_iter().find(|t| t["table"] == table && t["state"] == "halted") {
            return t;
        }
        assert!(Instant::now() < deadline, "{table} never shown halted: {doc:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fast path merges a run of inserts into one INSERT and a run of deletes into one DELETE
/// (`store::mysql::batched`); a conflict inside a merged statement is still found, logged and
/// resolved change by change, and the batch's other rows are applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_inside_a_merged_insert_or_delete_is_logged_per_change() {
    let _turn = TURN.lock().await;
    setup_both("DROP DATABASE IF EXISTS mergedb; CREATE DATABASE mergedb; CREATE TABLE mergedb.m (id INT PRIMARY KEY, body TEXT)");
    let link = link();
    let policy = "default = \"local\"\n[[table]]\nmatch = \"mergedb.m\"\nmode = \"async\"\non_conflict = \"skip\"\n";
    let (p, conflict_log) = proxy("mysql-async-merged", policy, &link);
    // The table's initial copy (of an empty table) comes first: the replica's own row below
    // must be written after it, or the copy would replace it (decision 0030).
    super::async_copy::copied(&p, "mergedb.m").await;
    let mut c = connect(&p.url("capgate", None, "mergedb")).await;
    let replica = &servers().1;
    replica.sql("INSERT INTO mergedb.m VALUES (2, 'replica only')").expect("replica row");
    c.query_drop("INSERT INTO m VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')").await.expect("insert");
    let rows = "SELECT id, body FROM mergedb.m ORDER BY id";
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.sql(rows).expect("rows") != "1\ta\n2\treplica only\n3\tc\n4\td" {
        assert!(Instant::now() < deadline, "the inserts around the conflict never arrived: {}", replica.sql(rows).expect("rows"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica.sql("DELETE FROM mergedb.m WHERE id = 3").expect("replica delete");
    c.query_drop("DELETE FROM m WHERE id IN (1, 3, 4)").await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.sql(rows).expect("rows") != "2\treplica only" {
        assert!(Instant::now() < deadline, "the deletes around the conflict never arrived: {}", replica.sql(rows).expect("rows"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The shipper logs a batch's conflicts once its replica transaction has committed: the
    // rows can be seen a moment before the log line is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (logged, records) = loop {
        let logged = std::fs::read_to_string(&conflict_log).expect("conflict log");
        let records: Vec<serde_json::Value> = logged
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .filter(|r: &serde_json::Value| r["tbl"] == "mergedb.m")
            .collect();
        if records.len() >= 2 || Instant::now() > deadline {
            break (logged, records);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(String, String)> =
        records.iter().map(|r| (r["kind"].to_string(), r["old"]["id"].to_string() + &r["new"]["id"].to_string())).collect();
    assert_eq!(seen, [("\"insert_exists\"".into(), "null2".into()), ("\"delete_missing\"".into(), "3null".into())], "{logged}");
    assert_eq!(records[0]["replica_row"]["body"], "replica only", "{logged}");
    assert!(records.iter().all(|r| r["resolution"] == "skipped"), "{logged}");
}

/// The replica applies an UPDATE by the primary key (`USE INDEX (PRIMARY)`) only where its
/// table has one the image covers: a replica table without a primary key, or keyed on a
/// column the primary does not have, still gets every update.
#[tokio::test(flavor = "multi_thread")]
async fn updates_reach_replica_tables_without_the_primarys_key() {
    let _turn = TURN.lock().await;
    let (primary, replica) = servers();
    let tables = "DROP DATABASE IF EXISTS keydb; CREATE DATABASE keydb; ";
    primary
        .sql(&format!(
            "{tables} CREATE TABLE keydb.nokey (id INT PRIMARY KEY, v INT, KEY (v)); CREATE TABLE keydb.other (id INT PRIMARY KEY, v INT)"
        ))
        .expect("primary");
    replica
        .sql(&format!(
            "{tables} CREATE TABLE keydb.nokey (id INT, v INT, KEY (v)); \
             CREATE TABLE keydb.other (id INT, v INT, r INT NOT NULL AUTO_INCREMENT PRIMARY KEY)"
        ))
        .expect("replica");
    let link = link();
    let policy = "default = \"local\"\n[[table]]\nmatch = \"keydb.*\"\nmode = \"async\"\n";
    let (p, _) = proxy("mysql-async-keys", policy, &link);
    super::async_copy::copied(&p, "keydb.nokey").await;
    super::async_copy::copied(&p, "keydb.other").await;
    let mut c = connect(&p.url("capgate", None, "keydb")).await;
    for t in ["nokey", "other"] {
        c.query_drop(format!("INSERT INTO {t} (id, v) VALUES (1, 10), (2, 20), (3, 30)")).await.expect("insert");
        c.query_drop(format!("UPDATE {t} SET v = v + 1 WHERE id <> 2")).await.expect("update");
        c.query_drop(format!("UPDATE {t} SET v = 0 WHERE id = 2")).await.expect("update");
    }
    for t in ["nokey", "other"] {
        let rows = converged(&format!("SELECT id, v FROM keydb.{t} ORDER BY id")).await;
        assert_eq!(rows, "1\t11\n2\t0\n3\t31", "keydb.{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sysbench_with_every_table_async_leaves_equal_checksums() {
    let _turn = TURN.lock().await;
    let (primary, replica) = servers();
    setup_both("DROP DATABASE IF EXISTS sbasync; CREATE DATABASE sbasync");
    // Prepared on the primary and copied, before capgate captures anything.
    let (ok, text) = super::support::sysbench(primary.port(), "oltp_read_write", "sbasync", 1000, "prepare", &[]);
    assert!(ok, "sysbench prepare: {text}");
    let mut dump = Command::new("mariadb-dump")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "--skip-triggers"])
        .arg(format!("--port={}", primary.port()))
        .arg("sbasync")
        .stdout(Stdio::piped())
        .spawn()
        .expect("mariadb-dump");
    let load = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "sbasync"])
        .arg(format!("--port={}", replica.port()))
        .stdin(dump.stdout.take().expect("dump output"))
        .output()
        .expect("mariadb load");
    assert!(dump.wait().expect("mariadb-dump").success() && load.status.success(), "copying sbasync to the replica failed");
    let checksums = "CHECKSUM TABLE sbasync.sbtest1, sbasync.sbtest2 EXTENDED";
    assert_eq!(primary.sql(checksums).expect("primary"), replica.sql(checksums).expect("replica"));
    let link = link();
    let (p, _) = proxy("mysql-async-sysbench", "default = \"local\"\n[[table]]\nmatch = \"sbasync.*\"\nmode = \"async\"\n", &link);
    let args = ["--threads=4", "--events=400", "--time=0", "--report-interval=0"];
    let (ok, report) = super::support::sysbench(p.port(), "oltp_read_write", "sbasync", 1000, "run", &args);
    assert!(ok && !report.contains("FATAL"), "sysbench run:\n{report}");
    assert!(sysbench_figure(&report, "transactions:") >= 400, "{report}");
    converged(checksums).await;
    let stats = p.shared.shipping.get().expect("shipping").shippers["east"].stats().clone();
    assert_eq!(stats.conflicts.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capgate_killed_while_shipping_ships_each_change_once_after_restart() {
    let _turn = TURN.lock().await;
    let (primary, _) = servers();
    setup_both("DROP DATABASE IF EXISTS shipkill; CREATE DATABASE shipkill; CREATE TABLE shipkill.k (id INT PRIMARY KEY, v INT NOT NULL)");
    let link = link();
    // Each batch spends most of its time on the link, so the kill is likely to fall while a
    // replica transaction is open (where it falls is not controlled: any point must do).
    link.set_latency(Duration::from_millis(100));
    let dir = crate::support::scratch("mysql-async-kill");
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"shipkill.*\"\nmode = \"async\"\n").expect("policy");
    let port = capgate::testbed::free_port();
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"west\"\nlisten = \"127.0.0.1:{port}\"\npolicy = \"{}\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
             [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\n",
            dir.join("policy.toml").display(),
            primary.port(),
            link.addr()
        ),
    )
    .expect("config");
    let log = dir.join("capgate.log");
    let mut first = crate::support::Process::start(&config, port, &log);

    // Writers: through capgate, and around it on the primary (captured and shipped alike);
    // updates make a change applied twice visible (its old image no longer matches).
    let mut through = connect(&super::support::url_at(port, "capgate", None, "shipkill")).await;
    for i in 0..20 {
        through.exec_drop("INSERT INTO k VALUES (?, 0)", (i,)).await.expect("insert through capgate");
    }
    let around_url = super::support::url_at(primary.port(), "capgate", None, "shipkill");
    let writer = tokio::spawn(async move {
        let mut c = connect(&around_url).await;
        for round in 0..60 {
            c.query_drop("BEGIN").await.expect("begin");
            let values: Vec<String> = (0..20).map(|i| format!("({}, {round})", 1000 + round * 20 + i)).collect();
            c.query_drop(format!("INSERT INTO k VALUES {}", values.join(","))).await.expect("insert");
            c.query_drop("UPDATE k SET v = v + 1 WHERE id < 20").await.expect("update");
            c.query_drop("COMMIT").await.expect("commit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers().1.sql("SELECT COUNT(*) FROM shipkill.k").expect("count").parse::<u32>().unwrap_or(0) < 100 {
        assert!(Instant::now() < deadline, "nothing was shipped before the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    drop(through);
    let _second = crate::support::Process::start(&config, port, &log);
    writer.await.expect("writer");
    let rows = converged("SELECT id, v FROM shipkill.k ORDER BY id").await;
    assert_eq!(rows.lines().count(), 20 + 60 * 20);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("conflict"), "a change was applied twice or not at all:\n{text}");
}
