//! The primary's capture triggers (decision 0009), driven directly on a real PostgreSQL:
//! what is recorded for each kind of change, in which table, with what settings; the
//! deferred check that refuses an uncoordinated sync commit; reconciliation with the policy.

use capgate::classify::TableName;
use capgate::policy::Policy;
use capgate::store::postgres::capture::{reconcile, CaptureMode};
use capgate::store::postgres::primary::install_primary;

use crate::support::{connect, primary, sqlstate};

const POLICY: &str = r#"
default = "local"
[[table]]
match = "cap.sync_*"
mode = "sync"
[[table]]
match = "cap.async_*"
mode = "async"
[[table]]
match = "cap.bounded"
mode = "bounded"
max_lag = "5s"
"#;

async fn setup(db: &str) -> tokio_postgres::Client {
    let admin = connect(&primary().url("postgres", "postgres")).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let client = connect(&primary().url("postgres", db)).await;
    install_primary(&client).await.expect("install the primary schema");
    client
        .batch_execute(
            "CREATE SCHEMA cap;
             CREATE TABLE cap.sync_acct (id int PRIMARY KEY, bal numeric(12,2), note text);
             CREATE TABLE cap.async_views (id bigserial PRIMARY KEY, at timestamptz, d interval, f float8, b bytea);
             CREATE TABLE cap.bounded (id int PRIMARY KEY);
             CREATE TABLE cap.scratch (id int PRIMARY KEY);
             CREATE TABLE cap.async_parted (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
             CREATE TABLE cap.async_parted_1 PARTITION OF cap.async_parted FOR VALUES IN (1);",
        )
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn reconcile_follows_the_policy_and_its_changes() {
    let client = setup("capture_reconcile").await;
    let policy = Policy::parse(POLICY, std::path::Path::new("p.toml")).unwrap();
    let round = reconcile(&client, &policy).await.expect("reconcile");
    assert!(round.failed.is_empty(), "{:?}", round.failed);
    let t = |n: &str| TableName::new("cap", n);
    assert_eq!(round.captured.get(&t("sync_acct")), Some(&CaptureMode::Sync));
    assert_eq!(round.captured.get(&t("async_views")), Some(&CaptureMode::Async));
    assert_eq!(round.captured.get(&t("bounded")), Some(&CaptureMode::Async));
    assert_eq!(round.captured.get(&t("async_parted")), Some(&CaptureMode::Async));
    assert_eq!(round.captured.get(&t("async_parted_1")), None, "a partition gets its root's trigger, not its own");
    assert_eq!(round.captured.get(&t("scratch")), None);
    assert_eq!(round.installed.len(), 4);

    // Nothing to do the second time.
    let again = reconcile(&client, &policy).await.unwrap();
    assert!(again.installed.is_empty() && again.removed.is_empty(), "{again:?}");

    // async_views becomes local, scratch becomes sync.
    let changed =
        POLICY.replace("match = \"cap.async_*\"", "match = \"cap.async_parted\"") + "[[table]]\nmatch = \"cap.scratch\"\nmode = \"sync\"\n";
    let policy = Policy::parse(&changed, std::path::Path::new("p.toml")).unwrap();
    let round = reconcile(&client, &policy).await.unwrap();
    assert_eq!(round.removed, vec![t("async_views")]);
    assert_eq!(round.installed, vec![(t("scratch"), CaptureMode::Sync)]);
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'cap.async_views'::regclass AND tgname LIKE 'capgate%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn changes_are_row_images_recorded_in_the_writers_transaction() {
    let client = setup("capture_rows").await;
    let policy = Policy::parse(POLICY, std::path::Path::new("p.toml")).unwrap();
    reconcile(&client, &policy).await.unwrap();
    // A client with unusual settings: the images must not depend on them.
    client
        .batch_execute(
            "SET TimeZone = 'Pacific/Kiritimati'; SET IntervalStyle = 'sql_standard'; SET extra_float_digits = -3;
             SET bytea_output = 'escape';
             INSERT INTO cap.async_views (at, d, f, b) VALUES ('2024-02-29 23:59:59.123456+00', '1 day 02:03:04', 0.1, '\\x00ff');
             UPDATE cap.async_views SET f = 'NaN' WHERE id = 1;",
        )
        .await
        .unwrap();
    client.batch_execute("BEGIN; INSERT INTO cap.async_views (f) VALUES (2); ROLLBACK;").await.unwrap();
    client
        .batch_execute(
            "DELETE FROM cap.async_views;
             INSERT INTO cap.async_parted VALUES (7, 1);
             TRUNCATE cap.bounded;",
        )
        .await
        .unwrap();
    let rows = client.query("SELECT tbl, op::text, old::text, new::text, proxied FROM capgate.changes ORDER BY seq", &[]).await.unwrap();
    type Change = (String, String, Option<String>, Option<String>, bool);
    let got: Vec<Change> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(got.len(), 5, "the rolled-back insert is not there: {got:#?}");
    // The settings that would change a value (or its text) are fixed.
    let insert = r#"{"id":1,"at":"2024-02-29T23:59:59.123456+00:00","d":"1 day 02:03:04","f":0.1,"b":"\\x00ff"}"#;
    assert_eq!(got[0], ("cap.async_views".into(), "I".into(), None, Some(insert.into()), false));
    assert_eq!(got[1].1, "U");
    assert_eq!(got[1].2.as_deref(), Some(insert));
    assert!(got[1].3.as_deref().unwrap().contains(r#""f":"NaN""#), "{:?}", got[1]);
    assert_eq!(got[2].1, "D");
    assert_eq!(got[3].0, "cap.async_parted", "a partition's change names the table the policy matched");
    assert_eq!((got[4].0.as_str(), got[4].1.as_str()), ("cap.bounded", "T"));
    // The client's own settings are untouched after the trigger ran.
    let tz: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "Pacific/Kiritimati");
}

#[tokio::test]
async fn a_latest_tables_row_has_one_record_whatever_the_writers_settings() {
    // `capgate.latest` is keyed by the key's JSON text, which another site's changes are
    // compared with: a bytea or timestamptz key must print the same from every session.
    let client = setup("capture_latest_keys").await;
    client
        .batch_execute(
            "CREATE TABLE cap.likes (k bytea, at timestamptz, n int NOT NULL DEFAULT 0, PRIMARY KEY (k, at));
             INSERT INTO cap.likes VALUES ('\\x00ff', '2026-12-04 11:00:00+00');",
        )
        .await
        .unwrap();
    let policy = Policy::parse(
        "default = \"local\"\n[[table]]\nmatch = \"cap.likes\"\nmode = \"async\"\non_conflict = \"latest\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    reconcile(&client, &policy).await.expect("reconcile");
    for settings in [
        "SET TimeZone = 'UTC'; SET bytea_output = 'hex'",
        "SET TimeZone = 'UTC'; SET bytea_output = 'escape'",
        "SET TimeZone = 'Asia/Kolkata'; SET bytea_output = 'escape'",
        "SET TimeZone = 'America/New_York'; SET bytea_output = 'hex'; SET DateStyle = 'SQL, DMY'",
    ] {
        client.batch_execute(&format!("{settings}; UPDATE cap.likes SET n = n + 1; RESET ALL")).await.unwrap();
    }
    let keys: Vec<String> =
        client.query("SELECT key::text FROM capgate.latest WHERE tbl = 'cap.likes'", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec![r#"["\\x00ff", "2026-12-04T11:00:00+00:00"]"#.to_owned()], "one record for the one row");
}

#[tokio::test]
async fn sync_changes_outside_capgate_ship_async_and_inside_need_coordination() {
    let client = setup("capture_sync").await;
    let policy = Policy::parse(POLICY, std::path::Path::new("p.toml")).unwrap();
    reconcile(&client, &policy).await.unwrap();
    // Around capgate (no session marker): captured as an async change.
    client.batch_execute("INSERT INTO cap.sync_acct VALUES (1, 10, 'direct')").await.unwrap();
    let n: i64 = client.query_one("SELECT count(*) FROM capgate.changes WHERE tbl = 'cap.sync_acct'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // A capgate session that commits without coordination is refused at COMMIT.
    client.batch_execute("SET capgate.session = 'on'").await.unwrap();
    let err = client.batch_execute("INSERT INTO cap.sync_acct VALUES (2, 20, 'uncoordinated')").await.unwrap_err();
    assert_eq!(sqlstate(&err), "CGS01", "{err}");
    let n: i64 = client.query_one("SELECT count(*) FROM cap.sync_acct", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "nothing of the refused transaction committed");

    // Coordinated: sync_prepare returns the changes in order, records the decision, and the
    // COMMIT goes through.
    client
        .batch_execute("BEGIN; INSERT INTO cap.sync_acct VALUES (3, 30, 'a'); UPDATE cap.sync_acct SET bal = bal + 1 WHERE id = 3;")
        .await
        .unwrap();
    let row = client.query_one("SELECT * FROM capgate.sync_prepare('capgate:test:x:1', 'test', false)", &[]).await.unwrap();
    let (tables, changes): (Vec<String>, serde_json::Value) = (row.get(0), row.get(1));
    assert_eq!(tables, vec!["cap.sync_acct".to_owned()]);
    client.batch_execute("COMMIT").await.unwrap();
    let list = changes.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["op"], "I");
    assert_eq!(list[1]["op"], "U");
    assert_eq!(list[1]["new"]["bal"], serde_json::json!(31.00));
    assert_eq!(list[1]["old"]["note"], "a");
    let decided: bool =
        client.query_one("SELECT committed FROM capgate.decisions WHERE gid = 'capgate:test:x:1'", &[]).await.unwrap().get(0);
    assert!(decided);
    let left: i64 = client.query_one("SELECT count(*) FROM pg_temp.capgate_sync_changes", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "sync changes are read once and gone");

    // A savepoint rolled back takes its sync changes with it: nothing to prepare.
    client.batch_execute("BEGIN; SAVEPOINT s; INSERT INTO cap.sync_acct VALUES (4, 40, 'b'); ROLLBACK TO s;").await.unwrap();
    let none: Option<serde_json::Value> =
        client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:2', 'test', false)", &[]).await.unwrap().get(0);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(none, None);
    let decisions: i64 =
        client.query_one("SELECT count(*) FROM capgate.decisions WHERE gid = 'capgate:test:x:2'", &[]).await.unwrap().get(0);
    assert_eq!(decisions, 0, "no decision for a transaction without sync changes");

    // The changes wait in a temporary table of the session: a pool's DISCARD ALL between two
    // transactions drops it, and the next sync change makes it again.
    client.batch_execute("DISCARD ALL").await.unwrap();
    client.batch_execute("SET capgate.session = 'on'").await.unwrap();
    client.batch_execute("BEGIN; UPDATE cap.sync_acct SET note = 'after discard' WHERE id = 3").await.unwrap();
    let after: serde_json::Value =
        client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:d', 'test', false)", &[]).await.unwrap().get(0);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(after[0]["new"]["note"], "after discard", "{after}");
    let err = client.batch_execute("UPDATE cap.sync_acct SET note = 'uncoordinated' WHERE id = 3").await.unwrap_err();
    assert_eq!(sqlstate(&err), "CGS01", "still refused uncoordinated after a DISCARD: {err}");

    // No autovacuum for temporary tables: the space of a large transaction's changes is given
    // back at the next transaction's first sync change.
    client
        .batch_execute("BEGIN; INSERT INTO cap.sync_acct SELECT g, g, repeat('x', 100) FROM generate_series(1000, 5999) g")
        .await
        .unwrap();
    client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:big', 'test', false)", &[]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let size = "SELECT pg_relation_size('pg_temp.capgate_sync_changes')";
    let big: i64 = client.query_one(size, &[]).await.unwrap().get(0);
    client.batch_execute("BEGIN; UPDATE cap.sync_acct SET note = 'next' WHERE id = 3").await.unwrap();
    let next: serde_json::Value =
        client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:next', 'test', false)", &[]).await.unwrap().get(0);
    client.batch_execute("COMMIT").await.unwrap();
    let small: i64 = client.query_one(size, &[]).await.unwrap().get(0);
    assert_eq!(next.as_array().map(Vec::len), Some(1), "{next}");
    assert!(big > 262_144 && small <= 8192, "the table went from {big} to {small} bytes");

    // Under a quorum (stream): the same changes also go to the change stream, with the gid and
    // their capture order, in the same transaction (decision 0017).
    let streamed = |gid: &'static str| {
        let client = &client;
        async move {
            client
                .query("SELECT op::text, seq FROM capgate.changes WHERE gid = $1 ORDER BY seq", &[&gid])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>()
        }
    };
    assert!(streamed("capgate:test:x:1").await.is_empty(), "without stream, sync changes stay out of the stream");
    client.batch_execute("BEGIN; INSERT INTO cap.sync_acct VALUES (5, 50, 'c'); DELETE FROM cap.sync_acct WHERE id = 5;").await.unwrap();
    let row = client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:3', 'test', true)", &[]).await.unwrap();
    let changes: serde_json::Value = row.get(0);
    client.batch_execute("COMMIT").await.unwrap();
    let seqs: Vec<i64> = changes.as_array().unwrap().iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    let got = streamed("capgate:test:x:3").await;
    assert_eq!(got.iter().map(|(op, _)| op.as_str()).collect::<Vec<_>>(), vec!["I", "D"]);
    assert_eq!(got.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(), seqs, "the stream keeps the capture order");
    client.batch_execute("BEGIN; INSERT INTO cap.sync_acct VALUES (6, 60, 'd')").await.unwrap();
    client.query_one("SELECT changes FROM capgate.sync_prepare('capgate:test:x:4', 'test', true)", &[]).await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    assert!(streamed("capgate:test:x:4").await.is_empty(), "a rolled-back commit leaves nothing in the stream");
}
