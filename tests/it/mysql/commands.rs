//! The less common commands through capgate: COM_CHANGE_USER, COM_STATISTICS, COM_FIELD_LIST,
//! COM_SET_OPTION, COM_STMT_SEND_LONG_DATA, cursors (COM_STMT_FETCH), COM_STMT_RESET, and
//! payloads past 16 MiB (continuation packets).

use mysql_async::prelude::*;

use capgate::testbed::{MariaDb, MariaDbOptions};

use super::raw::Raw;
use super::support::{connect, primary, MyProxy, APP_PASSWORD};

/// The statement id of a PREPARE_OK, after reading the rest of the prepare reply.
fn prepare(raw: &mut Raw, sql: &str) -> [u8; 4] {
    let mut payload = vec![0x16];
    payload.extend_from_slice(sql.as_bytes());
    raw.send_packet(0, &payload);
    let ok = raw.recv().expect("prepare reply");
    assert_eq!(ok.payload[0], 0, "{}", ok.text());
    let columns = u16::from_le_bytes([ok.payload[5], ok.payload[6]]);
    let params = u16::from_le_bytes([ok.payload[7], ok.payload[8]]);
    // Definitions, each group followed by an EOF (the raw client has no DEPRECATE_EOF).
    for n in [params, columns] {
        if n > 0 {
            for _ in 0..=n {
                raw.recv().expect("definition");
            }
        }
    }
    [ok.payload[1], ok.payload[2], ok.payload[3], ok.payload[4]]
}

#[test]
fn rarely_used_commands_are_relayed() {
    let proxy = MyProxy::start("");
    primary().sql("CREATE DATABASE IF NOT EXISTS cmds; CREATE TABLE IF NOT EXISTS cmds.t (a INT, b VARCHAR(10)); DELETE FROM cmds.t; INSERT INTO cmds.t VALUES (1,'x'),(2,'y'),(3,'z')").unwrap();
    let mut raw = Raw::login(proxy.addr);
    // COM_STATISTICS: a bare text packet.
    raw.send_packet(0, &[0x09]);
    assert!(raw.recv().expect("statistics").text().starts_with("Uptime: "));
    // COM_INIT_DB, then COM_FIELD_LIST: definitions and an EOF.
    raw.send_packet(0, b"\x02cmds");
    assert_eq!(raw.recv().expect("init db").payload[0], 0);
    raw.send_packet(0, b"\x04t\0");
    let mut definitions = 0;
    loop {
        let p = raw.recv().expect("field list");
        if p.payload[0] == 0xfe {
            break;
        }
        definitions += 1;
    }
    assert_eq!(definitions, 2);
    // COM_SET_OPTION turns multi-statements on after the handshake: two results follow.
    raw.send_packet(0, &[0x1b, 0, 0]);
    assert_eq!(raw.recv().expect("set option").payload[0], 0xfe);
    raw.send(&Raw::query_packet("SELECT 1; SELECT 2"));
    let first = raw.reply();
    let second = raw.reply();
    assert!(first.last().is_some_and(|p| p.payload[3] & 0x08 != 0), "MORE_RESULTS_EXISTS on the first: {first:?}");
    assert!(second.iter().any(|p| p.payload == b"\x012"), "{second:?}");
    raw.send_packet(0, &[0x1b, 1, 0]);
    raw.recv().expect("set option off");

    // COM_STMT_SEND_LONG_DATA (no reply), then execute.
    let id = prepare(&mut raw, "SELECT CONCAT(?, '!')");
    for chunk in [&b"long "[..], b"data"] {
        let mut p = vec![0x18];
        p.extend_from_slice(&id);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(chunk);
        raw.send_packet(0, &p);
    }
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 0xfe, 0]);
    raw.send_packet(0, &exec);
    let reply = raw.reply();
    assert!(reply.iter().any(|p| p.text().contains("long data!")), "{reply:?}");
    // A cursor: the execute reply ends after the definitions; COM_STMT_FETCH brings rows.
    let id = prepare(&mut raw, "SELECT a FROM t ORDER BY a");
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.extend_from_slice(&[1, 1, 0, 0, 0]);
    raw.send_packet(0, &exec);
    let head: Vec<_> = (0..3).map(|_| raw.recv().expect("cursor reply")).collect();
    assert_eq!(head[2].payload[0], 0xfe, "{head:?}");
    assert_ne!(head[2].payload[3] & 0x40, 0, "CURSOR_EXISTS");
    let mut fetch = vec![0x1c];
    fetch.extend_from_slice(&id);
    fetch.extend_from_slice(&2u32.to_le_bytes());
    raw.send_packet(0, &fetch);
    let rows: Vec<_> = (0..3).map(|_| raw.recv().expect("fetched")).collect();
    assert_eq!((rows[0].payload[0], rows[1].payload[0], rows[2].payload[0]), (0, 0, 0xfe), "{rows:?}");
    // COM_STMT_RESET closes the cursor; COM_STMT_CLOSE has no reply.
    let mut reset = vec![0x1a];
    reset.extend_from_slice(&id);
    raw.send_packet(0, &reset);
    assert_eq!(raw.recv().expect("reset").payload[0], 0);
    let mut close = vec![0x19];
    close.extend_from_slice(&id);
    raw.send_packet(0, &close);
    assert_eq!(raw.value("SELECT COUNT(*) FROM t"), "3");
}

/// On a MariaDB of its own: the test raises `max_allowed_packet`, a server-wide setting the
/// other tests of the shared primary rely on (`mysql::verify` compares a row of two 9 MB values
/// against the default 16 MB; raised under it, it would no longer test that).
#[tokio::test(flavor = "multi_thread")]
async fn change_user_and_payloads_past_sixteen_mib() {
    let server = tokio::task::spawn_blocking(|| {
        MariaDb::start(MariaDbOptions { conf: vec![("max-allowed-packet".into(), "67108864".into())] })
            .unwrap_or_else(|e| panic!("a MariaDB of its own: {e}"))
    })
    .await
    .expect("start");
    server
        .sql(&format!("CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}'; GRANT ALL PRIVILEGES ON *.* TO 'app'@'%'"))
        .expect("the app user");
    let proxy = MyProxy::start_for(&format!("mysql://capgate@127.0.0.1:{}/", server.port()), "max_message_size = 67108864");
    let mut c = connect(&proxy.url("capgate", None, "")).await;
    c.change_user(mysql_async::ChangeUserOpts::default().with_user(Some("app".into())).with_pass(Some(APP_PASSWORD.into())))
        .await
        .expect("COM_CHANGE_USER through capgate");
    let who: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"));
    // 20 MB up and down, as a text query and as a prepared statement's parameter.
    let big: String = (0..20_000_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let len: Option<u64> = c.query_first(format!("SELECT LENGTH('{big}')")).await.unwrap();
    assert_eq!(len, Some(20_000_000));
    let back: Option<Vec<u8>> = c.exec_first("SELECT CONCAT(?, 'end')", (big.as_bytes(),)).await.unwrap();
    let back = back.expect("a value");
    assert_eq!(back.len(), 20_000_003);
    assert!(back.starts_with(b"abcdef") && back.ends_with(b"end"));
}
