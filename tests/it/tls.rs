//! TLS on both legs: applications to the proxy (`[tls]`), and the proxy to the primary
//! (`sslmode` in the primary URL).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use capgate::testbed::{PgOptions, PgServer};

use crate::support::{pg_bin, scratch, Proxy};

/// A test CA and a server certificate it signed for localhost / 127.0.0.1.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

pub fn make_certs(name: &str) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = scratch(name);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("capgate test CA {name}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    Certs { dir }
}

fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| make_certs("tls-main"))
}

/// psql with a libpq connection string; (success, stdout, stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(pg_bin("psql")).args(["-X", "-tA", "-c", sql, conninfo]).output().expect("run psql");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tls_section(mode: &str, certs: &Certs) -> String {
    format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nmode = \"{mode}\"\n", certs.cert().display(), certs.key().display())
}

fn conninfo(proxy: &Proxy, extra: &str) -> String {
    format!("host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres {extra}", proxy.addr.port())
}

#[test]
fn clients_can_use_tls_with_full_verification() {
    let c = certs();
    let proxy = Proxy::start(&tls_section("prefer", c));
    let (ok, out, err) = psql(&conninfo(&proxy, &format!("sslmode=verify-full sslrootcert={}", c.ca().display())), "\\conninfo");
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    // Plain text is still accepted in prefer mode.
    let (ok, out, err) = psql(&conninfo(&proxy, "sslmode=disable"), "SELECT 'plain'");
    assert!(ok && out.trim() == "plain", "{err}");
    // PostgreSQL 17's direct TLS negotiation, when this libpq knows it.
    let (ok, out, err) =
        psql(&conninfo(&proxy, &format!("sslmode=verify-full sslnegotiation=direct sslrootcert={}", c.ca().display())), "SELECT 'direct'");
    if !err.contains("invalid connection option \"sslnegotiation\"") {
        assert!(ok && out.trim() == "direct", "{err}");
    }
}

#[test]
fn require_mode_refuses_plain_text() {
    let c = certs();
    let proxy = Proxy::start(&tls_section("require", c));
    let (ok, _, err) = psql(&conninfo(&proxy, "sslmode=disable"), "SELECT 1");
    assert!(!ok);
    assert!(err.contains("capgate requires TLS"), "{err}");
    let (ok, _, err) = psql(&conninfo(&proxy, "sslmode=require"), "SELECT 1");
    assert!(ok, "{err}");
}

fn tls_primary() -> &'static PgServer {
    static P: OnceLock<PgServer> = OnceLock::new();
    P.get_or_init(|| {
        let c = certs();
        PgServer::start(PgOptions { ssl: Some((c.cert(), c.key())), ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn primary_url(pg: &PgServer, params: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres?{params}", pg.port())
}

#[test]
fn the_link_to_the_primary_is_verified_when_the_url_says_so() {
    let pg = tls_primary();
    let c = certs();
    let proxy = Proxy::start_for(&primary_url(pg, &format!("sslmode=verify-full&sslrootcert={}", c.ca().display())), "");
    let (ok, out, err) = psql(&conninfo(&proxy, "sslmode=disable"), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t", "the proxy's session on the primary is encrypted");

    // A certificate from another CA is refused, and the client is told why.
    let other = make_certs("tls-other-ca");
    let proxy = Proxy::start_for(&primary_url(pg, &format!("sslmode=verify-full&sslrootcert={}", other.ca().display())), "");
    let (ok, _, err) = psql(&conninfo(&proxy, "sslmode=disable"), "SELECT 1");
    assert!(!ok);
    assert!(err.contains("cannot connect to the primary") && err.contains("certificate"), "{err}");

    // sslmode=require against a server without TLS fails instead of silently going plain.
    let plain = crate::support::primary();
    let proxy = Proxy::start_for(&primary_url(plain, "sslmode=require"), "");
    let (ok, _, err) = psql(&conninfo(&proxy, "sslmode=disable"), "SELECT 1");
    assert!(!ok && err.contains("does not accept TLS"), "{err}");
}

/// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`) must carry ALPN `postgresql`, as
/// PostgreSQL 17 requires: without it the client is refused with PostgreSQL's own error.
#[tokio::test]
async fn direct_tls_without_alpn_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = certs();
    let proxy = Proxy::start(&tls_section("prefer", c));
    let url = capgate::config::DbUrl::parse(
        &format!("postgres://postgres@localhost/postgres?sslmode=verify-full&sslrootcert={}", c.ca().display()),
        std::path::Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let with_alpn = capgate::net::tls::client_config(&url).unwrap_or_else(|e| panic!("{e}")).expect("a TLS config");
    let mut without = (*with_alpn).clone();
    without.alpn_protocols.clear();
    let startup = crate::support::startup(&[("user", "postgres"), ("database", "postgres")]);
    for (config, refused) in [(std::sync::Arc::new(without), true), (with_alpn, false)] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(&startup).await.unwrap();
        let mut first = [0u8; 1];
        tls.read_exact(&mut first).await.expect("no answer");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tls.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest).into_owned();
        if refused {
            assert_eq!(first[0], b'E', "{text}");
            assert!(text.contains("08P01") && text.contains("without ALPN"), "{text}");
        } else {
            assert_eq!(first[0], b'R', "a direct TLS client with ALPN was not served: {text}");
        }
    }
}
