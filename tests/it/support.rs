//! Shared pieces of the integration tests: the real PostgreSQL servers this test binary
//! starts once, in-process proxies in front of them, and a raw protocol client for the
//! cases no driver will produce (garbage frames, FunctionCall, GSSENCRequest).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use capgate::config::Config;
use capgate::frontend::postgres::Server;
use capgate::testbed::{PgOptions, PgServer};

/// Passwords of the users the shared primary knows, one per authentication method.
pub const MD5_PASSWORD: &str = "md5-secret";
pub const SCRAM_PASSWORD: &str = "scram-secret";
pub const CLEARTEXT_PASSWORD: &str = "plain-secret";

/// The primary shared by every test of this binary. Users `md5_user`, `scram_user` and
/// `pw_user` need their passwords (md5, SCRAM-SHA-256, cleartext); everybody else is trusted.
pub fn primary() -> &'static PgServer {
    static PRIMARY: OnceLock<PgServer> = OnceLock::new();
    PRIMARY.get_or_init(|| {
        let hba = [
            "local all all trust",
            "host all md5_user 127.0.0.1/32 md5",
            "host all scram_user 127.0.0.1/32 scram-sha-256",
            "host all pw_user 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 trust",
        ];
        let pg = PgServer::start(PgOptions { hba: Some(hba.iter().map(|s| s.to_string()).collect()), ..Default::default() })
            .unwrap_or_else(|e| panic!("cannot start the test primary: {e}"));
        pg.psql(&format!(
            "SET password_encryption = 'md5'; CREATE USER md5_user PASSWORD '{MD5_PASSWORD}' SUPERUSER;
             SET password_encryption = 'scram-sha-256'; CREATE USER scram_user PASSWORD '{SCRAM_PASSWORD}' SUPERUSER;
             CREATE USER pw_user PASSWORD '{CLEARTEXT_PASSWORD}' SUPERUSER;
             CREATE USER app PASSWORD 'app-secret' SUPERUSER;"
        ))
        .unwrap_or_else(|e| panic!("cannot create the test users: {e}"));
        pg
    })
}

/// A second server, for tests that need a replica next to the primary (verify). Trusts
/// every local user. Tests that share it use their own database names.
pub fn replica() -> &'static PgServer {
    static REPLICA: OnceLock<PgServer> = OnceLock::new();
    REPLICA.get_or_init(|| PgServer::start(PgOptions::default()).unwrap_or_else(|e| panic!("cannot start the test replica: {e}")))
}

/// A scratch directory for config files and certificates, removed with the process's
/// temp files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capgate-it-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A capgate proxy running in this process on a free port, on its own runtime so that
/// blocking tests (psql, pgbench) and async tests can use it alike.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has `admin`.
    pub admin: Option<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Start a proxy in front of the shared primary with `extra` TOML appended to a minimal
    /// configuration (listen on port 0).
    pub fn start(extra: &str) -> Proxy {
        Proxy::start_for(&primary().url("postgres", "postgres"), extra)
    }

    /// Start a proxy whose primary URL is `primary_url`.
    pub fn start_for(primary_url: &str, extra: &str) -> Proxy {
        let (top, tables) = split_extra(extra);
        let text = format!("site = \"test\"\nlisten = \"127.0.0.1:0\"\n{top}\n[primary]\nurl = \"{primary_url}\"\n{tables}");
        Proxy::start_config(&text, &scratch("proxy"))
    }

    /// Start a proxy from a whole configuration text, as if read from `dir/capgate.toml`.
    pub fn start_config(text: &str, dir: &Path) -> Proxy {
        let config =
            Arc::new(Config::parse(text, &dir.join("capgate.toml")).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}")));
        // Built on a plain thread: async tests call this from inside their own runtime.
        let (runtime, addr, admin) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let server = runtime.block_on(Server::bind(config)).expect("bind proxy");
            let addr = server.local_addr();
            let admin = server.admin_addr();
            runtime.spawn(server.run(std::future::pending(), std::future::pending()));
            (runtime, addr, admin)
        })
        .join()
        .expect("proxy start thread");
        Proxy { addr, admin, runtime: Some(runtime) }
    }

    /// A libpq URL to the proxy.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}:{}/{db}", self.addr.ip(), self.addr.port())
    }

    /// The same for a direct connection to the shared primary.
    pub fn direct_url(user: &str, db: &str) -> String {
        primary().url(user, db)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Extra config text: top-level keys first, tables (`[...]`) after the primary.
pub fn split_extra(extra: &str) -> (String, String) {
    match extra.find('[') {
        Some(i) if extra[..i].trim().is_empty() || extra[..i].ends_with('\n') => (extra[..i].to_owned(), extra[i..].to_owned()),
        _ => (extra.to_owned(), String::new()),
    }
}

/// Connect with tokio-postgres (no TLS) and drive the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The SQLSTATE of a tokio-postgres error, or a panic saying what came instead.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.code().code().to_owned(),
        None => panic!("expected a database error, got: {e}"),
    }
}

