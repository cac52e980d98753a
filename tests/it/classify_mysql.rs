//! MySQL classification checked against a real MariaDB server, which is the authority on
//! what a text means: the tables a statement is classified as writing must be exactly the
//! tables whose contents the server changed when it ran it (CHECKSUM TABLE before and
//! after); text is cut into statements as the server cuts it under `sql_mode`; and stored
//! routines are taken from the server's own `information_schema.ROUTINES`.

use std::collections::BTreeSet;
use std::process::Command;

use capgate::classify::mysql::{add_routines, Routine, SqlMode, ROUTINES_QUERY};
use capgate::classify::{classify, Catalog, Dialect, SearchPath};
use capgate::testbed::MariaDb;

use crate::support::scratch;

/// Runs `sql` with the mariadb command-line client as `capgate` over TCP (multi-statements
/// on, comments kept, LOCAL INFILE allowed); stdout in batch form, or the error text.
fn mariadb(server: &MariaDb, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "--host=127.0.0.1", "--user=capgate", "--comments", "--local-infile=1", "-N", "-B"])
        .arg(format!("--port={}", server.port()))
        .arg(format!("--database={db}"))
        .args(["-e", sql])
        .output()
        .map_err(|e| format!("cannot run the mariadb client: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn must(server: &MariaDb, db: &str, sql: &str) -> String {
    mariadb(server, db, sql).unwrap_or_else(|e| panic!("{sql}\n{e}"))
}

/// Undo the batch format's escapes (`\n`, `\t`, `\\`, `\0`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

const TABLES: &[&str] =
    &["cls.t1", "cls.t2", "cls.t3", "cls.orders", "cls.customers", "cls.audit_log", "cls.counters", "cls.invoices", "cls_archive.orders"];

const SCHEMA: &str = "
CREATE DATABASE cls; CREATE DATABASE cls_archive; USE cls;
CREATE TABLE t1 (id INT PRIMARY KEY, a INT, b INT);
CREATE TABLE t2 (id INT PRIMARY KEY, a INT, b INT);
CREATE TABLE t3 (id INT PRIMARY KEY, a INT);
INSERT INTO t1 VALUES (1,1,1),(2,2,2),(3,3,3),(4,4,4),(5,5,5);
INSERT INTO t2 SELECT * FROM t1; INSERT INTO t3 SELECT id, a FROM t1;
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT, total DECIMAL(10,2));
CREATE TABLE cls_archive.orders LIKE orders;
CREATE TABLE customers (id INT PRIMARY KEY, order_count INT NOT NULL DEFAULT 0);
INSERT INTO customers VALUES (1, 0), (2, 0);
CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, event VARCHAR(40));
CREATE TABLE counters (name VARCHAR(20) PRIMARY KEY, n INT); INSERT INTO counters VALUES ('invoice', 0);
CREATE TABLE invoices (no INT);
";

/// Stored routines as an application would create them (the client's DELIMITER keeps each
/// body in one statement).
const ROUTINES: &str = "
DELIMITER //
CREATE PROCEDURE place_order(IN p_customer INT, IN p_total DECIMAL(10,2))
BEGIN
  INSERT INTO orders (customer_id, total) VALUES (p_customer, p_total);
  UPDATE customers SET order_count = order_count + 1 WHERE id = p_customer;
END//
CREATE PROCEDURE log_event(IN p_event VARCHAR(40)) INSERT INTO audit_log (event) VALUES (p_event)//
CREATE PROCEDURE checkout(IN p_customer INT)
BEGIN
  DECLARE n INT DEFAULT 0;
  IF p_customer > 0 THEN
    CALL place_order(p_customer, 5);
  END IF;
  CALL log_event('checkout');
END//
CREATE FUNCTION next_invoice_no() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA
BEGIN
  UPDATE counters SET n = LAST_INSERT_ID(n + 1) WHERE name = 'invoice';
  RETURN LAST_INSERT_ID();
END//
CREATE FUNCTION order_total(p_id INT) RETURNS DECIMAL(10,2) DETERMINISTIC READS SQL DATA
  RETURN (SELECT COALESCE(SUM(total), 0) FROM orders WHERE customer_id = p_id)//
