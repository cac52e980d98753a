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
pub(crate) async fn fresh(ddl: &str) {
    for server in [bed().a_primary(), bed().b_replica()] {
        let admin = connect(&server.superuser_url()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await.unwrap();
        let client = connect(&server.url("postgres", DB)).await;
        client.batch_execute(ddl).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
        capgate::store::postgres::primary::install_primary(&client).await.unwrap();
    }
}

pub(crate) fn link_to(server: &PgServer) -> Link {
    Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))).expect("start link")
}

/// The capgate of site `site` on `primary`, replicating to site `peer` through `link`.
fn site(site: &str, primary: &PgServer, peer: &str, link: &Link) -> Proxy {
    site_with(site, primary, peer, link, POLICY)
}

/// The same with `policy` (also written, with the configuration, to the site's directory
/// for the CLI: `capgate verify`, `capgate resume`).
pub(crate) fn site_with(site: &str, primary: &PgServer, peer: &str, link: &Link, policy: &str) -> Proxy {
    let dir = scratch(&format!("active-active-{site}"));
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let text = format!(
        "site = \"{site}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\nrecovery_grace = \"5s\"\n\n\
         [primary]\nurl = \"{}?sslmode=disable\"\n\n\
         [[replicas]]\nname = \"{peer}\"\nurl = \"postgres://postgres@127.0.0.1:{}/{DB}?sslmode=disable&connect_timeout=2\"\n\
         heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\ntakes_writes = true\n",
        dir.join("policy.toml").display(),
        primary.url("postgres", DB),
        link.addr().port()
    );
    std::fs::write(dir.join("capgate.toml"), &text).unwrap();
    Proxy::start_config(&text, &dir)
}

/// Wait until each site sees the other healthy: until a capgate's first connection to its
/// peer is up, a sync write there is refused as if the peer were cut off (under load that
/// connection took longer than the 500 ms `partition_latency`).
async fn paired(east: &Proxy, west: &Proxy) {
    crate::quorum::state_is(east.admin.expect("admin"), "west", "healthy").await;
    crate::quorum::state_is(west.admin.expect("admin"), "east", "healthy").await;
}

/// `/status`'s document of the (only) peer's shipper.
pub(crate) async fn shipper(proxy: &Proxy) -> serde_json::Value {
    let admin = proxy.admin.expect("admin");
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["replicas"][0]["shipper"].clone()
}

