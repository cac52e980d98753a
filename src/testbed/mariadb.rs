//! Throwaway MariaDB servers.
//!
//! Like [`super::pg`]: `mariadb-install-db` runs once per machine and MariaDB version into a
//! template directory, and each [`MariaDb`] is a `cp -a` of it started as a direct child
//! process (`mariadbd --no-defaults`, so the machine's my.cnf never leaks in). mariadbd
//! drops to the `mysql` user itself (`--user=mysql`). Tests log in over TCP as `capgate`
//! (no password, all privileges); the harness itself uses `root` over the unix socket.

use super::process::Supervised;
use super::{copy_dir, log_since, new_instance, run, tcp_connect, template, Launch, OsUser, TestbedError, READY_TIMEOUT};
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Redo log size for template and servers alike: the 96 MB default would make every copy
/// 4x bigger, and a different size at start would make InnoDB resize the log.
const INNODB_LOG_FILE_SIZE: &str = "--innodb-log-file-size=8M";

/// How a [`MariaDb`] differs from the default one.
#[derive(Clone, Debug, Default)]
pub struct MariaDbOptions {
    /// Extra server options, passed as `--key=value` after the testbed defaults so they win.
    pub conf: Vec<(String, String)>,
}

/// A private MariaDB server; stopped and deleted on drop (or by its watchdog).
pub struct MariaDb {
    /// Instance directory holding data/, error.log, the socket and the pid file.
    dir: PathBuf,
    /// The server's data directory (`dir/data`).
    data_dir: PathBuf,
    /// Error log (`--log-error`), appended to across restarts.
    log: PathBuf,
    /// Unix socket the harness's root client connects through.
    socket: PathBuf,
    /// TCP port on 127.0.0.1, fixed once the first start succeeded.
    port: u16,
    /// Options given to `start`, reused by `restart`.
    opts: MariaDbOptions,
    /// The mariadbd process and its watchdog; a Mutex because servers are shared.
    proc: Mutex<Supervised>,
}

impl MariaDb {
    /// Creates a new server from the template and starts it on a free port.
    pub fn start(opts: MariaDbOptions) -> Result<MariaDb, TestbedError> {
        let user = OsUser::get("mysql")?;
        let version = version()?;
        let template = template(&format!("mariadb-{version}-template"), install_db)?;
        let (dir, watchdog) = new_instance("mariadb", user, "KILL")?;
        // From here on, dropping `db` removes everything again.
        let mut db = MariaDb {
            data_dir: dir.join("data"),
            log: dir.join("error.log"),
            socket: dir.join("mysqld.sock"),
            dir,
            port: 0,
            opts,
            proc: Mutex::new(Supervised::new(watchdog)),
        };
        copy_dir(&template, &db.data_dir)?;
        // Created here so it belongs to mysql: we also point mariadbd's stderr at it.
        fs::write(&db.log, b"").map_err(|e| TestbedError::new(format!("creating {}: {e}", db.log.display())))?;
        user.chown_tree(&db.log)?;
        for attempt in 1.. {
            db.port = super::free_port();
            match db.launch(&mut db.lock())? {
                Launch::Ready => break,
                Launch::PortTaken if attempt < 5 => continue,
                Launch::PortTaken => return Err(TestbedError::with_log("mariadbd: no free port after 5 tries", &db.log)),
            }
        }
        Ok(db)
    }

    /// One default-options server per process, started on first use. Never dropped: its
    /// watchdog removes it when the process exits. Panics if it cannot start.
    pub fn shared() -> &'static MariaDb {
        static SHARED: OnceLock<MariaDb> = OnceLock::new();
        SHARED.get_or_init(|| MariaDb::start(MariaDbOptions::default()).unwrap_or_else(|e| panic!("shared MariaDB server: {e}")))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://user@127.0.0.1:PORT/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("mysql://{user}@{}:{}/{db}", self.host(), self.port)
    }

    /// Runs `sql` with the mariadb client as root over the unix socket in batch mode
    /// (`-N -B`: tab-separated, no column names); returns stdout without the final newline.
    pub fn sql(&self, sql: &str) -> Result<String, TestbedError> {
        let out = run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-N", "-B", "-e", sql]))
        .map_err(|e| TestbedError::with_log(format!("mariadb client on port {}: {e}", self.port), &self.log))?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// Normal shutdown (SIGTERM); waits until mariadbd has exited, SIGKILL after 60 s.
    pub fn stop(&self) -> Result<(), TestbedError> {
        self.lock().terminate(libc::SIGTERM, Duration::from_secs(60))
    }

    /// Simulates a crash: SIGKILL (the next start runs InnoDB crash recovery); waits until
    /// mariadbd has exited.
    pub fn kill(&self) -> Result<(), TestbedError> {
        self.lock().terminate(libc::SIGKILL, Duration::from_secs(5))
    }

    /// Starts the server again on the same data directory and port (stops it first if it
    /// is running).
    pub fn restart(&self) -> Result<(), TestbedError> {
        let mut proc = self.lock();
        proc.terminate(libc::SIGTERM, Duration::from_secs(60))?;
        super::relaunch_on_same_port("mariadbd", self.port, &self.log, || self.launch(&mut proc))
    }

    pub fn is_running(&self) -> bool {
        self.lock().is_running()
    }

    /// mariadbd's pid while it runs (tests check it is really gone).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().pid()
    }

    fn lock(&self) -> MutexGuard<'_, Supervised> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns mariadbd, waits until it greets TCP clients, then makes sure the `capgate`
    /// user exists. Reports a port clash so the caller can retry.
    fn launch(&self, proc: &mut Supervised) -> Result<Launch, TestbedError> {
        let offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new().append(true).open(&self.log);
        let log = log.map_err(|e| TestbedError::new(format!("opening {}: {e}", self.log.display())))?;
        let stderr = log.try_clone().map_err(|e| TestbedError::new(format!("dup log fd: {e}")))?;
        let path = |flag: &str, p: &Path| format!("--{flag}={}", p.display());
        let mut cmd = Command::new("mariadbd");
        cmd.args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1", "--skip-name-resolve", INNODB_LOG_FILE_SIZE])
            .arg(path("datadir", &self.data_dir))
            .arg(format!("--port={}", self.port))
            .arg(path("socket", &self.socket))
            .arg(path("pid-file", &self.dir.join("mysqld.pid")))
            .arg(path("log-error", &self.log))
            // Temporary tables (information_schema queries use on-disk ones) in the instance's
            // own directory: under a shared /tmp one was seen deleted beneath the server.
            .arg(path("tmpdir", &self.dir))
            .args(self.opts.conf.iter().map(|(k, v)| format!("--{k}={v}")))
            .process_group(0)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = cmd.spawn().map_err(|e| TestbedError::new(format!("spawning mariadbd: {e}")))?;
        proc.attach(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !proc.is_running() {
                if log_since(&self.log, offset).contains("Address already in use") {
                    return Ok(Launch::PortTaken);
                }
                return Err(TestbedError::with_log(format!("mariadbd on port {} exited during startup", self.port), &self.log));
            }
            if greets(self.port) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = proc.terminate(libc::SIGKILL, Duration::ZERO);
                return Err(TestbedError::with_log(format!("mariadbd on port {} not ready after {READY_TIMEOUT:?}", self.port), &self.log));
            }
            sleep(Duration::from_millis(20));
        }
        self.sql("CREATE USER IF NOT EXISTS 'capgate'@'%'; GRANT ALL PRIVILEGES ON *.* TO 'capgate'@'%' WITH GRANT OPTION")
            .map_err(|e| TestbedError::new(format!("creating user capgate: {e}")))?;
        Ok(Launch::Ready)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        self.proc.get_mut().unwrap_or_else(|e| e.into_inner()).shutdown_and_remove(libc::SIGTERM, &dir);
    }
}

