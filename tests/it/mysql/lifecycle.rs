//! Start and shutdown. capgate started before its MariaDB waits for it and serves no session
//! before capture is in place (decision 0036); started while its replica is down, it serves
//! with the replica partitioned and sets the replica up once it answers (decision 0038). Shutdown: idle MySQL sessions are closed at
//! once, a session inside a transaction may finish it, new connections are refused, and the
//! server returns.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::capture::SERVER;
use super::support::{connect, primary, replica, url_at};
use capgate::config::Config;
use capgate::frontend::mysql::Server;
use capgate::testbed::{MariaDb, MariaDbOptions};

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_open_transactions_finish() {
    primary().sql("CREATE DATABASE IF NOT EXISTS life; CREATE TABLE IF NOT EXISTS life.t (x INT)").unwrap();
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"20s\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n",
        primary().port()
    );
    let config = Arc::new(Config::parse(&text, std::path::Path::new("capgate.toml")).unwrap());
    let server = Server::bind(config).await.unwrap();
    let port = server.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(
        async move {
            let _ = stopped.await;
        },
        std::future::pending(),
    ));
    let mut idle = connect(&url_at(port, "capgate", None, "life")).await;
    let mut busy = connect(&url_at(port, "capgate", None, "life")).await;
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO t VALUES (42)").await.unwrap();
    stop.send(()).unwrap();
    // The idle session is closed; the one in a transaction commits, then it is closed too.
    let mut closed = false;
    for _ in 0..200 {
        if idle.query_drop("SELECT 1").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(closed, "the idle session was closed");
    busy.query_drop("INSERT INTO t VALUES (43)").await.expect("the open transaction goes on");
    busy.query_drop("COMMIT").await.expect("and commits");
    tokio::time::timeout(std::time::Duration::from_secs(20), running).await.expect("run returns").unwrap();
    assert!(mysql_async::Conn::from_url(url_at(port, "capgate", None, "life")).await.is_err(), "no new connections");
    assert_eq!(primary().sql("SELECT SUM(x) FROM life.t WHERE x IN (42, 43)").unwrap(), "85");
}

/// The capgate binary, killed when the test ends.
struct Capgate(Child);

