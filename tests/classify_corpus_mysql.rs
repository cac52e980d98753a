//! A corpus of real-world MySQL and MariaDB statements with their expected classification:
//! what ORMs send (Django, Rails, Hibernate, Laravel/Eloquent, SQLAlchemy, Prisma), sysbench
//! (prepared and emulated), WordPress, mysqldump; backticks, database-qualified names,
//! ON DUPLICATE KEY UPDATE, REPLACE, multi-table UPDATE/DELETE, INSERT … SELECT, LOAD DATA,
//! CALL of stored procedures, prepared-able transaction control and XA, DDL, SET, USE; and
//! what must come out `unknown`. Plus the `sql_mode` flags that change how text is read.
//!
//! The records are in tests/sql/classify_mysql.txt: `kind | writes | reads |
//! nondeterministic | sql` (lists comma-separated, `-` for none), classified with `shop` as
//! the current database and the stored routines in [`catalog`].

#[path = "common/corpus.rs"]
mod corpus;

use capgate::classify::mysql::{add_routines, Routine, SqlMode};
use capgate::classify::{classify, Catalog, Dialect, Kind, SearchPath, SessionChange, TableName, TxControl};
use corpus::names;

const CORPUS: &str = include_str!("sql/classify_mysql.txt");

/// The stored routines of `shop`, as `information_schema.ROUTINES` lists them.
fn routines() -> Vec<Routine> {
    let r = |name: &str, deterministic: bool, body: Option<&str>| Routine {
        schema: "shop".into(),
        name: name.into(),
        deterministic,
        body: body.map(Into::into),
        sql_mode: "STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION".into(),
    };
    vec![
        r(
            "place_order",
            false,
            Some("BEGIN INSERT INTO orders (customer_id, total) VALUES (p_customer, p_total); UPDATE customers SET order_count = order_count + 1 WHERE id = p_customer; END"),
        ),
        r(
            "archive_orders",
            false,
            Some("BEGIN DECLARE n INT DEFAULT 0; IF p_days > 0 THEN INSERT INTO archive.orders SELECT * FROM orders WHERE created_at < NOW() - INTERVAL p_days DAY; DELETE FROM orders WHERE created_at < NOW() - INTERVAL p_days DAY; END IF; END"),
        ),
        // Calls two others; listed before them (order does not matter).
        r("checkout", false, Some("BEGIN CALL place_order(p_customer, 0); CALL log_event('checkout'); END")),
        r("log_event", false, Some("INSERT INTO audit_log (event, at) VALUES (p_event, NOW())")),
        r(
            "rebuild_tree",
            false,
            Some("BEGIN DECLARE CONTINUE HANDLER FOR NOT FOUND SET @done = 1; INSERT INTO tree (parent) VALUES (p_id) ON DUPLICATE KEY UPDATE parent = p_id; IF p_id > 1 THEN CALL rebuild_tree(p_id - 1); END IF; END"),
        ),
        r("run_sql", false, Some("BEGIN SET @s = p_sql; PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st; END")),
        r("order_total", true, Some("RETURN (SELECT SUM(total) FROM orders WHERE customer_id = p_id)")),
        r(
            "next_invoice_no",
            false,
            Some("BEGIN UPDATE counters SET n = LAST_INSERT_ID(n + 1) WHERE name = 'invoice'; RETURN LAST_INSERT_ID(); END"),
        ),
        r("report_only", true, Some("BEGIN SELECT customer_id, SUM(total) FROM orders GROUP BY customer_id FOR UPDATE; END")),
        r("hidden", false, None),
    ]
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    add_routines(&mut c, &routines());
    c
}

fn shop() -> SearchPath {
    SearchPath::database(Some("shop"))
}

#[test]
fn corpus() {
    let catalog = catalog();
    let path = shop();
    corpus::check(CORPUS, |sql| classify(Dialect::MySql, sql, &path, &catalog));
}

fn one(sql: &str, path: &SearchPath) -> capgate::classify::StatementClass {
    let c = classify(Dialect::MySql, sql, path, &catalog());
    assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
    c.statements.into_iter().next().unwrap_or_else(|| panic!("{sql}"))
}

