//! Tests of `super` (implicit commits and the queries capgate cannot coordinate).

use super::*;

#[test]
fn statements_that_commit_implicitly() {
    let other = Kind::Utility;
    let set = Kind::Session(crate::classify::SessionChange::Other);
    assert!(commits_implicitly("SET autocommit = 1", &set, false));
    assert!(commits_implicitly("set @@session.autocommit=ON", &set, false));
    assert!(commits_implicitly("SET SESSION autocommit = true", &set, false));
    assert!(!commits_implicitly("SET autocommit = 0", &set, false));
    assert!(commits_implicitly("SET PASSWORD = PASSWORD('x')", &set, false));
    assert!(commits_implicitly("LOCK TABLES t WRITE", &other, false));
    assert!(!commits_implicitly("UNLOCK TABLES", &other, false));
    assert!(commits_implicitly("UNLOCK TABLES", &other, true));
    assert!(commits_implicitly("/* why */ TRUNCATE TABLE t", &Kind::Write, false));
    assert!(commits_implicitly("ANALYZE TABLE t", &other, false));
    assert!(commits_implicitly("check table t", &other, false));
    assert!(!commits_implicitly("CHECKSUM TABLE t", &other, false));
    assert!(!commits_implicitly("CACHE INDEX t IN c", &other, false));
    assert!(commits_implicitly("CREATE TABLE t (a INT)", &Kind::Ddl, false));
    assert!(!commits_implicitly("CREATE TEMPORARY TABLE t (a INT)", &Kind::Ddl, false));
    assert!(!commits_implicitly("drop  temporary table t", &Kind::Ddl, false));
    assert!(commits_implicitly("START TRANSACTION", &Kind::Transaction(TxControl::Begin), false));
    assert!(!commits_implicitly("SELECT 'set autocommit=1'", &Kind::Read, false));
    assert!(commits_implicitly("/*!40101 FLUSH TABLES */", &other, false));
}

#[test]
fn every_spelling_of_autocommit_on() {
    // Each turns autocommit on on MariaDB 10.11 (and commits an open transaction when it
    // was off).
    for on in [
        "SET autocommit = 1",
        "SET autocommit := 1",
        "SET autocommit = 'ON'",
        "set autocommit=\"on\"",
        "SET autocommit = DEFAULT",
        "SET autocommit = TRUE",
        "SET @@autocommit=1",
        "SET @@autocommit:=1",
        "SET SESSION autocommit=1",
        "SET LOCAL autocommit = 1",
        "SET @@session.autocommit = 1",
        "SET @@LOCAL.AUTOCOMMIT = on",
        "SET @a = 1, autocommit = 1",
        "SET @a = concat('x', ',y'), @@session.autocommit := 'On';",
        "SET autocommit = 0, autocommit = 1",
        "/* why */ SET autocommit = 1",
        "SET autocommit = 2 - 1",
        "SET autocommit = @saved",
    ] {
        assert!(enables_autocommit(on), "{on}");
        let set = Kind::Session(crate::classify::SessionChange::Other);
        assert!(commits_implicitly(on, &set, false), "{on}");
    }
    for off in [
        "SET autocommit = 0",
        "SET autocommit := 0",
        "SET autocommit = 'OFF'",
        "set @@session.autocommit = false",
        "SET SESSION autocommit = \"0\"",
        "SET @a = 1, autocommit = off",
        "SET GLOBAL autocommit = 1",
        "SET @@global.autocommit = 1",
        "SET @autocommit = 1",
        "SET @x = 'autocommit=1'",
        "SET NAMES utf8mb4",
        "SELECT 'SET autocommit = 1'",
        "SETTINGS autocommit = 1",
    ] {
        assert!(!enables_autocommit(off), "{off}");
    }
}

/// A policy with `shop.orders` sync, the search path `shop`, an empty catalog.
fn shop() -> (Policy, SearchPath, crate::classify::Catalog) {
    let text = "default = \"local\"\n[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\n";
    let policy = Policy::parse(text, std::path::Path::new("policy.toml")).expect("policy");
    (policy, SearchPath::new(["shop".to_owned()]), crate::classify::Catalog::new())
}

