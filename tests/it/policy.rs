//! The policy in the relay: statements whose written tables cannot be determined are
//! relayed or refused as the policy says, the catalog is read from the primary, the
//! session's search_path is followed, and a reloaded policy applies to new transactions only.

use std::time::{Duration, Instant};

use crate::support::{connect, scratch, sqlstate, Proxy};

/// Functions on the primary: a volatile one that may write anything, a stable one, and the
/// same name in two schemas with different volatility.
fn functions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(create_functions);
}

fn create_functions() {
    crate::support::psql_at(
        &crate::support::primary().url("postgres", "postgres"),
        "CREATE OR REPLACE FUNCTION public.pol_touch() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
         CREATE OR REPLACE FUNCTION public.pol_peek() RETURNS int LANGUAGE sql STABLE AS 'SELECT 2';
         CREATE SCHEMA IF NOT EXISTS pol_app;
         CREATE OR REPLACE FUNCTION pol_app.pol_peek() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 3';
         CREATE TABLE IF NOT EXISTS public.pol_accounts (id int primary key, balance int);
         CREATE OR REPLACE FUNCTION public.pol_transfer() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 4';",
    );
}

fn proxy_with_policy(name: &str, policy: &str) -> (Proxy, std::path::PathBuf) {
    let dir = scratch(name);
    let file = dir.join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}\"\n",
        crate::support::primary().url("postgres", "postgres")
    );
    (Proxy::start_config(&text, &dir), file)
}

/// Wait until `sql` succeeds through `client` (the catalog loads in the background).
async fn until_ok(client: &tokio_postgres::Client, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.simple_query(sql).await {
        assert!(Instant::now() < deadline, "`{sql}` still fails: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn refuse_answers_with_the_reason_in_both_protocols() {
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy(
        "policy-refuse",
        "unknown = \"refuse\"\n[[table]]\nmatch = \"public.pol_accounts\"\nmode = \"sync\"\n\
         [[function]]\nname = \"public.pol_transfer\"\nwrites = [\"public.pol_accounts\"]\n",
    );
    let c = connect(&proxy.url("postgres", "postgres")).await;
    // The stable function is fine once the catalog is read from the primary.
    until_ok(&c, "SELECT pol_peek()").await;

    let e = c.simple_query("SELECT pol_touch()").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let db = e.as_db_error().unwrap();
    assert!(db.message().contains("cannot tell which tables it writes"), "{}", db.message());
    assert!(db.message().contains("pol_touch"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("[[function]]"), "{:?}", db.hint());

    // Extended protocol, with a parameter the client did not type.
    let e = c.query("SELECT pol_touch() + $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");

    // Inside a transaction the refusal aborts it, like any error.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.simple_query("SELECT pol_touch()").await.is_err());
    assert_eq!(sqlstate(&c.simple_query("SELECT 1").await.unwrap_err()), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();

    // A function the policy describes is not unknown: its call runs (what it writes is
    // captured as rows, decision 0009).
    let rows = c.simple_query("SELECT pol_transfer()").await.expect("a described function runs");
    assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))), "{rows:?}");
    // The session is still healthy.
    assert_eq!(c.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0), 5);
}

#[tokio::test]
async fn the_search_path_decides_which_function_is_called() {
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy("policy-path", "unknown = \"refuse\"\n");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    until_ok(&c, "SELECT pol_peek()").await;
    // pol_app.pol_peek is volatile: with pol_app first on the path the same text is refused.
    c.batch_execute("SET search_path = pol_app, public").await.unwrap();
    let e = c.simple_query("SELECT pol_peek()").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("RESET search_path").await.unwrap();
    c.simple_query("SELECT pol_peek()").await.unwrap();
    // A path given at startup counts from the first statement.
    let url = format!("{}?options=-c%20search_path%3Dpol_app,public", proxy.url("postgres", "postgres"));
    let c2 = connect(&url).await;
    assert_eq!(sqlstate(&c2.simple_query("SELECT pol_peek()").await.unwrap_err()), "0A000");
}

