//! `capgate verify`: compare the primary with each replica, table by table.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Scheme};
use crate::policy::{Mode, PolicyHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::verify::{self, Limits, Progress, ProgressFn, Selection, TableName};

/// `capgate verify`: exit 0 equal, 1 diverged, 2 when verify could not do its job (bad
/// configuration or policy, bad `--table`, a server out of reach, a comparison that failed).
pub(super) fn verify(config: &Path, tables: &[String], json: bool, chunk_rows: usize) -> ExitCode {
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
    let (selection, note) = if !tables.is_empty() {
        let mut named = Vec::new();
        for t in tables {
            let parsed = match config.primary.url.scheme {
                Scheme::MySql => verify::mysql::sql::parse_table_name(t),
                _ => verify::parse_table_name(t),
            };
            match parsed {
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
    // On a terminal, large tables show how far the comparison is (on standard error, so the
    // report itself stays clean).
    let tty = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let limits = Limits { chunk_rows, ..Limits::default() };
    let progress = tty.then_some(show_progress as ProgressFn);
    let result = runtime.block_on(verify::run_reporting(&config, &selection, limits, progress));
    if tty {
        eprint!("\r\x1b[K");
    }
    let mut report = match result {
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

/// One progress line, rewritten in place at most five times a second.
fn show_progress(p: &Progress<'_>) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    if now.saturating_sub(LAST.load(Ordering::Relaxed)) < 200 {
        return;
    }
    LAST.store(now, Ordering::Relaxed);
    let share = match p.estimate {
        Some(total) if total > 0 => format!(" of about {total} ({:.0} %)", (p.rows as f64 / total as f64 * 100.0).min(100.0)),
        _ => String::new(),
    };
    eprint!("\r\x1b[Kverify: {}: {} rows compared{share}", p.table, p.rows);
}
