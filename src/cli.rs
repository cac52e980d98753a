//! The `capgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::frontend::postgres::Server;

#[derive(Parser, Debug)]
#[command(name = "capgate", version, about = "Per-table consistency or availability across data centres: a PostgreSQL wire-protocol proxy")]
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
    /// Validate a configuration file; exits 1 and lists every problem if it is invalid.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Run the command; the exit code follows the usual convention (0 ok, 1 failure, 2 usage).
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
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
                ExitCode::SUCCESS
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
            let threads: usize = std::env::var("CAPGATE_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
            let runtime = if threads == 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else if threads > 1 {
                tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().enable_all().build()
            };
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
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("capgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (first, second) = signals();
    server.run(first, second).await;
    ExitCode::SUCCESS
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