#[tokio::test]
async fn relay_is_the_default_and_a_reload_applies_to_new_transactions() {
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, file) = proxy_with_policy("policy-reload", "unknown = \"relay\"\n");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    assert_eq!(c.query_one("SELECT pol_touch()", &[]).await.unwrap().get::<_, i32>(0), 1);

    let open = connect(&proxy.url("postgres", "postgres")).await;
    open.batch_execute("BEGIN").await.unwrap();
    open.simple_query("SELECT pol_touch()").await.unwrap();

    // A broken file is rejected and the old policy stays.
    std::fs::write(&file, "unknown = \"sometimes\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.simple_query("SELECT pol_touch()").await.unwrap();

    std::fs::write(&file, "unknown = \"refuse\"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.simple_query("SELECT pol_touch()").await.is_ok() {
        assert!(Instant::now() < deadline, "the new policy was never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The transaction that was already open keeps the policy it started with.
    open.simple_query("SELECT pol_touch()").await.unwrap();
    open.batch_execute("COMMIT").await.unwrap();
    assert_eq!(sqlstate(&open.simple_query("SELECT pol_touch()").await.unwrap_err()), "0A000");
}

#[tokio::test]
async fn refusals_keep_their_place_among_pipelined_statements() {
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy("policy-pipeline", "unknown = \"refuse\"\n");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    until_ok(&c, "SELECT pol_peek()").await;
    let ok = c.prepare("SELECT $1::int + 1").await.unwrap();
    // 60 executions written before any answer is read; every third one is refused.
    let futures = (0..60i32).map(|i| {
        let (c, ok) = (&c, &ok);
        async move {
            if i % 3 == 0 {
                c.query_one("SELECT pol_touch() + $1::int", &[&i]).await.map(|r| r.get::<_, i32>(0))
            } else {
                c.query_one(ok, &[&i]).await.map(|r| r.get::<_, i32>(0))
            }
        }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert!(i % 3 != 0 && *v == i as i32 + 1, "#{i}: {v}"),
            Err(e) => assert!(i % 3 == 0 && sqlstate(e) == "0A000", "#{i}: {e}"),
        }
    }
    assert_eq!(c.query_one(&ok, &[&41i32]).await.unwrap().get::<_, i32>(0), 42);
}

#[tokio::test]
async fn copy_in_through_the_extended_protocol_keeps_replies_in_step() {
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy("policy-copy", "unknown = \"refuse\"\n");
    let c = connect(&proxy.url("postgres", "postgres")).await;
    until_ok(&c, "SELECT pol_peek()").await;
    c.batch_execute("DROP TABLE IF EXISTS pol_copy; CREATE TABLE pol_copy (k int)").await.unwrap();
    for round in 0..3 {
        // tokio-postgres sends COPY FROM STDIN as Parse/Bind/Execute/Sync, then the data,
        // CopyDone and another Sync: PostgreSQL ignores the first Sync in copy-in mode.
        let sink = c.copy_in("COPY pol_copy FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(format!("{round}\n"))).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
        // A refusal right after must still be answered in its place, and what follows too.
        let e = c.query("SELECT pol_touch() + $1::int", &[&1i32]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        assert_eq!(c.query_one("SELECT count(*)::int FROM pol_copy", &[]).await.unwrap().get::<_, i32>(0), round + 1);
    }
}

#[test]
fn undecodable_text_and_fast_path_calls_follow_the_unknown_policy() {
    use crate::support::{frame, query, startup, Raw};
    functions();
    let (proxy, _) = proxy_with_policy("policy-latin1", "unknown = \"refuse\"\n");
    let mut raw = Raw::connect(proxy.addr);
    raw.send(&startup(&[("user", "postgres"), ("database", "postgres"), ("client_encoding", "LATIN1")]));
    raw.until_ready();
    // "caf\xe9" in LATIN1: not UTF-8, so the proxy cannot read the statement.
    let mut sql = b"SELECT 1 -- caf".to_vec();
    sql.push(0xe9);
    sql.push(0);
    raw.send(&frame(b'Q', &sql));
    let replies = raw.until_ready();
    let err = replies.iter().find(|m| m.tag == b'E').expect("refused");
    assert_eq!(err.field(b'C').as_deref(), Some("0A000"));
    assert!(err.field(b'M').unwrap_or_default().contains("not valid UTF-8"));
    // FunctionCall int4pl(40, 2) by OID.
    let mut body = 177u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 2]);
    for v in [40i32, 2] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&[0, 1]);
    raw.send(&frame(b'F', &body));
    let replies = raw.until_ready();
    let err = replies.iter().find(|m| m.tag == b'E').expect("fast-path call refused");
    assert_eq!(err.field(b'C').as_deref(), Some("0A000"));
    // The session goes on.
    raw.send(&query("SELECT 1"));
    assert!(raw.until_ready().iter().any(|m| m.tag == b'D'));
}

/// The replies to a batch of Query messages written in one go, one list of messages per
/// ReadyForQuery.
fn pipelined(raw: &mut crate::support::Raw, sqls: &[&str]) -> Vec<Vec<crate::support::Msg>> {
    let batch: Vec<u8> = sqls.iter().flat_map(|sql| crate::support::query(sql)).collect();
    raw.send(&batch);
    sqls.iter().map(|_| raw.until_ready()).collect()
}

/// A pipelining client writes BEGIN, SET LOCAL search_path, COMMIT and a call before
/// reading any answer: the call runs after the COMMIT, where the SET LOCAL has ended, so it
/// calls the stable public.pol_peek and must not be refused as pol_app.pol_peek (volatile).
/// The other way round, the answer to an earlier autocommit statement that arrives while a
/// block is open must not end that block's SET LOCAL: the volatile pol_app.pol_peek it then
/// calls is refused.
#[tokio::test]
async fn set_local_ends_with_its_transaction_under_pipelining() {
    use crate::support::{login_direct, Raw};
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy("policy-pipelined-tx", "unknown = \"refuse\"\n");
    until_ok(&connect(&proxy.url("postgres", "postgres")).await, "SELECT pol_peek()").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let one_transaction = ["BEGIN", "SET LOCAL search_path = pol_app, public", "COMMIT", "SELECT pol_peek()"];
        for (who, mut raw) in [("PostgreSQL itself", login_direct("postgres")), ("capgate", Raw::login(addr, "postgres"))] {
            let replies = pipelined(&mut raw, &one_transaction);
            let last = &replies[3];
            assert!(last.iter().all(|m| m.tag != b'E'), "{who}: {:?}", last.iter().find_map(|m| m.field(b'M')));
            let row = last.iter().find(|m| m.tag == b'D').unwrap_or_else(|| panic!("{who}: no row"));
            assert!(row.body.ends_with(b"2"), "{who}: pol_peek answered {:?}", String::from_utf8_lossy(&row.body));
        }
        let mut raw = Raw::login(addr, "postgres");
        let first = pipelined(&mut raw, &["SELECT 1", "BEGIN", "SET LOCAL search_path = pol_app, public"]);
        assert!(first.iter().flatten().all(|m| m.tag != b'E'));
        let call = pipelined(&mut raw, &["SELECT pol_peek()"]);
        let error = call[0].iter().find(|m| m.tag == b'E').unwrap_or_else(|| panic!("pol_app.pol_peek ran through a refuse policy"));
        assert_eq!(error.field(b'C').as_deref(), Some("0A000"), "{:?}", error.field(b'M'));
        pipelined(&mut raw, &["ROLLBACK"]);
    })
    .await
    .unwrap();
}

