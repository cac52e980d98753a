//! Authentication through capgate: passed through to the primary (mysql_native_password,
//! ed25519; wrong passwords get the primary's own error), capgate's own `[[users]]`, TLS from
//! clients to capgate and from capgate to a TLS primary.

use std::process::Output;

use mysql_async::prelude::*;

use super::support::{connect, error_code, mariadb, primary, url_at, MyProxy, APP_PASSWORD, ED25519_PASSWORD};
use capgate::testbed::{MariaDb, MariaDbOptions};

/// `mariadb -u USER -pPASSWORD -e SQL` at `port`, plus `extra` arguments.
fn login(port: u16, user: &str, password: &str, extra: &[&str], sql: &str) -> Output {
    let pw = format!("--password={password}");
    let mut args = vec!["-u", user, pw.as_str(), "-N", "-B"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-e", sql]);
    mariadb(port, &args, "")
}

fn text(o: &Output) -> (bool, String, String) {
    (o.status.success(), String::from_utf8_lossy(&o.stdout).trim().to_owned(), String::from_utf8_lossy(&o.stderr).trim().to_owned())
}

#[test]
fn passwords_are_judged_by_the_primary() {
    let proxy = MyProxy::start("");
    let direct = primary().port();
    for (user, password) in [("app", APP_PASSWORD), ("edna", ED25519_PASSWORD)] {
        let (ok, out, err) = text(&login(proxy.port(), user, password, &[], "SELECT CURRENT_USER()"));
        assert!(ok, "{user} through capgate: {err}");
        assert_eq!(out, format!("{user}@%"));
        let through = text(&login(proxy.port(), user, "wrong", &[], "SELECT 1"));
        let reference = text(&login(direct, user, "wrong", &[], "SELECT 1"));
        assert!(!through.0 && through.2.contains("ERROR 1045 (28000)"), "{through:?}");
        assert_eq!(through.2, reference.2, "the primary's own error for a wrong password");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_side_users_log_in_upstream_with_the_url_credentials() {
    let proxy = MyProxy::start_for(
        &format!("mysql://app:{APP_PASSWORD}@127.0.0.1:{}/mysql", primary().port()),
        "[[users]]\nname = \"alice\"\npassword = \"alice-pw\"\n",
    );
    let mut alice = connect(&proxy.url("alice", Some("alice-pw"), "")).await;
    let who: Option<(String, String)> = alice.query_first("SELECT CURRENT_USER(), DATABASE()").await.unwrap();
    assert_eq!(who, Some(("app@%".into(), "mysql".into())), "logged in upstream as the URL's user, in its database");
    let err = mysql_async::Conn::from_url(proxy.url("alice", Some("nope"), "")).await.unwrap_err();
    assert_eq!(error_code(&err), 1045);
    assert!(err.to_string().contains("Access denied for user 'alice'@'127.0.0.1' (using password: YES)"), "{err}");
    // Users not in [[users]] still pass through (capgate re-asks with the primary's nonce).
    let mut app = connect(&proxy.url("app", Some(APP_PASSWORD), "")).await;
    let who: Option<String> = app.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"));
    let (ok, out, err) = text(&login(proxy.port(), "edna", ED25519_PASSWORD, &[], "SELECT CURRENT_USER()"));
    assert!(ok && out == "edna@%", "{err}");
    let wrong = mysql_async::Conn::from_url(url_at(proxy.port(), "app", Some("wrong"), "")).await.unwrap_err();
    assert_eq!(error_code(&wrong), 1045);
}

fn tls_primary() -> &'static MariaDb {
    static P: std::sync::OnceLock<MariaDb> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let certs = crate::tls::make_certs("mysql-tls-primary");
        let conf = vec![
            ("ssl-cert".to_owned(), certs.cert().display().to_string()),
            ("ssl-key".to_owned(), certs.key().display().to_string()),
            ("ssl-ca".to_owned(), certs.ca().display().to_string()),
        ];
        MariaDb::start(MariaDbOptions { conf }).unwrap_or_else(|e| panic!("TLS MariaDB: {e}"))
    })
}

