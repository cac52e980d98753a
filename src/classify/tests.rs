//! Unit tests for classification; the big table of real-world statements is in
//! tests/classify_corpus.rs.

use super::*;

fn pg(sql: &str) -> Classification {
    classify(Dialect::Postgres, sql, &SearchPath::default(), &Catalog::new())
}

fn one(sql: &str) -> StatementClass {
    let c = pg(sql);
    assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
    c.statements.into_iter().next().unwrap_or_else(|| StatementClass::of_kind(Kind::Utility))
}

fn names(ts: &[TableName]) -> Vec<String> {
    ts.iter().map(ToString::to_string).collect()
}

#[test]
fn smoke() {
    let s = one("UPDATE Orders SET paid = now() WHERE id = 1");
    assert_eq!(s.kind, Kind::Write);
    assert_eq!(names(&s.writes), ["public.orders"]);
}

#[test]
fn search_path_resolves_unqualified_names() {
    let path = SearchPath::new(["app", "public"]);
    let c = classify(Dialect::Postgres, "INSERT INTO t SELECT * FROM public.u", &path, &Catalog::new());
    assert_eq!(names(&c.statements[0].writes), ["app.t"]);
    assert_eq!(names(&c.statements[0].reads), ["public.u"]);
    // The catalog knows `u` lives in public: the second schema of the path.
    let mut cat = Catalog::new();
    cat.add_table(&TableName::new("public", "u"));
    let c = classify(Dialect::Postgres, "DELETE FROM u", &path, &cat);
    assert_eq!(names(&c.statements[0].writes), ["public.u"]);
    // "$user" is skipped; an empty path falls back to public.
    let c = classify(Dialect::Postgres, "DELETE FROM u", &SearchPath::new(["$user"]), &Catalog::new());
    assert_eq!(names(&c.statements[0].writes), ["public.u"]);
}

#[test]
fn several_statements_each_classified() {
    let c = pg("BEGIN; UPDATE a SET x = 1; SELECT * FROM b; COMMIT");
    let kinds: Vec<&str> = c.statements.iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["transaction", "write", "read", "transaction"]);
    assert_eq!(c.writes().iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["public.a"]);
    // One unparseable statement does not hide the others.
    let c = pg("UPDATE a SET x = 1; DO $$ BEGIN END $$; DELETE FROM b");
    let kinds: Vec<&str> = c.statements.iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["write", "unknown", "write"]);
    assert!(c.unknown_reason().is_some_and(|r| r.contains("DO block")));
    assert!(pg("").statements.is_empty());
    assert!(pg(" ; -- nothing\n").statements.is_empty());
}

#[test]
fn session_and_transaction_details() {
    assert_eq!(
        one("SET search_path TO app, \"Mixed\", '$user'").kind,
        Kind::Session(SessionChange::SearchPath { schemas: vec!["app".into(), "Mixed".into(), "$user".into()], local: false })
    );
    assert_eq!(one("SET LOCAL search_path = x").kind, Kind::Session(SessionChange::SearchPath { schemas: vec!["x".into()], local: true }));
    assert_eq!(one("SET search_path TO DEFAULT").kind, Kind::Session(SessionChange::ResetSearchPath));
    assert_eq!(one("RESET search_path").kind, Kind::Session(SessionChange::ResetSearchPath));
    assert_eq!(one("DISCARD ALL").kind, Kind::Session(SessionChange::Discard));
    assert_eq!(one("DISCARD TEMP").kind, Kind::Session(SessionChange::Other));
    assert_eq!(one("PREPARE TRANSACTION 'g1'").kind, Kind::Transaction(TxControl::PrepareTransaction("g1".into())));
    assert_eq!(one("COMMIT PREPARED 'g1'").kind, Kind::Transaction(TxControl::CommitPrepared("g1".into())));
    assert_eq!(one("ROLLBACK PREPARED 'g1'").kind, Kind::Transaction(TxControl::RollbackPrepared("g1".into())));
    assert_eq!(one("SAVEPOINT \"A\"").kind, Kind::Transaction(TxControl::Savepoint("A".into())));
    assert_eq!(one("ROLLBACK TO SAVEPOINT b").kind, Kind::Transaction(TxControl::RollbackTo("b".into())));
}

#[test]
fn locks_are_not_writes() {
    let s = one("SELECT * FROM accounts WHERE id = 1 FOR UPDATE");
    assert_eq!(s.kind, Kind::Read);
    assert!(s.writes.is_empty());
    assert_eq!(names(&s.locks), ["public.accounts"]);
}

