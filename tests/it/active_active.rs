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
         heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\n",
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
    fresh("CREATE TABLE aa_async (id int PRIMARY KEY, v text NOT NULL); CREATE TABLE aa_sync (id int PRIMARY KEY, v text NOT NULL)")
        .await;
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