#[test]
fn tls_on_both_legs() {
    let certs = crate::tls::make_certs("mysql-tls-proxy");
    // The primary leg: verify-full against the primary's CA.
    let primary = tls_primary();
    let ca = primary_ca();
    let tls = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nmode = \"require\"\n", certs.cert().display(), certs.key().display());
    let proxy = MyProxy::start_for(&format!("mysql://capgate@localhost:{}/?sslmode=verify-full&sslrootcert={ca}", primary.port()), &tls);
    let ca_arg = format!("--ssl-ca={}", certs.ca().display());
    let (ok, out, err) = text(&login(proxy.port(), "capgate", "", &["--ssl", &ca_arg], "SHOW STATUS LIKE 'Ssl_cipher'"));
    assert!(ok, "{err}");
    assert!(out.starts_with("Ssl_cipher\t") && out.len() > "Ssl_cipher\t".len(), "the primary sees TLS from capgate: {out:?}");
    // The client leg: the mariadb client's own view of its connection to capgate.
    let (ok, out, err) = text(&login(proxy.port(), "capgate", "", &["--ssl", &ca_arg, "--ssl-verify-server-cert"], "\\s"));
    assert!(ok, "{err}");
    assert!(out.contains("Cipher in use is"), "{out}");
    // mode = "require": a plain client is refused.
    let (ok, _, err) = text(&login(proxy.port(), "capgate", "", &["--skip-ssl"], "SELECT 1"));
    assert!(!ok && err.contains("3159") && err.contains("require"), "{err}");
    // sslmode=require towards a primary without TLS: refused, naming it.
    let plain = MyProxy::start_for(&format!("mysql://capgate@127.0.0.1:{}/?sslmode=require", super::support::primary().port()), "");
    let (ok, _, err) = text(&login(plain.port(), "capgate", "", &[], "SELECT 1"));
    assert!(!ok && err.contains("1429") && err.contains("does not offer TLS"), "{err}");
}

fn primary_ca() -> String {
    crate::support::scratch("mysql-tls-primary").join("ca.pem").display().to_string()
}

/// capgate's own MySQL connections (capture install, XA branches, recovery, the apply) speak
/// TLS as the URL's `sslmode` says, as the relay's connection to the primary does.
#[tokio::test]
async fn capgate_own_connections_use_tls_as_the_url_says() {
    use capgate::config::DbUrl;
    use capgate::store::mysql::xa::ReplicaConn;
    let url = |port: u16, query: &str| {
        DbUrl::parse(&format!("mysql://capgate@localhost:{port}/?{query}&connect_timeout=10"), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    };
    let timeout = std::time::Duration::from_secs(10);
    let tls = tls_primary().port();
    let ca = primary_ca();
    for query in [
        format!("sslmode=verify-full&sslrootcert={ca}"),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        "sslmode=require".into(),
        "sslmode=prefer".into(),
    ] {
        let mut c = match ReplicaConn::connect(&url(tls, &query), timeout).await {
            Ok(c) => c,
            Err(e) => panic!("{query}: {e}"),
        };
        let cipher: Option<(String, String)> = c.conn().query_first("SHOW STATUS LIKE 'Ssl_cipher'").await.expect("status");
        assert!(cipher.as_ref().is_some_and(|(_, v)| !v.is_empty()), "{query}: the connection is not encrypted ({cipher:?})");
    }
    // A root certificate that did not sign the server's: refused, in both verifying modes.
    let other = crate::tls::make_certs("mysql-tls-other-ca");
    for mode in ["verify-full", "verify-ca"] {
        let query = format!("sslmode={mode}&sslrootcert={}", other.ca().display());
        if let Ok(mut c) = ReplicaConn::connect(&url(tls, &query), timeout).await {
            let cipher: Option<(String, String)> = c.conn().query_first("SHOW STATUS LIKE 'Ssl_cipher'").await.expect("status");
            panic!("{query}: connected although the certificate is not signed by that root ({cipher:?})");
        }
    }
    // A server without TLS: `prefer` connects in plain text, `require` is refused.
    let plain = primary().port();
    let mut c = match ReplicaConn::connect(&url(plain, "sslmode=prefer"), timeout).await {
        Ok(c) => c,
        Err(e) => panic!("sslmode=prefer to a server without TLS: {e}"),
    };
    let one: Option<i64> = c.conn().query_first("SELECT 1").await.expect("select");
    assert_eq!(one, Some(1));
    assert!(
        ReplicaConn::connect(&url(plain, "sslmode=require"), timeout).await.is_err(),
        "sslmode=require connected to a server without TLS"
    );
}