/// A refused statement in the middle of a multi-statement Query: the client gets the results
/// of the statements before it and then the refusal, as PostgreSQL answers a statement that
/// fails there; the session goes on.
#[tokio::test]
async fn a_refusal_inside_a_multi_statement_query_keeps_the_results_before_it() {
    use crate::support::{login_direct, Raw};
    tokio::task::spawn_blocking(functions).await.unwrap();
    let (proxy, _) = proxy_with_policy("policy-multi", "unknown = \"refuse\"\n");
    until_ok(&connect(&proxy.url("postgres", "postgres")).await, "SELECT pol_peek()").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let tags = |replies: &[crate::support::Msg]| replies.iter().map(|m| m.tag as char).collect::<String>();
        let failing = pipelined(&mut login_direct("postgres"), &["SELECT 1; SELECT 1/0; SELECT 3"]);
        let mut raw = Raw::login(addr, "postgres");
        let refused = pipelined(&mut raw, &["SELECT 1 AS kept; SELECT pol_touch(); SELECT 3"]);
        assert_eq!(tags(&refused[0]), tags(&failing[0]), "through capgate, against PostgreSQL failing the same place");
        assert!(refused[0].iter().any(|m| m.tag == b'D' && m.body.ends_with(b"1")), "the first statement's row is missing");
        let error = refused[0].iter().find(|m| m.tag == b'E').unwrap_or_else(|| panic!("not refused"));
        assert_eq!(error.field(b'C').as_deref(), Some("0A000"));
        assert_eq!(tags(&pipelined(&mut raw, &["SELECT 4"])[0]), "TDCZ");
    })
    .await
    .unwrap();
}
