//! Two sites that both take writes (issue 16): site "east" (the replication bed's primary A)
//! and site "west" (the bed's server B), each with its own capgate replicating its writes to
//! the other. Every server uses database `aa`, so each site's change stream holds only this
//! module's changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use capgate::testbed::link::Link;
use capgate::testbed::PgServer;

use crate::replication::{bed, exclusive, rows, wait_until};
use crate::support::{connect, scratch, Proxy};

const DB: &str = "aa";

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"public.aa_sync\"\nmode = \"sync\"\n\
    [[table]]\nmatch = \"public.aa_*\"\nmode = \"async\"\n";

/// Database `aa` created afresh on both servers, with `ddl` and capgate's primary schema.
async fn fresh(ddl: &str) {
    for server in [bed().a_primary(), bed().b_replica()] {
        let admin = connect(&server.superuser_url()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await.unwrap();
        let client = connect(&server.url("postgres", DB)).await;
        client.batch_execute(ddl).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
        capgate::store::postgres::primary::install_primary(&client).await.unwrap();
    }
}

fn link_to(server: &PgServer) -> Link {
    Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))).expect("start link")
}

/// The capgate of site `site` on `primary`, replicating to site `peer` through `link`.
fn site(site: &str, primary: &PgServer, peer: &str, link: &Link) -> Proxy {
    let dir = scratch(&format!("active-active-{site}"));
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let text = format!(
        "site = \"{site}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\nrecovery_grace = \"5s\"\n\n\
         [primary]\nurl = \"{}?sslmode=disable\"\n\n\
         [[replicas]]\nname = \"{peer}\"\nurl = \"postgres://postgres@127.0.0.1:{}/{DB}?sslmode=disable&connect_timeout=2\"\n\
         heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\ntakes_writes = true\n",
        dir.join("policy.toml").display(),
        primary.url("postgres", DB),
        link.addr().port()
    );
    Proxy::start_config(&text, &dir)
}

/// `/status`'s document of the (only) peer's shipper.
async fn shipper(proxy: &Proxy) -> serde_json::Value {
    let admin = proxy.admin.expect("admin");
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["replicas"][0]["shipper"].clone()
}

fn table_state(shipper: &serde_json::Value, table: &str) -> Option<String> {
    shipper["tables"].as_array()?.iter().find(|t| t["table"] == table).and_then(|t| t["state"].as_str().map(str::to_owned))
}

const ASYNC_ROWS: &str = "SELECT id, v FROM aa_async ORDER BY id";
const SYNC_ROWS: &str = "SELECT id, v FROM aa_sync ORDER BY id";

#[tokio::test]
async fn a_write_reaches_the_other_site_once_and_never_comes_back() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_async (id int PRIMARY KEY, v text NOT NULL); CREATE TABLE aa_sync (id int PRIMARY KEY, v text NOT NULL)").await;
    let (to_west, to_east) = (link_to(bed().b_replica()), link_to(bed().a_primary()));
    let east = site("east", bed().a_primary(), "west", &to_west);
    let west = site("west", bed().b_replica(), "east", &to_east);
    // Each shipper has taken the async table in (an empty copy) before anything is written,
    // so every row travels as a change and is counted.
    for (name, proxy) in [("east", &east), ("west", &west)] {
        wait_until(&format!("{name}'s shipper copied aa_async"), Duration::from_secs(60), async || {
            let s = shipper(proxy).await;
            s["phase"] == "running" && table_state(&s, "public.aa_async").as_deref() == Some("copied")
        })
        .await;
    }

    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    for i in 1..=10 {
        e.execute("INSERT INTO aa_async VALUES ($1, 'east')", &[&i]).await.unwrap();
        w.execute("INSERT INTO aa_async VALUES ($1, 'west')", &[&(100 + i)]).await.unwrap();
    }
    for i in 1..=3 {
        e.execute("INSERT INTO aa_sync VALUES ($1, 'east')", &[&i]).await.unwrap();
        w.execute("INSERT INTO aa_sync VALUES ($1, 'west')", &[&(100 + i)]).await.unwrap();
    }
    e.execute("UPDATE aa_async SET v = 'east again' WHERE id = 1", &[]).await.unwrap();
    w.execute("DELETE FROM aa_async WHERE id = 110", &[]).await.unwrap();

    let (a_url, b_url) = (bed().a_primary().url("postgres", DB), bed().b_replica().url("postgres", DB));
    wait_until("both sites hold every async row", Duration::from_secs(60), async || {
        let a = rows(&a_url, ASYNC_ROWS).await;
        a.len() == 19 && a == rows(&b_url, ASYNC_ROWS).await
    })
    .await;
    wait_until("both shippers idle", Duration::from_secs(60), async || {
        shipper(&east).await["pending_rows"] == 0 && shipper(&west).await["pending_rows"] == 0
    })
    .await;

    // No echo: each site shipped its own 11 async changes and nothing it applied from the
    // other (applied rows are not captured: the apply session runs with
    // session_replication_role = replica); sync rows were prepared on the peer, not captured.
    let (e_ship, w_ship) = (shipper(&east).await, shipper(&west).await);
    assert_eq!(e_ship["changes"], 11, "east shipped only its own changes: {e_ship}");
    assert_eq!(w_ship["changes"], 11, "west shipped only its own changes: {w_ship}");
    for url in [&a_url, &b_url] {
        assert_eq!(rows(url, SYNC_ROWS).await.len(), 6, "{url}");
        assert_eq!(rows(url, "SELECT count(*) FROM capgate.conflicts").await, ["0"], "{url}");
        assert_eq!(
            rows(url, "SELECT count(*) FROM capgate.changes WHERE NOT proxied").await,
            ["0"],
            "nothing captured outside a capgate session (an applied row would be) on {url}"
        );
    }
    assert_eq!(rows(&a_url, SYNC_ROWS).await, rows(&b_url, SYNC_ROWS).await);
    assert_eq!(rows(&a_url, "SELECT v FROM aa_async WHERE id = 1").await, ["east again"]);
}

