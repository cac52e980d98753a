//! The `capgate` command as a DBA uses it.

use std::process::Command;

use crate::support::scratch;

fn capgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capgate")).args(args).output().expect("run capgate")
}

#[test]
fn check_config_takes_mysql_sites() {
    let dir = scratch("check-config-mysql");
    let good = dir.join("good.toml");
    std::fs::write(&good, "site = \"seattle\"\n[primary]\nurl = \"mariadb://app:secret@127.0.0.1/shop?sslmode=disable\"\n").unwrap();
    let out = capgate(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("primary mysql://app:***@127.0.0.1:3306/shop") && !stdout.contains("secret"), "{stdout}");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "site = \"seattle\"\n[primary]\nurl = \"mysql://app@127.0.0.1/shop?sslmode=verify_full\"\n\
         [[replicas]]\nname = \"b\"\nurl = \"postgres://h/db\"\n[[users]]\nname = \"u\"\nscram_verifier = \"x\"\n",
    )
    .unwrap();
    let out = capgate(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("primary.url: sslmode `verify_full`"), "{err}");
    assert!(err.contains("replicas[0].url: a postgres replica for a mysql primary"), "{err}");
}

#[test]
fn check_config_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() {
    let dir = scratch("check-config");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "site = \"seattle\"\nlisten = \"127.0.0.1:6432\"\n[primary]\nurl = \"postgres://app:secret@127.0.0.1:5432/app\"\n",
    )
    .unwrap();
    let out = capgate(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"), "the password is never printed");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "site = \"seattle\"\nmax_connections = -1\n[primary]\nurl = \"mongodb://x\"\n[tls]\ncert = \"nope.crt\"\nkey = \"nope.key\"\n",
    )
    .unwrap();
    let out = capgate(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (line, key) in [(2, "max_connections"), (4, "primary.url"), (6, "tls.cert"), (7, "tls.key")] {
        assert!(err.contains(&format!("{}:{line}: {key}: ", bad.display())), "no line for {key} in:\n{err}");
    }

    // A bounded budget a healthy replica's lag reaches under load is warned about.
    let tight = dir.join("tight.toml");
    std::fs::write(dir.join("tight-policy.toml"), "[[table]]\nmatch = \"public.cart\"\nmode = \"bounded\"\nmax_lag = \"1s\"\n").unwrap();
    std::fs::write(
        &tight,
        "site = \"seattle\"\npolicy = \"tight-policy.toml\"\n[primary]\nurl = \"postgres://h/db\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"postgres://e/db\"\nship_interval = \"500ms\"\n",
    )
    .unwrap();
    let out = capgate(&["check-config", "--config", tight.to_str().unwrap()]);
    assert!(out.status.success(), "a warning, not a failure: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("tight-policy.toml:1: max_lag: warning: public.cart: max_lag 1s is below twice replica east's ship_interval (500ms)"),
        "{said}"
    );
    std::fs::write(&tight, std::fs::read_to_string(&tight).unwrap().replace("500ms", "200ms")).unwrap();
    let said = String::from_utf8_lossy(&capgate(&["check-config", "--config", tight.to_str().unwrap()]).stdout).into_owned();
    assert!(!said.contains("warning"), "1 s is above 2 × 200 ms + 0.5 s: {said}");

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "site = \"seattle\"\n[primary]\nurl = \"postgres://h/db\"\nsslmode = \"require\"\n").unwrap();
    let out = capgate(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4: primary.sslmode: unknown key", typo.display())), "{err}");
}

/// A policy with one rule per mode, as a DBA would write it.
const POLICY: &str = "default = \"local\"\n\n[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n\n\
    [[table]]\nmatch = \"public.cart_*\"\nmode = \"bounded\"\nmax_lag = \"30s\"\n\n[[table]]\nmatch = \"public.*\"\nmode = \"async\"\n";