impl Capgate {
    /// `capgate run --config <config>`, logging at info into `log`.
    fn run(config: &std::path::Path, log: &std::path::Path) -> Capgate {
        let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("CAPGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("start capgate");
        Capgate(child)
    }
}

impl Drop for Capgate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until capgate's log holds `line`; panics with the log if capgate exited.
fn logged(capgate: &mut Capgate, log: &std::path::Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(line) {
            return;
        }
        if let Ok(Some(status)) = capgate.0.try_wait() {
            panic!("capgate exited ({status}) before logging {line:?}:\n{text}");
        }
        assert!(Instant::now() < deadline, "capgate never logged {line:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// As when a container or service starts capgate before its database: capgate waits for the
/// MariaDB primary, installs capture, and only then accepts sessions, so the first write to a
/// sync table, sent as soon as it accepts, is coordinated and reaches the replica (neither
/// committed on the primary alone nor refused by the capture trigger).
#[tokio::test(flavor = "multi_thread")]
async fn capgate_started_before_its_mariadb_waits_and_coordinates_the_first_sync_write() {
    let _turn = SERVER.lock().await;
    let db = MariaDb::start(MariaDbOptions::default()).expect("the primary");
    let ddl = "DROP DATABASE IF EXISTS early; CREATE DATABASE early; CREATE TABLE early.acct (id INT PRIMARY KEY, bal INT NOT NULL)";
    db.sql(ddl).expect("primary tables");
    replica().sql(ddl).expect("replica tables");
    db.stop().expect("stop the primary");

    let dir = crate::support::scratch("mysql-start-before-primary");
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"early.acct\"\nmode = \"sync\"\n").expect("policy");
    let port = capgate::testbed::free_port();
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"early\"\nlisten = \"127.0.0.1:{port}\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
             [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
            db.port(),
            replica().port()
        ),
    )
    .expect("config");
    let log = dir.join("capgate.log");
    let mut capgate = Capgate::run(&config, &log);
    logged(&mut capgate, &log, "the primary cannot be reached yet");

    db.restart().expect("start the primary");
    logged(&mut capgate, &log, "capgate is accepting MySQL connections");
    let mut c = connect(&url_at(port, "capgate", None, "early")).await;
    c.query_drop("INSERT INTO acct VALUES (1, 100)").await.expect("the first sync write");
    assert_eq!(db.sql("SELECT id, bal FROM early.acct").expect("primary rows"), "1\t100");
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica().sql("SELECT id, bal FROM early.acct").expect("replica rows") != "1\t100" {
        assert!(Instant::now() < deadline, "the first sync write never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A partition between the sites while capgate (re)starts must not take the site down
/// (issue 15, decision 0038): capgate started while its replica's MariaDB is down serves,
/// with the replica partitioned — a local and an async write commit, a sync write is refused
/// with the partition error — and once the replica answers, capgate installs its functions
/// there: the queued async row arrives and sync writes (an UPDATE calls the installed
/// `capgate.expect_rows`) commit on both sites. Restarted while the replica is down again, it
/// serves again, and the change queued meanwhile ships. Before, capgate exited at start.
#[tokio::test(flavor = "multi_thread")]
async fn capgate_started_while_its_replica_is_down_serves_and_sets_the_replica_up_when_it_answers() {
    let _turn = SERVER.lock().await;
    let db = MariaDb::start(MariaDbOptions::default()).expect("the primary");
    let far = MariaDb::start(MariaDbOptions::default()).expect("the replica");
    let ddl = "DROP DATABASE IF EXISTS apart; CREATE DATABASE apart; CREATE TABLE apart.acct (id INT PRIMARY KEY, bal INT NOT NULL); \
               CREATE TABLE apart.log (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE apart.scratch (id INT PRIMARY KEY)";
    db.sql(ddl).expect("primary tables");
    far.sql(ddl).expect("replica tables");
    far.stop().expect("stop the replica");

    let dir = crate::support::scratch("mysql-start-without-replica");
    let policy = "default = \"local\"\n[[table]]\nmatch = \"apart.acct\"\nmode = \"sync\"\non_partition = \"fail\"\n\
                  [[table]]\nmatch = \"apart.log\"\nmode = \"async\"\n";
    std::fs::write(dir.join("policy.toml"), policy).expect("policy");
    let (port, admin_port) = (capgate::testbed::free_port(), capgate::testbed::free_port());
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"apart\"\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\npolicy = \"policy.toml\"\n\
             [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
             [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable&connect_timeout=1\"\n",
            db.port(),
            far.port()
        ),
    )
    .expect("config");
    let log = dir.join("capgate.log");
    let mut capgate = Capgate::run(&config, &log);
    logged(&mut capgate, &log, "capgate is accepting MySQL connections");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    super::health::until(admin, "east partitioned", |d| d["replicas"][0]["state"] == "partitioned").await;

    let mut c = connect(&url_at(port, "capgate", None, "apart")).await;
    c.query_drop("INSERT INTO scratch VALUES (1)").await.expect("a local write");
    c.query_drop("INSERT INTO log VALUES (1, 'queued')").await.expect("an async write");
    let err = c.query_drop("INSERT INTO acct VALUES (1, 100)").await.expect_err("a sync write is refused");
    let mysql_async::Error::Server(e) = &err else { panic!("expected a server error, got {err}") };
    assert_eq!((e.code, e.state.as_str()), (1180, "55000"), "{err}");
    for part in ["replica \"east\" is partitioned", "apart.acct", "on_partition = \"fail\"", "make them async or bounded"] {
        assert!(e.message.contains(part), "no `{part}` in: {}", e.message);
    }
    let rows = "SELECT (SELECT COUNT(*) FROM apart.scratch), (SELECT COUNT(*) FROM apart.log), (SELECT COUNT(*) FROM apart.acct)";
    assert_eq!(db.sql(rows).expect("primary rows"), "1\t1\t0");

    // The replica answers: the queued async row ships, sync writes commit on both sites.
    far.restart().expect("start the replica");
    let deadline = Instant::now() + Duration::from_secs(60);
    while far.sql("SELECT v FROM apart.log WHERE id = 1").expect("replica rows") != "queued" {
        assert!(
            Instant::now() < deadline,
            "the async row never reached the replica:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    super::health::until(admin, "east healthy", |d| d["replicas"][0]["state"] == "healthy").await;
    c.query_drop("INSERT INTO acct VALUES (1, 100)").await.expect("a sync write once the replica is back");
    c.query_drop("UPDATE acct SET bal = 90 WHERE id = 1").await.expect("a sync update (capgate.expect_rows on the replica)");
    assert_eq!(db.sql("SELECT id, bal FROM apart.acct").expect("primary rows"), "1\t90");
    let deadline = Instant::now() + Duration::from_secs(30);
    while far.sql("SELECT id, bal FROM apart.acct").expect("replica rows") != "1\t90" {
        assert!(Instant::now() < deadline, "the sync writes never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(far.sql("SELECT COUNT(*) FROM apart.scratch").expect("replica rows"), "0", "a local table stays local");

    // capgate restarts while the link is down again: the replica is set up this time, the
    // async table entered replication, so its queued change ships as a change (no copy).
    drop(c);
    drop(capgate);
    far.stop().expect("stop the replica again");
    let log = dir.join("capgate-again.log");
    let mut capgate = Capgate::run(&config, &log);
    logged(&mut capgate, &log, "capgate is accepting MySQL connections");
    super::health::until(admin, "east partitioned", |d| d["replicas"][0]["state"] == "partitioned").await;
    let mut c = connect(&url_at(port, "capgate", None, "apart")).await;
    c.query_drop("INSERT INTO log VALUES (2, 'queued again')").await.expect("an async write");
    let err = c.query_drop("UPDATE acct SET bal = 80 WHERE id = 1").await.expect_err("a sync write is refused");
    assert_eq!(super::support::error_code(&err), 1180, "{err}");
    far.restart().expect("start the replica again");
    let deadline = Instant::now() + Duration::from_secs(60);
    while far.sql("SELECT v FROM apart.log WHERE id = 2").expect("replica rows") != "queued again" {
        assert!(Instant::now() < deadline, "the queued change never shipped:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("table copied"), "the queued change was shipped, not copied:\n{text}");
    super::health::until(admin, "east healthy", |d| d["replicas"][0]["state"] == "healthy").await;
    c.query_drop("UPDATE acct SET bal = 80 WHERE id = 1").await.expect("a sync write once the replica is back");
    let deadline = Instant::now() + Duration::from_secs(30);
    while far.sql("SELECT bal FROM apart.acct WHERE id = 1").expect("replica rows") != "80" {
        assert!(Instant::now() < deadline, "the sync write never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica that answers but refuses capgate's account is a configuration error, not a
/// partition (decision 0038): the start fails at once, naming the replica, the server's
/// error and the remedy, rather than serving with the replica silently partitioned.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_refuses_capgates_account_fails_the_start() {
    let db = MariaDb::start(MariaDbOptions::default()).expect("the primary");
    let text = format!(
        "site = \"refused\"\nlisten = \"127.0.0.1:0\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate:mistyped@127.0.0.1:{}/?sslmode=disable&connect_timeout=1\"\n",
        db.port(),
        replica().port()
    );
    let config = Arc::new(Config::parse(&text, std::path::Path::new("capgate.toml")).expect("config"));
    let Some(err) = Server::bind(config).await.err() else { panic!("capgate started with a replica that refuses its account") };
    let text = err.to_string();
    for part in ["replica \"east\"", "Access denied", "refuses capgate's account", "fix the user or password"] {
        assert!(text.contains(part), "no `{part}` in: {text}");
    }
}
