//! Throwaway PostgreSQL servers.
//!
//! `initdb` costs seconds, so it runs once per machine and PostgreSQL major version into a
//! template directory; each [`PgServer`] is a `cp -a` of it with its own configuration,
//! port and unix socket directory, started as a direct child process (not through
//! `pg_ctl`) so we know the postmaster's pid and can stop, crash and restart it at will.
//! PostgreSQL refuses to run as root, so initdb and postgres run as the `postgres` user.

use super::process::Supervised;
use super::{copy_dir, log_since, new_instance, run, tcp_connect, template, Launch, OsUser, TestbedError, READY_TIMEOUT};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How a [`PgServer`] differs from the default one.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra postgresql.conf settings, written after the testbed defaults so they win.
    /// Values are quoted for you (PostgreSQL accepts quoted values for every type).
    pub conf: Vec<(String, String)>,
    /// Full pg_hba.conf lines; None = `local all all trust` + `host all all 127.0.0.1/32 trust`.
    /// `psql()` connects as `postgres` over TCP from 127.0.0.1, so keep that allowed.
    pub hba: Option<Vec<String>>,
    /// (cert.pem, key.pem) to serve TLS with: copied into the data dir, and `ssl = on`.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// One more address to listen on besides 127.0.0.1 (e.g. inside a network namespace).
    pub listen_extra: Option<String>,
    /// Run the server (and `psql()`) inside this network namespace, through `ip netns exec`
    /// (needs root). 127.0.0.1 then is the namespace's own loopback, unreachable from
    /// outside it: other processes reach the server on `listen_extra`.
    pub netns: Option<String>,
}

/// A private PostgreSQL server; stopped and deleted on drop (or by its watchdog).
pub struct PgServer {
    /// Directory of the PostgreSQL binaries (postgres, psql, pgbench...).
    bin_dir: PathBuf,
    /// Instance directory holding data/, postgres.log and the unix socket.
    dir: PathBuf,
    /// The cluster's data directory (`dir/data`).
    data_dir: PathBuf,
    /// Server log: the postmaster's stderr, appended to across restarts.
    log: PathBuf,
    /// TCP port on 127.0.0.1, fixed once the first start succeeded.
    port: u16,
    /// The OS user postgres runs as.
    user: OsUser,
    /// The network namespace the server and `psql()` run in (see [`PgOptions::netns`]).
    netns: Option<String>,
    /// The postmaster process and its watchdog; a Mutex because servers are shared.
    proc: Mutex<Supervised>,
}

impl PgServer {
    /// Creates a new cluster from the template and starts it on a free port.
    pub fn start(opts: PgOptions) -> Result<PgServer, TestbedError> {
        let bin_dir = bin_dir()?;
        let user = OsUser::get("postgres")?;
        let major = major_version(&bin_dir)?;
        let template = template(&format!("pg{major}-template"), |tmp| initdb(&bin_dir, user, tmp))?;
        let (dir, watchdog) = new_instance("pg", user, "QUIT")?;
        // From here on, dropping `srv` removes everything again.
        let mut srv = PgServer {
            data_dir: dir.join("data"),
            log: dir.join("postgres.log"),
            dir,
            bin_dir,
            port: 0,
            user,
            netns: opts.netns.clone(),
            proc: Mutex::new(Supervised::new(watchdog)),
        };
        copy_dir(&template, &srv.data_dir)?;
        srv.configure_files(&opts)?;
        let base_conf = fs::read_to_string(template.join("postgresql.conf"))
            .map_err(|e| TestbedError::new(format!("reading template postgresql.conf: {e}")))?;
        for attempt in 1.. {
            srv.port = super::free_port();
            let conf = format!("{base_conf}\n# capgate testbed\n{}", srv.settings(&opts));
            fs::write(srv.data_dir.join("postgresql.conf"), conf)
                .map_err(|e| TestbedError::new(format!("writing postgresql.conf: {e}")))?;
            match srv.launch(&mut srv.lock())? {
                Launch::Ready => break,
                Launch::PortTaken if attempt < 5 => continue,
                Launch::PortTaken => return Err(TestbedError::with_log("postgres: no free port after 5 tries", &srv.log)),
            }
        }
        Ok(srv)
    }

