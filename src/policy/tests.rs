//! Policy tests: validation errors name line, key and expectation; first match wins; reload
//! keeps the old policy on a bad file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::classify::{classify, Dialect, SearchPath};

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, Path::new("policy.toml"))
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

const EXAMPLE: &str = r#"default = "local"
unknown = "relay"
[[table]]
match = "public.orders"
mode = "sync"
on_partition = "fail"
[[table]]
match = "public.cart_*"
mode = "bounded"
max_lag = "30s"
on_conflict = "skip"
[[table]]
match = "public.*"
mode = "async"
[[function]]
name = "public.transfer"
writes = ["public.accounts"]
"#;

#[test]
fn the_issue_example_loads_and_decides_first_match() {
    let p = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules.len(), 3);
    let d = p.decide_table(&TableName::new("public", "orders"));
    assert_eq!(d.mode, Mode::Sync { on_partition: OnPartition::Fail, quorum: None });
    assert_eq!(d.rule, RuleRef::Rule { index: 0, pattern: "public.orders".into(), line: 3 });
    let d = p.decide_table(&TableName::new("public", "cart_items"));
    assert_eq!(d.mode, Mode::Bounded { max_lag: Duration::from_secs(30), on_partition: OnPartition::Fail, on_conflict: OnConflict::Skip });
    assert_eq!(p.decide_table(&TableName::new("public", "users")).mode.name(), "async");
    let d = p.decide_table(&TableName::new("audit", "log"));
    assert_eq!((d.mode, d.rule.to_string()), (Mode::Local, "default".to_owned()));
    // A transaction's tables are each decided; the function writes accounts.
    let cat = p.catalog(Dialect::Postgres);
    let c = classify(
        Dialect::Postgres,
        "UPDATE orders SET x = 1; SELECT transfer(1, 2, 3); INSERT INTO cart_x VALUES (1)",
        &SearchPath::default(),
        &cat,
    );
    let decided: Vec<(String, &str)> = p.decide(&c).iter().map(|d| (d.table.to_string(), d.mode.name())).collect();
    assert_eq!(
        decided,
        [("public.orders".to_owned(), "sync"), ("public.accounts".to_owned(), "async"), ("public.cart_x".to_owned(), "bounded")]
    );
}

#[test]
fn empty_file_is_all_local() {
    let p = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((p.default, p.unknown), (Mode::Local, UnknownAction::Relay));
    assert!(!p.replicates_anything());
}

