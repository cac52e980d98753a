//! Reading the main configuration file's TOML into plain values, collecting every problem.
//!
//! A DBA fixing a configuration wants the whole list at once, not one error per attempt, so
//! this walks the document by hand (toml_edit keeps the byte span of every key and value,
//! which gives line numbers), as the policy loader does: an unknown key, a value of the wrong
//! type or a missing required key is recorded and the walk goes on with a default. What the
//! values mean (addresses, durations, URLs) is checked afterwards by the validator in
//! `mod.rs`, which adds its own problems to the same list.

use std::collections::HashMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table};

use super::{toml_spans, Problem};

/// The file as written, before validation. Missing optional keys hold their defaults.
pub(super) struct RawConfig {
    /// None when missing (already reported).
    pub site: Option<String>,
    pub listen: String,
    pub admin: Option<String>,
    pub admin_token: Option<String>,
    pub admin_users: Vec<String>,
    pub policy: Option<String>,
    pub conflict_log: Option<String>,
    pub max_connections: i64,
    pub shutdown_timeout: String,
    pub recovery_grace: String,
    pub authentication_timeout: String,
    pub max_message_size: i64,
    pub workers: i64,
    pub idle_session_timeout: Option<String>,
    /// None when missing or invalid (already reported), as for every required key below.
    pub primary_url: Option<String>,
    pub replicas: Vec<RawReplica>,
    pub tls: Option<RawTls>,
    pub users: Vec<RawUser>,
    /// The line of every key read (`replicas[0].url` → 12), so that the validator's problems
    /// name a line too.
    pub lines: HashMap<String, usize>,
}

pub(super) struct RawReplica {
    pub name: Option<String>,
    pub url: Option<String>,
    pub partition_latency: String,
    pub heartbeat_interval: String,
    pub heartbeat_timeout: Option<String>,
    pub partition_after: i64,
    pub heal_after: i64,
    pub pool_size: i64,
    pub takes_writes: bool,
    pub ship_interval: String,
}

pub(super) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub mode: String,
}

pub(super) struct RawUser {
    pub name: Option<String>,
    pub password: Option<String>,
    pub scram_verifier: Option<String>,
}

const TOP_KEYS: &[&str] = &[
    "site",
    "listen",
    "admin",
    "admin_token",
    "admin_users",
    "policy",
    "conflict_log",
    "max_connections",
    "shutdown_timeout",
    "recovery_grace",
    "authentication_timeout",
    "max_message_size",
    "workers",
    "idle_session_timeout",
    "primary",
    "replicas",
    "tls",
    "users",
];
const PRIMARY_KEYS: &[&str] = &["url"];
pub(super) const REPLICA_KEYS: &[&str] = &[
    "name",
    "url",
    "partition_latency",
    "heartbeat_interval",
    "heartbeat_timeout",
    "partition_after",
    "heal_after",
    "pool_size",
    "takes_writes",
    "ship_interval",
];
const TLS_KEYS: &[&str] = &["cert", "key", "mode"];
const USER_KEYS: &[&str] = &["name", "password", "scram_verifier"];

/// Reads `text`; `None` only when it is not TOML at all (the syntax error is in `problems`).
pub(super) fn read(text: &str, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    let mut r = Reader { text, problems, lines: HashMap::new() };
    match ImDocument::parse(text) {
        Ok(doc) => Some(r.config(doc.as_table())),
        Err(e) => {
            let line = e.span().map(|s| r.line(s.start));
            r.problems.push(Problem { line, key: "(syntax)".into(), message: e.message().trim().to_owned() });
            None
        }
    }
}

/// Walks the document, recording problems.
struct Reader<'a> {
    text: &'a str,
    problems: &'a mut Vec<Problem>,
    lines: HashMap<String, usize>,
}

