//! Sync commits under `quorum = 1` with two replicas (decision 0017): a commit needs one
//! replica's PREPARE; the other gets the transaction from the change stream, once, in order,
//! and shows as behind in `/status` until it has; partition refusal counts the healthy
//! replicas against the quorum. Site A's primary and replica B are the replication bed's;
//! replica C is a third server of this module's own. Every server uses database `quorum`,
//! so this site's change stream holds only this module's changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use capgate::testbed::link::Link;
use capgate::testbed::{PgOptions, PgServer};

use crate::replication::{bed, exclusive, rows, wait_until};
use crate::support::{connect, scratch, sqlstate, Proxy};

const DB: &str = "quorum";

/// Replica C: one more server, started once (the three-site tests use it too).
pub(crate) fn c_server() -> &'static PgServer {
    static C: OnceLock<PgServer> = OnceLock::new();
    C.get_or_init(|| PgServer::start(PgOptions::default()).unwrap_or_else(|e| panic!("replica c: {e}")))
}

fn a_url() -> String {
    bed().a_primary().url("postgres", DB)
}
fn b_url() -> String {
    bed().b_replica().url("postgres", DB)
}
fn c_url() -> String {
    c_server().url("postgres", DB)
}

/// Database `quorum` created afresh on the three servers, with `ddl` in each.
async fn fresh(ddl: &str) {
    for server in [bed().a_primary(), bed().b_replica(), c_server()] {
        let admin = connect(&server.superuser_url()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await.unwrap();
        connect(&server.url("postgres", DB)).await.batch_execute(ddl).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
    let client = connect(&a_url()).await;
    capgate::store::postgres::primary::install_primary(&client).await.unwrap();
}

/// Site `q` on the bed's primary, replicating to B and C through their links, with `policy`.
fn proxy(name: &str, policy: &str, b: &Link, c: &Link) -> Proxy {
    let dir = scratch(name);
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let replica = |name: &str, link: &Link| {
        format!(
            "[[replicas]]\nname = \"{name}\"\nurl = \"postgres://postgres@127.0.0.1:{}/{DB}?sslmode=disable&connect_timeout=2\"\n\
             heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\n",
            link.addr().port()
        )
    };
    let text = format!(
        "site = \"q\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\nrecovery_grace = \"5s\"\n\n\
         [primary]\nurl = \"{}?sslmode=disable\"\n\n{}\n{}",
        dir.join("policy.toml").display(),
        a_url(),
        replica("b", b),
        replica("c", c)
    );
    Proxy::start_config(&text, &dir)
}

pub(crate) fn link_to(server: &PgServer) -> Link {
    Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))).expect("start link")
}

pub(crate) async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) fn replica_field(status: &serde_json::Value, name: &str, field: &str) -> serde_json::Value {
    status["replicas"].as_array().and_then(|rs| rs.iter().find(|r| r["name"] == name)).map(|r| r[field].clone()).unwrap_or_default()
}

/// Wait (bounded) until capgate sees replica `name` in health state `want`.
pub(crate) async fn state_is(admin: SocketAddr, name: &str, want: &str) {
    wait_until(&format!("{name} {want}"), Duration::from_secs(30), async || {
        replica_field(&status(admin).await, name, "state").as_str() == Some(want)
    })
    .await
}

/// No prepared transaction left on B or C (COMMIT PREPARED runs after the client's COMMIT).
async fn settled() {
    wait_until("prepared transactions resolved", Duration::from_secs(60), async || {
        rows(&b_url(), "SELECT count(*) FROM pg_prepared_xacts").await == ["0"]
            && rows(&c_url(), "SELECT count(*) FROM pg_prepared_xacts").await == ["0"]
    })
    .await;
}

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"public.qr_*\"\nmode = \"sync\"\nquorum = 1\n";

const CART: &str = "SELECT id, n, note FROM qr_cart ORDER BY id";

