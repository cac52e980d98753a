//! The `capgate` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::classify::{Classifier, Dialect, Kind, SearchPath, SqlMode};
use crate::config::{Config, Scheme};
use crate::frontend::postgres::Server;
use crate::policy::{Mode, Policy, PolicyHandle, UnknownAction};
use crate::verify::{self, Limits, Selection, TableName};

#[derive(Parser, Debug)]
#[command(
    name = "capgate",
    version,
    about = "Per-table consistency or availability across data centres: a PostgreSQL and MySQL/MariaDB wire-protocol proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the proxy in front of the site's primary.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and the policy file it names; exits 1 and lists every
    /// problem if either is invalid.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show how statements are classified and what the policy decides for each written table.
    Explain {
        /// The main configuration (for its `policy` file and primary URL). Without it and
        /// without `--policy`, every table is local.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A policy file to try (overrides the configuration's `policy`).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// postgres or mysql (default: from the primary URL; postgres without a configuration).
        #[arg(long)]
        dialect: Option<String>,
        /// PostgreSQL: schemas for unqualified names, comma-separated, in lookup order
        /// (default: public).
        #[arg(long)]
        search_path: Option<String>,
        /// MySQL: the session's current database, where unqualified names live (default:
        /// none, so only database-qualified names resolve).
        #[arg(long)]
        database: Option<String>,
        /// MySQL: the session's sql_mode, as `SELECT @@sql_mode` shows it; ANSI_QUOTES and
        /// NO_BACKSLASH_ESCAPES change how the text is read.
        #[arg(long)]
        sql_mode: Option<String>,
        /// Print JSON: {"statements":[{"kind","writes","reads","nondeterministic","decisions"}]}.
        #[arg(long)]
        json: bool,
        /// The SQL text (one or more statements).
        sql: String,
    },
    /// Compare the primary with each replica, table by table; exits 0 when equal, 1 when a
    /// table diverged, 2 on error.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Compare this table (`schema.table`, or `table` in `public`; quote parts with
        /// double quotes). Repeatable. Default: every table the policy replicates.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Rows per checksum chunk.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        chunk_rows: u32,
    },
}

/// Run the command; the exit code follows the usual convention (0 ok, 1 failure, 2 usage).
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Explain { config, policy, dialect, search_path, database, sql_mode, json, sql } => {
            let session = Session { search_path, database, sql_mode };
            explain(config.as_deref(), policy.as_deref(), dialect.as_deref(), session, json, &sql)
        }
        Command::Verify { config, tables, json, chunk_rows } => verify(&config, &tables, json, chunk_rows as usize),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (site {}, listen {}, primary {}, {} replica(s))",
                    config.display(),
                    c.site,
                    c.listen,
                    c.primary.url,
                    c.replicas.len()
                );
                let Some(policy) = &c.policy else { return ExitCode::SUCCESS };
                match Policy::load(policy) {
                    Ok(p) => {
                        println!(
                            "{}: ok (default {}, unknown {}, {} rule(s), {} function(s))",
                            policy.display(),
                            p.default.name(),
                            if p.unknown == UnknownAction::Relay { "relay" } else { "refuse" },
                            p.rules.len(),
                            p.functions.len()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // Client sessions run on their own worker threads (`workers`); this runtime runs
            // the accept loop, the admin listener, replica health and the shippers.
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

async fn run(config: Arc<Config>) -> ExitCode {
    let (first, second) = signals();
    // The primary URL's scheme picks the protocol spoken to applications.
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
    let started: Result<Serving, String> = match config.primary.url.scheme {
        Scheme::MySql => {
            crate::frontend::mysql::Server::bind(config).await.map(|s| Box::pin(s.run(first, second)) as Serving).map_err(|e| e.to_string())
        }
        Scheme::Postgres => Server::bind(config).await.map(|s| Box::pin(s.run(first, second)) as Serving).map_err(|e| e.to_string()),
    };
    match started {
        Ok(serving) => {
            serving.await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Two futures: the first SIGTERM/SIGINT, and the second one.
fn signals() -> (impl std::future::Future<Output = ()>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            count += 1;
            let _ = tx.send(count);
        }
    });
    let wait_for = |n: u32| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|c| *c >= n).await;
        }
    };
    (wait_for(1), wait_for(2))
}

/// The session `capgate explain` classifies in, as given on the command line.
struct Session {
    search_path: Option<String>,
    database: Option<String>,
    sql_mode: Option<String>,
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

/// `capgate explain`: classify `sql` and decide each written table under the policy.
fn explain(config: Option<&Path>, policy: Option<&Path>, dialect: Option<&str>, session: Session, json: bool, sql: &str) -> ExitCode {
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
    let classification = Classifier::new(dialect, 0).classify(sql, &path, &policy.catalog(dialect));
    if json {
        let statements: Vec<ExplainedStatement> = classification
            .statements
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
    for (i, s) in classification.statements.iter().enumerate() {
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

/// `capgate verify`: exit 0 equal, 1 diverged, 2 when verify could not do its job (bad
/// configuration or policy, bad `--table`, a server out of reach, a comparison that failed).
fn verify(config: &Path, tables: &[String], json: bool, chunk_rows: usize) -> ExitCode {
    let fail = |message: String| {
        if json {
            println!("{}", serde_json::json!({ "error": message }));
        }
        eprintln!("capgate verify: {message}");
        ExitCode::from(2)
    };
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if config.primary.url.scheme == Scheme::MySql {
        return fail("comparing MySQL/MariaDB tables is not built yet: capgate verify works on PostgreSQL sites".into());
    }
    let (selection, note) = if !tables.is_empty() {
        let mut named = Vec::new();
        for t in tables {
            match verify::parse_table_name(t) {
                Ok(name) => named.push(name),
                Err(e) => return fail(format!("--table: {e}")),
            }
        }
        (Selection::Named(named), None)
    } else if let Some(file) = &config.policy {
        let policy = match PolicyHandle::load(file) {
            Ok(h) => h.current(),
            Err(e) => return fail(e.to_string()),
        };
        let note = (!policy.replicates_anything()).then(|| {
            format!(
                "the policy {} marks every table local: nothing to compare (name tables with --table to compare them anyway)",
                file.display()
            )
        });
        let replicated = move |t: &TableName| policy.decide_table(t).mode != Mode::Local;
        (Selection::Replicated(Box::new(replicated)), note)
    } else {
        let note = format!(
            "{} names no policy file, so every table is local and nothing is replicated: nothing to compare (name tables with --table to compare them anyway)",
            config.file.display()
        );
        (Selection::Replicated(Box::new(|_: &TableName| false)), Some(note))
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let limits = Limits { chunk_rows, ..Limits::default() };
    let mut report = match runtime.block_on(verify::run(&config, &selection, limits)) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    report.note = note;
    if json {
        match serde_json::to_string(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(format!("cannot print JSON: {e}")),
        }
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code())
}
