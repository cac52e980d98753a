//! capgate as a process a chaos nemesis can SIGKILL, start again and send a policy reload:
//! shared by the PostgreSQL suite (tests/chaos.rs) and the MariaDB one (tests/chaos_mysql.rs).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One capgate process, run from the config file it was started with; killed when dropped.
/// Why a process and not a task: a SIGKILL must lose everything capgate held in memory.
pub struct Capgate {
    child: Option<Child>,
    config: PathBuf,
    policy: PathBuf,
    policy_text: &'static str,
    /// Where clients connect.
    pub port: u16,
    /// The admin endpoints' port.
    pub admin: u16,
}

impl Capgate {
    /// Writes `policy` and the configuration `config(port, admin, policy file)` into `dir`,
    /// starts capgate and waits until it listens.
    pub fn start(dir: &Path, policy: &'static str, config: impl FnOnce(u16, u16, &Path) -> String) -> Capgate {
        let port = capgate::testbed::free_port();
        let admin = capgate::testbed::free_port();
        let policy_file = dir.join("policy.toml");
        std::fs::write(&policy_file, policy).unwrap();
        let config_file = dir.join("capgate.toml");
        std::fs::write(&config_file, config(port, admin, &policy_file)).unwrap();
        let mut c = Capgate { child: None, config: config_file, policy: policy_file, policy_text: policy, port, admin };
        c.spawn();
        c
    }

    /// Starts capgate (again), its log appended to `capgate.log`, and waits until it listens.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        // CAPGATE_BIN: a copy of the binary, so a long run is not disturbed by rebuilds.
        let bin = std::env::var("CAPGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_capgate").to_owned());
        let child = Command::new(bin)
            .args(["run", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start capgate");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "capgate never listened; see {}", self.log().display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Rewrites the policy file (the same rules, a new comment) and sends SIGHUP.
    pub fn reload_policy(&self) {
        std::fs::write(&self.policy, format!("{}# reloaded at {:?}\n", self.policy_text, Instant::now())).unwrap();
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    /// `/status` as JSON, or None when capgate does not answer.
    #[allow(dead_code)] // only the PostgreSQL suite samples it (bounded lag)
    pub fn status(&self) -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
    }

    /// The configuration file it runs with (for `capgate verify --config`).
    #[allow(dead_code)] // only the MariaDB suite runs verify as a process
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// capgate's log file.
    pub fn log(&self) -> PathBuf {
        self.config.with_extension("log")
    }
}

/// SIGKILL `capgate`, start it again, then wait `hold`: the nemesis's restart, alone or in the
/// middle of a fault the caller holds (a cut link, a stopped replica: it then starts without
/// its replica).
pub async fn kill_and_restart(capgate: &std::sync::Mutex<Capgate>, hold: Duration) {
    capgate.lock().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| capgate.lock().unwrap().spawn());
    tokio::time::sleep(hold).await;
}

impl Drop for Capgate {
    fn drop(&mut self) {
        self.kill();
    }
}
