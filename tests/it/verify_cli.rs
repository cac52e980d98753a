//! `capgate verify` as a DBA runs it: the real binary, the shared primary and a second server
//! as the replica, a policy choosing the tables. Checks the exit codes (0 equal, 1 diverged,
//! 2 error), the JSON shape tools rely on, the policy's selection and `--table` narrowing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{primary, psql_at, replica, scratch};

fn capgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capgate")).args(args).output().expect("run capgate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run `capgate verify --config CONFIG ARGS…` and return the exit code, stdout and stderr.
fn verify(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["verify", "--config", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = capgate(&all);
    (out.status.code(), stdout(&out), stderr(&out))
}

/// The same, with `--json`, parsed.
fn verify_json(config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = verify(config, &all);
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, json)
}

/// Table names of the first replica's comparisons, in report order.
fn compared(json: &Value) -> Vec<String> {
    json["replicas"][0]["tables"].as_array().expect("tables").iter().map(|t| t["table"].as_str().unwrap_or("?").to_owned()).collect()
}

/// A config for database `db` on both servers in its own directory, with `policy` (if any)
/// written next to it as policy.toml.
fn config(db: &str, policy: Option<&str>) -> PathBuf {
    let dir = scratch(&format!("verify-cli-{db}-{}", policy.is_some()));
    let mut text = String::from("site = \"a\"\n");
    if let Some(p) = policy {
        std::fs::write(dir.join("policy.toml"), p).expect("write policy");
        text.push_str("policy = \"policy.toml\"\n");
    }
    text.push_str(&format!(
        "[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\n",
        primary().url("postgres", db),
        replica().url("postgres", db)
    ));
    let file = dir.join("capgate.toml");
    std::fs::write(&file, text).expect("write config");
    file
}

/// The same tables and rows in `db` on both servers.
fn same_on_both(db: &str, sql: &str) {
    for server in [primary(), replica()] {
        let _ = server.create_database(db);
        psql_at(&server.url("postgres", db), sql);
    }
}

const POLICY: &str = "default = \"local\"\n\n[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n\n\
    [[table]]\nmatch = \"public.events\"\nmode = \"async\"\n\n[[table]]\nmatch = \"public.scratch\"\nmode = \"local\"\n";