pub(crate) fn table_state(shipper: &serde_json::Value, table: &str) -> Option<String> {
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

    paired(&east, &west).await;
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

    // A sync commit's COMMIT PREPARED follows the client's answer: read its rows on the peer
    // once it has landed.
    let prepared = "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()";
    wait_until("the sync commits' prepared branches resolved", Duration::from_secs(60), async || {
        rows(&a_url, prepared).await == ["0"] && rows(&b_url, prepared).await == ["0"]
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
    paired(&east, &west).await;
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

/// The policy of the conflict tests: the cart is written at both sites, the later write wins.
const LATEST_POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"public.aa_*\"\nmode = \"async\"\non_conflict = \"latest\"\n";

/// Both sites with `policy`, each shipper having taken `tables` in.
async fn two_sites(policy: &str, tables: &[&str]) -> (Link, Link, Proxy, Proxy) {
    let (to_west, to_east) = (link_to(bed().b_replica()), link_to(bed().a_primary()));
    let east = site_with("east", bed().a_primary(), "west", &to_west, policy);
    let west = site_with("west", bed().b_replica(), "east", &to_east, policy);
    for (name, proxy) in [("east", &east), ("west", &west)] {
        for table in tables {
            wait_until(&format!("{name}'s shipper copied {table}"), Duration::from_secs(60), async || {
                let s = shipper(proxy).await;
                s["phase"] == "running" && table_state(&s, table).as_deref() == Some("copied")
            })
            .await;
        }
    }
    (to_west, to_east, east, west)
}

/// Both shippers have shipped everything.
pub(crate) async fn drained(east: &Proxy, west: &Proxy) {
    wait_until("both shippers idle", Duration::from_secs(60), async || {
        shipper(east).await["pending_rows"] == 0 && shipper(west).await["pending_rows"] == 0
    })
    .await;
}

#[tokio::test]
async fn the_same_cart_row_changed_at_both_sites_during_a_partition_converges_on_the_later_write() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_cart (id int PRIMARY KEY, items text NOT NULL)").await;
    let (to_west, to_east, east, west) = two_sites(LATEST_POLICY, &["public.aa_cart"]).await;
    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    let (a_url, b_url) = (bed().a_primary().url("postgres", DB), bed().b_replica().url("postgres", DB));
    e.batch_execute("INSERT INTO aa_cart VALUES (1, 'book')").await.unwrap();
    wait_until("the cart at west", Duration::from_secs(30), async || rows(&b_url, "SELECT items FROM aa_cart").await == ["book"]).await;

    // Partition: Seattle (east) adds a pen, then Virginia (west) adds a lamp.
    to_west.blackhole();
    to_east.blackhole();
    e.batch_execute("UPDATE aa_cart SET items = 'book, pen' WHERE id = 1").await.unwrap();
    w.batch_execute("UPDATE aa_cart SET items = 'book, lamp' WHERE id = 1").await.unwrap();
    to_west.restore();
    to_east.restore();
    for url in [&a_url, &b_url] {
        wait_until("each site met the other's change", Duration::from_secs(60), async || {
            rows(url, "SELECT count(*) FROM capgate.conflicts").await == ["1"]
        })
        .await;
    }
    drained(&east, &west).await;

    // Both sites keep the later write, and each logged the conflict with both images.
    for url in [&a_url, &b_url] {
        assert_eq!(rows(url, "SELECT items FROM aa_cart").await, ["book, lamp"], "{url}");
    }
    let conflicts = "SELECT kind, resolution, old ->> 'items', new ->> 'items', replica_row ->> 'items' FROM capgate.conflicts";
    assert_eq!(rows(&a_url, conflicts).await, ["update_differs|applied the new row (later)|book|book, lamp|book, pen"]);
    assert_eq!(rows(&b_url, conflicts).await, ["update_differs|kept the replica row (later)|book|book, pen|book, lamp"]);
}

#[tokio::test]
async fn hot_row_increments_at_both_sites_keep_the_later_sites_count_under_latest() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_hits (id int PRIMARY KEY, n int NOT NULL)").await;
    let (to_west, to_east, east, west) = two_sites(LATEST_POLICY, &["public.aa_hits"]).await;
    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    let (a_url, b_url) = (bed().a_primary().url("postgres", DB), bed().b_replica().url("postgres", DB));
    e.batch_execute("INSERT INTO aa_hits VALUES (1, 0)").await.unwrap();
    wait_until("the counter at west", Duration::from_secs(30), async || rows(&b_url, "SELECT n FROM aa_hits").await == ["0"]).await;

    // Partition: 3 increments at east, then 5 at west.
    to_west.blackhole();
    to_east.blackhole();
    for _ in 0..3 {
        e.batch_execute("UPDATE aa_hits SET n = n + 1 WHERE id = 1").await.unwrap();
    }
    for _ in 0..5 {
        w.batch_execute("UPDATE aa_hits SET n = n + 1 WHERE id = 1").await.unwrap();
    }
    to_west.restore();
    to_east.restore();

    // What CONFIG.md says `latest` does to a counter: the row is the later write's row, so
    // both sites end with west's 5 and east's 3 increments are lost, each a logged conflict
    // at west; at east, west's first change met east's row (one conflict, applied as later)
    // and the others then applied in order.
    wait_until("west met east's 3 changes", Duration::from_secs(60), async || {
        rows(&b_url, "SELECT count(*) FROM capgate.conflicts").await == ["3"]
    })
    .await;
    wait_until("east at west's count", Duration::from_secs(60), async || rows(&a_url, "SELECT n FROM aa_hits").await == ["5"]).await;
    drained(&east, &west).await;
    for url in [&a_url, &b_url] {
        assert_eq!(rows(url, "SELECT n FROM aa_hits").await, ["5"], "{url}");
    }
    assert_eq!(rows(&a_url, "SELECT kind, resolution FROM capgate.conflicts").await, ["update_differs|applied the new row (later)"]);
    assert_eq!(
        rows(&b_url, "SELECT kind, resolution, new ->> 'n' FROM capgate.conflicts ORDER BY id").await,
        [
            "update_differs|kept the replica row (later)|1",
            "update_differs|kept the replica row (later)|2",
            "update_differs|kept the replica row (later)|3"
        ]
    );
}

/// `capgate check-config --connect` for site `site` (on `primary`, its peer `peer` on `other`,
/// marked as taking writes): its output.
fn check_config(site: &str, primary: &PgServer, peer: &str, other: &PgServer) -> String {
    check_config_with(site, primary, peer, other, POLICY)
}

/// The same with `policy`.
fn check_config_with(site: &str, primary: &PgServer, peer: &str, other: &PgServer, policy: &str) -> String {
    let dir = scratch(&format!("active-active-check-{site}"));
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let text = format!(
        "site = \"{site}\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}?sslmode=disable\"\n\
         [[replicas]]\nname = \"{peer}\"\nurl = \"{}?sslmode=disable\"\ntakes_writes = true\n",
        primary.url("postgres", DB),
        other.url("postgres", DB)
    );
    std::fs::write(dir.join("capgate.toml"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["check-config", "--connect", "--config", dir.join("capgate.toml").to_str().unwrap()])
        .output()
        .expect("run capgate");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn serial_keys_at_two_writing_sites_are_warned_and_the_offered_remedy_keeps_them_apart() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_orders (id serial PRIMARY KEY, item text NOT NULL)").await;
    let (a, b) = (bed().a_primary(), bed().b_replica());
    let remedy = |site: &str, out: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.contains("public.aa_orders.id takes its values from sequence"))
            .unwrap_or_else(|| panic!("{site}: {out}"));
        assert!(
            line.starts_with("[warn] primary:") && line.contains("2 sites take writes (east, west)") && line.contains("uuid"),
            "{line}"
        );
        line.split('`').nth(1).expect("the statement between backquotes").to_owned()
    };
    let first = check_config("east", a, "west", b);
    assert!(first.contains("[warn] replica west: site west has recorded no policy yet"), "{first}");
    let east_fix = remedy("east", &first);
    let west_fix = remedy("west", &check_config("west", b, "east", a));
    assert_eq!(east_fix, "ALTER SEQUENCE public.aa_orders_id_seq INCREMENT BY 2 RESTART WITH 3");
    assert_eq!(west_fix, "ALTER SEQUENCE public.aa_orders_id_seq INCREMENT BY 2 RESTART WITH 2");
    connect(&a.url("postgres", DB)).await.batch_execute(&east_fix).await.unwrap();
    connect(&b.url("postgres", DB)).await.batch_execute(&west_fix).await.unwrap();
    for (site, out) in [("east", check_config("east", a, "west", b)), ("west", check_config("west", b, "east", a))] {
        assert!(!out.contains("takes its values from sequence"), "{site} still warned:\n{out}");
    }

    // Both sites insert through their capgate: no key is taken twice, both end with every row.
    let (_to_west, _to_east, east, west) = two_sites(POLICY, &["public.aa_orders"]).await;
    // Both capgates have recorded their policy: the same one, and a changed file is told.
    let same = check_config("east", a, "west", b);
    assert!(same.contains("[ok] replica west: site west runs the same policy"), "{same}");
    let other = check_config_with("west", b, "east", a, LATEST_POLICY);
    assert!(
        other.contains("[warn] replica east: site east runs a different policy (here `table public.aa_* Async { on_conflict: Latest }`"),
        "{other}"
    );
    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    for _ in 0..5 {
        e.batch_execute("INSERT INTO aa_orders (item) VALUES ('east')").await.unwrap();
        w.batch_execute("INSERT INTO aa_orders (item) VALUES ('west')").await.unwrap();
    }
    let all = "SELECT count(*), count(DISTINCT id) FROM aa_orders";
    for url in [a.url("postgres", DB), b.url("postgres", DB)] {
        wait_until("every order at both sites", Duration::from_secs(60), async || rows(&url, all).await == ["10|10"]).await;
        assert_eq!(rows(&url, "SELECT count(*) FROM capgate.conflicts").await, ["0"], "{url}");
    }
}

