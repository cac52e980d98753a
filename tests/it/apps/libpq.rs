//! libpq's own tools with every table replicated: a psql script (tests/sql/apps_psql.sql) and
//! pgbench's TPC-B in its three protocol modes, each `sync` and then `async`.

use std::process::Command;

use super::{fresh, reference_db, Mode, Site};
use crate::replication::{bed, primary_rows};
use crate::support::pg_bin;

const PSQL_SCHEMA: &str = "DROP TABLE IF EXISTS ap_psql_acct, ap_psql_log; \
     CREATE TABLE ap_psql_acct (id int PRIMARY KEY, label text, amount numeric(12,2)); \
     CREATE TABLE ap_psql_log (id serial PRIMARY KEY, msg text NOT NULL)";

/// The script's stdout and stderr, together.
fn psql_script(url: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-q", "-f", "tests/sql/apps_psql.sql", url])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run psql");
    format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn psql_script_with_every_table_replicated() {
    let reference = psql_script(&reference_db("ref_ap_psql", PSQL_SCHEMA));
    for expected in ["sqlstate 23505", "sqlstate 25P02", "\"ten, with comma\"", "after truncate", "invalid input syntax for type integer"] {
        assert!(reference.contains(expected), "the script did not exercise `{expected}`:\n{reference}");
    }
    let _one = crate::replication::exclusive().await;
    for mode in [Mode::Sync, Mode::Async] {
        fresh(PSQL_SCHEMA).await;
        let site = Site::start("ap_psql", mode, "public.ap_psql_*").await;
        let got = psql_script(&site.url());
        if got != reference {
            let diff: Vec<_> = got.lines().zip(reference.lines()).filter(|(a, b)| a != b).take(10).collect();
            panic!(
                "psql through capgate ({}) differs from the run without replication; first lines (capgate, reference): {diff:#?}\n{got}",
                mode.name()
            );
        }
        site.verify_equal(&["public.ap_psql_acct", "public.ap_psql_log"]).await;
    }
}

/// Run pgbench against `port` on the bed's loopback; returns its output, panics on failure.
fn pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new(pg_bin("pgbench"))
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// `pgbench -i` on both sites directly (the same data), with a primary key on the history
/// table (row changes are matched by key: a table without one cannot be replicated).
fn pgbench_tables_on_both() {
    let b = bed();
    for port in [b.a_primary().port(), b.b_replica().port()] {
        pgbench(port, &["-i", "-q", "-s", "1"]);
    }
    for pg in [b.a_primary(), b.b_replica()] {
        pg.psql("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY").expect("key on pgbench_history");
    }
}

const PGBENCH_TABLES: &[&str] = &["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"];

#[tokio::test]
async fn pgbench_in_every_protocol_mode_with_its_tables_replicated() {
    let _one = crate::replication::exclusive().await;
    for mode in [Mode::Sync, Mode::Async] {
        pgbench_tables_on_both();
        let site = Site::start("ap_pgbench", mode, "public.pgbench_*").await;
        for protocol in ["simple", "extended", "prepared"] {
            let out = pgbench(site.port(), &["-n", "-c", "4", "-j", "2", "-t", "100", "-M", protocol]);
            assert!(out.contains("number of transactions actually processed: 400/400"), "{} {protocol}:\n{out}", mode.name());
            assert!(out.contains("number of failed transactions: 0 (0.000%)"), "{} {protocol}:\n{out}", mode.name());
        }
        // TPC-B's invariant: every delta is in each balance total and in the history.
        let sums = primary_rows(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), \
                    (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history), \
                    (SELECT count(*) FROM pgbench_history)",
        )
        .await;
        let f: Vec<&str> = sums[0].split('|').collect();
        assert!(f[0] == f[1] && f[1] == f[2] && f[2] == f[3] && f[4] == "1200", "{} balances and history disagree: {sums:?}", mode.name());
        site.verify_equal(PGBENCH_TABLES).await;
    }
}