/// Whether a MySQL-protocol server on `port` sends its initial handshake: a 4-byte packet
/// header, then protocol version 10.
fn greets(port: u16) -> bool {
    let Some(mut conn) = tcp_connect(port) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).is_ok() && head[4] == 10
}

/// "10.11.19" from `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for ...`; names the template.
fn version() -> Result<String, TestbedError> {
    let out = run(Command::new("mariadbd").arg("--version"))?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let version = words.iter().position(|w| *w == "Ver").and_then(|i| words.get(i + 1)).copied().unwrap_or("");
    let version: String = version.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    if version.is_empty() {
        return Err(TestbedError::new(format!("cannot parse mariadbd --version output: {out}")));
    }
    Ok(version)
}

/// Runs mariadb-install-db into `dir` (root without password, no test database).
fn install_db(dir: &Path) -> Result<(), TestbedError> {
    run(Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(["--skip-name-resolve", INNODB_LOG_FILE_SIZE])
        .arg(format!("--datadir={}", dir.display()))
        .current_dir("/"))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::process::alive;
    use super::*;

    /// The mariadb client as `capgate` over TCP, the way tests and the proxy connect.
    fn sql_over_tcp(db: &MariaDb, sql: &str) -> Result<String, TestbedError> {
        run(Command::new("mariadb")
            .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "-N", "-B"])
            .arg(format!("--port={}", db.port()))
            .args(["-e", sql]))
        .map(|out| out.trim_end().to_string())
    }

    #[test]
    fn start_query_stop_restart() {
        let started = Instant::now();
        let db = MariaDb::start(MariaDbOptions { conf: vec![("max-connections".into(), "77".into())] }).unwrap();
        eprintln!("mariadb started in {:?}", started.elapsed());
        assert!(db.is_running());
        assert!(sql_over_tcp(&db, "select version()").unwrap().contains("MariaDB"));
        assert_eq!(sql_over_tcp(&db, "select current_user()").unwrap(), "capgate@%");
        assert_eq!(db.sql("select @@max_connections").unwrap(), "77");
        assert_eq!(db.url("app", "shop"), format!("mysql://app@127.0.0.1:{}/shop", db.port()));
        sql_over_tcp(&db, "create database shop; create table shop.t (x int) engine=InnoDB; insert into shop.t values (7)").unwrap();

        let (port, pid) = (db.port(), db.pid().unwrap());
        db.stop().unwrap();
        assert!(!db.is_running());
        assert!(!alive(pid));
        assert!(!greets(port));
        let t = Instant::now();
        db.restart().unwrap();
        eprintln!("mariadb restart took {:?}", t.elapsed());
        assert_eq!(db.port(), port);
        assert_eq!(sql_over_tcp(&db, "select x from shop.t").unwrap(), "7");

        sql_over_tcp(&db, "insert into shop.t values (8)").unwrap();
        db.kill().unwrap();
        assert!(!db.is_running());
        db.restart().unwrap();
        assert_eq!(db.sql("select sum(x) from shop.t").unwrap(), "15");
        let err = db.sql("select * from nowhere.t").unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");

        let dir = db.dir.clone();
        drop(db);
        assert!(!dir.exists());
    }

    #[test]
    fn two_servers_and_the_shared_one_coexist() {
        let a = MariaDb::start(MariaDbOptions::default()).unwrap();
        let b = MariaDb::shared();
        assert!(std::ptr::eq(b, MariaDb::shared()));
        assert_ne!(a.port(), b.port());
        assert_eq!(a.sql("select 1").unwrap(), "1");
        assert_eq!(sql_over_tcp(b, "select 2").unwrap(), "2");
    }
}