#[test]
fn verify_compares_what_the_policy_replicates_and_exits_0_or_1() {
    let db = "vcli_policy";
    same_on_both(
        db,
        "DROP TABLE IF EXISTS orders, events, scratch;
         CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), note text);
         INSERT INTO orders SELECT g, g * 2.5, 'order ' || g FROM generate_series(1, 300) g;
         CREATE TABLE events (id bigint PRIMARY KEY, payload text);
         INSERT INTO events SELECT g, 'event ' || g FROM generate_series(1, 300) g;
         CREATE TABLE scratch (id int PRIMARY KEY, v text);
         INSERT INTO scratch SELECT g, 'x' FROM generate_series(1, 10) g;",
    );
    // The local table differs from the start: it is not replicated, so it must not count.
    psql_at(&replica().url("postgres", db), "UPDATE scratch SET v = 'only on b' WHERE id = 3");
    let cfg = config(db, Some(POLICY));

    let (code, out, err) = verify(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("public.orders") && out.contains("public.events"), "{out}");
    assert!(!out.contains("scratch"), "a local table is not compared:\n{out}");
    assert!(out.contains("summary: 2 table comparison(s), 2 equal, 0 diverged"), "{out}");
    assert!(out.contains("compared as they are now"), "the consistent point is stated:\n{out}");

    let (code, json) = verify_json(&cfg, &[]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(compared(&json), ["public.events", "public.orders"]);
    assert_eq!(json["replicas"][0]["replica"], "b");
    assert_eq!(json["replicas"][0]["address"], format!("127.0.0.1:{}", replica().port()));
    assert!(json["replicas"][0]["consistent_point"].as_str().is_some_and(|s| s.contains("as they are")), "{json}");
    assert_eq!(
        json["replicas"][0]["tables"][1],
        serde_json::json!({"table": "public.orders", "status": "equal", "rows": 300, "chunks": 1})
    );
    assert_eq!((json["diverged"].as_bool(), json["failed"].as_bool()), (Some(false), Some(false)), "{json}");
    assert_eq!(json["site"], "a");
    assert!(json.get("note").is_none(), "{json}");

    // Named explicitly, a local table is compared anyway, and only it.
    let (code, out, err) = verify(&cfg, &["--table", "public.scratch"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("key (3): primary (3,x) | replica (3,\"only on b\")"), "{out}");
    assert!(!out.contains("public.orders"), "{out}");

    // A missing row on the replica of an async table: exit 1, exactly that row.
    psql_at(&replica().url("postgres", db), "DELETE FROM events WHERE id = 7");
    let (code, out, err) = verify(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("key (7): missing on the replica; primary (7,\"event 7\")"), "{out}");
    assert!(out.contains("summary: 2 table comparison(s), 1 equal, 1 diverged"), "{out}");

    let (code, json) = verify_json(&cfg, &["--chunk-rows", "50"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["diverged"], true);
    let events = &json["replicas"][0]["tables"][0];
    assert_eq!((events["table"].as_str(), events["status"].as_str()), (Some("public.events"), Some("diverged")), "{json}");
    assert_eq!((events["rows_primary"].as_u64(), events["rows_replica"].as_u64()), (Some(300), Some(299)));
    assert_eq!(
        (events["chunks"].as_u64(), events["chunks_diverged"].as_u64(), events["rows_differing"].as_u64()),
        (Some(7), Some(1), Some(1))
    );
    assert_eq!(events["differences"], serde_json::json!([{"key": ["7"], "primary": "(7,\"event 7\")", "replica": null}]));
    // 300 rows in chunks of 50: six full chunks and the empty one that ends the walk.
    assert_eq!(json["replicas"][0]["tables"][1]["chunks"], 7);

    // --table narrows to the equal table: exit 0, and only it is in the report.
    let (code, json) = verify_json(&cfg, &["--table", "Orders"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(compared(&json), ["public.orders"]);
}

#[test]
fn verify_without_a_policy_compares_nothing_and_says_so() {
    let db = "vcli_nopolicy";
    same_on_both(
        db,
        "DROP TABLE IF EXISTS \"Cart Items\"; CREATE TABLE \"Cart Items\" (\"Id\" int PRIMARY KEY, qty int);
         INSERT INTO \"Cart Items\" SELECT g, g FROM generate_series(1, 20) g;",
    );
    let cfg = config(db, None);
    let (code, out, err) = verify(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("names no policy file, so every table is local"), "{out}");
    assert!(out.contains("--table"), "suggests --table:\n{out}");
    assert!(out.contains("summary: 0 table comparison(s)"), "{out}");
    let (code, json) = verify_json(&cfg, &[]);
    assert_eq!(code, Some(0));
    assert!(json["note"].as_str().is_some_and(|n| n.contains("no policy file")), "{json}");
    assert_eq!(compared(&json), Vec::<String>::new());

    // A quoted, mixed-case name on the command line; printed back the same way.
    let (code, json) = verify_json(&cfg, &["--table", "public.\"Cart Items\""]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(compared(&json), ["public.\"Cart Items\""]);
    assert_eq!(json["replicas"][0]["tables"][0]["rows"], 20);
}

#[test]
fn verify_exits_2_naming_what_failed() {
    let db = "vcli_errors";
    same_on_both(db, "DROP TABLE IF EXISTS t; CREATE TABLE t (id int PRIMARY KEY);");
    let cfg = config(db, Some(POLICY));

    // A table name that cannot be parsed, and one the primary does not have.
    let (code, out, err) = verify(&cfg, &["--table", "a.b.c"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--table") && err.contains("`a.b.c`"), "{err}");
    let (code, _, err) = verify(&cfg, &["--table", "t", "--table", "public.nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("public.nope") && err.contains("does not exist on the primary"), "{err}");
    // JSON users get the error as JSON too.
    let (code, json) = verify_json(&cfg, &["--table", "public.nope"]);
    assert_eq!(code, Some(2));
    assert!(json["error"].as_str().is_some_and(|e| e.contains("public.nope")), "{json}");

    // A configuration that does not load, and a policy file that does not validate.
    let dir = cfg.parent().expect("config dir").to_path_buf();
    let missing = dir.join("missing.toml");
    let (code, _, err) = verify(&missing, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.toml") && err.contains("cannot read"), "{err}");
    std::fs::write(dir.join("policy.toml"), "default = \"sometimes\"\n").expect("write policy");
    let (code, _, err) = verify(&cfg, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("policy.toml:1: default:"), "{err}");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("write policy");

    // A replica out of reach: named, with its address.
    let port = capgate::testbed::free_port();
    let down = dir.join("down.toml");
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let text = text.replace(&format!(":{}/", replica().port()), &format!(":{port}/"));
    std::fs::write(&down, text).expect("write config");
    let (code, _, err) = verify(&down, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains(&format!("cannot connect to replica b at 127.0.0.1:{port}")), "{err}");

    // A comparison that fails (the replica lacks a column) makes the check incomplete: 2.
    psql_at(&primary().url("postgres", db), "ALTER TABLE t ADD COLUMN extra int");
    let (code, out, err) = verify(&cfg, &["--table", "t"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("ERROR") && out.contains("1 failed"), "{out}");

    let (code, _, err) = verify(&cfg, &["--chunk-rows", "0"]);
    assert_eq!(code, Some(2), "{err}");
}
