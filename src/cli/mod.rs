//! The `capgate` command line: one file per subcommand.
//!
//! - `run`: the proxy in front of the site's primary;
//! - `demo`: two throwaway sites and capgate in front of one, to see the four modes work;
//! - `check-config`: validate the files, and with `--connect` the servers they name;
//! - `explain`: what capgate decides for statements;
//! - `verify`: compare the primary with each replica;
//! - `status`, `conflicts`: what a running capgate and its replicas report.
//!
//! Exit codes follow the usual convention: 0 ok, 1 a failure the command reports (invalid
//! file, diverged tables, a check that failed), 2 the command could not do its job.

mod check;
mod conflicts;
mod demo;
mod explain;
mod resume;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, Scheme};
use crate::frontend::postgres::Server;

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
    /// Start two throwaway sites (a primary and a replica joined by a link you can cut) and
    /// capgate in front of the primary, with a policy that shows all four modes; stays up
    /// until Ctrl-C, then removes everything. Needs PostgreSQL's server binaries.
    Demo {
        /// Run the narrated scenario (writes, a partition, the heal, verify), check every
        /// outcome, and exit: 0 when everything behaved as told.
        #[arg(long)]
        story: bool,
        /// MariaDB sites instead of PostgreSQL.
        #[arg(long)]
        mysql: bool,
        /// Where applications connect (default 127.0.0.1:6432, or a free port if taken).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The admin listener and dashboard (default 127.0.0.1:9930, or a free port if taken).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file and the policy file it names; exits 1 and lists every
    /// problem if either is invalid.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Also connect to the primary and every replica and check what replication needs
        /// there (TLS, authentication, privileges, max_prepared_transactions, the replicated
        /// tables); one line per check, exit 1 if any failed.
        #[arg(long)]
        connect: bool,
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
        /// Read the SQL from this file (`-` for standard input), besides any given as arguments.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// The SQL: one or more arguments, each one or more statements separated by `;`.
        #[arg(required_unless_present = "file")]
        sql: Vec<String>,
    },
    /// Compare the primary with each replica, table by table (PostgreSQL or MySQL/MariaDB):
    /// checksums per primary-key chunk, then the rows that differ; exits 0 when equal, 1 when
    /// a table diverged, 2 on error. MySQL text compares as its collation does (`'a' = 'A'`
    /// under a case-insensitive one), inside a consistent snapshot on each side.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Compare this table. PostgreSQL: `schema.table`, or `table` in `public`; quote parts
        /// with double quotes. MySQL: `database.table`, parts in backticks or double quotes,
        /// case kept. Repeatable. Default: every table the policy replicates.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Rows per checksum chunk.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        chunk_rows: u32,
    },
    /// Show a running capgate's state as a table: its primary, each replica's health, lag,
    /// pending rows and drain rate, and the tables it replicates (from its admin listener).
    Status {
        /// The running capgate's configuration (for its `admin` address and `admin_token`).
        #[arg(long, short, required_unless_present = "url")]
        config: Option<PathBuf>,
        /// The admin listener's address instead, e.g. http://127.0.0.1:9930 (the token then
        /// comes from CAPGATE_ADMIN_TOKEN).
        #[arg(long)]
        url: Option<String>,
        /// Redraw every N seconds until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// Print the `/status` JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// List the conflicts the replicas recorded, show one with everything recorded about it,
    /// or mark one resolved.
    Conflicts {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Only this replica (required by `show` and `resolve`).
        #[arg(long, global = true)]
        replica: Option<String>,
        /// Most conflicts listed per replica, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Leave out the conflicts marked resolved.
        #[arg(long)]
        unresolved: bool,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<conflicts::Action>,
    },
    /// Resume a table the shipper to a replica halted (a conflict under on_conflict = "halt",
    /// a failed apply, a table missing on the replica): it is copied again from the primary,
    /// then shipped (or, with --adopt, taken back without a copy). Asks the running capgate
    /// through its admin listener.
    Resume {
        #[arg(long, short)]
        config: PathBuf,
        /// The replica's name (`[[replicas]] name`).
        #[arg(long)]
        replica: String,
        /// The table, as `/status` shows it (`schema.table`).
        #[arg(long)]
        table: String,
        /// Take the halted table back without copying it (PostgreSQL): for a table whose
        /// replica site takes writes of its own, once it is equal on both sites (`capgate
        /// verify` shows it). Changes committed on the primary from now on ship; none before.
        #[arg(long)]
        adopt: bool,
    },
}

/// Run the command.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Explain { config, policy, dialect, search_path, database, sql_mode, json, file, sql } => {
            let session = explain::Session { search_path, database, sql_mode };
            explain::explain(config.as_deref(), policy.as_deref(), dialect.as_deref(), session, json, file.as_deref(), &sql)
        }
        Command::Verify { config, tables, json, chunk_rows } => verify::verify(&config, &tables, json, chunk_rows as usize),
        Command::CheckConfig { config, connect } => check::check_config(&config, connect),
        Command::Status { config, url, watch, json } => status::status(config.as_deref(), url.as_deref(), watch, json),
        Command::Conflicts { config, replica, limit, unresolved, json, action } => {
            conflicts::conflicts(config.as_deref(), replica.as_deref(), limit, unresolved, json, action)
        }
        Command::Demo { story, mysql, listen, admin } => demo::demo(story, mysql, listen, admin),
        Command::Resume { config, replica, table, adopt } => resume::resume(&config, &replica, &table, adopt),
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match runtime() {
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

/// The async runtime of `run` and `demo`. Client sessions run on their own worker threads
/// (the `workers` key, frontend/workers.rs); this runtime runs the accept loop, the admin
/// listener, replica health and the shippers.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

async fn run(config: Arc<Config>) -> ExitCode {
    let (first, second) = signals();
    tokio::spawn(crate::frontend::memory::trim_periodically());
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