#[tokio::test]
async fn a_cross_site_deadlock_on_a_sync_row_ends_with_one_retryable_error() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_async (id int PRIMARY KEY, v text NOT NULL); CREATE TABLE aa_sync (id int PRIMARY KEY, v text NOT NULL)").await;
    let (to_west, to_east) = (link_to(bed().b_replica()), link_to(bed().a_primary()));
    let east = site("east", bed().a_primary(), "west", &to_west);
    let west = site("west", bed().b_replica(), "east", &to_east);
    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    // A first sync commit each way (each capgate has reached the other site).
    e.batch_execute("INSERT INTO aa_sync VALUES (1, 'start')").await.unwrap();
    w.batch_execute("INSERT INTO aa_sync VALUES (2, 'start')").await.unwrap();
    // COMMIT PREPARED follows the client's COMMIT: until it has run, the row is not visible at
    // the other site (an UPDATE there would find nothing to change).
    let (a_url, b_url) = (bed().a_primary().url("postgres", DB), bed().b_replica().url("postgres", DB));
    for url in [&a_url, &b_url] {
        wait_until("both rows at both sites", Duration::from_secs(30), async || rows(url, SYNC_ROWS).await.len() == 2).await;
    }

    // Each site holds row 1 at home, then commits: each PREPARE waits for the other site's
    // lock, and neither database sees the cycle.
    e.batch_execute("BEGIN; UPDATE aa_sync SET v = 'east' WHERE id = 1").await.unwrap();
    w.batch_execute("BEGIN; UPDATE aa_sync SET v = 'west' WHERE id = 1").await.unwrap();
    let (e_done, w_done) = tokio::join!(e.batch_execute("COMMIT"), w.batch_execute("COMMIT"));

    // "east" sorts first, so east yields with 40P01 and west goes through.
    let Err(err) = e_done else { panic!("east should yield; west got {w_done:?}") };
    assert_eq!(crate::support::sqlstate(&err), "40P01", "{err:?}");
    let text = err.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(text.contains("\"west\"") && text.contains("aa_sync") && text.contains("yields"), "{text}");
    w_done.unwrap_or_else(|e| panic!("west's commit goes through once east yields: {e:?}"));
    wait_until("no branch left prepared", Duration::from_secs(60), async || {
        rows(&a_url, "SELECT count(*) FROM pg_prepared_xacts").await == ["0"]
            && rows(&b_url, "SELECT count(*) FROM pg_prepared_xacts").await == ["0"]
    })
    .await;
    for url in [&a_url, &b_url] {
        assert_eq!(rows(url, SYNC_ROWS).await, ["1|west", "2|start"], "{url}");
    }
    // East retries, as a driver would, and it goes through.
    e.batch_execute("BEGIN; UPDATE aa_sync SET v = 'east' WHERE id = 1").await.unwrap();
    e.batch_execute("COMMIT").await.unwrap();
    wait_until("the retry on both sites", Duration::from_secs(30), async || rows(&b_url, SYNC_ROWS).await == ["1|east", "2|start"]).await;
    assert_eq!(rows(&a_url, SYNC_ROWS).await, ["1|east", "2|start"]);
}
