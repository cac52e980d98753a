//! `capgate conflicts`: list the conflicts the replicas recorded (newest first), show one
//! with everything recorded about it (the statement or both row images), mark one resolved.
//! Reads the replicas named in the configuration directly: it works whether or not capgate
//! is running.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::admin::conflicts::{self, Conflict};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Everything recorded about one conflict.
    Show {
        /// The conflict's id (first column of the list).
        id: i64,
    },
    /// Mark a conflict resolved (after fixing the rows by hand, or deciding they are fine).
    Resolve {
        id: i64,
        /// What was done, kept with the record.
        #[arg(long, default_value = "")]
        note: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))
}

pub(super) fn conflicts(
    config: Option<&Path>,
    replica: Option<&str>,
    limit: i64,
    unresolved: bool,
    json: bool,
    action: Option<Action>,
) -> ExitCode {
    match run(config, replica, limit, unresolved, json, action) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capgate conflicts: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(
    config: Option<&Path>,
    replica: Option<&str>,
    limit: i64,
    unresolved: bool,
    json: bool,
    action: Option<Action>,
) -> Result<ExitCode, String> {
    let file = config.ok_or("--config is required")?;
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let runtime = runtime()?;
    let need_replica = || replica.ok_or("--replica NAME is required: conflict ids are per replica");
    match action {
        None => {
            let listing = runtime.block_on(conflicts::list(&config, replica, limit.clamp(1, 10_000), unresolved));
            if json {
                println!("{}", serde_json::to_string(&listing).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render_list(&listing.conflicts));
            }
            for (r, why) in &listing.errors {
                eprintln!("replica {r}: {why}");
            }
            Ok(if listing.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Some(Action::Show { id }) => {
            let c = runtime.block_on(conflicts::show(&config, need_replica()?, id)).map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string(&c).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render_one(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Action::Resolve { id, note }) => {
            let by = std::env::var("USER").unwrap_or_else(|_| "capgate conflicts".to_owned());
            runtime.block_on(conflicts::resolve(&config, need_replica()?, id, &by, &note)).map_err(|e| e.to_string())?;
            println!("conflict {id} of replica {} marked resolved by {by}", need_replica()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render_list(list: &[Conflict]) -> String {
    if list.is_empty() {
        return "no conflicts recorded\n".to_owned();
    }
    let mut out = String::new();
    for c in list {
        let dash = || "-".to_owned();
        out.push_str(&format!(
            "{:<8} #{:<6} {}  {}  {}  {}{}\n         {}\n",
            c.replica,
            c.id,
            c.at().unwrap_or_else(dash),
            c.tables().unwrap_or_else(dash),
            c.kind().unwrap_or_else(dash),
            c.resolution().unwrap_or_else(dash),
            if c.resolved_at().is_some() { " · resolved" } else { "" },
            c.error().unwrap_or_default(),
        ));
    }
    out.push_str("details: capgate conflicts show ID --replica NAME\n");
    out
}

fn render_one(c: &Conflict) -> String {
    let mut out = format!("conflict #{} on replica {}\n", c.id, c.replica);
    let summary = [
        ("at", c.at()),
        ("origin", c.origin()),
        ("tables", c.tables()),
        ("kind", c.kind()),
        ("error", c.error()),
        ("resolution", c.resolution()),
        ("resolved_at", c.resolved_at()),
    ];
    for (k, v) in summary {
        if let Some(v) = v {
            out.push_str(&format!("  {k:<12} {v}\n"));
        }
    }
    for (k, v) in c.details() {
        out.push_str(&format!("  {k:<12} {v}\n"));
    }
    out
}
