//! A table entering replication between two sites that both take writes (decision 0028):
//! each site's rows are its own writes, so neither shipper may empty the other site's table
//! with a copy. The table is halted at both with a message that says what to do; once the
//! operator has made it equal, each site adopts it without a copy and writes at both sites
//! reach the other. A table that holds the same rows at both sites is taken in as it is.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::active_active::{drained, fresh, link_to, shipper, site_with, table_state};
use crate::replication::{bed, exclusive, rows, wait_until};
use crate::support::{connect, scratch};

const DB: &str = "aa";

/// Before: `aa_entry` is local at both sites (each writes its own rows), `aa_other` async.
const BEFORE: &str = "default = \"local\"\n[[table]]\nmatch = \"public.aa_entry\"\nmode = \"local\"\n\
    [[table]]\nmatch = \"public.aa_*\"\nmode = \"async\"\n";

/// After: `aa_entry` enters the async rule too.
const AFTER: &str = "default = \"local\"\n[[table]]\nmatch = \"public.aa_*\"\nmode = \"async\"\n";

const ENTRY_ROWS: &str = "SELECT id, v FROM aa_entry ORDER BY id";

/// The directory `site_with` keeps site `site`'s files in.
fn dir_of(site: &str) -> PathBuf {
    scratch(&format!("active-active-{site}"))
}

