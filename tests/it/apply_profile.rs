//! Tools for measuring `capgate.apply_changes` on a small sync transaction (ignored: run by
//! hand with `cargo test --test it -- --ignored --nocapture apply_profile`).

use std::time::Duration;

use capgate::replicate::apply::{self, ApplyMode};

use crate::apply::{bed, list, url};

/// How long one sync apply of a TPC-B transaction takes (ignored: run by hand with
/// `cargo test --test it -- --ignored --nocapture apply::measure_sync_apply`).
#[tokio::test]
#[ignore]
async fn measure_sync_apply() {
    let ddl = "CREATE TABLE acct (k int PRIMARY KEY, bal bigint, filler char(84));
               CREATE TABLE teller (k int PRIMARY KEY, bal bigint, filler char(84));
               CREATE TABLE branch (k int PRIMARY KEY, bal bigint, filler char(88));
               INSERT INTO acct SELECT g, 0, '' FROM generate_series(1, 10000) g;
               INSERT INTO teller SELECT g, 0, '' FROM generate_series(1, 10) g;
               INSERT INTO branch VALUES (1, 0, '')";
    let b = bed("tpcb", ddl).await;
    let n = 500;
    let mut txns = Vec::new();
    for i in 0..n {
        let (aid, tid) = (i * 7 % 10000 + 1, i % 10 + 1);
        let mut changes = b.capture("acct", &format!("UPDATE acct SET bal = bal + 1 WHERE k = {aid}")).await;
        changes.extend(b.capture("teller", &format!("UPDATE teller SET bal = bal + 1 WHERE k = {tid}")).await);
        changes.extend(b.capture("branch", "UPDATE branch SET bal = bal + 1").await);
        txns.push(list(&changes));
    }
    if std::env::var("PROFILE_SESSION_ROLE").is_ok() {
        b.db.batch_execute("SET session_replication_role = replica").await.expect("role");
    }
    let t = std::time::Instant::now();
    for changes in &txns {
        b.db.batch_execute("BEGIN").await.expect("begin");
        apply::apply_changes(&b.db, "tpcb", changes, ApplyMode::Sync, "{}", Duration::from_secs(1)).await.expect("apply");
        b.db.batch_execute("COMMIT").await.expect("commit");
    }
    let each = t.elapsed() / n as u32;
    let t = std::time::Instant::now();
    for _ in 0..n {
        b.db.batch_execute("BEGIN; SELECT 1; COMMIT").await.expect("baseline");
    }
    println!(
        "sync apply of a 3-update transaction: {each:?} each (BEGIN + apply + COMMIT); an empty transaction: {:?}",
        t.elapsed() / n as u32
    );
}

/// Where a small sync apply spends its time: every nested statement's plan and timing, as
/// auto_explain reports it (ignored: a tool, run by hand with `--ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn profile_small_apply() {
    use futures_util::StreamExt;
    let ddl = "CREATE TABLE acct (k int PRIMARY KEY, bal bigint, filler char(84));
               INSERT INTO acct SELECT g, 0, '' FROM generate_series(1, 10000) g";
    let b = bed("prof", ddl).await;
    let (client, mut conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_owned());
            }
        }
    });
    let change = |k: i32| {
        format!(
            "SELECT json_build_array(json_build_object('seq', 1, 'at', now(), 'tbl', 'r_prof.acct', 'op', 'U', 'old', row_to_json(t), \
         'new', json_build_object('k', t.k, 'bal', t.bal + 1, 'filler', t.filler)))::text FROM r_prof.acct t WHERE k = {k}"
        )
    };
    if std::env::var("PROFILE_SESSION_ROLE").is_ok() {
        client.batch_execute("SET session_replication_role = replica").await.expect("role");
    }
    for k in [1, 2, 3, 4, 5] {
        let changes: String = client.query_one(&change(k), &[]).await.expect("change").get(0);
        client.batch_execute("BEGIN").await.expect("begin");
        if k == 5 {
            client
                .batch_execute(
                    "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = off; \
                                SET auto_explain.log_analyze = on; SET auto_explain.log_level = 'notice'",
                )
                .await
                .expect("auto_explain");
        }
        let t = std::time::Instant::now();
        apply::apply_changes(&client, "prof", &changes, ApplyMode::Sync, "{}", Duration::from_secs(1)).await.expect("apply");
        println!("apply {k}: {:?}", t.elapsed());
        client.batch_execute("COMMIT").await.expect("commit");
    }
    let mut total = Duration::ZERO;
    for k in 10..210 {
        let changes: String = client.query_one(&change(k), &[]).await.expect("change").get(0);
        client.batch_execute("BEGIN").await.expect("begin");
        let t = std::time::Instant::now();
        apply::apply_changes(&client, "prof", &changes, ApplyMode::Sync, "{}", Duration::from_secs(1)).await.expect("apply");
        total += t.elapsed();
        client.batch_execute("COMMIT").await.expect("commit");
    }
    println!("apply of one update, average of 200: {:?}", total / 200);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(m) = rx.try_recv() {
        let first = m.lines().take(4).collect::<Vec<_>>().join(" | ");
        println!("{}", first.chars().take(400).collect::<String>());
    }
}
