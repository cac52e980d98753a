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
mod validate;

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
    /// Least time from the start of one async range to the start of the next while changes
    /// keep coming (PostgreSQL replicas; decision 0037): fewer, larger ranges cost less CPU
    /// per change on both sites, at up to this much more lag.
    pub ship_interval: Duration,
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
        let mut v = validate::Validator { base: &base, problems, lines };
        let config = raw.map(|raw| v.config(raw, file));
        match config {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => Err(ConfigError { file: file.to_owned(), problems: v.problems }),
        }
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
        assert_eq!(r.ship_interval, Duration::from_millis(200));
        assert_eq!(r.url.sslmode, crate::config::SslMode::VerifyFull, "TLS verified between sites unless the URL says otherwise");
        let set = "partition_latency = \"300ms\"\nheartbeat_interval = \"50ms\"\nheartbeat_timeout = \"1s\"\n\
                   partition_after = 5\nheal_after = 2\npool_size = 4\ntakes_writes = true\nship_interval = \"0s\"\n";
        let c = Config::parse(&format!("{MINIMAL}{replica}{set}"), Path::new("c.toml")).unwrap();
        let r = &c.replicas[0];
        assert!(r.takes_writes);
        assert_eq!(r.heartbeat_timeout, Duration::from_secs(1));
        assert_eq!((r.partition_after, r.heal_after, r.pool_size), (5, 2, 4));
        assert_eq!(r.ship_interval, Duration::ZERO);
        let bad = "partition_latency = \"0ms\"\nheartbeat_interval = \"1ms\"\nheartbeat_timeout = \"0s\"\n\
                   partition_after = 0\nheal_after = -1\npool_size = 0\ntakes_writes = \"yes\"\nship_interval = \"6s\"\n";
        let err = Config::parse(&format!("{MINIMAL}{replica}{bad}"), Path::new("c.toml")).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        // Every replica key but the two that identify it has a bad value above.
        for k in raw::REPLICA_KEYS.iter().filter(|k| !["name", "url"].contains(k)) {
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
