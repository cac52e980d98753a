//! tokio-postgres through the proxy: what a Rust application sees must equal what it sees
//! talking to PostgreSQL directly.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::try_join_all;
use rust_decimal::Decimal;
use serde_json::json;
use tokio_postgres::types::ToSql;

use crate::support::{connect, sqlstate, Proxy, CLEARTEXT_PASSWORD, MD5_PASSWORD, SCRAM_PASSWORD};

/// A row of every common type, read back through a prepared statement with binary results.
#[derive(Debug, PartialEq)]
struct Row {
    i: i32,
    b: i64,
    n: Decimal,
    t: String,
    bytes: Vec<u8>,
    ts: DateTime<Utc>,
    u: uuid::Uuid,
    j: serde_json::Value,
    ints: Vec<Option<i32>>,
    texts: Vec<String>,
}

async fn round_trip(url: &str, table: &str) -> Vec<Row> {
    let c = connect(url).await;
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (i int, b bigint, n numeric, t text, bytes bytea, ts timestamptz, u uuid, j jsonb, ints int[], texts text[])"
    ))
    .await
    .unwrap();
    let insert = c.prepare(&format!("INSERT INTO {table} VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)")).await.unwrap();
    let all_bytes: Vec<u8> = (0..=255).collect();
    for k in 0..3i32 {
        let n = Decimal::new(123456789012345678 + k as i64, 6);
        let ts = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, k as u32).unwrap();
        let u = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0 + k as u128);
        let j = json!({"k": k, "nested": {"list": [1, "two", null]}, "unicode": "grüße ✓"});
        let ints = vec![Some(k), None, Some(-k)];
        let texts = vec![format!("a{k}"), "with \"quotes\", commas".to_owned()];
        let text = format!("row {k} ünïcødé");
        let params: [&(dyn ToSql + Sync); 10] = [&k, &(i64::MAX - k as i64), &n, &text, &all_bytes, &ts, &u, &j, &ints, &texts];
        c.execute(&insert, &params).await.unwrap();
    }
    let select = c.prepare(&format!("SELECT * FROM {table} WHERE i >= $1 ORDER BY i")).await.unwrap();
    let mut rows = Vec::new();
    // The same prepared statement, executed several times.
    for _ in 0..3 {
        rows = c
            .query(&select, &[&0i32])
            .await
            .unwrap()
            .iter()
            .map(|r| Row {
                i: r.get(0),
                b: r.get(1),
                n: r.get(2),
                t: r.get(3),
                bytes: r.get(4),
                ts: r.get(5),
                u: r.get(6),
                j: r.get(7),
                ints: r.get(8),
                texts: r.get(9),
            })
            .collect();
    }
    c.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
    rows
}

#[tokio::test]
async fn binary_types_round_trip_like_direct() {
    let proxy = Proxy::start("");
    let via_proxy = round_trip(&proxy.url("postgres", "postgres"), "types_proxy").await;
    let direct = round_trip(&Proxy::direct_url("postgres", "postgres"), "types_direct").await;
    assert_eq!(via_proxy.len(), 3);
    assert_eq!(via_proxy, direct);
    assert_eq!(via_proxy[1].bytes, (0..=255).collect::<Vec<u8>>());
    assert_eq!(via_proxy[2].ints, vec![Some(2), None, Some(-2)]);
}

