//! The main configuration file (TOML), validated into an immutable [`Config`].
//!
//! Loading never half-succeeds: either every key is valid and a `Config` comes back, or a
//! [`ConfigError`] lists every problem found, each naming the file, the key and what was
//! expected. Paths inside the file are relative to the file's own directory. Every key is
//! documented in CONFIG.md; keep the two in step.

mod duration;
mod raw;
pub(crate) mod toml_spans;
pub mod url;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::postgres::scram::Verifier;
pub use duration::parse_duration;
use raw::RawConfig;
pub use url::{DbUrl, RootCert, Scheme, SslMode};

/// The validated configuration of one capgate process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and for resolving relative paths).
    pub file: PathBuf,
    /// This site's name: the origin recorded with replicated writes.
    pub site: String,
    /// Where applications connect.
    pub listen: SocketAddr,
    /// The admin HTTP listener, if any.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoints require; mandatory when `admin` is not loopback.
    pub admin_token: Option<String>,
    /// Users (as they log in through the proxy port) allowed to run the admin SQL commands
    /// (`SHOW CAPGATE …`, `CAPGATE RELOAD`, `CAPGATE VERIFY`).
    pub admin_users: Vec<String>,
    /// The per-table policy file, resolved against the config file's directory.
    pub policy: Option<PathBuf>,
    /// A JSON-lines file every replication conflict is appended to (resolved like `policy`).
    pub conflict_log: Option<PathBuf>,
    /// Client sessions served at once; one more gets SQLSTATE 53300.
    pub max_connections: usize,
    /// How long a shutdown waits for sessions to finish their transactions.
    pub shutdown_timeout: Duration,
    /// How long a prepared transaction on a replica without a decision record is left alone
    /// before recovery rolls it back (presumed abort).
    pub recovery_grace: Duration,
    /// How long a client may take from connecting to being authenticated.
    pub authentication_timeout: Duration,
    /// The largest frame a client may send, in bytes (PostgreSQL's own limit is 1 GB).
    pub max_message_size: u32,
    /// Threads that run client sessions (each a single-threaded runtime).
    pub workers: usize,
    /// Sessions idle outside a transaction for longer than this are closed (57P05).
    pub idle_session_timeout: Option<Duration>,
    pub primary: Primary,
    pub replicas: Vec<Replica>,
    pub tls: Option<TlsConfig>,
    pub users: Vec<User>,
}

/// The site's own database: every session is relayed to it.
#[derive(Debug, Clone)]
pub struct Primary {
    pub url: DbUrl,
}

/// A remote site's database that replicated writes are sent to.
#[derive(Debug, Clone)]
pub struct Replica {
    pub name: String,
    pub url: DbUrl,
    /// A round trip slower than this counts as a partition ("latency is a form of partition").
    pub partition_latency: Duration,
    /// Time between two heartbeats on the health connection.
    pub heartbeat_interval: Duration,
    /// A heartbeat not answered within this is missed (default: twice `partition_latency`).
    pub heartbeat_timeout: Duration,
    /// Bad heartbeats in a row (missed or slower than `partition_latency`) that make a
    /// suspect replica partitioned.
    pub partition_after: u32,
    /// Good heartbeats in a row that make a partitioned replica healthy again.
    pub heal_after: u32,
    /// Most connections to the replica for replication work, open at once.
    pub pool_size: usize,
    /// The replica's site also takes writes and replicates them here (two sites that both
    /// take writes): its own transactions may hold rows a sync commit needs, so a cross-site
    /// lock conflict is possible and one side must yield (decision 0018).
    pub takes_writes: bool,
}

/// TLS towards applications.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub mode: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS when the client asks for it.
    Prefer,
    /// Clients that do not use TLS are refused (SQLSTATE 28000).
    Require,
}