    /// One default-options server per process, started on first use. Never dropped: its
    /// watchdog removes it when the process exits. Panics if it cannot start.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| PgServer::start(PgOptions::default()).unwrap_or_else(|e| panic!("shared PostgreSQL server: {e}")))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://user@127.0.0.1:PORT/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}:{}/{db}", self.host(), self.port)
    }

    /// URL of the `postgres` superuser on the `postgres` database.
    pub fn superuser_url(&self) -> String {
        self.url("postgres", "postgres")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Path of a PostgreSQL binary of the same installation (psql, pgbench, pg_dump...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Runs `sql` with `psql -X -w -v ON_ERROR_STOP=1 -tA` as postgres over TCP; returns
    /// its stdout without the final newline. Several statements may be separated by `;`.
    pub fn psql(&self, sql: &str) -> Result<String, TestbedError> {
        self.psql_with("", sql)
    }

    /// `psql()` on database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String, TestbedError> {
        self.psql_with(&format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'")), sql)
    }

    /// `psql()` with extra conninfo (`sslmode=require`, `dbname=x`...; later keys win).
    fn psql_with(&self, conninfo: &str, sql: &str) -> Result<String, TestbedError> {
        let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10 {conninfo}", self.port);
        let mut cmd = self.command_in_netns(self.bin("psql"));
        cmd.args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-tA", "-d", &conninfo, "-c", sql]);
        let out = run(&mut cmd).map_err(|e| TestbedError::with_log(format!("psql on port {}: {e}", self.port), &self.log))?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// `CREATE DATABASE name` (copied from template1, which takes a few milliseconds).
    pub fn create_database(&self, name: &str) -> Result<(), TestbedError> {
        self.psql(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""))).map(|_| ())
    }

    /// Fast shutdown (SIGINT: roll back sessions, checkpoint); waits until the postmaster
    /// has exited, escalating to SIGKILL after 60 s.
    pub fn stop(&self) -> Result<(), TestbedError> {
        self.lock().terminate(libc::SIGINT, Duration::from_secs(60))
    }

    /// Simulates a crash: immediate shutdown (SIGQUIT, no checkpoint, so the next start runs
    /// crash recovery), SIGKILL after 5 s; waits until the postmaster has exited.
    pub fn kill(&self) -> Result<(), TestbedError> {
        self.lock().terminate(libc::SIGQUIT, Duration::from_secs(5))
    }

    /// Starts the server again on the same data directory and port (stops it first if it
    /// is running).
    pub fn restart(&self) -> Result<(), TestbedError> {
        let mut proc = self.lock();
        proc.terminate(libc::SIGINT, Duration::from_secs(60))?;
        super::relaunch_on_same_port("postgres", self.port, &self.log, || self.launch(&mut proc))
    }

    pub fn is_running(&self) -> bool {
        self.lock().is_running()
    }

    /// The postmaster's pid while it runs (tests check it is really gone).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().pid()
    }

    fn lock(&self) -> MutexGuard<'_, Supervised> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings appended to the template's postgresql.conf.
    fn settings(&self, opts: &PgOptions) -> String {
        let listen = match &opts.listen_extra {
            Some(extra) => format!("127.0.0.1,{extra}"),
            None => "127.0.0.1".to_string(),
        };
        let fixed = [("max_prepared_transactions", "100"), ("max_connections", "200"), ("wal_level", "logical")];
        let fixed = fixed.into_iter().chain([("fsync", "on"), ("logging_collector", "off")]);
        let mut conf: Vec<(String, String)> = vec![
            ("listen_addresses".into(), listen),
            ("port".into(), self.port.to_string()),
            ("unix_socket_directories".into(), self.dir.display().to_string()),
        ];
        conf.extend(fixed.map(|(k, v)| (k.to_string(), v.to_string())));
        if opts.ssl.is_some() {
            conf.push(("ssl".into(), "on".into()));
            conf.push(("ssl_cert_file".into(), "server.crt".into()));
            conf.push(("ssl_key_file".into(), "server.key".into()));
        }
        conf.extend(opts.conf.iter().cloned());
        conf.iter().map(|(k, v)| format!("{k} = {}\n", quote_conf(v))).collect()
    }

    /// Writes pg_hba.conf and installs the TLS certificate and key.
    fn configure_files(&self, opts: &PgOptions) -> Result<(), TestbedError> {
        let hba = match &opts.hba {
            Some(lines) => lines.join("\n") + "\n",
            None => "local all all trust\nhost all all 127.0.0.1/32 trust\n".to_string(),
        };
        let write = |name: &str, data: &[u8]| {
            fs::write(self.data_dir.join(name), data).map_err(|e| TestbedError::new(format!("writing {name}: {e}")))
        };
        write("pg_hba.conf", hba.as_bytes())?;
        if let Some((cert, key)) = &opts.ssl {
            let read = |p: &Path| fs::read(p).map_err(|e| TestbedError::new(format!("reading {}: {e}", p.display())));
            write("server.crt", &read(cert)?)?;
            write("server.key", &read(key)?)?;
            // postgres refuses a key file readable by group or others.
            fs::set_permissions(self.data_dir.join("server.key"), fs::Permissions::from_mode(0o600))
                .map_err(|e| TestbedError::new(format!("chmod server.key: {e}")))?;
        }
        self.user.chown_tree(&self.data_dir)
    }

    /// Spawns the postmaster and waits until it accepts connections, or reports that the
    /// port was taken (the caller retries), or fails with the log tail.
    fn launch(&self, proc: &mut Supervised) -> Result<Launch, TestbedError> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log);
        let log = log.map_err(|e| TestbedError::new(format!("opening {}: {e}", self.log.display())))?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().map_err(|e| TestbedError::new(format!("dup log fd: {e}")))?;
        let mut cmd = match &self.netns {
            // `ip` needs root to enter the namespace; setpriv then drops to the postgres
            // user. Both exec, so the pid we get is the postmaster's.
            Some(_) => {
                let mut cmd = self.command_in_netns("setpriv");
                cmd.arg(format!("--reuid={}", self.user.uid)).arg(format!("--regid={}", self.user.gid));
                cmd.arg("--clear-groups").arg(self.bin("postgres"));
                cmd
            }
            None => {
                let mut cmd = Command::new(self.bin("postgres"));
                cmd.uid(self.user.uid).gid(self.user.gid);
                cmd
            }
        };
        let child = cmd
            .arg("-D")
            .arg(&self.data_dir)
            .process_group(0)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| TestbedError::new(format!("spawning {}: {e}", self.bin("postgres").display())))?;
        let pid = child.id();
        proc.attach(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !proc.is_running() {
                if log_since(&self.log, offset).contains("Address already in use") {
                    return Ok(Launch::PortTaken);
                }
                return Err(TestbedError::with_log(format!("postgres on port {} exited during startup", self.port), &self.log));
            }
            // Inside a namespace our 127.0.0.1 is not the server's: the pid file has to do.
            if self.pid_file_says_ready(pid) && (self.netns.is_some() || tcp_connect(self.port).is_some()) {
                return Ok(Launch::Ready);
            }
            if Instant::now() >= deadline {
                let _ = proc.terminate(libc::SIGQUIT, Duration::from_secs(5));
                return Err(TestbedError::with_log(format!("postgres on port {} not ready after {READY_TIMEOUT:?}", self.port), &self.log));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// `program`, prefixed with `ip netns exec NAME` when the server lives in a namespace.
    fn command_in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Whether postmaster.pid belongs to `pid` and its status line (8th) says "ready".
    fn pid_file_says_ready(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else { return false };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str()) && lines.get(7).map(|l| l.trim()) == Some("ready")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        self.proc.get_mut().unwrap_or_else(|e| e.into_inner()).shutdown_and_remove(libc::SIGINT, &dir);
    }
}