#[tokio::test]
async fn pipelined_queries_keep_their_order() {
    let proxy = Proxy::start("");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    let stmt = c.prepare("SELECT $1::int * 2, pg_sleep(0.001)::text").await.unwrap();
    // All 200 executions are written before the first answer is read.
    let futures = (0..200i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let got = try_join_all(futures).await.unwrap();
    assert_eq!(got, (0..200).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn errors_keep_their_sqlstate_and_text() {
    let proxy = Proxy::start("");
    let mut seen = Vec::new();
    for url in [proxy.url("postgres", "postgres"), Proxy::direct_url("postgres", "postgres")] {
        let c = connect(&url).await;
        let mut states = Vec::new();
        for sql in ["SELECT 1/0", "SELECT * FROM no_such_table", "SELEC 1", "SELECT 'x'::int"] {
            let e = c.simple_query(sql).await.unwrap_err();
            states.push((sqlstate(&e), e.as_db_error().unwrap().message().to_owned()));
        }
        // After an error inside a transaction, the next statement is refused until ROLLBACK.
        c.batch_execute("BEGIN").await.unwrap();
        let _ = c.simple_query("SELECT 1/0").await.unwrap_err();
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        states.push((sqlstate(&e), String::new()));
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
        seen.push(states);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0][0].0, "22012");
    assert_eq!(seen[0][1].0, "42P01");
    assert_eq!(seen[0][2].0, "42601");
    assert_eq!(seen[0][4].0, "25P02");
}

#[tokio::test]
async fn savepoints_behave_as_on_postgres() {
    let proxy = Proxy::start("");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    c.batch_execute(
        "DROP TABLE IF EXISTS sp; CREATE TABLE sp (k int primary key);
         BEGIN; INSERT INTO sp VALUES (1); SAVEPOINT a; INSERT INTO sp VALUES (2);",
    )
    .await
    .unwrap();
    let e = c.batch_execute("INSERT INTO sp VALUES (1)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    c.batch_execute("ROLLBACK TO SAVEPOINT a; INSERT INTO sp VALUES (3); COMMIT").await.unwrap();
    let keys: Vec<i32> = c.query("SELECT k FROM sp ORDER BY k", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec![1, 3]);
}

#[tokio::test]
async fn a_long_query_can_be_cancelled() {
    let proxy = Proxy::start("");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c.simple_query("SELECT pg_sleep(60)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    canceller.await.unwrap().unwrap();
    // The session is still usable, and the cancel key given out is the proxy's, not the
    // primary's backend pid.
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test]
async fn listen_notify_between_two_sessions() {
    let proxy = Proxy::start("");
    let url = proxy.url("postgres", "postgres");
    let (listener, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut stream).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN capgate_events").await.unwrap();
    let notifier = connect(&url).await;
    notifier.batch_execute("NOTIFY capgate_events, 'hello from another session'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("notification arrives").unwrap();
    assert_eq!(got, ("capgate_events".to_owned(), "hello from another session".to_owned()));
}

#[tokio::test]
async fn passthrough_auth_for_every_method() {
    let proxy = Proxy::start("");
    for (user, password) in [("md5_user", MD5_PASSWORD), ("scram_user", SCRAM_PASSWORD), ("pw_user", CLEARTEXT_PASSWORD)] {
        let url = format!("postgres://{user}:{password}@{}/postgres", proxy.addr);
        let c = connect(&url).await;
        let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
        for (url, side) in [
            (format!("postgres://{user}:wrong@{}/postgres", proxy.addr), "proxy"),
            (
                {
                    let direct = Proxy::direct_url(user, "postgres");
                    direct.replacen(&format!("{user}@"), &format!("{user}:wrong@"), 1)
                },
                "direct",
            ),
        ] {
            let e = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .err()
                .unwrap_or_else(|| panic!("{side}: wrong password accepted"));
            assert_eq!(sqlstate(&e), "28P01", "{side} {user}: {e}");
            assert_eq!(e.as_db_error().unwrap().message(), format!("password authentication failed for user \"{user}\""));
        }
    }
}

#[tokio::test]
async fn proxy_side_users_log_in_upstream_with_the_primary_credentials() {
    // The upstream login is tried with each method the primary may ask for.
    for (upstream_user, upstream_password) in [("scram_user", SCRAM_PASSWORD), ("md5_user", MD5_PASSWORD), ("pw_user", CLEARTEXT_PASSWORD)]
    {
        let primary_url = crate::support::primary().url(upstream_user, "postgres").replacen(
            &format!("{upstream_user}@"),
            &format!("{upstream_user}:{upstream_password}@"),
            1,
        );
        let proxy = Proxy::start_for(&primary_url, "[[users]]\nname = \"alice\"\npassword = \"wonderland\"\n");
        let c = connect(&format!("postgres://alice:wonderland@{}/postgres", proxy.addr)).await;
        let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, upstream_user, "alice logs in upstream as the primary URL's user");
        let e =
            tokio_postgres::connect(&format!("postgres://alice:queen@{}/postgres", proxy.addr), tokio_postgres::NoTls).await.err().unwrap();
        assert_eq!(sqlstate(&e), "28P01");
        assert_eq!(e.as_db_error().unwrap().message(), "password authentication failed for user \"alice\"");
        // A user not listed still authenticates at the primary.
        let c = connect(&format!("postgres://scram_user:{SCRAM_PASSWORD}@{}/postgres", proxy.addr)).await;
        let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, "scram_user");
    }
}

#[tokio::test]
async fn transaction_state_follows_the_session() {
    let proxy = Proxy::start("");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    let pid_a: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute("BEGIN; SET LOCAL application_name = 'x'").await.unwrap();
    let pid_b: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pid_a, pid_b, "one client session is one primary session");
}
