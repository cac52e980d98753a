//! Hostile and broken input: each gets its error, the connection that sent it closes, and a
//! second client is served throughout.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{connect, frame, query, startup, Proxy, Raw};

/// A client that must keep working while others misbehave.
async fn bystander(proxy: &Proxy) -> tokio_postgres::Client {
    let c = connect(&proxy.url("postgres", "postgres")).await;
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    c
}

async fn still_served(c: &tokio_postgres::Client) {
    assert_eq!(c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
}

fn fatal_code(raw: &mut Raw) -> Option<String> {
    let m = raw.recv()?;
    assert_eq!(m.tag, b'E', "expected an ErrorResponse, got {m:?}");
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    m.field(b'C')
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    let code = tokio::task::spawn_blocking({
        let addr = proxy.addr;
        move || {
            let mut raw = Raw::connect(addr);
            raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let code = fatal_code(&mut raw);
            assert!(raw.closed());
            code
        }
    })
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("08P01"));
    still_served(&other).await;
}

#[tokio::test]
async fn garbage_frame_after_login() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    let addr = proxy.addr;
    let code = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::login(addr, "postgres");
        // A length word of 3 cannot be: it counts itself.
        raw.send(&[b'Q', 0, 0, 0, 3, 0xde, 0xad]);
        let code = fatal_code(&mut raw);
        assert!(raw.closed());
        code
    })
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("08P01"));
    still_served(&other).await;
}

#[tokio::test]
async fn a_frame_claiming_two_gigabytes_is_refused_before_its_body() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    let addr = proxy.addr;
    let (code, message) = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::login(addr, "postgres");
        raw.send(&[b'Q', 0x80, 0, 0, 0]);
        raw.send(b"SELECT 1");
        let m = raw.recv().expect("an error before close");
        assert!(raw.closed());
        (m.field(b'C'), m.field(b'M').unwrap_or_default())
    })
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("08P01"));
    assert!(message.contains("2147483652") || message.contains("limit"), "{message}");
    still_served(&other).await;
}

#[tokio::test]
async fn a_truncated_frame_ends_only_its_own_session() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    let before: i64 =
        other.query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'truncated'", &[]).await.unwrap().get(0);
    assert_eq!(before, 0);
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(addr);
        raw.send(&startup(&[("user", "postgres"), ("database", "postgres"), ("application_name", "truncated")]));
        raw.until_ready();
        // Claims 100 bytes, sends 10, then hangs up.
        let mut partial = vec![b'Q'];
        partial.extend_from_slice(&100u32.to_be_bytes());
        partial.extend_from_slice(b"SELECT 1;;");
        raw.send(&partial);
        raw.stream.flush().unwrap();
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(raw.closed(), "the proxy closes the session");
    })
    .await
    .unwrap();
    // The primary's backend for that session goes away too: nothing is left stuck.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 =
            other.query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'truncated'", &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the primary still holds the truncated session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_served(&other).await;
}