/// A plain HTTP POST without a body; (status code, body).
fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// `capgate <args> --config <config>`: exit code and output.
fn capgate(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_capgate")).args(args).arg("--config").arg(config).output().expect("run capgate");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The halted `public.aa_entry`'s error and resume command in `/status` of `proxy`.
async fn halted_error(name: &str, proxy: &crate::support::Proxy) -> (String, String) {
    wait_until(&format!("{name} halted aa_entry"), Duration::from_secs(60), async || {
        table_state(&shipper(proxy).await, "public.aa_entry").as_deref() == Some("halted")
    })
    .await;
    let s = shipper(proxy).await;
    let table = s["tables"].as_array().and_then(|t| t.iter().find(|t| t["table"] == "public.aa_entry").cloned()).unwrap_or_default();
    let text = |key: &str| table[key].as_str().unwrap_or_default().to_owned();
    (text("error"), text("resume"))
}

#[tokio::test]
async fn a_table_entering_replication_with_rows_at_both_writing_sites_loses_none_and_is_adopted() {
    let _one = exclusive().await;
    fresh(
        "CREATE TABLE aa_entry (id int PRIMARY KEY, v text NOT NULL); CREATE TABLE aa_other (id int PRIMARY KEY, v text NOT NULL); \
         CREATE TABLE aa_same (id int PRIMARY KEY, v text NOT NULL); INSERT INTO aa_same VALUES (1, 'seeded'), (2, 'seeded')",
    )
    .await;
    let (a_url, b_url) = (bed().a_primary().url("postgres", DB), bed().b_replica().url("postgres", DB));
    // Each site's own writes while the table is local to it.
    connect(&a_url).await.batch_execute("INSERT INTO aa_entry VALUES (1, 'east'), (2, 'east')").await.unwrap();
    connect(&b_url).await.batch_execute("INSERT INTO aa_entry VALUES (2, 'west'), (3, 'west')").await.unwrap();
    let (to_west, to_east) = (link_to(bed().b_replica()), link_to(bed().a_primary()));
    let east = site_with("east", bed().a_primary(), "west", &to_west, BEFORE);
    let west = site_with("west", bed().b_replica(), "east", &to_east, BEFORE);
    for (name, proxy) in [("east", &east), ("west", &west)] {
        wait_until(&format!("{name}'s shipper copied aa_other and took aa_same in"), Duration::from_secs(60), async || {
            let s = shipper(proxy).await;
            s["phase"] == "running"
                && table_state(&s, "public.aa_other").as_deref() == Some("copied")
                && table_state(&s, "public.aa_same").as_deref() == Some("copied")
        })
        .await;
    }
    // Seeded alike at both sites before they were paired: equal at the copy's snapshot,
    // so taken in as it is, each way.
    for url in [&a_url, &b_url] {
        assert_eq!(rows(url, "SELECT id, v FROM aa_same ORDER BY id").await, ["1|seeded", "2|seeded"], "{url}");
    }

    // The table enters the async rule at both sites (a policy reload each).
    for site in ["east", "west"] {
        std::fs::write(dir_of(site).join("policy.toml"), AFTER).unwrap();
    }
    let (east_error, west_error) = (halted_error("east", &east).await, halted_error("west", &west).await);
    for ((error, resume), peer) in [(&east_error, "west"), (&west_error, "east")] {
        assert_eq!(resume, &format!("capgate resume --replica {peer} --table public.aa_entry --adopt"), "/status offers the adoption");
        for said in [
            "public.aa_entry".to_owned(),
            format!("replica `{peer}`"),
            "holds 2 rows".to_owned(),
            "takes writes of its own".to_owned(),
            format!("capgate resume --replica {peer} --table public.aa_entry --adopt"),
        ] {
            assert!(error.contains(&said), "{said:?} in: {error}");
        }
    }
    assert_eq!(rows(&a_url, ENTRY_ROWS).await, ["1|east", "2|east"], "no row of east's lost");
    assert_eq!(rows(&b_url, ENTRY_ROWS).await, ["2|west", "3|west"], "no row of west's lost");

    // The other table keeps shipping both ways meanwhile.
    let (e, w) = (connect(&east.url("postgres", DB)).await, connect(&west.url("postgres", DB)).await);
    e.batch_execute("INSERT INTO aa_other VALUES (1, 'east')").await.unwrap();
    w.batch_execute("INSERT INTO aa_other VALUES (2, 'west')").await.unwrap();
    for url in [&a_url, &b_url] {
        wait_until("aa_other at both sites", Duration::from_secs(60), async || {
            rows(url, "SELECT id, v FROM aa_other ORDER BY id").await == ["1|east", "2|west"]
        })
        .await;
    }

    // The operator makes the table equal (west's row 2 wins), through capgate at each site:
    // these repairs are captured, and adoption must not ship them (each would meet the same
    // row at the other site and halt the table again).
    e.batch_execute("INSERT INTO aa_entry VALUES (3, 'west'); UPDATE aa_entry SET v = 'west' WHERE id = 2").await.unwrap();
    w.batch_execute("INSERT INTO aa_entry VALUES (1, 'east')").await.unwrap();
    let east_config = dir_of("east").join("capgate.toml");
    let verify = ["verify", "--table", "public.aa_entry"];
    let (code, out) = tokio::task::spawn_blocking(move || capgate(&east_config, &verify)).await.unwrap();
    assert_eq!(code, Some(0), "capgate verify says equal:\n{out}");

    // Adopted at both sites: east with the CLI (its file naming the admin listener's actual
    // port), west through the admin endpoint.
    let east_config = dir_of("east").join("capgate.toml");
    let text = std::fs::read_to_string(&east_config).unwrap();
    let bound = format!("admin = \"{}\"", east.admin.expect("admin"));
    std::fs::write(&east_config, text.replace("admin = \"127.0.0.1:0\"", &bound)).unwrap();
    let adopt = ["resume", "--replica", "west", "--table", "public.aa_entry", "--adopt"];
    let (code, out) = tokio::task::spawn_blocking(move || capgate(&east_config, &adopt)).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("public.aa_entry adopted on replica `west` without a copy"), "{out}");
    let admin = west.admin.expect("admin");
    let (code, body) =
        tokio::task::spawn_blocking(move || post(admin, "/tables/public.aa_entry/resume?replica=east&adopt=true")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    for (name, proxy) in [("east", &east), ("west", &west)] {
        assert_eq!(table_state(&shipper(proxy).await, "public.aa_entry").as_deref(), Some("copied"), "{name}");
    }
    let (code, body) =
        tokio::task::spawn_blocking(move || post(admin, "/tables/public.aa_entry/resume?replica=east&adopt=maybe")).await.unwrap();
    assert_eq!(code, 400, "{body}");

    // Writes at both sites now reach the other.
    e.batch_execute("INSERT INTO aa_entry VALUES (10, 'east'); UPDATE aa_entry SET v = 'east again' WHERE id = 1").await.unwrap();
    w.batch_execute(
        "INSERT INTO aa_entry VALUES (20, 'west'); DELETE FROM aa_entry WHERE id = 3; UPDATE aa_same SET v = 'west' WHERE id = 2",
    )
    .await
    .unwrap();
    let want = ["1|east again", "2|west", "10|east", "20|west"];
    for url in [&a_url, &b_url] {
        wait_until("every write at both sites", Duration::from_secs(60), async || rows(url, ENTRY_ROWS).await == want).await;
        wait_until("aa_same's change at both sites", Duration::from_secs(60), async || {
            rows(url, "SELECT id, v FROM aa_same ORDER BY id").await == ["1|seeded", "2|west"]
        })
        .await;
    }
    drained(&east, &west).await;
    for (url, proxy) in [(&a_url, &east), (&b_url, &west)] {
        assert_eq!(rows(url, "SELECT count(*) FROM capgate.conflicts").await, ["0"], "{url}");
        assert_eq!(table_state(&shipper(proxy).await, "public.aa_entry").as_deref(), Some("copied"), "{url}");
    }
    for site in ["east", "west"] {
        let config = dir_of(site).join("capgate.toml");
        let (code, out) = tokio::task::spawn_blocking(move || capgate(&config, &["verify"])).await.unwrap();
        assert_eq!(code, Some(0), "{site}: capgate verify says equal:\n{out}");
    }
}
