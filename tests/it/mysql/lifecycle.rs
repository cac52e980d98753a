//! Start and shutdown. capgate started before its MariaDB waits for it and serves no session
//! before capture is in place (decision 0036). Shutdown: idle MySQL sessions are closed at
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
    let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CAPGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start capgate");
    let mut capgate = Capgate(child);
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