#[test]
fn statements_that_cannot_be_aligned_are_judged_by_kind() {
    let (policy, path, catalog) = shop();
    // Texts that could not be lined up with the classification's statements: the whole
    // text in one piece, as `statement_texts` gives it then.
    let judged = |sql: &str| {
        let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
        let texts = vec![sql];
        assert_ne!(texts.len(), c.statements.len(), "{sql}: one statement");
        (commit_mid_query(&c, &texts, &policy, false), truncates_replicated(&c, &texts, &path, &policy), any_commits(&c, &texts, false))
    };
    let body = "CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END";
    let (refused, _, commits) = judged(&format!("UPDATE orders SET a = 1; {body}"));
    let message = refused.expect("the definition commits the sync update mid-query");
    for words in ["statement 2 of 2 (a ddl statement)", "after statement 1 wrote sync table shop.orders", "could not tell"] {
        assert!(message.contains(words), "{words:?} missing from {message}");
    }
    assert!(commits);
    let (refused, _, _) = judged(&format!("UPDATE orders SET a = 1; UPDATE orders SET a = 2; {body}; TRUNCATE notes"));
    assert!(refused.expect("refused").contains("statement 3 of 4 (a ddl statement)"), "the definition is named");
    let (_, truncate, _) = judged(&format!("INSERT INTO notes VALUES (1); {body}; TRUNCATE orders"));
    let message = truncate.expect("a TRUNCATE of a sync table");
    assert!(message.contains("`TRUNCATE orders`") && message.contains("shop.orders is replicated (mode sync"), "{message}");
    let (refused, truncate, _) = judged(&format!("SELECT 1; {body}"));
    assert!(refused.is_none() && truncate.is_none(), "no sync write");
    let (refused, truncate, _) = judged(&format!("INSERT INTO notes VALUES (1); {body}; TRUNCATE notes"));
    assert!(refused.is_none() && truncate.is_none(), "local tables only");
}

