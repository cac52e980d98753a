//! Three sites (issue 16): alpha and beta take writes, gamma only reads; each is a PostgreSQL
//! server with its own capgate, replicating to the other two through fault links. Sync tables
//! with every replica (`tri_all`) and with two of the three sites (`tri_two`: the writing site
//! and `quorum = 1` replica), and an async table, written at alpha and beta. Alpha and beta
//! are the replication bed's servers, gamma the quorum tests' third server; every server uses
//! database `tri`, so each site's change stream holds only this module's changes.

use std::path::Path;
use std::time::Duration;

use capgate::testbed::link::Link;
use capgate::testbed::PgServer;

use crate::quorum::{c_server, link_to, replica_field, state_is, status};
use crate::replication::{bed, exclusive, rows, wait_until};
use crate::support::{connect, scratch, sqlstate, Proxy};

const DB: &str = "tri";

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"public.tri_all\"\nmode = \"sync\"\n\
    [[table]]\nmatch = \"public.tri_two\"\nmode = \"sync\"\nquorum = 1\n\
    [[table]]\nmatch = \"public.tri_*\"\nmode = \"async\"\n";

const TABLES: [&str; 3] = ["tri_all", "tri_two", "tri_async"];

/// The three sites: name, server, and whether it takes writes.
fn sites() -> [(&'static str, &'static PgServer, bool); 3] {
    [("alpha", bed().a_primary(), true), ("beta", bed().b_replica(), true), ("gamma", c_server(), false)]
}

fn url(server: &PgServer) -> String {
    server.url("postgres", DB)
}

/// Database `tri` created afresh on the three servers, with the tables and capgate's schema.
async fn fresh() {
    for (_, server, _) in sites() {
        let admin = connect(&server.superuser_url()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await.unwrap();
        let client = connect(&url(server)).await;
        for t in TABLES {
            client.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, n int NOT NULL, note text)")).await.unwrap();
        }
        capgate::store::postgres::primary::install_primary(&client).await.unwrap();
    }
}

/// One site's capgate and its links to the other two (by the other site's name).
struct Site {
    name: &'static str,
    proxy: Proxy,
    links: Vec<(&'static str, Link)>,
    /// Its configuration file, for `capgate verify`.
    config: std::path::PathBuf,
}

impl Site {
    fn start(name: &'static str) -> Site {
        let (_, primary, _) = sites().into_iter().find(|(n, _, _)| *n == name).expect("a site");
        let dir = scratch(&format!("three-sites-{name}"));
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        let mut links = Vec::new();
        let mut replicas = String::new();
        for (peer, server, writes) in sites().into_iter().filter(|(n, _, _)| *n != name) {
            let link = link_to(server);
            replicas.push_str(&format!(
                "\n[[replicas]]\nname = \"{peer}\"\nurl = \"postgres://postgres@127.0.0.1:{}/{DB}?sslmode=disable&connect_timeout=2\"\n\
                 heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\npartition_latency = \"500ms\"\ntakes_writes = {writes}\n",
                link.addr().port()
            ));
            links.push((peer, link));
        }
        let text = format!(
            "site = \"{name}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nrecovery_grace = \"5s\"\n\n\
             [primary]\nurl = \"{}?sslmode=disable\"\n{replicas}",
            url(primary)
        );
        let config = dir.join("capgate.toml");
        std::fs::write(&config, &text).unwrap();
        Site { name, proxy: Proxy::start_config(&text, &dir), links, config }
    }

    fn link(&self, peer: &str) -> &Link {
        &self.links.iter().find(|(p, _)| *p == peer).expect("a link to that site").1
    }

    async fn client(&self) -> tokio_postgres::Client {
        connect(&self.proxy.url("postgres", DB)).await
    }