#[tokio::test]
async fn startup_oddities_get_postgres_answers() {
    let proxy = Proxy::start("");
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        // GSSENCRequest is declined with 'N'; the client then starts in plain text.
        let mut raw = Raw::connect(addr);
        let mut gss = 8u32.to_be_bytes().to_vec();
        gss.extend_from_slice(&80877104u32.to_be_bytes());
        raw.send(&gss);
        let mut answer = [0u8; 1];
        std::io::Read::read_exact(&mut raw.stream, &mut answer).unwrap();
        assert_eq!(answer[0], b'N');
        raw.send(&startup(&[("user", "postgres")]));
        assert_eq!(raw.until_ready().last().map(|m| m.tag), Some(b'Z'));

        // Without TLS configured, an SSLRequest is declined the same way.
        let mut raw = Raw::connect(addr);
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&80877103u32.to_be_bytes());
        raw.send(&ssl);
        std::io::Read::read_exact(&mut raw.stream, &mut answer).unwrap();
        assert_eq!(answer[0], b'N');

        // Protocol 2 is gone.
        let mut raw = Raw::connect(addr);
        let mut v2 = startup(&[("user", "postgres")]);
        v2[4..8].copy_from_slice(&0x0002_0000u32.to_be_bytes());
        raw.send(&v2);
        assert_eq!(fatal_code(&mut raw).as_deref(), Some("0A000"));

        // No user name.
        let mut raw = Raw::connect(addr);
        raw.send(&startup(&[("database", "postgres")]));
        assert_eq!(fatal_code(&mut raw).as_deref(), Some("28000"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn function_call_is_relayed() {
    let proxy = Proxy::start("");
    let addr = proxy.addr;
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::primary().port()).parse().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for target in [addr, direct] {
            let mut raw = Raw::login(target, "postgres");
            // FunctionCall int4pl (oid 177) with two binary int4 arguments, binary result.
            let mut body = 177u32.to_be_bytes().to_vec();
            body.extend_from_slice(&1u16.to_be_bytes());
            body.extend_from_slice(&1u16.to_be_bytes());
            body.extend_from_slice(&2u16.to_be_bytes());
            for v in [40i32, 2] {
                body.extend_from_slice(&4i32.to_be_bytes());
                body.extend_from_slice(&v.to_be_bytes());
            }
            body.extend_from_slice(&1u16.to_be_bytes());
            raw.send(&frame(b'F', &body));
            let msgs = raw.until_ready();
            let v = msgs.iter().find(|m| m.tag == b'V').expect("FunctionCallResponse").clone();
            results.push(v.body);
            raw.send(&query("SELECT 1"));
            assert!(raw.until_ready().iter().any(|m| m.tag == b'D'));
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(&results[0][4..], &42i32.to_be_bytes());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn unreachable_primary_is_named_in_the_error() {
    let port = capgate::testbed::free_port();
    let proxy = Proxy::start_for(&format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=2"), "");
    let e = tokio_postgres::connect(&proxy.url("postgres", "postgres"), tokio_postgres::NoTls).await.err().unwrap();
    let db = e.as_db_error().expect("a database error, not a dropped connection");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains(&format!("127.0.0.1:{port}")), "{}", db.message());
    assert!(db.message().contains("primary of site \"test\""), "{}", db.message());
}

#[tokio::test]
async fn connections_over_max_connections_get_53300() {
    let proxy = Proxy::start("max_connections = 2\n");
    let a = connect(&proxy.url("postgres", "postgres")).await;
    let b = connect(&proxy.url("postgres", "postgres")).await;
    let e = tokio_postgres::connect(&proxy.url("postgres", "postgres"), tokio_postgres::NoTls).await.err().unwrap();
    assert_eq!(crate::support::sqlstate(&e), "53300");
    still_served(&a).await;
    drop(b);
    // The slot frees when a session ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio_postgres::connect(&proxy.url("postgres", "postgres"), tokio_postgres::NoTls).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_like_postgres_while_others_are_served() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    for _ in 0..3 {
        let url = format!("postgres://scram_user:not-the-password@{}/postgres", proxy.addr);
        let e = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.err().expect("wrong password accepted");
        assert_eq!(crate::support::sqlstate(&e), "28P01");
        still_served(&other).await;
    }
}

#[tokio::test]
async fn valid_messages_sent_before_a_broken_one_still_run() {
    let proxy = Proxy::start("");
    let other = bystander(&proxy).await;
    other.batch_execute("DROP TABLE IF EXISTS before_bad; CREATE TABLE before_bad (k int)").await.unwrap();
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::login(addr, "postgres");
        // One write: a complete INSERT, then a frame with an impossible length.
        let mut bytes = query("INSERT INTO before_bad VALUES (1)");
        bytes.extend_from_slice(&[b'B', 0, 0, 0, 2]);
        raw.send(&bytes);
        while raw.recv().is_some() {}
    })
    .await
    .unwrap();
    // The proxy closes the client as soon as it sees the broken frame; the primary may still
    // be running the INSERT then, so wait for it (bounded) rather than race it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let n = loop {
        let n: i64 = other.query_one("SELECT count(*) FROM before_bad", &[]).await.unwrap().get(0);
        if n == 1 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n, 1, "the INSERT before the broken frame reached the primary, as it would directly");
}
