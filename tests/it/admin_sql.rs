//! The admin SQL commands through the proxy port, with psql as an operator types them:
//! answered by capgate with real tables (never by the primary), refused with 42501 for a
//! user not in `admin_users`, harmless inside a transaction, refused in the extended
//! protocol.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{connect, pg_bin, primary, psql_at, replica, scratch, sqlstate, Proxy};

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"public.accounts\"\nmode = \"sync\"\n\
    [[table]]\nmatch = \"public.page_views\"\nmode = \"async\"\non_conflict = \"skip\"\n";

/// A proxy for database `admin_sql` on the shared primary, replicating to the shared
/// replica's database of the same name; `postgres` is an admin user, `app` is not.
fn start(name: &str) -> Proxy {
    static DB: std::sync::Once = std::sync::Once::new();
    DB.call_once(|| {
        for server in [primary(), replica()] {
            server.create_database("admin_sql").expect("create database");
            let url = server.url("postgres", "admin_sql");
            psql_at(&url, "CREATE TABLE accounts (id int PRIMARY KEY, balance int); CREATE TABLE page_views (id int PRIMARY KEY)");
        }
    });
    // Each test its own directory: a test rewriting its policy file must not make another
    // test's proxy reload.
    let dir = scratch(name);
    std::fs::write(dir.join("policy.toml"), POLICY).expect("write policy");
    let text = format!(
        "site = \"admin_sql\"\nlisten = \"127.0.0.1:0\"\nadmin_users = [\"postgres\"]\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"{}?sslmode=disable\"\n\
         [[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n",
        primary().url("postgres", "admin_sql"),
        replica().url("postgres", "admin_sql"),
    );
    Proxy::start_config(&text, &dir)
}

/// psql's aligned-free output of one command: (header, rows), or the error text.
fn psql_table(url: &str, sql: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-F", "|", "--pset", "footer=off", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
        .output()
        .expect("run psql");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(|l| l.split('|').map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next().unwrap_or_default();
    Ok((header, lines.collect()))
}

/// The value of `column` in `row`.
fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header.iter().position(|h| h == column).unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    &row[i]
}