    fn admin(&self) -> std::net::SocketAddr {
        self.proxy.admin.expect("admin listener")
    }
}

/// Every shipper of `site` runs and has taken the replicated tables in (an empty copy), so
/// every row written from now on travels as a change.
async fn shipping(site: &Site) {
    wait_until(&format!("{}'s shippers copied the tables", site.name), Duration::from_secs(60), async || {
        let s = status(site.admin()).await;
        s["replicas"].as_array().is_some_and(|replicas| {
            replicas.len() == 2
                && replicas.iter().all(|r| {
                    let copied = |t: &str| {
                        r["shipper"]["tables"].as_array().is_some_and(|ts| ts.iter().any(|x| x["table"] == t && x["state"] == "copied"))
                    };
                    r["shipper"]["phase"] == "running" && copied("public.tri_async") && copied("public.tri_two")
                })
        })
    })
    .await;
}

fn select(table: &str) -> String {
    format!("SELECT id, n, note FROM {table} ORDER BY id")
}

/// Wait until every site holds what alpha holds in each table, and return alpha's rows.
async fn converged(what: &str) -> Vec<Vec<String>> {
    let [alpha, beta, gamma] = sites().map(|(_, s, _)| url(s));
    let mut all = Vec::new();
    for t in TABLES {
        let start = std::time::Instant::now();
        loop {
            let (a, b, g) = (rows(&alpha, &select(t)).await, rows(&beta, &select(t)).await, rows(&gamma, &select(t)).await);
            if a == b && a == g {
                all.push(a);
                break;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let conflicts = "SELECT concat_ws(' ', origin, kind, tbl, detail) FROM capgate.conflicts";
                let tables = "SELECT concat_ws(' ', origin, tbl, state, error) FROM capgate.tables";
                let mut state = String::new();
                for u in [&alpha, &beta, &gamma] {
                    state.push_str(&format!("{u}:\n  conflicts {:?}\n  tables {:?}\n", rows(u, conflicts).await, rows(u, tables).await));
                }
                panic!("{what}: {t} not equal on the three sites:\nalpha {a:?}\nbeta  {b:?}\ngamma {g:?}\n{state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    all
}

/// No prepared transaction left on any site (COMMIT PREPARED runs after the client's COMMIT).
async fn settled() {
    for (name, server, _) in sites() {
        wait_until(&format!("prepared transactions resolved on {name}"), Duration::from_secs(60), async || {
            rows(&url(server), "SELECT count(*) FROM pg_prepared_xacts").await == ["0"]
        })
        .await;
    }
}

/// `capgate verify` of `config` (one site against the other two) as a DBA runs it.
fn verify(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["verify", "--config", config.to_str().expect("utf-8 path")])
        .output()
        .expect("run capgate verify");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn two_writers_and_a_reader_converge_through_a_cut_with_quorum_and_every_replica() {
    let _one = exclusive().await;
    fresh().await;
    let [alpha, beta, gamma] = ["alpha", "beta", "gamma"].map(Site::start);
    // Every site's shippers (gamma's too) take the tables in before anything is written: a
    // table entering replication with other rows at a writing site is halted there until
    // adopted (decision 0028), not copied over them.
    for site in [&alpha, &beta, &gamma] {
        shipping(site).await;
    }
    let (a, b) = (alpha.client().await, beta.client().await);

    // Both writers, every mode, their own keys (alpha 1…, beta 101…).
    for (c, base, who) in [(&a, 0, "alpha"), (&b, 100, "beta")] {
        for i in 1..=5 {
            for t in TABLES {
                c.execute(&format!("INSERT INTO {t} VALUES ($1, 0, $2)"), &[&(base + i), &who]).await.unwrap();
            }
        }
        c.execute("UPDATE tri_async SET n = n + 1 WHERE id = $1", &[&(base + 1)]).await.unwrap();
        c.execute("DELETE FROM tri_async WHERE id = $1", &[&(base + 5)]).await.unwrap();
    }
    let before = converged("both writers' rows").await;
    assert_eq!(before.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 8], "{before:?}");
    settled().await;
    for (name, server, _) in sites() {
        let u = url(server);
        assert_eq!(rows(&u, "SELECT count(*) FROM capgate.conflicts").await, ["0"], "conflicts on {name}");
        // No echo: a row applied from another site is never captured again (it would be
        // captured outside a capgate session); gamma wrote nothing, so it has no changes.
        assert_eq!(rows(&u, "SELECT count(*) FROM capgate.changes WHERE NOT proxied").await, ["0"], "{name}");
    }
    assert_eq!(rows(&url(c_server()), "SELECT count(*) FROM capgate.changes").await, ["0"], "gamma captured what it applied");
    // Gamma's own capgate serves reads of what the others wrote.
    let g = gamma.client().await;
    assert_eq!(g.query("SELECT id FROM tri_all", &[]).await.unwrap().len(), 10);

    // Gamma cut off from both writers (and they from it).
    for site in [&alpha, &beta] {
        site.link("gamma").blackhole();
        gamma.link(site.name).blackhole();
    }
    for site in [&alpha, &beta] {
        state_is(site.admin(), "gamma", "partitioned").await;
    }
    // Every replica: refused at once, naming the table; nothing written.
    let err = a.execute("UPDATE tri_all SET n = n + 1 WHERE id = $1", &[&1i32]).await.expect_err("gamma is out: tri_all needs it");
    assert_eq!(sqlstate(&err), "55000", "{err:?}");
    let text = err.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(text.contains("tri_all") && text.contains("gamma"), "{text}");
    // Two of three sites: commits go on at both writers, the same rows changed again and again
    // (a change applied twice or out of order at gamma would conflict or show).
    for round in 1..=4 {
        for (c, base) in [(&a, 0), (&b, 100)] {
            c.batch_execute(&format!(
                "BEGIN; UPDATE tri_two SET n = n + 1, note = 'round {round}' WHERE id = {}; \
                 INSERT INTO tri_two VALUES ({}, {round}, 'cut'); UPDATE tri_async SET n = n + 1 WHERE id = {}",
                base + 1,
                base + 10 + round,
                base + 2
            ))
            .await
            .unwrap();
            c.batch_execute("COMMIT").await.unwrap_or_else(|e| panic!("quorum commit at {base} in round {round}: {e:?}"));
        }
    }
    assert_eq!(rows(&url(c_server()), "SELECT n FROM tri_two WHERE id = 1").await, ["0"], "gamma cannot have them while cut off");
    for site in [&alpha, &beta] {
        wait_until(&format!("gamma shown as behind at {}", site.name), Duration::from_secs(30), async || {
            replica_field(&status(site.admin()).await, "gamma", "pending_rows").as_u64().is_some_and(|n| n > 0)
        })
        .await;
    }

    // Healed: gamma catches up from both writers' streams, once and in order.
    for site in [&alpha, &beta] {
        site.link("gamma").restore();
        gamma.link(site.name).restore();
    }
    let after = converged("gamma caught up").await;
    assert_eq!(after[1].len(), 18, "tri_two: 10 rows and 4 rounds × 2 writers: {:?}", after[1]);
    assert!(after[1].contains(&"1|4|round 4".to_owned()) && after[1].contains(&"101|4|round 4".to_owned()), "{:?}", after[1]);
    for site in [&alpha, &beta] {
        state_is(site.admin(), "gamma", "healthy").await;
    }
    // tri_all takes writes again once gamma is back.
    a.execute("UPDATE tri_all SET n = n + 1 WHERE id = 1", &[]).await.expect("every replica healthy again");
    let last = converged("the last sync commit").await;
    assert!(last[0].contains(&"1|1|alpha".to_owned()), "{:?}", last[0]);
    settled().await;
    for (name, server, _) in sites() {
        assert_eq!(rows(&url(server), "SELECT count(*) FROM capgate.conflicts").await, ["0"], "conflicts on {name}");
    }
    // Every sync commit that went to the stream is recorded as applied once at each replica
    // of its site, by its branch or by the stream.
    for (origin, server) in [("alpha", bed().a_primary()), ("beta", bed().b_replica())] {
        let gids = rows(&url(server), "SELECT DISTINCT gid FROM capgate.changes WHERE gid IS NOT NULL ORDER BY 1").await;
        assert!(gids.len() >= 9, "{origin}: 5 inserts and 4 rounds under the quorum: {gids:?}");
        for (name, other, _) in sites().into_iter().filter(|(n, _, _)| *n != origin) {
            let applied = format!("SELECT gid FROM capgate.sync_gids WHERE origin = '{origin}' ORDER BY 1");
            assert_eq!(rows(&url(other), &applied).await, gids, "{origin}'s commits at {name}");
        }
    }

    // capgate verify: every pair equal (alpha against beta and gamma, beta against gamma).
    for site in [&alpha, &beta] {
        let (code, out) = verify(&site.config);
        assert_eq!(code, Some(0), "verify at {}:\n{out}", site.name);
    }
    drop(g);
}
