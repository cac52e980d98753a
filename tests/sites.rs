//! Replica health and the replica pool against a real PostgreSQL replica behind the
//! fault-injecting link (and, as root, behind real network namespaces).
//!
//! Every transition is observed through the public view ([`HealthView`]). Timing assertions
//! are generous upper bounds for "it happens", never tight ones: a loaded machine makes
//! detection slower, never faster.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capgate::config::Config;
use capgate::sites::postgres::{self, PgSite};
use capgate::sites::{HealthView, SiteError, State, Status};
use capgate::testbed::link::Link;
use capgate::testbed::sites::{NetnsSites, Partition, TwoSites};

/// How long any expected transition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// One bed for the binary; each test puts its own link in front of the replica.
fn bed() -> &'static TwoSites {
    static SITES: OnceLock<TwoSites> = OnceLock::new();
    SITES.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

fn replica_link() -> Link {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, bed().b_replica().port()));
    Link::start(target).expect("start link")
}

/// A site-A configuration whose one replica `b` is at `replica_addr`, with fast heartbeats
/// (50 ms), a 300 ms partition latency and `extra` keys for the replica.
fn config(replica_addr: SocketAddr, extra: &str) -> Config {
    let text = format!(
        "site = \"a\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\n\
         url = \"postgres://postgres@{replica_addr}/postgres?sslmode=disable&connect_timeout=3\"\n\
         heartbeat_interval = \"50ms\"\npartition_latency = \"300ms\"\n{extra}",
        bed().a_primary_url()
    );
    Config::parse(&text, Path::new("/tmp/capgate-sites-test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Starts the health loop and pool of the one replica in `config`.
fn site(config: &Config) -> PgSite {
    let sites = postgres::start(config).expect("start sites");
    assert_eq!(sites.len(), 1);
    assert!(sites.get("b").is_some_and(|s| s.name() == "b"));
    sites.into_iter().next().expect("one site")
}

async fn wait(view: &HealthView, state: State) -> Status {
    let t = Instant::now();
    let status = view.wait_state(state, PATIENCE).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{state} after {:?} ({:?})", t.elapsed(), status.last_transition);
    status
}

#[tokio::test]
async fn healthy_at_start_with_rtt_and_one_connection() {
    let link = replica_link();
    let site = site(&config(link.addr(), ""));
    let view = site.health();
    assert_eq!(view.replica(), "b");
    let s = wait(view, State::Healthy).await;
    assert!(s.last_rtt.is_some() && s.smoothed_rtt.is_some() && s.last_heartbeat.is_some(), "{s:?}");
    assert_eq!(s.previous, Some(State::Suspect));
    // It stays healthy on one connection while heartbeats continue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = view.status();
    assert_eq!(later.state, State::Healthy);
    assert_eq!(later.connects, 1, "{later:?}");
    assert!(later.last_heartbeat > s.last_heartbeat, "heartbeats continue");
    assert!(later.in_state() >= Duration::from_millis(300));
    assert!(view.wait_available(Duration::ZERO).await.is_ok());
}

#[tokio::test]
async fn latency_above_partition_latency_partitions_then_heals() {
    let link = replica_link();
    // A 2 s heartbeat deadline: the slow answers arrive, are measured and judged slow.
    let site = site(&config(link.addr(), "heartbeat_timeout = \"2s\"\n"));
    let view = site.health();
    wait(view, State::Healthy).await;
    link.set_latency(Duration::from_millis(250));
    let s = wait(view, State::Partitioned).await;
    assert!(s.last_rtt.is_some_and(|r| r >= Duration::from_millis(500)), "{s:?}");
    assert!(s.last_transition.as_deref().is_some_and(|t| t.contains("partition_latency")), "{s:?}");
    assert_eq!(s.connects, 1, "a slow link is measured, not reconnected");
    let blocked = view.wait_available(Duration::from_millis(100)).await.unwrap_err();
    assert!(blocked.is_deadline() && blocked.to_string().contains("partitioned"), "{blocked}");
    link.set_latency(Duration::ZERO);
    let s = wait(view, State::Healthy).await;
    assert_eq!(s.previous, Some(State::Healing), "hysteresis: through healing");
    assert!(s.last_rtt.is_some_and(|r| r < Duration::from_millis(300)));
}

#[tokio::test]
async fn blackhole_partitions_within_a_few_heartbeats_and_restore_heals() {
    let link = replica_link();
    let site = site(&config(link.addr(), ""));
    let view = site.health();
    wait(view, State::Healthy).await;
    let t = Instant::now();
    link.blackhole();
    let s = wait(view, State::Partitioned).await;
    eprintln!("blackhole detected after {:?}: {:?}", t.elapsed(), s.last_error);
    let error = s.last_error.as_deref().unwrap_or("");
    let deadline_missed = error.contains("did not finish") || error.contains("has not finished");
    assert!(error.starts_with("replica `b`: ") && deadline_missed, "{s:?}");
    // A waiter (on_partition = "block") is released by healing.
    let waiter = {
        let view = view.clone();
        tokio::spawn(async move { view.wait_available(PATIENCE).await })
    };
    link.restore();
    let s = wait(view, State::Healthy).await;
    assert_eq!(s.previous, Some(State::Healing));
    assert!(s.connects >= 2, "the heartbeat connection was replaced: {s:?}");
    assert!(waiter.await.unwrap().is_ok());
}

#[tokio::test]
async fn reset_reconnects() {
    let link = replica_link();
    let site = site(&config(link.addr(), ""));
    let view = site.health();
    let before = wait(view, State::Healthy).await;
    assert_eq!(before.connects, 1);
    link.reset();
    let s = view
        .wait_for("a new connection", PATIENCE, |s| s.connects >= 2 && s.state == State::Healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.transitions >= before.transitions + 2, "healthy → suspect → healthy: {s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    assert!(link.stats().resets >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_is_partitioned_and_restarted_one_heals() {
    // Its own bed: stopping the shared replica would disturb the other tests.
    let bed = tokio::task::spawn_blocking(TwoSites::start).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let site = site(&config(bed.link().addr(), ""));
    let view = site.health();
    wait(view, State::Healthy).await;
    tokio::task::block_in_place(|| bed.b_replica().stop()).unwrap();
    let s = wait(view, State::Partitioned).await;
    eprintln!("stopped: {:?}", s.last_error);
    tokio::task::block_in_place(|| bed.b_replica().restart()).unwrap();
    let s = wait(view, State::Healthy).await;
    assert_eq!(s.previous, Some(State::Healing));
    tokio::task::block_in_place(|| drop(bed));
}

#[tokio::test]
async fn unreachable_at_start_is_partitioned_with_the_error() {
    // A port nobody listens on: refused at once.
    let free = capgate::testbed::free_port();
    let site = site(&config(SocketAddr::from((Ipv4Addr::LOCALHOST, free)), ""));
    let s = wait(site.health(), State::Partitioned).await;
    let error = s.last_error.as_deref().unwrap_or("");
    assert!(error.starts_with("replica `b`: connect: "), "{error}");
}

#[tokio::test]
async fn pool_reuses_connections_and_drops_broken_ones() {
    let link = replica_link();
    let site = site(&config(link.addr(), "pool_size = 1\n"));
    let pool = site.pool();
    assert_eq!(pool.size(), 1);
    {
        let conn = pool.checkout(Duration::from_secs(10)).await.unwrap();
        let one = conn.run("select", Duration::from_secs(10), conn.simple_query("select 1")).await.unwrap();
        assert!(!one.is_empty());
        assert_eq!(pool.in_use(), 1);
        // Size 1: a second checkout waits, then says what it waited for.
        let err = pool.checkout(Duration::from_millis(100)).await.map(|_| ()).unwrap_err();
        assert!(err.is_deadline() && err.to_string().contains("waiting for a free replica connection"), "{err}");
    }
    assert_eq!((pool.idle(), pool.in_use()), (1, 0), "returned");
    let conn = pool.checkout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(pool.idle(), 0, "reused");

    // An error drops the connection.
    let err = conn.run("bad statement", Duration::from_secs(10), conn.simple_query("select nope")).await.unwrap_err();
    assert!(matches!(err, SiteError::Failed { .. }) && err.to_string().starts_with("replica `b`: bad statement: "), "{err}");
    assert!(conn.is_broken());
    drop(conn);
    assert_eq!(pool.idle(), 0, "an errored connection is not returned");

    // A silent partition: the operation's deadline ends it, and the connection is dropped.
    let conn = pool.checkout(Duration::from_secs(10)).await.unwrap();
    link.blackhole();
    let t = Instant::now();
    let err = conn.run("heartbeat-like select", Duration::from_millis(300), conn.simple_query("select 1")).await.unwrap_err();
    assert!(err.is_deadline(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "the deadline bounded it");
    drop(conn);
    assert_eq!(pool.idle(), 0);
    // Connecting through the blackhole is bounded by the checkout's deadline.
    let err = pool.checkout(Duration::from_millis(300)).await.map(|_| ()).unwrap_err();
    assert!(err.is_deadline() && err.to_string().contains("connect"), "{err}");
    link.restore();
    let conn = pool.checkout(Duration::from_secs(10)).await.unwrap();
    assert!(conn.run("select", Duration::from_secs(10), conn.simple_query("select 1")).await.is_ok());
}

/// Real kernel-level partitions between two network namespaces: DROP (silent) and REJECT
/// (fast failure). Runs only as root; skipped elsewhere, except under CI (`CI` set), where it fails instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_drop_and_reject_partition_and_heal() {
    if !NetnsSites::usable_for("netns_drop_and_reject_partition_and_heal") {
        return;
    }
    let bed = tokio::task::spawn_blocking(NetnsSites::start).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let site = site(&config(bed.forward().addr(), ""));
    let view = site.health();
    wait(view, State::Healthy).await;
    for how in [Partition::Drop, Partition::Reject] {
        let t = Instant::now();
        bed.partition(how).unwrap();
        let s = wait(view, State::Partitioned).await;
        eprintln!("{how:?}: partitioned after {:?}: {:?}", t.elapsed(), s.last_error);
        bed.heal().unwrap();
        let s = wait(view, State::Healthy).await;
        assert_eq!(s.previous, Some(State::Healing), "{how:?}");
    }
    drop(site);
    tokio::task::block_in_place(|| drop(bed));
}
