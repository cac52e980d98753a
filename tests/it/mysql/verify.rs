//! `capgate verify` on MariaDB, as a DBA runs it: the real binary against the shared primary
//! and replica. Equal tables exit 0; rows changed behind capgate's back on the replica are
//! DIVERGED with their keys (exit 1); NULLs, DECIMAL, DATETIME(6), BLOB and utf8mb4 text
//! compare exactly (a 9 MB BLOB and a 9 MB utf8mb4 text in one row too); text differing
//! only in case, accents or trailing spaces under utf8mb4_general_ci is equal, as the
//! database compares it; a table without a primary key gets a whole-table checksum, as on
//! PostgreSQL.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::support::{primary, replica};

const TABLES: &str = "SET NAMES utf8mb4; DROP DATABASE IF EXISTS cgverify; CREATE DATABASE cgverify; USE cgverify; \
    CREATE TABLE vals (id INT PRIMARY KEY, n INT NULL, d DECIMAL(12,4), ts DATETIME(6), b BLOB, t VARCHAR(40) CHARACTER SET utf8mb4) \
      DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci; \
    INSERT INTO vals VALUES (1, NULL, 1.0001, '2024-05-06 07:08:09.123456', 0x00FF10, 'grüße 🐬'), \
      (2, 0, -99999999.9999, NULL, NULL, ''), (3, 7, 0, '1999-12-31 23:59:59.999999', '', NULL); \
    CREATE TABLE ci (name VARCHAR(20) PRIMARY KEY, v VARCHAR(20), long_text TEXT) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci; \
    INSERT INTO ci VALUES ('alpha', 'one', 'Some Longer Text'), ('beta', 'two', NULL); \
    CREATE TABLE multi (a INT, b VARCHAR(10), c INT, PRIMARY KEY (a, b)); \
    INSERT INTO multi SELECT seq DIV 10, CONCAT('k', seq MOD 10), seq FROM seq_1_to_1000; \
    CREATE TABLE nokey (x INT, y VARCHAR(10)); INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, NULL); \
    CREATE TABLE big (id INT PRIMARY KEY, a LONGBLOB, b LONGTEXT CHARACTER SET utf8mb4); \
    INSERT INTO big VALUES (1, REPEAT('a', 9000000), REPEAT('b', 9000000)), (2, 'small', 'small'); \
    CREATE TABLE other (id INT PRIMARY KEY)";

const POLICY: &str =
    "default = \"local\"\n[[table]]\nmatch = \"cgverify.other\"\nmode = \"local\"\n[[table]]\nmatch = \"cgverify.*\"\nmode = \"sync\"\n";

fn config() -> PathBuf {
    let dir = crate::support::scratch("mysql-verify");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let text = format!(
        "site = \"verify\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        primary().port(),
        replica().port()
    );
    let file = dir.join("capgate.toml");
    std::fs::write(&file, text).expect("config");
    file
}

/// `capgate verify --config CONFIG ARGS…`: exit code, stdout.
fn verify(config: &PathBuf, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["verify", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run capgate verify");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn verify_json(config: &PathBuf, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json", "--chunk-rows", "100"];
    all.extend_from_slice(args);
    let (code, out) = verify(config, &all);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")))
}

fn table<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["replicas"][0]["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name} in {json:#}"))
}

