//! The capgate process: shutdown on SIGTERM lets transactions finish, a second signal exits
//! at once; SIGHUP reloads the policy.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{connect, scratch};

struct Running {
    child: Child,
    port: u16,
}

impl Running {
    fn start(name: &str, shutdown_timeout: &str) -> Running {
        Running::start_with(name, shutdown_timeout, "")
    }

    /// Start the binary; `extra` is added to the top of the configuration (e.g. `policy = …`).
    fn start_with(name: &str, shutdown_timeout: &str, extra: &str) -> Running {
        let port = capgate::testbed::free_port();
        let dir = scratch(name);
        let config = dir.join("capgate.toml");
        std::fs::write(
            &config,
            format!(
                "site = \"test\"\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"{shutdown_timeout}\"\n{extra}\n[primary]\nurl = \"{}\"\n",
                crate::support::primary().url("postgres", "postgres")
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start capgate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "capgate never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Running { child, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The exit status, waiting at most `limit`.
    async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_lets_open_transactions_finish() {
    let mut capgate = Running::start("sigterm", "60s");
    let setup = connect(&capgate.url()).await;
    setup.batch_execute("DROP TABLE IF EXISTS shutdown_t; CREATE TABLE shutdown_t (k int)").await.unwrap();
    let idle = connect(&capgate.url()).await;
    let busy = connect(&capgate.url()).await;
    busy.batch_execute("BEGIN; INSERT INTO shutdown_t VALUES (1)").await.unwrap();

    capgate.signal(libc::SIGTERM);
    // Idle sessions are closed at once; new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !idle.is_closed() || !setup.is_closed() {
        assert!(Instant::now() < deadline, "idle sessions were not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tokio_postgres::connect(&capgate.url(), tokio_postgres::NoTls).await.is_err());
    // The open transaction goes on and commits.
    busy.batch_execute("INSERT INTO shutdown_t VALUES (2); COMMIT").await.unwrap();
    let status = capgate.exit_within(Duration::from_secs(30)).await.expect("capgate exits once the transaction is done");
    assert!(status.success(), "{status:?}");
    let rows = crate::support::psql_at(&crate::support::primary().url("postgres", "postgres"), "SELECT count(*) FROM shutdown_t");
    assert_eq!(rows.trim(), "2");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut capgate = Running::start("sigterm-twice", "600s");
    let busy = connect(&capgate.url()).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    capgate.signal(libc::SIGTERM);
    // Still serving the transaction after the first signal.
    busy.batch_execute("SELECT 2").await.unwrap();
    capgate.signal(libc::SIGINT);
    let status = capgate.exit_within(Duration::from_secs(30)).await;
    assert!(status.is_some(), "capgate did not exit on the second signal");
    assert!(busy.batch_execute("SELECT 3").await.is_err(), "the session ended with the process");
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    crate::support::psql_at(
        &crate::support::primary().url("postgres", "postgres"),
        "CREATE OR REPLACE FUNCTION public.lc_touch() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1'",
    );
    let dir = scratch("sighup");
    let policy = dir.join("policy.toml");
    // Two policies of the same length: with the modification time put back, the file watcher
    // cannot see the change — only SIGHUP can.
    let relay = "unknown = \"relay\" \n";
    let refuse = "unknown = \"refuse\"\n";
    assert_eq!(relay.len(), refuse.len());
    std::fs::write(&policy, relay).unwrap();
    let capgate = Running::start_with("sighup", "5s", &format!("policy = \"{}\"", policy.display()));
    let c = connect(&capgate.url()).await;
    c.simple_query("SELECT lc_touch()").await.unwrap();

    let modified = std::fs::metadata(&policy).unwrap().modified().unwrap();
    // Prepared aside and renamed into place, so the watcher never sees a new stamp.
    let staged = dir.join("policy.toml.new");
    std::fs::write(&staged, refuse).unwrap();
    std::fs::File::options().write(true).open(&staged).unwrap().set_modified(modified).unwrap();
    std::fs::rename(&staged, &policy).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.simple_query("SELECT lc_touch()").await.expect("no reload without SIGHUP");

    capgate.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.simple_query("SELECT lc_touch()").await {
            Err(e) => {
                assert_eq!(crate::support::sqlstate(&e), "0A000");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "SIGHUP did not reload the policy"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
