//! Protocol edge cases of the relay: what a client sees must be what PostgreSQL itself would
//! have said.

use crate::support::{startup_minor, Proxy, Raw};

/// A `[[users]]` login is authenticated by capgate, which then speaks protocol 3.0 to the
/// primary: a client asking for 3.2 and a protocol option is told so with the same
/// NegotiateProtocolVersion the primary sends for that startup, before authentication.
#[test]
fn proxy_side_logins_negotiate_the_protocol_version_as_the_primary_does() {
    let proxy = Proxy::start("[[users]]\nname = \"alice\"\npassword = \"wonderland\"\n");
    let asks = |user: &str| startup_minor(2, &[("user", user), ("database", "postgres"), ("_pq_.capgate_test", "on")]);
    let mut direct = Raw::connect(crate::support::direct_addr());
    direct.send(&asks("postgres"));
    let from_primary = direct.recv().expect("the primary answered nothing");
    assert_eq!(from_primary.tag, b'v', "PostgreSQL 15 negotiates 3.2 down");

    let mut via = Raw::connect(proxy.addr);
    via.send(&asks("alice"));
    let first = via.recv().expect("capgate answered nothing");
    assert_eq!((first.tag, &first.body), (b'v', &from_primary.body), "capgate's negotiation differs from the primary's");
    let auth = via.recv().expect("no authentication request after the negotiation");
    assert_eq!((auth.tag, auth.body.get(..4)), (b'R', Some(&10i32.to_be_bytes()[..])), "expected AuthenticationSASL");

    // A 3.0 client without options gets no negotiation message.
    let mut plain = Raw::connect(proxy.addr);
    plain.send(&startup_minor(0, &[("user", "alice"), ("database", "postgres")]));
    assert_eq!(plain.recv().map(|m| m.tag), Some(b'R'));
}

/// After an extended-protocol error PostgreSQL discards every message up to Sync, a Query
/// among them: the client gets one ErrorResponse and one ReadyForQuery, through capgate as
/// directly, and the session goes on (capgate's reply accounting does not wait for the
/// discarded Query's answer; relay.rs unit tests check that it is idle with nothing owed).
#[test]
fn a_query_sent_while_the_server_discards_after_an_error_is_discarded_alike() {
    use crate::support::{frame, login_direct, query};
    let proxy = Proxy::start("");
    let mut bad_parse = frame(b'P', b"\0SELEC nonsense\0\0\0");
    bad_parse.extend(query("SELECT 1"));
    bad_parse.extend(frame(b'S', b""));
    let mut seen = Vec::new();
    for mut raw in [login_direct("postgres"), Raw::login(proxy.addr, "postgres")] {
        raw.send(&bad_parse);
        let tags: Vec<u8> = raw.until_ready().iter().map(|m| m.tag).collect();
        raw.send(&query("SELECT 2"));
        let after: Vec<u8> = raw.until_ready().iter().map(|m| m.tag).collect();
        seen.push((String::from_utf8_lossy(&tags).into_owned(), String::from_utf8_lossy(&after).into_owned()));
    }
    assert_eq!(seen[0], ("EZ".to_owned(), "TDCZ".to_owned()), "PostgreSQL itself");
    assert_eq!(seen[1], seen[0], "through capgate");
}
