//! `capgate.apply_changes` on a real replica: every type family round-trips exactly, every
//! conflict kind under every resolution, sync refusals, the wait for prepared transactions,
//! schema changes, bulk runs and the privilege it needs.
//!
//! Row images are made the way the primary's capture makes them: `row_to_json` of a real
//! row under capgate's fixed settings, in a "primary" schema of the same database; the
//! changes then apply to a table of the same shape in the test's "replica" schema.

use std::sync::OnceLock;
use std::time::Duration;

use capgate::replicate::apply::{self, ApplyError, ApplyMode, Conflict};
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::{connect, replica};

/// The database every apply test uses, each in its own schemas.
pub(crate) fn url() -> String {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let server = replica();
        let _ = server.create_database("apply_db");
        server.url("postgres", "apply_db")
    })
    .clone()
}

/// The settings the capture trigger fixes (decision 0009).
const CAPTURE_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'";

/// A test's schemas `p_<name>` (the origin's tables) and `r_<name>` (the replica's).
pub(crate) struct Bed {
    name: String,
    pub(crate) db: Client,
    seq: std::cell::Cell<i64>,
}

pub(crate) async fn bed(name: &str, ddl: &str) -> Bed {
    let db = connect(&url()).await;
    apply::install_replica(&db).await.expect("install the replica schema");
    for side in ["p", "r"] {
        let schema = format!("{side}_{name}");
        db.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}; {ddl}; RESET search_path"
        ))
        .await
        .unwrap_or_else(|e| panic!("{schema}: {e}"));
    }
    db.execute("DELETE FROM capgate.conflicts WHERE origin = $1", &[&name]).await.expect("clear conflicts");
    Bed { name: name.to_owned(), db, seq: std::cell::Cell::new(0) }
}

impl Bed {
    fn replica_table(&self, table: &str) -> String {
        format!("r_{}.{table}", self.name)
    }

    /// Runs `sql` on the origin's schema and returns the changed rows' images: `(old, new)`
    /// per row, as the capture would record them (JSON text, never re-serialized).
    async fn images(&self, table: &str, sql: &str) -> Vec<(Option<String>, Option<String>)> {
        let p = format!("p_{}", self.name);
        let before = self.snapshot(&p, table).await;
        self.db
            .batch_execute(&format!("SET search_path = {p}; {sql}; RESET search_path"))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", apply::explain(&e)));
        let after = self.snapshot(&p, table).await;
        let key = |v: &Value| v.get("k").cloned().unwrap_or(Value::Null).to_string();
        let after_by_key: std::collections::HashMap<String, &String> = after.iter().map(|(t, a)| (key(a), t)).collect();
        let before_keys: std::collections::HashSet<String> = before.iter().map(|(_, b)| key(b)).collect();
        let mut out = Vec::new();
        for (text_b, b) in &before {
            match after_by_key.get(&key(b)) {
                None => out.push((Some(text_b.clone()), None)),
                Some(text_a) if *text_a != text_b => out.push((Some(text_b.clone()), Some((*text_a).clone()))),
                _ => {}
            }
        }
        for (text_a, a) in &after {
            if !before_keys.contains(&key(a)) {
                out.push((None, Some(text_a.clone())));
            }
        }
        out
    }

    /// `row_to_json` of every row, under the capture's settings, by key.
    async fn snapshot(&self, schema: &str, table: &str) -> Vec<(String, Value)> {
        self.db.batch_execute(CAPTURE_SETTINGS).await.expect("settings");
        let rows = self.db.query(&format!("SELECT row_to_json(t)::text FROM {schema}.{table} t ORDER BY k"), &[]).await.expect("rows");
        self.db.batch_execute("RESET ALL").await.expect("reset");
        rows.iter()
            .map(|r| {
                let text: String = r.get(0);
                let value = serde_json::from_str(&text).expect("row json");
                (text, value)
            })
            .collect()
    }

