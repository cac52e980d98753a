//! `capgate check-config`: the configuration and the policy file it names, every problem at
//! once; with `--connect`, the servers they name too (see `backend::checks`).

use std::path::Path;
use std::process::ExitCode;

use crate::backend::checks::{check_all, Outcome};
use crate::config::Config;
use crate::policy::{Mode, Policy, UnknownAction};

pub(super) fn check_config(file: &Path, connect: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match (config.admin, config.admin_token.is_some()) {
        (Some(a), true) => format!("admin {a} (token)"),
        (Some(a), false) => format!("admin {a}"),
        (None, _) => "no admin listener".to_owned(),
    };
    println!(
        "{}: ok (site {}, listen {}, {admin}, primary {}, {} replica(s))",
        file.display(),
        config.site,
        config.listen,
        config.primary.url,
        config.replicas.len()
    );
    let policy = match &config.policy {
        None => {
            println!("no policy file: every table is local, nothing is replicated");
            Policy::default()
        }
        Some(path) => match Policy::load(path).and_then(|p| site_problems(&config, path, p)) {
            Ok(p) => {
                println!(
                    "{}: ok (default {}, unknown {}, {} rule(s), {} function(s))",
                    path.display(),
                    p.default.name(),
                    if p.unknown == UnknownAction::Relay { "relay" } else { "refuse" },
                    p.rules.len(),
                    p.functions.len()
                );
                for w in &p.warnings {
                    println!("{}:{}: {}: warning: {}", path.display(), w.line.unwrap_or(0), w.key, w.message);
                }
                for (line, message) in lag_budget_warnings(&config, &p) {
                    println!("{}:{line}: max_lag: warning: {message}", path.display());
                }
                p
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if !connect {
        println!("(the servers were not contacted: --connect checks them too)");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let checks = runtime.block_on(check_all(&config, &policy));
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        eprintln!("{failed} check(s) failed: see docs/before-you-replicate.md for each remedy");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Bounded rules whose `max_lag` a healthy replica's lag reaches under a steady load: it is up
/// to the replica's `ship_interval` plus a range's time plus the lag monitor's refresh (250 ms),
/// so below twice the interval plus half a second writes would be refused with no fault at
/// all. (line of the rule, 0 for the default; the message.)
fn lag_budget_warnings(config: &crate::config::Config, policy: &Policy) -> Vec<(usize, String)> {
    let Some(slowest) = config.replicas.iter().max_by_key(|r| r.ship_interval) else { return Vec::new() };
    let floor = slowest.ship_interval * 2 + std::time::Duration::from_millis(500);
    let modes =
        std::iter::once((0, "default", &policy.default)).chain(policy.rules.iter().map(|r| (r.line, r.pattern_text.as_str(), &r.mode)));
    modes
        .filter_map(|(line, what, mode)| match mode {
            Mode::Bounded { max_lag, .. } if *max_lag < floor => Some((
                line,
                format!(
                    "{what}: max_lag {max_lag:?} is below twice replica {}'s ship_interval ({:?}) plus 0.5 s: a healthy \
                     replica's lag reaches that under a steady load, and the table's writes would be refused with no fault; \
                     raise max_lag or lower ship_interval",
                    slowest.name, slowest.ship_interval
                ),
            )),
            _ => None,
        })
        .collect()
}

/// `policy`, or what the site refuses in it (a MySQL/MariaDB site: keys built for PostgreSQL
/// only), as `capgate run` and every reload would.
fn site_problems(config: &crate::config::Config, path: &Path, policy: Policy) -> Result<Policy, crate::policy::PolicyError> {
    let problems = match config.primary.url.scheme {
        crate::config::Scheme::MySql => crate::frontend::mysql::policy_limits::problems(&policy, config),
        crate::config::Scheme::Postgres => Vec::new(),
    };
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(crate::policy::PolicyError { file: path.to_owned(), problems })
    }
}
