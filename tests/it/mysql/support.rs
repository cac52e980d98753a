//! The MariaDB primary this test binary starts once, capgate's MySQL front end in front of
//! it, and the mariadb command-line client.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use capgate::config::Config;
use capgate::frontend::mysql::{Server, Shared};
use capgate::testbed::{MariaDb, MariaDbOptions};

/// Password of `app`, a mysql_native_password user with every privilege.
pub const APP_PASSWORD: &str = "app-secret";
/// Password of `edna`, an ed25519 user.
pub const ED25519_PASSWORD: &str = "ed-secret";

/// The MariaDB primary shared by the MySQL tests. `capgate` has no password; `app` and
/// `edna` (ed25519) have theirs; `other` may only use the `other` database.
pub fn primary() -> &'static MariaDb {
    static PRIMARY: OnceLock<MariaDb> = OnceLock::new();
    PRIMARY.get_or_init(|| {
        let db = MariaDb::start(MariaDbOptions { conf: vec![("local-infile".into(), "1".into())] })
            .unwrap_or_else(|e| panic!("cannot start the MariaDB primary: {e}"));
        db.sql(&format!(
            "INSTALL SONAME 'auth_ed25519';
             CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}'; GRANT ALL PRIVILEGES ON *.* TO 'app'@'%';
             CREATE USER 'edna'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED25519_PASSWORD}'); GRANT ALL PRIVILEGES ON *.* TO 'edna'@'%';
             CREATE USER 'other'@'%'; CREATE DATABASE other; GRANT ALL PRIVILEGES ON other.* TO 'other'@'%';"
        ))
        .unwrap_or_else(|e| panic!("cannot create the test users: {e}"));
        db
    })
}

/// A second MariaDB server, the replica of the replication tests; `capgate` has every
/// privilege and no password.
pub fn replica() -> &'static MariaDb {
    static REPLICA: OnceLock<MariaDb> = OnceLock::new();
    REPLICA.get_or_init(|| MariaDb::start(MariaDbOptions::default()).unwrap_or_else(|e| panic!("cannot start the MariaDB replica: {e}")))
}

/// capgate's MySQL front end running in this process on a free port.
pub struct MyProxy {
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has `admin`.
    pub admin: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MyProxy {
    /// In front of the shared primary, with `extra` TOML (top-level keys, then tables).
    pub fn start(extra: &str) -> MyProxy {
        MyProxy::start_for(&format!("mysql://capgate@127.0.0.1:{}/", primary().port()), extra)
    }

    pub fn start_for(primary_url: &str, extra: &str) -> MyProxy {
        let (top, tables) = crate::support::split_extra(extra);
        let text = format!("site = \"test\"\nlisten = \"127.0.0.1:0\"\n{top}\n[primary]\nurl = \"{primary_url}\"\n{tables}");
        MyProxy::start_config(&text, &crate::support::scratch("myproxy"))
    }

    pub fn start_config(text: &str, dir: &std::path::Path) -> MyProxy {
        let config =
            Arc::new(Config::parse(text, &dir.join("capgate.toml")).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}")));
        let (runtime, addr, admin, shared) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let server = runtime.block_on(Server::bind(config)).expect("bind proxy");
            let (addr, admin, shared) = (server.local_addr(), server.admin_addr(), server.shared());
            runtime.spawn(server.run(std::future::pending(), std::future::pending()));
            (runtime, addr, admin, shared)
        })
        .join()
        .expect("proxy start thread");
        MyProxy { addr, admin, shared, runtime: Some(runtime) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A mysql_async URL to the proxy.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str) -> String {
        url_at(self.port(), user, password, db)
    }
}

impl Drop for MyProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A mysql_async URL. `prefer_socket=false`: by default mysql_async asks the server for its
/// Unix socket and silently reconnects through it, which would bypass capgate.
pub fn url_at(port: u16, user: &str, password: Option<&str>, db: &str) -> String {
    let auth = match password {
        Some(p) => format!("{user}:{p}"),
        None => user.to_owned(),
    };
    format!("mysql://{auth}@127.0.0.1:{port}/{db}?prefer_socket=false")
}

/// The mariadb client over TCP to `port` (`--no-defaults`), with `args`, reading `stdin`.
pub fn mariadb(port: u16, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1"])
        .arg(format!("--port={port}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mariadb");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("mariadb output");
    let _ = writer.join();
    out
}

/// One statement with the mariadb client as `capgate`; stdout, or a panic with stderr.
#[allow(dead_code)]
pub fn sql_at(port: u16, sql: &str) -> String {
    let out = mariadb(port, &["-u", "capgate", "-N", "-B", "-e", sql], "");
    assert!(out.status.success(), "mariadb {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// A mysql_async connection pool-less connection.
pub async fn connect(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The server error code of a mysql_async error, or a panic saying what came instead.
pub fn error_code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("expected a server error, got: {other}"),
    }
}

/// The number after `label` in sysbench's report (e.g. `transactions:`).
pub fn sysbench_figure(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{report}"))
}

/// Runs sysbench `script` `command` at `port` on database `db` (2 tables of `rows` rows);
/// returns (success, stdout and stderr).
pub fn sysbench(port: u16, script: &str, db: &str, rows: u32, command: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("sysbench")
        .arg(script)
        .args(["--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-user=capgate", "--mysql-ssl=off"])
        .arg(format!("--mysql-db={db}"))
        .arg(format!("--mysql-port={port}"))
        .args(["--tables=2".to_owned(), format!("--table-size={rows}")])
        .args(extra)
        .arg(command)
        .output()
        .expect("run sysbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