#[test]
fn policy_named_function_resolves_unknown() {
    let mut cat = Catalog::new();
    assert!(matches!(classify(Dialect::Postgres, "SELECT audit(1)", &SearchPath::default(), &cat).statements[0].kind, Kind::Unknown(_)));
    cat.add_function("public", "audit", FunctionInfo { volatility: Volatility::Volatile, writes: Some(vec![]) });
    let c = classify(Dialect::Postgres, "SELECT audit(1)", &SearchPath::default(), &cat);
    assert_eq!(c.statements[0].kind, Kind::Read);
    assert_eq!(c.statements[0].nondeterministic, ["public.audit()"]);
    // A complete catalog (all of pg_proc) that does not list a function: it does not exist.
    cat.set_complete(true);
    assert_eq!(classify(Dialect::Postgres, "SELECT nosuch(1)", &SearchPath::default(), &cat).statements[0].kind, Kind::Read);
}

#[test]
fn mysql_keeps_case_and_uses_backticks() {
    let path = SearchPath::new(["shop"]);
    let c = classify(Dialect::MySql, "UPDATE `Orders` SET paid = NOW() WHERE id = 1 LIMIT 1", &path, &Catalog::new());
    let s = &c.statements[0];
    assert_eq!(s.kind, Kind::Write);
    assert_eq!(s.writes, [TableName::new("shop", "Orders")]);
    assert_eq!(s.nondeterministic, ["LIMIT without ORDER BY", "now()"]);
    let c = classify(Dialect::MySql, "INSERT INTO other.t (a) VALUES (RAND()), (UUID())", &path, &Catalog::new());
    assert_eq!(c.statements[0].writes, [TableName::new("other", "t")]);
    assert_eq!(c.statements[0].nondeterministic, ["rand()", "uuid()"]);
    let c = classify(Dialect::MySql, "USE shop2", &path, &Catalog::new());
    assert_eq!(c.statements[0].kind, Kind::Session(SessionChange::SearchPath { schemas: vec!["shop2".into()], local: false }));
}

#[test]
fn cache_hits_return_the_same_result_and_respect_the_key() {
    let classifier = Classifier::new(Dialect::Postgres, 64);
    let cat = Catalog::new();
    let a = classifier.classify("DELETE FROM t", &SearchPath::default(), &cat);
    let b = classifier.classify("DELETE FROM t", &SearchPath::default(), &cat);
    assert!(Arc::ptr_eq(&a, &b));
    // Another search_path is another key.
    let c = classifier.classify("DELETE FROM t", &SearchPath::new(["app"]), &cat);
    assert_eq!(names(&c.statements[0].writes), ["app.t"]);
    // Another catalog state is another key.
    let mut cat2 = cat.clone();
    cat2.add_table(&TableName::new("x", "y"));
    let d = classifier.classify("DELETE FROM t", &SearchPath::default(), &cat2);
    assert!(!Arc::ptr_eq(&a, &d));
    // Texts that differ only in their numbers share one entry, and their classification.
    let e = classifier.classify("UPDATE pgbench_accounts SET abalance = abalance + -4021 WHERE aid = 6372", &SearchPath::default(), &cat);
    let before = classifier.cached();
    let f = classifier.classify("UPDATE pgbench_accounts SET abalance = abalance + -17 WHERE aid = 2", &SearchPath::default(), &cat);
    assert!(Arc::ptr_eq(&e, &f));
    assert_eq!(classifier.cached(), before);
    // Not so for other names.
    let g = classifier.classify("UPDATE pgbench_tellers SET abalance = abalance + 17 WHERE aid = 2", &SearchPath::default(), &cat);
    assert_eq!(names(&g.statements[0].writes), ["public.pgbench_tellers"]);
    // Bounded.
    for i in 0..1000 {
        classifier.classify(&format!("SELECT c{i} FROM t"), &SearchPath::default(), &cat);
    }
    assert!(classifier.cached() <= 64 + 16, "{}", classifier.cached());
    // A hot entry survives a flood of one-off statements (second chance).
    let small = Classifier::new(Dialect::Postgres, 160);
    let hot = small.classify("SELECT 'hot'", &SearchPath::default(), &cat);
    for i in 0..400 {
        let _ = small.classify("SELECT 'hot'", &SearchPath::default(), &cat);
        small.classify(&format!("SELECT c{i} FROM t"), &SearchPath::default(), &cat);
    }
    assert!(Arc::ptr_eq(&hot, &small.classify("SELECT 'hot'", &SearchPath::default(), &cat)));
}

#[test]
fn cache_is_shared_across_threads() {
    let classifier = Arc::new(Classifier::new(Dialect::Postgres, 1000));
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let c = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let r = c.classify(&format!("UPDATE t{} SET x = 1", i % 50), &SearchPath::default(), &Catalog::default());
                    assert_eq!(r.statements[0].writes[0].name, format!("t{}", i % 50), "thread {n}");
                }
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok());
    }
}