#[test]
fn verify_finds_rows_changed_on_the_replica_and_compares_as_the_collation_does() {
    for server in [primary(), replica()] {
        server.sql(TABLES).expect("tables");
    }
    let config = config();

    // Equal: every replicated table, the local one left out; exit 0.
    let (code, json) = verify_json(&config, &[]);
    assert_eq!(code, Some(0), "{json:#}");
    let names: Vec<&str> = json["replicas"][0]["tables"].as_array().expect("tables").iter().filter_map(|t| t["table"].as_str()).collect();
    assert_eq!(names, ["cgverify.big", "cgverify.ci", "cgverify.multi", "cgverify.nokey", "cgverify.vals"], "{json:#}");
    // Two 9 MB values in one row: more than max_allowed_packet (16 MB) side by side.
    assert_eq!((table(&json, "cgverify.big")["status"].as_str(), table(&json, "cgverify.big")["rows"].as_u64()), (Some("equal"), Some(2)));
    assert_eq!(table(&json, "cgverify.multi")["status"], "equal");
    assert_eq!(table(&json, "cgverify.multi")["rows"], 1000);
    assert_eq!(table(&json, "cgverify.multi")["chunks"], 11, "{json:#}");
    assert_eq!(table(&json, "cgverify.vals")["rows"], 3);
    let nokey = table(&json, "cgverify.nokey");
    assert_eq!(
        (nokey["status"].as_str(), nokey["equal"].as_bool(), nokey["rows_primary"].as_u64()),
        (Some("no_primary_key"), Some(true), Some(3))
    );
    assert!(json["replicas"][0]["consistent_point"].as_str().is_some_and(|p| p.contains("CONSISTENT SNAPSHOT")), "{json:#}");

    // Case, accents and trailing spaces only, under utf8mb4_general_ci (case- and
    // accent-insensitive, PAD SPACE), in a key and in a value: equal, as MariaDB itself says.
    let (names, values) = (
        "UPDATE cgverify.ci SET name = 'BETA', v = 'twö' WHERE name = 'beta'",
        "UPDATE cgverify.ci SET v = 'ONE  ', long_text = 'SOME LONGER TEXT' WHERE name = 'alpha'",
    );
    replica().sql(&format!("SET NAMES utf8mb4; {names}; {values}")).expect("case");
    assert_eq!(replica().sql("SET NAMES utf8mb4; SELECT COUNT(*) FROM cgverify.ci WHERE name = 'beta' AND v = 'TWO'").expect("ci"), "1");
    let (code, json) = verify_json(&config, &["--table", "cgverify.ci"]);
    assert_eq!((code, table(&json, "cgverify.ci")["status"].as_str()), (Some(0), Some("equal")), "{json:#}");

    // Behind capgate's back on the replica: NULL vs 0, NULL vs '', a text value; a row
    // missing; a row of a keyless table.
    replica()
        .sql(
            "UPDATE cgverify.vals SET n = 0 WHERE id = 1; UPDATE cgverify.vals SET t = NULL WHERE id = 2; \
             UPDATE cgverify.ci SET v = 'three' WHERE name = 'beta'; UPDATE cgverify.ci SET long_text = 'Some Other Text' WHERE name = 'alpha'; \
             DELETE FROM cgverify.multi WHERE a = 42 AND b = 'k7'; DELETE FROM cgverify.nokey WHERE x = 2; \
             UPDATE cgverify.big SET a = CONCAT('A', SUBSTRING(a, 2)) WHERE id = 1",
        )
        .expect("changes behind capgate's back");
    let (code, json) = verify_json(&config, &[]);
    assert_eq!(code, Some(1), "{json:#}");
    let vals = table(&json, "cgverify.vals");
    assert_eq!((vals["status"].as_str(), vals["rows_differing"].as_u64()), (Some("diverged"), Some(2)), "{json:#}");
    let diffs = vals["differences"].as_array().expect("differences");
    let one = diffs.iter().find(|d| d["key"] == serde_json::json!(["1"])).expect("row 1 named");
    assert_eq!(one["primary"], "(1, NULL, 1.0001, 2024-05-06 07:08:09.123456, 0x00FF10, 'grüße 🐬')", "{one}");
    assert_eq!(one["replica"], "(1, 0, 1.0001, 2024-05-06 07:08:09.123456, 0x00FF10, 'grüße 🐬')", "{one}");
    let two = diffs.iter().find(|d| d["key"] == serde_json::json!(["2"])).expect("row 2 named");
    assert_eq!(
        (two["primary"].as_str(), two["replica"].as_str()),
        (Some("(2, 0, -99999999.9999, NULL, NULL, '')"), Some("(2, 0, -99999999.9999, NULL, NULL, NULL)"))
    );
    let ci = table(&json, "cgverify.ci");
    let mut keys: Vec<String> = ci["differences"].as_array().expect("differences").iter().map(|d| d["key"].to_string()).collect();
    keys.sort();
    assert_eq!(keys, ["[\"alpha\"]", "[\"beta\"]"], "{ci:#}");
    let multi = table(&json, "cgverify.multi");
    assert_eq!(
        (multi["status"].as_str(), multi["chunks_diverged"].as_u64(), multi["rows_replica"].as_u64()),
        (Some("diverged"), Some(1), Some(999))
    );
    assert_eq!(multi["differences"][0]["key"], serde_json::json!(["42", "k7"]), "{multi:#}");
    assert!(multi["differences"][0]["replica"].is_null(), "{multi:#}");
    assert_eq!(table(&json, "cgverify.nokey")["equal"], false);
    let big = table(&json, "cgverify.big");
    assert_eq!((big["rows_differing"].as_u64(), &big["differences"][0]["key"]), (Some(1), &serde_json::json!(["1"])), "{big:#}");

    // The exact values: DECIMAL's last digit, a microsecond, one BLOB byte, each alone.
    for (change, what) in [
        ("UPDATE cgverify.vals SET n = NULL, d = 1.0002 WHERE id = 1", "DECIMAL"),
        ("UPDATE cgverify.vals SET d = 1.0001, ts = '2024-05-06 07:08:09.123457' WHERE id = 1", "DATETIME(6)"),
        ("UPDATE cgverify.vals SET ts = '2024-05-06 07:08:09.123456', b = 0x00FF11 WHERE id = 1", "BLOB"),
    ] {
        replica().sql(change).expect(what);
        let (code, json) = verify_json(&config, &["--table", "cgverify.vals"]);
        assert_eq!(code, Some(1), "{what}: {json:#}");
        let diffs = table(&json, "cgverify.vals")["differences"].as_array().expect("differences").clone();
        assert!(diffs.iter().any(|d| d["key"] == serde_json::json!(["1"])), "{what}: row 1 not named in {diffs:?}");
    }

    // The human report names the row; a table that does not exist is an error (exit 2).
    let (code, text) = verify(&config, &["--table", "cgverify.vals"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DIVERGED") && text.contains("key (1): primary (1, NULL, 1.0001"), "{text}");
    let (code, text) = verify(&config, &["--table", "cgverify.nothing"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cgverify.nothing") && text.contains("does not exist"), "{text}");
}
