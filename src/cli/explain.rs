//! `capgate explain`: what capgate would decide for statements, without a database.

use std::path::Path;
use std::process::ExitCode;

use crate::classify::{Classifier, Dialect, Kind, SearchPath, SqlMode};
use crate::config::{Config, Scheme};
use crate::policy::{Policy, UnknownAction};

/// The session `capgate explain` classifies in, as given on the command line.
pub(super) struct Session {
    pub search_path: Option<String>,
    pub database: Option<String>,
    pub sql_mode: Option<String>,
}

impl Session {
    /// The session state for `dialect`, or what is wrong with the options.
    fn path(self, dialect: Dialect) -> Result<SearchPath, &'static str> {
        match dialect {
            Dialect::Postgres if self.database.is_some() || self.sql_mode.is_some() => {
                Err("--database and --sql-mode are for --dialect mysql; PostgreSQL takes --search-path")
            }
            Dialect::Postgres => {
                let schemas = self.search_path.as_deref().unwrap_or("public");
                Ok(SearchPath::new(schemas.split(',').map(|s| s.trim()).filter(|s| !s.is_empty())))
            }
            Dialect::MySql if self.search_path.is_some() => Err("--search-path is for --dialect postgres; MySQL takes --database"),
            Dialect::MySql => Ok(SearchPath::database(self.database.as_deref())
                .with_sql_mode(self.sql_mode.as_deref().map(SqlMode::from_sql_mode).unwrap_or_default())),
        }
    }
}

/// `capgate explain`: classify the statements and decide each written table under the policy.
#[allow(clippy::too_many_arguments)]
pub(super) fn explain(
    config: Option<&Path>,
    policy: Option<&Path>,
    dialect: Option<&str>,
    session: Session,
    json: bool,
    file: Option<&Path>,
    sql: &[String],
) -> ExitCode {
    let mut texts = Vec::new();
    if let Some(file) = file {
        let read = if file == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(file) };
        match read {
            Ok(text) => texts.push(text),
            Err(e) => {
                eprintln!("cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    texts.extend(sql.iter().cloned());
    let config = match config.map(Config::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let policy_file = policy.map(Path::to_path_buf).or_else(|| config.as_ref().and_then(|c| c.policy.clone()));
    let policy = match &policy_file {
        Some(f) => match Policy::load(f) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Policy::default(),
    };
    // What `capgate run` would refuse in this policy at this site (a MySQL site: keys built
    // for PostgreSQL only) is refused here too, rather than explained as if it were in force.
    if let (Some(config), Some(file)) = (&config, &policy_file) {
        if config.primary.url.scheme == Scheme::MySql {
            let problems = crate::frontend::mysql::policy_limits::problems(&policy, config);
            if !problems.is_empty() {
                eprintln!("{}", crate::policy::PolicyError { file: file.clone(), problems });
                return ExitCode::FAILURE;
            }
        }
    }
    let from_url = match config.as_ref().map(|c| c.primary.url.scheme) {
        Some(Scheme::MySql) => Dialect::MySql,
        _ => Dialect::Postgres,
    };
    let dialect = match dialect.map(|d| Dialect::parse(d).ok_or(d)).transpose() {
        Ok(d) => d.unwrap_or(from_url),
        Err(d) => {
            eprintln!("--dialect: expected postgres or mysql, found `{d}`");
            return ExitCode::from(2);
        }
    };
    let path = match session.path(dialect) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Each argument (and the file) is classified on its own, as a separate query string would
    // be; the statements are numbered across all of them.
    let classifier = Classifier::new(dialect, 0);
    let catalog = policy.catalog(dialect);
    let classifications: Vec<_> = texts.iter().map(|t| classifier.classify(t, &path, &catalog)).collect();
    let statements: Vec<&crate::classify::StatementClass> = classifications.iter().flat_map(|c| c.statements.iter()).collect();
    if json {
        let statements: Vec<ExplainedStatement> = statements
            .iter()
            .map(|s| {
                let names = |ts: &[crate::classify::TableName]| ts.iter().map(ToString::to_string).collect::<Vec<_>>();
                ExplainedStatement {
                    kind: s.kind.name(),
                    reason: match &s.kind {
                        Kind::Unknown(r) => Some(r.clone()),
                        _ => None,
                    },
                    writes: names(&s.writes),
                    reads: names(&s.reads),
                    nondeterministic: s.nondeterministic.clone(),
                    decisions: policy
                        .decide_statement(s)
                        .iter()
                        .map(|d| ExplainedDecision { table: d.table.to_string(), mode: d.mode.name(), rule: d.rule.to_string() })
                        .collect(),
                }
            })
            .collect();
        match serde_json::to_string(&Explained { statements }) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("cannot print JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Some(f) = &policy_file {
        println!("policy {} ({} rule(s), default {})", f.display(), policy.rules.len(), policy.default.name());
    } else {
        println!("no policy file: every table is local");
    }
    let list = |ts: &[crate::classify::TableName]| {
        if ts.is_empty() {
            "-".to_owned()
        } else {
            ts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    for (i, s) in statements.iter().enumerate() {
        match &s.kind {
            Kind::Unknown(reason) => {
                let action = if policy.unknown == UnknownAction::Relay { "relay" } else { "refuse" };
                println!("statement {}: unknown: {reason}\n  policy: unknown = \"{action}\"", i + 1);
            }
            k => println!("statement {}: {}", i + 1, k.name()),
        }
        println!("  writes: {}\n  reads: {}", list(&s.writes), list(&s.reads));
        if !s.locks.is_empty() {
            println!("  locks: {}", list(&s.locks));
        }
        if !s.nondeterministic.is_empty() {
            println!("  nondeterministic: {}", s.nondeterministic.join(", "));
        }
        for d in policy.decide_statement(s) {
            match &d.rule {
                crate::policy::RuleRef::Rule { line, .. } => {
                    println!("  {} -> {} (rule \"{}\", line {line})", d.table, d.mode.name(), d.rule)
                }
                crate::policy::RuleRef::Default => println!("  {} -> {} (default)", d.table, d.mode.name()),
            }
        }
    }
    ExitCode::SUCCESS
}

/// `capgate explain --json`: outside tools rely on these field names and their order.
#[derive(serde::Serialize)]
struct Explained {
    statements: Vec<ExplainedStatement>,
}

#[derive(serde::Serialize)]
struct ExplainedStatement {
    kind: &'static str,
    /// Only for `unknown`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    writes: Vec<String>,
    reads: Vec<String>,
    nondeterministic: Vec<String>,
    decisions: Vec<ExplainedDecision>,
}

#[derive(serde::Serialize)]
struct ExplainedDecision {
    table: String,
    mode: &'static str,
    rule: String,
}