CREATE PROCEDURE run_sql(IN p_sql TEXT)
BEGIN
  SET @s = p_sql; PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
END//
DELIMITER ;
";

/// The routines of `cls` as the server describes them.
fn routines(server: &MariaDb) -> Vec<Routine> {
    let rows = must(server, "cls", &format!("{ROUTINES_QUERY} WHERE ROUTINE_SCHEMA = 'cls'"));
    rows.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "{line}");
            Routine {
                schema: unescape(f[0]),
                name: unescape(f[1]),
                deterministic: f[2] == "YES",
                body: (f[3] != "NULL").then(|| unescape(f[3])),
                sql_mode: unescape(f[4]),
            }
        })
        .collect()
}

/// Every table's checksum, by name.
fn checksums(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(t, _)| TABLES.contains(t))
        .map(|(t, c)| (t.to_owned(), c.to_owned()))
        .collect()
}

#[test]
fn written_tables_are_the_tables_the_server_changed() {
    let server = MariaDb::shared();
    must(server, "mysql", "DROP DATABASE IF EXISTS cls; DROP DATABASE IF EXISTS cls_archive");
    must(server, "mysql", SCHEMA);
    let script = scratch("classify-mysql").join("routines.sql");
    std::fs::write(&script, ROUTINES).unwrap();
    must(server, "cls", &format!("source {}", script.display()));
    let csv = scratch("classify-mysql").join("t3.csv");
    std::fs::write(&csv, "200,1\n201,2\n").unwrap();

    let mut catalog = Catalog::new();
    let found = routines(server);
    assert_eq!(found.len(), 6, "{found:?}");
    add_routines(&mut catalog, &found);
    let path = SearchPath::database(Some("cls"));

    let statements = [
        "UPDATE t1, t2 SET t2.a = t1.a + 1 WHERE t1.id = t2.id",
        "UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.b = t2.b + 1",
        "UPDATE t1 AS x JOIN t1 AS y ON x.id = y.id + 1 SET x.a = y.a + 10",
        "UPDATE LOW_PRIORITY IGNORE t1 SET a = a + 1 WHERE id = 5",
        "DELETE a FROM t3 a JOIN t1 b ON a.id = b.id WHERE b.id = 1",
        "DELETE FROM t3 USING t3 JOIN t2 ON t3.id = t2.id WHERE t2.id = 2",
        "DELETE t1, t2 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t1.id = 3",
        "DELETE QUICK IGNORE FROM t3 WHERE id = 3",
        "INSERT INTO t3 (id, a) SELECT id + 100, a FROM t1 ON DUPLICATE KEY UPDATE a = VALUES(a)",
        "REPLACE INTO t2 (id, a, b) SELECT id, 0, 0 FROM t1 WHERE id = 4",
        &format!("LOAD DATA LOCAL INFILE '{}' INTO TABLE t3 FIELDS TERMINATED BY ','", csv.display()),
        "CALL place_order(1, 10)",
        "CALL checkout(2)",
        "INSERT INTO cls_archive.orders SELECT * FROM orders",
        "SELECT next_invoice_no()",
        "INSERT INTO invoices (no) VALUES (next_invoice_no())",
        "SELECT order_total(1)",
        "SELECT * FROM t1 JOIN t2 USING (id) FOR UPDATE",
        "DO RELEASE_LOCK('nothing')",
        "TRUNCATE cls_archive.orders",
    ];
    let list = TABLES.join(", ");
    for sql in statements {
        let c = classify(Dialect::MySql, sql, &path, &catalog);
        assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
        assert!(c.unknown_reason().is_none(), "{sql}: {c:?}");
        let classified: BTreeSet<String> = c.statements[0].writes.iter().map(ToString::to_string).collect();
        let out = must(server, "cls", &format!("CHECKSUM TABLE {list}; {sql}; CHECKSUM TABLE {list}"));
        let sums = checksums(&out);
        assert_eq!(sums.len(), 2 * TABLES.len(), "{sql}\n{out}");
        let (before, after) = sums.split_at(TABLES.len());
        let changed: BTreeSet<String> = before.iter().zip(after).filter(|(b, a)| b.1 != a.1).map(|(b, _)| b.0.clone()).collect();
        assert_eq!(classified, changed, "{sql}: classified as writing {classified:?}, the server changed {changed:?}");
    }

    // What cannot be told stays unknown: the procedure runs dynamic SQL.
    let c = classify(Dialect::MySql, "CALL run_sql('DELETE FROM t1')", &path, &catalog);
    assert!(c.unknown_reason().is_some_and(|r| r.contains("cls.run_sql()")), "{c:?}");
}

