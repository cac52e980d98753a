//! The admin SQL commands on the MySQL port, as an operator types them into the mariadb
//! client and as a program reads them with mysql_async: answered by capgate (never by
//! MariaDB) with result sets naming the replica and the policy's tables; inside an open
//! transaction the transaction stays open (a later ROLLBACK undoes the write before it);
//! a user not in `admin_users` gets ERR 1227; the prepared form (COM_STMT_PREPARE or SQL
//! `PREPARE … FROM '…'`) is refused with 1295, a comment after a command is a comment, a
//! multi-statement query holding one with 1235 before any of it runs; the session goes on
//! after each.

use std::time::{Duration, Instant};

use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};

use super::async_ship::{converged, link, servers, setup_both, TURN};
use super::raw::{Pkt, Raw};
use super::support::{connect, error_code, mariadb, primary, MyProxy};

/// The mariadb client's `--batch` output of `sql` as `user` (in `db`): (header, rows), or
/// its error output.
fn table(port: u16, user: &str, db: &str, sql: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let out = mariadb(port, &["-u", user, "-D", db, "--batch", "-e", sql], "");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next().unwrap_or_default();
    Ok((header, lines.collect()))
}

/// The value of `column` in `row`.
fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header.iter().position(|h| h == column).unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    &row[i]
}