/// The log lines of `log` (a capgate process's stderr) that contain `text`.
fn log_lines(log: &std::path::Path, text: &str) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(text)).map(str::to_owned).collect()
}

#[tokio::test]
async fn capgate_run_warns_once_per_table_about_serial_keys_with_the_check_config_text() {
    let _one = exclusive().await;
    fresh("CREATE TABLE aa_orders (id serial PRIMARY KEY, item text NOT NULL)").await;
    let (a, b) = (bed().a_primary(), bed().b_replica());
    let check = check_config("east", a, "west", b);
    let said = check
        .lines()
        .find_map(|l| l.strip_prefix("[warn] primary: ").filter(|m| m.contains("takes its values from sequence")))
        .unwrap_or_else(|| panic!("check-config warns: {check}"))
        .to_owned();

    // Site east's capgate as a process, its peer west taking writes too.
    let dir = scratch("active-active-startup-warning");
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let port = capgate::testbed::free_port();
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"east\"\nlisten = \"127.0.0.1:{port}\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}?sslmode=disable\"\n\
             [[replicas]]\nname = \"west\"\nurl = \"{}?sslmode=disable&connect_timeout=2\"\ntakes_writes = true\n",
            a.url("postgres", DB),
            b.url("postgres", DB)
        ),
    )
    .unwrap();
    let log = dir.join("capgate.log");
    let _ = std::fs::remove_file(&log);
    let east = crate::support::Process::start(&config, port, &log);
    let wanted = "public.aa_orders.id takes its values from sequence";
    wait_until("the start-up warning", Duration::from_secs(60), async || !log_lines(&log, wanted).is_empty()).await;
    let line = log_lines(&log, wanted).remove(0);
    assert!(line.contains("WARN") && line.contains(&said), "the log says what check-config says:\n{line}\n{said}");

    // A table created later is checked when it starts being captured (here at once: a policy
    // reload runs a capture round); the first table is not warned about again.
    connect(&a.url("postgres", DB)).await.batch_execute("CREATE TABLE aa_more (id bigserial PRIMARY KEY)").await.unwrap();
    std::fs::write(dir.join("policy.toml"), format!("{POLICY}# reloaded\n")).unwrap();
    east.hangup();
    wait_until("the new table's warning", Duration::from_secs(60), async || {
        !log_lines(&log, "public.aa_more.id takes its values from sequence").is_empty()
    })
    .await;
    assert_eq!(log_lines(&log, wanted).len(), 1, "once per table:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}
