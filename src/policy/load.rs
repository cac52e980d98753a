//! Reading and validating a policy file. Every problem is collected (not just the first),
//! each naming the file, the line, the key and what was expected; a policy is returned only
//! when there are none. toml_edit is used (not serde) because it keeps the byte span of
//! every key and value, which is how the line numbers are found.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, Item, Table, Value};

use super::glob::Pattern;
use super::{FunctionRule, Mode, OnConflict, OnPartition, Policy, Rule, UnknownAction};
use super::{DEFAULT_MAX_LAG, DEFAULT_ON_CONFLICT, DEFAULT_PARTITION_TIMEOUT};
use crate::classify::TableName;
use crate::config::parse_duration;

/// Every problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub problems: Vec<PolicyProblem>,
}

/// One problem: where (line, key) and what is wrong or expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// The key as a path, e.g. `table[2].max_lag` (`[[table]]` entries counted from 1).
    pub key: String,
    pub message: String,
}

/// `file:line: key: message`, one problem per line.
impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(f, "{}:{}: {}: {}", self.file.display(), line, p.key, p.message)?,
                None => write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// Read and validate `file` (version 0; a [`super::PolicyHandle`] numbers its loads).
    pub fn load(file: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(file).map_err(|e| PolicyError {
            file: file.to_owned(),
            problems: vec![PolicyProblem { line: None, key: "(file)".into(), message: format!("cannot read: {e}") }],
        })?;
        Policy::parse(&text, file)
    }

    /// Validate policy text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        let mut v = Validator { text, problems: Vec::new(), warnings: Vec::new() };
        let policy = match ImDocument::parse(text) {
            Ok(doc) => v.policy(doc.as_table()),
            Err(e) => {
                let line = e.span().map(|s| v.line(s.start));
                let message = e.message().trim().to_owned();
                v.problems.push(PolicyProblem { line, key: "(syntax)".into(), message });
                None
            }
        };
        match policy {
            Some(p) if v.problems.is_empty() => Ok(p),
            _ => Err(PolicyError { file: file.to_owned(), problems: v.problems }),
        }
    }
}

/// Collects problems while walking the document.
struct Validator<'t> {
    text: &'t str,
    problems: Vec<PolicyProblem>,
    /// Accepted keys that do nothing any more.
    warnings: Vec<PolicyProblem>,
}

const TOP_KEYS: &str = "default, unknown, [[table]], [[function]]";
const TABLE_KEYS: &str = "match, mode, on_partition, partition_timeout, quorum, max_lag, on_conflict, nondeterministic";
const FUNCTION_KEYS: &str = "name, writes";