/// The server's sql_mode decides where a statement ends and whether `"…"` is a name; the
/// classifier, given the same mode, must read the text as the server ran it.
#[test]
fn text_is_read_as_the_server_reads_it_under_sql_mode() {
    let server = MariaDb::shared();
    must(
        server,
        "mysql",
        "DROP DATABASE IF EXISTS cls_lex; CREATE DATABASE cls_lex; USE cls_lex;
         CREATE TABLE log (v TEXT); CREATE TABLE accounts (id INT); CREATE TABLE ansi (v INT); INSERT INTO ansi VALUES (1)",
    );
    let text = r"INSERT INTO log VALUES ('x\'); DELETE FROM accounts; SELECT 1 -- ')";
    let kinds = |mode: SqlMode| -> Vec<(String, Vec<String>)> {
        let path = SearchPath::database(Some("cls_lex")).with_sql_mode(mode);
        let c = classify(Dialect::MySql, text, &path, &Catalog::new());
        c.statements.iter().map(|s| (s.kind.name().to_owned(), s.writes.iter().map(ToString::to_string).collect())).collect()
    };

    // Backslash escapes on (the default): the server stores one string and deletes nothing.
    must(server, "cls_lex", "INSERT INTO accounts VALUES (1)");
    must(server, "cls_lex", &format!("SET sql_mode = ''; {text}"));
    assert_eq!(must(server, "cls_lex", "SELECT COUNT(*) FROM accounts").trim(), "1");
    assert_eq!(must(server, "cls_lex", "SELECT v FROM log").trim(), "x'); DELETE FROM accounts; SELECT 1 --");
    assert_eq!(kinds(SqlMode::default()), [("write".to_owned(), vec!["cls_lex.log".to_owned()])]);

    // NO_BACKSLASH_ESCAPES: three statements, and the DELETE ran.
    must(server, "cls_lex", &format!("SET sql_mode = 'NO_BACKSLASH_ESCAPES'; {text}"));
    assert_eq!(must(server, "cls_lex", "SELECT COUNT(*) FROM accounts").trim(), "0");
    let mode = SqlMode::from_sql_mode(must(server, "cls_lex", "SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT @@sql_mode").trim());
    assert_eq!(
        kinds(mode),
        [
            ("write".to_owned(), vec!["cls_lex.log".to_owned()]),
            ("write".to_owned(), vec!["cls_lex.accounts".to_owned()]),
            ("read".to_owned(), vec![]),
        ]
    );

    // ANSI: "ansi" names the table (the server updates it); without it the server refuses.
    let update = r#"UPDATE "ansi" SET v = v + 1"#;
    must(server, "cls_lex", &format!("SET sql_mode = 'ANSI'; {update}"));
    assert_eq!(must(server, "cls_lex", "SELECT v FROM ansi").trim(), "2");
    let reported = must(server, "cls_lex", "SET sql_mode = 'ANSI'; SELECT @@sql_mode");
    let mode = SqlMode::from_sql_mode(reported.trim());
    assert!(mode.ansi_quotes, "{reported}");
    let c = classify(Dialect::MySql, update, &SearchPath::database(Some("cls_lex")).with_sql_mode(mode), &Catalog::new());
    assert_eq!(c.writes().iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["cls_lex.ansi"]);
    let refused = mariadb(server, "cls_lex", &format!("SET sql_mode = ''; {update}")).expect_err("a string is not a table");
    assert!(refused.contains("1064"), "{refused}");
}