/// A hand-driven protocol client for what drivers never send.
pub struct Raw {
    pub stream: TcpStream,
}

/// A message received by [`Raw`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// An ErrorResponse / NoticeResponse field (`b'C'` for the SQLSTATE, `b'M'` the message).
    pub fn field(&self, code: u8) -> Option<String> {
        capgate::protocol::postgres::message::error_fields(&self.body).into_iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Raw { stream }
    }

    /// Connect and log in as a trusted user, reading up to the first ReadyForQuery.
    pub fn login(addr: SocketAddr, user: &str) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&startup(&[("user", user), ("database", "postgres")]));
        let msgs = raw.until_ready();
        assert!(msgs.iter().any(|m| m.tag == b'R'), "no authentication message in {msgs:?}");
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw send");
    }

    /// Read one message; `None` when the peer closed.
    pub fn recv(&mut self) -> Option<Msg> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).ok()?;
        Some(Msg { tag: head[0], body })
    }

    /// Read messages up to and including ReadyForQuery (or until the peer closes).
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv() {
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// True when the peer has closed the connection (reads EOF or reset).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// The shared primary's address, for raw connections that compare it with capgate.
pub fn direct_addr() -> SocketAddr {
    let url = Proxy::direct_url("postgres", "postgres");
    let hostport = url.split('@').nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_owned();
    hostport.parse().unwrap_or_else(|e| panic!("{hostport}: {e}"))
}

/// A [`Raw`] client logged in to the shared primary directly.
pub fn login_direct(user: &str) -> Raw {
    Raw::login(direct_addr(), user)
}

/// A StartupMessage for protocol 3.0.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_minor(0, params)
}

/// A StartupMessage for protocol 3.`minor` with `params`.
pub fn startup_minor(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = ((3u32 << 16) | u32::from(minor)).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A tagged frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query frame.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// Path of a PostgreSQL client program (psql, pgbench) of the installed version.
pub fn pg_bin(name: &str) -> PathBuf {
    primary().bin(name)
}

/// Run one SQL string with psql against `url` (tuples only, unaligned) and return stdout;
/// panics with stderr on failure.
pub fn psql_at(url: &str, sql: &str) -> String {
    let out =
        std::process::Command::new(pg_bin("psql")).args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql, url]).output().expect("run psql");
    assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The capgate binary as a process a test can SIGKILL and restart, its log (stderr, at
/// `info`) appended to a file the test reads.
pub struct Process {
    child: Child,
    port: u16,
}

impl Process {
    pub fn start(config: &std::path::Path, port: u16, log: &std::path::Path) -> Process {
        let log = std::fs::File::options().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start capgate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "capgate never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Process { child, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// SIGHUP: reload the policy file.
    pub fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