impl Validator<'_> {
    fn line(&self, offset: usize) -> usize {
        crate::config::toml_spans::line(self.text, offset)
    }

    fn problem(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let line = span.map(|s| self.line(s.start));
        self.problems.push(PolicyProblem { line, key: key.into(), message: message.into() });
    }

    fn span_of(table: &Table, key: &str) -> Option<Range<usize>> {
        crate::config::toml_spans::span_of(table, key)
    }

    fn string<'a>(&mut self, table: &'a Table, key: &str, path: &str) -> Option<&'a str> {
        let item = table.get(key)?;
        match item.as_str() {
            Some(s) => Some(s),
            None => {
                self.problem(Self::span_of(table, key), path, "expected a string");
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, table: &Table, key: &str, path: &str, choices: &[(&str, T)]) -> Option<T> {
        let s = self.string(table, key, path)?;
        match choices.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.problem(Self::span_of(table, key), path, format!("expected one of {}, found `{s}`", names.join(" | ")));
                None
            }
        }
    }

    fn duration(&mut self, table: &Table, key: &str, path: &str) -> Option<Duration> {
        let s = self.string(table, key, path)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(Self::span_of(table, key), path, e);
                None
            }
        }
    }

    /// `quorum`: how many replicas must prepare a sync commit (1 or more; absent: all).
    fn quorum(&mut self, table: &Table, path: &str) -> Option<u32> {
        let item = table.get("quorum")?;
        match item.as_integer() {
            Some(k) if (1..=1000).contains(&k) => u32::try_from(k).ok(),
            _ => {
                self.problem(
                    Self::span_of(table, "quorum"),
                    path,
                    "expected a whole number of replicas from 1 to 1000 (leave it out to require every replica)",
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, table: &Table, prefix: &str, allowed: &[&str], expected: &str) {
        for (key, span) in crate::config::toml_spans::unknown_keys(table, allowed) {
            self.problem(span, format!("{prefix}{key}"), format!("unknown key; expected one of {expected}"));
        }
    }

    fn policy(&mut self, root: &Table) -> Option<Policy> {
        self.unknown_keys(root, "", &["default", "unknown", "table", "function"], TOP_KEYS);
        let modes = [("local", "local"), ("async", "async"), ("sync", "sync"), ("bounded", "bounded")];
        let default = match self.choice(root, "default", "default", &modes) {
            Some(name) => base_mode(name),
            None => Mode::Local,
        };
        let unknown = self
            .choice(root, "unknown", "unknown", &[("relay", UnknownAction::Relay), ("refuse", UnknownAction::Refuse)])
            .unwrap_or(UnknownAction::Relay);
        let rules = self.entries(root, "table").iter().enumerate().filter_map(|(i, t)| self.rule(t, i + 1)).collect::<Vec<_>>();
        self.shadowed(&rules);
        let functions = self.entries(root, "function").iter().enumerate().filter_map(|(i, t)| self.function(t, i + 1)).collect::<Vec<_>>();
        self.duplicate_functions(&functions);
        Some(Policy { version: 0, default, unknown, rules, functions, warnings: std::mem::take(&mut self.warnings) })
    }

    /// The `[[key]]` entries of `root`.
    fn entries<'a>(&mut self, root: &'a Table, key: &str) -> Vec<&'a Table> {
        match root.get(key) {
            None => Vec::new(),
            Some(Item::ArrayOfTables(a)) => a.iter().collect(),
            Some(_) => {
                self.problem(Self::span_of(root, key), key, format!("expected [[{key}]] entries (an array of tables)"));
                Vec::new()
            }
        }
    }

    fn rule(&mut self, t: &Table, n: usize) -> Option<Rule> {
        let p = format!("table[{n}].");
        self.unknown_keys(
            t,
            &p,
            &["match", "mode", "on_partition", "partition_timeout", "quorum", "max_lag", "on_conflict", "nondeterministic"],
            TABLE_KEYS,
        );
        let line = t.span().map(|s| self.line(s.start)).unwrap_or(0);
        let pattern = match self.string(t, "match", &format!("{p}match")) {
            Some(text) => match Pattern::parse(text) {
                Ok(pat) => Some((text.to_owned(), pat)),
                Err(e) => {
                    self.problem(Self::span_of(t, "match"), format!("{p}match"), e);
                    None
                }
            },
            None => {
                if t.get("match").is_none() {
                    self.problem(t.span(), format!("{p}match"), "missing; expected a glob on schema.table such as public.orders");
                }
                None
            }
        };
        let modes = [("local", "local"), ("async", "async"), ("sync", "sync"), ("bounded", "bounded")];
        let mode_name = match self.choice(t, "mode", &format!("{p}mode"), &modes) {
            Some(m) => Some(m),
            None => {
                if t.get("mode").is_none() {
                    self.problem(t.span(), format!("{p}mode"), "missing; expected one of local | async | sync | bounded");
                }
                None
            }
        };
        // Options that do not belong to the mode are errors, so a typo'd mode or a
        // misunderstanding is caught rather than silently ignored.
        if let Some(m) = mode_name {
            let belongs: &[(&str, &[&str])] = &[
                ("on_partition", &["sync", "bounded"]),
                ("partition_timeout", &["sync", "bounded"]),
                ("quorum", &["sync"]),
                ("max_lag", &["bounded"]),
                ("on_conflict", &["async", "bounded"]),
            ];
            for (key, modes) in belongs {
                if t.get(key).is_some() && !modes.contains(&m) {
                    self.problem(
                        Self::span_of(t, key),
                        format!("{p}{key}"),
                        format!(
                            "does not apply to mode \"{m}\"; it is an option of mode {}",
                            match modes.split_last() {
                                Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                                _ => modes.join(""),
                            }
                        ),
                    );
                }
            }
        }
        let on_partition_kind =
            self.choice(t, "on_partition", &format!("{p}on_partition"), &[("fail", false), ("block", true)]).unwrap_or(false);
        let timeout = self.duration(t, "partition_timeout", &format!("{p}partition_timeout"));
        if timeout.is_some() && !on_partition_kind && t.get("on_partition").is_some() {
            self.problem(
                Self::span_of(t, "partition_timeout"),
                format!("{p}partition_timeout"),
                "applies only with on_partition = \"block\"",
            );
        } else if timeout.is_some() && t.get("on_partition").is_none() && matches!(mode_name, Some("sync" | "bounded")) {
            self.problem(
                Self::span_of(t, "partition_timeout"),
                format!("{p}partition_timeout"),
                "applies only with on_partition = \"block\" (the default is \"fail\")",
            );
        }
        let on_partition = if on_partition_kind {
            OnPartition::Block { timeout: timeout.unwrap_or(DEFAULT_PARTITION_TIMEOUT) }
        } else {
            OnPartition::Fail
        };
        let quorum = self.quorum(t, &format!("{p}quorum"));
        let max_lag = self.duration(t, "max_lag", &format!("{p}max_lag"));
        if max_lag == Some(Duration::ZERO) {
            self.problem(Self::span_of(t, "max_lag"), format!("{p}max_lag"), "must be more than 0 (use mode \"sync\" for no lag)");
        }
        let on_conflict = self
            .choice(
                t,
                "on_conflict",
                &format!("{p}on_conflict"),
                &[
                    ("skip", OnConflict::Skip),
                    ("halt", OnConflict::Halt),
                    ("overwrite", OnConflict::Overwrite),
                    ("latest", OnConflict::Latest),
                ],
            )
            .unwrap_or(DEFAULT_ON_CONFLICT);
        if t.get("nondeterministic").is_some() {
            self.warnings.push(PolicyProblem {
                line: Self::span_of(t, "nondeterministic").map(|s| self.line(s.start)),
                key: format!("{p}nondeterministic"),
                message: "no longer does anything: capgate replicates the rows the primary wrote, so now(), random(), uuids and \
                          sequences need no special treatment; remove the key"
                    .into(),
            });
        }
        let mode = match mode_name? {
            "sync" => Mode::Sync { on_partition, quorum },
            "async" => Mode::Async { on_conflict },
            "bounded" => Mode::Bounded { max_lag: max_lag.unwrap_or(DEFAULT_MAX_LAG), on_partition, on_conflict },
            _ => Mode::Local,
        };
        let (pattern_text, pattern) = pattern?;
        Some(Rule { pattern_text, pattern, mode, line })
    }

    /// A rule whose every table is matched by an earlier rule can never decide anything.
    fn shadowed(&mut self, rules: &[Rule]) {
        for (j, later) in rules.iter().enumerate() {
            if let Some((i, earlier)) = rules[..j].iter().enumerate().find(|(_, e)| e.pattern.covers(&later.pattern)) {
                self.problems.push(PolicyProblem {
                    line: Some(later.line).filter(|l| *l > 0),
                    key: format!("table[{}].match", j + 1),
                    message: format!(
                        "rule \"{}\" can never match: every table it names is matched first by table[{}] \"{}\" (line {}); move it above that rule or remove it",
                        later.pattern_text,
                        i + 1,
                        earlier.pattern_text,
                        earlier.line
                    ),
                });
            }
        }
    }

    fn function(&mut self, t: &Table, n: usize) -> Option<FunctionRule> {
        let p = format!("function[{n}].");
        self.unknown_keys(t, &p, &["name", "writes"], FUNCTION_KEYS);
        let name = match self.string(t, "name", &format!("{p}name")) {
            Some(s) => self.exact_name(t, "name", &format!("{p}name"), s, "function"),
            None => {
                if t.get("name").is_none() {
                    self.problem(
                        t.span(),
                        format!("{p}name"),
                        "missing; expected a schema-qualified function name such as public.transfer",
                    );
                }
                None
            }
        };
        let mut writes = Vec::new();
        match t.get("writes") {
            None => {}
            Some(item) => match item.as_array() {
                Some(arr) => {
                    for v in arr.iter() {
                        match v {
                            Value::String(s) => {
                                if let Some(tn) = self.exact_name_at(v.span(), &format!("{p}writes"), s.value(), "table") {
                                    writes.push(tn);
                                }
                            }
                            _ => self.problem(v.span(), format!("{p}writes"), "expected table names as strings"),
                        }
                    }
                }
                None => self.problem(Self::span_of(t, "writes"), format!("{p}writes"), "expected an array of schema.table names"),
            },
        }
        let name = name?;
        Some(FunctionRule { schema: name.schema, name: name.name, writes })
    }

    fn exact_name(&mut self, t: &Table, key: &str, path: &str, s: &str, what: &str) -> Option<TableName> {
        self.exact_name_at(Self::span_of(t, key), path, s, what)
    }

    /// A `schema.name` without wildcards.
    fn exact_name_at(&mut self, span: Option<Range<usize>>, path: &str, s: &str, what: &str) -> Option<TableName> {
        let expected = format!(
            "expected a schema-qualified {what} name without wildcards, such as public.{}, found `{s}`",
            if what == "function" { "transfer" } else { "accounts" }
        );
        match Pattern::parse(s) {
            Ok(p) => match (p.schema.literal(), p.table.literal()) {
                (Some(schema), Some(name)) => Some(TableName { schema, name }),
                _ => {
                    self.problem(span, path, expected);
                    None
                }
            },
            Err(_) => {
                self.problem(span, path, expected);
                None
            }
        }
    }

    fn duplicate_functions(&mut self, functions: &[FunctionRule]) {
        for (j, f) in functions.iter().enumerate() {
            if functions[..j].iter().any(|e| e.schema == f.schema && e.name == f.name) {
                self.problems.push(PolicyProblem {
                    line: None,
                    key: format!("function[{}].name", j + 1),
                    message: format!("{}.{} is named twice; merge the entries", f.schema, f.name),
                });
            }
        }
    }
}

/// A mode with every option at its default (for `default = "…"`).
fn base_mode(name: &str) -> Mode {
    match name {
        "sync" => Mode::Sync { on_partition: OnPartition::Fail, quorum: None },
        "async" => Mode::Async { on_conflict: DEFAULT_ON_CONFLICT },
        "bounded" => Mode::Bounded { max_lag: DEFAULT_MAX_LAG, on_partition: OnPartition::Fail, on_conflict: DEFAULT_ON_CONFLICT },
        _ => Mode::Local,
    }
}