#[test]
fn admin_commands_answer_with_tables_for_admins_only() {
    let proxy = start("admin-sql");
    let admin = proxy.url("postgres", "admin_sql");

    // The replica becomes healthy; SHOW CAPGATE REPLICAS says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (header, rows) = loop {
        let (header, rows) = psql_table(&admin, "SHOW CAPGATE REPLICAS").expect("SHOW CAPGATE REPLICAS");
        if rows.len() == 1 && cell(&header, &rows[0], "state") == "healthy" {
            break (header, rows);
        }
        assert!(Instant::now() < deadline, "replica never healthy: {header:?} {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(cell(&header, &rows[0], "name"), "b");
    assert!(cell(&header, &rows[0], "rtt_ms").parse::<f64>().unwrap() > 0.0, "{rows:?}");

    let (header, rows) = psql_table(&admin, "show capgate status;").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(cell(&header, &rows[0], "site"), "admin_sql");
    assert_eq!(cell(&header, &rows[0], "policy_version"), "1");
    assert_eq!(cell(&header, &rows[0], "replicas"), "1");
    assert!(cell(&header, &rows[0], "primary").starts_with("127.0.0.1:"), "{rows:?}");

    let (header, rows) = psql_table(&admin, "SHOW CAPGATE POLICY").unwrap();
    let rules: Vec<(&str, &str)> = rows.iter().map(|r| (cell(&header, r, "match"), cell(&header, r, "mode"))).collect();
    assert_eq!(rules, [("public.accounts", "sync"), ("public.page_views", "async"), ("(default)", "local")]);
    assert_eq!(cell(&header, &rows[1], "options"), "on_conflict=skip");
    assert_eq!(cell(&header, &rows[0], "line"), "2");

    let (header, rows) = psql_table(&admin, "SHOW CAPGATE LAG").unwrap();
    let tables: Vec<&str> = rows.iter().map(|r| cell(&header, r, "table")).collect();
    assert_eq!(tables, ["public.accounts", "public.page_views"]);

    let (header, rows) = psql_table(&admin, "SHOW CAPGATE CONFLICTS LIMIT 5").unwrap();
    assert!(header.contains(&"details".to_owned()) && rows.is_empty(), "no conflicts yet: {header:?} {rows:?}");

    // CAPGATE VERIFY compares one table on both sites. Rows written on the replica behind
    // capgate's back differ; removing them there makes the sites equal again.
    // First the table's initial copy must be done: the copy replaces the replica's rows.
    let replica_url = replica().url("postgres", "admin_sql");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(pg_bin("psql"))
            .args(["-X", "-tA", "-c", "SELECT state FROM capgate.tables WHERE tbl LIKE '%page_views'", &replica_url])
            .output()
            .expect("run psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "copied" {
            break;
        }
        assert!(Instant::now() < deadline, "page_views never copied: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    psql_at(&replica_url, "INSERT INTO page_views VALUES (1), (2)");
    let (header, rows) = psql_table(&admin, "CAPGATE VERIFY page_views").unwrap();
    assert_eq!(cell(&header, &rows[0], "result"), "diverged", "the replica has rows the primary lacks: {rows:?}");
    assert_eq!(cell(&header, &rows[0], "rows_differing"), "2");
    psql_at(&replica().url("postgres", "admin_sql"), "DELETE FROM page_views");
    let (header, rows) = psql_table(&admin, "CAPGATE VERIFY public.page_views").unwrap();
    assert_eq!((cell(&header, &rows[0], "replica"), cell(&header, &rows[0], "result")), ("b", "equal"), "{rows:?}");

    // CAPGATE RELOAD takes the edited file at once.
    let policy = scratch("admin-sql").join("policy.toml");
    std::fs::write(&policy, format!("{POLICY}[[table]]\nmatch = \"public.sessions\"\nmode = \"local\"\n")).unwrap();
    let (header, rows) = psql_table(&admin, "CAPGATE RELOAD").unwrap();
    assert_eq!(cell(&header, &rows[0], "result"), "reloaded");
    let version: u64 = cell(&header, &rows[0], "version").parse().unwrap();
    assert!(version >= 2, "{rows:?}");
    std::fs::write(&policy, "default = \"nonsense\"\n").unwrap();
    let err = psql_table(&admin, "CAPGATE RELOAD").unwrap_err();
    assert!(err.contains("not reloaded") && err.contains("policy.toml:1: default"), "{err}");
    std::fs::write(&policy, POLICY).unwrap();

    // Unknown commands list the known ones; a non-admin is refused.
    let err = psql_table(&admin, "SHOW CAPGATE EVERYTHING").unwrap_err();
    assert!(err.contains("unknown capgate command") && err.contains("SHOW CAPGATE REPLICAS"), "{err}");
    let err = psql_table(&proxy.url("app", "admin_sql"), "SHOW CAPGATE STATUS").unwrap_err();
    assert!(err.contains("permission denied") && err.contains("admin_users"), "{err}");
}

#[tokio::test]
async fn admin_commands_leave_the_session_and_its_transaction_alone() {
    let proxy = start("admin-sql-2");
    let client = connect(&proxy.url("postgres", "admin_sql")).await;
    // Inside a transaction: the primary never sees the command, the transaction goes on.
    client.batch_execute("BEGIN; CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)").await.unwrap();
    let rows = client.simple_query("SHOW CAPGATE STATUS").await.unwrap();
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get("site").map(str::to_owned)),
        _ => None,
    });
    assert_eq!(row, Some(Some("admin_sql".to_owned())));
    let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the transaction is intact");
    client.batch_execute("COMMIT").await.unwrap();

    // A permission error is an error, but not the primary's: the session goes on.
    let app = connect(&proxy.url("app", "admin_sql")).await;
    let e = app.simple_query("SHOW CAPGATE REPLICAS").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(app.query_one("SELECT 1 + 1", &[]).await.unwrap().get::<_, i32>(0), 2);

    // The extended protocol is refused: prepared statements cannot carry admin commands.
    let e = client.query("SHOW CAPGATE STATUS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(message.contains("simple query protocol"), "{message}");

    // Pipelined with ordinary queries, each answer arrives in its place.
    let (a, b, c) =
        tokio::join!(client.simple_query("SELECT 'first'"), client.simple_query("SHOW CAPGATE HELP"), client.simple_query("SELECT 'last'"));
    let first_value = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| {
        msgs.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    };
    assert_eq!(first_value(a.unwrap()).as_deref(), Some("first"));
    assert_eq!(first_value(b.unwrap()).as_deref(), Some("SHOW CAPGATE STATUS"));
    assert_eq!(first_value(c.unwrap()).as_deref(), Some("last"));
}