/// A postgresql.conf value in single quotes (kept as is if already quoted).
fn quote_conf(value: &str) -> String {
    if value.starts_with('\'') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// The PostgreSQL bin dir: $CAPGATE_PGBIN, else the highest /usr/lib/postgresql/N/bin,
/// else `pg_config --bindir`.
pub fn bin_dir() -> Result<PathBuf, TestbedError> {
    if let Some(dir) = std::env::var_os("CAPGATE_PGBIN") {
        return Ok(PathBuf::from(dir));
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return Ok(bin);
    }
    let out = run(Command::new("pg_config").arg("--bindir"))
        .map_err(|e| TestbedError::new(format!("no PostgreSQL found (set CAPGATE_PGBIN): {e}")))?;
    Ok(PathBuf::from(out.trim()))
}

/// "15" from `postgres (PostgreSQL) 15.18 (Debian ...)`; names the template.
fn major_version(bin_dir: &Path) -> Result<String, TestbedError> {
    let out = run(Command::new(bin_dir.join("postgres")).arg("--version"))?;
    let version = out.split_whitespace().nth(2).unwrap_or("");
    let major: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    if major.is_empty() {
        return Err(TestbedError::new(format!("cannot parse postgres --version output: {out}")));
    }
    Ok(major)
}

/// Runs initdb as the postgres user into `dir` (an empty directory).
fn initdb(bin_dir: &Path, user: OsUser, dir: &Path) -> Result<(), TestbedError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| TestbedError::new(format!("chmod {}: {e}", dir.display())))?;
    user.chown_tree(dir)?;
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "-D"]).arg(dir);
    run(cmd.uid(user.uid).gid(user.gid).current_dir("/")).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::process::alive;
    use super::*;

    #[test]
    fn two_servers_start_concurrently_on_distinct_ports() {
        let started = Instant::now();
        let handles: Vec<_> = (0..2).map(|_| std::thread::spawn(|| PgServer::start(PgOptions::default()))).collect();
        let servers: Vec<PgServer> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        eprintln!("two servers started in {:?}", started.elapsed());
        assert_ne!(servers[0].port(), servers[1].port());
        for srv in &servers {
            assert!(srv.is_running());
            let settings = "select 1, current_setting('wal_level'), current_setting('max_prepared_transactions'), \
                            current_setting('max_connections'), current_setting('fsync')";
            assert_eq!(srv.psql(settings).unwrap(), "1|logical|100|200|on");
            assert_eq!(srv.url("app", "db"), format!("postgres://app@127.0.0.1:{}/db", srv.port()));
            assert!(srv.bin("pgbench").is_file());
        }
        let t = Instant::now();
        servers[0].create_database("app \"db\"").unwrap();
        eprintln!("create_database took {:?}", t.elapsed());
        assert_eq!(servers[0].psql_with("dbname='app \"db\"'", "select current_database()").unwrap(), "app \"db\"");
        let err = servers[0].psql("select * from no_such_table").unwrap_err().to_string();
        assert!(err.contains("no_such_table"), "{err}");
        let dirs: Vec<PathBuf> = servers.iter().map(|s| s.dir.clone()).collect();
        let pids: Vec<u32> = servers.iter().map(|s| s.pid().unwrap()).collect();
        drop(servers);
        for (dir, pid) in dirs.iter().zip(pids) {
            assert!(!dir.exists(), "{} left behind", dir.display());
            assert!(!alive(pid));
        }
    }

    #[test]
    fn hba_ssl_conf_and_listen_extra_take_effect() {
        let certs = std::env::temp_dir().join(format!("capgate-pg-cert-{}", std::process::id()));
        fs::create_dir_all(&certs).unwrap();
        let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert))
        .unwrap();
        let srv = PgServer::start(PgOptions {
            conf: vec![("max_connections".into(), "50".into()), ("cluster_name".into(), "it's".into())],
            hba: Some(vec!["local all all trust".into(), "hostssl all all 127.0.0.0/8 trust".into()]),
            ssl: Some((cert, key)),
            listen_extra: Some("127.0.0.2".into()),
            netns: None,
        })
        .unwrap();
        fs::remove_dir_all(&certs).unwrap();
        let ssl = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        assert_eq!(srv.psql_with("sslmode=require", ssl).unwrap(), "t");
        let err = srv.psql_with("sslmode=disable", "select 1").unwrap_err().to_string();
        assert!(err.contains("pg_hba.conf"), "{err}");
        assert_eq!(srv.psql("show max_connections").unwrap(), "50");
        assert_eq!(srv.psql("show cluster_name").unwrap(), "it's");
        let extra = srv.psql_with("host=127.0.0.2 sslmode=require", "select inet_server_addr()").unwrap();
        assert_eq!(extra, "127.0.0.2");
    }

    #[test]
    fn stop_and_restart_keep_data_and_port() {
        let srv = PgServer::start(PgOptions::default()).unwrap();
        let port = srv.port();
        srv.psql("create table t (x int); insert into t values (42)").unwrap();
        let pid = srv.pid().unwrap();
        srv.stop().unwrap();
        assert!(!srv.is_running());
        assert!(!alive(pid));
        assert!(tcp_connect(port).is_none());
        assert!(srv.psql("select 1").is_err());
        srv.stop().unwrap(); // stopping a stopped server is fine
                             // Someone else holds our port for a while: restart waits for it.
        let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let release = std::thread::spawn(move || {
            sleep(Duration::from_millis(600));
            drop(squatter);
        });
        let t = Instant::now();
        srv.restart().unwrap();
        eprintln!("restart with a squatted port took {:?}", t.elapsed());
        release.join().unwrap();
        assert!(fs::read_to_string(&srv.log).unwrap().contains("Address already in use"));
        assert!(srv.is_running());
        assert_eq!(srv.port(), port);
        assert_eq!(srv.psql("select x from t").unwrap(), "42");
        srv.restart().unwrap(); // restarting a running server stops it first
        assert_eq!(srv.psql("select x from t").unwrap(), "42");
    }

    #[test]
    fn kill_then_restart_recovers() {
        let srv = PgServer::start(PgOptions::default()).unwrap();
        srv.psql("create table t (x int); insert into t select generate_series(1, 1000)").unwrap();
        let pid = srv.pid().unwrap();
        srv.kill().unwrap();
        assert!(!srv.is_running());
        assert!(!alive(pid));
        srv.restart().unwrap();
        assert_eq!(srv.psql("select count(*) from t").unwrap(), "1000");
        let log = fs::read_to_string(&srv.log).unwrap();
        assert!(log.contains("not properly shut down"), "no crash recovery in log:\n{log}");
    }

    #[test]
    fn shared_server_is_one_per_process() {
        let a = PgServer::shared();
        assert!(std::ptr::eq(a, PgServer::shared()));
        assert_eq!(a.psql("select current_user").unwrap(), "postgres");
        assert_eq!(a.superuser_url(), format!("postgres://postgres@127.0.0.1:{}/postgres", a.port()));
    }
}