/// A config naming `policy.toml` in `dir` (the primary is never contacted by explain).
fn config_with_policy(dir: &std::path::Path, policy: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let file = dir.join("capgate.toml");
    std::fs::write(&file, "site = \"a\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"postgres://app@127.0.0.1:5432/app\"\n").unwrap();
    file
}

#[test]
fn explain_prints_kinds_tables_and_decisions_as_text_and_json() {
    let dir = scratch("explain");
    let cfg = config_with_policy(&dir, POLICY);
    let cfg = cfg.to_str().unwrap();

    // The JSON shape outside tools rely on, exactly.
    let out = capgate(&["explain", "--config", cfg, "--json", "UPDATE orders SET paid = now() WHERE id = 1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"statements":[{"kind":"write","writes":["public.orders"],"reads":[],"nondeterministic":["now()"],"decisions":[{"table":"public.orders","mode":"sync","rule":"public.orders"}]}]}"#
    );

    // Several statements: first match wins, reads decide nothing, unknown says why.
    let sql = "INSERT INTO Cart_Items (id) VALUES (1); SELECT * FROM orders; UPDATE audit.log SET n = 1; DO $$ BEGIN END $$";
    let out = capgate(&["explain", "--config", cfg, "--json", sql]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &json["statements"];
    assert_eq!(s[0]["decisions"], serde_json::json!([{"table": "public.cart_items", "mode": "bounded", "rule": "public.cart_*"}]));
    assert_eq!((s[1]["kind"].as_str(), s[1]["reads"].clone()), (Some("read"), serde_json::json!(["public.orders"])));
    assert_eq!(s[1]["decisions"], serde_json::json!([]));
    assert_eq!(s[2]["decisions"], serde_json::json!([{"table": "audit.log", "mode": "local", "rule": "default"}]));
    assert_eq!(s[3]["kind"], "unknown");
    assert!(s[3]["reason"].as_str().is_some_and(|r| r.contains("DO")), "{json}");
    assert!(s[0].get("reason").is_none(), "reason only for unknown: {json}");

    // The text form names the rule and its line.
    let out = capgate(&["explain", "--config", cfg, "UPDATE orders SET paid = now() WHERE id = 1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("statement 1: write"), "{text}");
    assert!(text.contains("public.orders -> sync (rule \"public.orders\", line 3)"), "{text}");
    assert!(text.contains("nondeterministic: now()"), "{text}");

    // --policy alone, and a config without a policy (everything local).
    let policy = dir.join("policy.toml");
    let out = capgate(&["explain", "--policy", policy.to_str().unwrap(), "--json", "DELETE FROM shop_things"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["statements"][0]["decisions"][0]["mode"], "async");
    let bare = dir.join("bare.toml");
    std::fs::write(&bare, "site = \"a\"\n[primary]\nurl = \"postgres://app@127.0.0.1:5432/app\"\n").unwrap();
    let out = capgate(&["explain", "--config", bare.to_str().unwrap(), "DELETE FROM orders"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("every table is local") && text.contains("public.orders -> local (default)"), "{text}");
}

#[test]
fn check_config_rejects_a_bad_policy_naming_file_line_and_key() {
    let dir = scratch("check-config-policy");
    let good = config_with_policy(&dir, POLICY);
    let out = capgate(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 rule(s)"), "{}", String::from_utf8_lossy(&out.stdout));

    // Line 6: an option of another mode; line 11: an unknown key; line 8: a shadowed rule.
    let bad = "default = \"local\"\n\n[[table]]\nmatch = \"public.*\"\nmode = \"async\"\nmax_lag = \"5s\"\n\n\
        [[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\ncolour = \"blue\"\n";
    let cfg = config_with_policy(&dir, bad);
    let out = capgate(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.join("policy.toml");
    for (line, key) in [(6, "table[1].max_lag"), (11, "table[2].colour"), (8, "table[2].match")] {
        assert!(err.contains(&format!("{}:{line}: {key}: ", file.display())), "no {key} at line {line} in:\n{err}");
    }
    assert!(err.contains("it is an option of mode bounded"), "{err}");
    assert!(err.contains("can never match"), "{err}");
}

/// A MySQL policy: the database in the schema's place.
const MYSQL_POLICY: &str = "default = \"local\"\n\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n\n\
    [[table]]\nmatch = \"shop.cart_*\"\nmode = \"bounded\"\n";

#[test]
fn explain_in_the_mysql_dialect() {
    let dir = scratch("explain-mysql");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, MYSQL_POLICY).unwrap();
    let policy = policy.to_str().unwrap();
    let mysql = |extra: &[&str], sql: &str| {
        let mut args = vec!["explain", "--policy", policy, "--dialect", "mysql"];
        args.extend_from_slice(extra);
        args.push(sql);
        capgate(&args)
    };

    // The JSON shape, with backticks, an alias join and the current database.
    let out = mysql(&["--database", "shop", "--json"], "UPDATE `cart_items` c JOIN orders o ON o.id = c.order_id SET c.qty = 0");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"statements":[{"kind":"write","writes":["shop.cart_items"],"reads":["shop.orders"],"nondeterministic":[],"decisions":[{"table":"shop.cart_items","mode":"bounded","rule":"shop.cart_*"}]}]}"#
    );
    // The text form names the rule and its line.
    let out = mysql(&["--database", "shop"], "CALL shop.nosuch(); DELETE FROM orders WHERE id = 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("statement 1: unknown: calls shop.nosuch()"), "{text}");
    assert!(text.contains("shop.orders -> sync (rule \"shop.orders\", line 3)"), "{text}");
    // Without --database only qualified names resolve; the reason says so.
    let out = mysql(&["--json"], "DELETE FROM orders; DELETE FROM shop.orders");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["statements"][0]["reason"].as_str().is_some_and(|r| r.contains("no database selected")), "{json}");
    assert_eq!(json["statements"][1]["decisions"][0]["mode"], "sync");
    // --sql-mode: under ANSI_QUOTES "orders" is a table; by default a string.
    let out = mysql(&["--database", "shop", "--sql-mode", "ANSI_QUOTES", "--json"], r#"UPDATE "orders" SET paid = 1"#);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["statements"][0]["writes"], serde_json::json!(["shop.orders"]), "{json}");
    let out = mysql(&["--database", "shop", "--json"], r#"SELECT "orders" FROM cart_x"#);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["statements"][0]["reads"], serde_json::json!(["shop.cart_x"]), "{json}");
    // Options of the other dialect are refused (exit 2), and so is an unknown dialect.
    let out = mysql(&["--search-path", "shop"], "DELETE FROM t");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = capgate(&["explain", "--database", "shop", "DELETE FROM t"]);
    assert_eq!(out.status.code(), Some(2));
    let out = capgate(&["explain", "--dialect", "oracle", "DELETE FROM t"]);
    assert_eq!(out.status.code(), Some(2));

    // With a MySQL site's configuration, a policy `capgate run` would refuse there (a quorum:
    // PostgreSQL-only) is refused, naming the line and the remedy, not explained as if in force.
    let quorum = dir.join("quorum.toml");
    std::fs::write(&quorum, "[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\nquorum = 1\n").unwrap();
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        "site = \"west\"\npolicy = \"quorum.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:3306/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:3307/\"\n",
    )
    .unwrap();
    let out = capgate(&["explain", "--config", config.to_str().unwrap(), "--database", "shop", "DELETE FROM orders"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("quorum.toml:1: table[1].quorum") && err.contains("remove quorum"), "{err}");
}

/// Every statement of the MySQL corpus (tests/sql/classify_mysql.txt) explained by the
/// command exactly as the classifier classifies it (the command has no stored routines, so
/// CALLs come out `unknown` there).
#[test]
fn explain_works_on_the_mysql_corpus() {
    use capgate::classify::{classify, Dialect, SearchPath};
    use capgate::policy::Policy;
    let corpus = include_str!("../sql/classify_mysql.txt");
    let catalog = Policy::default().catalog(Dialect::MySql);
    let path = SearchPath::database(Some("shop"));
    let mut count = 0;
    for sql in corpus.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).filter_map(|l| l.splitn(5, " | ").nth(4)) {
        count += 1;
        let out = capgate(&["explain", "--dialect", "mysql", "--database", "shop", "--json", sql]);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let names = |ts: &[capgate::classify::TableName]| ts.iter().map(ToString::to_string).collect::<Vec<_>>();
        let expected: Vec<serde_json::Value> = classify(Dialect::MySql, sql, &path, &catalog)
            .statements
            .iter()
            .map(|s| serde_json::json!([s.kind.name(), names(&s.writes), names(&s.reads), s.nondeterministic]))
            .collect();
        let got: Vec<serde_json::Value> = json["statements"]
            .as_array()
            .unwrap_or_else(|| panic!("{sql}: {json}"))
            .iter()
            .map(|s| serde_json::json!([s["kind"], s["writes"], s["reads"], s["nondeterministic"]]))
            .collect();
        assert_eq!(got, expected, "{sql}");
    }
    assert!(count >= 200, "{count}");
}