impl Reader<'_> {
    fn line(&self, offset: usize) -> usize {
        toml_spans::line(self.text, offset)
    }

    fn problem(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let line = span.map(|s| self.line(s.start));
        self.problems.push(Problem { line, key: key.into(), message: message.into() });
    }

    fn span_of(table: &Table, key: &str) -> Option<Range<usize>> {
        toml_spans::span_of(table, key)
    }

    fn unknown_keys(&mut self, table: &Table, prefix: &str, allowed: &[&str]) {
        for (key, span) in toml_spans::unknown_keys(table, allowed) {
            self.problem(span, format!("{prefix}{key}"), format!("unknown key; expected one of {}", allowed.join(", ")));
        }
    }

    /// Remembers the line of `path` (see [`RawConfig::lines`]).
    fn seen(&mut self, table: &Table, key: &str, path: &str) {
        if let Some(span) = Self::span_of(table, key) {
            let line = self.line(span.start);
            self.lines.insert(path.to_owned(), line);
        }
    }

    fn string(&mut self, table: &Table, key: &str, path: &str) -> Option<String> {
        let item = table.get(key)?;
        self.seen(table, key, path);
        match item.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.problem(Self::span_of(table, key), path, "expected a string (in double quotes)");
                None
            }
        }
    }

    /// A required string; None (reported) when missing or not a string.
    fn required(&mut self, table: &Table, key: &str, path: &str, what: &str) -> Option<String> {
        if table.get(key).is_none() {
            self.problem(table.span(), path, format!("missing; expected {what}"));
            return None;
        }
        self.string(table, key, path)
    }

    fn boolean(&mut self, table: &Table, key: &str, path: &str, default: bool) -> bool {
        let Some(item) = table.get(key) else { return default };
        self.seen(table, key, path);
        match item.as_bool() {
            Some(b) => b,
            None => {
                self.problem(Self::span_of(table, key), path, "expected true or false (without quotes)");
                default
            }
        }
    }

    fn integer(&mut self, table: &Table, key: &str, path: &str, default: i64) -> i64 {
        let Some(item) = table.get(key) else { return default };
        self.seen(table, key, path);
        match item.as_integer() {
            Some(n) => n,
            None => {
                self.problem(Self::span_of(table, key), path, "expected a whole number (without quotes)");
                default
            }
        }
    }

    fn strings(&mut self, table: &Table, key: &str, path: &str) -> Vec<String> {
        let Some(item) = table.get(key) else { return Vec::new() };
        let list = item.as_array().map(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>());
        match list {
            Some(Some(list)) => list,
            _ => {
                self.problem(Self::span_of(table, key), path, "expected a list of strings, e.g. [\"alice\", \"bob\"]");
                Vec::new()
            }
        }
    }

    /// A `[name]` table (None when absent or not a table).
    fn table<'t>(&mut self, root: &'t Table, key: &str) -> Option<&'t Table> {
        match root.get(key)? {
            Item::Table(t) => Some(t),
            _ => {
                self.problem(Self::span_of(root, key), key, format!("expected a [{key}] table"));
                None
            }
        }
    }

    /// The `[[name]]` entries of `root`.
    fn entries<'t>(&mut self, root: &'t Table, key: &str) -> Vec<&'t Table> {
        match root.get(key) {
            None => Vec::new(),
            Some(Item::ArrayOfTables(a)) => a.iter().collect(),
            Some(_) => {
                self.problem(Self::span_of(root, key), key, format!("expected [[{key}]] entries (an array of tables)"));
                Vec::new()
            }
        }
    }

    fn config(&mut self, root: &Table) -> RawConfig {
        self.unknown_keys(root, "", TOP_KEYS);
        let primary_url = match self.table(root, "primary") {
            Some(p) => {
                self.unknown_keys(p, "primary.", PRIMARY_KEYS);
                self.required(p, "url", "primary.url", "the primary's URL, e.g. \"postgres://app@127.0.0.1:5432/app\"")
            }
            None => {
                if root.get("primary").is_none() {
                    self.problem(None, "primary", "missing; expected a [primary] table with url = \"postgres://…\"");
                }
                None
            }
        };
        let replicas = self.entries(root, "replicas").into_iter().enumerate().map(|(i, t)| self.replica(t, i)).collect();
        let tls = self.table(root, "tls").map(|t| {
            self.unknown_keys(t, "tls.", TLS_KEYS);
            RawTls {
                cert: self.required(t, "cert", "tls.cert", "a PEM certificate file"),
                key: self.required(t, "key", "tls.key", "a PEM private key file"),
                mode: self.string(t, "mode", "tls.mode").unwrap_or_else(|| "prefer".into()),
            }
        });
        let users = self.entries(root, "users").into_iter().enumerate().map(|(i, t)| self.user(t, i)).collect();
        let site = match root.get("site") {
            Some(_) => self.string(root, "site", "site"),
            None => {
                self.problem(None, "site", "missing; expected this site's name, e.g. site = \"seattle\"");
                None
            }
        };
        let mut top = |key: &str, default: &str| self.string(root, key, key).unwrap_or_else(|| default.to_owned());
        let (listen, shutdown_timeout) = (top("listen", "127.0.0.1:6432"), top("shutdown_timeout", "30s"));
        let (recovery_grace, authentication_timeout) = (top("recovery_grace", "30s"), top("authentication_timeout", "60s"));
        RawConfig {
            site,
            listen,
            shutdown_timeout,
            recovery_grace,
            authentication_timeout,
            admin: self.string(root, "admin", "admin"),
            admin_token: self.string(root, "admin_token", "admin_token"),
            admin_users: self.strings(root, "admin_users", "admin_users"),
            policy: self.string(root, "policy", "policy"),
            conflict_log: self.string(root, "conflict_log", "conflict_log"),
            max_connections: self.integer(root, "max_connections", "max_connections", 1000),
            max_message_size: self.integer(root, "max_message_size", "max_message_size", 1 << 30),
            workers: self.integer(root, "workers", "workers", 0),
            idle_session_timeout: self.string(root, "idle_session_timeout", "idle_session_timeout"),
            primary_url,
            replicas,
            tls,
            users,
            lines: std::mem::take(&mut self.lines),
        }
    }

    fn replica(&mut self, t: &Table, i: usize) -> RawReplica {
        let p = format!("replicas[{i}]");
        self.unknown_keys(t, &format!("{p}."), REPLICA_KEYS);
        RawReplica {
            name: self.required(t, "name", &format!("{p}.name"), "the remote site's name"),
            url: self.required(t, "url", &format!("{p}.url"), "the replica's URL, e.g. \"postgres://repl@10.0.0.2:5432/app\""),
            partition_latency: self.string(t, "partition_latency", &format!("{p}.partition_latency")).unwrap_or_else(|| "1s".into()),
            heartbeat_interval: self.string(t, "heartbeat_interval", &format!("{p}.heartbeat_interval")).unwrap_or_else(|| "250ms".into()),
            heartbeat_timeout: self.string(t, "heartbeat_timeout", &format!("{p}.heartbeat_timeout")),
            partition_after: self.integer(t, "partition_after", &format!("{p}.partition_after"), 3),
            heal_after: self.integer(t, "heal_after", &format!("{p}.heal_after"), 4),
            pool_size: self.integer(t, "pool_size", &format!("{p}.pool_size"), 16),
            takes_writes: self.boolean(t, "takes_writes", &format!("{p}.takes_writes"), false),
            ship_interval: self.string(t, "ship_interval", &format!("{p}.ship_interval")).unwrap_or_else(|| "200ms".into()),
        }
    }

    fn user(&mut self, t: &Table, i: usize) -> RawUser {
        let p = format!("users[{i}]");
        self.unknown_keys(t, &format!("{p}."), USER_KEYS);
        RawUser {
            name: self.required(t, "name", &format!("{p}.name"), "the user name clients log in with"),
            password: self.string(t, "password", &format!("{p}.password")),
            scram_verifier: self.string(t, "scram_verifier", &format!("{p}.scram_verifier")),
        }
    }
}
