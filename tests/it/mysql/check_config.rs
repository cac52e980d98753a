//! `capgate check-config --connect` with a MySQL / MariaDB site: one line per check, against
//! real servers — what `capgate run` would refuse to start without (a missing privilege named
//! with its GRANT), tables it cannot capture (no primary key, a non-transactional engine), a
//! replica that is read-only, lacks a table, has it with other columns, lets capgate's
//! account change nothing, or may not create capgate's function with the binary log on; exit
//! 0 when all is well; and a running capgate shows a replica's failures in `/status`.

use std::path::{Path, PathBuf};
use std::process::Command;

use capgate::testbed::{MariaDb, MariaDbOptions};

use super::async_ship::{servers, TURN};

fn check(dir: &Path, config: &str, policy: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("policy.toml"), policy).expect("policy");
    let file: PathBuf = dir.join("capgate.toml");
    std::fs::write(&file, config).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["check-config", "--connect", "--config", file.to_str().unwrap()])
        .output()
        .expect("run capgate");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn has(all: &str, line: &str) {
    assert!(all.lines().any(|l| l.starts_with(line)), "no line starting {line:?} in:\n{all}");
}

#[test]
fn check_config_connect_checks_a_mysql_site() {
    // The capgate it starts on the shared primary brings the capture triggers in step with
    // its own policy (every other table local: their triggers removed), so it must not run
    // beside the other tests on these servers.
    let _turn = TURN.blocking_lock();
    let (p, r) = servers();
    let tables = "CREATE TABLE checkdb.a (id INT PRIMARY KEY, v VARCHAR(10)); \
                  CREATE TABLE checkdb.b (id INT PRIMARY KEY, n INT)";
    p.sql(&format!(
        "DROP DATABASE IF EXISTS checkdb; CREATE DATABASE checkdb; {tables}; \
         CREATE TABLE checkdb.nokey (v INT); CREATE TABLE checkdb.my (id INT PRIMARY KEY) ENGINE = MyISAM; \
         DROP USER IF EXISTS 'chk_noproc'@'%'; CREATE USER 'chk_noproc'@'%'; \
         GRANT ALL ON checkdb.* TO 'chk_noproc'@'%'; GRANT ALL ON capgate.* TO 'chk_noproc'@'%'"
    ))
    .expect("primary");
    r.sql(
        "DROP DATABASE IF EXISTS checkdb; CREATE DATABASE checkdb; \
         CREATE TABLE checkdb.a (id INT PRIMARY KEY, v VARCHAR(10)); CREATE TABLE checkdb.b (id INT PRIMARY KEY, n INT UNSIGNED); \
         DROP USER IF EXISTS 'chk_narrow'@'%'; CREATE USER 'chk_narrow'@'%'; GRANT SELECT ON checkdb.* TO 'chk_narrow'@'%'; \
         DROP USER IF EXISTS 'chk_tbl'@'%'; CREATE USER 'chk_tbl'@'%'; GRANT ALL ON capgate.* TO 'chk_tbl'@'%'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON checkdb.a TO 'chk_tbl'@'%'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON checkdb.b TO 'chk_tbl'@'%'",
    )
    .expect("replica");
    let conf = vec![("read_only".into(), "ON".into()), ("log-bin".into(), "stock-bin".into())];
    let stock = MariaDb::start(MariaDbOptions { conf }).expect("a read-only replica with a binary log");
    stock.sql("CREATE USER 'chk_narrow'@'%'; GRANT ALL ON capgate.* TO 'chk_narrow'@'%'").expect("stock's narrow account");
    let dead = capgate::testbed::free_port();
    let dir = crate::support::scratch("mysql-check-config");

    let policy = "default = \"local\"\n[[table]]\nmatch = \"checkdb.a\"\nmode = \"sync\"\n\
                  [[table]]\nmatch = \"checkdb.b\"\nmode = \"async\"\n[[table]]\nmatch = \"checkdb.nokey\"\nmode = \"async\"\n\
                  [[table]]\nmatch = \"checkdb.my\"\nmode = \"async\"\n[[table]]\nmatch = \"checkdb.ghost\"\nmode = \"async\"\n";
    let config = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"good\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"narrow\"\nurl = \"mysql://chk_narrow@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"tablegrants\"\nurl = \"mysql://chk_tbl@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"stock\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"binlog\"\nurl = \"mysql://chk_narrow@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"gone\"\nurl = \"mysql://capgate@127.0.0.1:{dead}/?sslmode=disable&connect_timeout=1\"\n",
        p.port(),
        r.port(),
        r.port(),
        r.port(),
        stock.port(),
        stock.port()
    );
    let (code, all) = check(&dir, &config, policy);
    assert_eq!(code, Some(1), "{all}");
    for line in [
        "[ok] primary: connected to 127.0.0.1:",
        "[ok] primary: may install capture triggers on checkdb and keep capgate's change log in `capgate`",
        "[ok] primary: may record shipped positions and list open transactions (PROCESS)",
        "[warn] primary: policy rule \"checkdb.ghost\" (line 14) names checkdb.ghost, which does not exist here yet",
        "[FAIL] primary: replicated table checkdb.nokey cannot be captured: the table has no primary key",
        "[FAIL] primary: replicated table checkdb.my uses the MyISAM engine",
        "[ok] primary: 2 table(s) the policy replicates: checkdb.a, checkdb.b",
        "[ok] replica good: connected to 127.0.0.1:",
        "[ok] replica good: may keep capgate's positions",
        "[ok] replica good: XA RECOVER answers",
        "[FAIL] replica good: replicated table checkdb.b differs from the primary's: column `n` is int(10) unsigned here, int(11) on the primary",
        "[ok] replica good: 1 of 2 replicated table(s) present with the primary's columns",
        "[FAIL] replica narrow: the URL's account lacks privileges capgate's apply needs: `GRANT CREATE ON `capgate`.* TO 'chk_narrow'@'%'`",
        "[warn] replica stock: read_only = ON, and capgate's account may write anyway (READ_ONLY ADMIN)",
        "[FAIL] replica stock: replicated table checkdb.a is missing",
        "[FAIL] replica binlog: read_only = ON: capgate's apply is refused here",
        "[FAIL] replica binlog: binary logging is on (log_bin = ON) and 'chk_narrow'@'%' has no SUPER privilege",
        "[FAIL] replica gone: cannot connect to 127.0.0.1:",
    ] {
        has(&all, line);
    }
    assert!(all.contains("`GRANT INSERT ON `checkdb`.* TO 'chk_narrow'@'%'`"), "{all}");
    assert!(all.contains("`GRANT DELETE ON `capgate`.* TO 'chk_narrow'@'%'`"), "{all}");
    has(&all, "[ok] replica tablegrants: may keep capgate's positions and functions in `capgate` and change the replicated tables");
    assert!(all.contains("MariaDB 10."), "{all}");

    // The account capgate runs with lacks PROCESS: named with its GRANT, as `capgate run` would.
    let noproc =
        config.replace(&format!("mysql://capgate@127.0.0.1:{}/", p.port()), &format!("mysql://chk_noproc@127.0.0.1:{}/", p.port()));
    let (code, all) = check(&dir, &noproc, policy);
    assert_eq!(code, Some(1), "{all}");
    has(&all, "[FAIL] primary: the primary's account lacks PROCESS");
    assert!(all.contains("GRANT PROCESS ON *.* TO 'chk_noproc'@'%'"), "{all}");

    // All well: exit 0.
    let good = config.split("[[replicas]]\nname = \"narrow\"").next().unwrap().to_owned();
    let (code, all) = check(&dir, &good, "default = \"local\"\n[[table]]\nmatch = \"checkdb.a\"\nmode = \"sync\"\n");
    assert_eq!(code, Some(0), "{all}");
    has(&all, "[ok] replica good: 1 of 1 replicated table(s) present with the primary's columns");
    assert!(!all.contains("[FAIL]") && !all.contains("[warn]"), "{all}");

    // A running capgate shows the same failures as the replica's `problems` in `/status`
    // (checked at start, then every minute), while the replica is healthy.
    let running = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"stock\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        p.port(),
        stock.port()
    );
    let proxy = super::support::MyProxy::start_config(&running, &dir);
    let admin = proxy.admin.expect("admin listener");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, body) = crate::admin::get(admin, "/status", None);
        assert_eq!(code, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
        let problems = doc["replicas"][0]["problems"].as_array().cloned().unwrap_or_default();
        if !problems.is_empty() {
            let text = format!("{problems:?}");
            assert!(text.contains("replicated table checkdb.a is missing"), "{text}");
            assert!(!text.contains("read_only"), "only failures are problems, not warnings: {text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no problems in /status: {body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
