//! Bad input gets a clear error and never disturbs another client: a second client is served
//! after each case.

use std::time::Duration;

use mysql_async::prelude::*;

use super::raw::{Pkt, Raw};
use super::support::{connect, MyProxy};

/// The lone reply packet to a raw login attempt or command, and whether the peer then closed.
fn answer_then_closed(raw: &mut Raw) -> (Pkt, bool) {
    let p = raw.recv().expect("an answer");
    (p, raw.closed())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_an_error_and_others_are_served() {
    let proxy = MyProxy::start("max_connections = 4\nauthentication_timeout = \"1s\"");
    let mut bystander = connect(&proxy.url("capgate", None, "mysql")).await;
    let mut still_served = async || {
        let v: Option<i32> = bystander.query_first("SELECT 7").await.expect("the other client is served");
        assert_eq!(v, Some(7));
    };

    // Garbage instead of a handshake response.
    let mut raw = Raw::connect(proxy.addr);
    raw.recv().expect("greeting");
    raw.send_packet(1, b"this is not a handshake response at all, it is garbage of a certain length");
    let (p, closed) = answer_then_closed(&mut raw);
    assert_eq!((p.code(), p.seq, closed), (Some(1043), 2, true), "{}", p.text());
    still_served().await;

    // A handshake response claiming 16 MiB.
    let mut raw = Raw::connect(proxy.addr);
    raw.recv().expect("greeting");
    raw.send(&[0xff, 0xff, 0xff, 1, 0, 0]);
    let (p, closed) = answer_then_closed(&mut raw);
    assert_eq!((p.code(), closed), (Some(1043), true), "{}", p.text());
    assert!(p.text().contains("larger than"), "{}", p.text());
    still_served().await;

    // A client that connects and says nothing: the authentication timeout.
    let mut raw = Raw::connect(proxy.addr);
    raw.recv().expect("greeting");
    let (p, closed) = answer_then_closed(&mut raw);
    assert_eq!((p.code(), closed), (Some(1159), true), "{}", p.text());
    still_served().await;

    // After login: a command packet announcing 16 MiB that never arrives.
    let mut raw = Raw::login(proxy.addr);
    raw.send(&[0xff, 0xff, 0xff, 0, 0x03, b'S', b'E', b'L']);
    let (p, closed) = answer_then_closed(&mut raw);
    assert_eq!((p.code(), closed), (Some(1159), true), "{}", p.text());
    still_served().await;

    // An unknown command, a statement id never prepared, a bulk execute (not offered): the
    // session goes on after each.
    let mut raw = Raw::login(proxy.addr);
    raw.send_packet(0, &[0x99, 1, 2, 3]);
    assert_eq!(raw.recv().expect("answer").code(), Some(1047));
    raw.send_packet(0, &[0x17, 0xe7, 0x03, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(raw.recv().expect("answer").code(), Some(1243));
    raw.send_packet(0, &[0xfa, 1, 0, 0, 0, 0, 0]);
    assert_eq!(raw.recv().expect("answer").code(), Some(1047));
    raw.send_packet(0, &[]);
    assert!(raw.recv().expect("answer").is_err(), "an empty packet is an error");
    assert_eq!(raw.value("SELECT 'alive'"), "alive");
    // A wrong sequence id: the primary's own answer, and it closes the connection.
    raw.send_packet(5, b"\x03SELECT 1");
    let (p, closed) = answer_then_closed(&mut raw);
    assert!(p.is_err() && closed, "{p:?} closed={closed}");
    still_served().await;

    // Too many clients: the limit counts the bystander and this one.
    let _a = connect(&proxy.url("capgate", None, "")).await;
    let _b = connect(&proxy.url("capgate", None, "")).await;
    let _c = connect(&proxy.url("capgate", None, "")).await;
    let mut raw = Raw::connect(proxy.addr);
    let (p, closed) = answer_then_closed(&mut raw);
    assert_eq!((p.code(), p.seq, closed), (Some(1040), 0, true), "{}", p.text());
    assert!(p.text().contains("Too many connections"));
    let err = mysql_async::Conn::from_url(proxy.url("capgate", None, "")).await.unwrap_err();
    assert_eq!(super::support::error_code(&err), 1040);
    still_served().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_primary_is_named() {
    let port = capgate::testbed::free_port();
    let proxy = MyProxy::start_for(&format!("mysql://capgate@127.0.0.1:{port}/?connect_timeout=2"), "");
    let mut raw = Raw::connect(proxy.addr);
    let (p, closed) = tokio::task::spawn_blocking(move || answer_then_closed(&mut raw)).await.unwrap();
    assert_eq!((p.code(), p.seq, closed), (Some(1429), 0, true), "{}", p.text());
    assert!(p.text().contains(&format!("127.0.0.1:{port}")) && p.text().contains("site \"test\""), "{}", p.text());
    let err = tokio::time::timeout(Duration::from_secs(20), mysql_async::Conn::from_url(proxy.url("capgate", None, ""))).await.unwrap();
    assert_eq!(super::support::error_code(&err.unwrap_err()), 1429);
}
