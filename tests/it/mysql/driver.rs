//! mysql_async through capgate: binary prepared statements of common types (compared with a
//! direct connection), statements re-executed, cursors of prepared statements closed and
//! reset, and a long query killed from another connection — only by its own user.

use mysql_async::prelude::*;
use mysql_async::{Row, Value};

use super::support::{connect, error_code, primary, url_at, MyProxy, APP_PASSWORD};

const TYPES: &str = "CREATE TABLE IF NOT EXISTS driver.types (
    id INT PRIMARY KEY, i8 TINYINT, u64 BIGINT UNSIGNED, i64 BIGINT, d DECIMAL(20,6), f FLOAT, dbl DOUBLE,
    vc VARCHAR(50), tx TEXT, bl MEDIUMBLOB, dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), js JSON,
    en ENUM('small','large'), st SET('x','y','z'), n INT NULL) ENGINE=InnoDB";

fn row_values(row: Row) -> Vec<Value> {
    row.unwrap()
}

/// Insert and read back every type with binary prepared statements at `port`.
async fn round_trip(port: u16, id: i32) -> Vec<Vec<Value>> {
    let mut c = connect(&url_at(port, "app", Some(APP_PASSWORD), "driver")).await;
    let insert = "INSERT INTO types VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let statement = c.prep(insert).await.expect("prepare insert");
    for k in 0..3i32 {
        let params: Vec<Value> = vec![
            Value::Int(i64::from(id * 10 + k)),
            Value::Int(-128 + i64::from(k)),
            Value::UInt(u64::MAX - k as u64),
            Value::Int(i64::MIN + i64::from(k)),
            Value::Bytes(format!("12345678901234.{k}23456").into_bytes()),
            Value::Float(1.5 + k as f32),
            Value::Double(std::f64::consts::PI * f64::from(k)),
            Value::Bytes(format!("varchar ünïcödé {k}").into_bytes()),
            Value::Bytes("text ".repeat(1000 + k as usize).into_bytes()),
            Value::Bytes((0..=255u8).cycle().take(70_000).collect()),
            Value::Date(2026, 12, 3, 0, 0, 0, 0),
            Value::Date(1999, 12, 31, 23, 59, 59, 999_999),
            Value::Date(2038, 1, 19, 3, 14, 7, 123_456),
            Value::Time(true, 1, 2, 3, 4, 500_000),
            Value::Bytes(format!("{{\"k\": {k}, \"list\": [1, 2, null]}}").into_bytes()),
            Value::Bytes(b"large".to_vec()),
            Value::Bytes(b"x,z".to_vec()),
            Value::NULL,
        ];
        c.exec_drop(&statement, params).await.expect("insert");
    }
    let rows: Vec<Row> = c.exec("SELECT * FROM types WHERE id BETWEEN ? AND ? ORDER BY id", (id * 10, id * 10 + 9)).await.expect("select");
    let mut out: Vec<Vec<Value>> = rows.into_iter().map(row_values).collect();
    // The same statement again: later executes may omit the parameter types.
    let again: Vec<Row> = c.exec("SELECT * FROM types WHERE id BETWEEN ? AND ? ORDER BY id", (id * 10, id * 10)).await.expect("again");
    assert_eq!(again.len(), 1);
    for row in &mut out {
        row[0] = Value::Int(0);
    }
    c.close(statement).await.expect("close statement");
    c.disconnect().await.expect("disconnect");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_prepared_statements_round_trip_like_a_direct_connection() {
    let proxy = MyProxy::start("");
    let direct = primary().port();
    let mut setup = connect(&url_at(direct, "app", Some(APP_PASSWORD), "")).await;
    setup.query_drop("CREATE DATABASE IF NOT EXISTS driver").await.unwrap();
    setup.query_drop(TYPES).await.unwrap();
    let through = round_trip(proxy.port(), 1).await;
    let reference = round_trip(direct, 2).await;
    assert_eq!(through.len(), 3);
    assert_eq!(through, reference, "values read back through capgate differ from those read directly");
    // A sample checked for what it is, not only for equality.
    assert_eq!(through[2][2], Value::UInt(u64::MAX - 2));
    assert_eq!(through[1][9], Value::Bytes((0..=255u8).cycle().take(70_000).collect()));
    assert_eq!(through[0][17], Value::NULL);
}

#[tokio::test(flavor = "multi_thread")]
async fn text_queries_many_results_and_errors() {
    let proxy = MyProxy::start("");
    let mut c = connect(&proxy.url("app", Some(APP_PASSWORD), "mysql")).await;
    let n: Vec<(u64, String)> = c.query("SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5000").await.unwrap();
    assert_eq!(n.len(), 5000);
    assert_eq!(n[4999], (5000, "row 5000".into()));
    let err = c.query_drop("SELECT * FROM nowhere.nothing").await.unwrap_err();
    assert_eq!(error_code(&err), 1146);
    // The session goes on after an error, in and out of transactions.
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    assert_eq!(error_code(&tx.query_drop("SELEC 1").await.unwrap_err()), 1064);
    let one: Option<i32> = tx.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    tx.rollback().await.unwrap();
    // A prepared statement that fails to prepare, then one that works.
    assert_eq!(error_code(&c.prep("SELECT * FROM nowhere.nothing WHERE x = ?").await.unwrap_err()), 1146);
    let v: Option<String> = c.exec_first("SELECT CONCAT(?, ?)", ("a", "b")).await.unwrap();
    assert_eq!(v.as_deref(), Some("ab"));
    // COM_PING and COM_RESET_CONNECTION (statements are gone after it).
    c.ping().await.unwrap();
    c.query_drop("SET @kept = 1").await.unwrap();
    c.reset().await.unwrap();
    let kept: Option<Option<i32>> = c.query_first("SELECT @kept").await.unwrap();
    assert_eq!(kept, Some(None));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_query_is_killed_by_its_own_user_only() {
    let proxy = MyProxy::start("");
    let url = proxy.url("app", Some(APP_PASSWORD), "");
    let mut long = connect(&url).await;
    let id = long.id();
    let running = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = long.query_first("SELECT SLEEP(60)").await;
        (r, long)
    });
    // Wait until the query runs on the primary.
    let mut admin = connect(&url_at(primary().port(), "capgate", None, "")).await;
    for _ in 0..200 {
        let n: Option<i64> = admin
            .exec_first("SELECT COUNT(*) FROM information_schema.processlist WHERE id = ? AND info LIKE 'SELECT SLEEP%'", (id,))
            .await
            .unwrap();
        if n == Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Another user cannot kill it through capgate, even one the server would allow.
    let mut other = connect(&proxy.url("capgate", None, "")).await;
    let err = other.query_drop(format!("KILL QUERY {id}")).await.unwrap_err();
    assert_eq!(error_code(&err), 1094, "{err}");
    let err = other.query_drop(format!("/* sneaky */ KILL {id}")).await.unwrap_err();
    assert_eq!(error_code(&err), 1094, "{err}");
    // Its own user can.
    let mut same = connect(&url).await;
    same.query_drop(format!("KILL QUERY {id}")).await.expect("kill own query");
    let (result, mut long) = running.await.unwrap();
    match result {
        Ok(v) => assert_eq!(v, Some(1), "SLEEP returns 1 when interrupted"),
        Err(e) => assert_eq!(error_code(&e), 1317, "{e}"),
    }
    // The killed session is still usable.
    let one: Option<i32> = long.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}
