//! Validation of the raw file into a [`Config`]: every key checked, every problem collected
//! (with the line it was written on) instead of stopping at the first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
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
pub(super) struct Validator<'a> {
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Problem>,
    /// Where each key was written (from the reader), to give problems a line.
    pub(super) lines: std::collections::HashMap<String, usize>,
}

impl Validator<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.problems.push(Problem { line: self.lines.get(&key).copied(), key, message: message.into() });
    }

    pub(super) fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
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
            let ship_interval = self.duration(&format!("{key}.ship_interval"), &r.ship_interval);
            // Kept well under the 10 s an operator's `resume` waits for the shipper to take it.
            if ship_interval > Duration::from_secs(5) {
                self.problem(format!("{key}.ship_interval"), "expected a duration from 0s to 5s");
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
                ship_interval,
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
