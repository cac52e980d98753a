//! The fault-injecting link and the two-site beds, measured through real PostgreSQL
//! connections (tokio-postgres), as replication tests will use them.
//!
//! Timing assertions are lower bounds only: a loaded machine makes things slower, never
//! faster. "At once" is checked as "an error, not a hang" under a generous client deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capgate::config::Config;
use capgate::testbed::link::Link;
use capgate::testbed::sites::{NetnsSites, Partition, TwoSites};
use tokio::time::timeout;

/// One bed for the whole binary; tests that inject faults put their own link in front of
/// its replica so they never disturb each other.
fn sites() -> &'static TwoSites {
    static SITES: OnceLock<TwoSites> = OnceLock::new();
    SITES.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

/// A fresh link in front of the shared bed's replica.
fn replica_link() -> Link {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, sites().b_replica().port()));
    Link::start(target).expect("start link")
}

fn url_of(link: &Link) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=10", link.addr().port())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn one(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client.query_one("select 1", &[]).await?.get(0))
}

#[tokio::test]
async fn two_site_bed_serves_both_sites_and_a_config() {
    let s = sites();
    let primary = connect(&s.a_primary_url()).await.unwrap();
    let via_link = connect(&s.b_replica_url_via_link()).await.unwrap();
    let direct = connect(&s.b_replica_url_direct()).await.unwrap();
    via_link.batch_execute("create table bed_check (x int); insert into bed_check values (7)").await.unwrap();
    let x: i32 = direct.query_one("select x from bed_check", &[]).await.unwrap().get(0);
    assert_eq!(x, 7, "the link leads to the replica");
    assert!(primary.query_opt("select 1 from pg_class where relname = 'bed_check'", &[]).await.unwrap().is_none());
    assert!(s.link().stats().bytes_to_target > 0);
    let text = s.a_config();
    let config = Config::parse(&text, std::path::Path::new("/tmp/capgate.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.site, "a");
    assert_eq!(config.replicas.len(), 1);
    assert_eq!(config.replicas[0].name, "b");
    assert!(text.contains(&format!("127.0.0.1:{}/", s.link().addr().port())), "{text}");
}

#[tokio::test]
async fn latency_delays_a_query_round_trip() {
    let link = replica_link();
    let client = connect(&url_of(&link)).await.unwrap();
    one(&client).await.unwrap();
    link.set_latency(Duration::from_millis(100));
    // The simple protocol: one round trip (query_one would take two, Parse and Execute).
    let t = Instant::now();
    client.simple_query("select 1").await.unwrap();
    let rtt = t.elapsed();
    eprintln!("select 1 through a 100 ms link: {rtt:?}");
    assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?} with 100 ms each way");
    link.set_latency(Duration::ZERO);
    let t = Instant::now();
    client.simple_query("select 1").await.unwrap();
    eprintln!("select 1 after setting latency back to 0: {:?}", t.elapsed());
}

#[tokio::test]
async fn latency_keeps_throughput_and_order() {
    let link = replica_link();
    let client = connect(&url_of(&link)).await.unwrap();
    link.set_latency(Duration::from_millis(50));
    // 2 MB up as a parameter and the same 2 MB echoed back, compared byte for byte (the
    // pattern's period is prime, so a moved chunk shows).
    let up: String = (0..2_000_000u32).map(|i| char::from(b'a' + (i % 23) as u8)).collect();
    let t = Instant::now();
    let row = client.query_one("select $1::text", &[&up]).await.unwrap();
    let took = t.elapsed();
    let down: String = row.get(0);
    assert!(down == up, "bytes reordered or changed on the way");
    eprintln!("2 MB up and 2 MB down through a 50 ms link: {took:?} (stats {:?})", link.stats());
    assert!(took >= Duration::from_millis(100));
}

#[tokio::test]
async fn blackhole_hangs_a_query_and_restore_lets_a_new_connection_work() {
    let link = replica_link();
    let client = connect(&url_of(&link)).await.unwrap();
    one(&client).await.unwrap();
    link.blackhole();
    let hung = timeout(Duration::from_millis(1500), one(&client)).await;
    assert!(hung.is_err(), "a query through a blackhole returned: {hung:?}");
    // New connections are accepted by the link but hear nothing either.
    let fresh = timeout(Duration::from_millis(1000), connect(&url_of(&link))).await;
    assert!(fresh.is_err(), "logged in through a blackhole");
    link.restore();
    let client = timeout(Duration::from_secs(20), connect(&url_of(&link))).await.expect("connect hung").unwrap();
    assert_eq!(one(&client).await.unwrap(), 1);
    assert!(link.stats().bytes_dropped > 0);
}

#[tokio::test]
async fn reset_fails_an_open_connection_at_once() {
    let link = replica_link();
    let client = connect(&url_of(&link)).await.unwrap();
    one(&client).await.unwrap();
    let t = Instant::now();
    link.reset();
    let res = timeout(Duration::from_secs(10), one(&client)).await.expect("the query hung after reset");
    let err = res.expect_err("a query after reset succeeded");
    eprintln!("error {:?} after reset: {err}", t.elapsed());
    assert!(err.as_db_error().is_none(), "expected a connection error, got {err}");
    let again = connect(&url_of(&link)).await.unwrap();
    assert_eq!(one(&again).await.unwrap(), 1);
}

#[tokio::test]
async fn refuse_refuses_new_connections_only() {
    let link = replica_link();
    let old = connect(&url_of(&link)).await.unwrap();
    link.refuse(true);
    let refused = timeout(Duration::from_secs(10), connect(&url_of(&link))).await.expect("connect hung");
    assert!(refused.is_err(), "connected through a refusing link");
    assert_eq!(one(&old).await.unwrap(), 1, "refusing must not touch open connections");
    link.refuse(false);
    let new = connect(&url_of(&link)).await.unwrap();
    assert_eq!(one(&new).await.unwrap(), 1);
    assert_eq!(link.stats().refused, 1);
}

#[tokio::test]
async fn bandwidth_cap_slows_a_large_result() {
    let link = replica_link();
    let client = connect(&url_of(&link)).await.unwrap();
    link.set_bandwidth(Some(500_000));
    let t = Instant::now();
    let row = client.query_one("select repeat('x', 500000)", &[]).await.unwrap();
    let took = t.elapsed();
    assert_eq!(row.get::<_, String>(0).len(), 500_000);
    eprintln!("500 kB at 500 kB/s: {took:?}");
    assert!(took >= Duration::from_millis(800), "{took:?}");
}

/// The namespace bed: a real PostgreSQL connection across a veth pair, cut by iptables and
/// by the link going down, and healed. Runs only as root; skipped elsewhere, except under CI (`CI` set), where it fails instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_partitions_and_heals_a_real_connection() {
    if !NetnsSites::usable_for("netns_partitions_and_heals_a_real_connection") {
        return;
    }
    let bed = tokio::task::spawn_blocking(NetnsSites::start).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("{}?connect_timeout=10", bed.b_replica_url());
    let client = connect(&url).await.unwrap();
    let row = client.query_one("select host(inet_server_addr()), host(inet_client_addr())", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), bed.b_replica_addr().ip().to_string(), "not across the veth pair");
    assert_eq!(row.get::<_, String>(1), bed.a_addr().to_string());
    let (ns_a, ns_b) = bed.namespaces();
    assert!(ns_a.contains(&std::process::id().to_string()) && ns_b.ends_with("-b"));
    assert_eq!(tokio::task::block_in_place(|| bed.b_replica().psql("select 2")).unwrap(), "2");

    // Silent: the query hangs; after healing, a new connection works.
    bed.partition(Partition::Drop).unwrap();
    let hung = timeout(Duration::from_millis(1500), one(&client)).await;
    assert!(hung.is_err(), "a query through DROP returned: {hung:?}");
    bed.heal().unwrap();
    let client = connect(&url).await.unwrap();
    assert_eq!(one(&client).await.unwrap(), 1);

    // Fast: the open connection fails at once with a connection error.
    bed.partition(Partition::Reject).unwrap();
    let t = Instant::now();
    let res = timeout(Duration::from_secs(10), one(&client)).await.expect("a query through REJECT hung");
    let err = res.expect_err("a query through REJECT succeeded");
    eprintln!("REJECT: {err} after {:?}", t.elapsed());
    bed.heal().unwrap();
    let client = connect(&url).await.unwrap();
    assert_eq!(one(&client).await.unwrap(), 1);

    // Link down: new connections fail at once; after healing they work again.
    bed.partition(Partition::LinkDown).unwrap();
    let t = Instant::now();
    let res = timeout(Duration::from_secs(10), connect(&url)).await.expect("connect with the link down hung");
    assert!(res.is_err(), "connected with the link down");
    eprintln!("link down: connect failed after {:?}", t.elapsed());
    bed.heal().unwrap();
    let client = timeout(Duration::from_secs(20), connect(&url)).await.expect("connect after heal hung").unwrap();
    assert_eq!(one(&client).await.unwrap(), 1);

    let (a, b) = (ns_a.to_string(), ns_b.to_string());
    tokio::task::block_in_place(|| drop(bed));
    let list = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&a) && !list.contains(&b), "namespaces left behind:\n{list}");
}