    /// A change of the replica's `table` in the capture's format, images as JSON text.
    fn change_raw(&self, table: &str, op: &str, old: Option<String>, new: Option<String>, at: &str) -> String {
        self.seq.set(self.seq.get() + 1);
        let mut c = format!(r#"{{"seq": {}, "at": "{at}", "tbl": "{}", "op": "{op}""#, self.seq.get(), self.replica_table(table));
        if let Some(old) = old {
            c.push_str(&format!(r#", "old": {old}"#));
        }
        if let Some(new) = new {
            c.push_str(&format!(r#", "new": {new}"#));
        }
        c.push('}');
        c
    }

    fn change_at(&self, table: &str, op: &str, old: Option<Value>, new: Option<Value>, at: &str) -> String {
        self.change_raw(table, op, old.map(|v| v.to_string()), new.map(|v| v.to_string()), at)
    }

    pub(crate) fn change(&self, table: &str, op: &str, old: Option<Value>, new: Option<Value>) -> String {
        self.change_at(table, op, old, new, "2026-12-01 10:00:00.000001+00")
    }

    /// Runs `sql` on the origin and returns the changes it captured, for the replica's table.
    pub(crate) async fn capture(&self, table: &str, sql: &str) -> Vec<String> {
        let images = self.images(table, sql).await;
        images
            .into_iter()
            .map(|(old, new)| {
                let op = match (&old, &new) {
                    (None, _) => "I",
                    (Some(_), Some(_)) => "U",
                    (Some(_), None) => "D",
                };
                self.change_raw(table, op, old, new, "2026-12-01 10:00:00.000001+00")
            })
            .collect()
    }

    pub(crate) async fn apply(&self, changes: &[String], mode: ApplyMode, policy: &str) -> Result<Vec<Conflict>, ApplyError> {
        let on_conflict = apply::on_conflict_json([], policy);
        self.db.batch_execute("BEGIN").await.expect("begin");
        let result = apply::apply_changes(&self.db, &self.name, &list(changes), mode, &on_conflict, Duration::from_secs(5)).await;
        self.db.batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" }).await.expect("end");
        result
    }

    pub(crate) async fn apply_ok(&self, changes: &[String], policy: &str) -> Vec<Conflict> {
        self.apply(changes, ApplyMode::Async, policy).await.unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// Both sides' rows, as text, under the capture's settings.
    pub(crate) async fn same(&self, table: &str) {
        let p = self.snapshot(&format!("p_{}", self.name), table).await;
        let r = self.snapshot(&format!("r_{}", self.name), table).await;
        let p: Vec<&String> = p.iter().map(|(t, _)| t).collect();
        let r: Vec<&String> = r.iter().map(|(t, _)| t).collect();
        assert_eq!(r, p, "the replica's rows are not the origin's");
    }

    pub(crate) async fn replica_rows(&self, table: &str) -> Vec<String> {
        self.snapshot(&format!("r_{}", self.name), table).await.into_iter().map(|(t, _)| t).collect()
    }

    pub(crate) async fn recorded(&self) -> Vec<(String, String)> {
        let rows = self.db.query("SELECT kind, resolution FROM capgate.conflicts WHERE origin = $1 ORDER BY id", &[&self.name]).await;
        rows.expect("conflicts").iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// A JSON array of changes (each already JSON text).
pub(crate) fn list(changes: &[String]) -> String {
    format!("[{}]", changes.join(", "))
}

const TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ☺');
CREATE TYPE pair AS (a int, b text);
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TABLE t (
    k int PRIMARY KEY,
    n numeric, n2 numeric(12,4), f8 float8, f4 float4, i2 int2, i8 int8,
    ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz, iv interval,
    b bytea, txt text, vc varchar(10), ch char(5), bo boolean,
    ia int[], ta text[][], j json, jb jsonb, e mood, c pair, dm positive,
    m money, bits bit(8), vbits varbit, r int4range, tr tstzrange,
    ip inet, net cidr, mac macaddr, u uuid, x xml, pt point, bx box, ln lseg, pg polygon, ci circle,
    tv tsvector, g int GENERATED ALWAYS AS (k * 2) STORED
)";

#[tokio::test]
async fn every_type_family_round_trips_exactly() {
    let b = bed("types", TYPES_DDL).await;
    // Values written under a client's own settings, not capgate's.
    let insert = "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 0;
        INSERT INTO t VALUES
        (1, 123456789012345678901234567890.123456789012345678901, 1.5, 'NaN', '-Infinity', -32768, 9223372036854775807,
         '2026-02-28 23:59:59.999999', '2026-03-29 01:30:00.123456+02', '4713-01-01 BC', '24:00:00', '12:00:00+05:30',
         '1 year 2 mons -3 days 04:05:06.789', '\\x00ff10', E'multibyte ✓ ñ 日本語 😀 and a tab\\t', 'short', 'ab', true,
         '{1,NULL,3}', '{{a,\"b c\"},{\"\",NULL}}', '{\"b\": 1,  \"a\": [1.50, null], \"a\": 2}', '{\"x\": 1.50, \"y\": [true]}',
         'happy ☺', ROW(1, 'one, \"quoted\"'), 0.0001,
         '1234.56', B'10100101', B'1', '[1,10)', '[2026-01-01 00:00+00,2026-01-02 00:00+00)',
         '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '<a b=\"1\">x</a>',
         '(1.5,-2)', '((0,0),(1,1))', '[(0,0),(1,1)]', '((0,0),(1,0),(0,1))', '<(0,0),2>', 'a fat cat'),
        (2, '-0.000000000000000000001', 0, '-0', 'Infinity', 0, -1, NULL, '-infinity', 'infinity', '00:00', '00:00+00', '0',
         '\\x', '', '', '', false, '{}', '{}', 'null', '[]', 'sad', ROW(NULL, NULL), 1e-20,
         '-0.01', B'00000000', B'', 'empty', '(,)', '::1', '::/0', '00:00:00:00:00:00', '00000000-0000-0000-0000-000000000000', '',
         '(0,0)', '((0,0),(0,0))', '[(0,0),(0,0)]', '((0,0))', '<(0,0),0>', ''),
        (3, 0.1, 99999999.9999, 1.7976931348623157e308, 1.17549435e-38, 1, 1, '1999-12-31 23:59:59', '2026-07-01 12:00+00', '2000-01-01',
         '12:34:56.789', '23:59:59-12', '-178000000 years', '\\xdeadbeef', 'x', 'x', 'x', NULL,
         '{{1,2},{3,4}}', '{\"with \\\\ backslash\"}', '\"a string\"', '{\"nested\": {\"deep\": [1, {\"k\": \"v\"}]}}', 'ok', ROW(-1, ''), 3,
         '0', B'11111111', B'0101', '[-5,-1]', '[2026-01-01 00:00+00,)', '2001:db8::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff',
         'ffffffff-ffff-ffff-ffff-ffffffffffff', '<?xml version=\"1.0\"?><r/>',
         '(1e300,-1e-300)', '((1,2),(3,4))', '[(1,2),(3,4)]', '((1,2),(3,4),(5,6),(7,8))', '<(1,1),0.5>', 'the:1A quick:2B'),
        (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";
    let inserts = b.capture("t", insert).await;
    assert_eq!(inserts.len(), 4);
    assert!(b.apply_ok(&inserts, "halt").await.is_empty());
    b.same("t").await;

    // Updates compare the replica's row with the old image: every value must read back equal.
    let update = "SET TimeZone = 'Asia/Kathmandu';
        UPDATE t SET n = n * 2, f8 = f8 * -1, tstz = tstz + interval '1 day', iv = iv + interval '1.5 seconds', b = b || '\\x01', txt = txt || '→',
                     ia = CASE WHEN array_ndims(ia) = 1 THEN ia || 7 ELSE ia END, jb = jb || '{\"z\": null}', e = 'ok', c = ROW((c).a, 'two'), bits = ~bits, r = '[0,1)',
                     u = 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', x = '<changed/>', pt = '(0,0)', m = m + 1::money";
    let updates = b.capture("t", update).await;
    assert_eq!(updates.len(), 4);
    assert!(b.apply_ok(&updates, "halt").await.is_empty(), "no value read back different");
    b.same("t").await;

    let deletes = b.capture("t", "DELETE FROM t").await;
    assert!(b.apply_ok(&deletes, "halt").await.is_empty());
    assert!(b.replica_rows("t").await.is_empty());
}

const KV: &str = "CREATE TABLE t (k int PRIMARY KEY, v text)";

/// A replica row that differs from the origin's before a change arrives: one conflict per
/// kind, each resolution. Returns the conflicts and the replica's rows after.
async fn conflict_case(name: &str, setup: &str, origin_sql: &str, policy: &str) -> (Vec<Conflict>, Vec<String>) {
    let b = bed(name, KV).await;
    let start = b.capture("t", "INSERT INTO t VALUES (1, 'one'), (2, 'two')").await;
    b.apply_ok(&start, "halt").await;
    b.db.batch_execute(&format!("SET search_path = r_{name}; {setup}; RESET search_path")).await.expect("replica setup");
    let changes = b.capture("t", origin_sql).await;
    let conflicts = b.apply_ok(&changes, policy).await;
    let recorded = b.recorded().await;
    let reported: Vec<(String, String)> = conflicts.iter().map(|c| (c.kind.clone(), c.resolution.clone())).collect();
    assert_eq!(recorded, reported, "capgate.conflicts holds what apply_changes returned");
    (conflicts, b.replica_rows("t").await)
}

fn kinds(conflicts: &[Conflict]) -> Vec<&str> {
    conflicts.iter().map(|c| c.kind.as_str()).collect()
}

#[tokio::test]
async fn insert_exists_under_each_resolution() {
    let setup = "INSERT INTO t VALUES (3, 'replica')";
    let (c, rows) = conflict_case("ie_skip", setup, "INSERT INTO t VALUES (3, 'origin')", "skip").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["insert_exists"], "skipped"));
    assert_eq!(c[0].replica, Some(json!({"k": 3, "v": "replica"})), "the replica's row is recorded");
    assert_eq!(c[0].new, Some(json!({"k": 3, "v": "origin"})));
    assert!(rows.contains(&r#"{"k":3,"v":"replica"}"#.to_owned()));
    let (c, rows) = conflict_case("ie_over", setup, "INSERT INTO t VALUES (3, 'origin')", "overwrite").await;
    assert_eq!(kinds(&c), vec!["insert_exists"]);
    assert!(rows.contains(&r#"{"k":3,"v":"origin"}"#.to_owned()), "{rows:?}");
    // No record of the replica's row: the incoming change wins under `latest`.
    let (c, rows) = conflict_case("ie_latest", setup, "INSERT INTO t VALUES (3, 'origin')", "latest").await;
    assert_eq!(c[0].resolution, "applied the new row (later)");
    assert!(rows.contains(&r#"{"k":3,"v":"origin"}"#.to_owned()), "{rows:?}");
}

#[tokio::test]
async fn update_missing_and_differs_under_each_resolution() {
    let (c, rows) = conflict_case("um_skip", "DELETE FROM t WHERE k = 1", "UPDATE t SET v = 'uno' WHERE k = 1", "skip").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_missing"], "skipped"));
    assert_eq!(rows, vec![r#"{"k":2,"v":"two"}"#]);
    let (c, rows) = conflict_case("um_over", "DELETE FROM t WHERE k = 1", "UPDATE t SET v = 'uno' WHERE k = 1", "overwrite").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_missing"], "inserted the new row"));
    assert_eq!(rows, vec![r#"{"k":1,"v":"uno"}"#, r#"{"k":2,"v":"two"}"#]);

    let differs = "UPDATE t SET v = 'changed here' WHERE k = 1";
    let (c, rows) = conflict_case("ud_skip", differs, "UPDATE t SET v = 'uno' WHERE k = 1", "skip").await;
    assert_eq!(kinds(&c), vec!["update_differs"]);
    assert_eq!(c[0].old, Some(json!({"k": 1, "v": "one"})));
    assert_eq!(c[0].replica, Some(json!({"k": 1, "v": "changed here"})));
    assert_eq!(rows[0], r#"{"k":1,"v":"changed here"}"#);
    let (c, rows) = conflict_case("ud_over", differs, "UPDATE t SET v = 'uno' WHERE k = 1", "overwrite").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_differs"], "applied the new row"));
    assert_eq!(rows[0], r#"{"k":1,"v":"uno"}"#);
    // Other rows of the same run still apply (the run falls back to row by row).
    let (c, rows) = conflict_case("ud_run", differs, "UPDATE t SET v = v || '!'", "skip").await;
    assert_eq!(kinds(&c), vec!["update_differs"]);
    assert_eq!(rows, vec![r#"{"k":1,"v":"changed here"}"#, r#"{"k":2,"v":"two!"}"#]);
}

#[tokio::test]
async fn delete_missing_and_differs_under_each_resolution() {
    let (c, rows) = conflict_case("dm_skip", "DELETE FROM t WHERE k = 1", "DELETE FROM t WHERE k = 1", "skip").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["delete_missing"], "skipped"));
    assert_eq!(rows, vec![r#"{"k":2,"v":"two"}"#]);
    let (c, _) = conflict_case("dm_over", "DELETE FROM t WHERE k = 1", "DELETE FROM t WHERE k = 1", "overwrite").await;
    assert_eq!(c[0].resolution, "nothing to delete");
    let differs = "UPDATE t SET v = 'changed here' WHERE k = 1";
    let (c, rows) = conflict_case("dd_skip", differs, "DELETE FROM t WHERE k = 1", "skip").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["delete_differs"], "skipped"));
    assert_eq!(rows.len(), 2);
    let (c, rows) = conflict_case("dd_over", differs, "DELETE FROM t WHERE k = 1", "overwrite").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["delete_differs"], "deleted anyway"));
    assert_eq!(rows, vec![r#"{"k":2,"v":"two"}"#]);
}

#[tokio::test]
async fn latest_keeps_the_later_origin_change_whatever_the_arrival_order() {
    let b = bed("latest", KV).await;
    let insert = b.change_at("t", "I", None, Some(json!({"k": 1, "v": "first"})), "2026-12-01 10:00:00+00");
    b.apply_ok(&[insert], "latest").await;
    // A later change from origin "z" arrives first, then an earlier one from "latest".
    let first = json!({"k": 1, "v": "first"});
    let later = b.change_at("t", "U", Some(first.clone()), Some(json!({"k": 1, "v": "later"})), "2026-12-01 10:00:02+00");
    let on_conflict = json!({"*": "latest"}).to_string();
    let applied = apply::apply_changes(&b.db, "z", &list(&[later]), ApplyMode::Async, &on_conflict, Duration::from_secs(1)).await;
    assert!(applied.expect("later").is_empty());
    let earlier = b.change_at("t", "U", Some(first.clone()), Some(json!({"k": 1, "v": "earlier"})), "2026-12-01 10:00:01+00");
    let c = b.apply_ok(&[earlier], "latest").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_differs"], "kept the replica row (later)"));
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"later"}"#]);
    // Same time: the greater origin name wins, on every site alike.
    let same_time = b.change_at("t", "U", Some(first.clone()), Some(json!({"k": 1, "v": "earlier"})), "2026-12-01 10:00:02+00");
    let c = b.apply_ok(&[same_time], "latest").await;
    assert_eq!(c[0].resolution, "kept the replica row (later)", "origin z beats origin latest at the same time");
    // A later delete leaves a tombstone: an earlier update of the row does not bring it back.
    let delete = b.change_at("t", "D", Some(json!({"k": 1, "v": "later"})), None, "2026-12-01 10:00:05+00");
    assert!(b.apply_ok(&[delete], "latest").await.is_empty());
    let stale = b.change_at("t", "U", Some(first), Some(json!({"k": 1, "v": "stale"})), "2026-12-01 10:00:03+00");
    let c = b.apply_ok(&[stale], "latest").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_missing"], "skipped (a later delete)"));
    assert!(b.replica_rows("t").await.is_empty());
}

#[tokio::test]
async fn latest_keeps_a_later_row_even_when_it_has_the_earlier_changes_old_values() {
    // Two sites can reach the same values on their own (two counters incremented alike):
    // a change whose old image equals the row here is still older than the row's last write
    // when its time is earlier. Applying it moved the row's record back in time, and the two
    // sites ended with different rows (found by the two-writer chaos suite).
    let b = bed("latest_same", KV).await;
    let insert = b.change_at("t", "I", None, Some(json!({"k": 1, "v": "a"})), "2026-12-01 10:00:00+00");
    b.apply_ok(&[insert], "latest").await;
    let on_conflict = json!({"*": "latest"}).to_string();
    let later = b.change_at("t", "U", Some(json!({"k": 1, "v": "a"})), Some(json!({"k": 1, "v": "b"})), "2026-12-01 10:00:05+00");
    let applied = apply::apply_changes(&b.db, "z", &list(&[later]), ApplyMode::Async, &on_conflict, Duration::from_secs(1)).await;
    assert!(applied.expect("later").is_empty());
    // An earlier change whose old image is the row's current values.
    let earlier = b.change_at("t", "U", Some(json!({"k": 1, "v": "b"})), Some(json!({"k": 1, "v": "c"})), "2026-12-01 10:00:03+00");
    let c = b.apply_ok(&[earlier], "latest").await;
    assert_eq!((kinds(&c), c[0].resolution.as_str()), (vec!["update_differs"], "kept the replica row (later)"), "{c:?}");
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"b"}"#]);
    // The record still says 10:00:05: a change at 10:00:04 from the row's values is kept too.
    let between = b.change_at("t", "U", Some(json!({"k": 1, "v": "b"})), Some(json!({"k": 1, "v": "d"})), "2026-12-01 10:00:04+00");
    let c = b.apply_ok(&[between], "latest").await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"b"}"#]);
    // A later one applies without a conflict.
    let last = b.change_at("t", "U", Some(json!({"k": 1, "v": "b"})), Some(json!({"k": 1, "v": "e"})), "2026-12-01 10:00:06+00");
    assert!(b.apply_ok(&[last], "latest").await.is_empty());
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"e"}"#]);
}

#[tokio::test]
async fn sync_refuses_every_conflict_and_halt_stops_with_the_conflict() {
    let b = bed("refuse", KV).await;
    let start = b.capture("t", "INSERT INTO t VALUES (1, 'one')").await;
    b.apply_ok(&start, "halt").await;
    let dup = b.change("t", "I", None, Some(json!({"k": 1, "v": "again"})));
    let ok = b.change("t", "I", None, Some(json!({"k": 5, "v": "five"})));
    for (mode, policy, code) in [(ApplyMode::Sync, "skip", false), (ApplyMode::Async, "halt", true)] {
        match b.apply(&[ok.clone(), dup.clone()], mode, policy).await {
            Err(ApplyError::Conflict { conflict, halted, message }) => {
                assert_eq!(halted, code);
                assert_eq!(conflict.kind, "insert_exists");
                assert_eq!(conflict.tbl, "r_refuse.t");
                assert_eq!(conflict.replica, Some(json!({"k": 1, "v": "one"})));
                assert!(message.contains("r_refuse.t") && message.contains("insert_exists"), "{message}");
            }
            other => panic!("{mode:?}: expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"one"}"#], "nothing of a refused batch stays");
    assert!(b.recorded().await.is_empty());
}

#[tokio::test]
async fn missing_tables_and_columns_are_conflicts_naming_them() {
    let b = bed("schema", KV).await;
    let gone = json!({"seq": 1, "at": "2026-12-01 10:00:00+00", "tbl": "r_schema.nowhere", "op": "I", "new": {"k": 1}}).to_string();
    let extra = b.change("t", "I", None, Some(json!({"k": 1, "v": "x", "colour": "red"})));
    let c = b.apply_ok(&[gone.clone(), extra.clone()], "skip").await;
    assert_eq!(kinds(&c), vec!["missing_table", "missing_column"]);
    assert!(c[1].detail.as_deref().unwrap_or("").contains("colour"), "{:?}", c[1].detail);
    // Neither can be overwritten: anything but skip halts.
    for change in [gone, extra] {
        match b.apply(&[change], ApplyMode::Async, "overwrite").await {
            Err(ApplyError::Conflict { halted: true, .. }) => {}
            other => panic!("expected a halt, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_table_without_a_primary_key_is_refused_by_name() {
    let b = bed("nopk", "CREATE TABLE t (k int, v text)").await;
    let change = b.change("t", "I", None, Some(json!({"k": 1, "v": "x"})));
    let err = b.apply(&[change], ApplyMode::Async, "skip").await.expect_err("no primary key");
    let text = format!("{err}");
    assert!(text.contains("r_nopk.t") && text.contains("primary key"), "{text}");
}

#[tokio::test]
async fn generated_identity_triggers_truncate_and_ddl() {
    let ddl = "CREATE TABLE t (k int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, twice text GENERATED ALWAYS AS (v || v) STORED);
               CREATE TABLE hits (n int);
               CREATE FUNCTION hit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO hits VALUES (1); RETURN NEW; END $$;
               CREATE TRIGGER hit AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION hit()";
    let b = bed("gen", ddl).await;
    b.db.batch_execute("SET search_path = p_gen; DROP TRIGGER hit ON t; RESET search_path").await.expect("no trigger on the origin");
    let inserts = b.capture("t", "INSERT INTO t (v) VALUES ('a'), ('b')").await;
    let updates = b.capture("t", "UPDATE t SET v = 'c' WHERE k = 1").await;
    assert!(b.apply_ok(&[inserts, updates].concat(), "halt").await.is_empty());
    b.same("t").await;
    let hits: i64 = b.db.query_one("SELECT count(*) FROM r_gen.hits", &[]).await.expect("hits").get(0);
    assert_eq!(hits, 0, "user triggers do not fire on applied rows");

    // DDL runs with its captured search_path; later changes use the new column.
    let ddl = json!({"seq": 100, "at": "2026-12-01 10:00:00+00", "tbl": "r_gen.t", "op": "S",
                     "new": {"sql": "ALTER TABLE t ADD COLUMN note text", "search_path": "r_gen"}})
    .to_string();
    b.db.batch_execute("ALTER TABLE p_gen.t ADD COLUMN note text").await.expect("origin ddl");
    let noted = b.capture("t", "UPDATE t SET note = 'after ddl' WHERE k = 2").await;
    assert!(b.apply_ok(&[vec![ddl], noted].concat(), "halt").await.is_empty());
    b.same("t").await;

    let truncate = json!({"seq": 101, "at": "2026-12-01 10:00:00+00", "tbl": "r_gen.t", "op": "T"}).to_string();
    assert!(b.apply_ok(&[truncate], "halt").await.is_empty());
    assert!(b.replica_rows("t").await.is_empty());
}

#[tokio::test]
async fn bulk_runs_and_repeated_keys_keep_capture_order() {
    let b = bed("bulk", "CREATE TABLE t (k int PRIMARY KEY, v text); CREATE TABLE u (k int PRIMARY KEY, n int)").await;
    let mut changes = b.capture("t", "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g").await;
    changes.extend(b.capture("u", "INSERT INTO u VALUES (1, 0)").await);
    // A hot row: 200 increments, interleaved with another table's changes.
    for i in 0..200 {
        changes.extend(b.capture("u", "UPDATE u SET n = n + 1").await);
        if i % 50 == 0 {
            changes.extend(b.capture("t", &format!("UPDATE t SET v = v || '.{i}' WHERE k % 100 = 0")).await);
        }
    }
    changes.extend(b.capture("t", "DELETE FROM t WHERE k > 4000").await);
    let t = std::time::Instant::now();
    assert!(b.apply_ok(&changes, "halt").await.is_empty());
    eprintln!("applied {} changes in {:?}", changes.len(), t.elapsed());
    b.same("t").await;
    b.same("u").await;
    assert_eq!(b.replica_rows("u").await, vec![r#"{"k":1,"n":200}"#]);
}

#[tokio::test]
async fn sync_waits_for_an_earlier_prepared_insert_before_calling_a_row_missing() {
    let b = bed("prepared", KV).await;
    let other = connect(&url()).await;
    let gid = "capgate:test:prepared:1";
    let _ = other.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await;
    other.batch_execute(&format!("BEGIN; INSERT INTO r_prepared.t VALUES (1, 'one'); PREPARE TRANSACTION '{gid}'")).await.expect("prepare");
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await.expect("commit prepared");
    });
    let update = b.change("t", "U", Some(json!({"k": 1, "v": "one"})), Some(json!({"k": 1, "v": "uno"})));
    b.db.batch_execute("BEGIN").await.expect("begin");
    let applied = apply::apply_changes(&b.db, "prepared", &list(&[update]), ApplyMode::Sync, "{}", Duration::from_secs(30)).await;
    b.db.batch_execute("COMMIT").await.expect("commit");
    commit.await.expect("committer");
    assert!(applied.expect("applied after the prepared insert committed").is_empty());
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"uno"}"#]);
}

#[tokio::test]
async fn the_apply_role_needs_to_set_session_replication_role() {
    let b = bed("privilege", KV).await;
    b.db.batch_execute(
        "DROP ROLE IF EXISTS apply_plain; CREATE ROLE apply_plain LOGIN;
         GRANT USAGE ON SCHEMA capgate, r_privilege TO apply_plain; GRANT ALL ON ALL TABLES IN SCHEMA capgate, r_privilege TO apply_plain;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA capgate TO apply_plain",
    )
    .await
    .expect("role");
    let plain = connect(&replica().url("apply_plain", "apply_db")).await;
    let change = b.change("t", "I", None, Some(json!({"k": 1, "v": "x"})));
    let changes = list(&[change]);
    let run = || apply::apply_changes(&plain, "privilege", &changes, ApplyMode::Async, "{}", Duration::from_secs(1));
    let err = run().await.expect_err("no privilege");
    let db = match &err {
        ApplyError::Replica(e) => e.as_db_error().expect("a database error"),
        other => panic!("{other:?}"),
    };
    assert_eq!(db.code().code(), "42501");
    assert!(db.hint().unwrap_or("").contains("GRANT SET ON PARAMETER session_replication_role TO apply_plain"), "{db:?}");
    b.db.batch_execute("GRANT SET ON PARAMETER session_replication_role TO apply_plain").await.expect("grant");
    assert!(run().await.expect("applies once granted").is_empty());
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"x"}"#]);
}

#[tokio::test]
async fn a_stale_shipper_cannot_advance_the_applied_snapshot() {
    let b = bed("advance", KV).await;
    b.db.execute("DELETE FROM capgate.applied WHERE origin = 'advance'", &[]).await.expect("clear");
    let advance = "SELECT capgate.advance('advance', $1::text::pg_snapshot, $2, $3::text::pg_snapshot, $4)";
    let position = "SELECT snapshot::text, target::text, seq FROM capgate.applied WHERE origin = 'advance'";
    let at = || async {
        let r = b.db.query_one(position, &[]).await.expect("position");
        (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<i64>>(2))
    };
    let (none, no_seq): (Option<&str>, Option<i64>) = (None, None);
    // The first range, committed in two parts, then whole ranges.
    b.db.execute(advance, &[&none, &no_seq, &Some("10:10:"), &Some(5i64)]).await.expect("first part");
    assert_eq!(at().await, (None, Some("10:10:".to_owned()), Some(5)));
    b.db.execute(advance, &[&none, &Some(5i64), &Some("10:10:"), &Some(9i64)]).await.expect("second part");
    b.db.execute(advance, &[&none, &Some(9i64), &Some("10:10:"), &no_seq]).await.expect("last part");
    assert_eq!(at().await, (Some("10:10:".to_owned()), None, None));
    b.db.execute(advance, &[&Some("10:10:"), &no_seq, &Some("20:25:22"), &no_seq]).await.expect("second range");
    let stale = |err: tokio_postgres::Error| assert_eq!(err.as_db_error().map(|e| e.code().code()), Some(apply::STALE_SNAPSHOT));
    stale(b.db.execute(advance, &[&Some("10:10:"), &no_seq, &Some("30:30:"), &no_seq]).await.expect_err("stale"));
    stale(b.db.execute(advance, &[&none, &no_seq, &Some("30:30:"), &no_seq]).await.expect_err("stale start"));
    // A range under way: only the shipper that knows its last seq (and its B) goes on.
    b.db.execute(advance, &[&Some("20:25:22"), &no_seq, &Some("40:40:"), &Some(100i64)]).await.expect("a part");
    stale(b.db.execute(advance, &[&Some("20:25:22"), &no_seq, &Some("40:40:"), &no_seq]).await.expect_err("restarted the range"));
    stale(b.db.execute(advance, &[&Some("20:25:22"), &Some(90i64), &Some("40:40:"), &no_seq]).await.expect_err("an older part"));
    stale(b.db.execute(advance, &[&Some("20:25:22"), &Some(100i64), &Some("50:50:"), &no_seq]).await.expect_err("another B"));
    assert_eq!(at().await, (Some("20:25:22".to_owned()), Some("40:40:".to_owned()), Some(100)));
    b.db.execute(advance, &[&Some("20:25:22"), &Some(100i64), &Some("40:40:"), &no_seq]).await.expect("the range ends");
    assert_eq!(at().await, (Some("40:40:".to_owned()), None, None));
}

#[tokio::test]
async fn a_hot_row_collapses_only_while_the_replica_agrees() {
    let b = bed("hot", KV).await;
    let start = b.capture("t", "INSERT INTO t VALUES (1, '')").await;
    b.apply_ok(&start, "halt").await;
    let mut changes = Vec::new();
    for i in 0..3 {
        changes.extend(b.capture("t", &format!("UPDATE t SET v = v || '{i}'")).await);
    }
    // The replica's row differs from the first old image: every update is a conflict, each
    // recorded (the collapsed fast path is not taken).
    b.db.batch_execute("UPDATE r_hot.t SET v = 'here'").await.expect("diverge");
    let c = b.apply_ok(&changes, "skip").await;
    assert_eq!(kinds(&c), vec!["update_differs"; 3]);
    assert_eq!(b.replica_rows("t").await, vec![r#"{"k":1,"v":"here"}"#]);
    // In agreement, the three collapse and the last image wins.
    b.db.batch_execute("UPDATE r_hot.t SET v = ''").await.expect("agree");
    assert!(b.apply_ok(&changes, "halt").await.is_empty());
    b.same("t").await;
}

/// A schema change that gives a table a `json` or float column, and that column's values
/// later in the same page: the rows must be read from their images' text (decision 0034),
/// though the table had no such column when the page began.
#[tokio::test]
async fn a_json_column_added_in_the_page_keeps_its_text() {
    let b = bed("ddltext", "CREATE TABLE t (k int PRIMARY KEY, v text)").await;
    let inserts = b.capture("t", "INSERT INTO t VALUES (1, 'a')").await;
    assert!(b.apply_ok(&inserts, "halt").await.is_empty());
    let ddl = json!({"seq": 100, "at": "2026-12-01 10:00:00+00", "tbl": "r_ddltext.t", "op": "S",
                     "new": {"sql": "ALTER TABLE t ADD COLUMN j json, ADD COLUMN f float8", "search_path": "r_ddltext"}})
    .to_string();
    b.db.batch_execute("ALTER TABLE p_ddltext.t ADD COLUMN j json, ADD COLUMN f float8").await.expect("origin ddl");
    let updates = b.capture("t", r#"UPDATE t SET j = '{"b": 1,  "a": 2}', f = '-0' WHERE k = 1"#).await;
    assert!(b.apply_ok(&[vec![ddl], updates].concat(), "halt").await.is_empty());
    b.same("t").await;
}