#[tokio::test]
async fn one_replica_is_enough_and_the_other_catches_up_once_in_order() {
    let _one = exclusive().await;
    fresh("CREATE TABLE qr_cart (id int PRIMARY KEY, n int NOT NULL, note text)").await;
    let (b, c) = (link_to(bed().b_replica()), link_to(c_server()));
    let p = proxy("quorum-catch-up", POLICY, &b, &c);
    let admin = p.admin.expect("admin");
    let app = connect(&p.url("postgres", DB)).await;
    app.batch_execute("INSERT INTO qr_cart VALUES (1, 0, 'first'), (2, 0, 'second')").await.unwrap();
    // Quorum 1: COMMIT returned once one replica prepared; the other commits its branch (or
    // takes the stream) right after.
    let first = rows(&a_url(), CART).await;
    for url in [b_url(), c_url()] {
        wait_until("both replicas while both are reachable", Duration::from_secs(30), async || rows(&url, CART).await == first).await;
    }

    // C's shipper has recorded where C stands (its lag is measured, not unknown): only then can
    // /status count what C misses while cut off.
    wait_until("C's lag measured", Duration::from_secs(30), async || {
        replica_field(&status(admin).await, "c", "pending_rows").as_u64().is_some()
    })
    .await;

    // C cut off: commits go on with B alone. The same rows are changed again and again, so an
    // update applied twice or out of order on C would show (or conflict).
    c.blackhole();
    for i in 1..=5 {
        app.batch_execute(&format!(
            "BEGIN; UPDATE qr_cart SET n = n + 1, note = 'round {i}' WHERE id = 1; INSERT INTO qr_cart VALUES ({}, {i}, 'new'); \
             DELETE FROM qr_cart WHERE id = 2 AND {i} = 3",
            10 + i
        ))
        .await
        .unwrap();
        app.batch_execute("COMMIT").await.unwrap_or_else(|e| panic!("commit {i} under quorum 1 with one replica cut off: {e:?}"));
    }
    let primary = rows(&a_url(), CART).await;
    assert_eq!(primary.len(), 6, "{primary:?}");
    wait_until("B has every commit", Duration::from_secs(30), async || rows(&b_url(), CART).await == primary).await;
    assert_eq!(rows(&c_url(), "SELECT n FROM qr_cart WHERE id = 1").await, ["0"], "C cannot have them while cut off");
    wait_until("C shown as behind", Duration::from_secs(30), async || {
        replica_field(&status(admin).await, "c", "pending_rows").as_u64().is_some_and(|n| n > 0)
    })
    .await;

    // Healed: C catches up from the stream; B's copy of the stream is skipped (its branches
    // committed), so neither logs a conflict.
    c.restore();
    wait_until("C caught up", Duration::from_secs(60), async || rows(&c_url(), CART).await == primary).await;
    wait_until("C no longer behind", Duration::from_secs(30), async || {
        replica_field(&status(admin).await, "c", "pending_rows").as_u64() == Some(0)
    })
    .await;
    settled().await;
    for (name, url) in [("b", b_url()), ("c", c_url())] {
        assert_eq!(rows(&url, "SELECT count(*) FROM capgate.conflicts").await, ["0"], "conflicts on {name}");
        assert_eq!(rows(&url, CART).await, primary, "{name}");
    }
    // Every commit is recorded as applied on each replica, by its branch or by the stream.
    let gids = rows(&a_url(), "SELECT count(DISTINCT gid) FROM capgate.changes WHERE gid IS NOT NULL").await;
    assert_eq!(gids, ["6"], "six sync commits under the quorum went to the stream too");
    assert_eq!(rows(&b_url(), "SELECT count(*) FROM capgate.sync_gids WHERE origin = 'q'").await, gids);
    assert_eq!(rows(&c_url(), "SELECT count(*) FROM capgate.sync_gids WHERE origin = 'q'").await, gids);
}

#[tokio::test]
async fn partition_refusal_counts_healthy_replicas_against_the_quorum() {
    let _one = exclusive().await;
    fresh("CREATE TABLE qr_acct (id int PRIMARY KEY, bal int NOT NULL)").await;
    let (b, c) = (link_to(bed().b_replica()), link_to(c_server()));
    let p = proxy("quorum-refusal", POLICY, &b, &c);
    let admin = p.admin.expect("admin");
    let app = connect(&p.url("postgres", DB)).await;
    state_is(admin, "b", "healthy").await;
    state_is(admin, "c", "healthy").await;

    b.blackhole();
    c.blackhole();
    state_is(admin, "b", "partitioned").await;
    state_is(admin, "c", "partitioned").await;
    let err = app.batch_execute("INSERT INTO qr_acct VALUES (1, 10)").await.expect_err("no replica: below the quorum");
    assert_eq!(sqlstate(&err), "55000", "{err}");
    assert!(err.to_string().contains("qr_acct") || format!("{err:?}").contains("qr_acct"), "{err:?}");

    // One replica back is the quorum.
    c.restore();
    state_is(admin, "c", "healthy").await;
    app.batch_execute("INSERT INTO qr_acct VALUES (1, 10)").await.expect("one healthy replica is quorum 1");
    settled().await;
    assert_eq!(rows(&c_url(), "SELECT bal FROM qr_acct").await, ["10"]);
    b.restore();
    wait_until("B caught up", Duration::from_secs(60), async || rows(&b_url(), "SELECT bal FROM qr_acct").await == ["10"]).await;
}