fn names(header: &[String]) -> Vec<&str> {
    header.iter().map(String::as_str).collect()
}

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"admdb.acct\"\nmode = \"async\"\non_conflict = \"skip\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_answer_with_result_sets_in_the_mariadb_client_and_mysql_async() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS admdb; CREATE DATABASE admdb; \
         CREATE TABLE admdb.acct (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE admdb.scratch (id INT PRIMARY KEY)",
    );
    let link = link();
    let dir = crate::support::scratch("mysql-admin-sql");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nconflict_log = \"conflicts.jsonl\"\n\
         admin_users = [\"capgate\"]\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\nheartbeat_interval = \"100ms\"\n",
        servers().0.port(),
        link.addr()
    );
    let p = MyProxy::start_config(&text, &dir);
    let port = p.port();

    // SHOW CAPGATE REPLICAS: the replica by name, healthy, shipping.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (header, rows) = loop {
        let (header, rows) = table(port, "capgate", "admdb", "SHOW CAPGATE REPLICAS").expect("SHOW CAPGATE REPLICAS");
        if rows.len() == 1 && cell(&header, &rows[0], "state") == "healthy" && cell(&header, &rows[0], "shipping") == "running" {
            break (header, rows);
        }
        assert!(Instant::now() < deadline, "replica never healthy and shipping: {header:?} {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        names(&header),
        [
            "name",
            "state",
            "state_for_s",
            "rtt_ms",
            "lag_s",
            "pending_rows",
            "drain_rate",
            "applied_seq",
            "conflicts",
            "shipping",
            "problems",
            "last_error"
        ]
    );
    assert_eq!(cell(&header, &rows[0], "name"), "east");
    assert!(cell(&header, &rows[0], "rtt_ms").parse::<f64>().expect("rtt") > 0.0, "{rows:?}");
    assert_eq!(cell(&header, &rows[0], "last_error"), "NULL", "a NULL reaches the client as NULL");

    let (header, rows) = table(port, "capgate", "admdb", "show capgate status;").expect("STATUS");
    assert_eq!(
        names(&header),
        [
            "site",
            "primary",
            "primary_state",
            "policy_version",
            "client_connections",
            "replicas",
            "replicas_available",
            "unknown_relayed",
            "unknown_refused"
        ]
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(cell(&header, &rows[0], "site"), "west");
    assert!(cell(&header, &rows[0], "primary").ends_with(&servers().0.port().to_string()), "{rows:?}");
    assert_eq!((cell(&header, &rows[0], "replicas"), cell(&header, &rows[0], "replicas_available")), ("1", "1"));

    // Rows through capgate reach the replica; LAG names the replica and the policy's table.
    let mut c = connect(&p.url("capgate", None, "admdb")).await;
    c.query_drop("INSERT INTO acct VALUES (1, 'one'), (2, 'two')").await.expect("insert");
    converged("SELECT id, v FROM admdb.acct ORDER BY id").await;
    let (header, rows) = table(port, "capgate", "admdb", "SHOW CAPGATE LAG").expect("LAG");
    assert_eq!(names(&header), ["replica", "table", "mode", "lag_s", "pending_rows"]);
    let acct = rows.iter().find(|r| cell(&header, r, "table") == "admdb.acct").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((cell(&header, acct, "replica"), cell(&header, acct, "mode")), ("east", "async"));

    let (header, rows) = table(port, "capgate", "admdb", "SHOW CAPGATE POLICY").expect("POLICY");
    assert_eq!(names(&header), ["position", "match", "mode", "options", "line", "version"]);
    let cells: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (cell(&header, r, "match"), cell(&header, r, "mode"), cell(&header, r, "options"))).collect();
    assert_eq!(cells[0], ("admdb.acct", "async", "on_conflict=skip"), "{rows:?}");
    assert_eq!((cells[1].0, cells[1].1), ("(default)", "local"), "{rows:?}");

    // A conflict: the replica's row changed behind capgate's back, then updated through it.
    servers().1.sql("UPDATE admdb.acct SET v = 'edited' WHERE id = 1").expect("replica edit");
    c.query_drop("UPDATE acct SET v = 'uno' WHERE id = 1").await.expect("update");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (header, rows) = loop {
        let (header, rows) = table(port, "capgate", "admdb", "SHOW CAPGATE CONFLICTS LIMIT 5").expect("CONFLICTS");
        if !rows.is_empty() {
            break (header, rows);
        }
        assert!(Instant::now() < deadline, "the conflict never showed: {header:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(names(&header), ["replica", "id", "at", "origin", "tables", "kind", "error", "resolution", "resolved_at", "details"]);
    assert_eq!(cell(&header, &rows[0], "replica"), "east");
    assert_eq!(cell(&header, &rows[0], "tables"), "admdb.acct");
    assert_eq!((cell(&header, &rows[0], "kind"), cell(&header, &rows[0], "resolution")), ("update_differs", "skipped"));
    assert!(cell(&header, &rows[0], "details").contains("edited"), "the replica's row is shown: {rows:?}");

    // CAPGATE VERIFY reads a bare name in the current database, as MySQL does: the row the
    // conflict left different is found; a qualified name works from anywhere.
    let (header, rows) = table(port, "capgate", "admdb", "CAPGATE VERIFY acct").expect("VERIFY");
    assert_eq!(names(&header), ["replica", "table", "result", "rows_primary", "rows_replica", "rows_differing", "detail"]);
    assert_eq!((cell(&header, &rows[0], "replica"), cell(&header, &rows[0], "table")), ("east", "admdb.acct"));
    assert_eq!((cell(&header, &rows[0], "result"), cell(&header, &rows[0], "rows_differing")), ("diverged", "1"), "{rows:?}");
    let (header, rows) = table(port, "capgate", "mysql", "CAPGATE VERIFY admdb.scratch").expect("VERIFY qualified");
    assert_eq!(cell(&header, &rows[0], "result"), "equal", "{rows:?}");

    let (_, rows) = table(port, "capgate", "admdb", "SHOW CAPGATE HELP").expect("HELP");
    assert!(rows.iter().any(|r| r[0] == "SHOW CAPGATE CONFLICTS [LIMIT n]"), "{rows:?}");
    let (header, rows) = table(port, "capgate", "admdb", "CAPGATE RELOAD").expect("RELOAD");
    assert_eq!(cell(&header, &rows[0], "result"), "reloaded");

    // The client's table form: numbers right-aligned, as for any result set.
    let out = mariadb(port, &["-u", "capgate", "-t", "-e", "SHOW CAPGATE REPLICAS"], "");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && shown.contains("| name ") && shown.contains("| east "), "{shown}");

    // Inside an open transaction, one mariadb session: every command answers, the
    // transaction stays open, and the ROLLBACK undoes the insert before them.
    let script = "BEGIN;\nINSERT INTO scratch VALUES (7);\nSHOW CAPGATE STATUS;\nSHOW CAPGATE REPLICAS;\nSHOW CAPGATE LAG;\n\
        SHOW CAPGATE POLICY;\nSHOW CAPGATE CONFLICTS;\nSHOW CAPGATE HELP;\n\
        SELECT @@in_transaction AS open_tx, COUNT(*) AS n FROM scratch;\nROLLBACK;\nSELECT COUNT(*) AS after_rollback FROM scratch;\n";
    let out = mariadb(port, &["-u", "capgate", "-D", "admdb", "--batch"], script);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("open_tx\tn\n1\t1\n"), "the transaction did not stay open:\n{shown}");
    assert!(shown.contains("after_rollback\n0\n"), "the ROLLBACK did not undo the insert:\n{shown}");

    // mysql_async: typed columns, NULLs, and the same transaction behaviour.
    let mut result = c.query_iter("SHOW CAPGATE REPLICAS").await.expect("REPLICAS");
    let columns: Vec<(String, ColumnType)> =
        result.columns().expect("columns").iter().map(|c| (c.name_str().into_owned(), c.column_type())).collect();
    let rows: Vec<Row> = result.collect().await.expect("rows");
    assert_eq!(columns[0], ("name".to_owned(), ColumnType::MYSQL_TYPE_VAR_STRING));
    assert_eq!(columns[3], ("rtt_ms".to_owned(), ColumnType::MYSQL_TYPE_DOUBLE));
    assert_eq!(columns[5], ("pending_rows".to_owned(), ColumnType::MYSQL_TYPE_LONGLONG));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<String, _>("name").as_deref(), Some("east"));
    assert!(rows[0].get::<f64, _>("rtt_ms").expect("rtt") > 0.0);
    assert_eq!(rows[0].as_ref(11), Some(&Value::NULL), "last_error");

    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("INSERT INTO scratch VALUES (8)").await.expect("insert");
    for command in ["SHOW CAPGATE STATUS", "SHOW CAPGATE LAG", "SHOW CAPGATE POLICY", "SHOW CAPGATE CONFLICTS", "CAPGATE VERIFY scratch"] {
        let rows: Vec<Row> = c.query(command).await.unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(!rows.is_empty(), "{command}: no rows");
        assert_eq!(c.query_first::<u8, _>("SELECT @@in_transaction").await.expect("in tx"), Some(1), "after {command}");
    }
    let tables: Vec<(String, String)> = c
        .query("SHOW CAPGATE LAG")
        .await
        .map(|rows: Vec<Row>| {
            rows.into_iter()
                .map(|r| (r.get::<String, _>("replica").unwrap_or_default(), r.get::<String, _>("table").unwrap_or_default()))
                .collect()
        })
        .expect("LAG");
    assert!(tables.contains(&("east".to_owned(), "admdb.acct".to_owned())), "{tables:?}");
    c.query_drop("ROLLBACK").await.expect("rollback");
    assert_eq!(c.query_first::<u32, _>("SELECT COUNT(*) FROM scratch").await.expect("count"), Some(0), "ROLLBACK undid the insert");
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_are_refused_clearly_and_the_session_goes_on() {
    let p = MyProxy::start("admin_users = [\"capgate\"]\n");
    let port = p.port();
    primary().sql("CREATE TABLE IF NOT EXISTS other.t (id INT PRIMARY KEY)").expect("table");

    // A user not in admin_users: ERR 1227, naming admin_users; the next statement runs.
    let out = mariadb(port, &["-u", "other", "--force", "--batch"], "SHOW CAPGATE STATUS;\nSELECT 'still here' AS s;\n");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("ERROR 1227 (42000)") && stderr.contains("admin_users"), "{stderr}");
    assert!(stdout.contains("still here"), "{stdout}");
    let mut other = connect(&p.url("other", None, "other")).await;
    let e = other.query_drop("SHOW CAPGATE REPLICAS").await.expect_err("refused");
    let mysql_async::Error::Server(s) = &e else { panic!("{e}") };
    assert_eq!((s.code, s.state.as_str()), (1227, "42000"), "{s:?}");
    assert!(
        s.message.contains("the capgate admin privilege") && s.message.contains("\"other\"") && s.message.contains("capgate.toml"),
        "{s:?}"
    );
    assert_eq!(other.query_first::<i32, _>("SELECT 41 + 1").await.expect("session goes on"), Some(42));

    let mut c = connect(&p.url("capgate", None, "other")).await;
    // Prepared: refused with 1295, before MariaDB sees it.
    for prepared in ["SHOW CAPGATE STATUS", "capgate reload"] {
        let e = c.prep(prepared).await.expect_err("prepare refused");
        assert_eq!(error_code(&e), 1295, "{e}");
        assert!(e.to_string().contains("plain queries only"), "{e}");
        assert_eq!(c.query_first::<i32, _>("SELECT 1").await.expect("session goes on"), Some(1));
    }
    let e = c.exec_drop("SHOW CAPGATE LAG", ()).await.expect_err("exec refused");
    assert_eq!(error_code(&e), 1295, "{e}");
    // SQL PREPARE of a command (MariaDB would be asked to prepare what it does not know):
    // refused with 1295 too, alone or after another statement, nothing of the query ran.
    for sql in ["PREPARE s FROM 'SHOW CAPGATE STATUS'", "INSERT INTO t VALUES (1); prepare s from \"capgate reload\""] {
        let e = c.query_drop(sql).await.expect_err(sql);
        assert_eq!(error_code(&e), 1295, "{sql}: {e}");
        assert!(e.to_string().contains("cannot be prepared with SQL PREPARE"), "{e}");
        assert_eq!(c.query_first::<u32, _>("SELECT COUNT(*) FROM t").await.expect("count"), Some(0), "{sql} ran in part");
    }
    // A comment after a command without `;` is a comment, as on the server.
    for sql in ["SHOW CAPGATE HELP -- what can I ask?", "SHOW CAPGATE HELP /* runbook step 3 */", "show capgate help # why"] {
        let rows: Vec<Row> = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(rows.len() > 3, "{sql}: {rows:?}");
    }

    // In a multi-statement query, before or after other statements: refused whole (1235),
    // nothing of it ran.
    for mixed in ["INSERT INTO t VALUES (1); SHOW CAPGATE STATUS", "SHOW CAPGATE STATUS; INSERT INTO t VALUES (1)"] {
        let e = c.query_drop(mixed).await.expect_err("mixed refused");
        assert_eq!(error_code(&e), 1235, "{e}");
        assert!(e.to_string().contains("must be sent as a query of its own"), "{e}");
        assert_eq!(c.query_first::<u32, _>("SELECT COUNT(*) FROM t").await.expect("count"), Some(0), "{mixed} ran in part");
    }

    // Errors in MySQL's terms, each followed by a working statement.
    let refusals: [(&str, u16, &str); 4] = [
        ("SHOW CAPGATE NONSENSE", 1064, "SHOW CAPGATE HELP"),
        ("SHOW CAPGATE CONFLICTS LIMIT lots", 1064, "LIMIT takes a number"),
        // MySQL replicas keep their conflicts in conflict_log, which this configuration lacks.
        ("SHOW CAPGATE CONFLICTS", 1644, "conflict_log"),
        ("CAPGATE RELOAD", 1644, "names no policy file"),
    ];
    for (sql, code, words) in refusals {
        let e = c.query_drop(sql).await.expect_err(sql);
        assert_eq!(error_code(&e), code, "{sql}: {e}");
        assert!(e.to_string().contains(words), "{sql}: {e}");
        assert_eq!(c.query_first::<i32, _>("SELECT 2").await.expect("session goes on"), Some(2));
    }
    let mut bare = connect(&p.url("capgate", None, "")).await;
    let e = bare.query_drop("CAPGATE VERIFY t").await.expect_err("no database");
    assert!(e.to_string().contains("database.table"), "{e}");

    // A raw client: the first command of the session is answered with the login's flags;
    // pipelined behind BEGIN, the answer says the transaction is open, in its turn.
    let mut raw = Raw::login(p.addr);
    raw.send(&Raw::query_packet("SHOW CAPGATE STATUS"));
    let reply = raw.reply();
    assert_eq!(final_status(&reply) & 0x03, 0x02, "autocommit, no transaction: {reply:?}");
    let mut pipelined = Raw::query_packet("BEGIN");
    pipelined.extend(Raw::query_packet("SHOW CAPGATE HELP"));
    pipelined.extend(Raw::query_packet("SELECT 'after'"));
    raw.send(&pipelined);
    let begin = raw.reply();
    assert_eq!(begin[0].payload.first(), Some(&0x00), "{begin:?}");
    let help = raw.reply();
    assert!(help.iter().any(|p| p.text().contains("SHOW CAPGATE STATUS")), "{help:?}");
    assert_eq!(final_status(&help) & 0x01, 0x01, "in a transaction: {help:?}");
    assert_eq!(help.iter().map(|p| p.seq).collect::<Vec<_>>(), (1..=help.len() as u8).collect::<Vec<_>>(), "sequence ids");
    let after = raw.reply();
    assert!(after.iter().any(|p| p.text().contains("after")), "{after:?}");
}

/// The status flags of the EOF that ends a result set (without DEPRECATE_EOF).
fn final_status(reply: &[Pkt]) -> u16 {
    let last = reply.last().expect("a reply");
    assert_eq!(last.payload.first(), Some(&0xfe), "not a result set: {reply:?}");
    u16::from_le_bytes([last.payload[3], last.payload[4]])
}