/// A user the proxy authenticates itself; it then logs in upstream with the primary URL's
/// credentials.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub verifier: Verifier,
    /// SHA1(SHA1(password)), what checks a MySQL `mysql_native_password` login (as the server
    /// stores it); only when the user is configured with `password`.
    pub mysql_native: Option<[u8; 20]>,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem: where (line, key as a dotted path) and what is wrong or expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(f, "{}:{line}: {}: {}", self.file.display(), p.key, p.message)?,
                None => write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read and validate `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem { line: None, key: "(file)".into(), message: format!("cannot read: {e}") }],
        })?;
        Config::parse(&text, file)
    }

    /// Validate `text` as if read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let raw = raw::read(text, &mut problems);
        let base = file.parent().map(Path::to_owned).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let lines = raw.as_ref().map(|r| r.lines.clone()).unwrap_or_default();
        let mut v = Validator { base: &base, problems, lines };
        let config = raw.map(|raw| v.config(raw, file));
        match config {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => Err(ConfigError { file: file.to_owned(), problems: v.problems }),
        }
    }
}

/// A replica URL with the defaults for a link between sites: without an explicit `sslmode`,
/// TLS with the chain and host name verified (`verify-full`), against the operating system's
/// roots unless `sslrootcert` says otherwise. A Unix-socket URL keeps libpq's default.
fn between_sites(url: &str) -> String {
    if url.contains("sslmode=") || url.contains("host=/") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut out = format!("{url}{sep}sslmode=verify-full");
    if !url.contains("sslrootcert=") {
        out.push_str("&sslrootcert=system");
    }
    out
}

/// Turns the raw file into a `Config`, collecting every problem instead of stopping at the
/// first.
struct Validator<'a> {
    base: &'a Path,
    problems: Vec<Problem>,
    /// Where each key was written (from the reader), to give problems a line.
    lines: std::collections::HashMap<String, usize>,
}

impl Validator<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.problems.push(Problem { line: self.lines.get(&key).copied(), key, message: message.into() });
    }

    fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
        if raw.site.as_deref().is_some_and(|s| s.trim().is_empty()) {
            self.problem("site", "expected a non-empty site name");
        }
        let listen = self.addr("listen", &raw.listen).unwrap_or_else(|| ([127, 0, 0, 1], 6432).into());
        let admin = raw.admin.as_deref().and_then(|a| self.addr("admin", a));
        if admin.is_some_and(|a| !a.ip().is_loopback()) && raw.admin_token.as_deref().is_none_or(str::is_empty) {
            self.problem(
                "admin_token",
                "the admin listener is not on loopback: set admin_token (requests must then send Authorization: Bearer <token>)",
            );
        }
        let max_connections = if (1..=1_000_000).contains(&raw.max_connections) {
            raw.max_connections as usize
        } else {
            self.problem("max_connections", format!("expected a number from 1 to 1000000, found {}", raw.max_connections));
            1
        };
        let max_message_size = if (1024..=(1 << 30)).contains(&raw.max_message_size) {
            raw.max_message_size as u32
        } else {
            self.problem("max_message_size", format!("expected bytes from 1024 to 1073741824, found {}", raw.max_message_size));
            1 << 30
        };
        let workers = match raw.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if (1..=256).contains(&n) => n as usize,
            n => {
                self.problem("workers", format!("expected a number of threads from 1 to 256 (0: one per CPU), found {n}"));
                1
            }
        };
        let idle_session_timeout =
            raw.idle_session_timeout.as_deref().map(|t| self.duration("idle_session_timeout", t)).filter(|t| !t.is_zero());
        let shutdown_timeout = self.duration("shutdown_timeout", &raw.shutdown_timeout);
        let recovery_grace = self.duration("recovery_grace", &raw.recovery_grace);
        if recovery_grace < Duration::from_secs(1) {
            self.problem(
                "recovery_grace",
                "expected at least 1s: a live coordinator needs the time between PREPARE TRANSACTION and its COMMIT",
            );
        }
        let authentication_timeout = self.duration("authentication_timeout", &raw.authentication_timeout);
        let primary = Primary { url: self.url("primary.url", raw.primary_url.as_deref()) };
        let mut replicas = Vec::new();
        for (i, r) in raw.replicas.into_iter().enumerate() {
            let key = format!("replicas[{i}]");
            let given = r.name.is_some();
            let name = r.name.unwrap_or_default();
            if name.trim().is_empty() && given {
                self.problem(format!("{key}.name"), "expected a non-empty name");
            }
            if replicas.iter().any(|o: &Replica| o.name == name) {
                self.problem(format!("{key}.name"), format!("replica name `{name}` is used twice"));
            }
            let partition_latency = self.duration(&format!("{key}.partition_latency"), &r.partition_latency);
            if partition_latency.is_zero() {
                self.problem(format!("{key}.partition_latency"), "expected a duration above 0");
            }
            let heartbeat_interval = self.duration(&format!("{key}.heartbeat_interval"), &r.heartbeat_interval);
            if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&heartbeat_interval) {
                self.problem(format!("{key}.heartbeat_interval"), "expected a duration from 10ms to 1m");
            }
            let heartbeat_timeout = match &r.heartbeat_timeout {
                Some(t) => self.duration(&format!("{key}.heartbeat_timeout"), t),
                None => partition_latency * 2,
            };
            if heartbeat_timeout.is_zero() {
                self.problem(format!("{key}.heartbeat_timeout"), "expected a duration above 0");
            }
            let url = self.replica_url(&format!("{key}.url"), r.url.as_deref());
            // (A missing URL was reported already; its placeholder has no scheme to compare.)
            if r.url.is_some() && raw.primary_url.is_some() && url.scheme != primary.url.scheme {
                self.problem(
                    format!("{key}.url"),
                    format!(
                        "a {} replica for a {} primary: replicas use the same protocol as the primary",
                        url.scheme.name(),
                        primary.url.scheme.name()
                    ),
                );
            }
            replicas.push(Replica {
                url,
                partition_latency,
                heartbeat_interval,
                heartbeat_timeout,
                partition_after: self.count(&format!("{key}.partition_after"), r.partition_after, 1000) as u32,
                heal_after: self.count(&format!("{key}.heal_after"), r.heal_after, 1000) as u32,
                pool_size: self.count(&format!("{key}.pool_size"), r.pool_size, 10_000) as usize,
                takes_writes: r.takes_writes,
                name,
            });
        }
        let tls = raw.tls.map(|t| {
            let mode = match t.mode.as_str() {
                "prefer" => TlsMode::Prefer,
                "require" => TlsMode::Require,
                other => {
                    self.problem("tls.mode", format!("expected `prefer` or `require`, found `{other}`"));
                    TlsMode::Prefer
                }
            };
            TlsConfig { cert: self.file("tls.cert", t.cert.as_deref()), key: self.file("tls.key", t.key.as_deref()), mode }
        });
        let mut users = Vec::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let key = format!("users[{i}]");
            let verifier = match (&u.password, &u.scram_verifier) {
                (Some(p), None) => Some(Verifier::from_password(p)),
                (None, Some(v)) => match Verifier::parse(v) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.problem(format!("{key}.scram_verifier"), e.to_string());
                        None
                    }
                },
                _ => {
                    self.problem(key.clone(), "expected exactly one of `password` or `scram_verifier`");
                    None
                }
            };
            if u.name.as_deref() == Some("") {
                self.problem(format!("{key}.name"), "expected a non-empty user name");
            }
            if primary.url.scheme == Scheme::MySql && u.password.is_none() && u.scram_verifier.is_some() {
                self.problem(
                    format!("{key}.scram_verifier"),
                    "a SCRAM verifier cannot check MySQL logins (mysql_native_password): give `password` for a mysql:// primary",
                );
            }
            if let (Some(verifier), Some(name)) = (verifier, u.name) {
                let mysql_native = u.password.as_deref().map(crate::protocol::mysql::auth::native_stored_hash);
                users.push(User { name, verifier, mysql_native });
            }
        }
        if !users.is_empty() && primary.url.user.is_none() {
            self.problem(
                "primary.url",
                format!(
                    "[[users]] log in upstream with the primary URL's user: give one ({}://USER:PASSWORD@host/db)",
                    primary.url.scheme.name()
                ),
            );
        }
        Config {
            file: file.to_owned(),
            site: raw.site.unwrap_or_default(),
            listen,
            admin,
            admin_token: raw.admin_token.filter(|t| !t.is_empty()),
            admin_users: raw.admin_users,
            policy: raw.policy.map(|p| self.base.join(p)),
            conflict_log: raw.conflict_log.filter(|p| !p.is_empty()).map(|p| self.base.join(p)),
            max_connections,
            shutdown_timeout,
            recovery_grace,
            authentication_timeout,
            max_message_size,
            workers,
            idle_session_timeout,
            primary,
            replicas,
            tls,
            users,
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(key, format!("expected an address like 127.0.0.1:6432, found `{value}`"));
                None
            }
        }
    }

    /// A whole number from 1 to `max` (1 after reporting a problem).
    fn count(&mut self, key: &str, value: i64, max: i64) -> i64 {
        if (1..=max).contains(&value) {
            value
        } else {
            self.problem(key, format!("expected a number from 1 to {max}, found {value}"));
            1
        }
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        parse_duration(value).unwrap_or_else(|e| {
            self.problem(key, e);
            Duration::from_secs(1)
        })
    }

    /// A replica URL: as [`Validator::url`], with the between-sites TLS default.
    fn replica_url(&mut self, key: &str, value: Option<&str>) -> DbUrl {
        let mut url = self.url(key, value.map(between_sites).as_deref());
        url.sslmode_implied = value.is_some_and(|v| !v.contains("sslmode="));
        url
    }

    /// A database URL (a placeholder, reported already, when `value` is None).
    fn url(&mut self, key: &str, value: Option<&str>) -> DbUrl {
        let Some(value) = value else { return DbUrl::parse("postgres://invalid/", self.base).expect("placeholder URL parses") };
        match DbUrl::parse(value, self.base) {
            Ok(u) => {
                for path in [
                    u.sslcert.clone(),
                    u.sslkey.clone(),
                    match &u.sslrootcert {
                        Some(RootCert::File(f)) => Some(f.clone()),
                        _ => None,
                    },
                ]
                .into_iter()
                .flatten()
                {
                    if !path.is_file() {
                        self.problem(key, format!("file `{}` does not exist", path.display()));
                    }
                }
                u
            }
            Err(e) => {
                self.problem(key, e);
                // Keep the scheme that was written, so the checks that depend on it still run.
                let placeholder = if value.starts_with("mysql://") || value.starts_with("mariadb://") {
                    "mysql://invalid/"
                } else {
                    "postgres://invalid/"
                };
                DbUrl::parse(placeholder, self.base).expect("placeholder URL parses")
            }
        }
    }

    fn file(&mut self, key: &str, value: Option<&str>) -> PathBuf {
        let Some(value) = value else { return PathBuf::new() };
        let path = self.base.join(value);
        if !path.is_file() {
            self.problem(key, format!("expected a readable file, `{}` does not exist", path.display()));
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "site = \"seattle\"\n[primary]\nurl = \"postgres://app@127.0.0.1:5432/app\"\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/capgate/capgate.toml")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert!(c.replicas.is_empty() && c.tls.is_none() && c.users.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = "site = \"\"\nlisten = \"nowhere\"\nmax_connections = 0\n[primary]\nurl = \"http://x\"\n\
                    [[replicas]]\nname = \"b\"\nurl = \"postgres://h/db\"\npartition_latency = \"soon\"\n\
                    [tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\nmode = \"always\"\n";
        let err = Config::parse(text, Path::new("/nonexistent/c.toml")).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in ["site", "listen", "max_connections", "primary.url", "replicas[0].partition_latency", "tls.cert", "tls.key", "tls.mode"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(err.to_string().starts_with("/nonexistent/c.toml:1: site: "), "{err}");
    }

    #[test]
    fn unknown_and_missing_keys_name_the_line() {
        let err = Config::parse("site = \"a\"\nlisten_port = 5\n[primary]\nurl = \"postgres://h/d\"\n", Path::new("c.toml")).unwrap_err();
        assert_eq!((err.problems[0].line, err.problems[0].key.as_str()), (Some(2), "listen_port"));
        assert!(err.problems[0].message.contains("unknown key"), "{err}");
        assert!(err.to_string().starts_with("c.toml:2: listen_port: unknown key"), "{err}");
        let err = Config::parse("site = \"a\"\n", Path::new("c.toml")).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].message.contains("[primary]"), "{err}");
        let err = Config::parse("site = \"a\"\n[primary\n", Path::new("c.toml")).unwrap_err();
        assert_eq!((err.problems[0].line, err.problems[0].key.as_str()), (Some(2), "(syntax)"), "{err}");
    }

    #[test]
    fn every_kind_of_problem_is_listed_in_one_go() {
        // Unknown keys, wrong types, missing required keys and bad values, in several
        // tables: each reported once, with its line where it has one.
        let text = "sitee = \"a\"\nmax_connections = \"10\"\nshutdown_timeout = \"soon\"\nadmin_users = \"alice\"\n\
                    [primary]\nurl = \"postgres://h/d\"\nport = 5\n\
                    [[replicas]]\nurl = \"postgres://r/d\"\npool_size = \"many\"\n\
                    [[replicas]]\nname = \"c\"\nurl = 5\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err();
        let got: Vec<(Option<usize>, &str)> = err.problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        for want in [
            (Some(1), "sitee"),
            (None, "site"),
            (Some(2), "max_connections"),
            (Some(4), "admin_users"),
            (Some(7), "primary.port"),
            (Some(8), "replicas[0].name"),
            (Some(10), "replicas[0].pool_size"),
            (Some(13), "replicas[1].url"),
            (Some(3), "shutdown_timeout"),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        assert_eq!(got.len(), 9, "each problem once: {err}");
    }

    #[test]
    fn admin_users_are_read() {
        let c = Config::parse(&format!("admin_users = [\"alice\", \"ops\"]\n{MINIMAL}"), Path::new("c.toml")).unwrap();
        assert_eq!(c.admin_users, ["alice", "ops"]);
        assert!(Config::parse(MINIMAL, Path::new("c.toml")).unwrap().admin_users.is_empty());
    }

    #[test]
    fn a_replica_url_without_sslmode_knows_it_was_implied() {
        let text = format!("{MINIMAL}[[replicas]]\nname = \"b\"\nurl = \"postgres://h/db\"\n[[replicas]]\nname = \"c\"\nurl = \"postgres://h/db?sslmode=require\"\n");
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert!(c.replicas[0].url.sslmode_implied);
        assert!(!c.replicas[1].url.sslmode_implied);
        assert!(!c.primary.url.sslmode_implied);
    }

    #[test]
    fn replica_health_keys_have_defaults_and_limits() {
        let replica = "[[replicas]]\nname = \"b\"\nurl = \"postgres://h/db\"\n";
        let c = Config::parse(&format!("{MINIMAL}{replica}"), Path::new("c.toml")).unwrap();
        let r = &c.replicas[0];
        assert_eq!(r.partition_latency, Duration::from_secs(1));
        assert_eq!(r.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(r.heartbeat_timeout, Duration::from_secs(2), "twice partition_latency");
        assert_eq!((r.partition_after, r.heal_after, r.pool_size), (3, 4, 16));
        assert!(!r.takes_writes, "one-way unless said otherwise");
        assert_eq!(r.url.sslmode, crate::config::SslMode::VerifyFull, "TLS verified between sites unless the URL says otherwise");
        let set = "partition_latency = \"300ms\"\nheartbeat_interval = \"50ms\"\nheartbeat_timeout = \"1s\"\n\
                   partition_after = 5\nheal_after = 2\npool_size = 4\ntakes_writes = true\n";
        let c = Config::parse(&format!("{MINIMAL}{replica}{set}"), Path::new("c.toml")).unwrap();
        let r = &c.replicas[0];
        assert!(r.takes_writes);
        assert_eq!(r.heartbeat_timeout, Duration::from_secs(1));
        assert_eq!((r.partition_after, r.heal_after, r.pool_size), (5, 2, 4));
        let bad = "partition_latency = \"0ms\"\nheartbeat_interval = \"1ms\"\nheartbeat_timeout = \"0s\"\n\
                   partition_after = 0\nheal_after = -1\npool_size = 0\ntakes_writes = \"yes\"\n";
        let err = Config::parse(&format!("{MINIMAL}{replica}{bad}"), Path::new("c.toml")).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in
            ["partition_latency", "heartbeat_interval", "heartbeat_timeout", "partition_after", "heal_after", "pool_size", "takes_writes"]
        {
            assert!(keys.contains(&format!("replicas[0].{k}").as_str()), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let text = format!("admin = \"0.0.0.0:9930\"\n{MINIMAL}");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err();
        assert_eq!(err.problems[0].key, "admin_token");
        let text = format!("admin = \"0.0.0.0:9930\"\nadmin_token = \"t\"\n{MINIMAL}");
        assert_eq!(Config::parse(&text, Path::new("c.toml")).unwrap().admin_token.as_deref(), Some("t"));
        let text = format!("admin = \"127.0.0.1:9930\"\n{MINIMAL}");
        assert!(Config::parse(&text, Path::new("c.toml")).unwrap().admin_token.is_none());
    }

    #[test]
    fn mysql_primaries_take_mysql_replicas_and_passwords() {
        let text = "site = \"a\"\n[primary]\nurl = \"mysql://app:pw@127.0.0.1/shop\"\n\
                    [[replicas]]\nname = \"b\"\nurl = \"postgres://h/db?sslmode=disable\"\n\
                    [[users]]\nname = \"alice\"\nscram_verifier = \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"replicas[0].url"), "{keys:?}");
        assert!(
            err.problems.iter().any(|p| p.key == "users[0].scram_verifier" && p.message.contains("cannot check MySQL logins")),
            "{err}"
        );
        let ok = "site = \"a\"\n[primary]\nurl = \"mariadb://app:pw@127.0.0.1/shop\"\n\
                  [[replicas]]\nname = \"b\"\nurl = \"mysql://h/shop?sslmode=disable\"\n[[users]]\nname = \"alice\"\npassword = \"pw\"\n";
        let c = Config::parse(ok, Path::new("c.toml")).unwrap();
        assert_eq!(c.primary.url.scheme, Scheme::MySql);
        assert!(c.users[0].mysql_native.is_some());
    }

    #[test]
    fn users_need_a_password_or_verifier() {
        let text = format!("{MINIMAL}[[users]]\nname = \"alice\"\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err();
        assert_eq!(err.problems[0].key, "users[0]");
        let ok = format!("{MINIMAL}[[users]]\nname = \"alice\"\npassword = \"pw\"\n");
        assert_eq!(Config::parse(&ok, Path::new("c.toml")).unwrap().users[0].name, "alice");
    }
}
