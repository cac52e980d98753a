//! Concurrent clients racing on the rows they read, in every mode and both protocols of
//! PostgreSQL's wire format (pgbench `-M simple` and `-M extended`, 6 clients): read-dependent
//! writes (`UPDATE acct SET bal = (SELECT rate FROM rates …)` against `UPDATE rates SET rate =
//! rate + 1`), transfers between accounts and a hot-row counter. Statement replay made the
//! sites differ here; with row images they must end identical.

use std::process::Command;

use super::{fresh, Mode, Site};
use crate::replication::primary_rows;
use crate::support::{pg_bin, scratch};

const SCHEMA: &str = "DROP TABLE IF EXISTS ap_race_acct, ap_race_rates, ap_race_hot, ap_race_log; \
     CREATE TABLE ap_race_acct (id int PRIMARY KEY, bal bigint NOT NULL, rated bigint NOT NULL DEFAULT 0); \
     CREATE TABLE ap_race_rates (id int PRIMARY KEY, rate bigint NOT NULL); \
     CREATE TABLE ap_race_hot (id int PRIMARY KEY, v bigint NOT NULL); \
     CREATE TABLE ap_race_log (id bigserial PRIMARY KEY, a int, b int, at timestamptz NOT NULL DEFAULT clock_timestamp()); \
     INSERT INTO ap_race_acct SELECT g, 1000 FROM generate_series(1, 50) g; \
     INSERT INTO ap_race_rates VALUES (1, 0); INSERT INTO ap_race_hot VALUES (1, 0)";

/// The read-dependent write: the value written is whatever the rate is when it is read.
const READ_DEPENDENT: &str = "\\set id random(1, 50)\n\
     UPDATE ap_race_acct SET rated = (SELECT rate FROM ap_race_rates WHERE id = 1) WHERE id = :id;\n";
/// What it races with.
const RATE_BUMP: &str = "UPDATE ap_race_rates SET rate = rate + 1 WHERE id = 1;\n";
/// A transfer (keys in order, so transfers never deadlock each other) and a hot-row counter
/// with a log row per transfer.
const TRANSFER: &str = "\\set a random(1, 49)\n\\set b random(:a + 1, 50)\n\\set amount random(1, 20)\n\
     BEGIN;\n\
     UPDATE ap_race_acct SET bal = bal - :amount WHERE id = :a;\n\
     UPDATE ap_race_acct SET bal = bal + :amount WHERE id = :b;\n\
     UPDATE ap_race_hot SET v = v + 1 WHERE id = 1;\n\
     INSERT INTO ap_race_log (a, b) VALUES (:a, :b);\n\
     END;\n";

const TABLES: &[&str] = &["public.ap_race_acct", "public.ap_race_rates", "public.ap_race_hot", "public.ap_race_log"];
const TRANSACTIONS_PER_CLIENT: usize = 60;

fn pgbench(port: u16, protocol: &str) -> String {
    let dir = scratch("ap_race");
    let mut args = vec!["-n".to_owned(), "-c".into(), "6".into(), "-j".into(), "2".into()];
    args.extend(["-t".into(), TRANSACTIONS_PER_CLIENT.to_string(), "-M".into(), protocol.into()]);
    for (name, script, weight) in [("read_dependent", READ_DEPENDENT, 3), ("rate_bump", RATE_BUMP, 1), ("transfer", TRANSFER, 2)] {
        let path = dir.join(format!("{name}.sql"));
        std::fs::write(&path, script).unwrap();
        args.push("-f".into());
        args.push(format!("{}@{weight}", path.display()));
    }
    let out = Command::new(pg_bin("pgbench"))
        .args(&args)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench -M {protocol} failed:\n{text}");
    let total = 6 * TRANSACTIONS_PER_CLIENT;
    assert!(text.contains(&format!("number of transactions actually processed: {total}/{total}")), "-M {protocol}:\n{text}");
    assert!(text.contains("number of failed transactions: 0 (0.000%)"), "-M {protocol}:\n{text}");
    text
}

async fn race(mode: Mode) {
    fresh(SCHEMA).await;
    let site = Site::start("ap_race", mode, "public.ap_race_*").await;
    for protocol in ["simple", "extended"] {
        pgbench(site.port(), protocol);
    }
    // What the primary holds is consistent; verify says the replica holds the same.
    let sums = primary_rows(
        "SELECT (SELECT sum(bal) FROM ap_race_acct), (SELECT v FROM ap_race_hot), (SELECT count(*) FROM ap_race_log), \
                (SELECT count(*) FROM ap_race_acct WHERE rated > 0)",
    )
    .await;
    let f: Vec<&str> = sums[0].split('|').collect();
    assert_eq!(f[0], "50000", "{} transfers created or lost money: {sums:?}", mode.name());
    assert_eq!(f[1], f[2], "{} hot row and log disagree: {sums:?}", mode.name());
    assert_ne!(f[3], "0", "{}: the read-dependent writes never read a bumped rate: {sums:?}", mode.name());
    site.verify_equal(TABLES).await;
}

#[tokio::test]
async fn racing_read_dependent_writes_transfers_and_a_hot_row_in_every_mode() {
    let _one = crate::replication::exclusive().await;
    for mode in [Mode::Sync, Mode::Async, Mode::Bounded] {
        race(mode).await;
    }
}
