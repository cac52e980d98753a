//! `capgate verify` against a real primary and a real replica with planted differences: it
//! must find every one of them and nothing else.

use std::path::Path;

use capgate::config::Config;
use capgate::verify::{self, Limits, RowDifference, Selection, TableName, TableResult};

use crate::support::{primary, psql_at, replica};

fn config() -> Config {
    let text = format!(
        "site = \"a\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\n",
        primary().url("postgres", "verify_db"),
        replica().url("postgres", "verify_db")
    );
    Config::parse(&text, Path::new("/tmp/verify-test.toml")).unwrap()
}

/// The same schema and rows on both servers, then the planted differences on the replica.
fn plant() {
    let same = "DROP SCHEMA IF EXISTS vt CASCADE; CREATE SCHEMA vt;
        CREATE TABLE vt.orders (id int PRIMARY KEY, amount numeric(12,2), note text, at timestamptz);
        INSERT INTO vt.orders SELECT g, g * 1.5, 'note ' || g, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' FROM generate_series(1, 2500) g;
        CREATE TABLE vt.lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line));
        INSERT INTO vt.lines SELECT g / 3, g % 3, 'sku-' || g FROM generate_series(1, 3000) g;
        CREATE TABLE vt.log (msg text);
        INSERT INTO vt.log SELECT 'event ' || g FROM generate_series(1, 50) g;
        CREATE TABLE vt.\"Mixed Case\" (\"Key\" text PRIMARY KEY, v bytea);
        INSERT INTO vt.\"Mixed Case\" VALUES ('it''s', '\\x00ff'), ('plain', NULL);";
    for server in [primary(), replica()] {
        let _ = server.create_database("verify_db");
        psql_at(&server.url("postgres", "verify_db"), same);
    }
    psql_at(&primary().url("postgres", "verify_db"), "CREATE TABLE vt.only_here (id int PRIMARY KEY)");
    psql_at(
        &replica().url("postgres", "verify_db"),
        "UPDATE vt.orders SET amount = 0 WHERE id = 1500;
         DELETE FROM vt.orders WHERE id = 42;
         INSERT INTO vt.orders VALUES (9999, 1, 'stray', now());
         UPDATE vt.orders SET note = NULL WHERE id = 2000;
         INSERT INTO vt.log VALUES ('extra');",
    );
}

fn result<'a>(report: &'a verify::Report, table: &str) -> &'a TableResult {
    &report.replicas[0].tables.iter().find(|t| t.table == table).unwrap_or_else(|| panic!("{table} not in report")).result
}

#[tokio::test]
async fn finds_every_planted_difference_and_nothing_else() {
    tokio::task::spawn_blocking(plant).await.unwrap();
    let config = config();
    let limits = Limits { chunk_rows: 1000, max_differences: 100 };
    let everything = Selection::Replicated(Box::new(|t: &TableName| t.schema == "vt"));
    let report = verify::run(&config, &everything, limits).await.unwrap();
    assert_eq!(report.exit_code(), 1, "{}", report.render());

    match result(&report, "vt.orders") {
        TableResult::Diverged { rows_primary, rows_replica, chunks, chunks_diverged, rows_differing, differences } => {
            assert_eq!((*rows_primary, *rows_replica, *chunks), (2500, 2500, 3), "{}", report.render());
            assert_eq!(*chunks_diverged, 3, "ids 42, 1500/2000 and 9999 fall in three chunks");
            assert_eq!(*rows_differing, 4);
            let mut keys: Vec<_> = differences.iter().map(|d: &RowDifference| d.key[0].parse::<i32>().unwrap()).collect();
            keys.sort();
            assert_eq!(keys, vec![42, 1500, 2000, 9999]);
            let d = differences.iter().find(|d| d.key == ["42"]).unwrap();
            assert!(d.primary.as_deref().unwrap().starts_with("(42,63.00,\"note 42\""), "{d:?}");
            assert_eq!(d.replica, None);
            let d = differences.iter().find(|d| d.key == ["9999"]).unwrap();
            assert_eq!(d.primary, None);
            let d = differences.iter().find(|d| d.key == ["1500"]).unwrap();
            assert!(d.replica.as_deref().unwrap().starts_with("(1500,0.00,"), "{d:?}");
            let d = differences.iter().find(|d| d.key == ["2000"]).unwrap();
            assert!(d.replica.as_deref().unwrap().starts_with("(2000,3000.00,,"), "NULL note on the replica: {d:?}");
        }
        other => panic!("vt.orders: {other:?}"),
    }
    assert_eq!(result(&report, "vt.lines"), &TableResult::Equal { rows: 3000, chunks: 4 });
    // Printed the way `--table` takes it back: quoted where the case or a space needs it.
    assert_eq!(result(&report, "vt.\"Mixed Case\""), &TableResult::Equal { rows: 2, chunks: 1 });
    assert_eq!(result(&report, "vt.log"), &TableResult::NoPrimaryKey { equal: false, rows_primary: 50, rows_replica: 51 });
    assert_eq!(result(&report, "vt.only_here"), &TableResult::MissingOnReplica);
    let text = report.render();
    assert!(text.contains("key (42): missing on the replica"), "{text}");
    assert!(text.contains("no primary key, so rows cannot be pinpointed"), "{text}");

    // Narrowed to the tables that are equal: exit 0.
    let equal = Selection::Named(vec![TableName::new("vt", "lines"), TableName::new("vt", "Mixed Case")]);
    let report = verify::run(&config, &equal, limits).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["replicas"][0]["tables"][0]["status"], "equal");
    assert_eq!(json["replicas"][0]["tables"][1]["table"], "vt.\"Mixed Case\"");
    assert_eq!((json["diverged"].as_bool(), json["failed"].as_bool()), (Some(false), Some(false)));
}
