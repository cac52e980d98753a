//! psql and pgbench, the PostgreSQL tools, through the proxy.

use std::process::Command;

use crate::support::{pg_bin, Proxy};

/// Run the compatibility script with psql against `url`; stdout and stderr together, with
/// backend process ids masked (the only thing allowed to differ between two sessions).
fn run_script(url: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-q", "-f", "tests/sql/compat.sql", url])
        .env("CAPGATE_PSQL", pg_bin("psql"))
        .env("CAPGATE_NOTIFY_URL", url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run psql");
    let text = format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut masked = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("server process with PID ") {
            Some(i) => format!("{}server process with PID N.", &line[..i]),
            None => line.to_owned(),
        };
        masked.push_str(&line);
        masked.push('\n');
    }
    masked
}

#[test]
fn psql_script_output_equals_direct() {
    let proxy = Proxy::start("");
    let via_proxy = run_script(&proxy.url("postgres", "postgres"));
    let direct = run_script(&Proxy::direct_url("postgres", "postgres"));
    if via_proxy != direct {
        let diff: Vec<_> = via_proxy.lines().zip(direct.lines()).filter(|(a, b)| a != b).take(10).collect();
        panic!("psql output differs (proxy vs direct), first lines: {diff:#?}");
    }
    // The script really exercised what it claims to.
    for expected in [
        "sqlstate 23505",
        "sqlstate 25P02",
        "invalid input syntax for type integer: \"not-a-number\"",
        "\"ten, with comma\"",
        "row 120",
        "NOTICE:  notice from plpgsql",
        "Asynchronous notification \"compat_channel\" with payload \"self-notification\" received from server process with PID N.",
        "Asynchronous notification \"compat_channel\" with payload \"from another session\" received from server process with PID N.",
        "100000 | 14ee22eaba297944c96afdbe5b16c65b",
        "2026-06-01 08:00:00-04",
    ] {
        assert!(via_proxy.contains(expected), "missing `{expected}` in the proxy's output");
    }
}

/// pgbench output: the number of failed transactions and the processed count.
fn pgbench(args: &[&str], url_port: u16) -> String {
    let out = Command::new(pg_bin("pgbench"))
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &url_port.to_string(), "-U", "postgres", "pgbench_db"])
        .output()
        .expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[test]
fn pgbench_runs_clean_in_every_protocol_mode() {
    let primary = crate::support::primary();
    let _ = primary.psql("DROP DATABASE IF EXISTS pgbench_db");
    primary.create_database("pgbench_db").expect("create pgbench_db");
    let proxy = Proxy::start("");
    let port = proxy.addr.port();
    let init = pgbench(&["-i", "-s", "1", "-q"], port);
    assert!(init.contains("done in"), "{init}");
    for script in [&["-S"][..], &[][..]] {
        for mode in ["simple", "extended", "prepared"] {
            let mut args = vec!["-c", "4", "-j", "2", "-t", "250", "-M", mode];
            args.extend_from_slice(script);
            let out = pgbench(&args, port);
            assert!(out.contains("number of transactions actually processed: 1000/1000"), "{mode} {script:?}:\n{out}");
            assert!(out.contains("number of failed transactions: 0 (0.000%)"), "{mode} {script:?}:\n{out}");
        }
    }
    // The TPC-B runs really wrote through the proxy: the history table has their rows.
    let history = crate::support::psql_at(&primary.url("postgres", "pgbench_db"), "SELECT count(*) FROM pgbench_history");
    // pgbench truncates the history at the start of each run: the last TPC-B run left its 1000.
    assert_eq!(history.trim(), "1000");
}
