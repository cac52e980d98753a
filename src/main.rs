use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = capgate::cli::Cli::parse();
    // The demo talks to a person in the same terminal: only warnings unless asked for more.
    let default = if matches!(cli.command, capgate::cli::Command::Demo { .. }) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    capgate::cli::main(cli)
}
