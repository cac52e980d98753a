//! `capgate verify`: compare the primary with each replica, table by table.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::policy::{Mode, PolicyHandle};
use crate::verify::{self, Limits, Selection, TableName};

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