/// The same text is cut into other statements under NO_BACKSLASH_ESCAPES, and `"…"` names a
/// table under ANSI_QUOTES: the classifier reads it as the server does.
#[test]
fn sql_mode_changes_what_the_text_says() {
    let sql = r"INSERT INTO log VALUES ('C:\'); DELETE FROM accounts; SELECT 1 -- ')";
    let kinds = |mode: SqlMode| -> Vec<(String, Vec<String>)> {
        classify(Dialect::MySql, sql, &shop().with_sql_mode(mode), &catalog())
            .statements
            .iter()
            .map(|s| (s.kind.name().to_owned(), names(&s.writes)))
            .collect()
    };
    // Backslash escapes (the default): one INSERT whose string runs to the last quote.
    assert_eq!(kinds(SqlMode::default()), [("write".to_owned(), vec!["shop.log".to_owned()])]);
    let plain = SqlMode { no_backslash_escapes: true, ..SqlMode::default() };
    assert_eq!(
        kinds(plain),
        [
            ("write".to_owned(), vec!["shop.log".to_owned()]),
            ("write".to_owned(), vec!["shop.accounts".to_owned()]),
            ("read".to_owned(), vec![]),
        ]
    );

    let ansi = SqlMode::from_sql_mode("ANSI");
    let s = one(r#"UPDATE "orders" SET "paid" = 1 WHERE "id" = 7"#, &shop().with_sql_mode(ansi));
    assert_eq!((s.kind, names(&s.writes)), (Kind::Write, vec!["shop.orders".to_owned()]));
    let s = one(r#"SELECT * FROM "Cart Items" JOIN `Orders` USING (id)"#, &shop().with_sql_mode(ansi));
    assert_eq!(names(&s.reads), [r#"shop."Cart Items""#, r#"shop."Orders""#]);
    // Without ANSI_QUOTES `"…"` is a string.
    let s = one(r#"SELECT "orders" FROM t"#, &shop());
    assert_eq!(names(&s.reads), ["shop.t"]);
    // Both at once, and the corpus under ANSI_QUOTES where it has no double quotes.
    let both = SqlMode { ansi_quotes: true, no_backslash_escapes: true };
    let s = one(r#"INSERT INTO "t" VALUES ('a\')"#, &shop().with_sql_mode(both));
    assert_eq!(names(&s.writes), ["shop.t"]);
    for [kind, writes, _, _, sql] in corpus::records(CORPUS).filter(|r| !r[4].contains('"') && !r[4].contains('\\')) {
        let c = classify(Dialect::MySql, sql, &shop().with_sql_mode(both), &catalog());
        let mut got = names(&c.statements[0].writes);
        let mut want = corpus::list(writes);
        got.sort();
        want.sort();
        assert_eq!((c.statements[0].kind.name(), got), (kind, want), "{sql}");
    }
}

/// The current database is what unqualified names resolve to; without one they cannot be
/// resolved (the server answers error 1046), qualified ones still are.
#[test]
fn current_database_resolves_unqualified_names() {
    let s = one("UPDATE orders SET paid = 1", &SearchPath::database(Some("Shop_EU")));
    assert_eq!(s.writes, [TableName::new("Shop_EU", "orders")]);
    let none = SearchPath::database(None);
    let s = one("UPDATE orders SET paid = 1", &none);
    let Kind::Unknown(reason) = &s.kind else { panic!("{s:?}") };
    assert!(reason.contains("no database selected") && reason.contains("orders"), "{reason}");
    let s = one("UPDATE shop.orders JOIN shop.customers c ON c.id = orders.customer_id SET orders.paid = 1", &none);
    assert_eq!((s.kind, names(&s.writes), names(&s.reads)), (Kind::Write, vec!["shop.orders".into()], vec!["shop.customers".into()]));
    // USE reports the new database for the front end to follow.
    assert_eq!(
        one("USE `Shop_EU`", &none).kind,
        Kind::Session(SessionChange::SearchPath { schemas: vec!["Shop_EU".into()], local: false })
    );
}

/// On a server with `lower_case_table_names` set, names are the server's lower-case ones.
#[test]
fn lower_case_table_names() {
    let mut catalog = catalog();
    catalog.set_table_names_lower_case(true);
    let c = classify(
        Dialect::MySql,
        "UPDATE Orders o JOIN `Shop2`.`Customers` c ON c.id = o.cid SET o.x = 1",
        &SearchPath::database(Some("Shop")),
        &catalog,
    );
    let s = &c.statements[0];
    assert_eq!((names(&s.writes), names(&s.reads)), (vec!["shop.orders".to_owned()], vec!["shop2.customers".to_owned()]));
    let s = one("UPDATE Orders SET x = 1", &shop());
    assert_eq!(names(&s.writes), [r#"shop."Orders""#]);
}

/// The transaction control a front end tracks, with what it needs of each: savepoint names
/// and XA ids.
#[test]
fn transaction_control_details() {
    let tx = |sql: &str| one(sql, &shop()).kind;
    assert_eq!(tx("BEGIN"), Kind::Transaction(TxControl::Begin));
    assert_eq!(tx("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"), Kind::Transaction(TxControl::Begin));
    assert_eq!(tx("COMMIT AND NO CHAIN NO RELEASE"), Kind::Transaction(TxControl::Commit));
    assert_eq!(tx("SAVEPOINT `Sp 1`"), Kind::Transaction(TxControl::Savepoint("Sp 1".into())));
    assert_eq!(tx("ROLLBACK WORK TO SAVEPOINT sp2"), Kind::Transaction(TxControl::RollbackTo("sp2".into())));
    assert_eq!(tx("XA START 'g1'"), Kind::Transaction(TxControl::XaStart("'g1'".into())));
    assert_eq!(tx("xa begin 'g1','b1'"), Kind::Transaction(TxControl::XaStart("'g1','b1'".into())));
    assert_eq!(tx("XA END 'g1'"), Kind::Transaction(TxControl::XaEnd("'g1'".into())));
    assert_eq!(tx("XA PREPARE X'6731',X'',1"), Kind::Transaction(TxControl::PrepareTransaction("X'6731',X'',1".into())));
    assert_eq!(tx("XA COMMIT 'it''s'"), Kind::Transaction(TxControl::CommitPrepared("'it''s'".into())));
    assert_eq!(tx("XA COMMIT 'g1' ONE PHASE"), Kind::Transaction(TxControl::Commit));
    assert_eq!(tx("XA ROLLBACK 'g1'"), Kind::Transaction(TxControl::RollbackPrepared("'g1'".into())));
    assert!(matches!(tx("XA START"), Kind::Unknown(_)));
}

/// A multi-statement COM_QUERY: each statement classified, a stored program's body kept whole.
#[test]
fn several_statements_and_compound_bodies() {
    let c = classify(
        Dialect::MySql,
        "SET autocommit=0; UPDATE t1, t2 SET t2.a = t1.a WHERE t1.id = t2.id; LOAD DATA LOCAL INFILE 'f' INTO TABLE t3; XA START 'g'; COMMIT",
        &shop(),
        &catalog(),
    );
    let got: Vec<(&str, Vec<String>)> = c.statements.iter().map(|s| (s.kind.name(), names(&s.writes))).collect();
    assert_eq!(
        got,
        [
            ("session", vec![]),
            ("write", vec!["shop.t2".to_owned()]),
            ("write", vec!["shop.t3".to_owned()]),
            ("transaction", vec![]),
            ("transaction", vec![]),
        ]
    );
    let c = classify(
        Dialect::MySql,
        "CREATE TRIGGER audit AFTER UPDATE ON accounts FOR EACH ROW BEGIN INSERT INTO audit VALUES (OLD.id); IF NEW.x > 0 THEN DELETE FROM q; END IF; END",
        &shop(),
        &catalog(),
    );
    assert_eq!(c.statements.len(), 1, "{c:?}");
    assert_eq!((c.statements[0].kind.name(), names(&c.statements[0].writes)), ("ddl", vec!["shop.accounts".to_owned()]));
    // A table whose columns are named `event` and `begin` is no stored program: the
    // statements after it are still classified (XA makes sqlparser reject the whole text).
    let c = classify(
        Dialect::MySql,
        "CREATE TABLE events (event VARCHAR(10), begin DATETIME); XA RECOVER; DELETE FROM accounts",
        &shop(),
        &catalog(),
    );
    let got: Vec<(&str, Vec<String>)> = c.statements.iter().map(|s| (s.kind.name(), names(&s.writes))).collect();
    assert_eq!(got, [("ddl", vec!["shop.events".to_owned()]), ("utility", vec![]), ("write", vec!["shop.accounts".to_owned()])]);
    let c = classify(
        Dialect::MySql,
        "CREATE DEFINER=`root`@`localhost` PROCEDURE p() BEGIN DELETE FROM a; DELETE FROM b; END",
        &shop(),
        &catalog(),
    );
    assert_eq!(c.statements.len(), 1, "{c:?}");
    // What follows a stored program's END runs as statements of their own on the server:
    // classified as such, whatever the body's shape (issue 15).
    for definition in [
        "CREATE PROCEDURE p() BEGIN DELETE FROM a; IF x THEN DELETE FROM b; END IF; END",
        "CREATE PROCEDURE p() lbl: WHILE 1 DO DELETE FROM a; END WHILE lbl",
        "CREATE TRIGGER audit AFTER UPDATE ON accounts FOR EACH ROW BEGIN INSERT INTO audit VALUES (OLD.id); END",
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO BEGIN DELETE FROM sessions; END",
        "CREATE FUNCTION f() RETURNS INT RETURN 1",
        "BEGIN NOT ATOMIC DELETE FROM a; END",
    ] {
        let c = classify(Dialect::MySql, &format!("{definition}; UPDATE accounts SET x = 1"), &shop(), &catalog());
        let got: Vec<(&str, Vec<String>)> = c.statements.iter().map(|s| (s.kind.name(), names(&s.writes))).collect();
        assert_eq!(got.len(), 2, "{definition}: {got:?}");
        assert_eq!(got[1], ("write", vec!["shop.accounts".to_owned()]), "{definition}");
    }
}

/// What an unknown CALL or function says, so a DBA knows what to put in the policy.
#[test]
fn unknown_routines_say_what_to_do() {
    let reason = |sql: &str| match one(sql, &shop()).kind {
        Kind::Unknown(r) => r,
        k => panic!("{sql}: {k:?}"),
    };
    let r = reason("CALL nosuch(1)");
    assert!(r.contains("shop.nosuch()") && r.contains("[[function]]"), "{r}");
    let r = reason("CALL run_sql('x')");
    assert!(r.contains("procedure shop.run_sql()") && r.contains("may write any table"), "{r}");
    let r = reason("SELECT my_func(1)");
    assert!(r.contains("my_func()") && r.contains("not a known built-in"), "{r}");
    // A complete catalog (every routine of the primary loaded): unlisted names do not exist.
    let mut complete = catalog();
    complete.set_complete(true);
    let c = classify(Dialect::MySql, "SELECT my_func(1)", &shop(), &complete);
    assert_eq!(c.statements[0].kind, Kind::Read);
}

/// Arbitrary input never panics in any sql_mode: random bytes, random MySQL tokens,
/// mutations of the corpus, deep nesting. Bounded and seeded; the seed is printed.
#[test]
fn never_panics_on_arbitrary_input() {
    const WORDS: &[&str] = &[
        "SELECT",
        "INSERT",
        "REPLACE",
        "INTO",
        "UPDATE",
        "DELETE",
        "FROM",
        "USING",
        "JOIN",
        "SET",
        "VALUES",
        "ON DUPLICATE KEY UPDATE",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "`",
        "\\",
        "?",
        "t",
        "`T`",
        "db.t",
        "a",
        "LOAD DATA",
        "INFILE",
        "INTO TABLE",
        "XA",
        "START",
        "COMMIT",
        "CALL",
        "p(",
        "DO",
        "BEGIN",
        "END",
        "IF",
        "THEN",
        "LOCK IN SHARE MODE",
        "INTO OUTFILE",
        "/*!",
        "*/",
        "#",
        "-- ",
        "CREATE",
        "TRIGGER",
        "PROCEDURE",
        "ON",
        "NEXTVAL(",
        "LIMIT 1",
        "X'",
        "@",
        "@@",
    ];
    let catalog = catalog();
    let modes = [SqlMode::default(), SqlMode { ansi_quotes: true, no_backslash_escapes: true }];
    for sql in corpus::arbitrary_inputs(0x3c1a_55e5_a11d, WORDS, CORPUS, 1200) {
        for mode in modes {
            let _ = classify(Dialect::MySql, &sql, &shop().with_sql_mode(mode), &catalog);
        }
    }
}