/// A stored program's definition ends with its body, as on the server: the statements
/// around it line up with their texts and are judged by them, a write after its `END`
/// included (issue 15).
#[test]
fn statements_around_a_stored_program_are_aligned() {
    let (policy, path, catalog) = shop();
    let body = "CREATE PROCEDURE p() BEGIN SELECT 1; IF 1 THEN SELECT 2; END IF; END";
    let lined_up = |sql: &str| {
        let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
        let texts: Vec<String> = statement_texts(sql, &path, &c).into_iter().map(str::to_owned).collect();
        assert_eq!(texts.len(), c.statements.len(), "{sql}: {texts:?}");
        (c, texts)
    };
    let (c, texts) = lined_up(&format!("{body}; UPDATE orders SET a = 1"));
    assert_eq!(texts, [body, "UPDATE orders SET a = 1"]);
    assert_eq!(c.statements[1].writes, [crate::classify::TableName::new("shop", "orders")]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert!(commit_mid_query(&c, &refs, &policy, false).is_none(), "the commit comes before the write");
    let sql = format!("UPDATE orders SET a = 1; {body}");
    let (c, texts) = lined_up(&sql);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let message = commit_mid_query(&c, &refs, &policy, false).expect("refused");
    assert!(message.contains("`CREATE PROCEDURE p() BEGIN SELECT 1; IF 1 THEN SELECT 2; END…` (statement 2 of 2)"), "{message}");
    let sql = format!("{body}; TRUNCATE orders");
    let (c, texts) = lined_up(&sql);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert!(truncates_replicated(&c, &refs, &path, &policy).expect("refused").contains("`TRUNCATE orders`"));
}

#[test]
fn texts_and_messages() {
    let (policy, path, catalog) = shop();
    let refused = |sql: &str| {
        let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
        let texts = statement_texts(sql, &path, &c);
        commit_mid_query(&c, &texts, &policy, false)
    };
    let message = refused("INSERT INTO orders VALUES (1); CREATE TABLE x (a INT)").expect("refused");
    for words in ["`CREATE TABLE x (a INT)` (statement 2 of 2)", "`INSERT INTO orders VALUES (1)` (statement 1)", "shop.orders"] {
        assert!(message.contains(words), "{words:?} missing from {message}");
    }
    assert!(refused("BEGIN; UPDATE orders SET a = 1; START TRANSACTION").is_some());
    assert!(refused("UPDATE orders SET a = 1; TRUNCATE notes").is_some());
    // UNLOCK TABLES commits only with tables locked: by the session, or earlier in the query.
    assert!(refused("UPDATE orders SET a = 1; UNLOCK TABLES").is_none(), "nothing locked: it commits nothing");
    let message = refused("LOCK TABLES orders WRITE; UPDATE orders SET a = 1; UNLOCK TABLES").expect("refused");
    assert!(message.contains("`UNLOCK TABLES` (statement 3 of 3)"), "{message}");
    assert!(refused("CREATE TABLE x (a INT); INSERT INTO orders VALUES (1)").is_none(), "the commit comes first");
    assert!(refused("INSERT INTO notes VALUES (1); CREATE TABLE x (a INT)").is_none(), "a local table");
    assert!(refused("INSERT INTO orders VALUES (1); CREATE TEMPORARY TABLE x (a INT)").is_none());
    assert!(refused("INSERT INTO orders VALUES (1); SELECT 'CREATE TABLE'").is_none());
    let truncates = |sql: &str| {
        let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
        truncates_replicated(&c, &statement_texts(sql, &path, &c), &path, &policy)
    };
    assert!(truncates("TRUNCATE TABLE orders").is_none(), "alone, it is carried");
    let message = truncates("SELECT 1; truncate orders").expect("refused");
    for words in ["`truncate orders` (statement 2 of 2)", "shop.orders is replicated (mode sync", "as a query of its own"] {
        assert!(message.contains(words), "{words:?} missing from {message}");
    }
    assert!(truncates("TRUNCATE notes; SELECT 1").is_none(), "a local table");
    let alone = |sql: &str| {
        let c = crate::classify::classify(Dialect::MySql, sql, &path, &catalog);
        truncate_alone(&c, &statement_texts(sql, &path, &c)).map(ToString::to_string)
    };
    assert_eq!(alone("/* why */ TRUNCATE TABLE orders").as_deref(), Some("shop.orders"));
    assert_eq!(alone("truncate other.notes;").as_deref(), Some("other.notes"));
    assert_eq!(alone("TRUNCATE orders; SELECT 1"), None);
    assert_eq!(alone("DELETE FROM orders"), None);
}

/// `BEGIN` and `START TRANSACTION` release the session's table locks (MariaDB's implicit
/// `UNLOCK TABLES`); `BEGIN NOT ATOMIC` is a compound statement and does not.
#[test]
fn the_lock_state_follows_lock_unlock_and_begin() {
    assert_eq!(lock_change(&["LOCK TABLES t WRITE"]), Some(true));
    assert_eq!(lock_change(&["LOCK TABLES t WRITE", "SELECT 1"]), Some(true));
    assert_eq!(lock_change(&["LOCK TABLES t WRITE", "UNLOCK TABLES"]), Some(false));
    for begin in ["BEGIN", "begin work", "START TRANSACTION", "/* x */ start transaction read only"] {
        assert_eq!(lock_change(&["LOCK TABLES t WRITE", begin]), Some(false), "{begin}");
        assert!(!locks_tables(&[begin], true), "{begin}");
    }
    assert_eq!(lock_change(&["BEGIN NOT ATOMIC SELECT 1; END"]), None);
    assert_eq!(lock_change(&["SELECT 1"]), None);
    assert!(locks_tables(&["SELECT 1"], true));
}