#[test]
fn every_problem_names_line_key_and_expectation() {
    let text = r#"default = "fast"
unknown = "ignore"
colour = "blue"
[[table]]
match = "orders"
mode = "sync"
[[table]]
match = "public.a"
mode = "async"
max_lag = "10s"
on_partition = "block"
[[table]]
match = "public.b"
mode = "bounded"
max_lag = "soon"
on_conflict = "merge"
[[table]]
mode = "sync"
mach = "public.c"
[[table]]
match = "public.d"
mode = "sync"
on_partition = "fail"
partition_timeout = "5s"
[[function]]
name = "transfer"
writes = ["public.*"]
"#;
    let e = problems(text);
    for expected in [
        "policy.toml:1: default: expected one of local | async | sync | bounded, found `fast`",
        "policy.toml:2: unknown: expected one of relay | refuse, found `ignore`",
        "policy.toml:3: colour: unknown key",
        "policy.toml:5: table[1].match: expected schema.table",
        "policy.toml:10: table[2].max_lag: does not apply to mode \"async\"",
        "policy.toml:11: table[2].on_partition: does not apply to mode \"async\"",
        "policy.toml:15: table[3].max_lag: expected a duration",
        "policy.toml:16: table[3].on_conflict: expected one of skip | halt | overwrite | latest, found `merge`",
        "table[4].match: missing",
        "policy.toml:19: table[4].mach: unknown key",
        "policy.toml:24: table[5].partition_timeout: applies only with on_partition = \"block\"",
        "policy.toml:26: function[1].name: expected a schema-qualified function name",
        "policy.toml:27: function[1].writes: expected a schema-qualified table name without wildcards",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn shadowed_rules_are_rejected() {
    let e = problems("[[table]]\nmatch = \"public.*\"\nmode = \"async\"\n[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n");
    assert!(e.contains("policy.toml:4: table[2].match: rule \"public.orders\" can never match"), "{e}");
    assert!(e.contains("table[1] \"public.*\" (line 1)"), "{e}");
    let e = problems("[[table]]\nmatch = \"*.*\"\nmode = \"local\"\n[[table]]\nmatch = \"s.t?\"\nmode = \"sync\"\n");
    assert!(e.contains("can never match"), "{e}");
    // The other order is fine.
    assert!(parse("[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n[[table]]\nmatch = \"public.*\"\nmode = \"async\"\n").is_ok());
}

#[test]
fn syntax_errors_and_wrong_shapes() {
    let e = problems("default = \"local\"\n[[table]\nmatch = 1\n");
    assert!(e.contains("policy.toml:2: (syntax)"), "{e}");
    let e = problems("[table]\nmatch = \"public.a\"\n");
    assert!(e.contains("policy.toml:1: table: expected [[table]] entries"), "{e}");
    let e = problems("[[table]]\nmatch = 5\nmode = \"sync\"\n");
    assert!(e.contains("policy.toml:2: table[1].match: expected a string"), "{e}");
    let e = problems("[[table]]\nmatch = \"public.a\"\nmode = \"bounded\"\nmax_lag = \"0s\"\n");
    assert!(e.contains("table[1].max_lag: must be more than 0"), "{e}");
    let e = problems("[[function]]\nname = \"public.f\"\n[[function]]\nname = \"public.f\"\n");
    assert!(e.contains("function[2].name: public.f is named twice"), "{e}");
}

#[test]
fn block_takes_its_timeout_and_defaults_apply() {
    let p = parse("[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"250ms\"\n[[table]]\nmatch = \"public.b\"\nmode = \"bounded\"\non_partition = \"block\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules[0].mode, Mode::Sync { on_partition: OnPartition::Block { timeout: Duration::from_millis(250) }, quorum: None });
    assert_eq!(
        p.rules[1].mode,
        Mode::Bounded {
            max_lag: DEFAULT_MAX_LAG,
            on_partition: OnPartition::Block { timeout: DEFAULT_PARTITION_TIMEOUT },
            on_conflict: DEFAULT_ON_CONFLICT
        }
    );
}

#[test]
fn nondeterministic_is_accepted_with_a_warning_that_it_does_nothing() {
    let p =
        parse("[[table]]\nmatch = \"public.events\"\nmode = \"sync\"\nnondeterministic = \"allow\"\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(p.warnings[0].line, Some(4));
    assert_eq!(p.warnings[0].key, "table[1].nondeterministic");
    assert!(p.warnings[0].message.contains("no longer does anything"), "{:?}", p.warnings);
    assert!(parse("[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\n").unwrap().warnings.is_empty());
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("capgate-policy-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("policy.toml")
}

#[test]
fn reload_keeps_the_old_policy_on_a_bad_file() {
    let file = scratch("reload");
    std::fs::write(&file, "default = \"async\"\n").unwrap_or_else(|e| panic!("{e}"));
    let handle = PolicyHandle::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let first = handle.current();
    assert_eq!((first.version, first.default.name()), (1, "async"));
    assert!(handle.reload_if_changed().is_none(), "unchanged file: no reload");

    std::fs::write(&file, "default = \"sync\"\nbogus = 1\n").unwrap_or_else(|e| panic!("{e}"));
    let err = handle.reload().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(":2: bogus: unknown key"), "{err}");
    assert_eq!(handle.current().version, 1, "the old policy stays");
    assert_eq!(handle.current().default.name(), "async");

    std::fs::write(&file, "default = \"sync\"\n# now good, and longer\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(handle.reload_if_changed().is_none(), "a change is taken once it holds still for a poll");
    assert!(matches!(handle.reload_if_changed(), Some(Ok(2))));
    assert_eq!(handle.current().default.name(), "sync");
    // A holder of the first snapshot still sees it (a running transaction keeps its policy).
    assert_eq!(first.default.name(), "async");

    // A file caught empty (truncated before being written) is not an all-local policy.
    std::fs::write(&file, "  \n").unwrap_or_else(|e| panic!("{e}"));
    let err = handle.reload().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("the file is empty (still being written?): the current policy stays"), "{err}");
    assert_eq!((handle.current().version, handle.current().default.name()), (2, "sync"));
}

/// The watcher's polls of a file written in two parts: the first part parses (the first rule
/// only), but is never taken; the whole file is, once it has held still for a poll. SIGHUP (an
/// explicit reload) reads at once.
#[test]
fn a_file_caught_half_written_is_never_taken_by_the_watcher() {
    let file = scratch("halves");
    let whole =
        "default = \"local\"\n[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\n[[table]]\nmatch = \"public.b\"\nmode = \"async\"\n";
    std::fs::write(&file, "default = \"local\"\n").unwrap_or_else(|e| panic!("{e}"));
    let handle = PolicyHandle::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let cut = whole.find("[[table]]\nmatch = \"public.b\"").unwrap_or_default();
    let b = crate::classify::TableName::new("public", "b");
    for _ in 0..3 {
        std::fs::write(&file, &whole[..cut]).unwrap_or_else(|e| panic!("{e}"));
        assert!(handle.reload_if_changed().is_none(), "the first part, seen once");
        std::fs::write(&file, whole).unwrap_or_else(|e| panic!("{e}"));
        assert!(handle.reload_if_changed().is_none(), "the whole file, seen once");
        assert!(matches!(handle.reload_if_changed(), Some(Ok(_))), "the whole file, held still for a poll");
        assert_eq!(handle.current().decide_table(&b).mode.name(), "async");
        assert!(handle.reload_if_changed().is_none(), "taken: nothing more to do");
        std::fs::write(&file, "default = \"local\"\n# again\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(handle.reload_if_changed().is_none());
        assert!(handle.reload_if_changed().is_some());
    }
    // A file that changes at every poll is never taken.
    for i in 0..5 {
        std::fs::write(&file, format!("default = \"async\"\n# {}\n", "x".repeat(i))).unwrap_or_else(|e| panic!("{e}"));
        assert!(handle.reload_if_changed().is_none(), "still changing");
    }
    assert_eq!(handle.current().default.name(), "local");
    // An explicit reload is an operator's act: it reads at once, and the watcher then has
    // nothing left to take.
    std::fs::write(&file, &whole[..cut]).unwrap_or_else(|e| panic!("{e}"));
    assert!(handle.reload().is_ok());
    assert_eq!(handle.current().decide_table(&b).mode.name(), "local");
    assert!(handle.reload_if_changed().is_none());
    assert!(handle.reload_if_changed().is_none());
}

#[tokio::test]
async fn watcher_picks_up_file_changes() {
    let file = scratch("watch");
    std::fs::write(&file, "default = \"local\"\n").unwrap_or_else(|e| panic!("{e}"));
    let handle = Arc::new(PolicyHandle::load(&file).unwrap_or_else(|e| panic!("{e}")));
    let task = handle.spawn_reload_watcher_every(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&file, "default = \"async\"\nunknown = \"refuse\"\n").unwrap_or_else(|e| panic!("{e}"));
    let mut waited = 0;
    while handle.current().version < 2 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    task.abort();
    let p = handle.current();
    assert_eq!((p.version, p.default.name(), p.unknown), (2, "async", UnknownAction::Refuse));
}

/// MySQL: the database takes the schema's place in rules and `[[function]]` names, with the
/// same modes and decisions; routine names compare without regard to case, and the policy's
/// word on a routine overrides what was read from the primary.
#[test]
fn mysql_databases_take_the_schemas_place() {
    let p = parse(
        r#"default = "local"
[[table]]
match = "shop.cart_*"
mode = "bounded"
[[table]]
match = "`shop`.`Orders`"
mode = "sync"
[[table]]
match = "shop.*"
mode = "async"
[[function]]
name = "shop.Place_Order"
writes = ["shop.Orders", "`shop`.cart_items"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = SearchPath::database(Some("shop"));
    let sql = "UPDATE cart_items c JOIN `Orders` o ON o.id = c.order_id SET c.qty = 0; CALL place_order(1); DELETE FROM audit.log; DELETE FROM sessions";
    let c = classify(Dialect::MySql, sql, &path, &p.catalog(Dialect::MySql));
    let decided: Vec<(String, &str)> = p.decide(&c).iter().map(|d| (d.table.to_string(), d.mode.name())).collect();
    assert_eq!(
        decided,
        [
            ("shop.cart_items".to_owned(), "bounded"),
            ("shop.\"Orders\"".to_owned(), "sync"),
            ("audit.log".to_owned(), "local"),
            ("shop.sessions".to_owned(), "async"),
        ]
    );
    // The primary's catalog says place_order runs dynamic SQL (writes unknown); the policy's
    // entry, added on top as the front end does, decides.
    let mut catalog = Catalog::new();
    let body = "BEGIN SET @s = 'DELETE FROM cart_items'; PREPARE st FROM @s; EXECUTE st; END";
    let routine = crate::classify::mysql::Routine {
        schema: "shop".into(),
        name: "place_order".into(),
        deterministic: false,
        body: Some(body.into()),
        sql_mode: String::new(),
    };
    crate::classify::mysql::add_routines(&mut catalog, &[routine]);
    let c = classify(Dialect::MySql, "CALL PLACE_ORDER(1)", &path, &catalog);
    assert!(c.unknown_reason().is_some_and(|r| r.contains("shop.place_order()")), "{c:?}");
    p.add_functions_to(&mut catalog);
    let c = classify(Dialect::MySql, "CALL PLACE_ORDER(1)", &path, &catalog);
    assert_eq!(c.unknown_reason(), None);
    assert_eq!(p.decide(&c).iter().map(|d| d.mode.name()).collect::<Vec<_>>(), ["sync", "bounded"]);
}

#[test]
fn the_fingerprint_ignores_layout_but_not_decisions() {
    let a = parse("# money\n[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\nquorum = 1\n").unwrap();
    let b = parse("[[table]]\nquorum = 1\n\n   mode = \"sync\"   # reordered\nmatch = \"public.a\"\n").unwrap();
    let c = parse("[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\n").unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint(), "a different quorum is a different policy");
}

#[test]
fn quorum_is_a_sync_option_counted_against_the_replicas() {
    let p = parse("[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\nquorum = 1\n[[table]]\nmatch = \"public.b\"\nmode = \"sync\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules[0].mode, Mode::Sync { on_partition: OnPartition::Fail, quorum: Some(1) });
    assert_eq!(p.rules[0].mode.quorum_of(2), 1);
    assert_eq!(p.rules[1].mode.quorum_of(2), 2, "no quorum: every replica");
    assert_eq!(Mode::Sync { on_partition: OnPartition::Fail, quorum: Some(5) }.quorum_of(2), 2, "at most every replica");
    assert!(p.streams_sync(2), "quorum 1 of 2 replicas: the others get the changes from the stream");
    assert!(!p.streams_sync(1), "quorum 1 of 1 replica is every replica");
    let e = problems("[[table]]\nmatch = \"public.a\"\nmode = \"sync\"\nquorum = 0\n");
    assert!(e.contains("policy.toml:4: table[1].quorum: expected a whole number of replicas from 1"), "{e}");
    let e = problems("[[table]]\nmatch = \"public.a\"\nmode = \"async\"\nquorum = 1\n");
    assert!(e.contains("table[1].quorum: does not apply to mode \"async\"; it is an option of mode sync"), "{e}");
}
